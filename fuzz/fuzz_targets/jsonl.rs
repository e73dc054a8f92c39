//! JSON lines with a label field, raw or gzip (first byte picks): any bytes give documents or
//! an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pretext::data::corpus::{Fields, TextSource};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.jsonl");
    std::fs::write(&path, rest).unwrap();
    let fields = Fields {
        text: if mode & 1 == 0 { "text" } else { "body" }.to_string(),
        label: Some("label".to_string()),
    };
    let src = TextSource::open(&format!("jsonl:{}", path.display()), &fields).unwrap();
    for doc in src.docs() {
        if doc.is_err() {
            break;
        }
    }
});
