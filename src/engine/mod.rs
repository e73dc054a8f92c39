//! The engine: the one training loop every task runs through, and what it owns for the tasks —
//! optimisers by name, the learning-rate schedule, checkpoints and `--resume`, NaN/Inf handling,
//! held-out validation, metrics, progress and Ctrl-C.
//!
//! - [`task`]: the [`Task`] trait a task file implements, and [`Bound`], the task with its model
//!   and optimisers (save, load, undo a skipped step).
//! - [`run_loop`]: the loop.
//! - [`run_dir`]: the one layout of a run directory (`run.json`, `encoder.safetensors`, …).
//! - [`checkpoint`], [`optim`], [`clip`], [`schedule`], [`metrics`], [`progress`]: the loop's parts.
//! - [`replicas`]: every core inside one step (the batch in parts, one model replica each);
//!   [`exchange`]: where the replicas meet (updates, sums and gathers over the global batch,
//!   synchronised batch norm).
//! - [`ranks`]: many processes (MPI, [`crate::platform::dist`]): gradients and numbers summed over ranks.
//! - [`step`], [`gan`]: pieces shared by task steps (cross-entropy, the two GAN phases).

pub mod checkpoint;
pub mod clip;
pub mod exchange;
pub mod gan;
pub mod metrics;
pub mod optim;
pub mod progress;
pub mod ranks;
pub mod replicas;
pub mod run_dir;
pub mod run_loop;
pub mod schedule;
pub mod step;
pub mod task;

pub use run_dir::{PretrainSummary, RunInfo};
pub use run_loop::{interrupted, LoopOutcome, LoopSettings};
pub use step::StepStats;
pub use task::{AnyBatch, Bound, Optimizers, StepCtx, Task, Trainable};

/// Loader workers by default: half the cores; the other half runs the training step itself.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
