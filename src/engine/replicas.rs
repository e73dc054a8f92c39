//! Every core inside one step: the batch split into parts, one replica of the model per part,
//! each running serially in its own thread pool, their gradients summed before one optimiser
//! step — the same step, to float rounding, whatever the number of parts.
//!
//! burn-flex splits an op across threads only above ~4 M elements (element-wise) or 192³
//! multiply-adds (matmul), so most of a step runs on one core however many there are. Replicas
//! use them all. The protocol, for `n` replicas of a step (meeting at an
//! [`super::exchange::Exchange`]):
//!
//! - the global batch depends on (seed, step) only: every image draws its augmentation from its
//!   own generator, seeded by (seed, step, its position in the global batch)
//!   ([`crate::data::rngs::BatchRngs`]), and [`split_batch`] hands each part its position;
//! - replica 0 (the *leader*) steps the model the engine keeps; replicas 1.. step independent
//!   copies of it (`valid().train()`: own autodiff leaves, own batch-norm running statistics)
//!   and their own clones of the task, all discarded after the step;
//! - a part's mean loss is scaled by 1/n before backward ([`super::StepCtx::backward`]), so the
//!   summed gradient is the mean over the whole batch when the parts are equal; a loss over the
//!   whole global batch (SimCLR's NT-Xent) gathers every part's embeddings first
//!   ([`super::StepCtx::gather`]: this part's rows attached, the others' constants) and every
//!   replica backpropagates the same loss unscaled ([`super::StepCtx::backward_global`]);
//! - batch norm is synchronised (`sync_bn = true`, the default): each replica's thread carries a
//!   burn-flex hook ([`super::exchange::SyncBatchNorm`]) through which every batch-norm layer
//!   sums its per-channel statistics over all parts (forward: count, Σx, Σ(x − mean)²;
//!   backward: Σdy, Σdy·x̂), so it normalises with the global batch's mean and variance and the
//!   running statistics are the global ones on every replica;
//! - each optimiser update a task makes ([`super::StepCtx::update`]) is a meeting point: the
//!   leader waits for every replica's gradients, sums them in replica order (`step_multi`; then
//!   over MPI ranks), clips them if the run clips by global norm, updates its module,
//!   and hands each replica a copy of the updated module, so a GAN's generator phase sees the
//!   discriminator every replica agrees on;
//! - a replica whose step ends (or unwinds) without joining a meeting the others make breaks
//!   it: the others go on without waiting (no update, NaN sums) and the engine treats the step as
//!   non-finite.
//!
//! So one config trains the same model on 1, 2 or 4 replicas or N MPI ranks (tested: SimCLR
//! and BYOL step by step in `tests/split_invariance.rs`, batch norm against one model in this
//! module's tests). What still depends on the count, by float rounding only: the order of the
//! sums (gradients summed per replica, batch-norm sums per part). By design: dropout masks (a
//! generator per part, `nn::dropout`), fine-tuning's mixup/CutMix (pairs within a part),
//! inpainting's reconstruction loss (each part normalised by its own hole area) and, with
//! `sync_bn = false`, batch norm. Colorize's colour prior and its loss normalisation count the
//! global batch's pixels ([`super::StepCtx::all_reduce`]). For a fixed replica count a run is
//! deterministic and resumes bitwise.

use std::ops::Range;

use burn::prelude::Device;

use super::step::StepStats;
use super::task::AnyBatch;
use crate::data::rngs::BatchRngs;
use crate::error::{Error, Result};

/// A batch made as `n` parts, one per replica.
#[derive(Clone, Debug)]
pub struct Parts<B>(pub Vec<B>);

/// This process's parts of a global batch of `n` items split into `parts` per rank (one per
/// replica) on each of the run's ranks ([`crate::platform::dist`]): `make(range, rngs)` makes the items
/// `range` with the batch's generators `rngs` counted from the range's start
/// ([`BatchRngs::part`]), so every item draws from its own generator whatever part it is in and
/// the global batch does not depend on how it is cut. A batch of one part in all is the batch
/// itself, made with `rngs`.
pub fn split_batch<B: Clone + Send + 'static>(
    n: usize,
    parts: usize,
    rngs: &BatchRngs,
    make: impl FnMut(Range<usize>, &BatchRngs) -> B,
) -> Box<dyn AnyBatch> {
    let place = crate::platform::dist::place();
    split_batch_of(n, parts, place.rank, place.size, rngs, make)
}

/// [`split_batch`] for rank `rank` of `ranks`.
pub fn split_batch_of<B: Clone + Send + 'static>(
    n: usize,
    parts: usize,
    rank: usize,
    ranks: usize,
    rngs: &BatchRngs,
    mut make: impl FnMut(Range<usize>, &BatchRngs) -> B,
) -> Box<dyn AnyBatch> {
    let total = parts.max(1) * ranks.max(1);
    if total <= 1 {
        return Box::new(make(0..n, rngs));
    }
    let mut out: Vec<B> = (rank * parts.max(1)..(rank + 1) * parts.max(1))
        .map(|p| {
            let range = p * n / total..(p + 1) * n / total;
            let part = rngs.part(range.start);
            make(range, &part)
        })
        .collect();
    if out.len() == 1 {
        return Box::new(out.pop().expect("one part"));
    }
    Box::new(Parts(out))
}

/// The replica count a run uses: `asked` (0 = one per compute thread: rayon's pool, i.e. the
/// cores or `RAYON_NUM_THREADS`) for a global batch of `batch` items on `device`, shared by this
/// run's ranks ([`crate::platform::dist`]). Only the CPU has replicas; an explicit count must divide
/// each rank's share into parts of at least 2 items (batch norm and contrastive losses need
/// two); 0 takes the largest count up to the threads that does.
pub fn resolve(asked: usize, batch: usize, device: &Device) -> Result<usize> {
    resolve_for(asked, batch, crate::platform::dist::size(), device)
}

fn resolve_for(asked: usize, batch: usize, ranks: usize, device: &Device) -> Result<usize> {
    if ranks > 1 && (!batch.is_multiple_of(ranks) || batch / ranks < 2) {
        return Err(Error::config(
            "batch_size",
            format!(
                "{batch} cannot be shared by {ranks} processes in equal parts of at least 2; \
                 use a multiple of {ranks} (the batch size is the global one, over all processes)"
            ),
        ));
    }
    let batch = batch / ranks.max(1);
    let cpu = crate::platform::device::is_cpu(device);
    if asked == 0 {
        if !cpu {
            return Ok(1);
        }
        return Ok((1..=rayon::current_num_threads())
            .rev()
            .find(|&r| batch.is_multiple_of(r) && batch / r >= 2)
            .unwrap_or(1));
    }
    if asked > 1 && !cpu {
        return Err(Error::config(
            "replicas",
            format!("{asked} replicas need the cpu device; use 1 (or 0 = auto) on a GPU"),
        ));
    }
    if asked > 1 && (!batch.is_multiple_of(asked) || batch / asked < 2) {
        return Err(Error::config(
            "replicas",
            format!(
                "{asked} replicas must split batch_size {batch} into equal parts of at least 2; \
                 use a divisor of the batch size (or 0 = auto)"
            ),
        ));
    }
    Ok(asked)
}

/// The thread pools the replicas run in: one per replica, rayon's threads (the cores, or
/// `RAYON_NUM_THREADS`) shared out between them.
pub struct Pools(Vec<rayon::ThreadPool>);

impl Pools {
    pub fn new(replicas: usize) -> Self {
        let each = (rayon::current_num_threads() / replicas.max(1)).max(1);
        Self(
            (0..replicas)
                .map(|r| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(each)
                        .thread_name(move |i| format!("replica-{r}-{i}"))
                        .build()
                        .expect("a thread pool builds")
                })
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, r: usize) -> &rayon::ThreadPool {
        &self.0[r]
    }
}

/// One step's numbers from the replicas' own: loss and each metric averaged (equal parts),
/// items summed.
pub fn merge(stats: Vec<StepStats>) -> StepStats {
    let n = stats.len().max(1) as f32;
    let mut out = stats.first().cloned().unwrap_or_default();
    out.loss = stats.iter().map(|s| s.loss).sum::<f32>() / n;
    for (i, (_, v)) in out.metrics.iter_mut().enumerate() {
        *v = stats
            .iter()
            .map(|s| s.metrics.get(i).map_or(f32::NAN, |m| m.1))
            .sum::<f32>()
            / n;
    }
    out.items = stats.iter().map(|s| s.items).sum();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_batch_in_order() {
        let rngs = BatchRngs::new(1, 0);
        let b = split_batch(10, 3, &rngs, |r, _| r.collect::<Vec<usize>>());
        let parts = b
            .as_ref()
            .as_any()
            .downcast_ref::<Parts<Vec<usize>>>()
            .unwrap();
        assert_eq!(
            parts.0,
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8, 9]]
        );
        let one = split_batch(10, 1, &rngs, |r, rngs| (r.len(), *rngs));
        assert_eq!(
            one.as_ref().as_any().downcast_ref::<(usize, BatchRngs)>(),
            Some(&(10, rngs)),
            "one part is made exactly as without replicas"
        );
    }

    /// Every item draws from its own generator whatever the part count and whichever rank
    /// makes it: the global batch is the same cut into 1, 2 or 4 parts on 1 or 2 ranks.
    #[test]
    fn the_global_batch_does_not_depend_on_the_cut() {
        use rand::Rng;
        let rngs = BatchRngs::new(3, 9);
        let draw = |r: std::ops::Range<usize>, rngs: &BatchRngs| -> Vec<u64> {
            (0..r.len()).map(|i| rngs.item(i).gen()).collect()
        };
        let whole = split_batch_of(8, 1, 0, 1, &rngs, draw);
        let whole = whole
            .as_ref()
            .as_any()
            .downcast_ref::<Vec<u64>>()
            .unwrap()
            .clone();
        for (parts, ranks) in [(2, 1), (4, 1), (1, 2), (2, 2)] {
            let mut got: Vec<u64> = Vec::new();
            for rank in 0..ranks {
                let b = split_batch_of(8, parts, rank, ranks, &rngs, draw);
                let b = b.as_ref().as_any();
                match b.downcast_ref::<Parts<Vec<u64>>>() {
                    Some(p) => p.0.iter().for_each(|v| got.extend(v)),
                    None => got.extend(b.downcast_ref::<Vec<u64>>().unwrap()),
                }
            }
            assert_eq!(got, whole, "{parts} parts on {ranks} ranks");
        }
    }

    #[test]
    fn replica_counts() {
        let cpu = Device::flex();
        assert_eq!(resolve(2, 64, &cpu).unwrap(), 2);
        assert_eq!(
            resolve(2, 64, &cpu.clone().autodiff()).unwrap(),
            2,
            "autodiff on the CPU"
        );
        assert_eq!(resolve(1, 3, &cpu).unwrap(), 1);
        let err = resolve(3, 64, &cpu).unwrap_err().to_string();
        assert!(err.contains("replicas") && err.contains("64"), "{err}");
        assert!(resolve(4, 4, &cpu).is_err(), "parts of one item");
        let auto = resolve(0, 64, &cpu).unwrap();
        assert!(auto >= 1 && 64 % auto == 0);
        assert_eq!(resolve(0, 1, &cpu).unwrap(), 1);
    }

    #[test]
    fn merged_numbers_are_means_and_sums() {
        let a = StepStats {
            items: 3,
            ..StepStats::new(1.0, vec![("acc", 0.5)])
        };
        let b = StepStats {
            items: 5,
            ..StepStats::new(3.0, vec![("acc", 1.0)])
        };
        let m = merge(vec![a, b]);
        assert_eq!((m.loss, m.metrics[0].1, m.items), (2.0, 0.75, 8));
    }
}
