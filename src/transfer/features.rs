//! Frozen features: run an encoder (in inference mode, no autodiff) over a set of images.

use burn::module::Module;
use burn::prelude::*;

use crate::data::augment::Img;
use crate::data::{DataError, ImageSet};
use crate::input::InputSpec;
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
