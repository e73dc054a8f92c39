//! STL-10, binary version (<https://cs.stanford.edu/~acoates/stl10/>).
//!
//! `stl10_binary/`: `train_X.bin`, `train_y.bin`, `test_X.bin`, `test_y.bin`, `unlabeled_X.bin`,
//! `class_names.txt`. An `_X` file is a run of 96x96x3 images, each stored channel by channel
//! (red, green, blue), each channel column-major (as written by MATLAB); we transpose to the
//! row-major CHW layout of [`ImageSet`]. A `_y` file holds one byte per image, labels 1..=10,
//! which we shift to 0..=9.
//!
//! `open("stl10:…")` reads the labelled train and test splits; the 100,000 unlabelled images
//! are available separately through [`read_unlabeled`] (a split's labels are all or nothing).

use std::path::Path;

use crate::data::cifar::{class_names, descend, not_found};
use crate::data::{DataError, Dataset, ImageSet};

pub const SIDE: usize = 96;
const RECORD: usize = 3 * SIDE * SIDE;

/// Read the labelled splits of an `stl10_binary` dir (or a dir that contains it).
pub fn read_dir(dir: &Path, limit: Option<usize>) -> Result<Dataset, DataError> {
    let dir = descend(dir, "stl10_binary", "train_X.bin");
    let train = read_split(&dir, "train", limit)?;
    let test = if dir.join("test_X.bin").is_file() || dir.join("test_y.bin").is_file() {
        Some(read_split(&dir, "test", None)?)
    } else {
        None
    };
    Ok(Dataset {
        name: "stl10".into(),
        classes: class_names(&dir.join("class_names.txt"), 10)?,
        train,
        test,
        skipped: 0,
    })
}

/// The unlabelled images of `unlabeled_X.bin` (labels None).
pub fn read_unlabeled(dir: &Path, limit: Option<usize>) -> Result<ImageSet, DataError> {
    let dir = descend(dir, "stl10_binary", "train_X.bin");
    read_images(&dir.join("unlabeled_X.bin"), limit)
}

/// Write images given in CHW row-major order in the STL-10 `_X` layout, and optionally
/// 0-based labels in the `_y` layout (stored 1-based). For tests and tools.
pub fn write_split(
    x_path: &Path,
    y_path: Option<&Path>,
    chw: &[u8],
    labels: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(chw.len());
    for img in chw.chunks_exact(RECORD) {
        for c in 0..3 {
            for x in 0..SIDE {
                for y in 0..SIDE {
                    out.push(img[c * SIDE * SIDE + y * SIDE + x]);
                }
            }
        }
    }
    std::fs::write(x_path, out)?;
    if let Some(y_path) = y_path {
        std::fs::write(y_path, labels.iter().map(|l| l + 1).collect::<Vec<u8>>())?;
    }
    Ok(())
}

fn read_split(dir: &Path, split: &str, limit: Option<usize>) -> Result<ImageSet, DataError> {
    let x_path = dir.join(format!("{split}_X.bin"));
    let y_path = dir.join(format!("{split}_y.bin"));
    let mut set = read_images(&x_path, None)?;
    if !y_path.is_file() {
        return Err(not_found(y_path));
    }
    let raw = std::fs::read(&y_path).map_err(|e| DataError::io(&y_path, e))?;
    if raw.len() != set.n {
        return Err(DataError::Mismatch {
            path: y_path,
            what: "label count".into(),
            expected: format!("{} (the image count of {})", set.n, x_path.display()),
            found: raw.len().to_string(),
        });
    }
    let mut labels = Vec::with_capacity(raw.len());
    for (i, &l) in raw.iter().enumerate() {
        if !(1..=10).contains(&l) {
            return Err(DataError::Format {
                path: y_path,
                offset: i as u64,
                what: format!("bad label for image {i}"),
                expected: "1..=10".into(),
                found: l.to_string(),
            });
        }
        labels.push(l as u32 - 1);
    }
    set.labels = Some(labels);
    if let Some(limit) = limit {
        set = set.take(limit);
    }
    Ok(set)
}

fn read_images(path: &Path, limit: Option<usize>) -> Result<ImageSet, DataError> {
    if !path.is_file() {
        return Err(not_found(path.to_path_buf()));
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let full = bytes.len() / RECORD;
    if bytes.len() % RECORD != 0 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            record: Some(full as u64),
            expected_bytes: ((full + 1) * RECORD) as u64,
            found_bytes: bytes.len() as u64,
        });
    }
    if full == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            message: "no images in the file".into(),
        });
    }
    let n = full.min(limit.unwrap_or(usize::MAX));
    let mut images = vec![0u8; n * RECORD];
    for (src, dst) in bytes
        .chunks_exact(RECORD)
        .zip(images.chunks_exact_mut(RECORD))
    {
        for c in 0..3 {
            let (s, d) = (&src[c * SIDE * SIDE..], &mut dst[c * SIDE * SIDE..]);
            for x in 0..SIDE {
                for y in 0..SIDE {
                    d[y * SIDE + x] = s[x * SIDE + y];
                }
            }
        }
    }
    Ok(ImageSet {
        images,
        stream: None,
        labels: None,
        n,
        channels: 3,
        height: SIDE,
        width: SIDE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` images as the files keep them (channel-major, columns first).
    fn chw(n: usize) -> Vec<u8> {
        crate::data::test_photos::pattern(n * RECORD, 13, 253)
    }

    #[test]
    fn roundtrip_transposes_to_row_major() {
        let (dir, d) = crate::data::test_photos::dir_with("stl10_binary");
        let px = chw(3);
        write_split(
            &d.join("train_X.bin"),
            Some(&d.join("train_y.bin")),
            &px[..2 * RECORD],
            &[0, 9],
        )
        .unwrap();
        write_split(
            &d.join("test_X.bin"),
            Some(&d.join("test_y.bin")),
            &px[2 * RECORD..],
            &[4],
        )
        .unwrap();
        write_split(&d.join("unlabeled_X.bin"), None, &px, &[]).unwrap();
        // column-major on disk: byte 1 of the file is pixel (y=1, x=0)
        let raw = std::fs::read(d.join("train_X.bin")).unwrap();
        assert_eq!(raw[1], px[SIDE]);
        let ds = crate::data::open(
            &format!("stl10:{}", dir.path().display()),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(crate::data::test_photos::shape(&ds.train), (2, 3, 96, 96));
        assert_eq!(ds.train.images, px[..2 * RECORD]);
        assert_eq!(ds.train.labels, Some(vec![0, 9]));
        assert_eq!(ds.test.as_ref().unwrap().labels, Some(vec![4]));
        assert_eq!(
            ds.classes,
            (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        let un = read_unlabeled(dir.path(), Some(2)).unwrap();
        assert_eq!(un.n, 2);
        assert!(un.labels.is_none());
        assert_eq!(un.images, px[..2 * RECORD]);
    }

    #[test]
    fn truncated_and_mismatched() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y) = (
            dir.path().join("train_X.bin"),
            dir.path().join("train_y.bin"),
        );
        write_split(&x, Some(&y), &chw(2), &[1, 2]).unwrap();
        let b = std::fs::read(&x).unwrap();
        std::fs::write(&x, &b[..RECORD + 5]).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    record: Some(1),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("train_X.bin"), "{e}");
        std::fs::write(&x, &b[..RECORD]).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(matches!(e, DataError::Mismatch { .. }), "{e:?}");
        std::fs::write(&y, [0u8]).unwrap();
        let e = read_dir(dir.path(), None).unwrap_err();
        assert!(matches!(e, DataError::Format { offset: 0, .. }), "{e:?}");
    }
}
