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
use crate::data::{DataError, Dataset, ImageSet, OpenOptions, MAX_CLASSES};

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
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar")))
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
                    patterns
                        .iter()
                        .any(|pat| glob_match(pat.as_bytes(), f.as_bytes()))
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
    let mut entries = archive
        .entries_with_seek()
        .map_err(|e| DataError::io(path, e))?;
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
        // saturating: a damaged header may claim any size up to 2^64
        next_header = offset.saturating_add(size.div_ceil(512).saturating_mul(512));
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
        if offset.saturating_add(size) > file_len {
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
                let e = member_err(
                    &name,
                    format!("expected an image under 4 GiB, found {size} bytes"),
                );
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
    let label = parse_number(ext, bytes)?;
    if label < MAX_CLASSES {
        Ok(label)
    } else {
        Err(format!(
            "expected a class number below {MAX_CLASSES}, found {label}"
        ))
    }
}

fn parse_number(ext: &str, bytes: &[u8]) -> Result<u32, String> {
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
                .ok_or_else(|| format!("expected \"{field}\" to be a class number, found {x}"));
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
                        if has {
                            "no label"
                        } else {
                            "a label (KEY.cls or KEY.json)"
                        },
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
            message: format!(
                "no readable samples in {} shards ({skipped} skipped)",
                shards.len()
            ),
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
                        let r =
                            std::panic::catch_unwind(|| index_shard_inner(&shards[i], skip_bad))
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

/// Write a shard (tests, fuzz seeds, measurements): `members` in order, GNU tar headers, as the
/// `tar` crate writes them.
pub fn write_shard(path: &Path, members: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    let mut b = tar::Builder::new(std::io::BufWriter::new(File::create(path)?));
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..])?;
    }
    use std::io::Write;
    b.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::Img;
    use crate::data::loader::{default_make_batch, Loader, LoaderConfig, MakeBatch, Share};
    use crate::data::rngs::BatchRngs;
    use crate::data::Stream;
    use std::sync::atomic::AtomicU64;

    use crate::data::test_photos::{open_as, opts, photo, PHOTOS};
    const SOME: &[&str] = &[
        "apple.jpg",
        "astronaut.png",
        "baboon.jpg",
        "chelsea.png",
        "coffee.png",
        "orange.jpg",
    ];

    fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
        write_shard(path, members).unwrap();
    }

    /// A small PNG with content depending on `i`.
    fn png(i: usize) -> Vec<u8> {
        let img = image::RgbImage::from_fn(20 + i as u32 % 7, 18, |x, y| {
            image::Rgb([(x * 9 + i as u32) as u8, (y * 5) as u8, (x ^ y) as u8])
        });
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn shards_give_the_folder_readers_images_bitwise_and_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        let mut members: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(), Vec::new()];
        for (i, name) in SOME.iter().enumerate() {
            std::fs::copy(Path::new(PHOTOS).join(name), folder.join(name)).unwrap();
            let (stem, ext) = name.split_once('.').unwrap();
            let shard = &mut members[i / 3];
            shard.push((format!("{stem}.{ext}"), photo(name)));
            // labels as .cls in the first shard, as .json in the second
            if i < 3 {
                shard.push((format!("{stem}.cls"), format!("{}\n", i % 2).into_bytes()));
            } else {
                shard.push((
                    format!("{stem}.json"),
                    format!("{{\"label\": {}}}", i % 2).into_bytes(),
                ));
            }
            shard.push((format!("{stem}.txt"), b"a caption, ignored".to_vec()));
        }
        let shards = dir.path().join("shards");
        std::fs::create_dir(&shards).unwrap();
        for (s, m) in members.iter().enumerate() {
            write_tar(&shards.join(format!("train-{s:03}.tar")), m);
        }
        let o = OpenOptions {
            stream: Stream::Never,
            ..opts(false)
        };
        let want = crate::data::open(&format!("folder:{}", folder.display()), &o).unwrap();
        for spec in [
            format!("wds:{}", shards.display()),
            format!("wds:{}/train-*.tar", shards.display()),
            format!("wds:{}/train-{{000..001}}.tar", shards.display()),
        ] {
            let ds = crate::data::open(&spec, &opts(false)).unwrap();
            let t = &ds.train;
            assert!(t.is_streamed() && t.images.is_empty(), "{spec}");
            assert_eq!((t.n, t.channels, t.height), (6, 3, 24), "{spec}");
            for i in 0..t.n {
                assert_eq!(
                    t.image(i).unwrap(),
                    want.train.image(i).unwrap(),
                    "{spec}: image {i}"
                );
            }
            assert_eq!(t.labels, Some(vec![0, 1, 0, 1, 0, 1]));
            assert_eq!(ds.classes, vec!["0", "1"]);
            assert_eq!(ds.skipped, 0);
            assert!(t
                .stream
                .as_ref()
                .unwrap()
                .name(4)
                .ends_with("train-001.tar:coffee.png"));
            // the index: tens of bytes per image
            let per_image = t.memory_bytes() as f64 / t.n as f64;
            assert!(per_image < 120.0, "{per_image} bytes per image");
        }
        // limit; a single shard file
        let limited = crate::data::open(
            &format!("wds:{}", shards.display()),
            &OpenOptions {
                limit: Some(4),
                ..opts(false)
            },
        )
        .unwrap();
        assert_eq!(limited.train.n, 4);
        let one = crate::data::open(
            &format!("wds:{}/train-001.tar", shards.display()),
            &opts(false),
        )
        .unwrap();
        assert_eq!(one.train.image(0).unwrap(), want.train.image(3).unwrap());
        let e = crate::data::open(
            &format!("wds:{}/nope-*.tar", shards.display()),
            &opts(false),
        )
        .unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
    }

    #[test]
    fn webp_members_decode() {
        let dir = tempfile::tempdir().unwrap();
        let src = image::open(Path::new(PHOTOS).join("chelsea.png"))
            .unwrap()
            .to_rgb8();
        let mut webp = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .encode(
                src.as_raw(),
                src.width(),
                src.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        write_tar(
            &dir.path().join("a.tar"),
            &[
                ("cat.webp".into(), webp),
                ("cat2.png".into(), photo("chelsea.png")),
            ],
        );
        let ds = crate::data::open(&format!("wds:{}", dir.path().display()), &opts(false)).unwrap();
        assert_eq!(ds.train.n, 2);
        // lossless WebP of the PNG's pixels: the same image
        assert_eq!(ds.train.image(0).unwrap(), ds.train.image(1).unwrap());
    }

    /// Members a, b, c (PNG images with .cls labels).
    fn three() -> Vec<(String, Vec<u8>)> {
        let mut m = Vec::new();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            m.push((format!("{k}.png"), png(i)));
            m.push((format!("{k}.cls"), i.to_string().into_bytes()));
        }
        m
    }

    #[test]
    fn damaged_shards_are_errors_naming_shard_and_member_or_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("s.tar");
        // truncated in the data of c.png
        write_tar(&shard, &three());
        let bytes = std::fs::read(&shard).unwrap();
        let c_at = bytes.windows(5).position(|w| w == b"c.png").unwrap();
        std::fs::write(&shard, &bytes[..c_at + 512 + 40]).unwrap();
        let e = open_as("wds", &shard, false).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DataError::Member { .. }), "{e:?}");
        assert!(
            msg.contains("s.tar") && msg.contains("c.png") && msg.contains("truncated"),
            "{msg}"
        );
        assert!(
            msg.contains("expected") && msg.contains("--skip-bad"),
            "{msg}"
        );
        let ds = open_as("wds", &shard, true).unwrap();
        assert_eq!((ds.train.n, ds.skipped), (2, 1));
        assert_eq!(ds.train.labels, Some(vec![0, 1]));
        // truncated inside a header block
        std::fs::write(&shard, &bytes[..c_at + 100]).unwrap();
        let e = open_as("wds", &shard, false).unwrap_err();
        assert!(e.to_string().contains("s.tar"), "{e}");
        assert_eq!(open_as("wds", &shard, true).unwrap().train.n, 2);

        // a damaged header (b.png's): its checksum no longer matches
        let mut damaged = bytes.clone();
        let b_at = bytes.windows(5).position(|w| w == b"b.png").unwrap();
        damaged[b_at] = b'x';
        std::fs::write(&shard, &damaged).unwrap();
        let msg = open_as("wds", &shard, false).unwrap_err().to_string();
        assert!(
            msg.contains("s.tar") && msg.contains("after a.cls") && msg.contains("tar header"),
            "{msg}"
        );
        let ds = open_as("wds", &shard, true).unwrap();
        assert_eq!((ds.train.n, ds.skipped), (1, 1));

        // a member that is not an image, a sample without an image, a bad label
        let mut m = three();
        m[2].1 = b"these are not the pixels you are looking for".to_vec();
        m.push(("d.txt".into(), b"no image here".to_vec()));
        m.push(("e.png".into(), png(4)));
        m.push(("e.cls".into(), b"cat".to_vec()));
        write_tar(&shard, &m);
        let msg = open_as("wds", &shard, false).unwrap_err().to_string();
        assert!(msg.contains("s.tar: b.png: not an image: expected a PNG, JPEG or WebP image, found 44 bytes starting 74 68"), "{msg}");
        let ds = open_as("wds", &shard, true).unwrap();
        assert_eq!((ds.train.n, ds.skipped), (2, 3));
        assert_eq!(ds.train.labels, Some(vec![0, 2]));
        m.remove(2);
        m.remove(2);
        write_tar(&shard, &m);
        let msg = open_as("wds", &shard, false).unwrap_err().to_string();
        assert!(
            msg.contains(
                "s.tar: d: expected an image member (d.png, .jpg, .jpeg or .webp), found d.txt"
            ),
            "{msg}"
        );
        m.retain(|(n, _)| !n.starts_with('d'));
        write_tar(&shard, &m);
        let msg = open_as("wds", &shard, false).unwrap_err().to_string();
        assert!(
            msg.contains("e.png: bad label e.cls: expected a decimal class number, found \"cat\""),
            "{msg}"
        );
        // an empty or a non-tar file
        std::fs::write(&shard, b"").unwrap();
        assert!(matches!(
            open_as("wds", &shard, false).unwrap_err(),
            DataError::Empty { .. }
        ));
        std::fs::write(&shard, vec![7u8; 2000]).unwrap();
        assert!(open_as("wds", &shard, false)
            .unwrap_err()
            .to_string()
            .contains("s.tar"));
    }

    #[test]
    fn a_member_that_breaks_after_open_is_named_or_replaced_with_skip_bad() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("s.tar");
        let mut m = three();
        // a PNG whose header is intact and whose pixel data is cut short
        let noise = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 97 + y * 13) as u8, (x ^ y) as u8, (x * y * 7) as u8])
        });
        let mut full = Vec::new();
        noise
            .write_to(
                &mut std::io::Cursor::new(&mut full),
                image::ImageFormat::Png,
            )
            .unwrap();
        m[2].1 = full[..full.len() * 6 / 10].to_vec();
        write_tar(&shard, &m);
        let ds = open_as("wds", &shard, false).unwrap();
        assert_eq!(ds.train.n, 3);
        let e = ds.train.image(1).unwrap_err();
        assert!(e.to_string().contains("s.tar: b.png"), "{e}");
        let ds = open_as("wds", &shard, true).unwrap();
        let set = Arc::new(ds.train);
        let (used, _) = set.image_or_next(1).unwrap();
        assert_eq!(used, 2);
        let cfg = LoaderConfig {
            batch_size: 3,
            seed: 2,
            workers: 2,
            prefetch: 1,
            start_batch: 0,
            drop_last: true,
        };
        let got: Vec<_> = Loader::new(set.clone(), cfg, default_make_batch())
            .take(4)
            .collect();
        assert!(got.iter().all(|b| b.is_ok()));
        assert_eq!(set.substituted(), 1);
    }

    /// Each rank reads and decodes 1/N of every global batch, and its part is the same bytes as
    /// the whole batch's; for folders too (bit-identical to one process).
    #[test]
    fn each_rank_decodes_only_its_share_of_every_batch() {
        let dir = tempfile::tempdir().unwrap();
        let shards = dir.path().join("shards");
        let folder = dir.path().join("folder");
        std::fs::create_dir(&shards).unwrap();
        std::fs::create_dir(&folder).unwrap();
        for s in 0..3 {
            let m: Vec<_> = (0..10)
                .map(|k| (format!("{:03}.png", s * 10 + k), png(s * 10 + k)))
                .collect();
            for (name, data) in &m {
                std::fs::write(folder.join(name), data).unwrap();
            }
            write_tar(&shards.join(format!("{s}.tar")), &m);
        }
        let cfg = LoaderConfig {
            batch_size: 8,
            seed: 9,
            workers: 2,
            prefetch: 2,
            start_batch: 0,
            drop_last: true,
        };
        for spec in [
            format!("wds:{}", shards.display()),
            format!("folder:{}", folder.display()),
        ] {
            let o = OpenOptions {
                stream: Stream::Always,
                ..opts(false)
            };
            // per share: the images of each batch (empty where another rank's) and the count of
            // images the make function received with pixels
            let run = |share: Share| {
                let set = Arc::new(crate::data::open(&spec, &o).unwrap().train);
                let made = Arc::new(AtomicU64::new(0));
                let make: MakeBatch<Vec<Vec<f32>>> = {
                    let made = made.clone();
                    Arc::new(move |imgs: &[Img], _: &[u32], _: &BatchRngs| {
                        let own = imgs.iter().filter(|i| !i.data.is_empty()).count();
                        made.fetch_add(own as u64, Ordering::Relaxed);
                        imgs.iter().map(|i| i.data.clone()).collect()
                    })
                };
                let mut loader = Loader::with_share(set.clone(), cfg.clone(), make, share);
                let batches: Vec<Vec<Vec<f32>>> =
                    loader.by_ref().take(7).map(|b| b.unwrap()).collect();
                drop(loader);
                let made = made.load(Ordering::Relaxed);
                (batches, made, set.decodes())
            };
            let (all, made_all, decoded_all) = run(Share::ALL);
            assert_eq!(made_all % 8, 0);
            if spec.starts_with("wds") {
                assert_eq!(
                    decoded_all, made_all,
                    "every image of the batch decoded once"
                );
            }
            let mut own_total = Vec::new();
            for rank in 0..2 {
                let (mine, made, decoded) = run(Share { rank, ranks: 2 });
                // 4 of each batch of 8: one half
                assert_eq!(made % 4, 0, "{spec}");
                assert!(made >= 7 * 4, "{spec}");
                if spec.starts_with("wds") {
                    assert_eq!(decoded, made, "{spec}: rank {rank} decoded only its half");
                }
                for (k, (b, whole)) in mine.iter().zip(&all).enumerate() {
                    for (p, (img, want)) in b.iter().zip(whole).enumerate() {
                        if (rank * 4..rank * 4 + 4).contains(&p) {
                            assert_eq!(img, want, "{spec}: batch {k} position {p}");
                        } else {
                            assert!(img.is_empty());
                        }
                    }
                }
                own_total.push(made);
            }
            // two ranks together decoded what one process decodes, each half of it (prefetch
            // aside: each counts whole batches)
            assert!(own_total.iter().all(|&m| m * 2 >= 7 * 8));
        }
    }

    #[test]
    fn shard_epochs_visit_every_image_once_shard_by_shard() {
        let dir = tempfile::tempdir().unwrap();
        for s in 0..4 {
            let m: Vec<_> = (0..6).map(|k| (format!("{s}{k}.png"), png(k))).collect();
            write_tar(&dir.path().join(format!("{s}.tar")), &m);
        }
        let ds = open_as("wds", dir.path(), false).unwrap();
        let order = ds.train.epoch_order(1, 0);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..24).collect::<Vec<_>>());
        assert_ne!(order, ds.train.epoch_order(1, 1));
        assert_eq!(
            ds.train.batch_indices(5, true, 1, 2),
            order[10..15].to_vec()
        );
    }

    /// Shards written by Python's `tarfile` (the fuzz seeds).
    #[test]
    fn reads_shards_written_by_python_tarfile() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/wds_tar");
        let ds = open_as("wds", &seeds.join("labelled.tar"), false).unwrap();
        assert_eq!((ds.train.n, ds.train.channels), (2, 3));
        assert_eq!(ds.train.labels, Some(vec![1, 2]));
        let ds = open_as("wds", &seeds.join("unlabelled.tar"), false).unwrap();
        assert_eq!((ds.train.n, ds.train.labels.is_none()), (2, true));
    }

    #[test]
    fn keys_and_globs() {
        assert_eq!(split_key("dir/000017.seg.png"), ("dir/000017", "seg.png"));
        assert_eq!(split_key("a.b/c.jpg"), ("a.b/c", "jpg"));
        assert_eq!(split_key("plain"), ("plain", ""));
        assert_eq!(
            expand_braces("s-{08..10}.tar"),
            vec!["s-08.tar", "s-09.tar", "s-10.tar"]
        );
        assert_eq!(expand_braces("{a,b}.tar"), vec!["a.tar", "b.tar"]);
        assert!(glob_match(b"train-*.tar", b"train-0001.tar"));
        assert!(glob_match(b"?.tar", b"a.tar"));
        assert!(!glob_match(b"train-*.tar", b"test-0001.tar"));
        assert_eq!(parse_label("json", br#"{"cls": 3}"#), Ok(3));
        assert!(parse_label("json", br#"{"label": -1}"#)
            .unwrap_err()
            .contains("found -1"));
        assert!(parse_label("json", b"[1]")
            .unwrap_err()
            .contains("\"label\" or \"cls\""));
        assert_eq!(parse_label("cls", b"99999\n"), Ok(99_999));
        assert_eq!(
            parse_label("cls", b"385875968"),
            Err("expected a class number below 100000, found 385875968".to_string())
        );
    }

    /// Peak resident memory of this process (VmHWM), in MiB.
    fn peak_mib() -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    /// The measurement of issue 40: `PRETEXT_SCALE_N` (default 100,000) synthetic 32x32 PNGs in
    /// shards of 10,000, indexed, then streamed once through the loader (batches of 256, 32x32).
    /// `PRETEXT_SCALE_N=1000000 cargo test --lib measure_shard_streaming -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: minutes, and disk for the shards"]
    fn measure_shard_streaming() {
        let n: usize = std::env::var("PRETEXT_SCALE_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let per_shard = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::Instant::now();
        let mut bytes = 0u64;
        for s in 0..n.div_ceil(per_shard) {
            let members: Vec<_> = (s * per_shard..((s + 1) * per_shard).min(n))
                .flat_map(|i| {
                    let mut rng = i as u32 ^ 0x9e37_79b9;
                    let img = image::RgbImage::from_fn(32, 32, |x, y| {
                        rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        image::Rgb([(x * 8) as u8, (y * 8) as u8, (rng >> 24) as u8])
                    });
                    let mut png = Vec::new();
                    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                        .unwrap();
                    [
                        (format!("{i:08}.png"), png),
                        (format!("{i:08}.cls"), (i % 10).to_string().into_bytes()),
                    ]
                })
                .collect();
            let path = dir.path().join(format!("shard-{s:05}.tar"));
            write_shard(&path, &members).unwrap();
            bytes += std::fs::metadata(&path).unwrap().len();
        }
        let written = t0.elapsed().as_secs_f64();
        let before = peak_mib();
        let t1 = std::time::Instant::now();
        let o = OpenOptions {
            image_size: Some(32),
            ..opts(false)
        };
        let ds = crate::data::open(&format!("wds:{}", dir.path().display()), &o).unwrap();
        let opened = t1.elapsed().as_secs_f64();
        assert_eq!(ds.train.n, n);
        let index_bytes = ds.train.memory_bytes() as f64 / n as f64;
        let set = Arc::new(ds.train);
        let cfg = LoaderConfig {
            batch_size: 256,
            seed: 1,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 4,
            start_batch: 0,
            drop_last: false,
        };
        let t2 = std::time::Instant::now();
        let mut loader = Loader::new(set.clone(), cfg, default_make_batch());
        let bpe = loader.batches_per_epoch();
        let mut seen = 0;
        for _ in 0..bpe {
            seen += loader.next().unwrap().unwrap().b;
        }
        let streamed = t2.elapsed().as_secs_f64();
        drop(loader);
        assert_eq!(seen, n);
        println!(
            "n {n}: wrote {:.0} MB of shards in {written:.1} s; index opened in {opened:.1} s \
             ({:.0} images/s); streamed once in {streamed:.1} s = {:.0} images/s on {} workers; \
             index {index_bytes:.1} bytes/image (labels included); peak RSS (VmHWM) {before:.0} MiB \
             before opening, {:.0} MiB after streaming",
            bytes as f64 / 1e6,
            n as f64 / opened,
            n as f64 / streamed,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            peak_mib()
        );
    }
}
