//! Fine-tuning a language model with a linear head on labelled documents, as the engine runs
//! every task: each step's documents drawn as a pure function of (seed, step), split over the
//! replicas (every core: [`crate::engine::replicas`]) and MPI ranks, dropout masks from the
//! step's and the part's own stream, so the result does not depend on the replica count beyond
//! float rounding; AdamW with the biases and layer norms spared from weight decay
//! ([`crate::engine::optim`]).

use std::path::Path;

use burn::prelude::*;

use super::finetune::FitDir;
use super::text_transfer::{Example, TextClassifier, TextTransferRequest};
use crate::data::loader::batch_indices;
use crate::data::rngs::BatchRngs;
use crate::engine::optim::optimizer;
use crate::engine::replicas::{resolve, split_batch};
use crate::engine::step::{classification_step, labels_tensor};
use crate::engine::{AnyBatch, Bound, StepCtx, StepStats, Task};
use crate::error::Result;
use crate::nn::heads::LinearHead;
use crate::nn::transformer::{Transformer, TransformerSpec};

/// One step's labelled documents (a replica's part of it).
#[derive(Clone, Debug)]
pub struct DocBatch {
    pub docs: Vec<Vec<u32>>,
    pub labels: Vec<u32>,
}

#[derive(Clone)]
struct TextFinetune {
    device: Device,
    pad: u32,
    cls: Option<bool>,
    seed: u64,
}

impl Task for TextFinetune {
    type Model = TextClassifier;
    type Encoder = Transformer;
    type Batch = DocBatch;

    fn step(
        &mut self,
        model: TextClassifier,
        b: DocBatch,
        cx: &mut StepCtx,
    ) -> (TextClassifier, StepStats) {
        let (seed, part) = (self.seed ^ 0xf17e ^ (cx.step << 20), cx.part() as u64);
        crate::nn::dropout::with_generator(seed, part, || {
            let docs: Vec<&[u32]> = b.docs.iter().map(Vec::as_slice).collect();
            let y = labels_tensor(&b.labels, &self.device);
            classification_step(model, cx, y, |m| {
                m.logits(&docs, self.pad, self.cls, &self.device)
            })
        })
    }

    fn items(b: &DocBatch) -> u64 {
        b.docs.len() as u64
    }

    fn encoder(model: &TextClassifier) -> Transformer {
        model.lm.clone()
    }

    fn save_state(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// Fine-tune the whole model with a linear head (`head`, or a random one) on the labelled
/// documents, through the engine's loop in `at` (checkpoints, Ctrl-C, NaN skip, resume); the
/// trained classifier, on the request's device (no autodiff).
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_classifier(
    model: Transformer,
    spec: &TransformerSpec,
    train: &[&Example],
    classes: usize,
    pad_id: u32,
    cls: Option<bool>,
    head: Option<LinearHead>,
    req: &TextTransferRequest,
    at: &FitDir,
) -> Result<TextClassifier> {
    let cfg = &req.config;
    let ad = req.device.clone().autodiff();
    let head = match head {
        // `train()`: the probe was built without autodiff; its weights must take gradients here.
        Some(h) => h.to_device(&ad).train(),
        None => crate::platform::device::seeded(&ad, cfg.seed, || {
            LinearHead::new(spec.d_model, classes, &ad)
        }),
    };
    let net = TextClassifier {
        lm: model.to_device(&ad).train(),
        head,
    };
    let bs = cfg.finetune.batch_size.min(train.len()).max(1);
    let replicas = resolve(0, bs, &ad).unwrap_or(1);
    let fit = Fit {
        steps: cfg.finetune.steps,
        batch_size: bs,
        lr: cfg.finetune.lr,
        weight_decay: cfg.finetune.weight_decay,
        seed: cfg.seed,
        replicas,
        log_every: 50,
        stop_after: None,
        quiet: req.quiet,
    };
    let net = fit.run(net, train, pad_id, cls, &ad, at)?;
    Ok(net.valid().to_device(&req.device))
}

/// How [`train_classifier`] trains.
struct Fit {
    steps: u64,
    batch_size: usize,
    lr: f64,
    weight_decay: f64,
    seed: u64,
    replicas: usize,
    /// A `metrics.jsonl` record every this many steps.
    log_every: u64,
    /// Stop after this step with a checkpoint, as an interruption would (tests); None = `steps`.
    stop_after: Option<u64>,
    quiet: bool,
}

impl Fit {
    /// `net` (on the autodiff device `ad`) trained on `train` in `at.dir`, continuing from a
    /// checkpoint there.
    fn run(
        &self,
        net: TextClassifier,
        train: &[&Example],
        pad: u32,
        cls: Option<bool>,
        ad: &Device,
        at: &FitDir,
    ) -> Result<TextClassifier> {
        let task = TextFinetune {
            device: ad.clone(),
            pad,
            cls,
            seed: self.seed,
        };
        let adamw = optimizer(crate::config::OptimizerKind::Adamw, self.weight_decay, 0.9);
        let mut bound =
            Bound::new(task, net, &adamw, at.skip_nonfinite).with_replicas(self.replicas);
        let start = at.resume(&mut bound, self.quiet)?;
        let (n, bs, replicas, seed) = (train.len(), self.batch_size, self.replicas, self.seed);
        let mut next = |step: u64| -> Result<Box<dyn AnyBatch>> {
            let chosen = batch_indices(n, bs, true, seed ^ 0xf17e, step);
            let rngs = BatchRngs::new(seed ^ 0xf17e, step);
            Ok(split_batch(chosen.len(), replicas, &rngs, |r, _| {
                DocBatch {
                    docs: chosen[r.clone()]
                        .iter()
                        .map(|&i| train[i].tokens.clone())
                        .collect(),
                    labels: chosen[r].iter().map(|&i| train[i].label).collect(),
                }
            }))
        };
        let settings = at.loop_settings(
            self.steps,
            self.lr,
            self.steps / 10,
            self.seed,
            self.log_every,
            "documents",
            self.quiet,
        );
        let end = self.stop_after.unwrap_or(self.steps).min(self.steps);
        at.train(&mut bound, &mut next, &settings, start, end)?;
        Ok(bound.model().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::checkpoint::{checkpoints_dir, latest_checkpoint};

    fn examples() -> Vec<Example> {
        (0..24u64)
            .map(|i| {
                let label = (i % 2) as u32;
                let len = 6 + (i as usize % 5);
                let tokens = (0..len)
                    .map(|j| 4 + ((i as usize * 7 + j * (label as usize + 2)) % 40) as u32)
                    .collect();
                Example {
                    index: i,
                    tokens,
                    label,
                }
            })
            .collect()
    }

    fn net(ad: &Device) -> TextClassifier {
        // The tiny preset, bidirectional, over a 48-token vocabulary, without dropout (so the
        // replicas' steps equal one model's to float rounding).
        let tiny = TransformerSpec::preset("tiny", 48, false).unwrap();
        let spec = TransformerSpec {
            dropout: 0.0,
            ..tiny
        };
        crate::platform::device::seeded(ad, 3, || TextClassifier {
            lm: spec.init(ad),
            head: LinearHead::new(spec.d_model, 2, ad),
        })
    }

    fn fit(steps: u64, lr: f64, replicas: usize) -> Fit {
        Fit {
            steps,
            batch_size: 8,
            lr,
            weight_decay: 0.01,
            seed: 1,
            replicas,
            log_every: 1,
            stop_after: None,
            quiet: true,
        }
    }

    fn at(dir: &Path, skip_nonfinite: bool) -> FitDir<'_> {
        FitDir {
            dir,
            checkpoint_every: 2,
            skip_nonfinite,
        }
    }

    /// Every step's loss from a fine-tuning directory's `metrics.jsonl`.
    fn losses(dir: &Path) -> Vec<f32> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| v["loss"].as_f64().map(|x| x as f32))
            .collect()
    }

    /// Two replicas on halves of each step's documents take the steps one model takes on the
    /// whole batch (to float rounding: no dropout here), and the loss falls.
    #[test]
    fn two_replicas_fit_like_one_and_the_loss_falls() {
        let ad = Device::flex().autodiff();
        let data = examples();
        let train: Vec<&Example> = data.iter().collect();
        let tmp = tempfile::tempdir().unwrap();
        let (d1, d2) = (tmp.path().join("one"), tmp.path().join("two"));
        fit(30, 1e-3, 1)
            .run(net(&ad), &train, 0, None, &ad, &at(&d1, false))
            .unwrap();
        fit(30, 1e-3, 2)
            .run(net(&ad), &train, 0, None, &ad, &at(&d2, false))
            .unwrap();
        let (one, two) = (losses(&d1), losses(&d2));
        assert_eq!(one.len(), 30);
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let (first, last) = (mean(&one[..5]), mean(&one[25..]));
        assert!(last < 0.7 * first, "loss {first} → {last}\n{one:?}");
        for (step, (a, b)) in one.iter().zip(&two).enumerate().take(10) {
            assert!(
                (a - b).abs() < 1e-3 * a.abs().max(1.0),
                "step {step}: {a} vs {b}"
            );
        }
        // Finished: no checkpoint is left behind.
        assert!(!checkpoints_dir(&d1).exists());
    }

    /// Fine-tuning stopped after step 3 (as Ctrl-C stops it, with a checkpoint) and run again
    /// from fresh weights continues from that checkpoint and ends with the very bits of an
    /// uninterrupted run (two replicas, dropout on: its masks are a function of the step).
    #[test]
    fn an_interrupted_fine_tuning_resumes_bit_for_bit() {
        let ad = Device::flex().autodiff();
        let data = examples();
        let train: Vec<&Example> = data.iter().collect();
        let tmp = tempfile::tempdir().unwrap();
        let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
        let dropout = |ad: &Device, seed: u64| {
            let spec = TransformerSpec::preset("tiny", 48, false).unwrap();
            assert!(spec.dropout > 0.0);
            crate::platform::device::seeded(ad, seed, || TextClassifier {
                lm: spec.init(ad),
                head: LinearHead::new(spec.d_model, 2, ad),
            })
        };
        let a = fit(6, 1e-3, 2)
            .run(dropout(&ad, 3), &train, 0, None, &ad, &at(&whole, false))
            .unwrap();
        let first = Fit {
            stop_after: Some(3),
            ..fit(6, 1e-3, 2)
        };
        first
            .run(dropout(&ad, 3), &train, 0, None, &ad, &at(&parts, false))
            .unwrap();
        let saved = latest_checkpoint(&parts).unwrap().expect("a checkpoint");
        assert_eq!(saved.1.step, 3);
        // Other starting weights: only the checkpoint can carry the first three steps.
        let b = fit(6, 1e-3, 2)
            .run(dropout(&ad, 4), &train, 0, None, &ad, &at(&parts, false))
            .unwrap();
        let file = |m: &TextClassifier, name: &str| {
            let path = tmp.path().join(name);
            crate::engine::checkpoint::save_weights(&m.valid(), &path).unwrap();
            std::fs::read(path).unwrap()
        };
        assert!(file(&a, "a.safetensors") == file(&b, "b.safetensors"));
        assert_eq!(losses(&whole), losses(&parts));
        assert_eq!(losses(&parts).len(), 6);
    }

    /// A loss that turns NaN/Inf (a learning rate of 1e30) stops fine-tuning with an error
    /// naming the step and `on_nonfinite`; with `skip` the steps are undone and, after 10 in a
    /// row, it stops saying so: never a classifier with NaN weights.
    #[test]
    fn a_non_finite_loss_stops_or_is_skipped() {
        let ad = Device::flex().autodiff();
        let data = examples();
        let train: Vec<&Example> = data.iter().collect();
        let tmp = tempfile::tempdir().unwrap();
        let stop = fit(20, 1e30, 1)
            .run(
                net(&ad),
                &train,
                0,
                None,
                &ad,
                &at(&tmp.path().join("stop"), false),
            )
            .expect_err("an error")
            .to_string();
        assert!(stop.contains("on_nonfinite"), "{stop}");
        assert!(stop.contains("training stopped at step"), "{stop}");
        let skip_dir = tmp.path().join("skip");
        let skip = fit(20, 1e30, 1)
            .run(net(&ad), &train, 0, None, &ad, &at(&skip_dir, true))
            .expect_err("an error")
            .to_string();
        assert!(skip.contains("in a row"), "{skip}");
        let log = std::fs::read_to_string(skip_dir.join("metrics.jsonl")).unwrap();
        assert!(log.contains("\"skipped\":true"), "{log}");
    }

    /// Wall time of 20 fine-tuning steps of the tiny model (d_model 128, 4 blocks) on
    /// 128-token documents, batch 16, with 1 replica (what the one-model loop did) and with one
    /// per core: `cargo test --lib measure_text_finetune_replicas -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_text_finetune_replicas() {
        let ad = Device::flex().autodiff();
        let data: Vec<Example> = (0..64u64)
            .map(|i| Example {
                index: i,
                tokens: (0..128)
                    .map(|j| 4 + ((i as usize * 31 + j * 7) % 1000) as u32)
                    .collect(),
                label: (i % 2) as u32,
            })
            .collect();
        let train: Vec<&Example> = data.iter().collect();
        let spec = TransformerSpec::preset("tiny", 1024, false).unwrap();
        let cores = resolve(0, 16, &ad).unwrap_or(1);
        let mut times = Vec::new();
        for replicas in [1, cores] {
            let net = crate::platform::device::seeded(&ad, 3, || TextClassifier {
                lm: spec.init(&ad),
                head: LinearHead::new(spec.d_model, 2, &ad),
            });
            let fit = Fit {
                steps: 20,
                batch_size: 16,
                lr: 3e-4,
                weight_decay: 0.01,
                seed: 1,
                replicas,
                log_every: 50,
                stop_after: None,
                quiet: true,
            };
            let tmp = tempfile::tempdir().unwrap();
            let t = std::time::Instant::now();
            fit.run(net, &train, 0, None, &ad, &at(tmp.path(), false))
                .unwrap();
            times.push(t.elapsed().as_secs_f64());
            println!(
                "{replicas} replica(s): {:.2} s for 20 steps",
                times.last().unwrap()
            );
        }
        println!("speed-up {:.2}x", times[0] / times[1]);
    }
}
