//! Replaced-token detection (ELECTRA, Clark et al. 2020). In every window `mask_prob` (15%) of
//! the positions are hidden behind `<mask>`; a small generator (a masked-LM transformer
//! `gen_fraction` (¼) as wide as the discriminator, with as many layers or `gen_layers`) learns
//! to restore them, and a token *sampled* from its softmax is put at each hidden position. The
//! discriminator — the bidirectional transformer that transfers, the same network as
//! masked-lm's — reads the result and says for every token whether it was replaced (a sampled
//! token equal to the original counts as original). Every token teaches the discriminator, not
//! the 15% alone, which is why ELECTRA learns more per step than a masked-LM.
//!
//! loss = the generator's cross-entropy at the hidden positions + `disc_weight` (λ = 50) × the
//! discriminator's binary cross-entropy over every non-pad token. No gradient goes through the
//! sampling. As in the paper's code, the generator reads the discriminator's token and position
//! embeddings (projected to its width) and scores tokens against the same token embedding (after
//! a dense + GELU + LayerNorm back to the discriminator's width), so its softmax teaches every
//! row of the embedding the discriminator transfers with; its heads keep the discriminator's
//! head width (1 head at ¼ of `tiny`). The sampling draws come with the batch from each window's
//! own generator, so a run is the same whatever its replicas, and a resumed run is bitwise the
//! uninterrupted one.
//!
//! `pretext pretrain --task electra --data text:../shared/data/text/austen.txt.gz --out runs/electra`

use std::sync::Arc;

use burn::module::Module;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::activation::log_sigmoid;
use rand::seq::index::sample;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::shared::text_tasks::{bind_text, Specials, TextBatch, TextSetup, TextTask, TextTrainer};
use super::{Build, TaskEntry};
use crate::config::{in_range, parse_section};
use crate::data::rngs::BatchRngs;
use crate::engine::{Bound, StepCtx, StepStats, Task};
use crate::error::{Error, Result};
use crate::nn::lm_head_loss::{Head, HeadLogits};
use crate::nn::transformer::{by_rows, Block, Transformer, TransformerSpec};

pub const ENTRY: TaskEntry = TaskEntry {
    name: "electra",
    description: "spot the tokens a small generator put in place of 15% hidden ones (ELECTRA)",
    build: Build::Text {
        causal: false,
        build,
    },
};

/// `[electra]` settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElectraConfig {
    /// Fraction of positions hidden for the generator (at least one per window).
    pub mask_prob: f64,
    /// λ: the weight of the discriminator's loss against the generator's.
    pub disc_weight: f64,
    /// The generator's width and MLP width as a fraction of the discriminator's (its heads are
    /// as wide as the discriminator's: width / head width of them, at least 1, and its width a
    /// multiple of them).
    pub gen_fraction: f64,
    /// The generator's layers; 0 = as many as the discriminator.
    pub gen_layers: usize,
}

impl Default for ElectraConfig {
    fn default() -> Self {
        Self {
            mask_prob: 0.15,
            disc_weight: 50.0,
            gen_fraction: 0.25,
            gen_layers: 0,
        }
    }
}

fn build(section: &toml::Value, specials: &Specials) -> Result<Arc<dyn TextTask>> {
    let cfg: ElectraConfig = parse_section("electra", section.clone())?;
    in_range("electra.mask_prob", cfg.mask_prob, 1e-9, 1.0)?;
    in_range("electra.disc_weight", cfg.disc_weight, 0.0, 1e6)?;
    in_range("electra.gen_fraction", cfg.gen_fraction, 1e-9, 1.0)?;
    Ok(Arc::new(Electra {
        cfg,
        specials: specials.clone(),
    }))
}

/// The CPU half: windows → hidden positions and the sampling draws.
pub struct Electra {
    pub cfg: ElectraConfig,
    pub specials: Specials,
}

impl Electra {
    /// The generator's sizes for a discriminator of `spec` (its `vocab` and `max_len` unused:
    /// the embeddings are the discriminator's).
    pub fn generator_spec(&self, spec: &TransformerSpec) -> Result<TransformerSpec> {
        let f = self.cfg.gen_fraction;
        let head_width = (spec.d_model / spec.heads.max(1)).max(1);
        let wide = (spec.d_model as f64 * f).round().max(1.0);
        let heads = ((wide / head_width as f64).round() as usize).max(1);
        let d = ((wide / heads as f64).round() as usize).max(1) * heads;
        let layers = match self.cfg.gen_layers {
            0 => spec.layers,
            l => l,
        };
        let g = TransformerSpec {
            d_model: d,
            heads,
            d_ff: ((spec.d_ff as f64 * f).round() as usize).max(1),
            layers,
            ..spec.clone()
        };
        g.validate()
            .map_err(|e| Error::config("electra.gen_fraction", format!("the generator: {e}")))?;
        Ok(g)
    }
}

impl TextTask for Electra {
    fn window_len(&self, t: usize) -> usize {
        t
    }

    /// Inputs: the window with the chosen positions as `<mask>`; targets: the window; weights: 1
    /// at the chosen positions; draws: a uniform number at each (what picks the sample).
    fn make_batch(&self, windows: &[Vec<u32>], rngs: &BatchRngs) -> TextBatch {
        let t = windows.first().map_or(0, |w| w.len());
        let k = ((self.cfg.mask_prob * t as f64).round() as usize).clamp(1, t.max(1));
        TextBatch::damaged(windows, rngs, true, |damaged, rng| {
            let mut chosen: Vec<usize> = sample(rng, t, k.min(t)).into_vec();
            chosen.sort_unstable();
            chosen
                .into_iter()
                .map(|i| {
                    damaged[i] = self.specials.mask;
                    (i, rng.gen::<f32>())
                })
                .collect()
        })
    }

    fn trainer(&self, setup: &TextSetup) -> Option<Result<Box<dyn TextTrainer>>> {
        Some(self.bind(setup))
    }
}

impl Electra {
    fn bind(&self, setup: &TextSetup) -> Result<Box<dyn TextTrainer>> {
        let gspec = self.generator_spec(&setup.spec)?;
        let device = setup.device.clone();
        let model = crate::platform::device::seeded(&device, setup.seed, || {
            ElectraModel::new(&setup.spec, &gspec, &device)
        });
        let task = ElectraTask {
            cfg: self.cfg.clone(),
            pad: self.specials.pad,
            validation: Arc::new(setup.validation.clone()),
            seed: setup.seed,
            device,
        };
        Ok(Box::new(bind_text(task, model, setup)))
    }
}

/// The generator, the discriminator and the discriminator's replaced/original head.
#[derive(Module, Debug)]
pub struct ElectraModel {
    /// The network that transfers.
    pub discriminator: Transformer,
    pub generator: Generator,
    /// Final hidden state → the logit of "replaced".
    pub head: Linear,
}

impl ElectraModel {
    /// A discriminator of `spec`, its generator of `gspec` ([`Electra::generator_spec`]) and
    /// the replaced/original head, initialised now (call under the run's seeded generator).
    pub fn new(spec: &TransformerSpec, gspec: &TransformerSpec, device: &Device) -> Self {
        Self {
            discriminator: spec.init(device),
            generator: Generator::new(gspec, spec.d_model, device),
            head: crate::platform::device::init_now(
                LinearConfig::new(spec.d_model, 1).init(device),
            ),
        }
    }
}

/// ELECTRA's generator without embeddings of its own: the discriminator's embeddings
/// (`Transformer::embed`) projected to its width, its blocks, a final LayerNorm, then at the
/// scored positions a dense layer + GELU + LayerNorm back to the embeddings' width, whose
/// logits are tied to the discriminator's token embedding.
#[derive(Module, Debug)]
pub struct Generator {
    proj_in: Linear,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    dense: Linear,
    ln_out: LayerNorm,
}

impl Generator {
    /// Sized by `spec` (width, heads, MLP, layers, dropout), for a discriminator of width `d`;
    /// the discriminator's initialisation (N(0, 0.02), residual projections scaled by depth).
    pub fn new(spec: &TransformerSpec, d: usize, device: &Device) -> Self {
        let g = spec.d_model;
        let linear = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device)
        };
        let resid_std = 0.02 / ((2 * spec.layers) as f64).sqrt();
        crate::platform::device::init_now(Self {
            proj_in: linear(d, g),
            blocks: (0..spec.layers)
                .map(|_| {
                    Block::new(
                        g,
                        spec.heads,
                        spec.d_ff,
                        spec.dropout,
                        false,
                        resid_std,
                        device,
                    )
                })
                .collect(),
            ln_f: LayerNormConfig::new(g).init(device),
            dense: linear(g, d),
            ln_out: LayerNormConfig::new(d).init(device),
        })
    }

    /// tokens [b, t] → the generator's final states [b·t, width], reading `disc`'s embeddings.
    pub fn hidden(&self, disc: &Transformer, tokens: Tensor<2, Int>) -> Tensor<2> {
        let mut x = by_rows(&self.proj_in, disc.embed(tokens, 0));
        for block in &self.blocks {
            x = block.forward(x, None);
        }
        let [b, t, g] = x.dims();
        self.ln_f.forward(x).reshape([b * t, g])
    }

    /// Final states of the scored rows [m, width] → the head's input [m, d] (the logits are
    /// this times the token embedding, transposed).
    pub fn predict(&self, rows: Tensor<2>) -> Tensor<2> {
        self.ln_out.forward(gelu(self.dense.forward(rows)))
    }
}

/// The engine's half: one optimiser (`model`) over generator, discriminator and head.
#[derive(Clone)]
pub struct ElectraTask {
    pub cfg: ElectraConfig,
    pub pad: u32,
    /// Fixed validation batches (their draws fixed too), measured every `eval_every` steps.
    pub validation: Arc<Vec<TextBatch>>,
    pub seed: u64,
    pub device: Device,
}

impl TextTrainer for Bound<ElectraTask> {
    fn transformer(&self) -> &Transformer {
        &self.model().discriminator
    }
}

/// A token drawn from softmax(`logits`) by the uniform draw `u` in [0, 1): the first token whose
/// cumulative probability passes `u`.
pub fn sample_token(logits: &[f32], u: f32) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&l| ((l - max) as f64).exp()).collect();
    let target = u as f64 * exps.iter().sum::<f64>();
    let mut acc = 0.0;
    for (i, e) in exps.iter().enumerate() {
        acc += e;
        if acc > target {
            return i as u32;
        }
    }
    logits.len().saturating_sub(1) as u32
}

/// The discriminator's input and labels: the originals (`targets`) with `samples` put at the
/// counted positions (`weights` > 0, in order); label 1 where the token differs from the
/// original — a sample equal to the original is labelled 0.
pub fn corrupt(batch: &TextBatch, samples: &[u32]) -> (Vec<i64>, Vec<f32>) {
    let mut inputs = batch.targets.clone();
    let mut labels = vec![0.0; inputs.len()];
    let mut samples = samples.iter();
    for (i, &w) in batch.weights.iter().enumerate() {
        if w > 0.0 {
            let s = *samples.next().expect("a sample per counted position") as i64;
            labels[i] = f32::from(u8::from(s != inputs[i]));
            inputs[i] = s;
        }
    }
    (inputs, labels)
}

/// The two losses and their sum.
pub struct Losses {
    pub total: Tensor<1>,
    pub generator: Tensor<1>,
    pub discriminator: Tensor<1>,
}

/// ELECTRA's loss from the generator's loss (its mean cross-entropy at the hidden positions,
/// `lm_head_loss`) and the discriminator's "replaced" logit at every position (`disc_logits`
/// [n]): the generator's loss plus `disc_weight` × the discriminator's mean binary cross-entropy
/// against `labels` at the `counted` (non-pad) positions.
pub fn electra_loss(
    generator: Tensor<1>,
    disc_logits: Tensor<1>,
    labels: &[f32],
    counted: &[f32],
    disc_weight: f64,
) -> Losses {
    let device = disc_logits.device();
    let n = labels.len();
    let y = Tensor::<1>::from_data(TensorData::new(labels.to_vec(), [n]), &device);
    let c = Tensor::<1>::from_data(TensorData::new(counted.to_vec(), [n]), &device);
    let tokens = counted.iter().sum::<f32>().max(1.0);
    let bce = (y.clone() * log_sigmoid(disc_logits.clone())
        + (y.neg().add_scalar(1.0)) * log_sigmoid(disc_logits.neg()))
    .neg();
    let discriminator = (bce * c).sum().div_scalar(tokens);
    let total = generator.clone() + discriminator.clone().mul_scalar(disc_weight);
    Losses {
        total,
        generator,
        discriminator,
    }
}

/// One forward pass: the losses, and the discriminator's accuracy over the counted tokens and
/// the fraction of them that were replaced.
fn forward(
    model: &ElectraModel,
    batch: &TextBatch,
    cfg: &ElectraConfig,
    pad: u32,
    device: &Device,
    grad: bool,
) -> (Losses, f32, f32) {
    let (b, t) = (batch.b, batch.t);
    let n = b * t;
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(batch.inputs.clone(), [b, t]), device);
    let gen_hidden = model.generator.hidden(&model.discriminator, inputs);
    // The generator's head only at the hidden positions: its logits there, sampled from
    // (detached, no gradient through the sampling), then its cross-entropy (`lm_head_loss`).
    let at: Vec<usize> = (0..n).filter(|&i| batch.weights[i] > 0.0).collect();
    let rows: Vec<i64> = at.iter().map(|&i| i as i64).collect();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [at.len()]), device);
    let gen_head = Head::Tied(model.discriminator.token_embedding());
    let logits = HeadLogits::new(
        &gen_head,
        model.generator.predict(gen_hidden.select(0, rows)),
    );
    let samples: Vec<u32> = at
        .iter()
        .enumerate()
        .map(|(r, &i)| sample_token(logits.row(r), batch.draws[i]))
        .collect();
    let targets: Vec<i64> = at.iter().map(|&i| batch.targets[i]).collect();
    let weights: Vec<f32> = at.iter().map(|&i| batch.weights[i]).collect();
    let generator = logits.cross_entropy(&targets, &weights, grad).loss;
    let (disc_inputs, labels) = corrupt(batch, &samples);
    let counted: Vec<f32> = batch
        .targets
        .iter()
        .map(|&x| f32::from(u8::from(x != pad as i64)))
        .collect();
    let disc_inputs = Tensor::<2, Int>::from_data(TensorData::new(disc_inputs, [b, t]), device);
    let hidden = model.discriminator.hidden(disc_inputs, None);
    let disc_logits = model.head.forward(hidden).reshape([n]);
    let z = disc_logits.clone().detach().into_data().convert::<f32>();
    let z = z.as_slice::<f32>().expect("f32 logits");
    let (mut right, mut replaced, mut tokens) = (0f32, 0f32, 0f32);
    for ((&c, &y), &z) in counted.iter().zip(&labels).zip(z) {
        if c > 0.0 {
            tokens += 1.0;
            replaced += y;
            right += f32::from(u8::from((z > 0.0) == (y > 0.0)));
        }
    }
    let losses = electra_loss(generator, disc_logits, &labels, &counted, cfg.disc_weight);
    let tokens = tokens.max(1.0);
    (losses, right / tokens, replaced / tokens)
}

impl Task for ElectraTask {
    type Model = ElectraModel;
    type Batch = TextBatch;
    type Encoder = Transformer;

    fn step(
        &mut self,
        model: ElectraModel,
        batch: TextBatch,
        cx: &mut StepCtx,
    ) -> (ElectraModel, StepStats) {
        let device = self.device.clone();
        crate::nn::dropout::with_generator(self.seed ^ (cx.step << 20), cx.part() as u64, || {
            let (losses, acc, replaced) =
                forward(&model, &batch, &self.cfg, self.pad, &device, true);
            let value = losses.total.clone().detach().into_scalar::<f32>();
            let gen = losses.generator.detach().into_scalar::<f32>();
            let disc = losses.discriminator.detach().into_scalar::<f32>();
            let lr = cx.lr;
            let model = cx.descend("model", lr, model, losses.total);
            let stats = StepStats::new(
                value,
                vec![
                    ("disc_loss", disc),
                    ("gen_loss", gen),
                    ("disc_acc", acc),
                    ("replaced", replaced),
                ],
            );
            (model, stats)
        })
    }

    fn items(batch: &TextBatch) -> u64 {
        (batch.b * batch.t) as u64
    }

    fn encoder(model: &ElectraModel) -> Transformer {
        model.discriminator.clone()
    }

    /// `val_loss` (the combined loss), `val_disc_loss`, `val_gen_loss`, `val_disc_acc` over the
    /// fixed validation batches (weighted by their tokens).
    fn validate(&self, model: &ElectraModel) -> Result<Vec<(String, f32)>> {
        if self.validation.is_empty() {
            return Ok(Vec::new());
        }
        let model = model.clone().valid();
        let device = model
            .devices()
            .first()
            .cloned()
            .unwrap_or_else(Device::flex);
        let mut sums = [0f64; 4];
        let mut n = 0f64;
        for batch in self.validation.iter() {
            let (l, acc, _) = forward(&model, batch, &self.cfg, self.pad, &device, false);
            let w = (batch.b * batch.t) as f64;
            sums[0] += l.total.into_scalar::<f32>() as f64 * w;
            sums[1] += l.discriminator.into_scalar::<f32>() as f64 * w;
            sums[2] += l.generator.into_scalar::<f32>() as f64 * w;
            sums[3] += acc as f64 * w;
            n += w;
        }
        let n = n.max(1.0);
        Ok(
            ["val_loss", "val_disc_loss", "val_gen_loss", "val_disc_acc"]
                .iter()
                .zip(sums)
                .map(|(k, s)| (k.to_string(), (s / n) as f32))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::lm_head_loss::head_cross_entropy;

    fn specials() -> Specials {
        Specials {
            vocab: 8,
            pad: 0,
            eos: 1,
            mask: 2,
            cls: 3,
            ordinary: (4..8).collect(),
        }
    }

    /// 2 sequences × 4 tokens; positions 1 and 6 hidden.
    fn tiny_batch() -> TextBatch {
        TextBatch {
            b: 2,
            t: 4,
            inputs: vec![4, 2, 6, 7, 5, 5, 2, 0],
            targets: vec![4, 5, 6, 7, 5, 5, 4, 0],
            weights: vec![0., 1., 0., 0., 0., 0., 1., 0.],
            draws: vec![0., 0.3, 0., 0., 0., 0., 0.9, 0.],
        }
    }

    #[test]
    fn a_sample_equal_to_the_original_is_labelled_original() {
        let batch = tiny_batch();
        // Position 1 gets its own token back (5), position 6 another (7).
        let (inputs, labels) = corrupt(&batch, &[5, 7]);
        assert_eq!(inputs, vec![4, 5, 6, 7, 5, 5, 7, 0]);
        assert_eq!(labels, vec![0., 0., 0., 0., 0., 0., 1., 0.]);
        // Both replaced by other tokens: both labelled 1, nothing else.
        let (inputs, labels) = corrupt(&batch, &[6, 5]);
        assert_eq!(inputs, vec![4, 6, 6, 7, 5, 5, 5, 0]);
        assert_eq!(labels, vec![0., 1., 0., 0., 0., 0., 1., 0.]);
    }

    #[test]
    fn sampling_follows_the_cumulative_softmax() {
        // Probabilities 0.25, 0.25, 0.5 (logits ln 1, ln 1, ln 2).
        let logits = [0.0, 0.0, std::f32::consts::LN_2];
        assert_eq!(sample_token(&logits, 0.0), 0);
        assert_eq!(sample_token(&logits, 0.24), 0);
        assert_eq!(sample_token(&logits, 0.26), 1);
        assert_eq!(sample_token(&logits, 0.49), 1);
        assert_eq!(sample_token(&logits, 0.51), 2);
        assert_eq!(sample_token(&logits, 0.999_999), 2);
        // A confident generator gives its token back.
        assert_eq!(sample_token(&[0.0, 30.0, 0.0], 0.7), 1);
    }

    #[test]
    fn the_loss_is_the_hand_computed_one() {
        let batch = tiny_batch();
        let device = Device::flex();
        let vocab = 8;
        // Generator logits: position i favours token i % vocab by 1.0 + 0.1·i.
        let gen: Vec<f32> = (0..8)
            .flat_map(|i| {
                (0..vocab).map(move |v| {
                    if v == i % vocab {
                        1.0 + 0.1 * i as f32
                    } else {
                        0.05 * v as f32
                    }
                })
            })
            .collect();
        let disc: Vec<f32> = vec![-2.0, 0.5, 1.0, -0.3, 0.0, 2.0, 1.5, 3.0];
        let labels = vec![0., 1., 0., 0., 0., 0., 1., 0.];
        let counted = vec![1., 1., 1., 1., 1., 1., 1., 0.]; // the last token is pad
                                                            // The generator's loss as the task computes it (`lm_head_loss`), at the hidden
                                                            // positions 1 and 6, through an identity head (so its logits are the rows above).
        let eye: Vec<f32> = (0..vocab * vocab)
            .map(|i| f32::from(u8::from(i % (vocab + 1) == 0)))
            .collect();
        let head = Head::Linear {
            weight: Tensor::<2>::from_data(TensorData::new(eye, [vocab, vocab]), &device),
            bias: None,
        };
        let rows: Vec<f32> = [1, 6]
            .iter()
            .flat_map(|&i| gen[i * vocab..(i + 1) * vocab].to_vec())
            .collect();
        let hidden = Tensor::<2>::from_data(TensorData::new(rows, [2, vocab]), &device);
        let targets = [batch.targets[1], batch.targets[6]];
        let generator = head_cross_entropy(&head, hidden, &targets, &[1.0, 1.0], false).loss;
        let l = electra_loss(
            generator,
            Tensor::<1>::from_data(TensorData::new(disc.clone(), [8]), &device),
            &labels,
            &counted,
            50.0,
        );
        // By hand, in f64.
        let ce = |i: usize| {
            let row = &gen[i * vocab..(i + 1) * vocab];
            let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            lse - row[batch.targets[i] as usize] as f64
        };
        let want_gen = (ce(1) + ce(6)) / 2.0;
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        let bce: f64 = (0..7)
            .map(|i| {
                let (z, y) = (disc[i] as f64, labels[i] as f64);
                -(y * sig(z).ln() + (1.0 - y) * (1.0 - sig(z)).ln())
            })
            .sum::<f64>()
            / 7.0;
        let got = |x: Tensor<1>| x.into_scalar::<f32>() as f64;
        let (g, d, t) = (got(l.generator), got(l.discriminator), got(l.total));
        assert!((g - want_gen).abs() < 1e-5, "generator {g} vs {want_gen}");
        assert!((d - bce).abs() < 1e-5, "discriminator {d} vs {bce}");
        assert!((t - (want_gen + 50.0 * bce)).abs() < 1e-3, "total {t}");
    }

    #[test]
    fn batches_hide_15_percent_behind_the_mask_with_a_draw_each() {
        let task = Electra {
            cfg: ElectraConfig::default(),
            specials: specials(),
        };
        let windows: Vec<Vec<u32>> = (0..3)
            .map(|r| (0..20).map(|i| 4 + ((r + i) % 4) as u32).collect())
            .collect();
        let b = task.make_batch(&windows, &BatchRngs::new(1, 0));
        assert_eq!((b.b, b.t), (3, 20));
        for r in 0..3 {
            let row = r * 20..(r + 1) * 20;
            assert_eq!(b.weights[row.clone()].iter().sum::<f32>(), 3.0); // round(0.15·20)
            for i in row {
                assert_eq!(b.targets[i], windows[i / 20][i % 20] as i64);
                if b.weights[i] > 0.0 {
                    assert_eq!(b.inputs[i], 2);
                    assert!((0.0..1.0).contains(&b.draws[i]));
                } else {
                    assert_eq!(b.inputs[i], b.targets[i]);
                    assert_eq!(b.draws[i], 0.0);
                }
            }
        }
        // The same generators give the same batch.
        let again = task.make_batch(&windows, &BatchRngs::new(1, 0));
        assert_eq!((b.inputs, b.draws), (again.inputs, again.draws));
    }

    #[test]
    fn the_generator_is_a_quarter_as_wide_with_heads_as_wide() {
        let task = Electra {
            cfg: ElectraConfig::default(),
            specials: specials(),
        };
        let spec = TransformerSpec::preset("tiny", 300, false).unwrap();
        let g = task.generator_spec(&spec).unwrap();
        assert_eq!((g.d_model, g.d_ff, g.layers, g.heads), (32, 128, 4, 1));
        assert!(!g.causal);
        // small (384 wide, 6 heads of 64): 96 wide, 2 heads of 48; base: 192, 3 heads of 64.
        let g = task
            .generator_spec(&TransformerSpec::preset("small", 300, false).unwrap())
            .unwrap();
        assert_eq!((g.d_model, g.heads), (96, 2));
        let g = task
            .generator_spec(&TransformerSpec::preset("base", 300, false).unwrap())
            .unwrap();
        assert_eq!((g.d_model, g.heads), (192, 3));
        let v: toml::Value = toml::from_str("disc_weigth = 1").unwrap();
        let err = build(&v, &specials()).err().unwrap();
        assert!(err.to_string().contains("disc_weigth"), "{err}");
    }

    /// The generator has no embeddings of its own: its loss alone reaches every row of the
    /// discriminator's token embedding (tied logits), including tokens absent from the batch.
    #[test]
    fn the_generator_teaches_the_discriminators_embedding() {
        let device = Device::flex().autodiff();
        let spec = TransformerSpec {
            vocab: 8,
            d_model: 24,
            layers: 1,
            heads: 2,
            d_ff: 48,
            max_len: 5,
            dropout: 0.0,
            tie_weights: true,
            causal: false,
        };
        let task = Electra {
            cfg: ElectraConfig::default(),
            specials: specials(),
        };
        let gspec = task.generator_spec(&spec).unwrap();
        assert_eq!((gspec.d_model, gspec.heads), (6, 1));
        let model = crate::platform::device::seeded(&device, 3, || {
            ElectraModel::new(&spec, &gspec, &device)
        });
        let names: Vec<String> = {
            struct Names(Vec<String>);
            impl burn::module::ModuleVisitor for Names {
                fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                    self.0.push(format!("{:?}", p.val().dims()));
                }
            }
            let mut v = Names(Vec::new());
            model.generator.visit(&mut v);
            v.0
        };
        // No [vocab, ·] or [max_len, ·] table among the generator's parameters.
        assert!(
            !names
                .iter()
                .any(|d| d.starts_with("[8,") || d.starts_with("[5,")),
            "{names:?}"
        );
        let batch = tiny_batch(); // tokens 0, 2, 4, 5, 6, 7 appear; 1 and 3 never
        let (losses, _, _) = forward(&model, &batch, &task.cfg, 0, &device, true);
        let grads = losses.generator.backward();
        let g = model
            .discriminator
            .token_embedding()
            .grad(&grads)
            .expect("the shared embedding has a gradient");
        let g = g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        for row in [1usize, 3] {
            let norm: f32 = g[row * 24..(row + 1) * 24].iter().map(|x| x * x).sum();
            assert!(norm > 0.0, "row {row} of the embedding got no gradient");
        }
    }

    /// Steps on a repeated tiny batch: the discriminator learns to tell replaced tokens.
    #[test]
    fn a_few_steps_lower_the_loss() {
        let device = Device::flex().autodiff();
        let specials = Specials {
            vocab: 40,
            pad: 0,
            eos: 1,
            mask: 2,
            cls: 3,
            ordinary: (4..40).collect(),
        };
        let task = Electra {
            cfg: ElectraConfig {
                mask_prob: 0.25,
                ..Default::default()
            },
            specials,
        };
        let spec = TransformerSpec {
            vocab: 40,
            d_model: 32,
            layers: 1,
            heads: 2,
            d_ff: 64,
            max_len: 16,
            dropout: 0.0,
            tie_weights: true,
            causal: false,
        };
        let windows: Vec<Vec<u32>> = (0..4)
            .map(|r| (0..16).map(|i| 4 + ((r * 3 + i * 7) % 36) as u32).collect())
            .collect();
        let setup = TextSetup {
            spec,
            validation: vec![task.make_batch(&windows, &BatchRngs::new(9, 0))],
            seed: 0,
            device: device.clone(),
            optimizer: crate::engine::optim::text_optimizer(0.0, 0.0, false),
            skip_nonfinite: false,
            global_clip: 0.0,
            replicas: 1,
        };
        let mut trainer = task.bind(&setup).unwrap();
        let first = trainer.validate().unwrap();
        for step in 0..40 {
            let batch = task.make_batch(&windows, &BatchRngs::new(3, step));
            let s = trainer.step(Box::new(batch), step, 3e-3);
            assert!(s.finite());
        }
        let last = trainer.validate().unwrap();
        let get = |v: &[(String, f32)], k: &str| v.iter().find(|(n, _)| n == k).unwrap().1;
        assert!(
            get(&last, "val_loss") < get(&first, "val_loss"),
            "{first:?} → {last:?}"
        );
    }
}
