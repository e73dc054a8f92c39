//! Rotation prediction (Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning by
//! Predicting Image Rotations"): each image is shown at 0°, 90°, 180° and 270° and the network
//! predicts which — a 4-way classification that needs an understanding of object shape and pose.
//!
//! `pretext pretrain --task rotation --data idx:../shared/data/fashion-mnist --out runs/rot`

use std::sync::Arc;

use burn::prelude::*;

use serde::{Deserialize, Serialize};

use super::{backbone, bind, Build, ClassBatch, ImageTask, ImageTrainer};
use super::{TaskContext, TaskEntry};
use crate::config::{crop_scale, parse_section};
use crate::data::augment::{inception_crop, maybe_flip, rot90, Img};
use crate::data::loader::MakeBatch;
use crate::data::rngs::BatchRngs;
use crate::engine::{StepCtx, StepStats, Task};
use crate::error::{Error, Result};
use crate::nn::heads::LinearHead;
use crate::nn::input::InputSpec;
use crate::nn::Backbone;

pub const ENTRY: TaskEntry = TaskEntry {
    name: "rotation",
    description: "predict which of 0/90/180/270° an image was rotated by (Gidaris et al. 2018)",
    build: Build::Image(build),
};

/// `[rotation]` config section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// Smallest area fraction of the random resized crop applied before rotating (1 = no crop).
    pub crop_scale_min: f32,
    /// Random horizontal flip before rotating.
    pub flip: bool,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            crop_scale_min: 0.6,
            flip: true,
        }
    }
}

/// Backbone + 4-way linear head.
#[derive(Module, Debug)]
pub struct RotationModel {
    pub backbone: Backbone,
    pub head: LinearHead,
}

impl RotationModel {
    /// x: [batch, c, h, w] → logits [batch, 4]
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.backbone.features(x))
    }
}

#[derive(Clone)]
pub struct Rotation {
    config: RotationConfig,
    input: InputSpec,
    device: Device,
}

fn build(ctx: &TaskContext) -> Result<Box<dyn ImageTrainer>> {
    let config: RotationConfig = parse_section("rotation", ctx.config.section("rotation"))?;
    crop_scale("rotation.crop_scale_min", config.crop_scale_min)?;
    if ctx.input.height != ctx.input.width {
        return Err(Error::Usage(format!(
            "rotation needs square images (rotating by 90° must keep the shape), found {}×{}",
            ctx.input.height, ctx.input.width
        )));
    }
    let backbone = backbone(ctx, ctx.input.channels);
    let head = LinearHead::new(backbone.dim(), 4, &ctx.device);
    let task = Rotation {
        config,
        input: ctx.input.clone(),
        device: ctx.device.clone(),
    };
    Ok(bind(task, RotationModel { backbone, head }, ctx))
}

/// The pure "damage the data, keep the answer" half: every image appears four times, rotated
/// counter-clockwise by 0, 90, 180 and 270°, with label k for k×90°. Output [4·b, c, h, w].
pub fn make_batch(
    images: &[Img],
    config: &RotationConfig,
    input: &InputSpec,
    rngs: &BatchRngs,
) -> ClassBatch {
    let (c, h, w) = (input.channels, input.height, input.width);
    let mut out = Vec::with_capacity(images.len() * 4 * c * h * w);
    let mut labels = Vec::with_capacity(images.len() * 4);
    for (i, img) in images.iter().enumerate() {
        let rng = &mut rngs.item(i);
        let mut img = if config.crop_scale_min < 1.0 {
            inception_crop(img, h, config.crop_scale_min, rng)
        } else {
            img.clone()
        };
        img = maybe_flip(img, config.flip, rng);
        input.normalize(&mut img);
        for k in 0..4 {
            out.extend_from_slice(&rot90(&img, k).data);
            labels.push(k as u32);
        }
    }
    ClassBatch {
        images: out,
        shape: [labels.len(), c, h, w],
        labels,
        drawn: images.len(),
    }
}

impl Task for Rotation {
    type Model = RotationModel;
    type Batch = ClassBatch;
    type Encoder = Backbone;

    fn step(
        &mut self,
        model: RotationModel,
        b: ClassBatch,
        cx: &mut StepCtx,
    ) -> (RotationModel, StepStats) {
        b.step(model, cx, &self.device, |m, x| m.forward(x))
    }

    fn items(batch: &ClassBatch) -> u64 {
        batch.drawn as u64
    }

    fn encoder(model: &RotationModel) -> Backbone {
        model.backbone.clone()
    }
}

impl ImageTask for Rotation {
    fn make_batch(&self) -> MakeBatch<ClassBatch> {
        let (config, input) = (self.config.clone(), self.input.clone());
        Arc::new(move |images, _labels, rngs| make_batch(images, &config, &input, rngs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(c: usize, s: usize) -> InputSpec {
        InputSpec::square(c, s, 0.0, 1.0)
    }

    fn ramp(c: usize, s: usize) -> Img {
        Img {
            c,
            h: s,
            w: s,
            data: (0..c * s * s)
                .map(|i| i as f32 / (c * s * s) as f32)
                .collect(),
        }
    }

    #[test]
    fn four_rotations_with_correct_labels() {
        let cfg = RotationConfig {
            crop_scale_min: 1.0,
            flip: false,
        };
        let input = spec(1, 5);
        let imgs = vec![ramp(1, 5), ramp(1, 5)];
        let b = make_batch(&imgs, &cfg, &input, &BatchRngs::new(0, 0));
        assert_eq!(b.shape, [8, 1, 5, 5]);
        assert_eq!(b.labels, vec![0, 1, 2, 3, 0, 1, 2, 3]);
        let n = 25;
        // The k=0 copy is the image itself, each copy is the previous one turned by 90°.
        assert_eq!(&b.images[..n], &imgs[0].data[..]);
        for k in 1..4 {
            let prev = Img {
                c: 1,
                h: 5,
                w: 5,
                data: b.images[(k - 1) * n..k * n].to_vec(),
            };
            assert_eq!(rot90(&prev, 1).data, b.images[k * n..(k + 1) * n].to_vec());
        }
        // Four quarter turns are the identity; a half turn maps pixel (0,0) to (4,4).
        let img = &imgs[0];
        assert_eq!(rot90(&rot90(&rot90(&rot90(img, 1), 1), 1), 1), *img);
        assert_eq!(rot90(img, 2).get(0, 4, 4), img.get(0, 0, 0));
        // The four copies differ (the ramp has no rotational symmetry).
        assert_ne!(&b.images[..n], &b.images[n..2 * n]);
    }

    #[test]
    fn non_square_images_are_rejected() {
        let device = burn::tensor::Device::flex().autodiff();
        let cfg = crate::config::PretrainConfig::default();
        let input = InputSpec {
            channels: 1,
            height: 8,
            width: 6,
            mean: vec![0.0],
            std: vec![1.0],
            per_image: false,
        };
        let err = build(&TaskContext {
            config: &cfg,
            input: &input,
            device,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("square"), "{err}");
    }
}
