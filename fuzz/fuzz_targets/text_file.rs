//! A plain text file, raw (.txt) or gzip (.txt.gz, first byte picks): any bytes give
//! paragraphs or an error, never a panic; the paragraphs are a subset of the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pretext::data::corpus::{Fields, TextSource, MAX_PARAGRAPH_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (name, bytes) = if mode & 1 == 1 {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(rest).unwrap();
        let mut gz = e.finish().unwrap();
        if mode & 2 == 2 && !gz.is_empty() {
            // Damage it: cut or flip a byte.
            let i = (mode as usize * 7) % gz.len();
            if mode & 4 == 4 {
                gz.truncate(i);
            } else {
                gz[i] ^= 0x55;
            }
        }
        ("f.txt.gz", gz)
    } else {
        ("f.txt", rest.to_vec())
    };
    let path = dir.path().join(name);
    std::fs::write(&path, &bytes).unwrap();
    let src = TextSource::open(&format!("text:{}", path.display()), &Fields::default()).unwrap();
    for doc in src.docs() {
        match doc {
            Ok(d) => assert!(!d.text.trim().is_empty() && d.text.len() < 2 * MAX_PARAGRAPH_BYTES),
            Err(_) => break,
        }
    }
});
