//! One task's measurement in a `pretext bench` child process: its batch made once and dumped for
//! the PyTorch reference, the engine's step timed over `--steps`, and the loader's rate with the
//! default worker count. Image tasks go through the registry; a text task has its own branch.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};

use super::layout::FlatBatch;
use super::{cores, cpu_seconds, peak_rss_mb, BenchOptions, Measurement, LR, STEADY_STATE_INDEX};
use crate::config::PretrainConfig;
use crate::data::augment::Img;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::rngs::BatchRngs;
use crate::data::ImageSet;
use crate::engine::optim::text_optimizer;
use crate::engine::replicas::split_batch;
use crate::error::{Error, Result};
use crate::nn::input::InputSpec;
use crate::nn::transformer::TransformerSpec;
use crate::nn::BackboneKind;
use crate::tasks::{self, TaskContext};

/// Measures one task in this process. Image tasks go through the registry; a text task adds its
/// own branch here (its data, its batch) and one step function in `bench/reference.py`.
pub fn measure_task(name: &str, opts: &BenchOptions) -> Result<Measurement> {
    if tasks::find_text(name).is_some() {
        return measure_text_task(name, opts);
    }
    measure_image_task(name, opts)
}

/// The text model of the language-model rows: the `tiny` preset (4 layers × 128, 4 heads,
/// context 128) with a 4,096-token vocabulary, `opts.batch_size` sequences of 128 tokens.
pub fn text_spec(causal: bool) -> TransformerSpec {
    TransformerSpec::preset("tiny", 4096, causal).expect("the tiny preset exists")
}

/// One language-model training step (forward, masked cross-entropy, backward, AdamW with the
/// pretraining settings) on random token windows; items are tokens. The "loader" column is
/// the rate at which windows are cut from a token file and made into batches by the task.
fn measure_text_task(name: &str, opts: &BenchOptions) -> Result<Measurement> {
    let entry = tasks::find_text(name).expect("checked by the caller");
    let tasks::Build::Text { causal, build } = entry.build else {
        unreachable!("a text task");
    };
    let device = crate::platform::device::parse(&opts.device)?.autodiff();
    let spec = text_spec(causal);
    let t = spec.max_len;
    let b = opts.batch_size;
    let specials = tasks::Specials {
        vocab: spec.vocab,
        pad: 0,
        eos: 1,
        mask: 2,
        cls: 3,
        ordinary: (4..spec.vocab as u32).collect(),
    };
    let task = build(&toml::Value::Table(Default::default()), &specials)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let corpus: Vec<u32> = (0..200_000)
        .map(|_| rng.gen_range(4..spec.vocab as u32))
        .collect();
    let wlen = task.window_len(t);
    let windows = |rng: &mut rand_chacha::ChaCha8Rng| -> Vec<Vec<u32>> {
        (0..b)
            .map(|_| {
                let o = rng.gen_range(0..corpus.len() - wlen);
                corpus[o..o + wlen].to_vec()
            })
            .collect()
    };
    // The step as `pretext pretrain` runs it: the language-model task bound by the engine, the
    // batch in one part per replica.
    let replicas = crate::engine::replicas::resolve(opts.replicas, b, &device)?;
    let all = windows(&mut rng);
    let rngs = BatchRngs::from_rng(&mut rng);
    let batch = split_batch(all.len(), replicas, &rngs, |r, rngs| {
        task.make_batch(&all[r], rngs)
    });
    let cfg = crate::config::TextConfig::default();
    let mut bound = crate::tasks::shared::text_tasks::text_trainer(
        task.clone(),
        &crate::tasks::shared::text_tasks::TextSetup {
            spec: spec.clone(),
            validation: Vec::new(),
            seed: 0,
            device: device.clone(),
            optimizer: text_optimizer(cfg.weight_decay, cfg.grad_clip, cfg.decay_biases_and_norms),
            skip_nonfinite: false,
            global_clip: 0.0,
            replicas,
        },
    )?;
    for k in 0..2 {
        bound.step(batch.clone(), k, 1e-3);
    }
    let mut times = Vec::with_capacity(opts.steps);
    let cpu0 = cpu_seconds();
    for k in 0..opts.steps {
        let b = batch.clone();
        let t0 = Instant::now();
        std::hint::black_box(bound.step(b, 2 + k as u64, 1e-3));
        times.push(t0.elapsed().as_secs_f64());
    }
    let cpu_ms_per_step = (cpu_seconds() - cpu0) * 1e3 / opts.steps.max(1) as f64;
    let peak = peak_rss_mb();
    let (median, mean) = median_mean(&mut times);
    let t1 = Instant::now();
    let mut made = 0usize;
    while t1.elapsed().as_secs_f64() < opts.loader_seconds.min(1.0) {
        let w = windows(&mut rng);
        made += task
            .make_batch(&w, &BatchRngs::from_rng(&mut rng))
            .inputs
            .len();
    }
    Ok(Measurement {
        task: name.into(),
        backbone: "transformer-tiny".into(),
        batch: b,
        inputs: b * t,
        input_shape: [1, 1, t],
        params: spec.parameters(),
        items_per_s: (b * t) as f64 / median,
        step_ms_median: median * 1e3,
        step_ms_mean: mean * 1e3,
        cpu_ms_per_step,
        peak_rss_mb: peak,
        loader_items_per_s: made as f64 / t1.elapsed().as_secs_f64(),
        loader_workers: 1,
        threads: rayon_threads(),
        replicas,
    })
}

/// The images a task is benchmarked on: the built-in Fashion-MNIST (1×28×28); colorize needs
/// colour, so it gets the same images tinted into 3×32×32 RGB (see [`tinted`]).
pub fn bench_images(task: &str, n: usize) -> Result<ImageSet> {
    let set = crate::commands::demo::builtin_dataset()?.train.take(n);
    Ok(if task == "colorize" {
        tinted(&set)?
    } else {
        set
    })
}

/// Fashion-MNIST turned into colour pictures: each article gets its own random foreground and
/// background colour (deterministic), is blended by its grey level and padded to 32×32.
pub fn tinted(set: &ImageSet) -> Result<ImageSet> {
    let (h, w, side) = (set.height, set.width, 32usize);
    let (oy, ox) = ((side - h) / 2, (side - w) / 2);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut out = Vec::with_capacity(set.n * 3 * side * side);
    for i in 0..set.n {
        let grey = set.image(i)?;
        let fg: [f32; 3] = std::array::from_fn(|_| rng.gen_range(0.2..1.0));
        let bg: [f32; 3] = std::array::from_fn(|_| rng.gen_range(0.0..0.5));
        for ch in 0..3 {
            for y in 0..side {
                for x in 0..side {
                    let g = if (oy..oy + h).contains(&y) && (ox..ox + w).contains(&x) {
                        grey[(y - oy) * w + (x - ox)] as f32 / 255.0
                    } else {
                        0.0
                    };
                    let v = bg[ch] * (1.0 - g) + fg[ch] * g;
                    out.push((v * 255.0).round() as u8);
                }
            }
        }
    }
    Ok(ImageSet::in_memory(out, None, set.n, 3, side, side))
}

fn measure_image_task(name: &str, opts: &BenchOptions) -> Result<Measurement> {
    let Some(tasks::Build::Image(build)) = tasks::find(name).map(|e| e.build) else {
        return Err(Error::Usage(format!("unknown task '{name}'")));
    };
    let kind = BackboneKind::parse(&opts.backbone)
        .ok_or_else(|| Error::Usage(format!("--backbone: unknown backbone '{}'", opts.backbone)))?;
    let device = crate::platform::device::parse(&opts.device)?.autodiff();
    let set = bench_images(name, opts.batch_size.max(256))?;
    let input = InputSpec::from_images(&set)?;
    let cfg = PretrainConfig {
        task: name.into(),
        backbone: kind,
        batch_size: opts.batch_size,
        ..Default::default()
    };
    let ctx = TaskContext {
        config: &cfg,
        input: &input,
        device: device.clone(),
    };
    let mut task = crate::platform::device::seeded(&device, 0, || build(&ctx))?;
    let params = task.num_params();
    let make = task.make_batch();
    let images = (0..opts.batch_size)
        .map(|i| {
            Ok(Img::from_u8(
                set.channels,
                set.height,
                set.width,
                &set.image(i)?,
            ))
        })
        .collect::<Result<Vec<Img>>>()?;
    let labels = vec![0u32; images.len()];
    let rngs = BatchRngs::new(0, 0);
    let batch = make(&images, &labels, &rngs);
    let flat = super::layout::flat(batch.as_ref()).ok_or_else(|| {
        Error::Usage(format!(
            "bench: no flat layout for {name}'s batch (src/commands/bench/layout.rs)"
        ))
    })?;
    // The reference gets the batch whole; pretext steps the same batch in one part per replica.
    let replicas = crate::engine::replicas::resolve(opts.replicas, opts.batch_size, &device)?;
    task.set_replicas(replicas);
    let batch = task.make_batch()(&images, &labels, &rngs);
    if let Some(dir) = &opts.dump {
        dump_batch(
            dir,
            name,
            &cfg.backbone_spec(input.channels),
            opts.batch_size,
            &flat,
            &input,
            params,
        )?;
    }
    for _ in 0..2 {
        task.step(batch.clone(), STEADY_STATE_INDEX, LR);
    }
    let mut times = Vec::with_capacity(opts.steps);
    let cpu0 = cpu_seconds();
    for _ in 0..opts.steps {
        let b = batch.clone();
        let t = Instant::now();
        let stats = task.step(b, STEADY_STATE_INDEX, LR);
        times.push(t.elapsed().as_secs_f64());
        std::hint::black_box(stats);
    }
    let cpu_ms_per_step = (cpu_seconds() - cpu0) * 1e3 / opts.steps.max(1) as f64;
    let peak = peak_rss_mb();
    let (median, mean) = median_mean(&mut times);

    // Loader: the task's make_batch over the real Loader with the default worker count.
    let workers = crate::engine::default_workers();
    let loader = Loader::new(
        Arc::new(set),
        LoaderConfig {
            batch_size: opts.batch_size,
            seed: 0,
            workers,
            prefetch: 4,
            start_batch: 0,
            drop_last: true,
        },
        make,
    );
    let t1 = Instant::now();
    let mut n = 0usize;
    for b in loader {
        b?;
        n += opts.batch_size;
        if t1.elapsed().as_secs_f64() > opts.loader_seconds {
            break;
        }
    }
    let loader_items_per_s = n as f64 / t1.elapsed().as_secs_f64();
    Ok(Measurement {
        task: name.into(),
        backbone: opts.backbone.clone(),
        batch: opts.batch_size,
        inputs: flat.b,
        input_shape: [flat.c, flat.h, flat.w],
        params,
        items_per_s: opts.batch_size as f64 / median,
        step_ms_median: median * 1e3,
        step_ms_mean: mean * 1e3,
        cpu_ms_per_step,
        peak_rss_mb: peak,
        loader_items_per_s,
        loader_workers: workers,
        threads: rayon_threads(),
        replicas,
    })
}

/// The size of rayon's global pool, which burn-flex computes on.
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(cores)
}

fn median_mean(times: &mut [f64]) -> (f64, f64) {
    if times.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    (median, times.iter().sum::<f64>() / n as f64)
}

/// Writes the batch for `bench/reference.py`: `batch.json` (shapes, the task's settings) and the
/// raw little-endian arrays `images.f32`, `labels.u32`, `extra.f32`.
#[allow(clippy::too_many_arguments)]
fn dump_batch(
    dir: &Path,
    task: &str,
    backbone: &crate::nn::BackboneSpec,
    images: usize,
    batch: &FlatBatch,
    input: &InputSpec,
    params: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let write = |file: &str, bytes: Vec<u8>| {
        let p = dir.join(file);
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
    };
    write("images.f32", f32s(&batch.images))?;
    write("extra.f32", f32s(&batch.extra))?;
    write(
        "labels.u32",
        batch.labels.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )?;
    let mut meta = serde_json::json!({
        "task": task,
        "backbone": backbone.kind.name(),
        "width": backbone.width,
        "patch": backbone.patch_side(),
        "images_per_step": images,
        "b": batch.b, "c": batch.c, "h": batch.h, "w": batch.w,
        "labels": batch.labels.len(),
        "extra": batch.extra.len(),
        "mean": input.mean,
        "std": input.std,
        "data_channels": input.channels,
        "lr": LR,
        "weight_decay": PretrainConfig::default().weight_decay,
        "params": params,
    });
    meta["task_config"] = task_settings(task);
    write(
        "batch.json",
        serde_json::to_vec_pretty(&meta).expect("json"),
    )
}

/// The settings of a task the reference needs to build the same model (defaults).
fn task_settings(task: &str) -> serde_json::Value {
    use crate::tasks::*;
    match task {
        "context" => serde_json::to_value(context::ContextConfig::default()),
        "jigsaw" => serde_json::to_value(jigsaw::JigsawConfig::default()),
        "colorize" => {
            let bins = colorize::AbBins::in_gamut();
            let mut v = serde_json::to_value(colorize::ColorizeConfig::default()).expect("json");
            v["bins"] = serde_json::json!(bins.centres);
            Ok(v)
        }
        "superres" => serde_json::to_value(superres::SuperresConfig::default()),
        "inpaint" => serde_json::to_value(inpaint::InpaintConfig::default()),
        "mae" => serde_json::to_value(mae::MaeConfig::default()),
        _ => Ok(serde_json::json!({})),
    }
    .expect("json")
}
