//! CIFAR-10 and CIFAR-100, binary versions (<https://www.cs.toronto.edu/~kriz/cifar.html>).
//!
//! A file is a run of fixed-size records. CIFAR-10 (`data_batch_1..5.bin`, `test_batch.bin`):
//! 1 label byte + 3072 pixel bytes. CIFAR-100 (`train.bin`, `test.bin`): 1 coarse label byte +
//! 1 fine label byte + 3072 pixel bytes; the fine label is used. Pixels are 32x32, the red plane,
//! then green, then blue, each row-major — already the CHW layout of [`ImageSet`].

use std::path::{Path, PathBuf};

use crate::data::{DataError, Dataset, ImageSet};

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

/// The two record layouts.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// Label bytes before the pixels.
    label_bytes: usize,
    /// Which of them is the label used.
    label_at: usize,
    classes: u32,
}

const CIFAR10: Layout = Layout {
    label_bytes: 1,
    label_at: 0,
    classes: 10,
};
const CIFAR100: Layout = Layout {
    label_bytes: 2,
    label_at: 1,
    classes: 100,
};

/// Read a CIFAR-10 binary dir (`cifar-10-batches-bin`, or a dir that contains it).
pub fn read_cifar10(dir: &Path, limit: Option<usize>) -> Result<Dataset, DataError> {
    let dir = descend(dir, "cifar-10-batches-bin", "data_batch_1.bin");
    let train_files: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .filter(|p| p.is_file())
        .collect();
    if train_files.is_empty() {
        return Err(not_found(dir.join("data_batch_1.bin")));
    }
    let train = read_files(&train_files, CIFAR10, limit)?;
    let test_path = dir.join("test_batch.bin");
    let test = if test_path.is_file() {
        Some(read_files(&[test_path], CIFAR10, None)?)
    } else {
        None
    };
    Ok(Dataset {
        name: "cifar10".into(),
        classes: class_names(&dir.join("batches.meta.txt"), CIFAR10.classes)?,
        train,
        test,
        skipped: 0,
    })
}

/// Read a CIFAR-100 binary dir (`cifar-100-binary`, or a dir that contains it); fine labels.
pub fn read_cifar100(dir: &Path, limit: Option<usize>) -> Result<Dataset, DataError> {
    let dir = descend(dir, "cifar-100-binary", "train.bin");
    let train_path = dir.join("train.bin");
    if !train_path.is_file() {
        return Err(not_found(train_path));
    }
    let train = read_files(&[train_path], CIFAR100, limit)?;
    let test_path = dir.join("test.bin");
    let test = if test_path.is_file() {
        Some(read_files(&[test_path], CIFAR100, None)?)
    } else {
        None
    };
    Ok(Dataset {
        name: "cifar100".into(),
        classes: class_names(&dir.join("fine_label_names.txt"), CIFAR100.classes)?,
        train,
        test,
        skipped: 0,
    })
}

/// Write records in the CIFAR-10 layout (`fine` = None) or the CIFAR-100 layout
/// (`fine` = Some, `labels` then being the coarse labels). For tests and tools.
pub fn write_records(
    path: &Path,
    labels: &[u8],
    fine: Option<&[u8]>,
    pixels: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        out.push(l);
        if let Some(f) = fine {
            out.push(f[i]);
        }
        out.extend_from_slice(&pixels[i * PIXELS..(i + 1) * PIXELS]);
    }
    std::fs::write(path, out)
}

fn read_files(
    files: &[PathBuf],
    layout: Layout,
    limit: Option<usize>,
) -> Result<ImageSet, DataError> {
    let limit = limit.unwrap_or(usize::MAX);
    let record = layout.label_bytes + PIXELS;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        if labels.len() >= limit {
            break;
        }
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let full = bytes.len() / record;
        if bytes.len() % record != 0 {
            return Err(DataError::Truncated {
                path: path.clone(),
                record: Some(full as u64),
                expected_bytes: ((full + 1) * record) as u64,
                found_bytes: bytes.len() as u64,
            });
        }
        for (i, rec) in bytes.chunks_exact(record).enumerate() {
            if labels.len() >= limit {
                break;
            }
            let label = rec[layout.label_at] as u32;
            if label >= layout.classes {
                return Err(DataError::Format {
                    path: path.clone(),
                    offset: (i * record + layout.label_at) as u64,
                    what: format!("bad label in record {i}"),
                    expected: format!("0..{}", layout.classes),
                    found: label.to_string(),
                });
            }
            labels.push(label);
            images.extend_from_slice(&rec[layout.label_bytes..]);
        }
    }
    if labels.is_empty() {
        return Err(DataError::Empty {
            path: files[0].clone(),
            message: "no images in the file".into(),
        });
    }
    Ok(ImageSet {
        images,
        stream: None,
        n: labels.len(),
        labels: Some(labels),
        channels: 3,
        height: SIDE,
        width: SIDE,
    })
}

/// One name per non-empty line of `path` if it exists (and has enough names), else "0".."n-1".
pub(crate) fn class_names(path: &Path, n: u32) -> Result<Vec<String>, DataError> {
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.len() != n as usize {
            return Err(DataError::Mismatch {
                path: path.to_path_buf(),
                what: "class name count".into(),
                expected: n.to_string(),
                found: names.len().to_string(),
            });
        }
        return Ok(names);
    }
    Ok((0..n).map(|i| i.to_string()).collect())
}

/// `dir/sub` when `dir` itself lacks `marker` but `dir/sub` exists (the archive's top folder).
pub(crate) fn descend(dir: &Path, sub: &str, marker: &str) -> PathBuf {
    if !dir.join(marker).exists() && dir.join(sub).is_dir() {
        dir.join(sub)
    } else {
        dir.to_path_buf()
    }
}

pub(crate) fn not_found(path: PathBuf) -> DataError {
    DataError::io(
        path,
        std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_photos::{dir_with, pattern};

    /// `n` records' pixels.
    fn pixels(n: usize) -> Vec<u8> {
        pattern(n * PIXELS, 7, 251)
    }

    #[test]
    fn cifar10_roundtrip() {
        let (dir, d) = dir_with("cifar-10-batches-bin");
        let px = pixels(5);
        write_records(
            &d.join("data_batch_1.bin"),
            &[3, 1, 4],
            None,
            &px[..3 * PIXELS],
        )
        .unwrap();
        write_records(
            &d.join("data_batch_2.bin"),
            &[9],
            None,
            &px[3 * PIXELS..4 * PIXELS],
        )
        .unwrap();
        write_records(&d.join("test_batch.bin"), &[5], None, &px[4 * PIXELS..]).unwrap();
        let names = [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ];
        std::fs::write(d.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
        // the parent dir works too
        let ds = crate::data::open(
            &format!("cifar10:{}", dir.path().display()),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(crate::data::test_photos::shape(&ds.train), (4, 3, 32, 32));
        assert_eq!(ds.train.labels, Some(vec![3, 1, 4, 9]));
        assert_eq!(ds.train.images, px[..4 * PIXELS]);
        let test = ds.test.unwrap();
        assert_eq!(test.labels, Some(vec![5]));
        assert_eq!(&*test.image(0).unwrap(), &px[4 * PIXELS..]);
        assert_eq!(ds.classes[9], "truck");
        let limited = read_cifar10(&d, Some(2)).unwrap();
        assert_eq!(limited.train.n, 2);
    }

    #[test]
    fn cifar100_fine_labels() {
        let dir = tempfile::tempdir().unwrap();
        let px = pixels(2);
        write_records(&dir.path().join("train.bin"), &[1, 2], Some(&[42, 99]), &px).unwrap();
        let ds = read_cifar100(dir.path(), None).unwrap();
        assert_eq!(ds.train.labels, Some(vec![42, 99]));
        assert_eq!(ds.train.images, px);
        assert!(ds.test.is_none());
        assert_eq!(ds.classes.len(), 100);
    }

    #[test]
    fn truncated_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data_batch_1.bin");
        write_records(&p, &[0, 1], None, &pixels(2)).unwrap();
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 10]).unwrap();
        let e = read_cifar10(dir.path(), None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    record: Some(1),
                    expected_bytes: 6146,
                    found_bytes: 6136,
                    ..
                }
            ),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains("record 1"),
            "{msg}"
        );
    }

    #[test]
    fn bad_label_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_cifar10(dir.path(), None).unwrap_err();
        assert!(
            matches!(e, DataError::Io { .. }) && e.to_string().contains("data_batch_1.bin"),
            "{e}"
        );
        write_records(
            &dir.path().join("data_batch_1.bin"),
            &[0, 10],
            None,
            &pixels(2),
        )
        .unwrap();
        let e = read_cifar10(dir.path(), None).unwrap_err();
        assert!(matches!(e, DataError::Format { offset: 3073, .. }), "{e:?}");
    }
}
