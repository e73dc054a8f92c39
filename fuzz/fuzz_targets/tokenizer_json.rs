//! A tokenizer.json: any bytes give a tokenizer or an error, never a panic; a tokenizer that
//! loads round-trips text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pretext::data::tokenizer::Tokenizer;

// pretext catches the panics of the `tokenizers` crate on hostile input and turns them into errors
// naming the file; libfuzzer-sys's own hook would abort on those too. This hook only prints, so
// a caught panic is no crash, while a panic that escapes pretext still aborts (libfuzzer-sys
// catches it at the top and aborts).
fuzz_target!(init: std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}"))), |data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, data).unwrap();
    if let Ok(tok) = Tokenizer::load(&path) {
        let s = "Hello, wörld! 日本語 <eos>\n\t";
        assert_eq!(tok.decode(&tok.encode(s)), s);
    }
});
