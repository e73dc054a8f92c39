//! The one training loop, for every task, image or text: batch → step → NaN/Inf check → metrics,
//! progress, held-out validation every `eval_every` → checkpoint every `checkpoint_every` and
//! on Ctrl-C → a final checkpoint. What differs between tasks is in the [`Trainable`] and the
//! batch source the caller hands in.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::checkpoint::{self, write_checkpoint, CheckpointState};
use super::metrics::MetricsLog;
use super::progress::{Progress, Throughput};
use super::run_dir::checkpoint_failed;
use super::schedule;
use super::step::StepStats;
use super::task::{AnyBatch, Trainable};
use crate::error::{Error, Result};
use crate::platform::dist;

/// `on_nonfinite = "skip"` gives up after this many skipped steps in a row.
pub const MAX_SKIPPED_IN_ROW: u64 = 10;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C was pressed (since the last loop started).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Set by [`use_external_interrupts`]: the host process handles SIGINT and calls [`interrupt`].
static EXTERNAL_INTERRUPTS: AtomicBool = AtomicBool::new(false);

/// For a host with its own SIGINT handling (the Python package): [`install_ctrlc`] installs
/// nothing from now on, and the host calls [`interrupt`] when the user asks to stop.
pub fn use_external_interrupts() {
    EXTERNAL_INTERRUPTS.store(true, Ordering::SeqCst);
}

/// Ask the running loop (or compare) to write a checkpoint and stop, as Ctrl-C does; returns
/// whether it had already been asked (since the last loop started).
pub fn interrupt() -> bool {
    let again = INTERRUPTED.swap(true, Ordering::SeqCst);
    if !again {
        eprintln!("\ninterrupted: writing a checkpoint (Ctrl-C again to quit now)");
    }
    again
}

/// Ctrl-C asks the loop to write a checkpoint and stop; a second Ctrl-C exits at once. Nothing
/// is installed after [`use_external_interrupts`].
pub fn install_ctrlc() {
    if EXTERNAL_INTERRUPTS.load(Ordering::SeqCst) {
        return;
    }
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = ctrlc::set_handler(|| {
            if interrupt() {
                std::process::exit(130);
            }
        });
    });
}

/// The loop's settings, taken from the run's config ([`LoopSettings::of`]).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct LoopSettings {
    /// The task's name (progress label, `state.json`).
    pub task: String,
    pub steps: u64,
    pub lr: f64,
    pub warmup_steps: u64,
    pub min_lr_ratio: f64,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// Held-out validation every N steps, at the start and at the end; 0 = never.
    #[serde(default)]
    pub eval_every: u64,
    pub seed: u64,
    /// Under MPI: compare the ranks' weights every N steps; 0 = never.
    #[serde(default)]
    pub rank_check_every: u64,
    /// Stop at the first step boundary after this many minutes of wall-clock time (from the
    /// start of this loop; a resumed run gets the budget afresh), with a checkpoint; 0 = no limit.
    #[serde(default)]
    pub max_minutes: f64,
    /// What a batch's items are called in throughput (`items`, `tokens`).
    #[serde(skip)]
    pub unit: &'static str,
    /// Added to the `--resume` line after a data error (e.g. ` --skip-bad`).
    #[serde(skip)]
    pub resume_hint: &'static str,
    #[serde(skip)]
    pub quiet: bool,
    /// What the progress line calls the loop before the task's name: `pretrain` (when empty) or
    /// a transfer stage's `transfer`.
    #[serde(skip)]
    pub stage: &'static str,
}

impl LoopSettings {
    /// The settings a run's config holds under the same names (`task`, `steps`, `lr`,
    /// `warmup_steps`, `min_lr_ratio`, `log_every`, `checkpoint_every`, `keep_checkpoints`,
    /// `seed`, and `eval_every` where it has one), counting items as `unit`.
    pub fn of(config: &impl serde::Serialize, unit: &'static str, quiet: bool) -> Self {
        let value = toml::Value::try_from(config).expect("a config serialises");
        let s: LoopSettings = value.try_into().expect("every config has the loop's keys");
        Self { unit, quiet, ..s }
    }
}

impl LoopSettings {
    /// A transfer stage's loop (`task`: `finetune`, `semi`): a cosine schedule from `lr` to 0
    /// after `warmup_steps`, one checkpoint kept, no time budget, no held-out measurement, no
    /// rank check.
    #[allow(clippy::too_many_arguments)]
    pub fn transfer_stage(
        task: &str,
        steps: u64,
        lr: f64,
        warmup_steps: u64,
        seed: u64,
        log_every: u64,
        checkpoint_every: u64,
        unit: &'static str,
        quiet: bool,
    ) -> Self {
        LoopSettings {
            task: task.into(),
            steps,
            lr,
            warmup_steps,
            min_lr_ratio: 0.0,
            log_every: log_every.max(1),
            checkpoint_every: checkpoint_every.max(1),
            keep_checkpoints: 1,
            eval_every: 0,
            seed,
            rank_check_every: 0,
            max_minutes: 0.0,
            unit,
            resume_hint: "",
            quiet,
            stage: "transfer",
        }
    }
}

/// Load the checkpoint a resumed run continues from into `trainer` (saying so unless `quiet`);
/// the step to start at (0 for a new run).
pub fn resume(
    trainer: &mut dyn Trainable,
    resumed: &Option<(PathBuf, CheckpointState)>,
    run: &Path,
    quiet: bool,
) -> Result<u64> {
    let Some((dir, state)) = resumed else {
        return Ok(0);
    };
    trainer.load(dir)?;
    if !quiet {
        println!(
            "resuming {} from step {} ({})",
            run.display(),
            state.step,
            dir.display()
        );
    }
    Ok(state.step)
}

/// Where the batches come from: batch number `step` (steps done before it), or the data error
/// that ends the run.
pub type BatchSource<'a> = dyn FnMut(u64) -> Result<Box<dyn AnyBatch>> + 'a;

/// How the loop ended.
#[derive(Clone, Debug)]
pub struct LoopOutcome {
    /// Steps done (the last checkpoint's step).
    pub step: u64,
    /// The last applied (not skipped) step's numbers.
    pub last: StepStats,
    pub skipped: u64,
    /// The last held-out validation.
    pub last_eval: Vec<(String, f32)>,
    pub wall_s: f64,
    pub items_per_s: f64,
    /// The loop stopped before `end` because `max_minutes` ran out.
    pub out_of_time: bool,
    /// The time budget it ran under (0 = none).
    pub max_minutes: f64,
}

impl LoopOutcome {
    /// `Ok` when the loop got to step `end`; otherwise (Ctrl-C) the error a transfer stage (`what`)
    /// stops with rather than evaluating a half-trained model: where its checkpoint is and how to
    /// go on.
    pub fn reached(&self, end: u64, what: &str, dir: &Path) -> Result<()> {
        if self.step >= end {
            return Ok(());
        }
        Err(Error::Training {
            step: self.step,
            message: format!(
                "{what} interrupted; its checkpoint is in {}: run the same command again to continue",
                checkpoint::checkpoints_dir(dir).display()
            ),
        })
    }
}

/// Run steps `start..end` of the run in `run` (`start` = the resumed checkpoint's step, whose
/// state `trainer` must already hold). Writes `metrics.jsonl` and checkpoints; a checkpoint
/// holds the step it was taken after, so the last one always exists when this returns `Ok`.
pub fn run(
    trainer: &mut dyn Trainable,
    next_batch: &mut BatchSource,
    s: &LoopSettings,
    run: &Path,
    start: u64,
    end: u64,
) -> Result<LoopOutcome> {
    // Under MPI rank 0 alone writes the run directory (the others hold no log).
    let writer = dist::is_writer();
    let mut log = MetricsLog::open_if(writer, &run.join("metrics.jsonl"), start)?;
    install_ctrlc();
    INTERRUPTED.store(false, Ordering::SeqCst);
    let save = |trainer: &dyn Trainable, step: u64| -> Result<PathBuf> {
        let state = CheckpointState {
            step,
            data_cursor: step,
            seed: s.seed,
            task: s.task.clone(),
        };
        if !writer {
            return Ok(run.to_path_buf());
        }
        write_checkpoint(run, &state, s.keep_checkpoints, |dir| trainer.save(dir))
            .map_err(|e| checkpoint_failed(run, step, &e))
    };
    let mut last_eval = Vec::new();
    if s.eval_every > 0 && start == 0 && writer {
        // Where the curve starts (for a language model ≈ ln(vocab)).
        last_eval = trainer.validate()?;
        if !last_eval.is_empty() {
            log.write(&record(0, &last_eval))?;
        }
    }
    let stage = if s.stage.is_empty() {
        "pretrain"
    } else {
        s.stage
    };
    let progress = Progress::new(&format!("{stage} {}", s.task), start, s.steps, s.quiet);
    let t0 = Instant::now();
    let (mut window, mut total) = (Throughput::new(), Throughput::new());
    let mut last = StepStats::default();
    // Under MPI: the gradient all-reduce's share of each logged window.
    let (mut traffic, mut window_steps) = (dist::traffic(), 0u64);
    let (mut step, mut last_saved, mut skipped, mut in_row) = (start, start, 0u64, 0u64);
    let mut out_of_time = false;
    while step < end {
        let batch = match next_batch(step) {
            Ok(batch) => batch,
            Err(e) => {
                // The data stopped (a file that no longer decodes, a token file that cannot be
                // read): keep what was learned and say how to go on.
                progress.finish();
                log.flush()?;
                if step > last_saved || step == 0 {
                    save(trainer, step)?;
                }
                let go_on = if s.stage.is_empty() {
                    format!(
                        "pretext pretrain --resume {}{}",
                        run.display(),
                        s.resume_hint
                    )
                } else {
                    "the same command again".into()
                };
                return Err(Error::Training {
                    step,
                    message: format!(
                        "{e}; the last checkpoint (step {step}) is in {}; continue with: {go_on}",
                        checkpoint::checkpoints_dir(run).display(),
                    ),
                });
            }
        };
        let lr = schedule::lr_at(step, s.lr, s.warmup_steps, s.steps, s.min_lr_ratio);
        let stats = trainer.step(batch, step, lr);
        step += 1;
        window.add(stats.items);
        total.add(stats.items);
        if stats.skipped {
            skipped += 1;
            in_row += 1;
            log.write(&serde_json::json!({ "step": step, "skipped": true, "lr": lr }))?;
            let (what, value) = stats.non_finite().unwrap_or(("loss", stats.loss));
            progress.println(&format!(
                "step {step}: {what} is {value} — step skipped, weights unchanged (on_nonfinite = \"skip\")"
            ));
        } else if let Some((what, value)) = stats.non_finite() {
            progress.finish();
            log.flush()?;
            let good = if last_saved > 0 {
                format!(
                    "the last good checkpoint (step {last_saved}) is in {}",
                    checkpoint::checkpoints_dir(run).display()
                )
            } else {
                "no checkpoint was written yet".into()
            };
            return Err(Error::Training {
                step,
                message: format!(
                    "{what} is {value} (lr {lr:.3e}); {good}; try a lower lr or on_nonfinite = \"skip\""
                ),
            });
        } else {
            in_row = 0;
            let eval_now = s.eval_every > 0 && (step % s.eval_every == 0 || step == s.steps);
            let log_now = step % s.log_every == 0 || step == end || eval_now;
            let mut rec = serde_json::json!({
                "step": step, "loss": stats.loss, "lr": lr,
                format!("{}_per_s", s.unit): window.per_sec(),
                "elapsed_s": t0.elapsed().as_secs_f64(),
            });
            for (k, v) in &stats.metrics {
                rec[*k] = serde_json::json!(v);
            }
            window_steps += 1;
            if dist::size() > 1 && log_now {
                let now = dist::traffic();
                let per_step = |x: f64| x / window_steps.max(1) as f64;
                rec["allreduce_mb_per_step"] =
                    serde_json::json!(per_step((now.0 - traffic.0) as f64 / 1e6));
                rec["allreduce_ms_per_step"] =
                    serde_json::json!(per_step((now.1 - traffic.1) * 1e3));
                (traffic, window_steps) = (now, 0);
            }
            if eval_now && writer {
                let eval = trainer.validate()?;
                if !eval.is_empty() {
                    let shown: Vec<String> = eval
                        .iter()
                        .map(|(k, v)| format!("{} {v:.4}", k.replace("val_", "validation ")))
                        .collect();
                    progress.println(&format!(
                        "step {step}: train loss {:.4}, {}",
                        stats.loss,
                        shown.join(", ")
                    ));
                    for (k, v) in &eval {
                        rec[k.as_str()] = serde_json::json!(v);
                    }
                    last_eval = eval;
                }
            }
            if log_now {
                log.write(&rec)?;
            }
            let mut msg = format!("loss {:.4}", stats.loss);
            for (k, v) in stats.metrics.iter().take(3) {
                msg.push_str(&format!(" {k} {v:.3}"));
            }
            if let Some((k, v)) = last_eval.first() {
                msg.push_str(&format!(" {k} {v:.4}"));
            }
            msg.push_str(&format!(" {:.0} {}/s", window.per_sec(), s.unit));
            let remaining =
                (end - step) as f64 * t0.elapsed().as_secs_f64() / (step - start) as f64;
            progress.update(step, &msg, log_now, Duration::from_secs_f64(remaining));
            if log_now {
                window = Throughput::new();
            }
            last = stats;
        }
        if dist::size() > 1 && s.rank_check_every > 0 && step % s.rank_check_every == 0 {
            check_ranks_agree(trainer, step)?;
        }
        // Checkpoints and Ctrl-C on schedule, whether or not this step was skipped. Under MPI
        // every rank must stop at the same step: rank 0's Ctrl-C decides.
        let interrupted = dist::any(interrupted());
        // The time budget: every rank stops at the same step (rank 0's clock decides).
        let time_up = s.max_minutes > 0.0
            && step < end
            && dist::any(dist::is_writer() && t0.elapsed().as_secs_f64() >= s.max_minutes * 60.0);
        if step % s.checkpoint_every == 0 || interrupted || time_up {
            log.flush()?;
            save(trainer, step)?;
            last_saved = step;
        }
        if in_row >= MAX_SKIPPED_IN_ROW {
            progress.finish();
            log.flush()?;
            return Err(Error::Training {
                step,
                message: format!(
                    "{MAX_SKIPPED_IN_ROW} steps in a row had a NaN/Inf loss and were skipped; \
                     the weights are those of step {}; try a lower lr",
                    step - in_row
                ),
            });
        }
        if time_up && !interrupted {
            out_of_time = true;
            progress.println(&format!(
                "stopped after {step} of {} steps: the time budget of {} minutes ran out; continue with: pretext pretrain --resume {}",
                s.steps,
                s.max_minutes,
                run.display()
            ));
            break;
        }
        if interrupted {
            progress.println(&if s.stage.is_empty() {
                format!(
                    "stopped at step {step}; continue with: pretext pretrain --resume {}",
                    run.display()
                )
            } else {
                format!("stopped at step {step}; run the same command again to continue")
            });
            break;
        }
    }
    progress.finish();
    log.flush()?;
    if step != last_saved || step == 0 {
        save(trainer, step)?;
    }
    Ok(LoopOutcome {
        step,
        last,
        skipped,
        last_eval,
        wall_s: t0.elapsed().as_secs_f64(),
        items_per_s: total.per_sec(),
        out_of_time,
        max_minutes: s.max_minutes,
    })
}

/// Every rank's weights are the same (they apply the same summed gradients): checked by a
/// checksum, an error naming the step if not.
fn check_ranks_agree(trainer: &dyn Trainable, step: u64) -> Result<()> {
    let sum = trainer.checksum();
    let (lo, hi) = dist::all_min_max(&sum);
    if lo != hi {
        return Err(Error::Training {
            step,
            message: format!(
                "the {} processes' weights differ after step {step} (checksums {lo:?} to {hi:?}); \
                 they should be identical: please report this with the command line",
                dist::size()
            ),
        });
    }
    Ok(())
}

fn record(step: u64, values: &[(String, f32)]) -> serde_json::Value {
    let mut rec = serde_json::json!({ "step": step });
    for (k, v) in values {
        rec[k.as_str()] = serde_json::json!(v);
    }
    rec
}
