//! Rotation prediction (Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning by
//! Predicting Image Rotations"): each image is shown at 0°, 90°, 180° and 270° and the network
//! predicts which — a 4-way classification that needs an understanding of object shape and pose.
//!
//! `pretext pretrain --task rotation --data idx:../shared/data/fashion-mnist --out runs/rot`

use std::path::Path;
use std::sync::Arc;

use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{PretextTask, TaskContext, TaskEntry};
use crate::config::{parse_section, NonFinite};
use crate::data::augment::{hflip, random_resized_crop, rot90, Img};
use crate::data::loader::{Batch, MakeBatch};
use crate::error::{Error, Result};
use crate::input::InputSpec;
use crate::nn::heads::LinearHead;
use crate::nn::{Backbone, BackboneSpec};
use crate::train::checkpoint::{load_module, load_optimizer, save_module, save_optimizer};
use crate::train::optim::build_optimizer;
use crate::train::step::{classification_step, images_tensor, labels_tensor, StepStats};

pub const ENTRY: TaskEntry = TaskEntry {
    name: "rotation",
    description: "predict which of 0/90/180/270° an image was rotated by (Gidaris et al. 2018)",
    build,
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

pub struct Rotation {
    config: RotationConfig,
    input: InputSpec,
    model: Option<RotationModel>,
    optim: ModuleOptimizer,
    device: Device,
    /// `on_nonfinite = "skip"`: leave the model as it was when the loss is NaN/Inf.
    skip_nonfinite: bool,
}

fn build(ctx: &TaskContext) -> Result<Box<dyn PretextTask>> {
    let config: RotationConfig = parse_section("rotation", ctx.config.section("rotation"))?;
    if !(0.05..=1.0).contains(&config.crop_scale_min) {
        return Err(Error::config(
            "rotation.crop_scale_min",
            format!("must be in [0.05, 1], found {}", config.crop_scale_min),
        ));
    }
    if ctx.input.height != ctx.input.width {
        return Err(Error::Usage(format!(
            "rotation needs square images (rotating by 90° must keep the shape), found {}×{}",
            ctx.input.height, ctx.input.width
        )));
    }
    let spec = BackboneSpec {
        kind: ctx.config.backbone,
        in_channels: ctx.input.channels,
        width: ctx.config.width(),
    };
    let backbone = spec.init(&ctx.device);
    let head = LinearHead::new(backbone.dim(), 4, &ctx.device);
    Ok(Box::new(Rotation {
        config,
        input: ctx.input.clone(),
        model: Some(RotationModel { backbone, head }),
        optim: build_optimizer(ctx.config),
        device: ctx.device.clone(),
        skip_nonfinite: ctx.config.on_nonfinite == NonFinite::Skip,
    }))
}

/// The pure "damage the data, keep the answer" half: every image appears four times, rotated
/// counter-clockwise by 0, 90, 180 and 270°, with label k for k×90°. Output [4·b, c, h, w].
pub fn make_batch(
    images: &[Img],
    config: &RotationConfig,
    input: &InputSpec,
    rng: &mut impl Rng,
) -> Batch {
    let (c, h, w) = (input.channels, input.height, input.width);
    let mut out = Vec::with_capacity(images.len() * 4 * c * h * w);
    let mut labels = Vec::with_capacity(images.len() * 4);
    for img in images {
        let mut img = if config.crop_scale_min < 1.0 {
            random_resized_crop(
                img,
                h,
                (config.crop_scale_min, 1.0),
                (3.0 / 4.0, 4.0 / 3.0),
                rng,
            )
        } else {
            img.clone()
        };
        if config.flip && rng.gen_bool(0.5) {
            img = hflip(&img);
        }
        input.normalize(&mut img);
        for k in 0..4 {
            out.extend_from_slice(&rot90(&img, k).data);
            labels.push(k as u32);
        }
    }
    Batch {
        index: 0,
        b: labels.len(),
        c,
        h,
        w,
        images: out,
        labels,
        extra: Vec::new(),
    }
}

impl PretextTask for Rotation {
    fn make_batch(&self) -> MakeBatch {
        let config = self.config.clone();
        let input = self.input.clone();
        Arc::new(move |images, _labels, rng| make_batch(images, &config, &input, rng))
    }

    fn step(&mut self, mut batch: Batch, lr: f64) -> StepStats {
        let x = images_tensor(&mut batch, &self.device);
        let y = labels_tensor(&batch.labels, &self.device);
        let model = self.model.take().expect("model present between steps");
        let (model, stats) =
            classification_step(model, &mut self.optim, lr, y, self.skip_nonfinite, |m| {
                m.forward(x)
            });
        self.model = Some(model);
        stats
    }

    fn num_params(&self) -> usize {
        self.model.as_ref().map_or(0, |m| m.num_params())
    }

    fn encoder(&self) -> Backbone {
        self.model.as_ref().expect("model present").backbone.clone()
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_module(
            self.model.clone().expect("model present"),
            &dir.join("model.bpk"),
        )?;
        save_optimizer(&self.optim, &dir.join("optimizer.bpk"))
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        let model = self.model.take().expect("model present");
        self.model = Some(load_module(model, &dir.join("model.bpk"))?);
        self.optim = load_optimizer(self.optim.clone(), &dir.join("optimizer.bpk"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn spec(c: usize, s: usize) -> InputSpec {
        InputSpec {
            channels: c,
            height: s,
            width: s,
            mean: vec![0.0; c],
            std: vec![1.0; c],
        }
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
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let b = make_batch(&imgs, &cfg, &input, &mut rng);
        assert_eq!((b.b, b.c, b.h, b.w), (8, 1, 5, 5));
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
