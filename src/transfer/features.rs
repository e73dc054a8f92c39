//! Frozen features: run an encoder (in inference mode, no autodiff) over a set of images, with
//! its batch-norm statistics first re-estimated on the downstream images.

use burn::module::Module;
use burn::prelude::*;

use crate::data::augment::Img;
use crate::data::{DataError, ImageSet};
use crate::nn::input::InputSpec;
use crate::nn::Backbone;

/// Normalised float images [n, c, h, w] for the chosen indices (decoded here for a streamed
/// set; a file that fails to decode is an error naming it).
pub fn normalized_images(
    set: &ImageSet,
    idx: &[usize],
    input: &InputSpec,
) -> Result<Vec<f32>, DataError> {
    let mut out = Vec::with_capacity(idx.len() * set.image_len());
    for &i in idx {
        let mut img = Img::from_u8(set.channels, set.height, set.width, &set.image(i)?);
        input.normalize(&mut img);
        out.extend_from_slice(&img.data);
    }
    Ok(out)
}

/// Pooled features of `stage` (the last stage when `None`) for every image in `idx`:
/// row-major [idx.len(), dim].
pub fn extract(
    encoder: &Backbone,
    set: &ImageSet,
    idx: &[usize],
    input: &InputSpec,
    stage: Option<usize>,
    device: &Device,
) -> Result<(Vec<f32>, usize), DataError> {
    let encoder = encoder.valid().to_device(device);
    let stage = stage.unwrap_or(encoder.stages());
    let dim = encoder.stage_dim(stage);
    let mut out = Vec::with_capacity(idx.len() * dim);
    for chunk in idx.chunks(256) {
        let x = normalized_images(set, chunk, input)?;
        let x = Tensor::<4>::from_data(
            TensorData::new(x, [chunk.len(), set.channels, set.height, set.width]),
            device,
        );
        let f = encoder.features_at(x, stage);
        out.extend(f.into_data().try_into_vec::<f32>().expect("f32 features"));
    }
    Ok((out, dim))
}

/// Images the batch-norm statistics are re-estimated on, and the batch size of that pass.
pub const BN_IMAGES: usize = 2048;
const BN_BATCH: usize = 128;

/// The images of `set` that batch-norm re-estimation uses: a seeded sample of at most
/// [`BN_IMAGES`] (labels unused).
pub fn bn_sample(set: &ImageSet, seed: u64) -> Vec<usize> {
    bn_sample_of(&(0..set.n).collect::<Vec<_>>(), seed)
}

/// [`bn_sample`] drawn from `pool` (indices into `set`) only: never an evaluation image.
pub fn bn_sample_of(pool: &[usize], seed: u64) -> Vec<usize> {
    super::split::sample_limit(pool.to_vec(), BN_IMAGES, seed ^ 0xb4)
}

/// `encoder` with every batch norm's running mean and variance replaced by their average over
/// batches of `set[idx]` (the encoder was pretrained on other inputs: augmented views, patches,
/// another dataset; or, with random weights, has never seen any). Weights are unchanged.
pub fn reestimate_bn(
    encoder: Backbone,
    set: &ImageSet,
    idx: &[usize],
    input: &InputSpec,
    device: &Device,
) -> Result<Backbone, DataError> {
    let ad = device.clone().autodiff();
    // Parameters untracked: the forwards below only update running statistics, and with
    // tracked parameters each one recorded an autodiff graph (the activations kept for a
    // backward that never comes), which piled up across transfer cells (a ViT's k-NN cells in
    // `pretext compare` grew past 20 GB).
    let mut enc = encoder.valid().to_device(&ad).no_grad().train();
    for (k, chunk) in idx.chunks(BN_BATCH).enumerate() {
        if chunk.len() < 2 {
            break;
        }
        enc.set_bn_momentum(1.0 / (k + 1) as f64);
        let x = normalized_images(set, chunk, input)?;
        let x = Tensor::<4>::from_data(
            TensorData::new(x, [chunk.len(), set.channels, set.height, set.width]),
            &ad,
        );
        let _ = enc.features(x.detach());
    }
    enc.set_bn_momentum(0.1);
    // `no_grad` is persistent (a later `train()` keeps it): hand the parameters back
    // trainable, or fine-tuning from this encoder would train its head alone.
    Ok(enc.set_require_grad(true).valid().to_device(device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gan::flat_params;
    use crate::engine::ranks::trainable_count;
    use crate::nn::{BackboneKind, BackboneSpec};

    /// A width-4 conv net or width-32 ViT and `n` 8×8 grey images.
    fn fixture(kind: BackboneKind, n: usize, device: &Device) -> (Backbone, ImageSet, InputSpec) {
        let spec = BackboneSpec {
            kind,
            in_channels: 1,
            width: if kind == BackboneKind::Vit { 32 } else { 4 },
            patch: 0,
        };
        let pixels: Vec<u8> = (0..n * 8 * 8).map(|i| (i * 37 % 251) as u8).collect();
        let set = ImageSet::in_memory(pixels, None, n, 1, 8, 8);
        let input = InputSpec::from_images(&set).unwrap();
        (spec.init(device), set, input)
    }

    /// Re-estimation replaces the running statistics — and only them: the learned weights are
    /// unchanged. (That it keeps no autodiff graph is measured, not tested: see 8637e39.)
    #[test]
    fn reestimation_replaces_the_running_statistics_only() {
        let device = Device::flex();
        let n = 40;
        let (encoder, set, input) = fixture(BackboneKind::Convnet, n, &device);
        let before = flat_params(&encoder);
        let idx: Vec<usize> = (0..n).collect();
        let after =
            flat_params(&reestimate_bn(encoder.clone(), &set, &idx, &input, &device).unwrap());
        assert_eq!(before.len(), after.len());
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // width 4: 4 + 8 + 16 + 32 channels, a running mean and variance each
        assert_eq!(
            changed,
            2 * (4 + 8 + 16 + 32),
            "only the running statistics change"
        );
    }

    /// The re-estimated encoder trains again: fine-tuning (LP-FT starts from it) must get
    /// gradients for every learned weight, not only for its head.
    #[test]
    fn the_reestimated_encoder_is_trainable() {
        let device = Device::flex();
        let trainable =
            |enc: Backbone| trainable_count(&enc.to_device(&device.clone().autodiff()).train());
        for kind in [BackboneKind::Convnet, BackboneKind::Vit] {
            let n = 8;
            let (fresh, set, input) = fixture(kind, n, &device);
            let want = trainable(fresh.clone());
            assert!(want > 0);
            let idx: Vec<usize> = (0..n).collect();
            let got = trainable(reestimate_bn(fresh, &set, &idx, &input, &device).unwrap());
            assert_eq!(got, want, "{kind:?}: parameters left untracked");
        }
    }
}
