//! One image file as the folder reader decodes it (format guessed from the bytes: PNG, JPEG).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    std::fs::write(&path, data).unwrap();
    let _ = pretext::data::folder::load(&path, 32);
});
