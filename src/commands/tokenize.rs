//! `pretext tokenizer …`: train a tokenizer on a corpus, or show how one splits a text.

use std::path::Path;

use crate::data::corpus::Fields;
use crate::data::tokenizer::{self, Tokenizer};
use crate::Result;

/// `pretext tokenizer train`: train, save, and print what was made.
pub fn train(
    data: &str,
    text_field: &str,
    vocab: usize,
    min_frequency: u64,
    out: &Path,
    quiet: bool,
) -> Result<()> {
    let fields = Fields {
        text: text_field.to_string(),
        label: None,
    };
    let r = tokenizer::train_command(data, &fields, vocab, min_frequency, out, !quiet)?;
    match &r.fallback_reason {
        Some(why) => println!("kind: bytes (byte-level fallback: {why})"),
        None => println!("kind: {}", r.kind),
    }
    println!("vocab size: {}", r.vocab_size);
    println!("documents: {}", r.stats.docs);
    println!("characters: {}", r.stats.chars);
    println!("tokens: {}", r.stats.tokens);
    println!("chars/token: {:.3}", r.stats.chars_per_token());
    println!("seconds: {:.2}", r.train_seconds);
    println!("written to {}", out.display());
    Ok(())
}

/// `pretext tokenizer encode`: one line per token, id and the text it stands for.
pub fn encode(path: &Path, text: &str) -> Result<()> {
    let tok = Tokenizer::load(path)?;
    let ids = tok.encode(text);
    for &id in &ids {
        let piece = String::from_utf8_lossy(tok.piece(id));
        println!("{id}\t{piece:?}");
    }
    println!(
        "{} tokens, {} chars ({} tokenizer, vocab {})",
        ids.len(),
        text.chars().count(),
        tok.kind(),
        tok.vocab_size()
    );
    Ok(())
}

/// `pretext tokenizer train|encode` from the command line.
pub fn command(c: crate::commands::cli::TokenizerCommand) -> Result<()> {
    use crate::commands::cli::TokenizerCommand;
    match c {
        TokenizerCommand::Train(a) => train(
            &a.data,
            &a.text_field,
            a.vocab,
            a.min_frequency,
            &a.out,
            a.quiet,
        ),
        TokenizerCommand::Encode(a) => encode(&a.tokenizer, &a.text),
    }
}
