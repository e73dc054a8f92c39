//! `pretext bench`: training throughput of rotation pretraining per backbone (one step = forward,
//! backward, AdamW on a fixed batch), peak memory, the loader's delivery rate, and the same model
//! in PyTorch (`bench/reference.py`) on the same machine in the same invocation, with the ratio.
//! Each measurement runs in its own child process so peak memory is its own.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::config::PretrainConfig;
use crate::data::augment::Img;
use crate::data::loader::{Loader, LoaderConfig};
use crate::error::{Error, Result};
use crate::input::InputSpec;
use crate::nn::heads::LinearHead;
use crate::nn::{BackboneKind, BackboneSpec};
use crate::tasks::rotation::{make_batch, RotationConfig, RotationModel};
use crate::train::optim::build_optimizer;
use crate::train::step::{classification_step, images_tensor, labels_tensor};

pub struct BenchOptions {
    pub backbones: Vec<String>,
    pub batch_size: usize,
    pub steps: usize,
    pub python: String,
    pub device: String,
    pub child: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Measurement {
    backbone: String,
    params: usize,
    items_per_s: f64,
    peak_rss_mb: f64,
    #[serde(default)]
    loader_items_per_s: f64,
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    if let Some(name) = &opts.child {
        let m = measure(name, opts)?;
        println!("{}", serde_json::to_string(&m).expect("json"));
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/reference.py");
    let items = opts.batch_size * 4;
    println!(
        "rotation pretraining, one step = forward + backward + AdamW, fp32, {} inputs of 1×28×28 (Fashion-MNIST), device {}",
        items, opts.device
    );
    println!(
        "{:<10} {:>10} {:>12} {:>10} {:>14} {:>12} {:>12} {:>8} {:>14}",
        "backbone",
        "params",
        "pretext/s",
        "peak MB",
        "loader img/s",
        "torch params",
        "pytorch/s",
        "torch MB",
        "pretext/torch"
    );
    for name in &opts.backbones {
        let out = Command::new(&exe)
            .args([
                "bench",
                "--child",
                name,
                "--batch-size",
                &opts.batch_size.to_string(),
                "--steps",
                &opts.steps.to_string(),
                "--device",
                &opts.device,
            ])
            .output()
            .map_err(|e| Error::io(&exe, e))?;
        let ours: Measurement = serde_json::from_slice(last_line(&out.stdout)).map_err(|_| {
            Error::Usage(format!(
                "bench child for {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })?;
        let torch_device = if opts.device == "cpu" { "cpu" } else { "cuda" };
        let reference = Command::new(&opts.python)
            .args([
                script,
                "--backbone",
                name,
                "--batch",
                &items.to_string(),
                "--steps",
                &opts.steps.to_string(),
                "--device",
                torch_device,
            ])
            .output();
        let theirs: Option<serde_json::Value> = reference
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice(last_line(&o.stdout)).ok());
        let (tp, ts, tm, ratio) = match &theirs {
            Some(t) => {
                let s = t["items_per_s"].as_f64().unwrap_or(0.0);
                (
                    t["params"].as_u64().unwrap_or(0).to_string(),
                    format!("{s:.1}"),
                    format!("{:.0}", t["peak_rss_mb"].as_f64().unwrap_or(0.0)),
                    format!("{:.2}×", ours.items_per_s / s.max(1e-9)),
                )
            }
            None => ("-".into(), "not installed".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<10} {:>10} {:>12.1} {:>10.0} {:>14.0} {:>12} {:>12} {:>8} {:>14}",
            ours.backbone,
            ours.params,
            ours.items_per_s,
            ours.peak_rss_mb,
            ours.loader_items_per_s,
            tp,
            ts,
            tm,
            ratio
        );
    }
    Ok(())
}

fn last_line(bytes: &[u8]) -> &[u8] {
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    match text.iter().rposition(|&b| b == b'\n') {
        Some(i) => &text[i + 1..],
        None => text,
    }
}

fn measure(name: &str, opts: &BenchOptions) -> Result<Measurement> {
    let kind = BackboneKind::parse(name).ok_or_else(|| {
        Error::Usage(format!(
            "--backbones: unknown backbone '{name}'; expected convnet or resnet18"
        ))
    })?;
    let device = crate::device::parse(&opts.device)?.autodiff();
    device.seed(0);
    let dataset = crate::demo::builtin_dataset()?;
    let set = dataset.train.take(opts.batch_size.max(256));
    let input = InputSpec::from_images(&set)?;
    let spec = BackboneSpec {
        kind,
        in_channels: input.channels,
        width: kind.default_width(),
    };
    let backbone = spec.init(&device);
    let head = LinearHead::new(backbone.dim(), 4, &device);
    let mut model = Some(RotationModel { backbone, head });
    let params = model.as_ref().map_or(0, |m| m.num_params());
    let cfg = PretrainConfig {
        backbone: kind,
        ..Default::default()
    };
    let mut optim = build_optimizer(&cfg);
    let rot = RotationConfig::default();
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
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let batch = make_batch(&images, &rot, &input, &mut rng);
    let mut step = |model: &mut Option<RotationModel>| {
        let x = images_tensor(&mut batch.clone(), &device);
        let y = labels_tensor(&batch.labels, &device);
        let (m, stats) = classification_step(
            model.take().expect("model"),
            &mut optim,
            1e-3,
            y,
            false,
            |m| m.forward(x),
        );
        *model = Some(m);
        stats.loss
    };
    for _ in 0..2 {
        step(&mut model);
    }
    let t0 = Instant::now();
    for _ in 0..opts.steps {
        step(&mut model);
    }
    let items_per_s = (batch.b * opts.steps) as f64 / t0.elapsed().as_secs_f64();
    let peak = peak_rss_mb();

    // Loader: decode + augment + batch with the default worker count, for ~1.5 s.
    let (rot2, input2) = (rot.clone(), input.clone());
    let loader = Loader::new(
        Arc::new(set),
        LoaderConfig {
            batch_size: opts.batch_size,
            seed: 0,
            workers: crate::train::default_workers(),
            prefetch: 4,
            start_batch: 0,
            drop_last: true,
        },
        Arc::new(
            move |imgs: &[Img], _l: &[u32], rng: &mut rand_chacha::ChaCha8Rng| {
                make_batch(imgs, &rot2, &input2, rng)
            },
        ),
    );
    let t1 = Instant::now();
    let mut n = 0usize;
    for b in loader {
        n += b?.b;
        if t1.elapsed().as_secs_f64() > 1.5 {
            break;
        }
    }
    let loader_items_per_s = n as f64 / t1.elapsed().as_secs_f64();
    Ok(Measurement {
        backbone: name.into(),
        params,
        items_per_s,
        peak_rss_mb: peak,
        loader_items_per_s,
    })
}
