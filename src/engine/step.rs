//! What a step reports, and the pieces of a classification step (rotation, context, jigsaw …).

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;

use super::task::StepCtx;

/// Loss and any extra numbers a step reports (accuracy, …), read back from the device.
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    pub loss: f32,
    pub metrics: Vec<(&'static str, f32)>,
    /// The loss was NaN or infinite and the step was undone (`on_nonfinite = "skip"`).
    pub skipped: bool,
    /// What the batch counted as for throughput (set by the engine from `Task::items`).
    pub items: u64,
}

impl StepStats {
    pub fn new(loss: f32, metrics: Vec<(&'static str, f32)>) -> Self {
        Self {
            loss,
            metrics,
            ..Default::default()
        }
    }

    /// The first of loss and metrics that is NaN or infinite.
    pub fn non_finite(&self) -> Option<(&'static str, f32)> {
        std::iter::once(("loss", self.loss))
            .chain(self.metrics.iter().copied())
            .find(|(_, v)| !v.is_finite())
    }

    pub fn finite(&self) -> bool {
        self.non_finite().is_none()
    }
}

/// Pixels `[b, c, h, w]` (row-major) as a tensor.
pub fn images_tensor(pixels: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(pixels, shape), device)
}

/// Class labels as an Int tensor: [b].
pub fn labels_tensor(labels: &[u32], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(v, [labels.len()]), device)
}

/// Cross-entropy step with the optimiser `model`: `forward` maps the model to logits
/// [b, classes]; returns the updated model with loss and accuracy.
pub fn classification_step<M: Module + 'static>(
    model: M,
    cx: &mut StepCtx,
    targets: Tensor<1, Int>,
    forward: impl FnOnce(&M) -> Tensor<2>,
) -> (M, StepStats) {
    classification_step_with(
        model,
        cx,
        targets,
        0.0,
        None,
        forward,
        |model, cx, grads| {
            let grads = GradientsParams::from_grads(grads, &model);
            cx.update("model", cx.lr, model, grads)
        },
    )
}

/// [`classification_step`] with label smoothing `smoothing` (0 = none: the target class gets
/// probability 1 − ε + ε/classes, every other ε/classes), mixed targets `mix` (partner labels,
/// λ: the loss is λ·CE(targets) + (1 − λ)·CE(partners), mixup/CutMix; accuracy counts against
/// `targets`) and the update made by `update` (model, context, the loss's gradients → the
/// updated model): fine-tuning's per-layer rates.
pub fn classification_step_with<M: Module + 'static>(
    model: M,
    cx: &mut StepCtx,
    targets: Tensor<1, Int>,
    smoothing: f32,
    mix: Option<(Tensor<1, Int>, f32)>,
    forward: impl FnOnce(&M) -> Tensor<2>,
    update: impl FnOnce(M, &mut StepCtx, burn::tensor::Gradients) -> M,
) -> (M, StepStats) {
    let logits = forward(&model);
    let device = logits.device();
    let ce = CrossEntropyLossConfig::new()
        .with_smoothing((smoothing > 0.0).then_some(smoothing))
        .init(&device);
    let loss = ce.forward(logits.clone(), targets.clone());
    let loss = match mix {
        Some((partners, lam)) if lam < 1.0 => {
            loss.mul_scalar(lam) + ce.forward(logits.clone(), partners).mul_scalar(1.0 - lam)
        }
        _ => loss,
    };
    // A NaN/Inf loss still goes through backward and the update (every replica and rank makes
    // the same updates); the engine then stops or undoes the step.
    let loss_value = loss.clone().detach().into_scalar::<f32>();
    let b = targets.dims()[0];
    let correct = logits
        .detach()
        .argmax(1)
        .reshape([b])
        .equal(targets)
        .int()
        .sum()
        .into_scalar::<i64>();
    let grads = cx.backward(loss);
    let model = update(model, cx, grads);
    (
        model,
        StepStats::new(loss_value, vec![("acc", correct as f32 / b as f32)]),
    )
}
