//! Any text (bytes read as lossy UTF-8) round-trips through the byte-level tokenizer, and
//! streaming decoding gives the same text.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pretext::data::tokenizer::{StreamDecoder, Tokenizer};

static TOK: OnceLock<Tokenizer> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let tok = TOK.get_or_init(Tokenizer::bytes);
    let s = String::from_utf8_lossy(data);
    let ids = tok.encode(&s);
    assert_eq!(tok.decode(&ids), s);
    let mut dec = StreamDecoder::new(tok);
    let mut out: String = ids.iter().map(|&i| dec.push(i)).collect();
    out.push_str(&dec.finish());
    assert_eq!(out, s);
    // Arbitrary ids (out of range too) decode without panicking, streamed or not.
    let raw: Vec<u32> = data
        .chunks(2)
        .map(|c| c.iter().fold(0u32, |a, &b| a * 256 + b as u32) % 300)
        .collect();
    let whole = tok.decode(&raw);
    let mut dec = StreamDecoder::new(tok);
    let mut out: String = raw.iter().map(|&i| dec.push(i)).collect();
    out.push_str(&dec.finish());
    assert_eq!(out, whole);
});
