//! Pretraining an image task: open the data, build the task from the registry, feed the engine's
//! loop from the loader (the task's `make_batch` on worker threads), then sample pictures,
//! held-out measurements and the finished encoder.

use std::path::PathBuf;
use std::sync::Arc;

use burn::prelude::Device;

use crate::config::{self, PretrainConfig};
use crate::data::augment::Img;
use crate::data::loader::{Loader, LoaderConfig, Share};
use crate::data::{self, Dataset, OpenOptions};
use crate::engine::run_dir::{self, EncoderInfo, PretrainSummary, RunInfo, WEIGHTS};
use crate::engine::{self, run_loop, LoopSettings};
use crate::error::{Error, Result};
use crate::nn::input::InputSpec;
use crate::platform::dist;
use crate::platform::fsio::write_atomic;
use crate::tasks::{self, Build, TaskContext};

use super::monitor::{KnnMonitor, Monitored};

/// How many test images `ImageTask::evaluate` gets at the end of a run.
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

pub fn open_dataset(cfg: &PretrainConfig, skip_bad: bool) -> Result<Dataset> {
    if cfg.data.is_empty() {
        return Err(Error::Usage(
            "no data: pass --data FORMAT:PATH (e.g. idx:../shared/data/fashion-mnist)".into(),
        ));
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
    let (cfg, resumed) = run_dir::run_start(&run, req.resume, &req.config)?;
    cfg.validate()?;
    let entry = tasks::find(&cfg.task).ok_or_else(|| {
        Error::Usage(format!(
            "unknown task '{}'; known tasks: {}",
            cfg.task,
            tasks::names().join(", ")
        ))
    })?;
    let Build::Image(build) = entry.build else {
        return Err(Error::Usage(format!(
            "{} is a text task; pass text data (text:PATH or jsonl:PATH)",
            cfg.task
        )));
    };
    let dataset = match req.dataset {
        Some(ds) => ds,
        None => open_dataset(&cfg, req.skip_bad)?,
    };
    if dataset.train.n < cfg.batch_size {
        return Err(Error::config(
            "batch_size",
            format!(
                "{} is larger than the {} training images",
                cfg.batch_size, dataset.train.n
            ),
        ));
    }
    let input = InputSpec::from_images(&dataset.train)?;
    let skipped_at_open = dataset.skipped;
    // Under MPI rank 0 alone writes the run directory; every rank reads the same data and
    // config, and makes its own share of each batch.
    let writer = dist::is_writer();
    if writer {
        std::fs::create_dir_all(&run).map_err(|e| Error::io(&run, e))?;
        write_atomic(&run.join("config.toml"), config::to_toml(&cfg).as_bytes())?;
    }

    let device = req.device.clone().autodiff();
    let ctx = TaskContext {
        config: &cfg,
        input: &input,
        device: device.clone(),
    };
    let replicas = engine::replicas::resolve(cfg.replicas, cfg.batch_size, &device)?;
    let mut trainer = crate::platform::device::seeded(&device, cfg.seed, || build(&ctx))?;
    trainer.set_replicas(replicas);
    trainer.set_sync_bn(cfg.sync_bn);
    let (encoder_input, input_transform) = trainer.encoder_input(&input);
    let info = EncoderInfo {
        backbone: cfg.backbone_spec(encoder_input.channels),
        input: encoder_input,
        task: cfg.task.clone(),
        data: cfg.data.clone(),
        input_transform,
        device: crate::platform::device::describe(&req.device),
    };
    if !req.quiet {
        println!("{}: training on {}", cfg.task, info.device);
    }
    let monitor = if cfg.eval_every > 0 && writer {
        let (transform, input) = (info.input_transform, info.input.clone());
        KnnMonitor::new(&dataset, input, transform, cfg.seed, &req.device)?
    } else {
        None
    };
    if writer {
        run_dir::write_run_info(&run, &RunInfo::Image(info))?;
    }
    // Labelled data without a test split: transfer evaluates on a fixed 20% of the training
    // images, which pretraining must not see either.
    let train_set = Arc::new(match crate::transfer::split::pretraining_images(&dataset) {
        Some(idx) => dataset.train.subset(&idx),
        None => dataset.train,
    });
    let test_set = dataset.test;

    let start = run_loop::resume(trainer.as_mut(), &resumed, &run, req.quiet)?;
    let end = req.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps));
    if dist::size() > 1 && dist::is_writer() {
        // one line, even with -q: what the processes share
        eprintln!(
            "{}",
            dist::layout_line(dist::size(), replicas, cfg.batch_size, "images")
        );
    }
    // Under MPI each rank reads and decodes only its own parts of every global batch.
    let mut loader = Loader::with_share(
        train_set.clone(),
        LoaderConfig {
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            workers: if cfg.workers == 0 {
                engine::default_workers()
            } else {
                cfg.workers
            },
            prefetch: cfg.prefetch,
            start_batch: start,
            drop_last: true,
        },
        trainer.make_batch(),
        Share::of_this_process(),
    );
    let mut next = |_step: u64| match loader.next() {
        Some(Ok(batch)) => Ok(batch),
        Some(Err(e)) => Err(Error::from(e)),
        None => Err(Error::Usage(format!("{}: no training images", cfg.data))),
    };
    let mut monitored = Monitored {
        inner: trainer.as_mut(),
        monitor,
        failed: Default::default(),
    };
    let outcome = run_loop::run(
        &mut monitored,
        &mut next,
        &LoopSettings {
            resume_hint: " --skip-bad",
            ..LoopSettings::of(&cfg, "items", req.quiet)
        },
        &run,
        start,
        end,
    )?;
    drop(loader);
    // every rank decoded its own share: the substitutions of all ranks (a collective)
    let mut substituted = [train_set.substituted() as f64];
    dist::all_reduce_sum_f64(&mut substituted);
    let substituted = substituted[0] as usize;
    if !writer {
        return Ok(PretrainSummary::new(
            &cfg.task,
            cfg.steps,
            &run,
            &outcome,
            Vec::new(),
        ));
    }
    if skipped_at_open > 0 {
        eprintln!(
            "warning: {skipped_at_open} unreadable images (damaged members or rows included) were left out when {} was opened (--skip-bad)",
            cfg.data
        );
    }
    if substituted > 0 {
        eprintln!(
            "warning: {substituted} images failed to decode after the data was opened and were replaced by the next good image (--skip-bad)"
        );
    }
    trainer.write_samples(&run)?;
    let eval = match &test_set {
        Some(t) if t.n > 0 => {
            let held_out: Vec<Img> = (0..t.n.min(EVAL_IMAGES))
                .map(|i| Ok(Img::from_u8(t.channels, t.height, t.width, &t.image(i)?)))
                .collect::<Result<_>>()?;
            trainer.evaluate(&held_out)?
        }
        _ => Vec::new(),
    };
    let summary = PretrainSummary::new(&cfg.task, cfg.steps, &run, &outcome, eval);
    if summary.done() {
        trainer.save_transferable(&run.join(WEIGHTS))?;
    }
    summary.write()?;
    Ok(summary)
}
