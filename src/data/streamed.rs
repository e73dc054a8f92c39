//! Images decoded on demand from where they are kept: a folder's files ([`super::folder`]),
//! the members of `.tar` shards ([`super::shards`]), the rows of Parquet tables
//! ([`super::parquet_images`]). A [`Source`] is what an [`ImageSet`](super::ImageSet) holds
//! instead of pixels; [`Sharded`] is the common piece of the two container formats, over any
//! [`Members`].
//!
//! Order. A folder is visited in the loader's uniform permutation (each file is its own file).
//! A container is read the way large runs read it: each epoch visits its chunks (shards, row
//! groups) in a shuffled order and passes their members through a shuffle buffer of
//! [`SHUFFLE_BUFFER`] members, so the reads of an epoch move through the data chunk by chunk
//! and the pixels (or encoded bytes) in memory are bounded by the buffer and the loader's
//! batches in flight, not by the number of images. The order is computed from the index alone
//! (a function of seed and epoch, never of the bytes or of thread timing), so batch `k` is
//! still a pure function of (seed, k): runs resume exactly and every MPI rank agrees on each
//! global batch while decoding only its own part of it.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::decode;
use crate::data::DataError;

/// Members a container's epoch order keeps in its shuffle buffer (WebDataset's usual size).
pub const SHUFFLE_BUFFER: usize = 8192;

/// Images decoded on demand: what a streamed [`ImageSet`](super::ImageSet) holds.
pub trait Source: Send + Sync + Debug {
    /// Decode image i: CHW bytes, the set's channels x size x size.
    fn read(&self, i: usize) -> Result<Vec<u8>, DataError>;
    /// Whether a image that fails to decode is replaced by the next good one
    /// ([`ImageSet::image_or_next`](super::ImageSet::image_or_next)).
    fn skip_bad(&self) -> bool;
    /// Record that image i failed to decode (warn once per image).
    fn note_bad(&self, i: usize, err: &DataError);
    /// How many distinct images failed to decode after opening.
    fn substituted(&self) -> usize;
    /// The chosen images, in the order given.
    fn subset(&self, idx: &[usize]) -> Arc<dyn Source>;
    /// Heap bytes held by the index (no pixels).
    fn memory_bytes(&self) -> usize;
    /// Where image i is kept, for messages and row ids: a path, `SHARD.tar:MEMBER`, `FILE.parquet:row N`.
    fn name(&self, i: usize) -> String;
    /// The order of the images in `epoch` (a permutation of 0..n); None: the loader's uniform
    /// permutation.
    fn epoch_order(&self, _seed: u64, _epoch: u64) -> Option<Vec<usize>> {
        None
    }
    /// Images decoded so far (0 where not counted).
    fn decodes(&self) -> u64 {
        0
    }
}

/// The encoded images of a container: a tar shard's members, a Parquet table's rows. Member i
/// is in chunk `chunk(i)` (a shard, a row group); a chunk's members are consecutive.
pub trait Members: Send + Sync + Debug {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The encoded bytes of member i (an error names the file and the member).
    fn bytes(&self, i: usize) -> Result<Vec<u8>, DataError>;
    fn chunk(&self, i: usize) -> usize;
    /// The file member i is in, and the member within it (`000017.jpg`, `row 17`).
    fn locate(&self, i: usize) -> (PathBuf, String);
    /// Heap bytes of the index.
    fn memory_bytes(&self) -> usize;
}

/// A decode error of member i of `members`: names the file and the member.
pub fn member_error(members: &dyn Members, i: usize, message: String) -> DataError {
    let (path, member) = members.locate(i);
    DataError::Member {
        path,
        member,
        message,
    }
}

/// Images from a container's members, decoded like a folder's files (see
/// [`decode::decode_bytes`]), visited chunk by chunk through a shuffle buffer.
#[derive(Debug)]
pub struct Sharded {
    members: Arc<dyn Members>,
    /// The members of this set, in order (a subset); None: all of them.
    map: Option<Vec<u32>>,
    size: usize,
    channels: usize,
    skip_bad: bool,
    buffer: usize,
    bad: Mutex<BTreeSet<usize>>,
    decodes: AtomicU64,
}

impl Sharded {
    pub fn new(members: Arc<dyn Members>, size: usize, channels: usize, skip_bad: bool) -> Self {
        Sharded {
            members,
            map: None,
            size,
            channels,
            skip_bad,
            buffer: SHUFFLE_BUFFER,
            bad: Mutex::new(BTreeSet::new()),
            decodes: AtomicU64::new(0),
        }
    }

    /// The same set with a shuffle buffer of `buffer` members (at least 1).
    pub fn with_buffer(mut self, buffer: usize) -> Self {
        self.buffer = buffer.max(1);
        self
    }

    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(self.members.len(), |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn member(&self, i: usize) -> usize {
        self.map.as_ref().map_or(i, |m| m[i] as usize)
    }
}

impl Source for Sharded {
    fn read(&self, i: usize) -> Result<Vec<u8>, DataError> {
        let m = self.member(i);
        let bytes = self.members.bytes(m)?;
        self.decodes.fetch_add(1, Ordering::Relaxed);
        let (img, _) = decode::decode_bytes(&bytes, self.size)
            .map_err(|message| member_error(&*self.members, m, message))?;
        Ok(decode::to_chw(&img, self.channels))
    }

    fn skip_bad(&self) -> bool {
        self.skip_bad
    }

    fn note_bad(&self, i: usize, err: &DataError) {
        let mut bad = self.bad.lock().unwrap_or_else(|e| e.into_inner());
        if bad.insert(i) {
            eprintln!("warning: {err}; using the next good image instead (--skip-bad)");
        }
    }

    fn substituted(&self) -> usize {
        self.bad.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn subset(&self, idx: &[usize]) -> Arc<dyn Source> {
        Arc::new(Sharded {
            members: self.members.clone(),
            map: Some(idx.iter().map(|&i| self.member(i) as u32).collect()),
            size: self.size,
            channels: self.channels,
            skip_bad: self.skip_bad,
            buffer: self.buffer,
            bad: Mutex::new(BTreeSet::new()),
            decodes: AtomicU64::new(0),
        })
    }

    fn memory_bytes(&self) -> usize {
        self.members.memory_bytes() + self.map.as_ref().map_or(0, |m| m.capacity() * 4)
    }

    fn name(&self, i: usize) -> String {
        let (path, member) = self.members.locate(self.member(i));
        format!("{}:{member}", path.display())
    }

    fn epoch_order(&self, seed: u64, epoch: u64) -> Option<Vec<usize>> {
        let chunks = (0..self.len()).map(|i| self.members.chunk(self.member(i)));
        Some(buffered_order(chunks, self.buffer, seed, epoch))
    }

    fn decodes(&self) -> u64 {
        self.decodes.load(Ordering::Relaxed)
    }
}

/// The order of one epoch over items whose chunks are `chunks` (item i in chunk `chunks[i]`):
/// the runs of consecutive items of one chunk in a shuffled order, then through a shuffle
/// buffer of `buffer` items (an item leaves at random once the buffer is full). A permutation
/// of 0..n, a function of (chunks, buffer, seed, epoch) only.
pub fn buffered_order(
    chunks: impl Iterator<Item = usize>,
    buffer: usize,
    seed: u64,
    epoch: u64,
) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7368_6172_6465_6421); // "sharded!"
    rng.set_stream(epoch);
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut n = 0;
    let mut last = None;
    for c in chunks {
        if last != Some(c) {
            runs.push((n, n));
            last = Some(c);
        }
        n += 1;
        runs.last_mut().expect("pushed above").1 = n;
    }
    runs.shuffle(&mut rng);
    let cap = buffer.clamp(1, n.max(1));
    let mut held: Vec<usize> = Vec::with_capacity(cap);
    let mut out = Vec::with_capacity(n);
    for (a, b) in runs {
        for i in a..b {
            if held.len() == cap {
                let j = rng.gen_range(0..cap);
                out.push(held.swap_remove(j));
            }
            held.push(i);
        }
    }
    while !held.is_empty() {
        let j = rng.gen_range(0..held.len());
        out.push(held.swap_remove(j));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_order_is_a_seeded_permutation_that_stays_near_its_chunks() {
        // 10 chunks of 100
        let chunks = || (0..1000).map(|i| i / 100);
        let a = buffered_order(chunks(), 50, 3, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, buffered_order(chunks(), 50, 3, 0));
        assert_ne!(a, buffered_order(chunks(), 50, 3, 1));
        assert_ne!(a, buffered_order(chunks(), 50, 4, 0));
        // with a buffer of 1 the order is the chunks' own (the same chunk order for the same
        // seed): runs of 100, in a shuffled order
        let read = buffered_order(chunks(), 1, 3, 0);
        let first_chunks: Vec<usize> = read.iter().step_by(100).map(|i| i / 100).collect();
        assert!(read
            .chunks(100)
            .all(|c| c.iter().all(|i| i / 100 == c[0] / 100)));
        assert_ne!(first_chunks, (0..10).collect::<Vec<_>>());
        // the buffer holds 50: no item leaves more than 50 places before it is read, and
        // nearly all leave soon after (an item stays k draws with probability (1 - 1/50)^k)
        let mut read_at = vec![0; 1000];
        for (p, &i) in read.iter().enumerate() {
            read_at[i] = p;
        }
        let late: Vec<usize> = a
            .iter()
            .enumerate()
            .map(|(p, &i)| {
                assert!(
                    p + 50 >= read_at[i],
                    "item {i} left at {p}, read at {}",
                    read_at[i]
                );
                p + 50 - read_at[i]
            })
            .collect();
        assert!(late.iter().filter(|&&l| l < 250).count() >= 950, "{late:?}");
        // a buffer as large as the set is a full shuffle; empty input is empty
        assert_eq!(buffered_order(chunks(), 5000, 3, 0).len(), 1000);
        assert!(buffered_order(std::iter::empty(), 10, 0, 0).is_empty());
    }
}
