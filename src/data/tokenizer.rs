//! Byte-level BPE tokenizers (the `tokenizers` crate), trained on a streamed [`TextSource`].
//!
//! Every tokenizer pretext makes or accepts is byte-level (GPT-2 style): each of the 256 bytes
//! is a token, so any UTF-8 text encodes without an unknown token and `decode(encode(x)) == x`
//! exactly (no normaliser, no prefix space). Four special tokens come first (ids 0..4: `<pad>`,
//! `<eos>`, `<mask>`, `<cls>`); text that happens to contain `<eos>` is encoded as plain bytes,
//! never as the special. Files are Hugging Face `tokenizer.json`, loadable from Python.
//!
//! `pretext tokenizer train --data text:corpus.txt.gz --vocab 4096 --out tok.json`

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use super::corpus::TextSource;
use super::DataError;
use crate::{Error, Result};

pub const PAD: &str = "<pad>";
pub const EOS: &str = "<eos>";
pub const MASK: &str = "<mask>";
pub const CLS: &str = "<cls>";
/// The special tokens, in id order.
pub const SPECIALS: [&str; 4] = [PAD, EOS, MASK, CLS];

/// Size of the byte-level fallback: 256 byte tokens + the 4 specials.
pub const BYTES_VOCAB: usize = 256 + SPECIALS.len();

/// Below this many characters a corpus is too small to learn merges from: the byte-level
/// fallback is used instead.
pub const TINY_CORPUS_CHARS: usize = 10_000;

/// A byte-level tokenizer: a Hugging Face tokenizer plus what pretext needs at hand (the ids of
/// the specials, each token's bytes for decoding).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: &'static str,
    fallback_reason: Option<String>,
    ids: [u32; 4],
    /// The bytes each id decodes to (a special: its text).
    pieces: Vec<Vec<u8>>,
    special: Vec<bool>,
    /// The id of each single-byte token.
    byte_ids: [u32; 256],
    /// The JSON this tokenizer saves as.
    json: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size())
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// GPT-2's byte-to-char table: printable bytes stand for themselves, the others are moved to
/// U+0100 and up, so every token is a printable string.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        table[b as usize] = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).expect("U+0100..U+0143 are chars")
        };
    }
    table
}

fn byte_level_pre_tokenizer() -> ByteLevel {
    // No prefix space (it would add a byte), offsets untrimmed (they are not used), GPT-2 regex.
    ByteLevel::new(false, false, true)
}

fn special_tokens() -> Vec<AddedToken> {
    SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect()
}

impl Tokenizer {
    /// Train byte-level BPE on the source's documents (streamed) to `vocab_size` tokens,
    /// including the 256 byte tokens and the 4 specials. A tiny corpus (under
    /// [`TINY_CORPUS_CHARS`] characters) or `vocab_size == 260` gives the byte-level fallback
    /// (see [`kind`](Self::kind) and [`fallback_reason`](Self::fallback_reason)).
    pub fn train(
        source: &TextSource,
        vocab_size: usize,
        min_frequency: u64,
        progress: bool,
    ) -> Result<Tokenizer> {
        Self::train_on(source, &|_| true, vocab_size, min_frequency, progress)
    }

    /// [`train`](Self::train) on the documents whose index `keep` accepts (a pretraining run's
    /// training documents: its validation documents, and a transfer's test documents split by
    /// the same rule, never reach the tokenizer).
    pub fn train_on(
        source: &TextSource,
        keep: &(dyn Fn(u64) -> bool + Sync),
        vocab_size: usize,
        min_frequency: u64,
        progress: bool,
    ) -> Result<Tokenizer> {
        if vocab_size < BYTES_VOCAB {
            return Err(Error::Usage(format!(
                "vocabulary size {vocab_size} is too small: a byte-level tokenizer has at least \
                 {BYTES_VOCAB} tokens (256 bytes + {} specials)",
                SPECIALS.len()
            )));
        }
        if vocab_size > u32::MAX as usize / 2 {
            return Err(Error::Usage(format!(
                "vocabulary size {vocab_size} is too large"
            )));
        }
        let mut chars = 0usize;
        for doc in source.docs() {
            let doc = doc?;
            if keep(doc.index) {
                chars += doc.text.chars().count();
            }
            if chars >= TINY_CORPUS_CHARS {
                break;
            }
        }
        if vocab_size == BYTES_VOCAB {
            let mut tok = Tokenizer::bytes();
            tok.fallback_reason = Some(format!(
                "a vocabulary of {BYTES_VOCAB} leaves no room for merges"
            ));
            return Ok(tok);
        }
        if chars < TINY_CORPUS_CHARS {
            let mut tok = Tokenizer::bytes();
            tok.fallback_reason = Some(format!(
                "the corpus has {chars} characters, too few to learn merges from (under {TINY_CORPUS_CHARS})"
            ));
            return Ok(tok);
        }

        let bar = progress.then(|| spinner("reading documents"));
        let trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(min_frequency)
            .special_tokens(special_tokens())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer: TrainerWrapper = trainer.into();
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(byte_level_pre_tokenizer()));
        inner.with_decoder(Some(ByteLevel::default()));

        let mut error: Option<DataError> = None;
        let mut docs = 0u64;
        let texts = source
            .docs()
            .filter(|d| d.as_ref().map_or(true, |d| keep(d.index)));
        let texts = texts.map_while(|d| match d {
            Ok(d) => {
                docs += 1;
                if let Some(bar) = &bar {
                    if docs.is_multiple_of(256) {
                        bar.set_message(format!("{docs} documents"));
                    }
                }
                Some(d.text)
            }
            Err(e) => {
                error = Some(e);
                None
            }
        });
        // The merges are learnt once every document is counted: say so on the bar.
        let texts = texts.chain(std::iter::from_fn(|| {
            if let Some(bar) = &bar {
                bar.set_prefix("learning merges");
            }
            None
        }));
        let result = inner.train(&mut trainer, texts).map(|_| ());
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        if let Some(e) = error {
            return Err(e.into());
        }
        result.map_err(|e| {
            Error::Usage(format!(
                "training a tokenizer on {} failed: {e}",
                source.spec
            ))
        })?;
        Tokenizer::from_inner(inner).map_err(|message| {
            Error::Usage(format!(
                "the tokenizer trained on {} is unusable: {message}",
                source.spec
            ))
        })
    }

    /// Byte-level fallback: the 4 specials and the 256 byte tokens, a BPE without merges (same
    /// file format as a trained one).
    pub fn bytes() -> Tokenizer {
        let chars = byte_chars();
        let mut vocab: tokenizers::models::bpe::Vocab = Default::default();
        for (i, s) in SPECIALS.iter().enumerate() {
            vocab.insert(s.to_string(), i as u32);
        }
        for (b, c) in chars.iter().enumerate() {
            vocab.insert(c.to_string(), (SPECIALS.len() + b) as u32);
        }
        let model = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .expect("a BPE without merges is valid");
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(byte_level_pre_tokenizer()));
        inner.with_decoder(Some(ByteLevel::default()));
        inner
            .add_special_tokens(special_tokens())
            .expect("specials are in the vocabulary");
        Tokenizer::from_inner(inner).expect("the byte-level tokenizer is valid")
    }

    /// Check a Hugging Face tokenizer is one pretext can use and gather what it needs.
    fn from_inner(mut inner: tokenizers::Tokenizer) -> std::result::Result<Tokenizer, String> {
        let bpe = match inner.get_model() {
            ModelWrapper::BPE(bpe) => bpe,
            _ => return Err("the model is not BPE".to_string()),
        };
        if bpe.continuing_subword_prefix.is_some() || bpe.end_of_word_suffix.is_some() {
            return Err(
                "the BPE model has a subword prefix or suffix (a byte-level BPE has none)"
                    .to_string(),
            );
        }
        if bpe.dropout.is_some_and(|d| d > 0.0) {
            return Err("the BPE model has dropout (encoding would be random)".to_string());
        }
        if inner.get_normalizer().is_some() {
            return Err(
                "it has a normaliser (pretext tokenizers have none: text must round-trip)"
                    .to_string(),
            );
        }
        match inner.get_pre_tokenizer() {
            Some(PreTokenizerWrapper::ByteLevel(b)) if !b.add_prefix_space => {}
            Some(PreTokenizerWrapper::ByteLevel(_)) => {
                return Err("its ByteLevel pre-tokenizer adds a prefix space".to_string())
            }
            _ => return Err("its pre-tokenizer is not ByteLevel".to_string()),
        }
        let mut ids = [0u32; 4];
        let added = inner.get_added_tokens_decoder();
        for (slot, s) in ids.iter_mut().zip(SPECIALS) {
            let id = inner
                .token_to_id(s)
                .ok_or_else(|| format!("it lacks the special token `{s}`"))?;
            if !added.get(&id).is_some_and(|t| t.special && t.content == s) {
                return Err(format!("`{s}` is not marked as a special token"));
            }
            *slot = id;
        }
        if let Some((_, t)) = added
            .iter()
            .find(|(_, t)| !SPECIALS.contains(&t.content.as_str()))
        {
            return Err(format!(
                "it has an added token `{}` besides pretext's specials",
                t.content
            ));
        }
        let n = inner.get_vocab_size(true);
        if n > u32::MAX as usize / 2 {
            return Err(format!("its vocabulary of {n} tokens is too large"));
        }
        let mut by_char: HashMap<char, u8> = HashMap::new();
        for (b, c) in byte_chars().iter().enumerate() {
            by_char.insert(*c, b as u8);
        }
        let mut pieces = Vec::with_capacity(n);
        let mut special = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let token = inner
                .id_to_token(id)
                .ok_or_else(|| format!("no token has id {id} (ids must run 0..{n})"))?;
            if ids.contains(&id) {
                pieces.push(token.into_bytes());
                special.push(true);
                continue;
            }
            let bytes = token
                .chars()
                .map(|c| by_char.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| format!("token {token:?} (id {id}) is not byte-level"))?;
            pieces.push(bytes);
            special.push(false);
        }
        let mut byte_ids = [0u32; 256];
        for (b, c) in byte_chars().iter().enumerate() {
            let id = inner
                .token_to_id(&c.to_string())
                .filter(|id| !ids.contains(id))
                .ok_or_else(|| format!("it lacks the token for byte {b:#04x} ({c:?})"))?;
            byte_ids[b] = id;
        }
        inner.set_encode_special_tokens(true);
        let json = inner
            .to_string(true)
            .map_err(|e| format!("cannot serialise it: {e}"))?;
        let kind = if n == BYTES_VOCAB { "bytes" } else { "bpe" };
        Ok(Tokenizer {
            inner,
            kind,
            fallback_reason: None,
            ids,
            pieces,
            special,
            byte_ids,
            json,
        })
    }

    /// Token ids of `text`, no specials added (`<eos>` in the text is plain bytes).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.inner.encode_fast(text, false) {
            Ok(enc) => enc.get_ids().to_vec(),
            // Not expected for a byte-level BPE; bytes are always a valid encoding.
            Err(_) => self.encode_bytes(text),
        }
    }

    /// The first `n` ids of [`encode`](Self::encode)`(text)`, without encoding all of a long
    /// text: a prefix is encoded that ends at a word's end (a non-whitespace character followed
    /// by whitespace). The byte-level pre-tokenizer never joins across that boundary, so the
    /// prefix's ids are the start of the whole text's; the prefix doubles until it yields `n` ids.
    /// (Long raw documents — e-mails with base64 attachments — cost seconds to encode whole.)
    pub fn encode_prefix(&self, text: &str, n: usize) -> Vec<u32> {
        let mut budget = n.saturating_mul(8).max(64);
        loop {
            let Some(cut) = word_end_after(text, budget) else {
                let mut ids = self.encode(text);
                ids.truncate(n);
                return ids;
            };
            let mut ids = self.encode(&text[..cut]);
            if ids.len() >= n {
                ids.truncate(n);
                return ids;
            }
            budget = cut.saturating_mul(2);
        }
    }

    /// Token ids of many texts at once (in parallel), each as [`encode`](Self::encode) gives.
    pub fn encode_batch(&self, texts: &[String]) -> Vec<Vec<u32>> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        match self.inner.encode_batch_fast(inputs, false) {
            Ok(encs) => encs.iter().map(|e| e.get_ids().to_vec()).collect(),
            Err(_) => texts.iter().map(|t| self.encode(t)).collect(),
        }
    }

    fn encode_bytes(&self, text: &str) -> Vec<u32> {
        text.bytes().map(|b| self.byte_ids[b as usize]).collect()
    }

    /// The bytes of a token (a special: its text; an unknown id: U+FFFD).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or("\u{FFFD}".as_bytes())
    }

    /// The text of `ids`; specials are rendered as their text, an invalid UTF-8 sequence as
    /// U+FFFD (as `String::from_utf8_lossy` does).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.piece(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Number of tokens, specials included.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn pad_id(&self) -> u32 {
        self.ids[0]
    }

    pub fn eos_id(&self) -> u32 {
        self.ids[1]
    }

    pub fn mask_id(&self) -> u32 {
        self.ids[2]
    }

    pub fn cls_id(&self) -> u32 {
        self.ids[3]
    }

    /// Whether `id` is one of the specials (not an ordinary token); ids out of range are not.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The ordinary (non-special) token ids, for the masked LM's random replacement.
    pub fn ordinary_ids(&self) -> Vec<u32> {
        (0..self.vocab_size() as u32)
            .filter(|&id| !self.is_special(id))
            .collect()
    }

    /// `"bpe"` or `"bytes"` (the byte-level fallback).
    pub fn kind(&self) -> &str {
        self.kind
    }

    /// Why [`train`](Self::train) returned the byte-level fallback, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Write the Hugging Face `tokenizer.json` format (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::platform::fsio::write_atomic(path, self.json.as_bytes())
    }

    /// Read a tokenizer file; an error names the file and says why it is not usable (not JSON,
    /// not a byte-level BPE, lacking the specials, …).
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Tokenizer::from_json_bytes(&bytes).map_err(|message| {
            DataError::Tokenizer {
                path: path.to_path_buf(),
                message,
            }
            .into()
        })
    }

    /// Parse tokenizer JSON (what [`load`](Self::load) does after reading the file).
    pub fn from_json_bytes(bytes: &[u8]) -> std::result::Result<Tokenizer, String> {
        // The tokenizers crate validates most things but is not written against hostile files:
        // a panic inside it becomes an error here.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|_| "the tokenizers library failed on this file".to_string())?;
        let inner = parsed.map_err(|e| format!("not a tokenizer.json: {e}"))?;
        let tok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            Tokenizer::from_inner(inner)
        }))
        .map_err(|_| "the tokenizers library failed on this file".to_string())??;
        Ok(tok)
    }

    /// A stable hash of the saved JSON (FNV-1a, 64 bits, hex), to notice a changed tokenizer.
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", fnv1a(self.json.as_bytes()))
    }

    /// The underlying Hugging Face tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The first byte position at or after `from` where a non-whitespace character is followed by
/// whitespace; `None` if the text ends first.
fn word_end_after(text: &str, from: usize) -> Option<usize> {
    let mut prev_ws = true;
    for (i, c) in text.char_indices() {
        let ws = c.is_whitespace();
        if i >= from && ws && !prev_ws {
            return Some(i);
        }
        prev_ws = ws;
    }
    None
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// An indicatif spinner on stderr (hidden when stderr is not a terminal).
pub(crate) fn spinner(prefix: &str) -> indicatif::ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
            .expect("valid template"),
    );
    bar.set_prefix(prefix.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Incremental decoding for streaming generation: push ids, get the newly completed text. A
/// partial UTF-8 sequence is held back until it completes; the pieces concatenated equal
/// [`Tokenizer::decode`] of all the ids.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder {
            tok,
            pending: Vec::new(),
        }
    }

    /// Add one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tok.piece(id));
        self.drain(false)
    }

    /// The text still held back (an incomplete sequence becomes U+FFFD).
    pub fn finish(mut self) -> String {
        self.drain(true)
    }

    fn drain(&mut self, last: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .expect("valid up to here"),
                    );
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            start += valid + n;
                        }
                        None if last => {
                            out.push('\u{FFFD}');
                            start = self.pending.len();
                        }
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}

/// What a pass over a corpus with a tokenizer counts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CorpusStats {
    pub docs: u64,
    pub chars: u64,
    pub tokens: u64,
}

impl CorpusStats {
    pub fn chars_per_token(&self) -> f64 {
        self.chars as f64 / self.tokens.max(1) as f64
    }
}

/// Count documents, characters and tokens of a corpus (streamed, encoded in parallel batches).
pub fn corpus_stats(source: &TextSource, tok: &Tokenizer, progress: bool) -> Result<CorpusStats> {
    let bar = progress.then(|| spinner("counting tokens"));
    let mut stats = CorpusStats::default();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let flush = |batch: &mut Vec<String>, stats: &mut CorpusStats| {
        for ids in tok.encode_batch(batch) {
            stats.tokens += ids.len() as u64;
        }
        batch.clear();
    };
    for doc in source.docs() {
        let doc = doc?;
        stats.docs += 1;
        stats.chars += doc.text.chars().count() as u64;
        batch_bytes += doc.text.len();
        batch.push(doc.text);
        if batch_bytes >= 1 << 20 {
            flush(&mut batch, &mut stats);
            batch_bytes = 0;
            if let Some(bar) = &bar {
                bar.set_message(format!("{} documents", stats.docs));
            }
        }
    }
    flush(&mut batch, &mut stats);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(stats)
}

/// What `pretext tokenizer train` reports.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub kind: String,
    pub fallback_reason: Option<String>,
    pub vocab_size: usize,
    pub stats: CorpusStats,
    pub train_seconds: f64,
}

/// `pretext tokenizer train`: train on `spec`, save to `out`, count tokens.
pub fn train_command(
    spec: &str,
    fields: &super::corpus::Fields,
    vocab_size: usize,
    min_frequency: u64,
    out: &Path,
    progress: bool,
) -> Result<TrainReport> {
    let source = TextSource::open(spec, fields)?;
    let start = Instant::now();
    let tok = Tokenizer::train(&source, vocab_size, min_frequency, progress)?;
    let train_seconds = start.elapsed().as_secs_f64();
    tok.save(out)?;
    let stats = corpus_stats(&source, &tok, progress)?;
    Ok(TrainReport {
        kind: tok.kind().to_string(),
        fallback_reason: tok.fallback_reason().map(str::to_string),
        vocab_size: tok.vocab_size(),
        stats,
        train_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::Fields;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_decoder_that_panics_the_tokenizers_crate_is_an_error_naming_the_file() {
        // Found by the tokenizer_json fuzz target: a damaged "decoder" makes tokenizers 0.23.2
        // panic (`expect("Helper")` in decoders/mod.rs) instead of returning an error.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let bytes = include_bytes!("../../fuzz/corpus/tokenizer_json/decoder-panic.json");
        std::fs::write(&path, bytes).unwrap();
        let Err(e) = Tokenizer::load(&path) else {
            panic!("the damaged tokenizer loaded");
        };
        let e = e.to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        assert!(
            e.contains("the tokenizers library failed on this file"),
            "{e}"
        );
    }

    /// Random text mixing ASCII, whitespace runs, newlines, tabs, accents, CJK, emoji, control
    /// chars, specials' text and leading spaces.
    pub(crate) fn random_text(rng: &mut impl Rng) -> String {
        const PARTS: &[&str] = &[
            "the",
            " the",
            "  ",
            "\n",
            "\n\n",
            "\t",
            "\r\n",
            "é",
            "e\u{301}",
            "naïve",
            "日本語",
            "中文",
            "😀",
            "👩\u{200d}💻",
            "\u{0}",
            "\u{7}",
            "\u{1b}[0m",
            "<eos>",
            "<pad>",
            "'s",
            " 123",
            "4.5",
            "\u{a0}",
            "\u{feff}",
            "\u{fffd}",
            "Ω",
            "—",
            "   x",
            "ß",
            "\u{10ffff}",
        ];
        let n = rng.gen_range(0..24);
        let mut s = String::new();
        for _ in 0..n {
            if rng.gen_bool(0.3) {
                // Any char at all.
                let c = loop {
                    if let Some(c) = char::from_u32(rng.gen_range(0..0x11_0000)) {
                        break c;
                    }
                };
                s.push(c);
            } else if rng.gen_bool(0.3) {
                let len = rng.gen_range(1..6);
                s.extend((0..len).map(|_| rng.gen_range(b' '..=b'~') as char));
            } else {
                s.push_str(PARTS[rng.gen_range(0..PARTS.len())]);
            }
        }
        s
    }

    fn trained() -> Tokenizer {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        let mut text = String::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        while text.len() < 40_000 {
            text.push_str("the quick brown fox jumps over the lazy dog. ");
            text.push_str(&random_text(&mut rng));
            text.push_str("\n\n");
        }
        std::fs::write(&p, text).unwrap();
        let src = TextSource::open(&format!("text:{}", p.display()), &Fields::default()).unwrap();
        Tokenizer::train(&src, 400, 2, false).unwrap()
    }

    fn check_round_trips(tok: &Tokenizer, cases: usize, seed: u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..cases {
            let s = random_text(&mut rng);
            let ids = tok.encode(&s);
            assert_eq!(tok.decode(&ids), s, "ids {ids:?}");
            assert!(ids.iter().all(|&i| !tok.is_special(i)), "{s:?}");
            let mut dec = StreamDecoder::new(tok);
            let mut streamed: String = ids.iter().map(|&i| dec.push(i)).collect();
            streamed.push_str(&dec.finish());
            assert_eq!(streamed, s);
        }
    }

    #[test]
    fn bytes_tokenizer_round_trips_anything() {
        let tok = Tokenizer::bytes();
        assert_eq!(tok.kind(), "bytes");
        assert_eq!(tok.vocab_size(), BYTES_VOCAB);
        assert_eq!(
            [tok.pad_id(), tok.eos_id(), tok.mask_id(), tok.cls_id()],
            [0, 1, 2, 3]
        );
        assert!((0..4).all(|i| tok.is_special(i)));
        assert!(!tok.is_special(4) && !tok.is_special(10_000));
        assert_eq!(tok.ordinary_ids().len(), 256);
        assert_eq!(tok.encode("ab"), vec![4 + 97, 4 + 98]);
        check_round_trips(&tok, 3000, 42);
    }

    #[test]
    fn a_prefix_encodes_as_the_whole_text_starts() {
        let tok = trained();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut texts: Vec<String> = (0..200)
            .map(|_| {
                let mut t = String::new();
                for _ in 0..rng.gen_range(1..40) {
                    t.push_str(&random_text(&mut rng));
                    t.push_str(["", " ", "  ", " \n ", "\n\n", "\t", "'s "][rng.gen_range(0..7)]);
                }
                t
            })
            .collect();
        // Long unbroken words (base64 attachments), leading and trailing whitespace.
        texts.push(format!(
            "Subject: x\n\n{}\n{}",
            "QUJD".repeat(3000),
            "end of it"
        ));
        texts.push(format!("   {}   ", "the quick brown fox ".repeat(500)));
        for t in &texts {
            let whole = tok.encode(t);
            for n in [1, 7, 64, 128, 1000, whole.len() + 5] {
                let want = &whole[..n.min(whole.len())];
                assert_eq!(tok.encode_prefix(t, n), want, "n {n} text {t:?}");
            }
        }
        let bytes = Tokenizer::bytes();
        let long = texts.last().unwrap();
        assert_eq!(bytes.encode_prefix(long, 100), bytes.encode(long)[..100]);
    }

    #[test]
    fn trained_bpe_round_trips_and_compresses() {
        let tok = trained();
        assert_eq!(tok.kind(), "bpe");
        assert_eq!(tok.vocab_size(), 400);
        assert_eq!(tok.pad_id(), 0);
        let ids = tok.encode("the quick brown fox");
        assert!(ids.len() < 10, "{ids:?}");
        check_round_trips(&tok, 3000, 43);
        // Specials decode as their text; text that looks like one is plain bytes.
        assert_eq!(tok.decode(&[tok.eos_id()]), "<eos>");
        assert!(!tok.encode("<eos>").contains(&tok.eos_id()));
    }

    #[test]
    fn stream_decoder_holds_back_partial_chars() {
        let tok = Tokenizer::bytes();
        let ids = tok.encode("a€b");
        let mut dec = StreamDecoder::new(&tok);
        let out: Vec<String> = ids.iter().map(|&i| dec.push(i)).collect();
        assert_eq!(out, ["a", "", "", "€", "b"]);
        assert_eq!(dec.finish(), "");
        // An unfinished char at the end, and invalid bytes, become U+FFFD like decode does.
        let e = tok.encode("€");
        let ids = [e[0], e[1], tok.encode("x")[0], e[0]];
        let mut dec = StreamDecoder::new(&tok);
        let mut s: String = ids.iter().map(|&i| dec.push(i)).collect();
        s.push_str(&dec.finish());
        assert_eq!(s, tok.decode(&ids));
        assert_eq!(s, "\u{fffd}x\u{fffd}");
        assert_eq!(tok.decode(&[99_999]), "\u{fffd}");
    }

    #[test]
    fn tiny_corpus_and_small_vocab() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.txt");
        std::fs::write(&p, "just a few words\n").unwrap();
        let src = TextSource::open(&format!("text:{}", p.display()), &Fields::default()).unwrap();
        let tok = Tokenizer::train(&src, 1000, 2, false).unwrap();
        assert_eq!(tok.kind(), "bytes");
        assert!(tok.fallback_reason().unwrap().contains("16 characters"));
        let e = Tokenizer::train(&src, 100, 2, false).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("260"), "{e}");
    }

    #[test]
    fn save_load_and_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let tok = trained();
        let p = dir.path().join("tok.json");
        tok.save(&p).unwrap();
        let back = Tokenizer::load(&p).unwrap();
        assert_eq!(back.fingerprint(), tok.fingerprint());
        assert_eq!(back.kind(), "bpe");
        assert_eq!(back.vocab_size(), tok.vocab_size());
        let s = "Some text, with <eos> and 日本語.";
        assert_eq!(back.encode(s), tok.encode(s));
        assert_ne!(Tokenizer::bytes().fingerprint(), tok.fingerprint());
        let b = dir.path().join("bytes.json");
        Tokenizer::bytes().save(&b).unwrap();
        let back = Tokenizer::load(&b).unwrap();
        assert_eq!(back.kind(), "bytes");
        assert_eq!(back.fingerprint(), Tokenizer::bytes().fingerprint());
        check_round_trips(&back, 200, 5);
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        let json = std::fs::read_to_string({
            let q = dir.path().join("ok.json");
            Tokenizer::bytes().save(&q).unwrap();
            q
        })
        .unwrap();
        let cases = [
            ("not json".to_string(), "not a tokenizer.json"),
            ("{}".to_string(), "not a tokenizer.json"),
            (json.replace("<mask>", "<msk>"), "`<mask>`"),
            (
                json.replace("\"add_prefix_space\": false", "\"add_prefix_space\": true"),
                "prefix space",
            ),
            (
                json.replace(
                    "\"normalizer\": null",
                    "\"normalizer\": {\"type\": \"Lowercase\"}",
                ),
                "normaliser",
            ),
        ];
        for (text, want) in cases {
            std::fs::write(&p, &text).unwrap();
            let e = Tokenizer::load(&p).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("t.json") && msg.contains(want), "{msg}");
        }
        let e = Tokenizer::load(&dir.path().join("missing.json")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    /// A cheap stand-in for the tokenizer_json fuzz target: damaged tokenizer files load or
    /// fail with a message, never panic; whatever loads still round-trips.
    #[test]
    fn damaged_tokenizer_files_never_panic() {
        let good = Tokenizer::bytes().json.into_bytes();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for _ in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..bytes.len());
                match rng.gen_range(0..3) {
                    0 => bytes[i] = rng.gen_range(b' '..=b'~'),
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.truncate(i),
                }
            }
            if let Ok(tok) = Tokenizer::from_json_bytes(&bytes) {
                let s = "Hello, wörld! 日本語 <eos>\n\t";
                assert_eq!(tok.decode(&tok.encode(s)), s);
            }
        }
    }
}
