//! Many processes, one run: data-parallel training over MPI (the `mpi` cargo feature).
//!
//! Started by `mpirun`/`srun`, every process (rank) runs the same command. [`init`] joins the
//! MPI world; from then on the engine splits every global batch into `ranks × replicas` parts
//! and a rank makes and steps only its own (`engine::replicas`), sums gradients across
//! ranks once per optimiser update ([`all_reduce_sum`], one flat buffer in parameter order) and
//! averages the step's numbers, so every rank applies the same update and keeps the same
//! weights. Rank 0 alone writes the run directory ([`is_writer`]); the others read it when they
//! resume.
//!
//! Without the feature a process started as one of several stops with a clear error rather
//! than training alone N times over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// This process's place in the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub rank: usize,
    pub size: usize,
}

static PLACE: OnceLock<Place> = OnceLock::new();

/// Which rank this process is (0 when not under MPI).
pub fn rank() -> usize {
    place().rank
}

/// How many processes share the run (1 when not under MPI).
pub fn size() -> usize {
    place().size
}

pub fn place() -> Place {
    *PLACE.get().unwrap_or(&Place { rank: 0, size: 1 })
}

/// Whether this process writes the run directory (rank 0, or the only process).
pub fn is_writer() -> bool {
    rank() == 0
}

/// The process count a launcher (Open MPI's mpirun, MPICH/Hydra, Slurm's srun) started this
/// process as one of, from the environment it sets; None when not started by one.
pub fn launched_as() -> Option<(usize, usize)> {
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    [
        ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
        ("PMI_SIZE", "PMI_RANK"),
        ("PMIX_SIZE", "PMIX_RANK"),
        // Set by srun for a job step (SLURM_NTASKS alone is also set in a batch script).
        ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID"),
    ]
    .iter()
    .find_map(|(size, rank)| Some((get(size)?, get(rank).unwrap_or(0))))
}

/// Held by `main` while the command runs: MPI is finalised when it drops.
pub struct Session {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

impl Drop for Session {
    /// MPI_Finalize (the universe's own drop), after everything this process sent.
    fn drop(&mut self) {}
}

/// Join the MPI world when started as one of several processes. Call once, before anything
/// else reads [`rank`]/[`size`].
pub fn init() -> Result<Session> {
    let launched = launched_as().filter(|&(size, _)| size > 1);
    #[cfg(not(feature = "mpi"))]
    {
        if let Some((size, rank)) = launched {
            return Err(Error::Usage(format!(
                "started by mpirun/srun as rank {rank} of {size} processes, but this pretext was \
                 built without MPI; rebuild it with `cargo build --release --features mpi` \
                 (needs an MPI library: Debian's libopenmpi-dev and libclang-dev), or run one \
                 process"
            )));
        }
        Ok(Session {})
    }
    #[cfg(feature = "mpi")]
    {
        use mpi::traits::Communicator;
        if launched.is_none() {
            return Ok(Session { _universe: None });
        }
        // The engine calls MPI from whichever thread runs the leading replica, one call at a
        // time: SERIALIZED.
        let Some((universe, level)) = mpi::initialize_with_threading(mpi::Threading::Serialized)
        else {
            return Err(Error::Usage(
                "MPI was initialised twice in one process (a bug in pretext)".into(),
            ));
        };
        if level < mpi::Threading::Serialized {
            return Err(Error::Usage(format!(
                "the MPI library gives thread level {level:?}; pretext needs Serialized \
                 (Open MPI and MPICH both do)"
            )));
        }
        let world = universe.world();
        let place = Place {
            rank: world.rank() as usize,
            size: world.size() as usize,
        };
        let _ = PLACE.set(place);
        Ok(Session {
            _universe: Some(universe),
        })
    }
}

/// How a run shares its global batch: `ranks × replicas` parts (the line a run under MPI prints
/// once, even with `-q`), e.g. `layout: 2 ranks × 4 replicas = 8 parts of 32 images, global
/// batch 256 (each rank reads and decodes its 128)`.
pub fn layout_line(ranks: usize, replicas: usize, global_batch: usize, unit: &str) -> String {
    let (ranks, replicas) = (ranks.max(1), replicas.max(1));
    let parts = ranks * replicas;
    let s = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    format!(
        "layout: {} × {} = {} of {} {unit}, global batch {global_batch} (each rank reads and \
         decodes its {})",
        s(ranks, "rank"),
        s(replicas, "replica"),
        s(parts, "part"),
        global_batch / parts,
        global_batch / ranks
    )
}

/// Sum `buf` element-wise over every rank, in place (nothing to do alone). The gradients'
/// all-reduce: counted in [`traffic`].
pub fn all_reduce_sum(buf: &mut [f32]) {
    if size() > 1 {
        let t0 = std::time::Instant::now();
        backend::all_reduce_sum(buf);
        BYTES.fetch_add(std::mem::size_of_val(buf) as u64, Ordering::Relaxed);
        NANOS.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

static BYTES: AtomicU64 = AtomicU64::new(0);
static NANOS: AtomicU64 = AtomicU64::new(0);

/// Bytes this rank has sent into gradient all-reduces so far, and the seconds it spent in them
/// (waiting for slower ranks included).
pub fn traffic() -> (u64, f64) {
    (
        BYTES.load(Ordering::Relaxed),
        NANOS.load(Ordering::Relaxed) as f64 * 1e-9,
    )
}

/// [`all_reduce_sum`] in double precision (a step's numbers, checksums).
pub fn all_reduce_sum_f64(buf: &mut [f64]) {
    if size() > 1 {
        backend::all_reduce_sum(buf);
    }
}

/// Every rank's `local` concatenated in rank order (alone: `local` itself). Every rank must
/// bring as many values: a rank that brings a different count stops the job with a panic on
/// every rank (checked first, with one small all-reduce).
pub fn all_gather_f64(local: &[f64]) -> Vec<f64> {
    if size() <= 1 {
        return local.to_vec();
    }
    let (lo, hi) = all_min_max(&[local.len() as f64]);
    assert_eq!(
        lo, hi,
        "ranks out of step: an all-gather of {} to {} values per rank",
        lo[0], hi[0]
    );
    backend::all_gather(local)
}

/// Element-wise minimum and maximum of `values` over every rank.
pub fn all_min_max(values: &[f64]) -> (Vec<f64>, Vec<f64>) {
    if size() > 1 {
        backend::all_min_max(values)
    } else {
        (values.to_vec(), values.to_vec())
    }
}

/// Wait until every rank gets here.
pub fn barrier() {
    if size() > 1 {
        backend::barrier();
    }
}

/// Whether any rank's `flag` is true (a collective: every rank must call it).
pub fn any(flag: bool) -> bool {
    !all_ok(!flag)
}

/// Whether every rank's `ok` is true (a collective: every rank must call it).
pub fn all_ok(ok: bool) -> bool {
    let mut flag = [if ok { 0.0 } else { 1.0 }];
    all_reduce_sum_f64(&mut flag);
    flag[0] == 0.0
}

/// End the whole job with `code` (MPI_Abort): the other ranks may be waiting for this one in a
/// collective and would otherwise wait for ever. Returns only when not under MPI.
pub fn abort_job(code: i32) {
    if size() > 1 {
        backend::abort(code);
    }
}

#[cfg(feature = "mpi")]
mod backend {
    use mpi::collective::{CommunicatorCollectives, SystemOperation};
    use mpi::datatype::Equivalence;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::Communicator;

    pub fn all_reduce_sum<T: Equivalence + Copy>(buf: &mut [T]) {
        let send = buf.to_vec();
        SimpleCommunicator::world().all_reduce_into(&send[..], buf, SystemOperation::sum());
    }

    pub fn all_min_max(values: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (mut lo, mut hi) = (values.to_vec(), values.to_vec());
        let world = SimpleCommunicator::world();
        world.all_reduce_into(values, &mut lo[..], SystemOperation::min());
        world.all_reduce_into(values, &mut hi[..], SystemOperation::max());
        (lo, hi)
    }

    pub fn all_gather(local: &[f64]) -> Vec<f64> {
        let world = SimpleCommunicator::world();
        let mut out = vec![0.0; local.len() * world.size() as usize];
        world.all_gather_into(local, &mut out[..]);
        out
    }

    pub fn barrier() {
        SimpleCommunicator::world().barrier();
    }

    pub fn abort(code: i32) {
        SimpleCommunicator::world().abort(code);
    }
}

/// Without MPI there is one process: [`size`] is 1 and nothing here is called.
#[cfg(not(feature = "mpi"))]
mod backend {
    pub fn all_reduce_sum<T>(_: &mut [T]) {}
    pub fn all_min_max(values: &[f64]) -> (Vec<f64>, Vec<f64>) {
        (values.to_vec(), values.to_vec())
    }
    pub fn all_gather(local: &[f64]) -> Vec<f64> {
        local.to_vec()
    }
    pub fn barrier() {}
    pub fn abort(_: i32) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_is_rank_zero_of_one() {
        assert_eq!(place(), Place { rank: 0, size: 1 });
        let mut v = [1.0f32, 2.0];
        all_reduce_sum(&mut v);
        assert_eq!(v, [1.0, 2.0]);
        assert_eq!(all_gather_f64(&[3.0, 4.0]), vec![3.0, 4.0]);
        assert!(all_ok(true) && !all_ok(false));
        assert!(is_writer());
    }

    #[test]
    fn the_layout_line_names_ranks_replicas_and_the_global_batch() {
        assert_eq!(
            layout_line(2, 4, 256, "images"),
            "layout: 2 ranks × 4 replicas = 8 parts of 32 images, global batch 256 (each rank \
             reads and decodes its 128)"
        );
        assert!(layout_line(2, 1, 64, "images")
            .starts_with("layout: 2 ranks × 1 replica = 2 parts of 32 images"));
    }
}
