//! Batches from an [`ImageSet`]: worker threads and a bounded prefetch queue, deterministic
//! given a seed whatever the thread timing.
//!
//! Batch k is a pure function of (seed, k): its images are positions
//! `[p*b, (p+1)*b)` of the permutation of epoch `k / batches_per_epoch` (seeded from
//! (seed, epoch)), with `p = k % batches_per_epoch`; the [`MakeBatch`] function gets the
//! batch's generators ([`BatchRngs`], seeded from (seed, k): one per image of the batch). Workers claim batch numbers in order and may run at most
//! `prefetch + workers` batches ahead of the consumer; the consumer re-orders what they
//! finish and receives k = start_batch, start_batch+1, … — so resuming from a saved cursor
//! reproduces the run exactly.
//!
//! For a streamed set the workers also decode the image files, so decoding runs in parallel
//! and at most `prefetch + workers` batches of pixels exist at once. A file that fails to
//! decode ends the stream: the batches before it are yielded, then an `Err` naming the file
//! (or, with `skip_bad`, the next good image stands in — see [`ImageSet::image_or_next`]).
//! A container (`.tar` shards, Parquet tables) is visited in its own epoch order, chunk by chunk
//! through a shuffle buffer ([`ImageSet::epoch_order`]); everything else is the same.
//!
//! Under several processes ([`crate::platform::dist`]) a loader made with [`Loader::with_share`] loads
//! only its rank's share of each global batch (positions `rank*b/ranks..(rank+1)*b/ranks`, the
//! parts the engine's `split_batch` hands this rank): the other positions reach
//! the [`MakeBatch`] function as empty images (no pixels) with their labels, and are never read
//! or decoded. The share's images are the same bytes as without the split.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::augment::Img;
use crate::data::rngs::BatchRngs;
use crate::data::{DataError, ImageSet};

/// Images stacked as they are, with their dataset labels: what [`default_make_batch`] makes
/// (transfer's batches). Pretext tasks make batches of their own types.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// [b, c, h, w]
    pub images: Vec<f32>,
    /// Dataset labels; empty for unlabelled data.
    pub labels: Vec<u32>,
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

/// Turns the raw images (and labels) of one batch into a batch of type `B`. Gets the batch's
/// generators, seeded from (seed, batch index), so its output depends only on those: image `i`
/// draws from `rngs.item(i)` (its own generator, whatever part of the batch it is made in).
pub type MakeBatch<B = Batch> = Arc<dyn Fn(&[Img], &[u32], &BatchRngs) -> B + Send + Sync>;

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Images per batch. If larger than the set, the whole set is one batch.
    pub batch_size: usize,
    pub seed: u64,
    /// Worker threads (at least 1 is used). Default: available parallelism.
    pub workers: usize,
    /// Finished batches that may wait for the consumer. Default 4.
    pub prefetch: usize,
    /// Resume cursor: the first batch to yield.
    pub start_batch: u64,
    /// Drop the last, short batch of each epoch.
    pub drop_last: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 128,
            seed: 0,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 4,
            start_batch: 0,
            drop_last: false,
        }
    }
}

/// Stacks the images unchanged, with the dataset labels (empty if unlabelled).
pub fn default_make_batch() -> MakeBatch {
    Arc::new(|imgs: &[Img], labels: &[u32], _: &BatchRngs| stack(imgs, labels.to_vec()))
}

/// Stack same-sized images into a Batch.
pub fn stack(imgs: &[Img], labels: Vec<u32>) -> Batch {
    let (c, h, w) = imgs.first().map_or((0, 0, 0), |i| (i.c, i.h, i.w));
    let mut images = Vec::with_capacity(imgs.len() * c * h * w);
    for img in imgs {
        assert_eq!(
            (img.c, img.h, img.w),
            (c, h, w),
            "stack: images of different shapes"
        );
        images.extend_from_slice(&img.data);
    }
    Batch {
        images,
        labels,
        b: imgs.len(),
        c,
        h,
        w,
    }
}

/// Batches in one epoch of `n` images (batch size clamped to 1..=n).
pub fn batches_per_epoch(n: usize, batch_size: usize, drop_last: bool) -> u64 {
    if n == 0 {
        return 0;
    }
    let b = batch_size.clamp(1, n);
    (if drop_last { n / b } else { n.div_ceil(b) }) as u64
}

/// The permutation of 0..n used in `epoch`.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7065_726d_7574_6521); // "permute!"
    rng.set_stream(epoch);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rng);
    perm
}

/// The image indices of batch `k` (see the module doc).
pub fn batch_indices(
    n: usize,
    batch_size: usize,
    drop_last: bool,
    seed: u64,
    k: u64,
) -> Vec<usize> {
    let bpe = batches_per_epoch(n, batch_size, drop_last);
    if bpe == 0 {
        return Vec::new();
    }
    let perm = epoch_permutation(n, seed, k / bpe);
    slice_of(&perm, batch_size.clamp(1, n), k % bpe).to_vec()
}

fn slice_of(perm: &[usize], b: usize, pos: u64) -> &[usize] {
    let start = pos as usize * b;
    &perm[start..(start + b).min(perm.len())]
}

struct State<B> {
    /// Next batch number a worker may claim.
    next_claim: u64,
    /// Next batch number the consumer yields.
    next_yield: u64,
    ready: BTreeMap<u64, Result<B, DataError>>,
    stop: bool,
    /// A batch failed to load: claim no more (the consumer still gets the ones before it).
    failed: bool,
    /// A panic from the MakeBatch function, re-raised in the consumer.
    panic: Option<Box<dyn std::any::Any + Send>>,
}

struct Shared<B> {
    state: Mutex<State<B>>,
    cond: Condvar,
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // a poisoned lock only means another thread panicked; the state itself stays valid
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Which part of every global batch a loader reads and decodes: rank `rank` of `ranks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub rank: usize,
    pub ranks: usize,
}

impl Share {
    /// The whole batch (one process).
    pub const ALL: Share = Share { rank: 0, ranks: 1 };

    /// This process's share under MPI ([`crate::platform::dist::place`]); the whole batch alone.
    pub fn of_this_process() -> Share {
        let p = crate::platform::dist::place();
        Share {
            rank: p.rank,
            ranks: p.size,
        }
    }

    /// The positions of a batch of `b` images this share loads.
    pub fn range(&self, b: usize) -> std::ops::Range<usize> {
        let ranks = self.ranks.max(1);
        self.rank * b / ranks..(self.rank + 1) * b / ranks
    }
}

/// An infinite iterator of batches (epochs repeat, each reshuffled). Dropping it stops the
/// workers; a batch being made at that moment is finished and discarded.
pub struct Loader<B: Send + 'static = Batch> {
    shared: Arc<Shared<B>>,
    workers: Vec<JoinHandle<()>>,
    batches_per_epoch: u64,
    /// An error was yielded; the stream is over.
    done: bool,
}

impl<B: Send + 'static> Loader<B> {
    pub fn new(set: Arc<ImageSet>, cfg: LoaderConfig, make: MakeBatch<B>) -> Loader<B> {
        Self::with_share(set, cfg, make, Share::ALL)
    }

    /// A loader that reads and decodes only `share` of every batch (see the module doc).
    pub fn with_share(
        set: Arc<ImageSet>,
        cfg: LoaderConfig,
        make: MakeBatch<B>,
        share: Share,
    ) -> Loader<B> {
        let n = set.n;
        let bpe = batches_per_epoch(n, cfg.batch_size, cfg.drop_last);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_claim: cfg.start_batch,
                next_yield: cfg.start_batch,
                ready: BTreeMap::new(),
                stop: false,
                failed: false,
                panic: None,
            }),
            cond: Condvar::new(),
        });
        let nworkers = cfg.workers.max(1);
        let window = (cfg.prefetch.max(1) + nworkers) as u64;
        let workers = if bpe == 0 {
            Vec::new()
        } else {
            (0..nworkers)
                .map(|_| {
                    let (set, cfg, make, shared) =
                        (set.clone(), cfg.clone(), make.clone(), shared.clone());
                    std::thread::spawn(move || work(&set, &cfg, &make, &shared, bpe, window, share))
                })
                .collect()
        };
        Loader {
            shared,
            workers,
            batches_per_epoch: bpe,
            done: false,
        }
    }

    /// Batches per epoch (0 for an empty set, which makes the iterator empty).
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }
}

fn work<B>(
    set: &ImageSet,
    cfg: &LoaderConfig,
    make: &MakeBatch<B>,
    shared: &Shared<B>,
    bpe: u64,
    window: u64,
    share: Share,
) {
    let b = cfg.batch_size.clamp(1, set.n);
    let mut perm: Option<(u64, Vec<usize>)> = None;
    loop {
        let k = {
            let mut st = shared.lock();
            while !st.stop && !st.failed && st.next_claim >= st.next_yield + window {
                st = shared.cond.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.stop || st.failed {
                return;
            }
            st.next_claim += 1;
            st.next_claim - 1
        };
        let epoch = k / bpe;
        if perm.as_ref().is_none_or(|(e, _)| *e != epoch) {
            perm = Some((epoch, set.epoch_order(cfg.seed, epoch)));
        }
        let idx = slice_of(&perm.as_ref().expect("set above").1, b, k % bpe);
        let loaded = (|| {
            let mut imgs = Vec::with_capacity(idx.len());
            let mut labels = Vec::new();
            let mine = share.range(idx.len());
            for (pos, &i) in idx.iter().enumerate() {
                if !mine.contains(&pos) {
                    // another rank's image: neither read nor decoded here
                    imgs.push(Img {
                        c: set.channels,
                        h: set.height,
                        w: set.width,
                        data: Vec::new(),
                    });
                    if let Some(l) = &set.labels {
                        labels.push(l[i]);
                    }
                    continue;
                }
                // a substitute image (skip_bad) brings its own label
                let (used, px) = set.image_or_next(i)?;
                imgs.push(Img::from_u8(set.channels, set.height, set.width, &px));
                if let Some(l) = &set.labels {
                    labels.push(l[used]);
                }
            }
            Ok::<_, DataError>((imgs, labels))
        })();
        let result = match loaded {
            Ok((imgs, labels)) => {
                let rngs = BatchRngs::new(cfg.seed, k);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    make(&imgs, &labels, &rngs)
                }))
                .map(Ok)
            }
            Err(e) => Ok(Err(e)),
        };
        let mut st = shared.lock();
        match result {
            Ok(Ok(batch)) => {
                st.ready.insert(k, Ok(batch));
            }
            Ok(Err(e)) => {
                st.ready.insert(k, Err(e));
                st.failed = true;
            }
            Err(payload) => {
                st.panic.get_or_insert(payload);
                st.stop = true;
            }
        }
        shared.cond.notify_all();
        if st.stop || st.failed {
            return;
        }
    }
}

/// Yields `Ok(batch)` for k = start_batch, start_batch+1, …; an `Err` (a file that failed to
/// decode, naming it) ends the stream.
impl<B: Send + 'static> Iterator for Loader<B> {
    type Item = Result<B, DataError>;

    fn next(&mut self) -> Option<Result<B, DataError>> {
        if self.workers.is_empty() || self.done {
            return None;
        }
        let mut st = self.shared.lock();
        loop {
            if let Some(p) = st.panic.take() {
                drop(st);
                std::panic::resume_unwind(p);
            }
            let k = st.next_yield;
            if let Some(batch) = st.ready.remove(&k) {
                st.next_yield += 1;
                self.done = batch.is_err();
                self.shared.cond.notify_all();
                return Some(batch);
            }
            if st.stop {
                return None;
            }
            st = self.shared.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl<B: Send + 'static> Drop for Loader<B> {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cond.notify_all();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::time::Duration;

    /// n images of 1x2x2, image i filled with value i, label i.
    fn numbered(n: usize) -> Arc<ImageSet> {
        Arc::new(ImageSet {
            images: (0..n).flat_map(|i| [i as u8; 4]).collect(),
            stream: None,
            labels: Some((0..n as u32).collect()),
            n,
            channels: 1,
            height: 2,
            width: 2,
        })
    }

    /// Stacks the images and adds a random number, so the per-batch generators show in the
    /// output.
    fn noisy() -> MakeBatch<(Batch, f32)> {
        Arc::new(|imgs: &[Img], labels: &[u32], rngs: &BatchRngs| {
            (stack(imgs, labels.to_vec()), rngs.item(0).gen::<f32>())
        })
    }

    fn cfg(seed: u64, workers: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size: 7,
            seed,
            workers,
            prefetch: 2,
            start_batch: 0,
            drop_last: false,
        }
    }

    fn first(n: usize, cfg: LoaderConfig) -> Vec<(Batch, f32)> {
        Loader::new(numbered(50), cfg, noisy())
            .take(n)
            .map(|b| b.unwrap())
            .collect()
    }

    #[test]
    fn same_seed_same_batches_any_worker_count() {
        let a = first(30, cfg(11, 1));
        let b = first(30, cfg(11, 1));
        let c = first(30, cfg(11, 3));
        assert_eq!(a, b);
        assert_eq!(a, c);
        let d = first(30, cfg(12, 3));
        assert_ne!(a, d);
    }

    #[test]
    fn resume_from_start_batch() {
        let fresh = first(20, cfg(3, 2));
        let resumed = first(
            15,
            LoaderConfig {
                start_batch: 5,
                ..cfg(3, 3)
            },
        );
        assert_eq!(resumed, fresh[5..]);
    }

    #[test]
    fn every_image_once_per_epoch() {
        for drop_last in [false, true] {
            let c = LoaderConfig {
                drop_last,
                ..cfg(9, 3)
            };
            let mut loader = Loader::new(numbered(50), c, default_make_batch());
            let bpe = loader.batches_per_epoch();
            assert_eq!(bpe, if drop_last { 7 } else { 8 });
            let mut epochs = Vec::new();
            for _ in 0..3 {
                let mut seen: Vec<u32> = Vec::new();
                for _ in 0..bpe {
                    let b = loader.next().unwrap().unwrap();
                    assert_eq!(b.labels.len(), b.b);
                    // images and labels travel together
                    for (j, &l) in b.labels.iter().enumerate() {
                        assert_eq!(b.images[j * 4], l as f32 / 255.0);
                    }
                    seen.extend(&b.labels);
                }
                let mut sorted = seen.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(
                    sorted.len(),
                    seen.len(),
                    "an image repeated within an epoch"
                );
                assert_eq!(seen.len(), if drop_last { 49 } else { 50 });
                epochs.push(seen);
            }
            assert_ne!(epochs[0], epochs[1], "epochs should be reshuffled");
        }
    }

    #[test]
    fn batch_indices_match_loader() {
        let batches = first(12, cfg(4, 2));
        for (k, (b, _)) in batches.iter().enumerate() {
            let idx: Vec<u32> = batch_indices(50, 7, false, 4, k as u64)
                .iter()
                .map(|&i| i as u32)
                .collect();
            assert_eq!(b.labels, idx);
        }
    }

    #[test]
    fn dropping_mid_stream_stops_the_workers() {
        // Dropping a loader after two of its eight batches an epoch: the workers stop at the
        // batches they hold (at most the prefetch window past the last one taken), rather than
        // making the rest of the stream.
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = made.clone();
        let slow: MakeBatch = Arc::new(move |imgs: &[Img], labels: &[u32], _: &BatchRngs| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            stack(imgs, labels.to_vec())
        });
        let config = cfg(1, 3);
        let window = config.prefetch + config.workers;
        let mut loader = Loader::new(numbered(50), config, slow);
        loader.next().unwrap().unwrap();
        loader.next().unwrap().unwrap();
        drop(loader);
        let made = made.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (2..=2 + window).contains(&made),
            "{made} batches made for 2 taken (window {window})"
        );
        // dropping before the first batch also works
        drop(Loader::new(numbered(50), cfg(1, 4), default_make_batch()));
    }

    #[test]
    fn small_and_empty_sets() {
        let big_batch = LoaderConfig {
            batch_size: 100,
            drop_last: true,
            ..cfg(0, 2)
        };
        let b: Vec<Batch> = Loader::new(numbered(5), big_batch, default_make_batch())
            .take(2)
            .map(|b| b.unwrap())
            .collect();
        assert_eq!((b[0].b, b[1].b), (5, 5));
        let empty = Arc::new(ImageSet {
            images: vec![],
            stream: None,
            labels: None,
            n: 0,
            channels: 1,
            height: 2,
            width: 2,
        });
        assert!(Loader::new(empty, cfg(0, 2), default_make_batch())
            .next()
            .is_none());
        let unlabelled = Arc::new(ImageSet {
            labels: None,
            ..(*numbered(4)).clone()
        });
        let b = Loader::new(unlabelled, cfg(0, 1), default_make_batch())
            .next()
            .unwrap()
            .unwrap();
        assert!(b.labels.is_empty());
        assert_eq!((b.b, b.c, b.h, b.w, b.images.len()), (4, 1, 2, 2, 16));
    }

    #[test]
    fn panic_in_make_batch_reaches_the_consumer() {
        let bad: MakeBatch = Arc::new(|_: &[Img], _: &[u32], _: &BatchRngs| panic!("boom"));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Loader::new(numbered(10), cfg(0, 2), bad).next()
        }));
        assert!(r.is_err());
    }
}
