//! What the language-model tasks share: the batch (ids, targets, loss weights), the
//! [`TextTask`] trait a text task implements ("damage the text, keep the answer"), and
//! [`TransformerTask`], which runs any text task through the engine — the transformer as its model, the
//! weighted cross-entropy as its loss, the validation loss at `eval_every`.
//! The loss is the cross-entropy at the positions whose weight is 1, averaged over them (all
//! positions for next-token prediction, the chosen 15% for masked tokens).

use std::sync::Arc;

use burn::optim::ModuleOptimizer;
use burn::prelude::*;

use rand_chacha::ChaCha8Rng;

use crate::data::rngs::BatchRngs;
use crate::data::tokenizer::Tokenizer;
use crate::engine::{Bound, StepCtx, StepStats, Task, Trainable};
use crate::error::Result;
use crate::nn::lm_head_loss::{head_cross_entropy, HeadLoss};
use crate::nn::transformer::{Transformer, TransformerSpec};

/// Ids the tasks need from the tokenizer.
#[derive(Clone, Debug)]
pub struct Specials {
    pub vocab: usize,
    pub pad: u32,
    pub eos: u32,
    pub mask: u32,
    pub cls: u32,
    /// Ordinary (non-special) token ids: what the masked model's random replacement draws from.
    pub ordinary: Vec<u32>,
}

/// The tokenizer's special ids, as the text tasks need them.
impl Specials {
    pub fn of(tok: &Tokenizer) -> Specials {
        let vocab = tok.vocab_size();
        Specials {
            vocab,
            pad: tok.pad_id(),
            eos: tok.eos_id(),
            mask: tok.mask_id(),
            cls: tok.cls_id(),
            ordinary: (0..vocab as u32).filter(|&i| !tok.is_special(i)).collect(),
        }
    }
}

/// One batch for the model: `b` sequences of `t` tokens.
#[derive(Clone, Debug, Default)]
pub struct TextBatch {
    pub b: usize,
    pub t: usize,
    /// Model input ids, [b, t] row-major.
    pub inputs: Vec<i64>,
    /// What each position must predict, [b, t]; any valid id where `weights` is 0.
    pub targets: Vec<i64>,
    /// 1 where a position counts in the loss, 0 where not, [b, t].
    pub weights: Vec<f32>,
    /// Uniform draws in [0, 1) for a task that samples in its step (ELECTRA's generator samples
    /// a replacement at each counted position), [b, t], drawn with the batch from each window's
    /// own generator; empty for the others.
    pub draws: Vec<f32>,
}

impl TextBatch {
    /// A batch whose rows are `windows` damaged one by one: `damage` gets a copy of a window and
    /// that row's generator, changes the copy, and returns the positions the loss counts, each
    /// with its draw (kept in `draws` when `with_draws`, else `draws` stays empty).
    pub fn damaged(
        windows: &[Vec<u32>],
        rngs: &BatchRngs,
        with_draws: bool,
        mut damage: impl FnMut(&mut [u32], &mut ChaCha8Rng) -> Vec<(usize, f32)>,
    ) -> Self {
        let b = windows.len();
        let t = windows.first().map_or(0, |w| w.len());
        let mut batch = TextBatch {
            b,
            t,
            inputs: Vec::with_capacity(b * t),
            targets: Vec::with_capacity(b * t),
            weights: vec![0.0; b * t],
            draws: if with_draws {
                vec![0.0; b * t]
            } else {
                Vec::new()
            },
        };
        for (row, w) in windows.iter().enumerate() {
            assert_eq!(w.len(), t, "windows of one batch have one length");
            let mut damaged = w.clone();
            for (i, draw) in damage(&mut damaged, &mut rngs.item(row)) {
                batch.weights[row * t + i] = 1.0;
                if with_draws {
                    batch.draws[row * t + i] = draw;
                }
            }
            batch.inputs.extend(damaged.iter().map(|&x| x as i64));
            batch.targets.extend(w.iter().map(|&x| x as i64));
        }
        batch
    }
}

/// A text pretext task: the CPU half, "damage the text, keep the answer".
pub trait TextTask: Send + Sync {
    /// Tokens to read from the corpus for a sequence of `t` model positions.
    fn window_len(&self, t: usize) -> usize;
    /// Make a batch from windows of `window_len(t)` tokens each; window `i` draws from
    /// `rngs.item(i)` (its own generator, whatever part of the global batch it is made in).
    fn make_batch(&self, windows: &[Vec<u32>], rngs: &BatchRngs) -> TextBatch;
    /// The engine's half, for a task that is more than one transformer trained by the weighted
    /// cross-entropy (ELECTRA: a generator and a discriminator); `None` (the default): [`TransformerTask`]
    /// runs it.
    fn trainer(&self, _setup: &TextSetup) -> Option<Result<Box<dyn TextTrainer>>> {
        None
    }
}

/// What `pretrain` hands a text task's engine half: the transformer that transfers (its spec as
/// `run.json` records it), validation batches, seed, device and optimiser.
#[derive(Clone)]
pub struct TextSetup {
    pub spec: TransformerSpec,
    pub validation: Vec<TextBatch>,
    pub seed: u64,
    /// The training device (autodiff enabled).
    pub device: Device,
    pub optimizer: ModuleOptimizer,
    pub skip_nonfinite: bool,
    /// Clip to this global gradient norm (0 = measure only).
    pub global_clip: f64,
    pub replicas: usize,
}

/// A text task bound to its model and optimiser, with the transformer that transfers in view.
pub trait TextTrainer: Trainable {
    /// The transformer that transfers (`encoder.safetensors`).
    fn transformer(&self) -> &Transformer;
}

impl TextTrainer for Bound<TransformerTask> {
    fn transformer(&self) -> &Transformer {
        self.model()
    }
}

/// Bind `model` to its task with `setup`'s optimiser, clipping and replicas.
pub fn bind_text<T: Task>(task: T, model: T::Model, setup: &TextSetup) -> Bound<T> {
    Bound::new(task, model, &setup.optimizer, setup.skip_nonfinite)
        .with_global_clip(setup.global_clip)
        .with_replicas(setup.replicas)
}

/// The engine's half of a text task: its own ([`TextTask::trainer`]) or [`TransformerTask`] with the
/// transformer `setup.spec` (initialised from `setup.seed`).
pub fn text_trainer(task: Arc<dyn TextTask>, setup: &TextSetup) -> Result<Box<dyn TextTrainer>> {
    if let Some(trainer) = task.trainer(setup) {
        return trainer;
    }
    let device = setup.device.clone();
    let model = crate::platform::device::seeded(&device, setup.seed, || setup.spec.init(&device));
    let lm = TransformerTask {
        task,
        validation: Arc::new(setup.validation.clone()),
        seed: setup.seed,
        device,
    };
    Ok(Box::new(bind_text(lm, model, setup)))
}

/// Mean cross-entropy over the weighted positions and the number of weighted positions whose
/// arg-max is right. Only the weighted positions reach the vocabulary head (all of them for
/// next-token prediction, the chosen 15% for masked tokens); the head and its cross-entropy run as
/// one op (`nn::lm_head_loss`). `grad`: a loss to call backward on (training), else its value only.
pub fn lm_loss(model: &Transformer, batch: &TextBatch, device: &Device, grad: bool) -> HeadLoss {
    let (b, t) = (batch.b, batch.t);
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(batch.inputs.clone(), [b, t]), device);
    let hidden = model.hidden(inputs, None);
    let d = hidden.dims()[2];
    let hidden = hidden.reshape([b * t, d]);
    let scored: Vec<usize> = (0..b * t).filter(|&i| batch.weights[i] != 0.0).collect();
    if scored.len() == b * t {
        return head_cross_entropy(
            &model.vocab_head(),
            hidden,
            &batch.targets,
            &batch.weights,
            grad,
        );
    }
    let rows: Vec<i64> = scored.iter().map(|&i| i as i64).collect();
    let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [scored.len()]), device);
    let targets: Vec<i64> = scored.iter().map(|&i| batch.targets[i]).collect();
    let weights: Vec<f32> = scored.iter().map(|&i| batch.weights[i]).collect();
    head_cross_entropy(
        &model.vocab_head(),
        hidden.select(0, rows),
        &targets,
        &weights,
        grad,
    )
}

/// A text task run by the engine: the model is the transformer, one optimiser (`model`).
#[derive(Clone)]
pub struct TransformerTask {
    pub task: Arc<dyn TextTask>,
    /// Fixed validation batches, measured every `eval_every` steps.
    pub validation: Arc<Vec<TextBatch>>,
    /// Dropout masks come from (seed, step, replica) alone (see `nn::dropout`), so a resumed
    /// run is bitwise equal to an uninterrupted one, with or without replicas.
    pub seed: u64,
    pub device: Device,
}

impl Task for TransformerTask {
    type Model = Transformer;
    type Batch = TextBatch;
    type Encoder = Transformer;

    fn step(
        &mut self,
        model: Transformer,
        batch: TextBatch,
        cx: &mut StepCtx,
    ) -> (Transformer, StepStats) {
        let device = self.device.clone();
        crate::nn::dropout::with_generator(self.seed ^ (cx.step << 20), cx.part() as u64, || {
            lm_step(model, cx, &batch, &device)
        })
    }

    fn items(batch: &TextBatch) -> u64 {
        (batch.b * batch.t) as u64
    }

    fn encoder(model: &Transformer) -> Transformer {
        model.clone()
    }

    fn validate(&self, model: &Transformer) -> Result<Vec<(String, f32)>> {
        if self.validation.is_empty() {
            return Ok(Vec::new());
        }
        let v = held_out_loss(model, &self.validation);
        Ok(vec![("val_loss".into(), v), ("val_ppl".into(), v.exp())])
    }
}

/// Forward, backward and an update by the optimiser `model` at the step's learning rate. A
/// NaN/Inf loss updates too (every replica and rank makes the same updates); the engine then
/// stops or undoes the step.
pub fn lm_step(
    model: Transformer,
    cx: &mut StepCtx,
    batch: &TextBatch,
    device: &Device,
) -> (Transformer, StepStats) {
    let out = lm_loss(&model, batch, device, true);
    let n = batch.weights.iter().sum::<f32>().max(1.0);
    let acc = out.correct / n;
    let lr = cx.lr;
    let model = cx.descend("model", lr, model, out.loss);
    (model, StepStats::new(out.value, vec![("acc", acc)]))
}

/// Mean loss over held-out batches (weighted by their counted positions), without gradients.
pub fn held_out_loss(model: &Transformer, batches: &[TextBatch]) -> f32 {
    let model = model.clone().valid();
    let device = model
        .devices()
        .first()
        .cloned()
        .unwrap_or_else(Device::flex);
    let (mut sum, mut n) = (0f64, 0f64);
    for batch in batches {
        let w = batch.weights.iter().sum::<f32>() as f64;
        sum += lm_loss(&model, batch, &device, false).value as f64 * w;
        n += w;
    }
    (sum / n.max(1.0)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gan::flat_params;
    use crate::engine::Bound;
    use crate::nn::transformer::TransformerSpec;
    use crate::tasks::causal_lm;
    use burn::optim::AdamWConfig;

    /// A causal byte-level model of 2 blocks of 4 heads with tied embeddings, no dropout.
    fn byte_gpt(d_model: usize, d_ff: usize, max_len: usize) -> TransformerSpec {
        TransformerSpec {
            vocab: 256,
            d_model,
            layers: 2,
            heads: 4,
            d_ff,
            max_len,
            dropout: 0.0,
            tie_weights: true,
            causal: true,
        }
    }

    #[test]
    fn overfitting_a_short_text_drives_the_loss_near_zero() {
        let text = "It is a truth universally acknowledged, that a single man in possession \
                    of a good fortune, must be in want of a wife.";
        let ids: Vec<u32> = text.bytes().map(u32::from).collect();
        let t = 32;
        let windows: Vec<Vec<u32>> = (0..4)
            .map(|i| ids[i * 20..i * 20 + t + 1].to_vec())
            .collect();
        let batch = causal_lm::make_batch(&windows);
        let device = Device::flex().autodiff();
        let spec = byte_gpt(64, 128, 64);
        let mut model = crate::platform::device::seeded(&device, 0, || spec.init(&device));
        let mut optim = crate::engine::Optimizers::new(&["model"], &AdamWConfig::new().init());
        let first = held_out_loss(&model, std::slice::from_ref(&batch));
        let mut last = StepStats::default();
        for step in 0..150 {
            let mut cx = StepCtx::new(step, 3e-3, &mut optim);
            let (m, s) = lm_step(model, &mut cx, &batch, &device);
            model = m;
            last = s;
        }
        let after = held_out_loss(&model, std::slice::from_ref(&batch));
        assert!(first > 4.0, "starts near ln(256) = 5.5: {first}");
        assert!(
            after < 0.1,
            "loss after overfitting {after} (train {})",
            last.loss
        );
        assert!(last.metrics[0].1 > 0.98, "acc {:?}", last.metrics);
    }

    /// Two replicas on the two halves of a batch take the step one model takes on the whole
    /// batch (no dropout, equal halves: the summed, halved gradients are the whole batch's).
    #[test]
    fn two_replicas_on_halves_step_like_one_on_the_whole_batch() {
        let text = "It is a truth universally acknowledged, that a single man in possession \
                    of a good fortune, must be in want of a wife. However little known the \
                    feelings or views of such a man may be on his first entering a neighbourhood";
        let ids: Vec<u32> = text.bytes().map(u32::from).collect();
        let t = 24;
        let windows: Vec<Vec<u32>> = (0..8)
            .map(|i| ids[i * 17..i * 17 + t + 1].to_vec())
            .collect();
        let device = Device::flex().autodiff();
        let spec = byte_gpt(32, 64, 32);
        let bound = |replicas: usize| {
            let task = TransformerTask {
                task: Arc::new(causal_lm::CausalLm),
                validation: Default::default(),
                seed: 0,
                device: device.clone(),
            };
            let model = crate::platform::device::seeded(&device, 5, || spec.init(&device));
            let optim = crate::engine::optim::text_optimizer(0.1, 0.0, false);
            Bound::new(task, model, &optim, false).with_replicas(replicas)
        };
        let whole = vec![causal_lm::make_batch(&windows)];
        let halves = vec![
            causal_lm::make_batch(&windows[..4]),
            causal_lm::make_batch(&windows[4..]),
        ];
        let (mut one, mut two) = (bound(1), bound(2));
        assert_eq!((one.replicas(), two.replicas()), (1, 2));
        for step in 0..3 {
            let a = one.step_parts(whole.clone(), step, 1e-3);
            let b = two.step_parts(halves.clone(), step, 1e-3);
            assert!(
                (a.loss - b.loss).abs() < 1e-5,
                "step {step}: {} vs {}",
                a.loss,
                b.loss
            );
            assert_eq!(a.items, b.items);
        }
        let (pa, pb) = (flat_params(one.model()), flat_params(two.model()));
        let diff = pa
            .iter()
            .zip(&pb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        // Three AdamW steps of 1e-3 move weights by ~3e-3; float reassociation leaves ~1e-7.
        assert!(diff < 2e-5, "weights differ by up to {diff}");
        let moved = flat_params(bound(1).model())
            .iter()
            .zip(&pa)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(moved > 1e-3, "the steps moved the weights by only {moved}");
    }
}
