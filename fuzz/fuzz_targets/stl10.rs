//! STL-10 binary splits (`train_X.bin` + `train_y.bin`) read from a real directory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize * rest.len() / 255).min(rest.len());
    let (x, y) = rest.split_at(cut);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train_X.bin"), x).unwrap();
    std::fs::write(dir.path().join("train_y.bin"), y).unwrap();
    let _ = pretext::data::stl10::read_dir(dir.path(), None);
});
