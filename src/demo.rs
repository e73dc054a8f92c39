//! `pretext demo`: the whole idea in a few CPU minutes on data compiled into the binary.
//! Pretrain a conv net by rotation prediction on 6,000 unlabelled Fashion-MNIST images, then give
//! 10 labels per class to a linear probe and a k-NN classifier on (a) the pretrained encoder and
//! (b) the same encoder with random weights, and print the test accuracies side by side.

use std::path::Path;

use burn::prelude::Device;
use serde::Serialize;

use crate::config::{self, PretrainConfig};
use crate::error::{Error, Result};
use crate::pretrain::{self, PretrainRequest};
use crate::tasks;
use crate::transfer::{self, labels::PerClass, Protocol, Source, TransferConfig, TransferRequest};

pub use crate::data::builtin::{builtin_dataset, BUILTIN};

/// The demo's pretraining settings (before `--set` overrides).
pub const DEMO_SETTINGS: &[&str] = &[
    "task=\"rotation\"",
    "data=\"builtin:fashion-mnist-demo\"",
    "steps=300",
    "batch_size=64",
    "lr=0.002",
    "warmup_steps=30",
    "log_every=20",
    "checkpoint_every=100",
];

/// Label draws averaged per cell (10 labels per class is a small, noisy sample).
pub const SEEDS: u64 = 3;

#[derive(Clone, Debug, Serialize)]
pub struct DemoRow {
    pub encoder: String,
    /// Mean and standard deviation over the label draws.
    pub linear: (f32, f32),
    pub knn: (f32, f32),
}

fn mean_std(v: &[f32]) -> (f32, f32) {
    let m = v.iter().sum::<f32>() / v.len() as f32;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32;
    (m, var.sqrt())
}

pub fn run(out: &Path, sets: &[String], device: Device, quiet: bool) -> Result<Vec<DemoRow>> {
    let mut all: Vec<String> = DEMO_SETTINGS.iter().map(|s| s.to_string()).collect();
    all.extend(sets.iter().cloned());
    let cfg: PretrainConfig = config::resolve(None, &all, &tasks::image_names())?;
    clear_previous(out)?;
    let dataset = builtin_dataset()?;
    if !quiet {
        println!(
            "demo: pretraining a {} by {} on {} unlabelled Fashion-MNIST images for {} steps",
            cfg.backbone.name(),
            cfg.task,
            dataset.train.n,
            cfg.steps
        );
    }
    let task = cfg.task.clone();
    let summary = pretrain::pretrain(PretrainRequest {
        config: cfg,
        out: out.to_path_buf(),
        device: device.clone(),
        resume: false,
        dataset: Some(dataset.clone()),
        skip_bad: false,
        stop_after: None,
        quiet,
    })?;
    let mut rows = Vec::new();
    let pretrained = format!("{task}-pretrained");
    for (name, from) in [
        (pretrained.as_str(), Source::Run(out.to_path_buf())),
        ("random weights", Source::Random),
    ] {
        let mut accs = [Vec::new(), Vec::new()];
        for (i, protocol) in [Protocol::Linear, Protocol::Knn].into_iter().enumerate() {
            for seed in 0..SEEDS {
                let req = TransferRequest {
                    from: from.clone(),
                    protocol,
                    labels_per_class: PerClass::N(10),
                    config: TransferConfig {
                        seed,
                        ..TransferConfig::default()
                    },
                    out: Some(out.join("transfer").join(name.replace(' ', "-"))),
                    device: device.clone(),
                    quiet: true,
                };
                accs[i].push(transfer::transfer(&dataset, &req)?.0.accuracy);
            }
        }
        rows.push(DemoRow {
            encoder: name.into(),
            linear: mean_std(&accs[0]),
            knn: mean_std(&accs[1]),
        });
    }
    println!();
    println!(
        "pretraining: {} steps in {:.0}s, final {task} loss {:.3}",
        summary.steps_done, summary.wall_s, summary.final_loss
    );
    println!(
        "test accuracy on {} Fashion-MNIST test images, 10 labels per class (mean ± std over {SEEDS} label draws):",
        dataset.test.as_ref().map_or(0, |t| t.n)
    );
    println!(
        "{:<22} {:>16} {:>16}",
        "encoder", "linear probe", "k-NN (k=200)"
    );
    for r in &rows {
        println!(
            "{:<22} {:>16} {:>16}",
            r.encoder,
            format!("{:.4} ± {:.4}", r.linear.0, r.linear.1),
            format!("{:.4} ± {:.4}", r.knn.0, r.knn.1)
        );
    }
    crate::fsio::write_atomic(
        &out.join("demo.json"),
        &serde_json::to_vec_pretty(&rows).expect("json"),
    )?;
    Ok(rows)
}

/// Remove an earlier demo run in `out` (only if it looks like one of ours).
fn clear_previous(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if out.join("config.toml").exists()
        && (out.join("run.json").exists() || out.join("encoder.json").exists())
    {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))
    } else if std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .next()
        .is_none()
    {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{} exists and is not an earlier demo run; choose another --out",
            out.display()
        )))
    }
}
