//! WebDataset shards (`wds:DIR` or `wds:GLOB`): `.tar` files whose members are samples, each a
//! group of consecutive members sharing a key (the member name up to the first `.` of its last
//! component): `KEY.png|jpg|jpeg|webp` (the image, required), optionally `KEY.cls` (a decimal
//! label) or `KEY.json` (an object with an integer `label` or `cls`); other members of a sample
//! (`KEY.txt`, …) are ignored. `DIR` means every `*.tar` in it; a glob may use `*`, `?` and
//! `{000..099}` ranges in the file name.
//!
//! Opening reads each shard once, in order: the tar headers, each image's header (format, size,
//! colour type: the channel count is 1 only when every image is grayscale, as for folders) and
//! the labels. What is kept per image is an index entry (shard, byte offset, size, member name:
//! a few tens of bytes), never the pixels; training then reads each member by its offset and
//! decodes it on the loader's workers, visiting the shards in a shuffled order through a
//! shuffle buffer ([`super::streamed`]). A member decodes to the same bytes as the same file in
//! a folder.
//!
//! Damage is reported naming the shard, the member and what was expected and found: a member
//! that is not an image, a sample without an image, a bad label, a truncated shard (the data of
//! a member runs past the end of the file), a damaged tar header. With `--skip-bad` the sample
//! is left out and counted (a damaged header loses the rest of its shard: the members after it
//! cannot be found).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::data::decode;
use crate::data::streamed::{Members, Sharded};
use crate::data::{DataError, Dataset, ImageSet, OpenOptions};

/// Image member extensions.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];
/// Bytes of an image member read at open for its header (the whole member if that fails).
const HEADER_PREFIX: u64 = 64 * 1024;
/// Largest label member read (`.cls`, `.json`).
const MAX_LABEL_BYTES: u64 = 1 << 20;

/// The index of the image members of a set of shards.
#[derive(Debug, Default)]
pub struct TarMembers {
    shards: Vec<PathBuf>,
    shard: Vec<u32>,
    offset: Vec<u64>,
    size: Vec<u32>,
    /// Member names, concatenated; member i's ends at `name_end[i]`.
    names: String,
    name_end: Vec<u32>,
}

impl TarMembers {
    fn push(&mut self, shard: u32, offset: u64, size: u32, name: &str) {
        self.shard.push(shard);
        self.offset.push(offset);
        self.size.push(size);
        self.names.push_str(name);
        self.name_end.push(self.names.len() as u32);
    }

    fn member_name(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            self.name_end[i - 1] as usize
        };
        &self.names[start..self.name_end[i] as usize]
    }

    fn shrink(&mut self) {
        self.shard.shrink_to_fit();
        self.offset.shrink_to_fit();
        self.size.shrink_to_fit();
        self.names.shrink_to_fit();
        self.name_end.shrink_to_fit();
    }
}

impl Members for TarMembers {
    fn len(&self) -> usize {
        self.shard.len()
    }

    fn bytes(&self, i: usize) -> Result<Vec<u8>, DataError> {
        let path = &self.shards[self.shard[i] as usize];
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut buf = vec![0u8; self.size[i] as usize];
        file.read_exact_at(&mut buf, self.offset[i]).map_err(|e| {
            let message = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                let len = file.metadata().map_or(0, |m| m.len());
                format!(
                    "truncated shard: expected {} bytes of data at byte {}, the file ends at byte {len}",
                    buf.len(),
                    self.offset[i]
                )
            } else {
                e.to_string()
            };
            DataError::Member {
                path: path.clone(),
                member: self.member_name(i).to_string(),
                message,
            }
        })?;
        Ok(buf)
    }

    fn chunk(&self, i: usize) -> usize {
        self.shard[i] as usize
    }

    fn locate(&self, i: usize) -> (PathBuf, String) {
        (
            self.shards[self.shard[i] as usize].clone(),
            self.member_name(i).to_string(),
        )
    }

    fn memory_bytes(&self) -> usize {
        self.shard.capacity() * 4
            + self.offset.capacity() * 8
            + self.size.capacity() * 4
            + self.names.capacity()
            + self.name_end.capacity() * 4
            + self
                .shards
                .iter()
                .map(|p| p.as_os_str().len() + std::mem::size_of::<PathBuf>())
                .sum::<usize>()
    }
}

/// A sample's key and the extension of one of its members: `dir/000017.seg.png` is key
/// `dir/000017`, extension `seg.png`.
pub fn split_key(name: &str) -> (&str, &str) {
    let base = name.rfind('/').map_or(0, |i| i + 1);
    match name[base..].find('.') {
        Some(dot) => (&name[..base + dot], &name[base + dot + 1..]),
        None => (name, ""),
    }
}

/// The shards a `wds:` path names: every `*.tar` of a directory, or the files a glob matches
/// (in the file name: `*`, `?`, `{000..099}`), sorted.
pub fn shard_paths(spec_path: &str) -> Result<Vec<PathBuf>, DataError> {
    let path = Path::new(spec_path);
    if path.is_dir() {
        let mut out: Vec<PathBuf> = read_dir_sorted(path)?
            .into_iter()
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("tar"))
            })
            .collect();
        out.sort();
        return nonempty(out, path, "no .tar shards in the folder");
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?', '{']) {
        if path.is_file() {
            return Ok(vec![path.to_path_buf()]);
        }
        return Err(DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such shard or folder"),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let patterns = expand_braces(&name);
    let mut out: Vec<PathBuf> = read_dir_sorted(&dir)?
        .into_iter()
        .filter(|p| {
            p.is_file()
                && p.file_name().is_some_and(|f| {
                    let f = f.to_string_lossy();
                    patterns.iter().any(|pat| glob_match(pat.as_bytes(), f.as_bytes()))
                })
        })
        .collect();
    out.sort();
    nonempty(out, path, "the pattern matches no files")
}

fn nonempty(v: Vec<PathBuf>, path: &Path, message: &str) -> Result<Vec<PathBuf>, DataError> {
    if v.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            message: message.into(),
        });
    }
    Ok(v)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        out.push(e.map_err(|e| DataError::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// `a{00..02}b` -> `a00b`, `a01b`, `a02b` (zero-padded like the first bound); `{x,y}` lists.
fn expand_braces(pat: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (pat.find('{'), pat.find('}')) else {
        return vec![pat.to_string()];
    };
    if close < open {
        return vec![pat.to_string()];
    }
    let (head, inner, tail) = (&pat[..open], &pat[open + 1..close], &pat[close + 1..]);
    let items: Vec<String> = match inner.split_once("..") {
        Some((a, b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(lo), Ok(hi)) if lo <= hi && hi - lo < 10_000_000 => {
                (lo..=hi).map(|v| format!("{v:0w$}", w = a.len())).collect()
            }
            _ => vec![inner.to_string()],
        },
        None => inner.split(',').map(str::to_string).collect(),
    };
    items
        .iter()
        .flat_map(|it| expand_braces(&format!("{head}{it}{tail}")))
        .collect()
}

/// `*` (any run) and `?` (one byte) matching.
fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = i;
            p += 1;
        } else if let Some(sp) = star {
            p = sp + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// One shard's kept samples.
#[derive(Default)]
struct ShardIndex {
    /// (offset, size, member name, grayscale, label)
    samples: Vec<(u64, u32, String, bool, Option<u32>)>,
    skipped: usize,
}

/// A sample being gathered: its key and members seen so far.
#[derive(Default)]
struct Pending {
    key: String,
    image: Option<(u64, u32, String, Result<bool, String>)>,
    label: Option<Result<u32, String>>,
    others: Vec<String>,
}

/// Read one shard's index: every sample's image member (checked by its header) and label.
/// With `skip_bad` a bad sample is counted and left out; a damaged or truncated shard ends its
/// index there (counted once).
fn index_shard_inner(path: &Path, skip_bad: bool) -> Result<ShardIndex, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let member_err = |member: &str, message: String| DataError::Member {
        path: path.to_path_buf(),
        member: member.to_string(),
        message,
    };
    let mut out = ShardIndex::default();
    // A bad sample: an error, or (skip_bad) a warning and a count.
    let mut bad = |out: &mut ShardIndex, e: DataError| -> Result<(), DataError> {
        if skip_bad {
            eprintln!("warning: {e}; skipped (--skip-bad)");
            out.skipped += 1;
            Ok(())
        } else {
            Err(e)
        }
    };
    let mut archive = tar::Archive::new(file);
    let mut entries = archive.entries_with_seek().map_err(|e| DataError::io(path, e))?;
    let mut pending = Pending::default();
    // Where the next header starts, and the last member read (for messages).
    let mut next_header = 0u64;
    let mut last_member = String::from("(start of the shard)");
    loop {
        let entry = match entries.next() {
            None => break,
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                finish(path, std::mem::take(&mut pending), &mut out, &mut bad)?;
                let e = member_err(
                    &format!("tar header at byte {next_header} (after {last_member})"),
                    format!("expected a valid tar header, found damage: {e}"),
                );
                bad(&mut out, e)?;
                return Ok(out);
            }
        };
        let mut entry = entry;
        let offset = entry.raw_file_position();
        let size = entry.size();
        next_header = offset + size.div_ceil(512) * 512;
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().into_owned(),
            Err(e) => {
                let e = member_err(&format!("member at byte {offset}"), e.to_string());
                bad(&mut out, e)?;
                continue;
            }
        };
        last_member = name.clone();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if offset + size > file_len {
            finish(path, std::mem::take(&mut pending), &mut out, &mut bad)?;
            let e = member_err(
                &name,
                format!(
                    "truncated shard: expected {size} bytes of data at byte {offset}, the file ends at byte {file_len}"
                ),
            );
            bad(&mut out, e)?;
            return Ok(out);
        }
        let (key, ext) = split_key(&name);
        if key != pending.key {
            finish(path, std::mem::take(&mut pending), &mut out, &mut bad)?;
            pending.key = key.to_string();
        }
        let ext = ext.to_ascii_lowercase();
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) && pending.image.is_none() {
            if size > u32::MAX as u64 {
                let e = member_err(&name, format!("expected an image under 4 GiB, found {size} bytes"));
                bad(&mut out, e)?;
                continue;
            }
            let mut head = Vec::new();
            let read = (&mut entry)
                .take(HEADER_PREFIX)
                .read_to_end(&mut head)
                .map_err(|e| member_err(&name, e.to_string()));
            let gray = match read {
                Err(e) => Err(e.to_string()),
                Ok(_) => match decode::header_bytes(&head) {
                    Ok(g) => Ok(g),
                    Err(_) if size > head.len() as u64 => {
                        // a header past the prefix (a large EXIF block): read the member whole
                        let mut all = vec![0u8; size as usize];
                        let f = File::open(path).map_err(|e| DataError::io(path, e))?;
                        f.read_exact_at(&mut all, offset)
                            .map_err(|e| e.to_string())
                            .and_then(|_| decode::header_bytes(&all))
                    }
                    Err(e) => Err(e),
                },
            };
            pending.image = Some((offset, size as u32, name, gray));
        } else if (ext == "cls" || ext == "json") && pending.label.is_none() {
            let mut text = Vec::new();
            let read = (&mut entry).take(MAX_LABEL_BYTES).read_to_end(&mut text);
            pending.label = Some(match read {
                Err(e) => Err(format!("{name}: {e}")),
                Ok(_) => parse_label(&ext, &text).map_err(|m| format!("{name}: {m}")),
            });
        } else {
            pending.others.push(name);
        }
    }
    finish(path, pending, &mut out, &mut bad)?;
    Ok(out)
}

/// Close a sample: keep it, or report (or count) what is wrong with it.
fn finish(
    path: &Path,
    p: Pending,
    out: &mut ShardIndex,
    bad: &mut impl FnMut(&mut ShardIndex, DataError) -> Result<(), DataError>,
) -> Result<(), DataError> {
    if p.key.is_empty() && p.image.is_none() && p.label.is_none() {
        return Ok(());
    }
    let err = |member: &str, message: String| DataError::Member {
        path: path.to_path_buf(),
        member: member.to_string(),
        message,
    };
    let Some((offset, size, name, gray)) = p.image else {
        let found = if p.others.is_empty() {
            "only its label".to_string()
        } else {
            p.others.join(", ")
        };
        return bad(
            out,
            err(
                &p.key,
                format!(
                    "expected an image member ({}.png, .jpg, .jpeg or .webp), found {found}",
                    p.key
                ),
            ),
        );
    };
    let gray = match gray {
        Ok(g) => g,
        Err(m) => return bad(out, err(&name, format!("not an image: {m}"))),
    };
    let label = match p.label {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(m)) => return bad(out, err(&name, format!("bad label {m}"))),
    };
    out.samples.push((offset, size, name, gray, label));
    Ok(())
}

/// The label of a `.cls` (a decimal number) or `.json` (`label` or `cls`, an integer) member.
pub fn parse_label(ext: &str, bytes: &[u8]) -> Result<u32, String> {
    let text = String::from_utf8_lossy(bytes);
    let shown = |t: &str| {
        let t = t.trim();
        if t.len() > 40 {
            format!("{:?}…", t.chars().take(40).collect::<String>())
        } else {
            format!("{t:?}")
        }
    };
    if ext == "cls" {
        return text
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("expected a decimal class number, found {}", shown(&text)));
    }
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("expected a JSON object, found {} ({e})", shown(&text)))?;
    for field in ["label", "cls"] {
        if let Some(x) = v.get(field) {
            return x
                .as_u64()
                .filter(|&l| l <= u32::MAX as u64)
                .map(|l| l as u32)
                .ok_or_else(|| {
                    format!("expected \"{field}\" to be a class number, found {x}")
                });
        }
    }
    Err(format!(
        "expected a \"label\" or \"cls\" field, found {}",
        shown(&text)
    ))
}

/// Open `wds:` shards: index them all (in parallel over shards), then stream.
pub fn open(spec_path: &str, opts: &OpenOptions) -> Result<Dataset, DataError> {
    let size = opts.image_size.unwrap_or(32);
    if size == 0 {
        return Err(DataError::Spec {
            spec: format!("wds:{spec_path}"),
            message: "image size must be at least 1".into(),
        });
    }
    let shards = shard_paths(spec_path)?;
    let results = par_shards(&shards, opts.skip_bad);
    let limit = opts.limit.unwrap_or(usize::MAX);
    let mut members = TarMembers {
        shards: shards.clone(),
        ..Default::default()
    };
    let mut labels: Vec<u32> = Vec::new();
    let mut labelled: Option<bool> = None;
    let mut all_gray = true;
    let mut skipped = 0;
    'outer: for (s, r) in results.into_iter().enumerate() {
        let idx = r?;
        skipped += idx.skipped;
        for (offset, size, name, gray, label) in idx.samples {
            if members.len() >= limit {
                break 'outer;
            }
            let has = label.is_some();
            if *labelled.get_or_insert(has) != has {
                let e = DataError::Member {
                    path: shards[s].clone(),
                    member: name,
                    message: format!(
                        "expected {} like the first sample's, found {}",
                        if has { "no label" } else { "a label (KEY.cls or KEY.json)" },
                        if has { "one" } else { "none" }
                    ),
                };
                if opts.skip_bad {
                    eprintln!("warning: {e}; skipped (--skip-bad)");
                    skipped += 1;
                    continue;
                }
                return Err(e);
            }
            all_gray &= gray;
            members.push(s as u32, offset, size, &name);
            if let Some(l) = label {
                labels.push(l);
            }
        }
    }
    members.shrink();
    let n = members.len();
    if n == 0 {
        return Err(DataError::Empty {
            path: PathBuf::from(spec_path),
            message: format!("no readable samples in {} shards ({skipped} skipped)", shards.len()),
        });
    }
    let channels = if all_gray { 1 } else { 3 };
    let (labels, classes) = if labelled == Some(true) {
        let k = labels.iter().copied().max().unwrap_or(0) as usize + 1;
        labels.shrink_to_fit();
        (Some(labels), (0..k).map(|c| c.to_string()).collect())
    } else {
        (None, Vec::new())
    };
    let mut train = ImageSet::in_memory(Vec::new(), labels, n, channels, size, size);
    train.stream = Some(Arc::new(Sharded::new(
        Arc::new(members),
        size,
        channels,
        opts.skip_bad,
    )));
    let name = Path::new(spec_path);
    let name = if name.is_dir() {
        crate::data::idx::dir_name(name)
    } else {
        name.parent()
            .map_or_else(|| "wds".to_string(), crate::data::idx::dir_name)
    };
    Ok(Dataset {
        name,
        train,
        test: None,
        classes,
        skipped,
    })
}

/// [`index_shard_inner`] over every shard on a few threads; results in shard order.
fn par_shards(shards: &[PathBuf], skip_bad: bool) -> Vec<Result<ShardIndex, DataError>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(shards.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, Result<ShardIndex, DataError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= shards.len() {
                            return mine;
                        }
                        let r = std::panic::catch_unwind(|| index_shard_inner(&shards[i], skip_bad))
                            .unwrap_or_else(|_| {
                                Err(DataError::Member {
                                    path: shards[i].clone(),
                                    member: "(index)".into(),
                                    message: "the reader crashed".into(),
                                })
                            });
                        mine.push((i, r));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut out: Vec<Option<Result<ShardIndex, DataError>>> = shards.iter().map(|_| None).collect();
    for (i, r) in done.drain(..) {
        out[i] = Some(r);
    }
    out.into_iter()
        .zip(shards)
        .map(|(r, path)| {
            r.unwrap_or_else(|| {
                Err(DataError::Member {
                    path: path.clone(),
                    member: "(index)".into(),
                    message: "the reader crashed".into(),
                })
            })
        })
        .collect()
}
