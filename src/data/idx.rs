//! The idx format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! Big-endian. Images: magic 0x00000803, int32 count, rows, cols, then count*rows*cols bytes,
//! row-major. Labels: magic 0x00000801, int32 count, then one byte per image.
//! A directory holds `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]` and,
//! optionally, the `t10k-*` test pair.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::data::{DataError, Dataset, ImageSet};

pub const IMAGES_MAGIC: u32 = 0x0000_0803;
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The Fashion-MNIST class names, indexed by label.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Read an idx directory (see the module doc). `limit` caps the number of train images kept.
pub fn read_dir(dir: &Path, limit: Option<usize>) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        let message = if dir.exists() {
            "not a directory"
        } else {
            "no such directory"
        };
        return Err(DataError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, message),
        ));
    }
    let train_images = find(dir, "train-images-idx3-ubyte")
        .ok_or_else(|| missing(dir, "train-images-idx3-ubyte"))?;
    let train_labels = find(dir, "train-labels-idx1-ubyte")
        .ok_or_else(|| missing(dir, "train-labels-idx1-ubyte"))?;
    let train = parse_pair(
        &train_images,
        &read_maybe_gz(&train_images)?,
        &train_labels,
        &read_maybe_gz(&train_labels)?,
        limit,
    )?;
    let test = match (
        find(dir, "t10k-images-idx3-ubyte"),
        find(dir, "t10k-labels-idx1-ubyte"),
    ) {
        (None, None) => None,
        (Some(ti), Some(tl)) => Some(parse_pair(
            &ti,
            &read_maybe_gz(&ti)?,
            &tl,
            &read_maybe_gz(&tl)?,
            None,
        )?),
        (Some(_), None) => return Err(missing(dir, "t10k-labels-idx1-ubyte")),
        (None, Some(_)) => return Err(missing(dir, "t10k-images-idx3-ubyte")),
    };
    let name = dir_name(dir);
    Ok(Dataset {
        classes: class_names(&name),
        name,
        train,
        test,
        skipped: 0,
    })
}

/// Class names for an idx dataset: the Fashion-MNIST names when `name` mentions "fashion",
/// else "0".."9".
pub fn class_names(name: &str) -> Vec<String> {
    if name.to_ascii_lowercase().contains("fashion") {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..10).map(|i| i.to_string()).collect()
    }
}

/// Parse an images buffer and a labels buffer (each raw or gzip) into one labelled split,
/// checking that the counts agree. The paths are only used in error messages.
pub fn parse_pair(
    images_path: &Path,
    images: &[u8],
    labels_path: &Path,
    labels: &[u8],
    limit: Option<usize>,
) -> Result<ImageSet, DataError> {
    let images = gunzip_if_needed(images_path, images)?;
    let labels = gunzip_if_needed(labels_path, labels)?;
    let (n, rows, cols, pixels) = parse_images(images_path, &images)?;
    let labels = parse_labels(labels_path, &labels)?;
    if labels.len() != n {
        return Err(DataError::Mismatch {
            path: labels_path.to_path_buf(),
            what: "label count".into(),
            expected: format!("{n} (the image count of {})", images_path.display()),
            found: labels.len().to_string(),
        });
    }
    let mut set = ImageSet {
        images: pixels.to_vec(),
        stream: None,
        labels: Some(labels.iter().map(|&l| l as u32).collect()),
        n,
        channels: 1,
        height: rows,
        width: cols,
    };
    if let Some(limit) = limit {
        set = set.take(limit);
    }
    Ok(set)
}

/// Parse an idx3 ubyte image file: returns (count, rows, cols, pixels).
pub fn parse_images<'a>(
    path: &Path,
    b: &'a [u8],
) -> Result<(usize, usize, usize, &'a [u8]), DataError> {
    check_magic(path, b, IMAGES_MAGIC, "idx3 ubyte images")?;
    header_len(path, b, 16)?;
    let n = be32(b, 4) as usize;
    let rows = be32(b, 8) as usize;
    let cols = be32(b, 12) as usize;
    for (offset, what, v) in [(8, "row count", rows), (12, "column count", cols)] {
        if v == 0 || v > 65_536 {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                offset,
                what: format!("bad {what}"),
                expected: "1..=65536".into(),
                found: v.to_string(),
            });
        }
    }
    if n == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            message: "the file holds 0 images".into(),
        });
    }
    let body = n
        .checked_mul(rows * cols)
        .ok_or_else(|| DataError::Format {
            path: path.to_path_buf(),
            offset: 4,
            what: "bad image count".into(),
            expected: "a size that fits in memory".into(),
            found: format!("{n} images of {rows}x{cols}"),
        })?;
    let data = exact_body(path, b, 16, body)?;
    Ok((n, rows, cols, data))
}

/// Parse an idx1 ubyte label file.
pub fn parse_labels<'a>(path: &Path, b: &'a [u8]) -> Result<&'a [u8], DataError> {
    check_magic(path, b, LABELS_MAGIC, "idx1 ubyte labels")?;
    header_len(path, b, 8)?;
    let n = be32(b, 4) as usize;
    exact_body(path, b, 8, n)
}

/// Write an idx3 ubyte image file (gzip when the path ends in `.gz`).
pub fn write_idx_images(
    path: impl AsRef<Path>,
    n: usize,
    rows: usize,
    cols: usize,
    data: &[u8],
) -> std::io::Result<()> {
    if data.len() != n * rows * cols {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "expected {} pixel bytes for {n}x{rows}x{cols}, got {}",
                n * rows * cols,
                data.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(16 + data.len());
    for v in [IMAGES_MAGIC, n as u32, rows as u32, cols as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(data);
    write_maybe_gz(path.as_ref(), &out)
}

/// Write an idx1 ubyte label file (gzip when the path ends in `.gz`).
pub fn write_idx_labels(path: impl AsRef<Path>, labels: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    write_maybe_gz(path.as_ref(), &out)
}

/// Read a whole file, decompressing it if it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    Ok(gunzip_if_needed(path, &bytes)?.into_owned())
}

fn gunzip_if_needed<'a>(path: &Path, b: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, DataError> {
    if b.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(b)
            .read_to_end(&mut out)
            .map_err(|e| {
                DataError::io(path, std::io::Error::new(e.kind(), format!("gzip: {e}")))
            })?;
        Ok(out.into())
    } else {
        Ok(b.into())
    }
}

fn write_maybe_gz(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
    {
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        enc.write_all(bytes)?;
        enc.finish()?.sync_all()
    } else {
        let mut file = file;
        file.write_all(bytes)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn check_magic(path: &Path, b: &[u8], magic: u32, what: &str) -> Result<(), DataError> {
    header_len(path, b, 4)?;
    let found = be32(b, 0);
    if found != magic {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            offset: 0,
            what: "wrong magic number".into(),
            expected: format!("0x{magic:08x} ({what})"),
            found: format!("0x{found:08x}"),
        });
    }
    Ok(())
}

fn header_len(path: &Path, b: &[u8], need: usize) -> Result<(), DataError> {
    if b.len() < need {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            record: None,
            expected_bytes: need as u64,
            found_bytes: b.len() as u64,
        });
    }
    Ok(())
}

/// The `body` bytes after a `header`-byte header, which must end the file exactly.
fn exact_body<'a>(
    path: &Path,
    b: &'a [u8],
    header: usize,
    body: usize,
) -> Result<&'a [u8], DataError> {
    let expected = header + body;
    header_len(path, b, expected)?;
    if b.len() > expected {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            offset: expected as u64,
            what: "unexpected trailing data".into(),
            expected: "end of file".into(),
            found: format!("{} more bytes", b.len() - expected),
        });
    }
    Ok(&b[header..])
}

fn find(dir: &Path, base: &str) -> Option<PathBuf> {
    [dir.join(base), dir.join(format!("{base}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

fn missing(dir: &Path, base: &str) -> DataError {
    DataError::io(
        dir.join(base),
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "file not found (also looked for .gz)",
        ),
    )
}

/// The last component of a directory path, resolving `.` and `..`.
pub(crate) fn dir_name(dir: &Path) -> String {
    let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    resolved
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FASHION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/fashion-mnist");

    #[test]
    fn reads_real_fashion_mnist() {
        let ds = read_dir(Path::new(FASHION), None).unwrap();
        assert_eq!(ds.name, "fashion-mnist");
        assert_eq!(ds.classes[9], "Ankle boot");
        let t = &ds.train;
        assert_eq!((t.n, t.channels, t.height, t.width), (60_000, 1, 28, 28));
        assert_eq!(t.labels.as_ref().unwrap()[0], 9);
        let test = ds.test.as_ref().unwrap();
        assert_eq!(
            (test.n, test.channels, test.height, test.width),
            (10_000, 1, 28, 28)
        );
        assert_eq!(test.labels.as_ref().unwrap()[0], 9);
        let mean = t.images.iter().map(|&v| v as f64).sum::<f64>() / t.images.len() as f64;
        assert!((mean - 72.94).abs() < 0.5, "mean pixel {mean}");
        // 6000 images per class
        let mut counts = [0usize; 10];
        for &l in t.labels.as_ref().unwrap() {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, [6000; 10]);
    }

    #[test]
    fn open_with_limit() {
        let opts = crate::data::OpenOptions {
            limit: Some(100),
            ..Default::default()
        };
        let ds = crate::data::open(&format!("idx:{FASHION}"), &opts).unwrap();
        assert_eq!(ds.train.n, 100);
        assert_eq!(ds.train.images.len(), 100 * 784);
        assert_eq!(ds.train.labels.as_ref().unwrap().len(), 100);
        assert_eq!(ds.test.as_ref().unwrap().n, 10_000);
    }

    /// A tiny valid idx dir (3 images of 2x2, raw or gz), returned with its image/label paths.
    fn craft(gz: bool) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let ext = if gz { ".gz" } else { "" };
        let pi = dir.path().join(format!("train-images-idx3-ubyte{ext}"));
        let pl = dir.path().join(format!("train-labels-idx1-ubyte{ext}"));
        write_idx_images(&pi, 3, 2, 2, &(0..12).collect::<Vec<u8>>()).unwrap();
        write_idx_labels(&pl, &[0, 1, 2]).unwrap();
        (dir, pi, pl)
    }

    #[test]
    fn crafted_roundtrip_raw_and_gz() {
        for gz in [false, true] {
            let (dir, _, _) = craft(gz);
            let ds = read_dir(dir.path(), None).unwrap();
            assert_eq!(ds.train.n, 3);
            assert_eq!(&*ds.train.image(2).unwrap(), &[8, 9, 10, 11]);
            assert_eq!(ds.train.labels, Some(vec![0, 1, 2]));
            assert!(ds.test.is_none());
            assert_eq!(ds.classes[3], "3");
        }
    }

    #[test]
    fn truncated_images() {
        let (dir, pi, _) = craft(false);
        let b = std::fs::read(&pi).unwrap();
        std::fs::write(&pi, &b[..b.len() - 1]).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    expected_bytes: 28,
                    found_bytes: 27,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(&pi.display().to_string()), "{e}");
        // shorter than the header
        std::fs::write(&pi, &b[..10]).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    expected_bytes: 16,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_magic() {
        let (dir, pi, pl) = craft(true);
        // swap: a labels file where images are expected
        std::fs::copy(&pl, &pi).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(matches!(e, DataError::Format { offset: 0, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&pi.display().to_string()), "{msg}");
        assert!(
            msg.ends_with("wrong magic number at byte 0: expected 0x00000803 (idx3 ubyte images), found 0x00000801"),
            "{msg}"
        );
    }

    #[test]
    fn label_count_mismatch() {
        let (dir, _, pl) = craft(false);
        write_idx_labels(&pl, &[0, 1]).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(matches!(e, DataError::Mismatch { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&pl.display().to_string()) && msg.contains("found 2"),
            "{msg}"
        );
    }

    #[test]
    fn extra_bytes() {
        let (dir, pi, _) = craft(false);
        let mut b = std::fs::read(&pi).unwrap();
        b.extend_from_slice(&[0, 0, 0]);
        std::fs::write(&pi, &b).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(matches!(e, DataError::Format { offset: 28, .. }), "{e:?}");
        assert!(e.to_string().contains("3 more bytes"), "{e}");
    }

    #[test]
    fn bad_dims_and_missing_files() {
        let (dir, pi, _) = craft(false);
        let mut b = std::fs::read(&pi).unwrap();
        b[8..12].copy_from_slice(&0u32.to_be_bytes());
        std::fs::write(&pi, &b).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(matches!(e, DataError::Format { offset: 8, .. }), "{e:?}");
        std::fs::remove_file(&pi).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(matches!(e, DataError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("train-images-idx3-ubyte"), "{e}");
        // test images without test labels
        let (dir, _, _) = craft(false);
        write_idx_images(
            dir.path().join("t10k-images-idx3-ubyte"),
            1,
            2,
            2,
            &[1, 2, 3, 4],
        )
        .unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(e.to_string().contains("t10k-labels-idx1-ubyte"), "{e}");
    }

    #[test]
    fn corrupt_gzip_is_an_error_not_a_panic() {
        let (dir, pi, _) = craft(true);
        let b = std::fs::read(&pi).unwrap();
        std::fs::write(&pi, &b[..b.len() / 2]).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(e.to_string().contains(&pi.display().to_string()), "{e}");
    }
}
