//! Everything before a tensor exists: readers for the on-disk formats, augmentation, batching.
//!
//! A dataset is named by a spec `FORMAT:PATH` (`idx:../shared/data/fashion-mnist`,
//! `cifar10:data/cifar-10-batches-bin`, `stl10:data/stl10_binary`, `folder:photos/`,
//! `wds:shards/`, `parquet:train.parquet`) and read by [`open`]: whole into memory as u8, or —
//! for large folders (see [`Stream`]), `.tar` shards and Parquet tables — as an index of where
//! each image is, which the loader's workers decode on demand ([`streamed`]).

pub mod augment;
pub mod builtin;
pub mod cifar;
pub mod corpus;
pub mod decode;
pub mod email;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod mix;
#[cfg(feature = "parquet")]
pub mod parquet_images;
pub mod randaugment;
pub mod rngs;
pub mod shards;
pub mod stl10;
pub mod streamed;
#[cfg(test)]
mod test_photos;
pub mod tokenizer;
pub mod tokens;
pub mod views;

pub use crate::error::DataError;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

/// One split of an image dataset, layout [n, channels, height, width] (CHW per image), as u8.
///
/// The pixels are either held in memory (`images`) or decoded on demand from where they are
/// kept (`stream`: a large folder's files, `.tar` shards, Parquet tables; see [`streamed`]);
/// [`ImageSet::image`] hides the difference. Streaming keeps memory bounded by what the loader has in flight, not by `n`.
#[derive(Clone, Debug)]
pub struct ImageSet {
    /// All pixels, [n, c, h, w]; empty when `stream` is set.
    pub images: Vec<u8>,
    /// When set, image i is decoded (and resized) from its file or container each time it is
    /// asked for.
    pub stream: Option<Arc<dyn streamed::Source>>,
    pub labels: Option<Vec<u32>>,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageSet {
    /// An in-memory set; `images` holds n images of `channels * height * width` bytes.
    pub fn in_memory(
        images: Vec<u8>,
        labels: Option<Vec<u32>>,
        n: usize,
        channels: usize,
        height: usize,
        width: usize,
    ) -> ImageSet {
        ImageSet {
            images,
            stream: None,
            labels,
            n,
            channels,
            height,
            width,
        }
    }

    /// The i-th image, CHW: borrowed for an in-memory set, decoded for a streamed one (which
    /// fails, naming the file, if the file no longer decodes). Panics if `i >= n` (a
    /// programming error, not user input).
    pub fn image(&self, i: usize) -> Result<Cow<'_, [u8]>, DataError> {
        match &self.stream {
            None => {
                let len = self.image_len();
                Ok(Cow::Borrowed(&self.images[i * len..(i + 1) * len]))
            }
            Some(s) => s.read(i).map(Cow::Owned),
        }
    }

    /// Like [`image`](Self::image), but for a streamed set opened with `skip_bad`, a file that
    /// fails to decode is replaced by the next one (in file order, wrapping) that decodes, with
    /// a warning naming it. Returns the index actually used, so its label goes with it. The
    /// substitute depends only on which files are broken, so batches stay deterministic.
    pub fn image_or_next(&self, i: usize) -> Result<(usize, Cow<'_, [u8]>), DataError> {
        let first = match self.image(i) {
            Ok(img) => return Ok((i, img)),
            Err(e) => e,
        };
        let Some(s) = self.stream.as_ref().filter(|s| s.skip_bad()) else {
            return Err(first);
        };
        s.note_bad(i, &first);
        for step in 1..self.n {
            let j = (i + step) % self.n;
            match self.image(j) {
                Ok(img) => return Ok((j, img)),
                Err(e) => s.note_bad(j, &e),
            }
        }
        Err(first)
    }

    /// Files that failed to decode after opening and were replaced (streamed sets with
    /// `skip_bad`); 0 for in-memory sets.
    pub fn substituted(&self) -> usize {
        self.stream.as_ref().map_or(0, |s| s.substituted())
    }

    /// Whether pixels are decoded from files on demand.
    pub fn is_streamed(&self) -> bool {
        self.stream.is_some()
    }

    /// Heap bytes this set holds (pixels, labels, file paths); not the pixels of a streamed set.
    pub fn memory_bytes(&self) -> usize {
        self.images.capacity()
            + self.labels.as_ref().map_or(0, |l| l.capacity() * 4)
            + self.stream.as_ref().map_or(0, |s| s.memory_bytes())
    }

    /// The order of the images in `epoch` of a loader seeded `seed`: a container's chunked,
    /// buffered order ([`streamed::Sharded`]), otherwise the uniform permutation
    /// ([`loader::epoch_permutation`]).
    pub fn epoch_order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        self.stream
            .as_ref()
            .and_then(|s| s.epoch_order(seed, epoch))
            .unwrap_or_else(|| loader::epoch_permutation(self.n, seed, epoch))
    }

    /// The image indices of batch `k` (as [`loader::batch_indices`], in this set's order).
    pub fn batch_indices(
        &self,
        batch_size: usize,
        drop_last: bool,
        seed: u64,
        k: u64,
    ) -> Vec<usize> {
        let bpe = loader::batches_per_epoch(self.n, batch_size, drop_last);
        if bpe == 0 {
            return Vec::new();
        }
        let order = self.epoch_order(seed, k / bpe);
        let b = batch_size.clamp(1, self.n);
        let start = (k % bpe) as usize * b;
        order[start..(start + b).min(self.n)].to_vec()
    }

    /// Images decoded from their files or containers so far (counted by shards and tables).
    pub fn decodes(&self) -> u64 {
        self.stream.as_ref().map_or(0, |s| s.decodes())
    }

    /// Bytes per image: channels * height * width.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The label of the i-th image, if the split is labelled.
    pub fn label(&self, i: usize) -> Option<u32> {
        self.labels.as_ref().map(|l| l[i])
    }

    /// The chosen images (and their labels), in the order given: copied pixels for an
    /// in-memory set, the chosen files for a streamed one.
    pub fn subset(&self, idx: &[usize]) -> ImageSet {
        let labels = self
            .labels
            .as_ref()
            .map(|l| idx.iter().map(|&i| l[i]).collect());
        let (images, stream) = match &self.stream {
            Some(s) => (Vec::new(), Some(s.subset(idx))),
            None => {
                let len = self.image_len();
                let mut images = Vec::with_capacity(idx.len() * len);
                for &i in idx {
                    images.extend_from_slice(&self.images[i * len..(i + 1) * len]);
                }
                (images, None)
            }
        };
        ImageSet {
            images,
            stream,
            labels,
            n: idx.len(),
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    /// The first `n` images (all of them if there are fewer).
    pub fn take(&self, n: usize) -> ImageSet {
        let n = n.min(self.n);
        if self.stream.is_some() {
            return self.subset(&(0..n).collect::<Vec<_>>());
        }
        ImageSet {
            images: self.images[..n * self.image_len()].to_vec(),
            stream: None,
            labels: self.labels.as_ref().map(|l| l[..n].to_vec()),
            n,
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    pub train: ImageSet,
    pub test: Option<ImageSet>,
    /// Class names, indexed by label. Empty for unlabelled data.
    pub classes: Vec<String>,
    /// Files skipped because they could not be decoded (`skip_bad`); 0 for the binary formats.
    pub skipped: usize,
}

#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Folder images are resized to this square size (shorter side, then centre crop). Default 32.
    pub image_size: Option<usize>,
    /// Skip undecodable images (and damaged shard members, bad table rows) instead of failing,
    /// counting them.
    pub skip_bad: bool,
    /// Read at most this many train images.
    pub limit: Option<usize>,
    /// Folder datasets: decode images from their files on demand instead of all at open.
    pub stream: Stream,
}

/// When a folder dataset is streamed from its files rather than decoded whole into memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Stream folders of more than [`STREAM_AUTO_FILES`] image files.
    #[default]
    Auto,
    Always,
    Never,
}

/// Folders with more image files than this are streamed under [`Stream::Auto`].
pub const STREAM_AUTO_FILES: usize = 10_000;

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            image_size: Some(32),
            skip_bad: false,
            limit: None,
            stream: Stream::Auto,
        }
    }
}

/// Class numbers a container's label may carry are 0 to `MAX_CLASSES` − 1 (ImageNet-21k has
/// 21,841 classes): a larger number is damage, and would make a class list of its size.
pub const MAX_CLASSES: u32 = 100_000;

/// The formats [`open`] understands, as written before the ':' of a spec.
pub const FORMATS: &[&str] = &[
    "idx", "cifar10", "cifar100", "stl10", "folder", "wds", "parquet",
];

/// `FORMAT:PATH` split at the first ':', or an error naming the spec and the formats there are.
pub fn split_spec<'a>(spec: &'a str, formats: &[&str]) -> Result<(&'a str, &'a str), DataError> {
    let spec_err = |message: String| DataError::Spec {
        spec: spec.to_string(),
        message,
    };
    let Some((format, path)) = spec.split_once(':') else {
        return Err(spec_err(format!(
            "expected FORMAT:PATH, where FORMAT is one of {}",
            formats.join(", ")
        )));
    };
    if path.is_empty() {
        return Err(spec_err("the PATH after ':' is empty".to_string()));
    }
    Ok((format, path))
}

/// Parse a data spec `FORMAT:PATH` and read it.
///
/// Formats: `idx` (dir with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], and
/// optional t10k-* test files), `cifar10`, `cifar100` (binary versions), `stl10`
/// (stl10_binary dir), `folder` (a dir of images, or of class subdirs of images), `wds`
/// (WebDataset `.tar` shards: a dir or a glob, see [`shards`]), `parquet` (image tables, a file
/// or a dir, see `parquet_images`).
pub fn open(spec: &str, opts: &OpenOptions) -> Result<Dataset, DataError> {
    let spec_err = |message: String| DataError::Spec {
        spec: spec.to_string(),
        message,
    };
    let (format, path) = split_spec(spec, FORMATS)?;
    let dir = Path::new(path);
    let mut ds = match format.to_ascii_lowercase().as_str() {
        _ if spec == builtin::BUILTIN => builtin::builtin_dataset()?,
        "idx" => idx::read_dir(dir, opts.limit)?,
        "cifar10" => cifar::read_cifar10(dir, opts.limit)?,
        "cifar100" => cifar::read_cifar100(dir, opts.limit)?,
        "stl10" => stl10::read_dir(dir, opts.limit)?,
        "folder" => folder::read_dir(dir, opts)?,
        "wds" => shards::open(path, opts)?,
        #[cfg(feature = "parquet")]
        "parquet" => parquet_images::open(dir, opts)?,
        #[cfg(not(feature = "parquet"))]
        "parquet" => {
            return Err(spec_err(
                "this pretext was built without the `parquet` feature (on by default); \
                 rebuild without --no-default-features"
                    .into(),
            ))
        }
        other => {
            return Err(spec_err(format!(
                "unknown format `{other}`; valid formats: {}",
                FORMATS.join(", ")
            )))
        }
    };
    if let Some(limit) = opts.limit {
        if ds.train.n > limit {
            ds.train = ds.train.take(limit);
        }
    }
    Ok(ds)
}

/// Same as [`open`], for idx bytes already in memory (a dataset compiled into the binary).
/// Each buffer may be gzip (detected by the 1f 8b magic) or raw. Empty test buffers mean no test split.
pub fn idx_from_bytes(
    name: &str,
    train_images: &[u8],
    train_labels: &[u8],
    test_images: &[u8],
    test_labels: &[u8],
) -> Result<Dataset, DataError> {
    let label = |part: &str| std::path::PathBuf::from(format!("<{name}>/{part}"));
    let train = idx::parse_pair(
        &label("train-images"),
        train_images,
        &label("train-labels"),
        train_labels,
        None,
    )?;
    let test = if test_images.is_empty() && test_labels.is_empty() {
        None
    } else {
        Some(idx::parse_pair(
            &label("t10k-images"),
            test_images,
            &label("t10k-labels"),
            test_labels,
            None,
        )?)
    };
    Ok(Dataset {
        name: name.to_string(),
        train,
        test,
        classes: idx::class_names(name),
        skipped: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageSet {
        ImageSet {
            images: (0..12).collect(),
            stream: None,
            labels: Some(vec![7, 8, 9]),
            n: 3,
            channels: 1,
            height: 2,
            width: 2,
        }
    }

    #[test]
    fn image_subset_take() {
        let s = tiny();
        assert_eq!(s.image_len(), 4);
        assert_eq!(&*s.image(1).unwrap(), &[4, 5, 6, 7]);
        let sub = s.subset(&[2, 0]);
        assert_eq!(sub.n, 2);
        assert_eq!(sub.images, vec![8, 9, 10, 11, 0, 1, 2, 3]);
        assert_eq!(sub.labels, Some(vec![9, 7]));
        let t = s.take(2);
        assert_eq!(t.images.len(), 8);
        assert_eq!(t.labels, Some(vec![7, 8]));
        assert_eq!(s.take(10).n, 3);
    }

    #[test]
    fn bad_specs() {
        let opts = OpenOptions::default();
        let e = open("nocolon", &opts).unwrap_err();
        assert!(matches!(e, DataError::Spec { .. }));
        assert!(e.to_string().contains("cifar10"), "{e}");
        let e = open("mnist:/tmp", &opts).unwrap_err();
        assert!(matches!(e, DataError::Spec { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("unknown format `mnist`") && msg.contains("folder"),
            "{msg}"
        );
        let e = open("idx:", &opts).unwrap_err();
        assert!(matches!(e, DataError::Spec { .. }));
    }

    #[test]
    fn idx_from_bytes_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let imgs: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let pi = dir.path().join("i.gz");
        let pl = dir.path().join("l");
        idx::write_idx_images(&pi, 2, 3, 4, &imgs).unwrap();
        idx::write_idx_labels(&pl, &[3, 1]).unwrap();
        let bi = std::fs::read(&pi).unwrap();
        let bl = std::fs::read(&pl).unwrap();
        assert_eq!(&bi[..2], &[0x1f, 0x8b]);
        let ds = idx_from_bytes("fashion-embedded", &bi, &bl, &[], &[]).unwrap();
        assert_eq!(ds.train.n, 2);
        assert_eq!(
            (ds.train.channels, ds.train.height, ds.train.width),
            (1, 3, 4)
        );
        assert_eq!(ds.train.images, imgs);
        assert_eq!(ds.train.labels, Some(vec![3, 1]));
        assert!(ds.test.is_none());
        assert_eq!(ds.classes[0], "T-shirt/top");
        let e = idx_from_bytes("x", &bi[..bi.len() - 30], &bl, &[], &[]).unwrap_err();
        assert!(e.to_string().contains("<x>/train-images"), "{e}");
    }
}
