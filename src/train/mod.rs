//! Pretraining: the explicit loop. Data → task.make_batch (loader threads) → task.step → metrics,
//! progress, checkpoints. A run directory holds `config.toml`, `encoder.json`, `metrics.jsonl`,
//! `checkpoints/`, `encoder.safetensors` and `summary.json`.

pub mod checkpoint;
pub mod gan;
pub mod image_quality;
pub mod lm_step;
pub mod metrics;
pub mod optim;
pub mod progress;
pub mod schedule;
pub mod step;
pub mod text;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use crate::config::{self, PretrainConfig};
use crate::data::augment::Img;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::{self, Dataset, OpenOptions};
use crate::error::{Error, Result};
use crate::input::{InputSpec, InputTransform};
use crate::nn::BackboneSpec;
use crate::tasks::{self, TaskContext};
use checkpoint::{latest_checkpoint, save_encoder, write_checkpoint, CheckpointState};
use progress::{Progress, Throughput};

/// How to rebuild and feed the encoder of a run (`encoder.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncoderInfo {
    pub backbone: BackboneSpec,
    pub input: InputSpec,
    pub task: String,
    pub data: String,
    /// Conversion of the images before `input` normalisation (e.g. colour → lightness).
    #[serde(default)]
    pub input_transform: InputTransform,
}

/// What a finished (or stopped) pretraining run reports (`summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainSummary {
    pub task: String,
    pub steps_done: u64,
    pub steps: u64,
    pub final_loss: f32,
    pub final_metrics: Vec<(String, f32)>,
    pub wall_s: f64,
    pub items_per_s: f64,
    pub run_dir: PathBuf,
    pub completed: bool,
    /// Steps skipped for a NaN/Inf loss (`on_nonfinite = "skip"`).
    pub skipped_steps: u64,
    /// The task's own measurements on held-out images (see `PretextTask::evaluate`).
    #[serde(default)]
    pub eval: Vec<(String, f32)>,
}

/// How many test images `PretextTask::evaluate` gets at the end of a run.
pub const EVAL_IMAGES: usize = 500;

pub struct PretrainRequest {
    pub config: PretrainConfig,
    pub out: PathBuf,
    pub device: Device,
    /// Continue the run in `out` from its latest checkpoint.
    pub resume: bool,
    /// Use this dataset instead of opening `config.data` (the demo's built-in data).
    pub dataset: Option<Dataset>,
    pub skip_bad: bool,
    /// Stop (with a checkpoint) once this many steps are done, even if the budget is larger.
    pub stop_after: Option<u64>,
    pub quiet: bool,
}

/// `on_nonfinite = "skip"` gives up after this many skipped steps in a row.
const MAX_SKIPPED_IN_ROW: u64 = 10;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C was pressed (since the last pretraining started).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Ctrl-C asks the loop to write a checkpoint and stop; a second Ctrl-C exits at once.
pub fn install_ctrlc() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: writing a checkpoint (Ctrl-C again to quit now)");
        });
    });
}

pub fn open_dataset(cfg: &PretrainConfig, skip_bad: bool) -> Result<Dataset> {
    if cfg.data.is_empty() {
        return Err(Error::Usage(
            "no data: pass --data FORMAT:PATH (e.g. idx:../shared/data/fashion-mnist)".into(),
        ));
    }
    if cfg.data == crate::demo::BUILTIN {
        let mut ds = crate::demo::builtin_dataset()?;
        if cfg.limit > 0 {
            ds.train = ds.train.take(cfg.limit);
        }
        return Ok(ds);
    }
    let opts = OpenOptions {
        image_size: Some(cfg.image_size),
        skip_bad,
        limit: (cfg.limit > 0).then_some(cfg.limit),
        stream: cfg.stream,
    };
    let ds = data::open(&cfg.data, &opts)?;
    if ds.skipped > 0 {
        eprintln!(
            "warning: skipped {} unreadable images in {}",
            ds.skipped, cfg.data
        );
    }
    Ok(ds)
}

pub fn pretrain(req: PretrainRequest) -> Result<PretrainSummary> {
    let run = req.out.clone();
    let (cfg, resumed) = run_start(&run, req.resume, &req.config)?;
    cfg.validate()?;
    let entry = tasks::find(&cfg.task).ok_or_else(|| {
        Error::Usage(format!(
            "unknown task '{}'; known tasks: {}",
            cfg.task,
            tasks::names().join(", ")
        ))
    })?;
    let dataset = match req.dataset {
        Some(ds) => ds,
        None => open_dataset(&cfg, req.skip_bad)?,
    };
    let train_set = Arc::new(dataset.train);
    let test_set = dataset.test;
    if train_set.n < cfg.batch_size {
        return Err(Error::config(
            "batch_size",
            format!(
                "{} is larger than the {} training images",
                cfg.batch_size, train_set.n
            ),
        ));
    }
    let input = InputSpec::from_images(&train_set)?;
    std::fs::create_dir_all(&run).map_err(|e| Error::io(&run, e))?;
    checkpoint::write_atomic(&run.join("config.toml"), config::to_toml(&cfg).as_bytes())?;

    let device = req.device.clone().autodiff();
    let ctx = TaskContext {
        config: &cfg,
        input: &input,
        device: device.clone(),
    };
    let mut task = crate::device::seeded(&device, cfg.seed, || (entry.build)(&ctx))?;
    let (encoder_input, input_transform) = task.encoder_input(&input);
    let spec = BackboneSpec {
        kind: cfg.backbone,
        in_channels: encoder_input.channels,
        width: cfg.width(),
    };
    let info = EncoderInfo {
        backbone: spec,
        input: encoder_input,
        task: cfg.task.clone(),
        data: cfg.data.clone(),
        input_transform,
    };
    checkpoint::write_atomic(
        &run.join("encoder.json"),
        &serde_json::to_vec_pretty(&info).expect("json"),
    )?;

    let mut start = 0;
    if let Some((dir, state)) = &resumed {
        task.load(dir)?;
        start = state.step;
        if !req.quiet {
            println!(
                "resuming {} from step {} ({})",
                run.display(),
                state.step,
                dir.display()
            );
        }
    }
    let end = req.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    let mut log = metrics::MetricsLog::open(&run.join("metrics.jsonl"), start)?;
    let loader = Loader::new(
        train_set.clone(),
        LoaderConfig {
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            workers: if cfg.workers == 0 {
                default_workers()
            } else {
                cfg.workers
            },
            prefetch: cfg.prefetch,
            start_batch: start,
            drop_last: true,
        },
        task.make_batch(),
    );
    install_ctrlc();
    INTERRUPTED.store(false, Ordering::SeqCst);

    let save = |task: &dyn tasks::PretextTask, step: u64| -> Result<PathBuf> {
        let state = CheckpointState {
            step,
            data_cursor: step,
            seed: cfg.seed,
            task: cfg.task.clone(),
        };
        write_checkpoint(&run, &state, cfg.keep_checkpoints, |dir| {
            task.save(dir)?;
            save_encoder(&task.encoder(), &dir.join("encoder.safetensors"))
        })
        .map_err(|e| checkpoint_failed(&run, step, &e))
    };

    let progress = Progress::new(
        &format!("pretrain {}", cfg.task),
        start,
        cfg.steps,
        req.quiet,
    );
    let t0 = Instant::now();
    let mut window = Throughput::new();
    let mut total = Throughput::new();
    let mut last = step::StepStats::default();
    let mut step = start;
    let mut last_saved = start;
    let mut first_batch = None;
    let (mut skipped, mut skipped_in_row) = (0u64, 0u64);
    for batch in loader.take((end.saturating_sub(start)) as usize) {
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                // A file that passed the header check at open no longer decodes. Keep what
                // was learned (a checkpoint at this step) and stop, naming the file.
                progress.finish();
                log.flush()?;
                if step > last_saved || step == 0 {
                    save(task.as_ref(), step)?;
                }
                return Err(Error::Training {
                    step,
                    message: format!(
                        "{e}; the last checkpoint (step {step}) is in {}; continue with: pretext pretrain --resume {} --skip-bad",
                        checkpoint::checkpoints_dir(&run).display(),
                        run.display()
                    ),
                });
            }
        };
        if first_batch.is_none() {
            first_batch = Some(batch.clone());
        }
        let items = batch.b as u64;
        let lr = schedule::lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio);
        let stats = task.step(batch, lr);
        step += 1;
        window.add(items);
        total.add(items);
        if stats.skipped {
            skipped += 1;
            skipped_in_row += 1;
            log.write(&serde_json::json!({ "step": step, "skipped": true, "lr": lr }))?;
            progress.println(&format!(
                "step {step}: loss is {} — step skipped, weights unchanged (on_nonfinite = \"skip\")",
                stats.loss
            ));
            if skipped_in_row >= MAX_SKIPPED_IN_ROW {
                return Err(Error::Training {
                    step,
                    message: format!(
                        "{MAX_SKIPPED_IN_ROW} steps in a row had a NaN/Inf loss and were skipped; \
                         the weights are those of step {}; try a lower lr",
                        step - skipped_in_row
                    ),
                });
            }
        } else {
            skipped_in_row = 0;
        }
        let bad = (!stats.skipped)
            .then(|| std::iter::once(("loss", stats.loss)))
            .into_iter()
            .flatten()
            .chain(stats.metrics.iter().copied())
            .find(|(_, v)| !v.is_finite());
        if let Some((what, value)) = bad {
            let good = if last_saved > start || resumed.is_some() {
                format!(
                    "the last good checkpoint (step {last_saved}) is in {}",
                    checkpoint::checkpoints_dir(&run).display()
                )
            } else {
                "no checkpoint was written yet".into()
            };
            return Err(Error::Training {
                step,
                message: format!("{what} is {value} (lr {lr:.3e}); {good}; try a lower lr"),
            });
        }
        let log_now = !stats.skipped && (step % cfg.log_every == 0 || step == end);
        if log_now {
            let mut rec = serde_json::json!({
                "step": step, "loss": stats.loss, "lr": lr,
                "items_per_s": window.per_sec(), "elapsed_s": t0.elapsed().as_secs_f64(),
            });
            for (k, v) in &stats.metrics {
                rec[*k] = serde_json::json!(v);
            }
            log.write(&rec)?;
        }
        let remaining = (end - step) as f64 * t0.elapsed().as_secs_f64() / (step - start) as f64;
        let mut msg = format!("loss {:.4}", stats.loss);
        for (k, v) in &stats.metrics {
            msg.push_str(&format!(" {k} {v:.3}"));
        }
        msg.push_str(&format!(" {:.0} items/s", window.per_sec()));
        progress.update(
            step,
            &msg,
            log_now,
            std::time::Duration::from_secs_f64(remaining),
        );
        if log_now {
            window = Throughput::new();
        }
        if !stats.skipped {
            last = stats;
        }
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if step % cfg.checkpoint_every == 0 || interrupted {
            log.flush()?;
            save(task.as_ref(), step)?;
            last_saved = step;
        }
        if interrupted {
            progress.println(&format!(
                "stopped at step {step}; continue with: pretext pretrain --resume {}",
                run.display()
            ));
            break;
        }
    }
    progress.finish();
    let substituted = train_set.substituted();
    if substituted > 0 {
        eprintln!(
            "warning: {substituted} images failed to decode after the folder was opened and were replaced by the next good image (--skip-bad)"
        );
    }
    if step != last_saved || step == 0 {
        log.flush()?;
        save(task.as_ref(), step)?;
    }
    if let Some(batch) = &first_batch {
        task.write_samples(batch, &run)?;
    }
    let eval = match &test_set {
        Some(t) if t.n > 0 => {
            let held_out: Vec<Img> = (0..t.n.min(EVAL_IMAGES))
                .map(|i| Ok(Img::from_u8(t.channels, t.height, t.width, &t.image(i)?)))
                .collect::<Result<_>>()?;
            task.evaluate(&held_out)?
        }
        _ => Vec::new(),
    };
    let completed = step >= cfg.steps;
    if completed {
        save_encoder(&task.encoder(), &run.join("encoder.safetensors"))?;
    }
    let summary = PretrainSummary {
        task: cfg.task.clone(),
        steps_done: step,
        steps: cfg.steps,
        final_loss: last.loss,
        final_metrics: last
            .metrics
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        wall_s: t0.elapsed().as_secs_f64(),
        items_per_s: total.per_sec(),
        run_dir: run.clone(),
        completed,
        skipped_steps: skipped,
        eval,
    };
    checkpoint::write_atomic(
        &run.join("summary.json"),
        &serde_json::to_vec_pretty(&summary).expect("json"),
    )?;
    Ok(summary)
}

/// The config and newest checkpoint of the run in `run` for `--resume`; for a new run, `config`
/// after checking that `run` does not already hold one (never overwrite a run's checkpoints).
pub(crate) fn run_start<C: Clone + serde::de::DeserializeOwned>(
    run: &Path,
    resume: bool,
    config: &C,
) -> Result<(C, Option<(PathBuf, CheckpointState)>)> {
    if resume {
        let path = run.join("config.toml");
        if !path.exists() {
            return Err(Error::Usage(format!(
                "--resume {}: no config.toml there; is it a run directory?",
                run.display()
            )));
        }
        return Ok((config::from_toml_file(&path)?, latest_checkpoint(run)?));
    }
    if latest_checkpoint(run)?.is_some() {
        return Err(Error::Usage(format!(
            "{} already holds a run with checkpoints; continue it with --resume {} or choose another --out",
            run.display(),
            run.display()
        )));
    }
    Ok((config.clone(), None))
}

/// The error for a checkpoint that could not be written: why, which checkpoint is still intact,
/// and how to continue.
pub(crate) fn checkpoint_failed(run: &Path, step: u64, e: &Error) -> Error {
    let kept = match latest_checkpoint(run) {
        Ok(Some((dir, s))) => format!(
            "the last complete checkpoint (step {}) is intact in {}",
            s.step,
            dir.display()
        ),
        _ => "no earlier checkpoint exists".into(),
    };
    Error::Training {
        step,
        message: format!(
            "could not write checkpoint {step}: {}; {kept}; fix the output \
             directory (space, permissions) and continue with --resume {}",
            e.chain(),
            run.display()
        ),
    }
}

pub fn default_workers() -> usize {
    // Half the cores: the other half runs the training step itself.
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The encoder of a run: `encoder.safetensors` at the top when the run finished, otherwise the
/// latest checkpoint's copy.
pub fn encoder_weights(run: &Path) -> Result<PathBuf> {
    let top = run.join("encoder.safetensors");
    if top.exists() {
        return Ok(top);
    }
    match latest_checkpoint(run)? {
        Some((dir, _)) => Ok(dir.join("encoder.safetensors")),
        None => Err(Error::Usage(format!(
            "{}: no encoder.safetensors and no checkpoint; is this a pretext run directory?",
            run.display()
        ))),
    }
}
