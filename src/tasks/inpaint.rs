//! Inpainting GAN (Pathak et al. 2016, "Context Encoders: Feature Learning by Inpainting"): a
//! region of each image is removed (filled with the dataset mean) and an encoder–decoder paints
//! it back, trained with L2 on the hole plus a small adversarial loss from a discriminator that
//! judges real images against filled ones. The encoder half transfers downstream.
//!
//! `pretext pretrain --task inpaint --data idx:../shared/data/fashion-mnist --out runs/inp`
//!
//! Masks (`inpaint.mask`): `center` (one central square covering `coverage` of the image),
//! `squares` (random squares of side ≈ size/5 until `coverage` is reached) or `blobs` (a random
//! walk of discs — irregular strokes — until `coverage` is reached). Random masks overshoot the
//! target by at most one shape (≤ 4% for squares, ≤ 7% for blobs).

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{bind, build_gan, Build, ImageTask, ImageTrainer};
use super::{TaskContext, TaskEntry};
use crate::config::{in_range, non_negative, parse_section};
use crate::data::augment::Img;
use crate::data::loader::MakeBatch;
use crate::data::rngs::BatchRngs;
use crate::engine::gan::{gan_step, Gan, GanWeights, Generated, GAN_OPTIMIZERS};
use crate::engine::step::images_tensor;
use crate::engine::{StepCtx, StepStats, Task};
use crate::error::{Error, Result};
use crate::nn::decoder::Generator;
use crate::nn::input::InputSpec;
use crate::nn::Backbone;
use crate::report::grid::{tensor_images, write_grid, zoom_for};

pub const ENTRY: TaskEntry = TaskEntry {
    name: "inpaint",
    description:
        "fill a removed region, L2 + adversarial loss (Context Encoders, Pathak et al. 2016)",
    build: Build::Image(build),
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskKind {
    Center,
    Squares,
    Blobs,
}

/// `[inpaint]` config section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InpaintConfig {
    pub mask: MaskKind,
    /// Fraction of the image removed (0.05–0.5).
    pub coverage: f32,
    /// Width in pixels of the visible ring around the hole that is also reconstructed (0 = none).
    pub overlap: usize,
    /// Loss weight of the ring pixels relative to hole pixels.
    pub overlap_weight: f32,
    /// Weight of the reconstruction (L2) loss in the generator's loss.
    pub rec_weight: f64,
    /// Weight of the adversarial loss in the generator's loss.
    pub adv_weight: f64,
    /// Steps at the start with the reconstruction loss only (the discriminator still trains).
    pub content_only_steps: u64,
    /// Encoder stage the decoder starts from; 0 = the backbone's last stage (the whole encoder
    /// is trained; stages above the chosen one get no gradient and transfer untrained).
    pub stage: usize,
    /// U-Net skips from earlier encoder stages (off: a pure context encoder).
    pub skips: bool,
    /// Base width of the discriminator.
    pub d_width: usize,
    /// Discriminator learning rate as a multiple of `lr`.
    pub d_lr_scale: f64,
}

impl Default for InpaintConfig {
    fn default() -> Self {
        Self {
            mask: MaskKind::Blobs,
            coverage: 0.25,
            overlap: 2,
            overlap_weight: 2.0,
            rec_weight: 0.999,
            adv_weight: 0.001,
            content_only_steps: 0,
            stage: 0,
            skips: false,
            d_width: 32,
            d_lr_scale: 1.0,
        }
    }
}

/// Smallest image side a mask can be cut from.
const MIN_SIDE: usize = 8;

/// One batch: the masked images, the answers and where the loss looks.
#[derive(Clone, Debug)]
pub struct InpaintBatch {
    /// [b, c, h, w] in [0,1], the hole at the dataset mean.
    pub masked: Vec<f32>,
    /// [b, c, h, w], the images as they were.
    pub truth: Vec<f32>,
    /// [b, 1, h, w], 1 = removed.
    pub hole: Vec<f32>,
    /// [b, 1, h, w], per-pixel loss weights (see [`loss_weights`]).
    pub weights: Vec<f32>,
    /// [b, c, h, w]
    pub shape: [usize; 4],
}

#[derive(Clone)]
pub struct Inpaint {
    config: InpaintConfig,
    input: InputSpec,
    device: Device,
}

fn build(ctx: &TaskContext) -> Result<Box<dyn ImageTrainer>> {
    let config: InpaintConfig = parse_section("inpaint", ctx.config.section("inpaint"))?;
    in_range("inpaint.coverage", config.coverage, 0.05, 0.5)?;
    for (key, weight) in [
        ("inpaint.rec_weight", config.rec_weight),
        ("inpaint.adv_weight", config.adv_weight),
        ("inpaint.overlap_weight", config.overlap_weight as f64),
        ("inpaint.d_lr_scale", config.d_lr_scale),
    ] {
        non_negative(key, weight)?;
    }
    if ctx.input.height.min(ctx.input.width) < MIN_SIDE {
        return Err(Error::Usage(format!(
            "inpaint needs images of at least {MIN_SIDE}×{MIN_SIDE} to cut a mask from, found {}×{}",
            ctx.input.height, ctx.input.width
        )));
    }
    let c = ctx.input.channels;
    let model = build_gan(ctx, c, config.stage, config.skips, config.d_width)?;
    let task = Inpaint {
        config,
        input: ctx.input.clone(),
        device: ctx.device.clone(),
    };
    Ok(bind(task, model, ctx))
}

/// A hole mask (h·w values, 1 = removed) of the configured kind.
pub fn make_mask(
    kind: MaskKind,
    coverage: f32,
    h: usize,
    w: usize,
    rng: &mut impl Rng,
) -> Vec<f32> {
    let mut m = vec![0f32; h * w];
    let target = (coverage * (h * w) as f32).ceil() as usize;
    let count = |m: &[f32]| m.iter().filter(|&&v| v > 0.0).count();
    match kind {
        MaskKind::Center => {
            let (sh, sw) = (
                ((coverage.sqrt() * h as f32).round() as usize).clamp(1, h),
                ((coverage.sqrt() * w as f32).round() as usize).clamp(1, w),
            );
            let (y0, x0) = ((h - sh) / 2, (w - sw) / 2);
            for y in y0..y0 + sh {
                m[y * w + x0..y * w + x0 + sw].fill(1.0);
            }
        }
        MaskKind::Squares => {
            let side = (h.min(w) as f32 / 5.0).round().max(2.0) as usize;
            while count(&m) < target {
                let y0 = rng.gen_range(0..=h - side);
                let x0 = rng.gen_range(0..=w - side);
                for y in y0..y0 + side {
                    m[y * w + x0..y * w + x0 + side].fill(1.0);
                }
            }
        }
        MaskKind::Blobs => {
            let s = h.min(w) as f32;
            let (mut cy, mut cx) = (rng.gen_range(0.0..h as f32), rng.gen_range(0.0..w as f32));
            while count(&m) < target {
                let r = rng.gen_range(s / 12.0..s / 7.0).max(1.0);
                for y in 0..h {
                    for x in 0..w {
                        let (dy, dx) = (y as f32 + 0.5 - cy, x as f32 + 0.5 - cx);
                        if dy * dy + dx * dx <= r * r {
                            m[y * w + x] = 1.0;
                        }
                    }
                }
                if rng.gen_bool(0.15) {
                    (cy, cx) = (rng.gen_range(0.0..h as f32), rng.gen_range(0.0..w as f32));
                } else {
                    let a = rng.gen_range(0.0..std::f32::consts::TAU);
                    cy = (cy + r * a.sin()).clamp(0.0, h as f32);
                    cx = (cx + r * a.cos()).clamp(0.0, w as f32);
                }
            }
        }
    }
    m
}

/// Per-pixel loss weights: 1 on the hole, `weight` on visible pixels within `overlap` pixels
/// (Chebyshev distance) of it, 0 elsewhere.
pub fn loss_weights(hole: &[f32], h: usize, w: usize, overlap: usize, weight: f32) -> Vec<f32> {
    let mut out = hole.to_vec();
    if overlap == 0 || weight == 0.0 {
        return out;
    }
    for y in 0..h {
        for x in 0..w {
            if hole[y * w + x] > 0.0 {
                continue;
            }
            let near = (y.saturating_sub(overlap)..(y + overlap + 1).min(h)).any(|yy| {
                (x.saturating_sub(overlap)..(x + overlap + 1).min(w))
                    .any(|xx| hole[yy * w + xx] > 0.0)
            });
            if near {
                out[y * w + x] = weight;
            }
        }
    }
    out
}

/// The pure half: the masked images in [0,1] with the hole at the dataset mean, the true images,
/// the holes and the loss weights.
pub fn make_batch(
    images: &[Img],
    config: &InpaintConfig,
    input: &InputSpec,
    rngs: &BatchRngs,
) -> InpaintBatch {
    let (c, h, w) = (input.channels, input.height, input.width);
    let n = images.len();
    let mut masked = Vec::with_capacity(n * c * h * w);
    let mut truth = Vec::with_capacity(n * c * h * w);
    let mut holes = Vec::with_capacity(n * h * w);
    let mut weights = Vec::with_capacity(n * h * w);
    for (i, img) in images.iter().enumerate() {
        let rng = &mut rngs.item(i);
        let hole = make_mask(config.mask, config.coverage, h, w, rng);
        let mut m = img.clone();
        for ch in 0..c {
            for (p, &v) in m.data[ch * h * w..(ch + 1) * h * w].iter_mut().zip(&hole) {
                if v > 0.0 {
                    *p = input.mean[ch];
                }
            }
        }
        masked.extend_from_slice(&m.data);
        truth.extend_from_slice(&img.data);
        weights.extend(loss_weights(
            &hole,
            h,
            w,
            config.overlap,
            config.overlap_weight,
        ));
        holes.extend(hole);
    }
    InpaintBatch {
        masked,
        truth,
        hole: holes,
        weights,
        shape: [n, c, h, w],
    }
}

/// Tensors of one inpainting batch on `device`: (masked, truth, hole [b,1,h,w], weights [b,1,h,w]).
fn tensors(batch: InpaintBatch, device: &Device) -> [Tensor<4>; 4] {
    let [b, c, h, w] = batch.shape;
    [
        images_tensor(batch.masked, [b, c, h, w], device),
        images_tensor(batch.truth, [b, c, h, w], device),
        images_tensor(batch.hole, [b, 1, h, w], device),
        images_tensor(batch.weights, [b, 1, h, w], device),
    ]
}

impl Inpaint {
    /// Masked pixels → (prediction of every pixel in [0,1], the masked image with the hole filled).
    fn fill(
        gen: &Generator,
        masked: Tensor<4>,
        hole: Tensor<4>,
        input: &InputSpec,
    ) -> (Tensor<4>, Tensor<4>) {
        let pred = sigmoid(gen.forward(input.normalize_tensor(masked.clone())));
        let filled = masked * (hole.clone().neg() + 1.0) + pred.clone() * hole;
        (pred, filled)
    }
}

/// Weighted mean squared error: sum(w·(a-b)²) / (sum(w)·channels).
pub fn weighted_l2(pred: Tensor<4>, truth: Tensor<4>, weights: Tensor<4>) -> Tensor<1> {
    let c = pred.dims()[1] as f64;
    let err = (pred - truth).powi_scalar(2) * weights.clone();
    err.sum() / (weights.sum() * c + 1e-8)
}

impl Task for Inpaint {
    type Model = Gan;
    type Batch = InpaintBatch;
    type Encoder = Backbone;
    const OPTIMIZERS: &'static [&'static str] = GAN_OPTIMIZERS;

    /// Loss: the reconstruction loss (without `rec_weight`).
    fn step(&mut self, model: Gan, batch: InpaintBatch, cx: &mut StepCtx) -> (Gan, StepStats) {
        let [masked, truth, hole, weights] = tensors(batch, &self.device);
        let config = &self.config;
        let rec_weight = config.rec_weight;
        let w = GanWeights {
            adv_weight: config.adv_weight,
            content_only_steps: config.content_only_steps,
            d_lr_scale: config.d_lr_scale,
            content_scale: rec_weight,
        };
        gan_step(model, cx, w, |gen| {
            let (pred, filled) = Self::fill(gen, masked, hole, &self.input);
            Generated {
                content: weighted_l2(pred, truth.clone(), weights) * rec_weight,
                real: truth,
                fake: filled,
            }
        })
    }

    fn items(batch: &InpaintBatch) -> u64 {
        batch.shape[0] as u64
    }

    fn encoder(model: &Gan) -> Backbone {
        model.generator.encoder.clone()
    }
}

impl ImageTask for Inpaint {
    fn make_batch(&self) -> MakeBatch<InpaintBatch> {
        let config = self.config.clone();
        let input = self.input.clone();
        Arc::new(move |images, _labels, rngs| make_batch(images, &config, &input, rngs))
    }

    fn write_samples(&self, model: &Gan, batch: &InpaintBatch, dir: &Path) -> Result<()> {
        let [b, _, h, _] = batch.shape;
        let n = b.min(8);
        let device = self.device.clone().inner();
        let gen = model.generator.valid().to_device(&device);
        let [masked, truth, hole, _] = tensors(batch.clone(), &device);
        let (_, filled) = Self::fill(&gen, masked.clone(), hole, &self.input);
        let (m, f, t) = (
            tensor_images(masked, n),
            tensor_images(filled, n),
            tensor_images(truth, n),
        );
        let rows: Vec<Vec<Img>> = (0..n)
            .map(|i| vec![m[i].clone(), f[i].clone(), t[i].clone()])
            .collect();
        write_grid(&dir.join("samples-inpaint.png"), &rows, zoom_for(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PretrainConfig;
    use crate::engine::gan::assert_each_phase_updates_only_its_network;
    use crate::engine::optim::build_optimizer;
    use crate::engine::{Bound, Optimizers};
    use rand::SeedableRng;

    pub(crate) fn spec(c: usize, s: usize) -> InputSpec {
        InputSpec::square(c, s, 0.4, 0.3)
    }

    fn blobs_image(c: usize, s: usize, k: usize) -> Img {
        Img::from_fn(c, s, s, |ch, y, x| {
            let (dy, dx) = (y as f32 - (s / 2 + k % 3) as f32, x as f32 - (s / 2) as f32);
            (((dy * dy + dx * dx).sqrt() / 3.0 + ch as f32 + k as f32).sin() * 0.5 + 0.5)
                .clamp(0.0, 1.0)
        })
    }

    /// The task, its model (a discriminator of width 4) and the config it was made from.
    fn task(cfg_sets: &[&str], input: &InputSpec) -> (Inpaint, Gan, PretrainConfig) {
        let mut sets = vec!["task=\"inpaint\"".to_string(), "width=4".into()];
        sets.extend(cfg_sets.iter().map(|s| s.to_string()));
        let cfg: PretrainConfig =
            crate::config::resolve(None, &sets, &crate::tasks::names()).unwrap();
        let device = Device::flex().autodiff();
        device.seed(0);
        let ctx = TaskContext {
            config: &cfg,
            input,
            device,
        };
        let config: InpaintConfig = parse_section("inpaint", cfg.section("inpaint")).unwrap();
        let c = input.channels;
        let model = build_gan(&ctx, c, config.stage, config.skips, 4).unwrap();
        let task = Inpaint {
            config,
            input: input.clone(),
            device: ctx.device.clone(),
        };
        (task, model, cfg)
    }

    #[test]
    fn masks_cover_the_stated_fraction() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (kind, slack) in [
            (MaskKind::Center, 0.02f32),
            (MaskKind::Squares, 0.05),
            (MaskKind::Blobs, 0.08),
        ] {
            for (h, w) in [(28, 28), (32, 32), (12, 20)] {
                for _ in 0..30 {
                    let m = make_mask(kind, 0.25, h, w, &mut rng);
                    let cov = m.iter().sum::<f32>() / (h * w) as f32;
                    assert!(
                        (0.25 - slack.min(0.03)..=0.25 + slack).contains(&cov),
                        "{kind:?} {h}x{w}: coverage {cov}"
                    );
                }
            }
        }
        // The centre square of a 28×28 image at 25% is the middle 14×14.
        let m = make_mask(MaskKind::Center, 0.25, 28, 28, &mut rng);
        assert_eq!(m[7 * 28 + 7], 1.0);
        assert_eq!(m[6 * 28 + 7], 0.0);
        assert_eq!(m[20 * 28 + 20], 1.0);
        assert_eq!(m[21 * 28 + 20], 0.0);
    }

    #[test]
    fn batch_fills_the_hole_with_the_mean_and_keeps_the_truth() {
        let input = spec(3, 16);
        let imgs: Vec<Img> = (0..2).map(|k| blobs_image(3, 16, k)).collect();
        let cfg = InpaintConfig {
            mask: MaskKind::Blobs,
            ..Default::default()
        };
        let batch = make_batch(&imgs, &cfg, &input, &BatchRngs::new(0, 0));
        assert_eq!(batch.shape, [2, 3, 16, 16]);
        let (img, plane) = (2 * 3 * 256, 256);
        assert_eq!(batch.masked.len(), img);
        assert_eq!(batch.truth.len(), img);
        assert_eq!(
            (batch.hole.len(), batch.weights.len()),
            (2 * plane, 2 * plane)
        );
        assert_eq!(&batch.truth[..3 * 256], &imgs[0].data[..]);
        let hole = &batch.hole[..plane];
        let weights = &batch.weights[..plane];
        for p in 0..plane {
            for ch in 0..3 {
                let v = batch.masked[ch * plane + p];
                if hole[p] > 0.0 {
                    assert_eq!(v, 0.4);
                    assert_eq!(weights[p], 1.0);
                } else {
                    assert_eq!(v, imgs[0].data[ch * plane + p]);
                }
            }
        }
        // The ring around the hole is weighted, far pixels are not.
        assert!(weights.contains(&cfg.overlap_weight));
        assert!(weights.contains(&0.0));
    }

    #[test]
    fn shapes_through_generator_and_discriminator() {
        for (c, s) in [(1, 28), (3, 32)] {
            let input = spec(c, s);
            let (t, model, _) = task(&[], &input);
            let x = Tensor::<4>::zeros([2, c, s, s], &t.device);
            let y = model.generator.forward(x.clone());
            assert_eq!(y.dims(), [2, c, s, s]);
            assert_eq!(model.discriminator.forward(x).dims(), [2]);
        }
    }

    #[test]
    fn too_small_images_and_bad_values_are_config_errors() {
        let cfg: PretrainConfig = crate::config::resolve(
            None,
            &["task=\"inpaint\"".to_string()],
            &crate::tasks::names(),
        )
        .unwrap();
        let device = Device::flex().autodiff();
        let err = build(&TaskContext {
            config: &cfg,
            input: &spec(1, 6),
            device: device.clone(),
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("at least 8"), "{err}");
        let cfg: PretrainConfig = crate::config::resolve(
            None,
            &[
                "task=\"inpaint\"".to_string(),
                "inpaint.coverage=0.9".into(),
            ],
            &crate::tasks::names(),
        )
        .unwrap();
        let err = build(&TaskContext {
            config: &cfg,
            input: &spec(1, 28),
            device,
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("inpaint.coverage"), "{err}");
    }

    #[test]
    fn each_gan_phase_updates_only_its_network() {
        let input = spec(1, 16);
        let (t, model, cfg) = task(&[], &input);
        let mut optim = Optimizers::new(GAN_OPTIMIZERS, &build_optimizer(&cfg));
        let imgs: Vec<Img> = (0..4).map(|k| blobs_image(1, 16, k)).collect();
        let batch = make_batch(&imgs, &t.config, &input, &BatchRngs::new(0, 0));
        let [masked, truth, hole, weights] = tensors(batch, &t.device);
        let Gan {
            generator: gen,
            discriminator: disc,
        } = model;
        let (pred, filled) = Inpaint::fill(&gen, masked, hole, &input);
        let rec = weighted_l2(pred, truth.clone(), weights);
        let adv =
            assert_each_phase_updates_only_its_network(gen, disc, &mut optim, truth, filled, rec);
        assert!(adv > 0.0);
    }

    #[test]
    fn overfitting_one_batch_lowers_the_reconstruction_loss() {
        let input = spec(1, 16);
        let (t, model, cfg) = task(&["inpaint.mask=\"squares\""], &input);
        let imgs: Vec<Img> = (0..4).map(|k| blobs_image(1, 16, k)).collect();
        let batch = make_batch(&imgs, &t.config, &input, &BatchRngs::new(0, 0));
        let mut t = Bound::new(t, model, &build_optimizer(&cfg), false);
        let first = t.step_typed(batch.clone(), 0, 3e-3);
        assert_eq!(first.metrics.len(), 4);
        assert_eq!(first.items, 4);
        let mut last = first.loss;
        for step in 1..=40 {
            last = t.step_typed(batch.clone(), step, 3e-3).loss;
        }
        assert!(last < 0.5 * first.loss, "loss {} → {last}", first.loss);
    }
}
