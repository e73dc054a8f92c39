//! One image file as the folder reader decodes it (format guessed from the bytes: PNG, JPEG,
//! WebP).
//!
//! Inputs whose header claims more than 256 × 256 pixels go no further: decoding a large image
//! is allowed (up to `data::decode::MAX_SIDE` a side and `MAX_DECODE_BYTES`, tested in
//! src/data) but slow — decoding and resizing are linear in the pixels, a 16,384-pixel-wide JPEG
//! takes seconds, and with every header let through the target made 60 executions a second
//! (114 with a 1-Mpixel cap) — and the fuzzer is here to find the parsing bugs, which do not need
//! many pixels. A header that does not parse still goes to the reader, whose error path is part
//! of what is tested.
#![no_main]
use libfuzzer_sys::fuzz_target;

const MAX_PIXELS: u64 = 1 << 16;

fn claims_too_many_pixels(data: &[u8]) -> bool {
    image::ImageReader::new(std::io::Cursor::new(data))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok())
        .is_some_and(|(w, h)| w as u64 * h as u64 > MAX_PIXELS)
}

fuzz_target!(|data: &[u8]| {
    if claims_too_many_pixels(data) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    std::fs::write(&path, data).unwrap();
    let _ = pretext::data::folder::load(&path, 32);
});
