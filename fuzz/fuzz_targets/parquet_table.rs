//! One Parquet image table as `parquet:` reads it: metadata, columns, every row group's images
//! and labels at open, then every image decoded. Errors are fine; a panic or a hang is a bug.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
