//! A tokenizer.json: any bytes give a tokenizer or an error, never a panic; a tokenizer that
//! loads round-trips text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pretext::data::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, data).unwrap();
    if let Ok(tok) = Tokenizer::load(&path) {
        let s = "Hello, wörld! 日本語 <eos>\n\t";
        assert_eq!(tok.decode(&tok.encode(s)), s);
    }
});
