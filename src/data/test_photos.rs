//! For the readers' unit tests: the real photographs in ../shared/data/photos and the open
//! options the container tests share.

use std::path::Path;

use super::{DataError, Dataset, OpenOptions, Stream};

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
