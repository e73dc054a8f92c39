//! A corpus tokenized once into flat token files (like nanoGPT's `train.bin`), read back by
//! position without loading them.
//!
//! File format (`*.tokens`): the magic `PTXTOK01`, the vocabulary size (u32 LE), the token count
//! (u64 LE), then the tokens as u32 LE. [`tokenize_corpus`] writes `train.tokens`, `val.tokens`
//! and `tokens.json` (what they were made from) into a folder, each document followed by `<eos>`.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::corpus::{is_validation, TextSource};
use super::tokenizer::{spinner, Tokenizer};
use super::DataError;
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"PTXTOK01";
/// Bytes before the first token: magic, vocabulary size, count.
pub const HEADER_BYTES: u64 = 8 + 4 + 8;

/// An open token file.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    file: File,
    len: u64,
    vocab_size: u32,
}

impl TokenFile {
    /// Open and check the header: magic, vocabulary size, count, and that the file size
    /// matches the count.
    pub fn open(path: &Path) -> Result<TokenFile> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let size = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        let mut header = [0u8; HEADER_BYTES as usize];
        if size < HEADER_BYTES {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                record: None,
                expected_bytes: HEADER_BYTES,
                found_bytes: size,
            }
            .into());
        }
        read_at(&file, &mut header, 0).map_err(|e| DataError::io(path, e))?;
        if &header[..8] != MAGIC {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                offset: 0,
                what: "magic".to_string(),
                expected: format!(
                    "{:?} (a pretext token file)",
                    String::from_utf8_lossy(MAGIC)
                ),
                found: format!("{:?}", String::from_utf8_lossy(&header[..8])),
            }
            .into());
        }
        let vocab_size = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
        if vocab_size == 0 {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                offset: 8,
                what: "vocabulary size".to_string(),
                expected: "at least 1".to_string(),
                found: "0".to_string(),
            }
            .into());
        }
        let expected = len
            .checked_mul(4)
            .and_then(|b| b.checked_add(HEADER_BYTES))
            .unwrap_or(u64::MAX);
        if size < expected {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                record: None,
                expected_bytes: expected,
                found_bytes: size,
            }
            .into());
        }
        if size > expected {
            return Err(DataError::Mismatch {
                path: path.to_path_buf(),
                what: format!("file size for {len} tokens"),
                expected: format!("{expected} bytes"),
                found: format!("{size} bytes"),
            }
            .into());
        }
        Ok(TokenFile {
            path: path.to_path_buf(),
            file,
            len,
            vocab_size,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `len` tokens from `start` (a positioned read: `&self`, safe from several threads). A
    /// range past the end or a token outside the vocabulary is an error naming the file.
    pub fn read(&self, start: u64, len: usize) -> Result<Vec<u32>> {
        let end = start.checked_add(len as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(Error::Usage(format!(
                "{}: tokens {start}..{} asked for, the file has {}",
                self.path.display(),
                start as u128 + len as u128,
                self.len
            )));
        }
        let mut bytes = vec![0u8; len * 4];
        read_at(&self.file, &mut bytes, HEADER_BYTES + start * 4)
            .map_err(|e| DataError::io(&self.path, e))?;
        let tokens: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if let Some(i) = tokens.iter().position(|&t| t >= self.vocab_size) {
            return Err(DataError::Format {
                path: self.path.clone(),
                offset: HEADER_BYTES + (start + i as u64) * 4,
                what: format!("token {}", start + i as u64),
                expected: format!("an id below the vocabulary size {}", self.vocab_size),
                found: tokens[i].to_string(),
            }
            .into());
        }
        Ok(tokens)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a token file through a buffer; the count is filled in at the end.
struct TokenWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    count: u64,
}

impl TokenWriter {
    fn create(path: &Path, vocab_size: u32) -> Result<TokenWriter> {
        let tmp = tmp_name(path);
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = Vec::with_capacity(HEADER_BYTES as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&vocab_size.to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes());
        out.write_all(&header).map_err(|e| Error::io(&tmp, e))?;
        Ok(TokenWriter {
            path: path.to_path_buf(),
            tmp,
            out,
            count: 0,
        })
    }

    fn write(&mut self, tokens: &[u32]) -> Result<()> {
        for t in tokens {
            self.out
                .write_all(&t.to_le_bytes())
                .map_err(|e| Error::io(&self.tmp, e))?;
        }
        self.count += tokens.len() as u64;
        Ok(())
    }

    /// Fill in the count, sync and rename into place.
    fn finish(self) -> Result<u64> {
        let tmp = self.tmp.clone();
        let io = |e| Error::io(&tmp, e);
        let mut file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(12)).map_err(io)?;
        file.write_all(&self.count.to_le_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(io)?;
        Ok(self.count)
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("tokens");
    path.with_file_name(format!(".{name}.tmp"))
}

/// The tokenized corpus: both splits, opened.
#[derive(Debug)]
pub struct TokenCorpus {
    pub train: TokenFile,
    pub val: TokenFile,
    pub docs_train: u64,
    pub docs_val: u64,
}

/// `DIR/tokens.json`: what the token files were made from, and their counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokensMeta {
    pub format: u32,
    pub spec: String,
    pub text_field: String,
    pub tokenizer: String,
    pub vocab_size: u32,
    pub seed: u64,
    pub val_fraction: f64,
    pub docs_train: u64,
    pub docs_val: u64,
    pub tokens_train: u64,
    pub tokens_val: u64,
}

pub const TRAIN_FILE: &str = "train.tokens";
pub const VAL_FILE: &str = "val.tokens";
pub const META_FILE: &str = "tokens.json";

/// Tokenize every document (streamed), each followed by `<eos>`, into `DIR/train.tokens` and
/// `DIR/val.tokens` (split by [`is_validation`]), written under temporary names and renamed at
/// the end, plus `DIR/tokens.json`. Files already in DIR made from the same spec, tokenizer,
/// seed and fraction are reused at once. Either split may be empty; `tokens.json` has the counts.
pub fn tokenize_corpus(
    source: &TextSource,
    tok: &Tokenizer,
    seed: u64,
    val_fraction: f64,
    dir: &Path,
    progress: bool,
) -> Result<TokenCorpus> {
    if !(0.0..=1.0).contains(&val_fraction) {
        return Err(Error::config(
            "val_fraction",
            format!("must be between 0 and 1, found {val_fraction}"),
        ));
    }
    let vocab_size = tok.vocab_size() as u32;
    let mut meta = TokensMeta {
        format: 1,
        spec: source.spec.clone(),
        text_field: source.fields.text.clone(),
        tokenizer: tok.fingerprint(),
        vocab_size,
        seed,
        val_fraction,
        docs_train: 0,
        docs_val: 0,
        tokens_train: 0,
        tokens_val: 0,
    };
    let meta_path = dir.join(META_FILE);
    if let Some(corpus) = reuse(dir, &meta) {
        return Ok(corpus);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    match std::fs::remove_file(&meta_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&meta_path, e)),
    }
    let mut train = TokenWriter::create(&dir.join(TRAIN_FILE), vocab_size)?;
    let mut val = TokenWriter::create(&dir.join(VAL_FILE), vocab_size)?;
    let bar = progress.then(|| spinner("tokenizing"));
    let eos = tok.eos_id();
    let mut batch: Vec<(u64, String)> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut write_batch = |batch: &mut Vec<(u64, String)>, meta: &mut TokensMeta| -> Result<()> {
        let texts: Vec<String> = batch.iter_mut().map(|(_, t)| std::mem::take(t)).collect();
        for ((index, _), mut ids) in batch.iter().zip(tok.encode_batch(&texts)) {
            ids.push(eos);
            if is_validation(seed, *index, val_fraction) {
                val.write(&ids)?;
                meta.docs_val += 1;
            } else {
                train.write(&ids)?;
                meta.docs_train += 1;
            }
        }
        batch.clear();
        Ok(())
    };
    for doc in source.docs() {
        let doc = doc?;
        batch_bytes += doc.text.len();
        batch.push((doc.index, doc.text));
        if batch_bytes >= 1 << 20 || batch.len() >= 4096 {
            write_batch(&mut batch, &mut meta)?;
            batch_bytes = 0;
            if let Some(bar) = &bar {
                bar.set_message(format!("{} documents", meta.docs_train + meta.docs_val));
            }
        }
    }
    write_batch(&mut batch, &mut meta)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    meta.tokens_train = train.finish()?;
    meta.tokens_val = val.finish()?;
    let json = serde_json::to_string_pretty(&meta).expect("plain struct serialises");
    crate::platform::fsio::write_atomic(&meta_path, json.as_bytes())?;
    Ok(TokenCorpus {
        train: TokenFile::open(&dir.join(TRAIN_FILE))?,
        val: TokenFile::open(&dir.join(VAL_FILE))?,
        docs_train: meta.docs_train,
        docs_val: meta.docs_val,
    })
}

/// The token files in `dir`, if its `tokens.json` says they were made from the same inputs and
/// both files open with the counts it records.
fn reuse(dir: &Path, want: &TokensMeta) -> Option<TokenCorpus> {
    let text = std::fs::read_to_string(dir.join(META_FILE)).ok()?;
    let have: TokensMeta = serde_json::from_str(&text).ok()?;
    let same = have.format == want.format
        && have.spec == want.spec
        && have.text_field == want.text_field
        && have.tokenizer == want.tokenizer
        && have.vocab_size == want.vocab_size
        && have.seed == want.seed
        && have.val_fraction == want.val_fraction;
    if !same {
        return None;
    }
    let train = TokenFile::open(&dir.join(TRAIN_FILE)).ok()?;
    let val = TokenFile::open(&dir.join(VAL_FILE)).ok()?;
    (train.len() == have.tokens_train
        && val.len() == have.tokens_val
        && train.vocab_size() == want.vocab_size
        && val.vocab_size() == want.vocab_size)
        .then_some(TokenCorpus {
            train,
            val,
            docs_train: have.docs_train,
            docs_val: have.docs_val,
        })
}

/// Read `DIR/tokens.json`, if there.
pub fn read_meta(dir: &Path) -> Result<TokensMeta> {
    let path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        DataError::Format {
            path,
            offset: 0,
            what: "tokens.json".to_string(),
            expected: "the JSON pretext writes".to_string(),
            found: e.to_string(),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::Fields;

    fn corpus(dir: &Path, docs: usize) -> TextSource {
        let p = dir.join("c.txt");
        let text: String = (0..docs)
            .map(|i| format!("document number {i}\nsecond line é\n\n"))
            .collect();
        std::fs::write(&p, text).unwrap();
        TextSource::open(&format!("text:{}", p.display()), &Fields::default()).unwrap()
    }

    #[test]
    fn tokenize_split_read_and_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let src = corpus(dir.path(), 500);
        let tok = Tokenizer::bytes();
        let out = dir.path().join("tok");
        let c = tokenize_corpus(&src, &tok, 3, 0.1, &out, false).unwrap();
        assert_eq!(c.docs_train + c.docs_val, 500);
        let expect_val = (0..500).filter(|&i| is_validation(3, i, 0.1)).count() as u64;
        assert_eq!(c.docs_val, expect_val);
        assert_eq!(c.train.vocab_size(), 260);
        // Every document and its EOS, in order: decode the train file back.
        let all = c.train.read(0, c.train.len() as usize).unwrap();
        let eos = tok.eos_id();
        assert_eq!(
            all.iter().filter(|&&t| t == eos).count() as u64,
            c.docs_train
        );
        let docs: Vec<String> = all
            .split(|&t| t == eos)
            .filter(|d| !d.is_empty())
            .map(|d| tok.decode(d))
            .collect();
        let first_train = (0..500).find(|&i| !is_validation(3, i, 0.1)).unwrap();
        assert_eq!(
            docs[0],
            format!("document number {first_train}\nsecond line é")
        );
        // Positioned reads agree with the whole.
        assert_eq!(c.train.read(5, 7).unwrap(), all[5..12].to_vec());
        assert!(c.train.read(c.train.len() - 1, 2).is_err());
        assert!(c.train.read(u64::MAX, 2).is_err());
        let meta = read_meta(&out).unwrap();
        assert_eq!(meta.tokens_train, c.train.len());
        assert_eq!(meta.tokenizer, tok.fingerprint());
        // Same inputs: reused (files untouched); another seed: rebuilt.
        let before = std::fs::metadata(out.join(TRAIN_FILE))
            .unwrap()
            .modified()
            .unwrap();
        let again = tokenize_corpus(&src, &tok, 3, 0.1, &out, false).unwrap();
        assert_eq!(again.train.len(), c.train.len());
        let after = std::fs::metadata(out.join(TRAIN_FILE))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
        let other = tokenize_corpus(&src, &tok, 4, 0.1, &out, false).unwrap();
        assert_eq!(other.docs_train + other.docs_val, 500);
        assert_eq!(read_meta(&out).unwrap().seed, 4);
        // No temporary files left.
        let names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    /// `src` tokenized byte-wise into `dir/t` (seed 1), `val` of the documents held out.
    fn bytes_corpus(src: &TextSource, val: f64, dir: &Path) -> Result<TokenCorpus> {
        tokenize_corpus(src, &Tokenizer::bytes(), 1, val, &dir.join("t"), false)
    }

    #[test]
    fn empty_split_is_still_written() {
        let dir = tempfile::tempdir().unwrap();
        let src = corpus(dir.path(), 3);
        let c = bytes_corpus(&src, 0.0, dir.path()).unwrap();
        assert_eq!(c.docs_val, 0);
        assert_eq!(c.val.len(), 0);
        assert!(c.val.is_empty());
        assert_eq!(c.val.read(0, 0).unwrap(), Vec::<u32>::new());
        let e = bytes_corpus(&src, 1.5, dir.path()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn corrupt_token_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let src = corpus(dir.path(), 20);
        let c = bytes_corpus(&src, 0.0, dir.path()).unwrap();
        let good = std::fs::read(c.train.path()).unwrap();
        let p = dir.path().join("bad.tokens");
        let check = |bytes: &[u8], wants: &[&str]| {
            std::fs::write(&p, bytes).unwrap();
            let e = TokenFile::open(&p).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("bad.tokens"), "{msg}");
            for w in wants {
                assert!(msg.contains(w), "{msg} lacks {w}");
            }
        };
        check(
            &good[..good.len() - 3],
            &["truncated", &format!("{}", good.len())],
        );
        check(&good[..10], &["truncated", "20 bytes"]);
        let mut m = good.clone();
        m[0] = b'X';
        check(&m, &["magic", "PTXTOK01"]);
        let mut m = good.clone();
        m.extend_from_slice(&[0, 0, 0, 0]);
        check(&m, &["mismatch"]);
        let mut m = good.clone();
        m[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        check(&m, &["truncated"]);
        // A token outside the vocabulary is caught on read, with its position.
        let mut m = good.clone();
        m[20 + 4 * 3..20 + 4 * 4].copy_from_slice(&5000u32.to_le_bytes());
        std::fs::write(&p, &m).unwrap();
        let f = TokenFile::open(&p).unwrap();
        let e = f.read(0, 10).unwrap_err().to_string();
        assert!(
            e.contains("token 3") && e.contains("5000") && e.contains("at byte 32"),
            "{e}"
        );
    }
}
