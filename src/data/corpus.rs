//! Text corpora, streamed: plain text files (a document per paragraph) and JSON lines (a document
//! per record), raw or gzip, one file or a folder of them.
//!
//! A corpus is named by a spec: `text:PATH` (a `.txt`/`.txt.gz` file, or a folder searched
//! recursively for them, in path order) or `jsonl:PATH` (`.jsonl`/`.jsonl.gz`). [`TextSource::open`]
//! only lists the files; [`TextSource::docs`] reads them one buffered chunk at a time, so memory
//! stays constant whatever the corpus size. Gzip is recognised by its magic bytes.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::DataError;

/// A plain-text paragraph longer than this is cut (at the next line end, or inside a line that
/// alone is longer), so a file without blank lines never has to fit in memory: a plain-text
/// document is always shorter than twice this.
pub const MAX_PARAGRAPH_BYTES: usize = 64 * 1024;

/// A JSON line longer than this is an error rather than an allocation without bound.
pub const MAX_JSON_LINE_BYTES: usize = 256 * 1024 * 1024;

/// The text formats a spec may name before its ':'.
pub const TEXT_FORMATS: &[&str] = &["text", "jsonl"];

/// Which JSON fields hold the text and (optionally) the label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    pub text: String,
    pub label: Option<String>,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            text: "text".to_string(),
            label: None,
        }
    }
}

/// One document of a corpus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub text: String,
    pub label: Option<String>,
    /// Ordinal over the whole source (all files), from 0.
    pub index: u64,
    pub file: PathBuf,
    /// 1-based line of `file` where the document starts.
    pub line: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Jsonl,
}

/// A text corpus: the spec it was opened from and the files it lists.
#[derive(Clone, Debug)]
pub struct TextSource {
    pub spec: String,
    /// The PATH of the spec.
    pub path: PathBuf,
    pub files: Vec<PathBuf>,
    kind: Kind,
    pub fields: Fields,
}

impl TextSource {
    /// `text:PATH` — a .txt or .txt.gz file, or a folder (recursive, sorted by path) of
    /// .txt/.txt.gz files; `jsonl:PATH` — a .jsonl or .jsonl.gz file (or a folder of them), one
    /// JSON object per line. Checks the path exists and lists the files; reads nothing else.
    pub fn open(spec: &str, fields: &Fields) -> Result<TextSource, DataError> {
        let spec_err = |message: String| DataError::Spec {
            spec: spec.to_string(),
            message,
        };
        let (format, path) = super::split_spec(spec, TEXT_FORMATS)?;
        let (kind, exts): (Kind, &[&str]) = match format.to_ascii_lowercase().as_str() {
            "text" | "txt" => (Kind::Text, &[".txt", ".txt.gz"]),
            "jsonl" => (Kind::Jsonl, &[".jsonl", ".jsonl.gz"]),
            other => {
                return Err(spec_err(format!(
                    "unknown text format `{other}`; valid formats: {}",
                    TEXT_FORMATS.join(", ")
                )))
            }
        };
        if fields.text.is_empty() {
            return Err(spec_err("the text field name is empty".to_string()));
        }
        let root = PathBuf::from(path);
        let meta = std::fs::metadata(&root).map_err(|e| DataError::io(&root, e))?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            list_files(&root, exts, &mut files)?;
            files.sort();
            if files.is_empty() {
                return Err(DataError::Empty {
                    path: root,
                    message: format!("no {} files in this folder", exts.join(" or ")),
                });
            }
            files
        } else {
            vec![root.clone()]
        };
        Ok(TextSource {
            spec: spec.to_string(),
            path: root,
            files,
            kind,
            fields: fields.clone(),
        })
    }

    /// Whether documents carry a label (a JSON lines source with a label field).
    pub fn is_labelled(&self) -> bool {
        self.kind == Kind::Jsonl && self.fields.label.is_some()
    }

    /// Total size of the listed files on disk (compressed size for gzip), for progress.
    pub fn disk_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Stream the documents in order with constant memory (gzip decoded on the fly).
    ///
    /// Plain text: a document is a paragraph (lines up to a blank line); a paragraph longer than
    /// [`MAX_PARAGRAPH_BYTES`] is cut at the next line end after it, or at a char boundary if the
    /// line alone is longer. Whitespace-only paragraphs are skipped; the final line end of a
    /// paragraph is not part of its text. JSON lines: one record per non-empty line. After an
    /// error the iterator ends; a source without any document yields [`DataError::Empty`].
    pub fn docs(&self) -> Docs<'_> {
        Docs {
            source: self,
            next_file: 0,
            reader: None,
            index: 0,
            done: false,
        }
    }
}

/// Files under `dir` (recursively) whose names end in one of `exts`; hidden entries skipped.
fn list_files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
        if meta.is_dir() {
            list_files(&path, exts, out)?;
        } else if exts.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
    Ok(())
}

/// The documents of a [`TextSource`], see [`TextSource::docs`].
pub struct Docs<'a> {
    source: &'a TextSource,
    next_file: usize,
    reader: Option<FileDocs>,
    index: u64,
    done: bool,
}

impl Iterator for Docs<'_> {
    type Item = Result<Doc, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            if self.reader.is_none() {
                let Some(path) = self.source.files.get(self.next_file) else {
                    self.done = true;
                    if self.index == 0 {
                        return Some(Err(DataError::Empty {
                            path: self.source.path.clone(),
                            message: "no documents in this corpus (only empty or blank text)"
                                .to_string(),
                        }));
                    }
                    return None;
                };
                self.next_file += 1;
                match FileDocs::open(path, self.source.kind) {
                    Ok(r) => self.reader = Some(r),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let reader = self.reader.as_mut().expect("reader just set");
            match reader.next_doc(&self.source.fields) {
                Ok(Some(raw)) => {
                    let doc = Doc {
                        text: raw.text,
                        label: raw.label,
                        index: self.index,
                        file: reader.lines.path.clone(),
                        line: raw.line,
                    };
                    self.index += 1;
                    return Some(Ok(doc));
                }
                Ok(None) => self.reader = None,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Reads a byte stream in pieces of at most one line, keeping count of the offset (in the
/// decompressed stream) and of the line number.
struct Lines {
    path: PathBuf,
    inner: Box<dyn BufRead + Send>,
    /// Bytes consumed so far.
    offset: u64,
    gzip: bool,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut raw = BufReader::with_capacity(64 * 1024, file);
        let head = raw.fill_buf().map_err(|e| DataError::io(path, e))?;
        let gzip = head.starts_with(&[0x1f, 0x8b]);
        let inner: Box<dyn BufRead + Send> = if gzip {
            Box::new(BufReader::with_capacity(
                64 * 1024,
                flate2::read::MultiGzDecoder::new(raw),
            ))
        } else {
            Box::new(raw)
        };
        Ok(Lines {
            path: path.to_path_buf(),
            inner,
            offset: 0,
            gzip,
        })
    }

    fn read_error(&self, e: std::io::Error) -> DataError {
        if self.gzip && e.kind() != std::io::ErrorKind::PermissionDenied {
            DataError::Format {
                path: self.path.clone(),
                offset: self.offset,
                what: "corrupt gzip data (offset in the decompressed stream)".to_string(),
                expected: "a complete gzip stream".to_string(),
                found: e.to_string(),
            }
        } else {
            DataError::io(&self.path, e)
        }
    }

    /// Append to `buf` the bytes up to and including the next '\n', or at most `max` bytes.
    /// Returns the number of bytes appended (0 at end of input).
    fn read_piece(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<usize, DataError> {
        let mut n = 0;
        while n < max {
            let chunk = match self.inner.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            if chunk.is_empty() {
                break;
            }
            let room = (max - n).min(chunk.len());
            let (take, newline) = match chunk[..room].iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (room, false),
            };
            buf.extend_from_slice(&chunk[..take]);
            self.inner.consume(take);
            self.offset += take as u64;
            n += take;
            if newline {
                break;
            }
        }
        Ok(n)
    }
}

/// What one file yields before the source numbers it.
struct RawDoc {
    text: String,
    label: Option<String>,
    line: u64,
}

struct FileDocs {
    lines: Lines,
    kind: Kind,
    /// 1-based number of the line the next piece belongs to.
    line: u64,
    /// Bytes of the current (unfinished) line already read.
    line_len: usize,
    /// The paragraph being gathered (plain text).
    buf: Vec<u8>,
    buf_line: u64,
    buf_offset: u64,
    eof: bool,
}

impl FileDocs {
    fn open(path: &Path, kind: Kind) -> Result<FileDocs, DataError> {
        Ok(FileDocs {
            lines: Lines::open(path)?,
            kind,
            line: 1,
            line_len: 0,
            buf: Vec::new(),
            buf_line: 1,
            buf_offset: 0,
            eof: false,
        })
    }

    fn next_doc(&mut self, fields: &Fields) -> Result<Option<RawDoc>, DataError> {
        match self.kind {
            Kind::Text => self.next_paragraph(),
            Kind::Jsonl => self.next_record(fields),
        }
    }

    fn invalid_utf8(&self, offset: u64, bytes: &[u8]) -> DataError {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        DataError::Format {
            path: self.lines.path.clone(),
            offset,
            what: if self.lines.gzip {
                "invalid UTF-8 (offset in the decompressed stream)".to_string()
            } else {
                "invalid UTF-8".to_string()
            },
            expected: "UTF-8 text".to_string(),
            found: format!("bytes {}", hex.join(" ")),
        }
    }

    /// The invalid-UTF-8 error for `bytes`, which start at `offset` and fail to decode.
    fn utf8_error(&self, offset: u64, bytes: &[u8], e: std::str::Utf8Error) -> DataError {
        let at = e.valid_up_to();
        let len = e.error_len().unwrap_or(bytes.len() - at).clamp(1, 4);
        let end = (at + len).min(bytes.len());
        self.invalid_utf8(offset + at as u64, &bytes[at..end])
    }

    /// The gathered paragraph as a document, leaving in `buf` the bytes after `cut`.
    fn take_paragraph(&mut self, cut: usize) -> Result<Option<RawDoc>, DataError> {
        let rest = self.buf.split_off(cut);
        let mut bytes = std::mem::replace(&mut self.buf, rest);
        let line = self.buf_line;
        let offset = self.buf_offset;
        self.buf_offset += bytes.len() as u64;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let err = e.utf8_error();
                return Err(self.utf8_error(offset, e.as_bytes(), err));
            }
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(RawDoc {
            text,
            label: None,
            line,
        }))
    }

    fn next_paragraph(&mut self) -> Result<Option<RawDoc>, DataError> {
        let mut piece = Vec::new();
        loop {
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let cut = self.buf.len();
                match self.take_paragraph(cut)? {
                    Some(d) => return Ok(Some(d)),
                    None => return Ok(None),
                }
            }
            let max = MAX_PARAGRAPH_BYTES - self.line_len;
            let piece_offset = self.lines.offset;
            piece.clear();
            let n = self.lines.read_piece(&mut piece, max)?;
            if n == 0 {
                self.eof = true;
                continue;
            }
            let ended = piece.last() == Some(&b'\n');
            if self.line_len == 0 && ended && piece.iter().all(u8::is_ascii_whitespace) {
                // A blank line ends the paragraph.
                self.line += 1;
                if !self.buf.is_empty() {
                    let cut = self.buf.len();
                    if let Some(d) = self.take_paragraph(cut)? {
                        return Ok(Some(d));
                    }
                }
                continue;
            }
            if self.buf.is_empty() {
                self.buf_line = self.line;
                self.buf_offset = piece_offset;
            }
            self.buf.extend_from_slice(&piece);
            if ended {
                self.line += 1;
                self.line_len = 0;
                if self.buf.len() >= MAX_PARAGRAPH_BYTES {
                    let cut = self.buf.len();
                    if let Some(d) = self.take_paragraph(cut)? {
                        return Ok(Some(d));
                    }
                }
            } else if n == max {
                // One line longer than the limit: cut it at a char boundary; the rest of the
                // line starts the next document (same line number).
                let cut = match std::str::from_utf8(&self.buf) {
                    Ok(_) => self.buf.len(),
                    Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
                    Err(e) => {
                        return Err(self.utf8_error(self.buf_offset, &self.buf, e));
                    }
                };
                let doc = self.take_paragraph(cut)?;
                self.line_len = self.buf.len();
                self.buf_line = self.line;
                if let Some(d) = doc {
                    return Ok(Some(d));
                }
            } else {
                // The file ends without a final line end; the next read says so.
                self.line_len += n;
            }
        }
    }

    fn line_error(&self, line: u64, message: String) -> DataError {
        DataError::Line {
            path: self.lines.path.clone(),
            line,
            message,
        }
    }

    fn next_record(&mut self, fields: &Fields) -> Result<Option<RawDoc>, DataError> {
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            let line = self.line;
            let offset = self.lines.offset;
            let n = self.lines.read_piece(&mut bytes, MAX_JSON_LINE_BYTES)?;
            if n == 0 {
                return Ok(None);
            }
            if bytes.last() != Some(&b'\n') && n == MAX_JSON_LINE_BYTES {
                return Err(self.line_error(
                    line,
                    format!("line longer than {MAX_JSON_LINE_BYTES} bytes (expected one JSON object per line)"),
                ));
            }
            self.line += 1;
            let text =
                std::str::from_utf8(&bytes).map_err(|e| self.utf8_error(offset, &bytes, e))?;
            if text.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                let msg = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let msg = msg.strip_suffix(&suffix).unwrap_or(&msg);
                self.line_error(
                    line,
                    format!("invalid JSON at column {}: {msg}", e.column()),
                )
            })?;
            let serde_json::Value::Object(obj) = value else {
                return Err(self.line_error(
                    line,
                    format!("expected a JSON object, found {}", describe(&value)),
                ));
            };
            let keys = || {
                let k: Vec<String> = obj.keys().map(|k| format!("`{k}`")).collect();
                if k.is_empty() {
                    "none".to_string()
                } else {
                    k.join(", ")
                }
            };
            let text = match obj.get(&fields.text) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => {
                    return Err(self.line_error(
                        line,
                        format!(
                            "field `{}` must be a string, found {}",
                            fields.text,
                            describe(other)
                        ),
                    ))
                }
                None => {
                    return Err(self.line_error(
                        line,
                        format!(
                            "no text field `{}` (fields present: {}; choose one with --text-field)",
                            fields.text,
                            keys()
                        ),
                    ))
                }
            };
            let label = match &fields.label {
                None => None,
                Some(name) => Some(match obj.get(name) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        v.to_string()
                    }
                    Some(other) => {
                        return Err(self.line_error(
                            line,
                            format!(
                                "label field `{name}` must be a string, number or bool, found {}",
                                describe(other)
                            ),
                        ))
                    }
                    None => {
                        return Err(self.line_error(
                            line,
                            format!("no label field `{name}` (fields present: {})", keys()),
                        ))
                    }
                }),
            };
            return Ok(Some(RawDoc { text, label, line }));
        }
    }
}

/// A JSON value's kind and a short excerpt, for error messages.
fn describe(v: &serde_json::Value) -> String {
    let kind = match v {
        serde_json::Value::Null => return "null".to_string(),
        serde_json::Value::Bool(b) => return format!("a bool ({b})"),
        serde_json::Value::Number(n) => return format!("a number ({n})"),
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    };
    let mut text = v.to_string();
    if text.len() > 40 {
        let mut end = 40;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    format!("{kind} ({text})")
}

/// Deterministic train/validation split of document `index` for `seed`: true = validation.
///
/// A hash of (seed, index) compared against `val_fraction`, so it needs no pass over the corpus
/// and a document keeps its side however the corpus is read.
pub fn is_validation(seed: u64, index: u64, val_fraction: f64) -> bool {
    if val_fraction.is_nan() || val_fraction <= 0.0 {
        return false;
    }
    let h = splitmix64(splitmix64(seed ^ 0x7465_7874_7370_6c74) ^ index);
    let u = (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    u < val_fraction
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn all(spec: &str, fields: &Fields) -> Result<Vec<Doc>, DataError> {
        TextSource::open(spec, fields)?.docs().collect()
    }

    fn texts(docs: &[Doc]) -> Vec<&str> {
        docs.iter().map(|d| d.text.as_str()).collect()
    }

    #[test]
    fn paragraphs_of_txt_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let body = "\n\nFirst line\nsecond line\r\n\n  \t\nNext para\n\n\nlast without newline";
        std::fs::write(dir.path().join("a.txt"), body).unwrap();
        std::fs::write(dir.path().join("b.txt.gz"), gz(body.as_bytes())).unwrap();
        for name in ["a.txt", "b.txt.gz"] {
            let p = dir.path().join(name);
            let docs = all(&format!("text:{}", p.display()), &Fields::default()).unwrap();
            assert_eq!(
                texts(&docs),
                [
                    "First line\nsecond line",
                    "Next para",
                    "last without newline"
                ]
            );
            assert_eq!(docs.iter().map(|d| d.line).collect::<Vec<_>>(), [3, 7, 10]);
            assert_eq!(docs.iter().map(|d| d.index).collect::<Vec<_>>(), [0, 1, 2]);
            assert_eq!(docs[0].file, p);
            assert_eq!(docs[0].label, None);
        }
    }

    #[test]
    fn folder_is_recursive_sorted_and_numbered_across_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.txt"), "b1\n\nb2\n").unwrap();
        std::fs::write(dir.path().join("a.txt.gz"), gz(b"a1\n")).unwrap();
        std::fs::write(dir.path().join("sub/c.txt"), "c1").unwrap();
        std::fs::write(dir.path().join("ignored.md"), "x").unwrap();
        std::fs::write(dir.path().join(".hidden.txt"), "x").unwrap();
        let src = TextSource::open(
            &format!("text:{}", dir.path().display()),
            &Fields::default(),
        )
        .unwrap();
        assert_eq!(src.files.len(), 3);
        assert!(!src.is_labelled());
        let docs: Vec<Doc> = src.docs().collect::<Result<_, _>>().unwrap();
        assert_eq!(texts(&docs), ["a1", "b1", "b2", "c1"]);
        assert_eq!(docs[3].index, 3);
        assert_eq!(docs[2].line, 3);
    }

    #[test]
    fn empty_sources_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = TextSource::open(
            &format!("text:{}", dir.path().display()),
            &Fields::default(),
        )
        .unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
        assert!(e.to_string().contains(".txt"), "{e}");
        let p = dir.path().join("blank.txt");
        std::fs::write(&p, "\n \n\t\n").unwrap();
        let e = all(&format!("text:{}", p.display()), &Fields::default()).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
        assert!(e.to_string().contains("blank.txt"), "{e}");
        let p = dir.path().join("empty.jsonl");
        std::fs::write(&p, "\n\n").unwrap();
        let e = all(&format!("jsonl:{}", p.display()), &Fields::default()).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
    }

    #[test]
    fn bad_specs() {
        let f = Fields::default();
        for spec in ["nocolon", "text:", "csv:/tmp"] {
            let e = TextSource::open(spec, &f).unwrap_err();
            assert!(matches!(e, DataError::Spec { .. }), "{spec}: {e}");
        }
        let e = TextSource::open("text:/no/such/file.txt", &f).unwrap_err();
        assert!(matches!(e, DataError::Io { .. }), "{e}");
        assert!(e.to_string().contains("/no/such/file.txt"), "{e}");
    }

    #[test]
    fn long_paragraphs_are_cut_at_line_ends_and_long_lines_at_char_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        // 2000 lines of 40 bytes, no blank line: cut at the first line end past 64 KiB.
        let line = format!("{}\n", "x".repeat(39));
        let p = dir.path().join("long.txt");
        std::fs::write(&p, line.repeat(2000)).unwrap();
        let docs = all(&format!("text:{}", p.display()), &Fields::default()).unwrap();
        assert_eq!(docs.len(), 2);
        let first_lines = MAX_PARAGRAPH_BYTES.div_ceil(40);
        assert_eq!(docs[0].text.len(), first_lines * 40 - 1);
        assert_eq!(docs[1].line, first_lines as u64 + 1);
        let total: usize = docs.iter().map(|d| d.text.len() + 1).sum();
        assert_eq!(total, 2000 * 40);

        // One line of 3-byte chars longer than the limit: cut between chars, nothing lost.
        let p = dir.path().join("oneline.txt.gz");
        let text = "€".repeat(50_000);
        std::fs::write(&p, gz(text.as_bytes())).unwrap();
        let docs = all(&format!("text:{}", p.display()), &Fields::default()).unwrap();
        assert!(docs.len() >= 3, "{}", docs.len());
        assert!(docs
            .iter()
            .all(|d| d.text.len() <= MAX_PARAGRAPH_BYTES && d.line == 1));
        assert_eq!(
            docs.iter().map(|d| d.text.as_str()).collect::<String>(),
            text
        );
    }

    #[test]
    fn invalid_utf8_names_file_and_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = b"fine\n\nstill fine\nbad: ".to_vec();
        let at = bytes.len();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(b" more\n");
        for (name, data) in [("bad.txt", bytes.clone()), ("bad.txt.gz", gz(&bytes))] {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            let src =
                TextSource::open(&format!("text:{}", p.display()), &Fields::default()).unwrap();
            let mut docs = src.docs();
            assert_eq!(docs.next().unwrap().unwrap().text, "fine");
            let e = docs.next().unwrap().unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(name), "{msg}");
            assert!(msg.contains(&format!("at byte {at}")), "{msg}");
            assert!(msg.contains("ff"), "{msg}");
            assert!(docs.next().is_none(), "iteration ends after an error");
        }
        // Also in JSON lines, and a truncated multi-byte char at the end of a file.
        let p = dir.path().join("bad.jsonl");
        std::fs::write(&p, b"{\"text\": \"ok\"}\n{\"text\": \"\xe2\x82\"}\n").unwrap();
        let e = all(&format!("jsonl:{}", p.display()), &Fields::default()).unwrap_err();
        assert!(e.to_string().contains("at byte 25"), "{e}");
        let p = dir.path().join("trunc.txt");
        std::fs::write(&p, b"abc\xe2\x82").unwrap();
        let e = all(&format!("text:{}", p.display()), &Fields::default()).unwrap_err();
        assert!(
            e.to_string().contains("at byte 3") && e.to_string().contains("e2 82"),
            "{e}"
        );
    }

    #[test]
    fn corrupt_gzip_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = gz("para one\n\npara two\n".repeat(2000).as_bytes());
        let p = dir.path().join("cut.txt.gz");
        std::fs::write(&p, &data[..data.len() / 2]).unwrap();
        let e = all(&format!("text:{}", p.display()), &Fields::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cut.txt.gz") && msg.contains("gzip"), "{msg}");
        assert!(msg.contains("at byte"), "{msg}");
        let mut bad = data.clone();
        for b in bad[20..60].iter_mut() {
            *b ^= 0x5a;
        }
        let p = dir.path().join("flipped.txt.gz");
        std::fs::write(&p, bad).unwrap();
        let e = all(&format!("text:{}", p.display()), &Fields::default()).unwrap_err();
        assert!(e.to_string().contains("flipped.txt.gz"), "{e}");
    }

    #[test]
    fn jsonl_records_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let body = "{\"text\": \"hello\", \"label\": \"ham\"}\n\n{\"text\": \"a\\nb\", \"label\": 3}\r\n{\"body\": \"x\", \"text\": \"t\", \"label\": true}";
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a.jsonl"), body).unwrap();
        std::fs::write(dir.path().join("d/b.jsonl.gz"), gz(body.as_bytes())).unwrap();
        let fields = Fields {
            text: "text".into(),
            label: Some("label".into()),
        };
        let src = TextSource::open(
            &format!("jsonl:{}", dir.path().join("d").display()),
            &fields,
        )
        .unwrap();
        assert!(src.is_labelled());
        let docs: Vec<Doc> = src.docs().collect::<Result<_, _>>().unwrap();
        assert_eq!(docs.len(), 6);
        assert_eq!(texts(&docs)[..3], ["hello", "a\nb", "t"]);
        let labels: Vec<_> = docs.iter().map(|d| d.label.clone().unwrap()).collect();
        assert_eq!(labels[..3], ["ham", "3", "true"]);
        assert_eq!(
            docs.iter().map(|d| d.line).collect::<Vec<_>>(),
            [1, 3, 4, 1, 3, 4]
        );
        assert!(docs[4].file.ends_with("b.jsonl.gz"));
        // Another text field.
        let f2 = Fields {
            text: "body".into(),
            label: None,
        };
        let p = dir.path().join("one.jsonl");
        std::fs::write(&p, "{\"body\": \"x\"}\n").unwrap();
        let docs = all(&format!("jsonl:{}", p.display()), &f2).unwrap();
        assert_eq!(texts(&docs), ["x"]);
    }

    #[test]
    fn jsonl_errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        let spec = format!("jsonl:{}", p.display());
        let labelled = Fields {
            text: "text".into(),
            label: Some("label".into()),
        };
        let cases: &[(&str, &Fields, &[&str])] = &[
            (
                "{\"text\": \"ok\"}\n{\"text\": \"x\",,}\n",
                &Fields::default(),
                &["line 2", "column 14", "invalid JSON"],
            ),
            (
                "{\"text\": \"ok\"}\n\n{\"body\": \"x\", \"id\": 1}\n",
                &Fields::default(),
                &["line 3", "`text`", "`body`, `id`"],
            ),
            (
                "{\"text\": 42}\n",
                &Fields::default(),
                &["line 1", "`text`", "must be a string", "a number (42)"],
            ),
            (
                "[1, 2]\n",
                &Fields::default(),
                &["line 1", "expected a JSON object", "an array"],
            ),
            (
                "{\"text\": \"x\", \"label\": \"a\"}\n{\"text\": \"y\"}\n",
                &labelled,
                &["line 2", "label field `label`", "`text`"],
            ),
            (
                "{\"text\": \"x\", \"label\": null}\n",
                &labelled,
                &["line 1", "label field `label`", "null"],
            ),
        ];
        for (body, fields, wants) in cases {
            std::fs::write(&p, body).unwrap();
            let e = all(&spec, fields).unwrap_err();
            assert!(matches!(e, DataError::Line { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains("e.jsonl"), "{msg}");
            for w in *wants {
                assert!(msg.contains(w), "{msg} lacks {w}");
            }
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[test]
    fn split_is_deterministic_and_close_to_the_fraction() {
        for (seed, frac) in [(0u64, 0.1), (7, 0.05), (123, 0.5)] {
            let a: Vec<bool> = (0..10_000).map(|i| is_validation(seed, i, frac)).collect();
            let b: Vec<bool> = (0..10_000).map(|i| is_validation(seed, i, frac)).collect();
            assert_eq!(a, b);
            let n = a.iter().filter(|&&v| v).count() as f64 / 10_000.0;
            assert!((n - frac).abs() < 0.015, "seed {seed}: {n} vs {frac}");
        }
        let a: Vec<bool> = (0..1000).map(|i| is_validation(1, i, 0.3)).collect();
        let b: Vec<bool> = (0..1000).map(|i| is_validation(2, i, 0.3)).collect();
        assert_ne!(a, b, "the seed changes the split");
        assert!((0..1000).all(|i| !is_validation(3, i, 0.0)));
        assert!((0..1000).all(|i| is_validation(3, i, 1.0)));
        assert!(!is_validation(3, 1, f64::NAN));
    }

    /// A cheap stand-in for the fuzz targets: random files (valid and broken UTF-8, JSON-ish
    /// lines, gzip, damaged gzip) give documents or an error, never a panic.
    #[test]
    fn random_files_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let dir = tempfile::tempdir().unwrap();
        const PARTS: &[&[u8]] = &[
            b"\n",
            b"\n\n",
            b"\r\n",
            b" ",
            b"{",
            b"}",
            b"\"text\"",
            b"\"label\"",
            b":",
            b",",
            b"\"x\"",
            b"1",
            b"null",
            b"[",
            b"]",
            b"\xff",
            b"\xe2\x82",
            b"\xe2\x82\xac",
            b"word",
        ];
        let fields = Fields {
            text: "text".into(),
            label: Some("label".into()),
        };
        for case in 0..400 {
            let mut bytes = Vec::new();
            for _ in 0..rng.gen_range(0..60) {
                bytes.extend_from_slice(PARTS[rng.gen_range(0..PARTS.len())]);
            }
            if case % 3 == 1 {
                bytes = gz(&bytes);
                if case % 2 == 0 && !bytes.is_empty() {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] ^= rng.gen_range(1..=255u8);
                }
            }
            for (spec, name) in [("text", "f.txt"), ("jsonl", "f.jsonl")] {
                let p = dir.path().join(name);
                std::fs::write(&p, &bytes).unwrap();
                let src = TextSource::open(&format!("{spec}:{}", p.display()), &fields).unwrap();
                for doc in src.docs() {
                    if let Err(e) = doc {
                        assert!(e.to_string().contains(name), "{e}");
                    }
                }
            }
        }
    }
}
