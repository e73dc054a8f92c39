//! Fine-tuning a language model with a linear head on labelled documents, as the engine runs
//! every task: each step's documents drawn as a pure function of (seed, step), split over the
//! replicas (every core: [`crate::engine::replicas`]) and MPI ranks, dropout masks from the
//! step's and the part's own stream, so the result does not depend on the replica count beyond
//! float rounding; AdamW with the biases and layer norms spared from weight decay
//! ([`crate::engine::optim`]).

use std::path::Path;

use burn::prelude::*;

use super::text_transfer::{Example, TextClassifier, TextTransferRequest};
use crate::data::loader::batch_indices;
use crate::data::rngs::BatchRngs;
use crate::engine::optim::optimizer;
use crate::engine::replicas::{resolve, split_batch};
use crate::engine::schedule::lr_at;
use crate::engine::step::{classification_step, labels_tensor};
use crate::engine::{Bound, StepCtx, StepStats, Task, Trainable};
use crate::error::{Error, Result};
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
/// documents; the trained classifier, on the request's device (no autodiff).
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
    };
    let (net, _) = fit.run(net, train, pad_id, cls, &ad)?;
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
}

impl Fit {
    /// `net` (on the autodiff device `ad`) trained on `train`; with every step's loss.
    fn run(
        &self,
        net: TextClassifier,
        train: &[&Example],
        pad: u32,
        cls: Option<bool>,
        ad: &Device,
    ) -> Result<(TextClassifier, Vec<f32>)> {
        let task = TextFinetune {
            device: ad.clone(),
            pad,
            cls,
            seed: self.seed,
        };
        let adamw = optimizer(crate::config::OptimizerKind::Adamw, self.weight_decay, 0.9);
        let mut bound = Bound::new(task, net, &adamw, false).with_replicas(self.replicas);
        let (n, bs, steps) = (train.len(), self.batch_size, self.steps);
        let mut losses = Vec::with_capacity(steps as usize);
        for step in 0..steps {
            let chosen = batch_indices(n, bs, true, self.seed ^ 0xf17e, step);
            let rngs = BatchRngs::new(self.seed ^ 0xf17e, step);
            let batch = split_batch(chosen.len(), self.replicas, &rngs, |r, _| DocBatch {
                docs: chosen[r.clone()]
                    .iter()
                    .map(|&i| train[i].tokens.clone())
                    .collect(),
                labels: chosen[r].iter().map(|&i| train[i].label).collect(),
            });
            let lr = lr_at(step, self.lr, steps / 10, steps, 0.0);
            let stats = bound.step(batch, step, lr);
            if !stats.loss.is_finite() {
                return Err(Error::Training {
                    step,
                    message: format!(
                        "fine-tuning loss is {}; try a lower finetune_lr",
                        stats.loss
                    ),
                });
            }
            losses.push(stats.loss);
        }
        Ok((bound.model().clone(), losses))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Two replicas on halves of each step's documents take the steps one model takes on the
    /// whole batch (to float rounding: no dropout here), and the loss falls.
    #[test]
    fn two_replicas_fit_like_one_and_the_loss_falls() {
        let ad = Device::flex().autodiff();
        let data = examples();
        let train: Vec<&Example> = data.iter().collect();
        let fit = |replicas| Fit {
            steps: 30,
            batch_size: 8,
            lr: 1e-3,
            weight_decay: 0.01,
            seed: 1,
            replicas,
        };
        let (_, one) = fit(1).run(net(&ad), &train, 0, None, &ad).unwrap();
        let (_, two) = fit(2).run(net(&ad), &train, 0, None, &ad).unwrap();
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let (first, last) = (mean(&one[..5]), mean(&one[25..]));
        assert!(last < 0.7 * first, "loss {first} → {last}\n{one:?}");
        for (step, (a, b)) in one.iter().zip(&two).enumerate().take(10) {
            assert!(
                (a - b).abs() < 1e-3 * a.abs().max(1.0),
                "step {step}: {a} vs {b}"
            );
        }
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
            };
            let t = std::time::Instant::now();
            fit.run(net, &train, 0, None, &ad).unwrap();
            times.push(t.elapsed().as_secs_f64());
            println!(
                "{replicas} replica(s): {:.2} s for 20 steps",
                times.last().unwrap()
            );
        }
        println!("speed-up {:.2}x", times[0] / times[1]);
    }
}
