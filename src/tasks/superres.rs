//! Super-resolution GAN (after Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution
//! Using a Generative Adversarial Network", SRGAN): each image is shrunk ×2 or ×4 (box filter)
//! and a generator restores it, trained with a pixel content loss plus a small adversarial loss
//! from a discriminator that judges generated images against the originals.
//!
//! Unlike SRGAN's generator (which upsamples inside the network with sub-pixel convolutions), ours
//! first enlarges the low-res image bilinearly to full size, and the network — the project's
//! backbone as encoder plus a U-Net decoder — predicts the *residual* to add to it. So the encoder
//! sees full-size images, exactly as it does downstream, and transfers as a plain backbone.
//! The baseline for PSNR/SSIM is that same bilinear enlargement (we have no bicubic resampler).
//!
//! `pretext pretrain --task superres --data idx:../shared/data/fashion-mnist --out runs/sr`

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;

use serde::{Deserialize, Serialize};

use super::{bind, build_gan, Build, ImageTask, ImageTrainer};
use super::{TaskContext, TaskEntry};
use crate::config::{non_negative, parse_section};
use crate::data::augment::{downscale_box, maybe_flip, resize_bilinear, resize_nearest, Img};
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
use crate::tasks::shared::image_quality::{psnr, ssim};

pub const ENTRY: TaskEntry = TaskEntry {
    name: "superres",
    description: "restore an image shrunk ×2 or ×4, pixel + adversarial loss (after SRGAN, Ledig et al. 2017)",
    build: Build::Image(build),
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentLoss {
    L1,
    L2,
}

/// `[superres]` config section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuperresConfig {
    /// Shrink factor: 2 or 4. The image size must be a multiple of it.
    pub scale: usize,
    /// Pixel loss between generated and true image.
    pub loss: ContentLoss,
    /// Weight of the adversarial loss in the generator's loss.
    pub adv_weight: f64,
    /// Steps at the start with the content loss only (the discriminator still trains).
    pub content_only_steps: u64,
    /// Random horizontal flip of the training images.
    pub flip: bool,
    /// Encoder stage the decoder starts from; 0 = the backbone's last stage (the whole encoder
    /// is trained; stages above the chosen one get no gradient and transfer untrained).
    pub stage: usize,
    /// U-Net skips from earlier encoder stages and the input. On by default: without them the
    /// detail must pass the last stage's 2×2 map (28 px images) and one batch is not even
    /// overfitted below the bilinear enlargement in 40 steps (content loss 0.278 → 0.221); off
    /// makes the deep stages (what transfers) do all the work.
    pub skips: bool,
    /// Base width of the discriminator.
    pub d_width: usize,
    /// Discriminator learning rate as a multiple of `lr`.
    pub d_lr_scale: f64,
}

impl Default for SuperresConfig {
    fn default() -> Self {
        Self {
            scale: 2,
            loss: ContentLoss::L1,
            adv_weight: 1e-3,
            content_only_steps: 100,
            flip: true,
            stage: 0,
            skips: true,
            d_width: 32,
            d_lr_scale: 1.0,
        }
    }
}

/// One batch: the bilinear enlargements of the low-res images and the true images.
#[derive(Clone, Debug)]
pub struct SuperresBatch {
    /// [b, c, h, w], pixels in [0,1].
    pub up: Vec<f32>,
    /// [b, c, h, w], pixels in [0,1].
    pub truth: Vec<f32>,
    pub shape: [usize; 4],
}

#[derive(Clone)]
pub struct Superres {
    config: SuperresConfig,
    input: InputSpec,
    device: Device,
}

fn build(ctx: &TaskContext) -> Result<Box<dyn ImageTrainer>> {
    let config: SuperresConfig = parse_section("superres", ctx.config.section("superres"))?;
    if ![2, 4].contains(&config.scale) {
        return Err(Error::config(
            "superres.scale",
            format!("must be 2 or 4, found {}", config.scale),
        ));
    }
    let (h, w) = (ctx.input.height, ctx.input.width);
    if h % config.scale != 0
        || w % config.scale != 0
        || h / config.scale < 2
        || w / config.scale < 2
    {
        return Err(Error::config(
            "superres.scale",
            format!(
                "the images ({h}×{w}) must be multiples of the scale {} and at least twice as large",
                config.scale
            ),
        ));
    }
    non_negative("superres.adv_weight", config.adv_weight)?;
    non_negative("superres.d_lr_scale", config.d_lr_scale)?;
    let c = ctx.input.channels;
    let model = build_gan(ctx, c, config.stage, config.skips, config.d_width)?;
    let task = Superres {
        config,
        input: ctx.input.clone(),
        device: ctx.device.clone(),
    };
    Ok(bind(task, model, ctx))
}

/// Low-res version of `img` (box filter) and its bilinear enlargement back to full size.
pub fn degrade(img: &Img, scale: usize) -> (Img, Img) {
    let low = downscale_box(img, scale);
    let up = resize_bilinear(&low, img.h, img.w);
    (low, up)
}

/// The pure half: the bilinear enlargements of the low-res images and the true images.
pub fn make_batch(images: &[Img], config: &SuperresConfig, rngs: &BatchRngs) -> SuperresBatch {
    let mut up = Vec::new();
    let mut truth = Vec::new();
    let (c, h, w) = images.first().map_or((0, 0, 0), |i| (i.c, i.h, i.w));
    for (i, img) in images.iter().enumerate() {
        let rng = &mut rngs.item(i);
        let img = maybe_flip(img.clone(), config.flip, rng);
        up.extend(degrade(&img, config.scale).1.data);
        truth.extend(img.data);
    }
    SuperresBatch {
        up,
        truth,
        shape: [images.len(), c, h, w],
    }
}

/// (enlarged low-res, truth) as [b, c, h, w] tensors on `device`.
fn tensors(batch: SuperresBatch, device: &Device) -> (Tensor<4>, Tensor<4>) {
    (
        images_tensor(batch.up, batch.shape, device),
        images_tensor(batch.truth, batch.shape, device),
    )
}

/// PSNR in dB from a mean squared error.
fn psnr_of(mse: f32) -> f32 {
    10.0 * (1.0 / mse.max(1e-10)).log10()
}

impl Superres {
    /// Enlarged low-res pixels → generated image (enlargement + predicted residual).
    fn generate(gen: &Generator, up: Tensor<4>, input: &InputSpec) -> Tensor<4> {
        up.clone() + gen.forward(input.normalize_tensor(up))
    }

    fn content(&self, out: Tensor<4>, truth: Tensor<4>) -> Tensor<1> {
        match self.config.loss {
            ContentLoss::L1 => (out - truth).abs().mean(),
            ContentLoss::L2 => (out - truth).powi_scalar(2).mean(),
        }
    }

    /// Generated images for `truth` images, by `model`'s generator on the inference device.
    fn restore(&self, model: &Gan, truth: &[Img]) -> Vec<Img> {
        let device = self.device.clone().inner();
        let gen = model.generator.valid().to_device(&device);
        let mut out = Vec::with_capacity(truth.len());
        for chunk in truth.chunks(64) {
            let (c, h, w) = (chunk[0].c, chunk[0].h, chunk[0].w);
            let up: Vec<f32> = chunk
                .iter()
                .flat_map(|i| degrade(i, self.config.scale).1.data)
                .collect();
            let up = images_tensor(up, [chunk.len(), c, h, w], &device);
            out.extend(tensor_images(
                Self::generate(&gen, up, &self.input).clamp(0.0, 1.0),
                chunk.len(),
            ));
        }
        out
    }
}

impl Task for Superres {
    type Model = Gan;
    type Batch = SuperresBatch;
    type Encoder = Backbone;
    const OPTIMIZERS: &'static [&'static str] = GAN_OPTIMIZERS;

    fn step(&mut self, model: Gan, batch: SuperresBatch, cx: &mut StepCtx) -> (Gan, StepStats) {
        let (up, truth) = tensors(batch, &self.device);
        let config = &self.config;
        let mut quality = Vec::with_capacity(2);
        let w = GanWeights {
            adv_weight: config.adv_weight,
            content_only_steps: config.content_only_steps,
            d_lr_scale: config.d_lr_scale,
            content_scale: 1.0,
        };
        let (model, mut stats) = gan_step(model, cx, w, |gen| {
            let out = Self::generate(gen, up.clone(), &self.input);
            let mse = (out.clone().detach() - truth.clone())
                .powi_scalar(2)
                .mean()
                .into_scalar::<f32>();
            let mse_bilinear = (up - truth.clone())
                .powi_scalar(2)
                .mean()
                .into_scalar::<f32>();
            quality.extend([
                ("psnr", psnr_of(mse)),
                ("psnr_bilinear", psnr_of(mse_bilinear)),
            ]);
            Generated {
                content: self.content(out.clone(), truth.clone()),
                real: truth,
                fake: out,
            }
        });
        stats.metrics.extend(quality);
        (model, stats)
    }

    fn items(batch: &SuperresBatch) -> u64 {
        batch.shape[0] as u64
    }

    fn encoder(model: &Gan) -> Backbone {
        model.generator.encoder.clone()
    }
}

impl ImageTask for Superres {
    fn make_batch(&self) -> MakeBatch<SuperresBatch> {
        let config = self.config.clone();
        Arc::new(move |images, _labels, rngs| make_batch(images, &config, rngs))
    }

    fn write_samples(&self, model: &Gan, batch: &SuperresBatch, dir: &Path) -> Result<()> {
        let [b, c, h, w] = batch.shape;
        let n = b.min(8);
        let truth: Vec<Img> = (0..n)
            .map(|i| Img {
                c,
                h,
                w,
                data: batch.truth[i * c * h * w..(i + 1) * c * h * w].to_vec(),
            })
            .collect();
        let generated = self.restore(model, &truth);
        let rows: Vec<Vec<Img>> = truth
            .iter()
            .zip(generated)
            .map(|(t, g)| {
                let (low, up) = degrade(t, self.config.scale);
                vec![resize_nearest(&low, h, w), up, g, t.clone()]
            })
            .collect();
        write_grid(&dir.join("samples-superres.png"), &rows, zoom_for(h))
    }

    fn evaluate(&self, model: &Gan, held_out: &[Img]) -> Result<Vec<(String, f32)>> {
        if held_out.is_empty() {
            return Ok(Vec::new());
        }
        let generated = self.restore(model, held_out);
        let n = held_out.len() as f32;
        let (mut p, mut s, mut pb, mut sb) = (0.0, 0.0, 0.0, 0.0);
        for (t, g) in held_out.iter().zip(&generated) {
            let up = degrade(t, self.config.scale).1;
            p += psnr(g, t);
            s += ssim(g, t);
            pb += psnr(&up, t);
            sb += ssim(&up, t);
        }
        Ok(vec![
            ("psnr".into(), p / n),
            ("ssim".into(), s / n),
            ("psnr_bilinear".into(), pb / n),
            ("ssim_bilinear".into(), sb / n),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PretrainConfig;
    use crate::engine::gan::assert_each_phase_updates_only_its_network;
    use crate::engine::optim::build_optimizer;
    use crate::engine::{Bound, Optimizers};

    fn spec(c: usize, s: usize) -> InputSpec {
        InputSpec::square(c, s, 0.4, 0.3)
    }

    fn image(c: usize, s: usize, k: usize) -> Img {
        Img::from_fn(c, s, s, |ch, y, x| {
            ((((y * 3 + x * (k + 1)) as f32) / 2.0 + ch as f32).sin() * 0.5 + 0.5).clamp(0.0, 1.0)
        })
    }

    fn context(sets: &[&str]) -> (PretrainConfig, Device) {
        let mut all = vec!["task=\"superres\"".to_string(), "width=4".into()];
        all.extend(sets.iter().map(|s| s.to_string()));
        let cfg = crate::config::resolve(None, &all, &crate::tasks::names()).unwrap();
        let device = Device::flex().autodiff();
        device.seed(0);
        (cfg, device)
    }

    /// The task, its model (a discriminator of width 4) and the config it was made from.
    fn task(sets: &[&str], input: &InputSpec) -> (Superres, Gan, PretrainConfig) {
        let (cfg, device) = context(sets);
        let config: SuperresConfig = parse_section("superres", cfg.section("superres")).unwrap();
        let ctx = TaskContext {
            config: &cfg,
            input,
            device: device.clone(),
        };
        let c = input.channels;
        let model = build_gan(&ctx, c, config.stage, config.skips, 4).unwrap();
        let task = Superres {
            config,
            input: input.clone(),
            device,
        };
        (task, model, cfg)
    }

    #[test]
    fn degrade_shrinks_by_the_scale_and_keeps_flat_images() {
        let flat = Img::from_fn(3, 8, 8, |c, _, _| 0.2 * c as f32);
        for scale in [2, 4] {
            let (low, up) = degrade(&flat, scale);
            assert_eq!((low.c, low.h, low.w), (3, 8 / scale, 8 / scale));
            assert_eq!((up.h, up.w), (8, 8));
            for (a, b) in up.data.iter().zip(&flat.data) {
                assert!((a - b).abs() < 1e-6);
            }
        }
        let img = image(1, 8, 0);
        let low = degrade(&img, 2).0;
        let want =
            (img.get(0, 0, 0) + img.get(0, 0, 1) + img.get(0, 1, 0) + img.get(0, 1, 1)) / 4.0;
        assert!((low.get(0, 0, 0) - want).abs() < 1e-6);
        let cfg = SuperresConfig {
            flip: false,
            ..Default::default()
        };
        let b = make_batch(std::slice::from_ref(&img), &cfg, &BatchRngs::new(0, 0));
        assert_eq!(b.truth, img.data);
        assert_eq!(b.up, degrade(&img, 2).1.data);
        assert_eq!(b.shape, [1, 1, 8, 8]);
    }

    #[test]
    fn bad_scale_and_sizes_are_config_errors() {
        for (sets, size, want) in [
            (vec!["superres.scale=3"], 28, "must be 2 or 4"),
            (vec!["superres.scale=4"], 30, "multiples of the scale"),
            (vec!["superres.scale=4"], 4, "multiples of the scale"),
        ] {
            let input = spec(1, size);
            let (cfg, device) = context(&sets);
            let err = build(&TaskContext {
                config: &cfg,
                input: &input,
                device,
            })
            .err()
            .unwrap();
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn shapes_and_a_fresh_generator_returns_the_bilinear_image() {
        let input = spec(3, 16);
        let (t, model, _) = task(&["superres.scale=4"], &input);
        let imgs: Vec<Img> = (0..2).map(|k| image(3, 16, k)).collect();
        let out = t.restore(&model, &imgs);
        assert_eq!(out.len(), 2);
        // The decoder's output layer starts at zero: no residual yet.
        for (o, i) in out.iter().zip(&imgs) {
            assert_eq!((o.c, o.h, o.w), (3, 16, 16));
            let up = degrade(i, 4).1;
            for (a, b) in o.data.iter().zip(&up.data) {
                assert!((a - b).abs() < 1e-5);
            }
        }
        let d = model
            .discriminator
            .forward(Tensor::zeros([2, 3, 16, 16], &t.device));
        assert_eq!(d.dims(), [2]);
    }

    #[test]
    fn each_gan_phase_updates_only_its_network() {
        let input = spec(1, 16);
        let (t, model, cfg) = task(&[], &input);
        let mut optim = Optimizers::new(GAN_OPTIMIZERS, &build_optimizer(&cfg));
        let imgs: Vec<Img> = (0..4).map(|k| image(1, 16, k)).collect();
        let batch = make_batch(&imgs, &t.config, &BatchRngs::new(0, 0));
        let (up, truth) = tensors(batch, &t.device);
        let Gan {
            generator: gen,
            discriminator: disc,
        } = model;
        let out = Superres::generate(&gen, up, &input);
        let content = t.content(out.clone(), truth.clone());
        assert_each_phase_updates_only_its_network(gen, disc, &mut optim, truth, out, content);
    }

    #[test]
    fn overfitting_one_batch_lowers_the_content_loss_below_bilinear() {
        let input = spec(1, 16);
        let (t, model, cfg) = task(
            &["superres.flip=false", "superres.content_only_steps=0"],
            &input,
        );
        let imgs: Vec<Img> = (0..4).map(|k| image(1, 16, k)).collect();
        let batch = make_batch(&imgs, &t.config, &BatchRngs::new(0, 0));
        let mut t = Bound::new(t, model, &build_optimizer(&cfg), false);
        let first = t.step_typed(batch.clone(), 0, 3e-3);
        assert_eq!(first.items, 4);
        let mut last = first.clone();
        for step in 1..=40 {
            last = t.step_typed(batch.clone(), step, 3e-3);
        }
        assert!(
            last.loss < 0.7 * first.loss,
            "loss {} → {}",
            first.loss,
            last.loss
        );
        let metric = |s: &StepStats, k: &str| s.metrics.iter().find(|m| m.0 == k).unwrap().1;
        assert!(metric(&last, "psnr") > metric(&last, "psnr_bilinear"));
        let eval = t.task.evaluate(t.model(), &imgs).unwrap();
        assert_eq!(eval.len(), 4);
        assert!(
            eval[0].1 > eval[2].1,
            "held-in PSNR should beat bilinear: {eval:?}"
        );
    }
}
