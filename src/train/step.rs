//! One optimisation step for a classification-style pretext task (rotation, jigsaw, context …).

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use crate::data::loader::Batch;

/// Loss and any extra numbers a step reports (accuracy, …), read back from the device.
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    pub loss: f32,
    pub metrics: Vec<(&'static str, f32)>,
    /// The loss was NaN or infinite and the step was not applied (`on_nonfinite = "skip"`).
    pub skipped: bool,
}

/// The batch's images as a tensor: [b, c, h, w]. Moves the pixels out of the batch (no copy).
pub fn images_tensor(batch: &mut Batch, device: &Device) -> Tensor<4> {
    let images = std::mem::take(&mut batch.images);
    Tensor::from_data(
        TensorData::new(images, [batch.b, batch.c, batch.h, batch.w]),
        device,
    )
}

/// The batch's labels as an Int tensor: [b].
pub fn labels_tensor(labels: &[u32], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(v, [labels.len()]), device)
}

/// Cross-entropy step: `forward` maps the model to logits [b, classes]; returns the updated model
/// with loss and accuracy.
///
/// With `skip_nonfinite`, a NaN or infinite loss leaves the model exactly as it was — parameters
/// and the batch-norm running statistics the forward pass already touched (restored from a
/// record taken before it; the optimiser state is not updated either) — and reports the step as
/// skipped. Without it the update is applied and the caller stops on the non-finite loss.
pub fn classification_step<M: Module>(
    model: M,
    optim: &mut ModuleOptimizer,
    lr: f64,
    targets: Tensor<1, Int>,
    skip_nonfinite: bool,
    forward: impl FnOnce(&M) -> Tensor<2>,
) -> (M, StepStats) {
    // `valid()` folds the pending batch-norm update into the stored running statistics first, so
    // the record holds exactly the state training continues from.
    let before = skip_nonfinite.then(|| model.valid().into_record());
    let logits = forward(&model);
    let device = logits.device();
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.clone(), targets.clone());
    if let Some(record) = before {
        let value = loss.clone().detach().into_scalar::<f32>();
        if !value.is_finite() {
            // Fold the forward pass's (non-finite) running-statistics update in, then overwrite
            // every value with the record: nothing of this step survives.
            let _ = model.valid();
            let model = model
                .try_load_record(record)
                .expect("a record taken from this module loads back into it");
            return (
                model,
                StepStats {
                    loss: value,
                    metrics: Vec::new(),
                    skipped: true,
                },
            );
        }
    }
    let correct = logits
        .detach()
        .argmax(1)
        .reshape([targets.dims()[0]])
        .equal(targets.clone())
        .int()
        .sum()
        .into_scalar::<i64>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let loss_value = loss.detach().into_scalar::<f32>();
    let model = optim.step(lr, model, grads);
    let acc = correct as f32 / targets.dims()[0] as f32;
    (
        model,
        StepStats {
            loss: loss_value,
            metrics: vec![("acc", acc)],
            skipped: false,
        },
    )
}
