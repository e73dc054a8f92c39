//! One Parquet image table as `parquet:` reads it: metadata, columns, every row group's images
//! and labels at open, then every image decoded. Errors are fine; a panic or a hang is a bug.
#![no_main]
use libfuzzer_sys::fuzz_target;

// pretext catches the panics of the `parquet` crate on hostile input and turns them into errors
// naming the file; libfuzzer-sys's own hook would abort on those too. This hook only prints, so
// a caught panic is no crash, while a panic that escapes pretext still aborts (libfuzzer-sys
// catches it at the top and aborts).
fuzz_target!(init: std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}"))), |data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.parquet");
    std::fs::write(&path, data).unwrap();
    for skip_bad in [false, true] {
        let opts = pretext::data::OpenOptions {
            image_size: Some(8),
            skip_bad,
            ..Default::default()
        };
        if let Ok(ds) = pretext::data::open(&format!("parquet:{}", path.display()), &opts) {
            for i in 0..ds.train.n.min(64) {
                let _ = ds.train.image_or_next(i);
            }
        }
    }
});
