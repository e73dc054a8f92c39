//! `pretext demo`: the whole idea in a few CPU minutes on data compiled into the binary.
//! Pretrain a conv net on 6,000 unlabelled Fashion-MNIST images, then give 10 labels per class to
//! a linear probe, a k-NN classifier and fine-tuning of (a) the pretrained encoder, (b) the same
//! encoder with random weights (linear, k-NN) and (c) the same network trained on the labels alone
//! (fine-tuning from scratch), then the semi-supervised stage of (a) and (c), and print the test
//! accuracies side by side.

use std::path::Path;

use burn::prelude::Device;
use serde::Serialize;

use crate::commands::pretrain::{self, PretrainRequest};
use crate::config::{self, PretrainConfig};
use crate::error::{Error, Result};
use crate::tasks;
use crate::transfer::{self, labels::PerClass, Protocol, Source, TransferConfig, TransferRequest};

pub use crate::data::builtin::{builtin_dataset, BUILTIN};

/// The demo's pretraining settings (before `--set` overrides): SimCLR on a width-16 conv net, the
/// recipe that measured best on the built-in data within the demo's time (docs/results.md).
pub const DEMO_SETTINGS: &[&str] = &[
    "task=\"simclr\"",
    "data=\"builtin:fashion-mnist-demo\"",
    "width=16",
    "steps=1000",
    "batch_size=64",
    "lr=0.002",
    "warmup_steps=50",
    "log_every=50",
    "eval_every=250",
    "checkpoint_every=250",
];

/// The demo's transfer settings (before `--transfer-set` overrides): 100 fine-tuning steps
/// (64 epochs of the 100 labelled images) keep the six fine-tuning runs within the demo's time;
/// 300 semi-supervised steps (about 25 s each on 2 cores) likewise. On the validation split
/// (`eval_on = "validation"`, seed 0) the stage gave 0.775 after 300 steps and 0.792 after 1,000
/// (73 s each), from a teacher at 0.730.
pub const DEMO_TRANSFER_SETTINGS: &[&str] = &["finetune_steps=100", "semi_steps=300"];

/// Label draws averaged per cell (10 labels per class is a small, noisy sample).
pub const SEEDS: u64 = 3;

/// One encoder's test accuracies: mean and standard deviation over the label draws, per
/// protocol (`None` where the protocol does not apply: random weights are not fine-tuned, and
/// training from scratch is fine-tuning only).
#[derive(Clone, Debug, Serialize)]
pub struct DemoRow {
    pub encoder: String,
    pub linear: Option<(f32, f32)>,
    pub knn: Option<(f32, f32)>,
    pub finetune: Option<(f32, f32)>,
    pub semi: Option<(f32, f32)>,
}

/// The demo's transfer settings with `--transfer-set` applied; the baselines (random weights,
/// scratch) get the pretrained network's backbone and width.
fn transfer_config(cfg: &PretrainConfig, transfer_sets: &[String]) -> Result<TransferConfig> {
    let mut all: Vec<String> = DEMO_TRANSFER_SETTINGS
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(transfer_sets.iter().cloned());
    let mut tcfg: TransferConfig = config::resolve(None, &all, &[])?;
    tcfg.backbone = cfg.backbone;
    tcfg.width = cfg.width();
    tcfg.patch_size = cfg.patch_size;
    tcfg.validate()?;
    Ok(tcfg)
}

fn mean_std(v: &[f32]) -> (f32, f32) {
    let m = v.iter().sum::<f32>() / v.len() as f32;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32;
    (m, var.sqrt())
}

pub fn run(
    out: &Path,
    sets: &[String],
    transfer_sets: &[String],
    device: Device,
    quiet: bool,
) -> Result<Vec<DemoRow>> {
    let mut all: Vec<String> = DEMO_SETTINGS.iter().map(|s| s.to_string()).collect();
    all.extend(sets.iter().cloned());
    let cfg: PretrainConfig = config::resolve(None, &all, &tasks::image_names())?;
    let tcfg = transfer_config(&cfg, transfer_sets)?;
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
    let pretrained = format!("{task}-pretrained");
    let all_protocols = [
        Protocol::Linear,
        Protocol::Knn,
        Protocol::Finetune,
        Protocol::Semi,
    ];
    let encoders: [(&str, Source, &[Protocol]); 3] = [
        (&pretrained, Source::Run(out.to_path_buf()), &all_protocols),
        ("random weights", Source::Random, &all_protocols[..2]),
        ("scratch", Source::Scratch, &all_protocols[2..]),
    ];
    let mut rows = Vec::new();
    for (name, from, protocols) in encoders {
        let mut row = DemoRow {
            encoder: name.into(),
            linear: None,
            knn: None,
            finetune: None,
            semi: None,
        };
        for &protocol in protocols {
            if !quiet {
                println!("demo: {} of {name} ({SEEDS} label draws)", protocol.name());
            }
            let mut accs = Vec::new();
            for seed in 0..SEEDS {
                let req = TransferRequest {
                    from: from.clone(),
                    protocol,
                    labels_per_class: PerClass::N(10),
                    config: TransferConfig {
                        seed,
                        ..tcfg.clone()
                    },
                    out: Some(out.join("transfer").join(name.replace(' ', "-"))),
                    device: device.clone(),
                    quiet: true,
                };
                accs.push(transfer::transfer(&dataset, &req)?.0.accuracy);
            }
            let cell = Some(mean_std(&accs));
            match protocol {
                Protocol::Linear => row.linear = cell,
                Protocol::Knn => row.knn = cell,
                Protocol::Finetune => row.finetune = cell,
                Protocol::Semi => row.semi = cell,
            }
        }
        rows.push(row);
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
        "{:<22} {:>16} {:>16} {:>16} {:>16}",
        "encoder", "linear probe", "k-NN (k=20)", "fine-tune", "semi"
    );
    let cell =
        |c: Option<(f32, f32)>| c.map_or("—".to_string(), |(m, s)| format!("{m:.4} ± {s:.4}"));
    for r in &rows {
        println!(
            "{:<22} {:>16} {:>16} {:>16} {:>16}",
            r.encoder,
            cell(r.linear),
            cell(r.knn),
            cell(r.finetune),
            cell(r.semi)
        );
    }
    println!(
        "(semi: fine-tuning, then the {} unlabelled training images keep teaching — the test \
         images never do)",
        dataset.train.n
    );
    crate::platform::fsio::write_atomic(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baselines_are_the_pretrained_network() {
        let sets = ["width=8".to_string(), "backbone=\"resnet18\"".to_string()];
        let mut all: Vec<String> = DEMO_SETTINGS.iter().map(|s| s.to_string()).collect();
        all.extend(sets.iter().cloned());
        let cfg: PretrainConfig = config::resolve(None, &all, &tasks::image_names()).unwrap();
        let t = transfer_config(&cfg, &["finetune_steps=7".to_string()]).unwrap();
        assert_eq!((t.width, t.backbone), (8, cfg.backbone));
        assert_eq!(t.backbone.name(), "resnet18");
        assert_eq!(
            t.finetune.steps, 7,
            "--transfer-set overrides the demo's own"
        );
        let t = transfer_config(&cfg, &[]).unwrap();
        assert_eq!(t.finetune.steps, 100);
    }
}
