//! A folder of image files (`folder:DIR`): PNG or JPEG, any size.
//!
//! - `DIR/<class>/*.jpg …` (subfolders holding images): labelled, class = subfolder name,
//!   classes sorted by name; image files directly in `DIR` are then ignored.
//! - `DIR/*.jpg …` (no such subfolders): unlabelled (labels None).
//!
//! Each image is converted to RGB (or kept as 1 channel when *every* image is grayscale), its
//! shorter side resized to `image_size` (Triangle filter) and centre-cropped to a square.
//! Files are read in sorted order, so the result is deterministic. No test split.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{ColorType, RgbImage};

use crate::data::{DataError, Dataset, ImageSet, OpenOptions};

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];
/// Image files with their class index.
type Files = Vec<(PathBuf, u32)>;
/// Files decoded in parallel at a time.
const CHUNK: usize = 64;

pub fn read_dir(dir: &Path, opts: &OpenOptions) -> Result<Dataset, DataError> {
    let size = opts.image_size.unwrap_or(32);
    if size == 0 {
        return Err(DataError::Spec {
            spec: format!("folder:{}", dir.display()),
            message: "image size must be at least 1".into(),
        });
    }
    let (files, classes) = list(dir)?;
    if files.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
            message: "no .png/.jpg/.jpeg images found in the folder or its class subfolders".into(),
        });
    }
    let limit = opts.limit.unwrap_or(usize::MAX);
    let mut images: Vec<RgbImage> = Vec::new();
    let mut labels: Vec<u32> = Vec::new();
    let mut all_gray = true;
    let mut skipped = 0;
    'outer: for chunk in files.chunks(CHUNK) {
        for ((_, label), decoded) in chunk.iter().zip(decode_all(chunk, size)) {
            if images.len() >= limit {
                break 'outer;
            }
            match decoded {
                Ok((img, gray)) => {
                    all_gray &= gray;
                    images.push(img);
                    labels.push(*label);
                }
                Err(DataError::Decode { .. }) if opts.skip_bad => skipped += 1,
                Err(e) => return Err(e),
            }
        }
    }
    if images.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
            message: format!("none of the {skipped} image files could be decoded"),
        });
    }
    let channels = if all_gray { 1 } else { 3 };
    let mut data = Vec::with_capacity(images.len() * channels * size * size);
    for img in &images {
        // HWC interleaved -> CHW planes
        for c in 0..channels {
            data.extend(img.pixels().map(|p| p.0[c]));
        }
    }
    let train = ImageSet {
        images: data,
        labels: if classes.is_empty() {
            None
        } else {
            Some(labels)
        },
        n: images.len(),
        channels,
        height: size,
        width: size,
    };
    Ok(Dataset {
        name: crate::data::idx::dir_name(dir),
        train,
        test: None,
        classes,
        skipped,
    })
}

/// The image files to read, sorted, each with its class index (0 when unlabelled), and the
/// class names (empty when unlabelled).
fn list(dir: &Path) -> Result<(Files, Vec<String>), DataError> {
    let entries = sorted_entries(dir)?;
    let mut classes = Vec::new();
    let mut files = Vec::new();
    for sub in entries.iter().filter(|p| p.is_dir()) {
        let name = sub
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let imgs: Vec<PathBuf> = sorted_entries(sub)?
            .into_iter()
            .filter(|p| is_image(p))
            .collect();
        if !imgs.is_empty() {
            let label = classes.len() as u32;
            classes.push(name);
            files.extend(imgs.into_iter().map(|p| (p, label)));
        }
    }
    if classes.is_empty() {
        files = entries
            .into_iter()
            .filter(|p| is_image(p))
            .map(|p| (p, 0))
            .collect();
    }
    Ok((files, classes))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        out.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Decode and resize a chunk of files on scoped threads; results in input order.
fn decode_all(chunk: &[(PathBuf, u32)], size: usize) -> Vec<Result<(RgbImage, bool), DataError>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(chunk.len())
        .max(1);
    let mut results: Vec<Option<Result<(RgbImage, bool), DataError>>> =
        (0..chunk.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|t| {
                s.spawn(move || {
                    (t..chunk.len())
                        .step_by(workers)
                        .map(|i| (i, load(&chunk[i].0, size)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // a panic inside the decoder is reported as a decode error below
            if let Ok(done) = h.join() {
                for (i, r) in done {
                    results[i] = Some(r);
                }
            }
        }
    });
    results
        .into_iter()
        .zip(chunk)
        .map(|(r, (path, _))| {
            r.unwrap_or_else(|| {
                Err(DataError::Decode {
                    path: path.clone(),
                    message: "the decoder crashed".into(),
                })
            })
        })
        .collect()
}

/// Decode one file to RGB, resized (shorter side) and centre-cropped to `size`x`size`.
/// Returns whether the source was grayscale.
pub fn load(path: &Path, size: usize) -> Result<(RgbImage, bool), DataError> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    let img = reader.decode().map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let gray = matches!(
        img.color(),
        ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16
    );
    let rgb = img.to_rgb8();
    Ok((resize_crop(&rgb, size as u32), gray))
}

/// Shorter side to `size`, then the centre `size`x`size` square.
pub fn resize_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (
            size,
            ((h as f64 * size as f64 / w as f64).round() as u32).max(size),
        )
    } else {
        (
            ((w as f64 * size as f64 / h as f64).round() as u32).max(size),
            size,
        )
    };
    let resized = image::imageops::resize(img, nw, nh, FilterType::Triangle);
    let (x, y) = ((nw - size) / 2, (nh - size) / 2);
    image::imageops::crop_imm(&resized, x, y, size, size).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHOTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/photos");

    #[test]
    fn reads_real_photos_unlabelled() {
        let ds = crate::data::open(&format!("folder:{PHOTOS}"), &OpenOptions::default()).unwrap();
        let t = &ds.train;
        assert_eq!((t.n, t.channels, t.height, t.width), (32, 3, 32, 32));
        assert_eq!(t.images.len(), 32 * 3 * 32 * 32);
        assert!(t.labels.is_none());
        assert!(ds.classes.is_empty() && ds.test.is_none());
        assert_eq!((ds.name.as_str(), ds.skipped), ("photos", 0));
        // real content, not a constant: pixel spread within the first image
        let first = t.image(0);
        let (lo, hi) = (first.iter().min().unwrap(), first.iter().max().unwrap());
        assert!(hi - lo > 50, "{lo}..{hi}");
        // limit and other sizes
        let opts = OpenOptions {
            image_size: Some(20),
            limit: Some(3),
            ..Default::default()
        };
        let small = read_dir(Path::new(PHOTOS), &opts).unwrap();
        assert_eq!(
            (small.train.n, small.train.height, small.train.width),
            (3, 20, 20)
        );
    }

    fn copy_photo(name: &str, to: &Path) {
        std::fs::copy(Path::new(PHOTOS).join(name), to.join(name)).unwrap();
    }

    #[test]
    fn class_subfolders_are_labels() {
        let dir = tempfile::tempdir().unwrap();
        let (fruit, animal) = (dir.path().join("fruit"), dir.path().join("animal"));
        std::fs::create_dir(&fruit).unwrap();
        std::fs::create_dir(&animal).unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        copy_photo("apple.jpg", &fruit);
        copy_photo("orange.jpg", &fruit);
        copy_photo("chelsea.png", &animal);
        let ds = read_dir(dir.path(), &OpenOptions::default()).unwrap();
        assert_eq!(ds.classes, vec!["animal", "fruit"]);
        assert_eq!(ds.train.labels, Some(vec![0, 1, 1]));
        assert_eq!(ds.train.n, 3);
    }

    #[test]
    fn garbage_file_is_a_decode_error_or_skipped() {
        let dir = tempfile::tempdir().unwrap();
        copy_photo("apple.jpg", dir.path());
        let bad = dir.path().join("broken.JPG");
        std::fs::write(&bad, b"this is not a jpeg at all").unwrap();
        let e = read_dir(dir.path(), &OpenOptions::default()).unwrap_err();
        assert!(matches!(e, DataError::Decode { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&bad.display().to_string()) && msg.contains("--skip-bad"),
            "{msg}"
        );
        let ds = read_dir(
            dir.path(),
            &OpenOptions {
                skip_bad: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((ds.train.n, ds.skipped), (1, 1));
    }

    #[test]
    fn all_grayscale_gives_one_channel() {
        let dir = tempfile::tempdir().unwrap();
        let g = image::GrayImage::from_fn(40, 30, |x, y| image::Luma([(x * 5 + y) as u8]));
        g.save(dir.path().join("a.png")).unwrap();
        g.save(dir.path().join("b.png")).unwrap();
        let ds = read_dir(
            dir.path(),
            &OpenOptions {
                image_size: Some(16),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((ds.train.n, ds.train.channels, ds.train.height), (2, 1, 16));
        copy_photo("apple.jpg", dir.path());
        let ds = read_dir(
            dir.path(),
            &OpenOptions {
                image_size: Some(16),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((ds.train.n, ds.train.channels), (3, 3));
    }

    #[test]
    fn empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hi").unwrap();
        let e = read_dir(dir.path(), &OpenOptions::default()).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e:?}");
        let e = read_dir(&dir.path().join("nope"), &OpenOptions::default()).unwrap_err();
        assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    }

    #[test]
    fn resize_crop_shapes() {
        let img = RgbImage::from_fn(100, 50, |x, _| image::Rgb([x as u8, 0, 0]));
        let out = resize_crop(&img, 10);
        assert_eq!(out.dimensions(), (10, 10));
        // centre crop: the middle column of the output is near the middle of the input
        let mid = out.get_pixel(5, 5).0[0];
        assert!((45..=56).contains(&mid), "{mid}");
        let tiny = RgbImage::new(1, 3);
        assert_eq!(resize_crop(&tiny, 4).dimensions(), (4, 4));
    }
}
