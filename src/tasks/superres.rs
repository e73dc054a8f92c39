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
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{build_generator, PretextTask, TaskContext, TaskEntry};
use crate::config::parse_section;
use crate::data::augment::{downscale_box, hflip, resize_bilinear, resize_nearest, Img};
use crate::data::loader::{Batch, MakeBatch};
use crate::error::{Error, Result};
use crate::input::InputSpec;
use crate::nn::decoder::Generator;
use crate::nn::discriminator::Discriminator;
use crate::nn::Backbone;
use crate::report::grid::{tensor_images, write_grid, zoom_for};
use crate::train::gan::{centre, discriminator_phase, generator_phase, load_gan, save_gan};
use crate::train::image_quality::{psnr, ssim};
use crate::train::optim::build_optimizer;
use crate::train::step::StepStats;

pub const ENTRY: TaskEntry = TaskEntry {
    name: "superres",
    description: "restore an image shrunk ×2 or ×4, pixel + adversarial loss (after SRGAN, Ledig et al. 2017)",
    build,
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
    /// U-Net skips from earlier encoder stages and the input.
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

pub struct Superres {
    config: SuperresConfig,
    input: InputSpec,
    gen: Option<Generator>,
    disc: Option<Discriminator>,
    g_optim: ModuleOptimizer,
    d_optim: ModuleOptimizer,
    device: Device,
}

fn build(ctx: &TaskContext) -> Result<Box<dyn PretextTask>> {
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
    if !(config.adv_weight >= 0.0 && config.d_lr_scale >= 0.0) {
        return Err(Error::config(
            "superres.adv_weight",
            "adv_weight and d_lr_scale must be >= 0",
        ));
    }
    if config.d_width == 0 {
        return Err(Error::config("superres.d_width", "must be > 0"));
    }
    let c = ctx.input.channels;
    Ok(Box::new(Superres {
        gen: Some(build_generator(ctx, c, config.stage, config.skips, c)?),
        disc: Some(Discriminator::new(c, config.d_width, &ctx.device)),
        config,
        input: ctx.input.clone(),
        g_optim: build_optimizer(ctx.config),
        d_optim: build_optimizer(ctx.config),
        device: ctx.device.clone(),
    }))
}

/// Low-res version of `img` (box filter) and its bilinear enlargement back to full size.
pub fn degrade(img: &Img, scale: usize) -> (Img, Img) {
    let low = downscale_box(img, scale);
    let up = resize_bilinear(&low, img.h, img.w);
    (low, up)
}

/// The pure half. `images`: the bilinear enlargements of the low-res images (pixels in [0,1]);
/// `extra`: the true images.
pub fn make_batch(images: &[Img], config: &SuperresConfig, rng: &mut impl Rng) -> Batch {
    let mut up = Vec::new();
    let mut truth = Vec::new();
    let (c, h, w) = images.first().map_or((0, 0, 0), |i| (i.c, i.h, i.w));
    for img in images {
        let img = if config.flip && rng.gen_bool(0.5) {
            hflip(img)
        } else {
            img.clone()
        };
        up.extend(degrade(&img, config.scale).1.data);
        truth.extend(img.data);
    }
    Batch {
        index: 0,
        b: images.len(),
        c,
        h,
        w,
        images: up,
        labels: Vec::new(),
        extra: truth,
    }
}

/// (enlarged low-res, truth) as [b, c, h, w] tensors.
/// As [`batch_tensors`], moving the pixels out of the batch instead of copying them (the step).
fn take_tensors(batch: &mut Batch, device: &Device) -> (Tensor<4>, Tensor<4>) {
    let shape = [batch.b, batch.c, batch.h, batch.w];
    let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, shape), device);
    (
        t(std::mem::take(&mut batch.images)),
        t(std::mem::take(&mut batch.extra)),
    )
}

#[cfg_attr(not(test), allow(dead_code))]
fn batch_tensors(batch: &Batch, device: &Device) -> (Tensor<4>, Tensor<4>) {
    let shape = [batch.b, batch.c, batch.h, batch.w];
    let t = |v: &[f32]| Tensor::from_data(TensorData::new(v.to_vec(), shape), device);
    (t(&batch.images), t(&batch.extra))
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

    /// Generated images for `truth` images on the inference device.
    fn restore(&self, truth: &[Img]) -> Vec<Img> {
        let device = self.device.clone().inner();
        let gen = self
            .gen
            .as_ref()
            .expect("generator")
            .valid()
            .to_device(&device);
        let mut out = Vec::with_capacity(truth.len());
        for chunk in truth.chunks(64) {
            let (c, h, w) = (chunk[0].c, chunk[0].h, chunk[0].w);
            let up: Vec<f32> = chunk
                .iter()
                .flat_map(|i| degrade(i, self.config.scale).1.data)
                .collect();
            let up = Tensor::from_data(TensorData::new(up, [chunk.len(), c, h, w]), &device);
            out.extend(tensor_images(
                Self::generate(&gen, up, &self.input).clamp(0.0, 1.0),
                chunk.len(),
            ));
        }
        out
    }
}

impl PretextTask for Superres {
    fn make_batch(&self) -> MakeBatch {
        let config = self.config.clone();
        Arc::new(move |images, _labels, rng| make_batch(images, &config, rng))
    }

    fn step(&mut self, mut batch: Batch, lr: f64) -> StepStats {
        let (up, truth) = take_tensors(&mut batch, &self.device);
        let gen = self.gen.take().expect("generator present between steps");
        let disc = self
            .disc
            .take()
            .expect("discriminator present between steps");
        let out = Self::generate(&gen, up.clone(), &self.input);
        let mse = (out.clone().detach() - truth.clone())
            .powi_scalar(2)
            .mean()
            .into_scalar::<f32>();
        let mse_bilinear = (up - truth.clone())
            .powi_scalar(2)
            .mean()
            .into_scalar::<f32>();
        let content = self.content(out.clone(), truth.clone());
        let (disc, d) = discriminator_phase(
            disc,
            &mut self.d_optim,
            lr * self.config.d_lr_scale,
            centre(truth),
            centre(out.clone()),
        );
        let adv_weight = if batch.index < self.config.content_only_steps {
            0.0
        } else {
            self.config.adv_weight
        };
        let (gen, content, adv) = generator_phase(
            gen,
            &mut self.g_optim,
            lr,
            content,
            centre(out),
            &disc,
            adv_weight,
        );
        self.gen = Some(gen);
        self.disc = Some(disc);
        StepStats {
            loss: content,
            metrics: vec![
                ("g_adv", adv),
                ("d_loss", d.loss),
                ("d_acc_real", d.acc_real),
                ("d_acc_fake", d.acc_fake),
                ("psnr", psnr_of(mse)),
                ("psnr_bilinear", psnr_of(mse_bilinear)),
            ],
            skipped: false,
        }
    }

    fn num_params(&self) -> usize {
        self.gen.as_ref().map_or(0, |m| m.num_params())
            + self.disc.as_ref().map_or(0, |m| m.num_params())
    }

    fn encoder(&self) -> Backbone {
        self.gen
            .as_ref()
            .expect("generator present")
            .encoder
            .clone()
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let (g, d) = (self.gen.as_ref(), self.disc.as_ref());
        save_gan(
            dir,
            g.expect("generator"),
            d.expect("disc"),
            &self.g_optim,
            &self.d_optim,
        )
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
        let (g, d) = (
            self.gen.take().expect("generator"),
            self.disc.take().expect("disc"),
        );
        let (g, d) = load_gan(dir, g, d, &mut self.g_optim, &mut self.d_optim)?;
        self.gen = Some(g);
        self.disc = Some(d);
        Ok(())
    }

    fn write_samples(&mut self, batch: &Batch, dir: &Path) -> Result<()> {
        let (c, h, w) = (batch.c, batch.h, batch.w);
        let n = batch.b.min(8);
        let truth: Vec<Img> = (0..n)
            .map(|i| Img {
                c,
                h,
                w,
                data: batch.extra[i * c * h * w..(i + 1) * c * h * w].to_vec(),
            })
            .collect();
        let generated = self.restore(&truth);
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

    fn evaluate(&mut self, held_out: &[Img]) -> Result<Vec<(String, f32)>> {
        if held_out.is_empty() {
            return Ok(Vec::new());
        }
        let generated = self.restore(held_out);
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
    use crate::train::gan::flat_params;
    use rand::SeedableRng;

    fn spec(c: usize, s: usize) -> InputSpec {
        InputSpec {
            channels: c,
            height: s,
            width: s,
            mean: vec![0.4; c],
            std: vec![0.3; c],
        }
    }

    fn image(c: usize, s: usize, k: usize) -> Img {
        Img::from_fn(c, s, s, |ch, y, x| {
            ((((y * 3 + x * (k + 1)) as f32) / 2.0 + ch as f32).sin() * 0.5 + 0.5).clamp(0.0, 1.0)
        })
    }

    fn context(sets: &[&str]) -> (crate::config::PretrainConfig, Device) {
        let mut all = vec!["task=\"superres\"".to_string(), "width=4".into()];
        all.extend(sets.iter().map(|s| s.to_string()));
        let cfg = crate::config::resolve(None, &all, &crate::tasks::names()).unwrap();
        let device = Device::flex().autodiff();
        device.seed(0);
        (cfg, device)
    }

    fn task(sets: &[&str], input: &InputSpec) -> Superres {
        let (cfg, device) = context(sets);
        let config: SuperresConfig = parse_section("superres", cfg.section("superres")).unwrap();
        let ctx = TaskContext {
            config: &cfg,
            input,
            device: device.clone(),
        };
        let c = input.channels;
        Superres {
            gen: Some(build_generator(&ctx, c, config.stage, config.skips, c).unwrap()),
            disc: Some(Discriminator::new(c, 4, &device)),
            config,
            input: input.clone(),
            g_optim: build_optimizer(&cfg),
            d_optim: build_optimizer(&cfg),
            device,
        }
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
        let b = make_batch(
            std::slice::from_ref(&img),
            &cfg,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
        );
        assert_eq!(b.extra, img.data);
        assert_eq!(b.images, degrade(&img, 2).1.data);
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
        let t = task(&["superres.scale=4"], &input);
        let imgs: Vec<Img> = (0..2).map(|k| image(3, 16, k)).collect();
        let out = t.restore(&imgs);
        assert_eq!(out.len(), 2);
        // The decoder's output layer starts at zero: no residual yet.
        for (o, i) in out.iter().zip(&imgs) {
            assert_eq!((o.c, o.h, o.w), (3, 16, 16));
            let up = degrade(i, 4).1;
            for (a, b) in o.data.iter().zip(&up.data) {
                assert!((a - b).abs() < 1e-5);
            }
        }
        let d = t
            .disc
            .as_ref()
            .unwrap()
            .forward(Tensor::zeros([2, 3, 16, 16], &t.device));
        assert_eq!(d.dims(), [2]);
    }

    #[test]
    fn each_gan_phase_updates_only_its_network() {
        let input = spec(1, 16);
        let mut t = task(&[], &input);
        let imgs: Vec<Img> = (0..4).map(|k| image(1, 16, k)).collect();
        let batch = make_batch(
            &imgs,
            &t.config,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
        );
        let (up, truth) = batch_tensors(&batch, &t.device);
        let (gen, disc) = (t.gen.take().unwrap(), t.disc.take().unwrap());
        let out = Superres::generate(&gen, up, &input);
        let content = t.content(out.clone(), truth.clone());
        let (g0, d0) = (flat_params(&gen), flat_params(&disc));
        let (disc, _) = discriminator_phase(
            disc,
            &mut t.d_optim,
            1e-2,
            centre(truth),
            centre(out.clone()),
        );
        let (g1, d1) = (flat_params(&gen), flat_params(&disc));
        assert_eq!(g0, g1, "the discriminator phase changed the generator");
        assert_ne!(
            d0, d1,
            "the discriminator phase left the discriminator unchanged"
        );
        let (gen, _, _) =
            generator_phase(gen, &mut t.g_optim, 1e-2, content, centre(out), &disc, 0.5);
        let (g2, d2) = (flat_params(&gen), flat_params(&disc));
        assert_ne!(g1, g2, "the generator phase left the generator unchanged");
        assert_eq!(d1, d2, "the generator phase changed the discriminator");
    }

    #[test]
    fn overfitting_one_batch_lowers_the_content_loss_below_bilinear() {
        let input = spec(1, 16);
        let mut t = task(
            &["superres.flip=false", "superres.content_only_steps=0"],
            &input,
        );
        let imgs: Vec<Img> = (0..4).map(|k| image(1, 16, k)).collect();
        let batch = make_batch(
            &imgs,
            &t.config,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
        );
        let first = t.step(batch.clone(), 3e-3);
        let mut last = first.clone();
        for _ in 0..40 {
            last = t.step(batch.clone(), 3e-3);
        }
        assert!(
            last.loss < 0.7 * first.loss,
            "loss {} → {}",
            first.loss,
            last.loss
        );
        let metric = |s: &StepStats, k: &str| s.metrics.iter().find(|m| m.0 == k).unwrap().1;
        assert!(metric(&last, "psnr") > metric(&last, "psnr_bilinear"));
        let eval = t.evaluate(&imgs).unwrap();
        assert_eq!(eval.len(), 4);
        assert!(
            eval[0].1 > eval[2].1,
            "held-in PSNR should beat bilinear: {eval:?}"
        );
    }
}
