//! One optimisation step of a language model on a [`TextBatch`], and the held-out loss.
//! The loss is the cross-entropy at the positions whose weight is 1, averaged over them (all
//! positions for next-token prediction, the chosen 15% for masked tokens).

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::step::StepStats;
use crate::nn::transformer::Transformer;
use crate::tasks::text::TextBatch;

/// Mean cross-entropy over the weighted positions ([1]) and the number of weighted positions
/// whose arg-max is right.
pub fn lm_loss(model: &Transformer, batch: &TextBatch, device: &Device) -> (Tensor<1>, Tensor<1>) {
    let (b, t) = (batch.b, batch.t);
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(batch.inputs.clone(), [b, t]), device);
    let targets =
        Tensor::<1, Int>::from_data(TensorData::new(batch.targets.clone(), [b * t]), device);
    let weights = Tensor::<1>::from_data(TensorData::new(batch.weights.clone(), [b * t]), device);
    let n = batch.weights.iter().sum::<f32>().max(1.0);
    let logits = model.forward(inputs);
    let vocab = logits.dims()[2];
    let logits = logits.reshape([b * t, vocab]);
    let picked = log_softmax(logits.clone(), 1)
        .gather(1, targets.clone().reshape([b * t, 1]))
        .reshape([b * t]);
    let loss = (picked * weights.clone()).sum().neg().div_scalar(n);
    let correct = logits
        .detach()
        .argmax(1)
        .reshape([b * t])
        .equal(targets)
        .float()
        .mul(weights)
        .sum();
    (loss, correct)
}

/// Forward, backward and optimiser step at learning rate `lr`. With `skip_nonfinite`, a NaN or
/// infinite loss leaves the model and optimiser untouched and the step is reported as skipped
/// (the transformer has no running statistics, so nothing else changed).
pub fn lm_step(
    model: Transformer,
    optim: &mut ModuleOptimizer,
    batch: &TextBatch,
    lr: f64,
    skip_nonfinite: bool,
) -> (Transformer, StepStats) {
    let device = model
        .devices()
        .first()
        .cloned()
        .unwrap_or_else(Device::flex);
    let (loss, correct) = lm_loss(&model, batch, &device);
    let value = loss.clone().detach().into_scalar::<f32>();
    if skip_nonfinite && !value.is_finite() {
        return (
            model,
            StepStats {
                loss: value,
                metrics: Vec::new(),
                skipped: true,
            },
        );
    }
    let n = batch.weights.iter().sum::<f32>().max(1.0);
    let acc = correct.into_scalar::<f32>() / n;
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optim.step(lr, model, grads);
    (
        model,
        StepStats {
            loss: value,
            metrics: vec![("acc", acc)],
            skipped: false,
        },
    )
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
        let (loss, _) = lm_loss(&model, batch, &device);
        sum += loss.into_scalar::<f32>() as f64 * w;
        n += w;
    }
    (sum / n.max(1.0)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::transformer::TransformerSpec;
    use crate::tasks::causal_lm;
    use burn::optim::AdamWConfig;

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
        let spec = TransformerSpec {
            vocab: 256,
            d_model: 64,
            layers: 2,
            heads: 4,
            d_ff: 128,
            max_len: 64,
            dropout: 0.0,
            tie_weights: true,
            causal: true,
        };
        let mut model = crate::device::seeded(&device, 0, || spec.init(&device));
        let mut optim = AdamWConfig::new().init();
        let first = held_out_loss(&model, std::slice::from_ref(&batch));
        let mut last = StepStats::default();
        for _ in 0..150 {
            let (m, s) = lm_step(model, &mut optim, &batch, 3e-3, false);
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
}
