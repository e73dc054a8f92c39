//! A folder of image files (`folder:DIR`): PNG or JPEG, any size.
//!
//! - `DIR/<class>/*.jpg …` (subfolders holding images): labelled, class = subfolder name,
//!   classes sorted by name; image files directly in `DIR` are then ignored.
//! - `DIR/*.jpg …` (no such subfolders): unlabelled (labels None).
//!
//! Each image is converted to RGB (or kept as 1 channel when *every* image is grayscale), its
//! shorter side resized to `image_size` (Triangle filter) and centre-cropped to a square.
//! Files are read in sorted order, so the result is deterministic. No test split.
//!
//! Large folders (more than [`STREAM_AUTO_FILES`] files, or any size with `stream=always`) are
//! *streamed*: opening reads only each file's header (format, size, colour type), so a file
//! that is not a supported image is reported (or skipped) up front, and the pixels are decoded
//! on demand by the loader's workers ([`Streamed`]). Decoding then gives the same bytes as
//! the in-memory path, so batches do not depend on the choice.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::{ImageDecoder, RgbImage};

pub use crate::data::decode::resize_crop;
use crate::data::decode::{self, is_gray, to_chw};
use crate::data::streamed::Source;
use crate::data::{DataError, Dataset, ImageSet, OpenOptions, Stream, STREAM_AUTO_FILES};

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];
/// Image files with their class index.
type Files = Vec<(PathBuf, u32)>;
/// Files decoded in parallel at a time.
const CHUNK: usize = 64;
/// Headers read in parallel at a time (streamed folders).
const HEADER_CHUNK: usize = 1024;

/// The files of a streamed folder, decoded and resized on demand ([`ImageSet::image`]).
#[derive(Debug)]
pub struct Streamed {
    paths: Vec<PathBuf>,
    size: usize,
    channels: usize,
    /// Replace a file that fails to decode by the next good one ([`ImageSet::image_or_next`]).
    pub skip_bad: bool,
    /// Indices of files that failed to decode after opening.
    bad: Mutex<BTreeSet<usize>>,
}

impl Streamed {
    pub fn new(paths: Vec<PathBuf>, size: usize, channels: usize, skip_bad: bool) -> Streamed {
        Streamed {
            paths,
            size,
            channels,
            skip_bad,
            bad: Mutex::new(BTreeSet::new()),
        }
    }

    /// The file of image i.
    pub fn path(&self, i: usize) -> &Path {
        &self.paths[i]
    }
}

impl Source for Streamed {
    /// Decode image i: CHW, `channels` x `size` x `size`, the same bytes as the in-memory path.
    fn read(&self, i: usize) -> Result<Vec<u8>, DataError> {
        let (img, _) = load(&self.paths[i], self.size)?;
        Ok(to_chw(&img, self.channels))
    }

    fn skip_bad(&self) -> bool {
        self.skip_bad
    }

    /// Record that image i failed to decode; warns once per file.
    fn note_bad(&self, i: usize, err: &DataError) {
        let mut bad = self.bad.lock().unwrap_or_else(|e| e.into_inner());
        if bad.insert(i) {
            let why = match err {
                DataError::Decode { path, message } => format!("{}: {message}", path.display()),
                other => other.to_string(),
            };
            eprintln!("warning: {why}; using the next good image instead (--skip-bad)");
        }
    }

    /// How many distinct files failed to decode after opening.
    fn substituted(&self) -> usize {
        self.bad.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The chosen files, in the order given.
    fn subset(&self, idx: &[usize]) -> Arc<dyn Source> {
        let paths = idx.iter().map(|&i| self.paths[i].clone()).collect();
        Arc::new(Streamed::new(
            paths,
            self.size,
            self.channels,
            self.skip_bad,
        ))
    }

    /// Heap bytes held: the paths (no pixels).
    fn memory_bytes(&self) -> usize {
        self.paths.capacity() * std::mem::size_of::<PathBuf>()
            + self
                .paths
                .iter()
                .map(|p| p.as_os_str().len())
                .sum::<usize>()
    }

    fn name(&self, i: usize) -> String {
        self.paths[i].display().to_string()
    }
}

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
    let stream = match opts.stream {
        Stream::Always => true,
        Stream::Never => false,
        Stream::Auto => files.len() > STREAM_AUTO_FILES,
    };
    if stream {
        return read_streamed(dir, files, classes, size, opts);
    }
    let limit = opts.limit.unwrap_or(usize::MAX);
    let mut images: Vec<RgbImage> = Vec::new();
    let mut labels: Vec<u32> = Vec::new();
    let mut all_gray = true;
    let mut skipped = 0;
    'outer: for chunk in files.chunks(CHUNK) {
        let decoded = par_map(chunk, |p| load(p, size));
        for ((_, label), decoded) in chunk.iter().zip(decoded) {
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
        data.extend(to_chw(img, channels));
    }
    let labels = (!classes.is_empty()).then_some(labels);
    let train = ImageSet::in_memory(data, labels, images.len(), channels, size, size);
    Ok(whole_folder(dir, train, classes, skipped))
}

/// Open a folder for streaming: read every file's header (in parallel), keep the paths.
fn read_streamed(
    dir: &Path,
    files: Files,
    classes: Vec<String>,
    size: usize,
    opts: &OpenOptions,
) -> Result<Dataset, DataError> {
    let limit = opts.limit.unwrap_or(usize::MAX);
    // Which files pass; the paths are moved out of `files` afterwards, never held twice.
    let mut keep = Vec::with_capacity(files.len());
    let mut kept = 0;
    let mut all_gray = true;
    let mut skipped = 0;
    'outer: for chunk in files.chunks(HEADER_CHUNK) {
        for gray in par_map(chunk, header) {
            if kept >= limit {
                break 'outer;
            }
            match gray {
                Ok(gray) => {
                    all_gray &= gray;
                    keep.push(true);
                    kept += 1;
                }
                Err(DataError::Decode { .. }) if opts.skip_bad => {
                    skipped += 1;
                    keep.push(false);
                }
                Err(e) => return Err(e),
            }
        }
    }
    let (mut paths, labels): (Vec<PathBuf>, Vec<u32>) = files
        .into_iter()
        .zip(keep)
        .filter_map(|(file, keep)| keep.then_some(file))
        .unzip();
    paths.shrink_to_fit();
    if paths.is_empty() {
        return Err(DataError::Empty {
            path: dir.to_path_buf(),
            message: format!("none of the {skipped} image files could be decoded"),
        });
    }
    let channels = if all_gray { 1 } else { 3 };
    let n = paths.len();
    let labels = (!classes.is_empty()).then_some(labels);
    let mut train = ImageSet::in_memory(Vec::new(), labels, n, channels, size, size);
    train.stream = Some(Arc::new(Streamed::new(
        paths,
        size,
        channels,
        opts.skip_bad,
    )));
    Ok(whole_folder(dir, train, classes, skipped))
}

/// Read only the header of an image file: is it a supported format with pixels? Returns
/// whether it is grayscale (decides the channel count as decoding does).
pub fn header(path: &Path) -> Result<bool, DataError> {
    let decode_err = |message: String| DataError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let decoder = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .into_decoder()
        .map_err(|e| decode_err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(decode_err(format!(
            "expected an image with pixels, found {w}x{h}"
        )));
    }
    Ok(is_gray(decoder.color_type()))
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

/// `f` over a chunk of files on scoped threads; results in input order. A panic inside `f`
/// (a decoder bug) becomes a decode error naming the file.
fn par_map<T: Send>(
    chunk: &[(PathBuf, u32)],
    f: impl Fn(&Path) -> Result<T, DataError> + Sync,
) -> Vec<Result<T, DataError>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(chunk.len())
        .max(1);
    let mut results: Vec<Option<Result<T, DataError>>> = (0..chunk.len()).map(|_| None).collect();
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|t| {
                s.spawn(move || {
                    (t..chunk.len())
                        .step_by(workers)
                        .map(|i| (i, f(&chunk[i].0)))
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
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    reader.limits(decode::limits());
    let img = reader.decode().map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    decode::finish(img, size).map_err(|message| DataError::Decode {
        path: path.to_path_buf(),
        message,
    })
}

/// A folder's data set: every image for training, named after the folder.
fn whole_folder(dir: &Path, train: ImageSet, classes: Vec<String>, skipped: usize) -> Dataset {
    Dataset {
        name: crate::data::idx::dir_name(dir),
        train,
        test: None,
        classes,
        skipped,
    }
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
        let first = t.image(0).unwrap();
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
        let opts = OpenOptions {
            image_size: Some(16),
            ..Default::default()
        };
        let ds = read_dir(dir.path(), &opts).unwrap();
        assert_eq!((ds.train.n, ds.train.channels, ds.train.height), (2, 1, 16));
        copy_photo("apple.jpg", dir.path());
        let ds = read_dir(dir.path(), &opts).unwrap();
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

    /// `n` PNG/JPEG files of varied sizes and content, written with the `image` crate.
    fn write_images(dir: &Path, n: usize) {
        for i in 0..n {
            let (w, h) = (24 + (i as u32 * 7) % 30, 20 + (i as u32 * 11) % 35);
            let img = RgbImage::from_fn(w, h, |x, y| {
                let v = (x * 13 + y * 7 + i as u32 * 31) as u8;
                image::Rgb([v, v.wrapping_mul(3), (x * y) as u8 ^ i as u8])
            });
            let ext = if i % 3 == 0 { "jpg" } else { "png" };
            img.save(dir.join(format!("img{i:03}.{ext}"))).unwrap();
        }
    }

    fn opts(stream: Stream, skip_bad: bool) -> OpenOptions {
        OpenOptions {
            image_size: Some(16),
            skip_bad,
            limit: None,
            stream,
        }
    }

    /// A PNG whose header is intact but whose pixel data is cut short.
    fn write_corrupt_body(path: &Path) {
        let noise = RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 97 + y * 13) as u8, (x ^ y) as u8, (x * y * 7) as u8])
        });
        noise.save(path).unwrap();
        let bytes = std::fs::read(path).unwrap();
        std::fs::write(path, &bytes[..bytes.len() * 6 / 10]).unwrap();
        assert!(header(path).is_ok(), "the header must still read");
        assert!(load(path, 16).is_err(), "the body must fail to decode");
    }

    #[test]
    fn streaming_gives_the_same_images_and_batches_as_in_memory() {
        use crate::data::loader::{default_make_batch, Loader, LoaderConfig};
        let dir = tempfile::tempdir().unwrap();
        for class in ["a", "b"] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            write_images(&dir.path().join(class), 20);
        }
        let mem = read_dir(dir.path(), &opts(Stream::Never, false)).unwrap();
        let st = read_dir(dir.path(), &opts(Stream::Always, false)).unwrap();
        let auto = read_dir(dir.path(), &opts(Stream::Auto, false)).unwrap();
        assert!(!mem.train.is_streamed() && !auto.train.is_streamed());
        assert!(st.train.is_streamed());
        let (m, s) = (&mem.train, &st.train);
        assert_eq!((s.n, s.channels, s.height, s.width), (40, 3, 16, 16));
        assert_eq!((m.n, m.channels, m.height, m.width), (s.n, 3, 16, 16));
        assert_eq!((&m.labels, &mem.classes), (&s.labels, &st.classes));
        for i in 0..m.n {
            assert_eq!(m.image(i).unwrap(), s.image(i).unwrap(), "image {i}");
        }
        let batches = |set: &ImageSet, workers: usize| {
            let cfg = LoaderConfig {
                batch_size: 12,
                seed: 5,
                workers,
                prefetch: 2,
                start_batch: 0,
                drop_last: true,
            };
            Loader::new(Arc::new(set.clone()), cfg, default_make_batch())
                .take(9)
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        };
        let from_memory = batches(m, 1);
        assert_eq!(from_memory, batches(s, 1));
        assert_eq!(from_memory, batches(s, 3));
        // subsets and prefixes of a streamed set stay streamed and equal
        assert_eq!(s.subset(&[5, 2]).image(1).unwrap(), m.image(2).unwrap());
        assert!(s.take(3).is_streamed());
        assert_eq!(s.take(3).image(2).unwrap(), m.image(2).unwrap());
        // limit applies to streamed folders too
        let limited = read_dir(
            dir.path(),
            &OpenOptions {
                limit: Some(7),
                ..opts(Stream::Always, false)
            },
        )
        .unwrap();
        assert_eq!(limited.train.n, 7);
    }

    #[test]
    fn a_streamed_set_holds_paths_not_pixels() {
        let dir = tempfile::tempdir().unwrap();
        write_images(dir.path(), 60);
        let per_image = |n: usize| {
            let o = OpenOptions {
                limit: Some(n),
                image_size: Some(64),
                ..opts(Stream::Always, false)
            };
            let ds = read_dir(dir.path(), &o).unwrap();
            assert_eq!(ds.train.n, n);
            assert!(ds.train.images.is_empty());
            ds.train.memory_bytes() as f64 / n as f64
        };
        let image_len = 3 * 64 * 64;
        // per image: a path (tens of bytes), whatever n is; the pixels would be 12 KiB
        for n in [10, 60] {
            let b = per_image(n);
            assert!(b < 200.0, "{b} bytes per image for n = {n}");
            assert!(b * 50.0 < image_len as f64);
        }
        let mem = read_dir(dir.path(), &opts(Stream::Never, false)).unwrap();
        assert!(mem.train.memory_bytes() >= 60 * 3 * 16 * 16);
    }

    #[test]
    fn header_bad_files_are_found_at_open() {
        let dir = tempfile::tempdir().unwrap();
        write_images(dir.path(), 4);
        let bad = dir.path().join("notes.png");
        std::fs::write(&bad, b"just some text, not a picture").unwrap();
        // a GIF (not a supported format) under a .jpg name
        let gif = dir.path().join("anim.jpg");
        std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
        let e = read_dir(dir.path(), &opts(Stream::Always, false)).unwrap_err();
        assert!(matches!(e, DataError::Decode { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("anim.jpg") && msg.contains("--skip-bad"),
            "{msg}"
        );
        let ds = read_dir(dir.path(), &opts(Stream::Always, true)).unwrap();
        assert_eq!((ds.train.n, ds.skipped), (4, 2));
        assert!(ds.train.is_streamed());
    }

    #[test]
    fn a_corrupt_body_is_an_error_naming_the_file_or_replaced_with_skip_bad() {
        use crate::data::loader::{default_make_batch, Loader, LoaderConfig};
        let dir = tempfile::tempdir().unwrap();
        write_images(dir.path(), 9);
        let bad = dir.path().join("img004.png");
        write_corrupt_body(&bad);
        // the header passes, so the folder opens; the file fails when it is read
        let ds = read_dir(dir.path(), &opts(Stream::Always, false)).unwrap();
        assert_eq!(ds.train.n, 9);
        let e = ds.train.image(4).unwrap_err();
        assert!(matches!(e, DataError::Decode { .. }), "{e:?}");
        assert!(e.to_string().contains("img004.png"), "{e}");
        let cfg = LoaderConfig {
            batch_size: 3,
            seed: 1,
            workers: 2,
            prefetch: 2,
            start_batch: 0,
            drop_last: true,
        };
        let k_bad = (0..3)
            .find(|&k| crate::data::loader::batch_indices(9, 3, true, 1, k).contains(&4))
            .unwrap();
        let got: Vec<_> = Loader::new(Arc::new(ds.train), cfg.clone(), default_make_batch())
            .take(10)
            .collect();
        // the batches before the broken one, then one error naming the file, then nothing
        assert_eq!(got.len() as u64, k_bad + 1);
        assert!(got[..k_bad as usize].iter().all(|b| b.is_ok()));
        let e = got[k_bad as usize].as_ref().unwrap_err();
        assert!(e.to_string().contains("img004.png"), "{e}");

        // --skip-bad: the next good file stands in, every time, and is counted once
        let ds = read_dir(dir.path(), &opts(Stream::Always, true)).unwrap();
        let set = Arc::new(ds.train);
        let (used, px) = set.image_or_next(4).unwrap();
        assert_eq!((used, px), (5, set.image(5).unwrap()));
        let run = || -> Vec<_> {
            Loader::new(set.clone(), cfg.clone(), default_make_batch())
                .take(6)
                .map(|b| b.unwrap())
                .collect()
        };
        let first = run();
        assert_eq!(first, run());
        assert_eq!(set.substituted(), 1);
        // an in-memory set never substitutes
        let mem = read_dir(dir.path(), &opts(Stream::Never, true)).unwrap();
        assert_eq!(
            (mem.train.n, mem.skipped, mem.train.substituted()),
            (8, 1, 0)
        );
    }
}
