//! For the readers' unit tests: the real photographs in ../shared/data/photos and the open
//! options the container tests share.

use std::path::Path;

use super::{DataError, Dataset, ImageSet, OpenOptions, Stream};

pub const PHOTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/photos");

/// The bytes of one photograph file.
pub fn photo(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(PHOTOS).join(name)).unwrap()
}

/// 24-px images, streamed when large, bad members an error or (`skip_bad`) left out.
pub fn opts(skip_bad: bool) -> OpenOptions {
    OpenOptions {
        image_size: Some(24),
        skip_bad,
        limit: None,
        stream: Stream::Auto,
    }
}

/// `FORMAT:PATH` opened with [`opts`].
pub fn open_as(format: &str, path: &Path, skip_bad: bool) -> Result<Dataset, DataError> {
    super::open(&format!("{format}:{}", path.display()), &opts(skip_bad))
}

/// A temporary directory with an empty folder `name` in it (where a binary data set's files go).
pub fn dir_with(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join(name);
    std::fs::create_dir(&d).unwrap();
    (dir, d)
}

/// `len` bytes of a fixed pattern (byte i is i·step mod m), as records of a binary data set.
pub fn pattern(len: usize, step: usize, m: usize) -> Vec<u8> {
    (0..len).map(|i| (i * step % m) as u8).collect()
}

/// (images, channels, height, width) of a set.
pub fn shape(set: &ImageSet) -> (usize, usize, usize, usize) {
    (set.n, set.channels, set.height, set.width)
}
