//! Masked autoencoder (He, Chen, Xie, Li, Dollár & Girshick 2022, "Masked Autoencoders Are
//! Scalable Vision Learners"): the image is cut into patches, 75% of them (a setting) are hidden
//! at random, a fresh draw per image; the ViT encoder sees only the visible patches — no mask
//! tokens in the encoder, which is where MAE's speed comes from — and a light decoder (fewer,
//! narrower blocks) gets the encoded visible patches back in place, a shared learned mask token
//! at every hidden one, and predicts the hidden patches' pixels. The loss is the mean squared
//! error on the hidden patches only, against each patch's pixels normalised by its own mean and
//! variance (`norm_pix_loss`, the paper's default). The inpainting task's idea at scale, and the
//! image twin of the masked language model.
//!
//! `pretext pretrain --task mae --backbone vit --data idx:../shared/data/fashion-mnist --out runs/mae`

use std::path::Path;
use std::sync::Arc;

use burn::module::Param;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{backbone, bind, Build, ImageTask, ImageTrainer};
use super::{TaskContext, TaskEntry};
use crate::config::{at_least_one, crop_scale, fraction_open, parse_section};
use crate::data::augment::{inception_crop, maybe_flip, Img};
use crate::data::loader::MakeBatch;
use crate::data::rngs::BatchRngs;
use crate::engine::step::images_tensor;
use crate::engine::{StepCtx, StepStats, Task};
use crate::error::{Error, Result};
use crate::nn::input::InputSpec;
use crate::nn::transformer::Block;
use crate::nn::vit::{patchify, sincos_2d, unpatchify, Vit};
use crate::nn::Backbone;
use crate::report::grid::{write_grid, zoom_for};

pub const ENTRY: TaskEntry = TaskEntry {
    name: "mae",
    description:
        "hide 75% of a ViT's patches, reconstruct their pixels from the rest (He et al. 2022)",
    build: Build::Image(build),
};

/// `[mae]` config section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaeConfig {
    /// Fraction of each image's patches hidden from the encoder (the number hidden is rounded so
    /// that ⌊n·(1 − ratio)⌋ stay visible, at least one of each).
    pub mask_ratio: f64,
    /// Decoder width; 0 = half the encoder's.
    pub decoder_width: usize,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Predict each patch's pixels normalised by that patch's mean and variance.
    pub norm_pix_loss: bool,
    /// Smallest area fraction of the random resized crop (1 = no crop).
    pub crop_scale_min: f32,
    /// Random horizontal flip.
    pub flip: bool,
}

impl Default for MaeConfig {
    fn default() -> Self {
        Self {
            mask_ratio: 0.75,
            decoder_width: 0,
            decoder_depth: 2,
            norm_pix_loss: true,
            crop_scale_min: 0.5,
            flip: true,
        }
    }
}

/// The decoder: encoded visible patches back in place among mask tokens → pixels of every patch.
#[derive(Module, Debug)]
pub struct MaeDecoder {
    /// Encoder width → decoder width.
    embed: Linear,
    /// [1, 1, decoder width], at every hidden patch.
    mask_token: Param<Tensor<3>>,
    blocks: Vec<Block>,
    norm: LayerNorm,
    /// Decoder width → p·p·c pixels.
    pred: Linear,
    dim: usize,
}

impl MaeDecoder {
    pub fn new(enc_dim: usize, dim: usize, depth: usize, pixels: usize, device: &Device) -> Self {
        let resid_std = 0.02 / ((2 * depth.max(1)) as f64).sqrt();
        Self {
            embed: LinearConfig::new(enc_dim, dim).init(device),
            mask_token: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, 1, dim], device),
            blocks: (0..depth)
                .map(|_| {
                    Block::new(
                        dim,
                        (dim / 32).max(1),
                        4 * dim,
                        0.0,
                        false,
                        resid_std,
                        device,
                    )
                })
                .collect(),
            norm: LayerNormConfig::new(dim).init(device),
            pred: LinearConfig::new(dim, pixels).init(device),
            dim,
        }
    }

    /// latent: the encoded visible patches [b, k, enc_dim]; `restore` [b·n]: for every patch of
    /// every image (row-major, image by image) its row in that image's [visible…, hidden…]
    /// sequence, offset by image·n → predicted pixels [b, n, p·p·c].
    pub fn forward(
        &self,
        latent: Tensor<3>,
        restore: Tensor<1, Int>,
        grid: [usize; 2],
    ) -> Tensor<3> {
        let [b, k, _] = latent.dims();
        let n = grid[0] * grid[1];
        let d = self.dim;
        let visible = self.embed.forward(latent); // [b, k, d]
        let hidden = self.mask_token.val().expand([b, n - k, d]);
        // [b, n, d] in [visible…, hidden…] order → the patches' own order.
        let mut x = Tensor::cat(vec![visible, hidden], 1)
            .reshape([b * n, d])
            .select(0, restore)
            .reshape([b, n, d]);
        x = x + sincos_2d(grid, d, &self.embed.weight.device()).unsqueeze::<3>();
        for block in &self.blocks {
            x = block.forward(x, None);
        }
        self.pred.forward(self.norm.forward(x))
    }
}

/// A ViT encoder + the MAE decoder.
#[derive(Module, Debug)]
pub struct MaeModel {
    pub backbone: Backbone,
    pub decoder: MaeDecoder,
}

impl MaeModel {
    fn vit(&self) -> &Vit {
        match &self.backbone {
            Backbone::Vit(v) => v,
            _ => unreachable!("mae is built with a ViT backbone only"),
        }
    }

    /// x: [b, c, h, w]; `keep` [b·k]: the visible patches (image·n + patch); `restore` as
    /// [`MaeDecoder::forward`] → predicted pixels of every patch [b, n, p·p·c].
    pub fn forward(
        &self,
        x: Tensor<4>,
        keep: Tensor<1, Int>,
        restore: Tensor<1, Int>,
    ) -> Tensor<3> {
        let vit = self.vit();
        let (tokens, grid) = vit.tokens(x); // [b, n, d], positions added
        let [b, n, d] = tokens.dims();
        let k = keep.dims()[0] / b;
        // The encoder sees the visible patches only: [b·n, d] → [b·k, d] → [b, k, d].
        let visible = tokens
            .reshape([b * n, d])
            .select(0, keep)
            .reshape([b, k, d]);
        self.decoder.forward(vit.encode(visible), restore, grid)
    }
}

/// A batch: normalised images and, per image, which patches the encoder sees.
#[derive(Clone, Debug)]
pub struct MaeBatch {
    /// [b, c, h, w], normalised.
    pub images: Vec<f32>,
    pub shape: [usize; 4],
    /// Visible patches, k per image, as image·n + patch (in the order drawn).
    pub keep: Vec<i64>,
    /// Per patch (image by image, row-major): its row in the image's [visible…, hidden…]
    /// sequence, offset by image·n.
    pub restore: Vec<i64>,
    /// Per patch: 1 = hidden (its pixels are the loss's targets), 0 = visible.
    pub mask: Vec<f32>,
    pub grid: [usize; 2],
}

#[derive(Clone)]
pub struct Mae {
    config: MaeConfig,
    input: InputSpec,
    patch: usize,
    device: Device,
}

fn build(ctx: &TaskContext) -> Result<Box<dyn ImageTrainer>> {
    let config: MaeConfig = parse_section("mae", ctx.config.section("mae"))?;
    let Some(_) = ctx.config.backbone.vit() else {
        return Err(Error::config(
            "backbone",
            format!(
                "mae needs a vision transformer (vit, vit-small or vit-base), found {}",
                ctx.config.backbone.name()
            ),
        ));
    };
    fraction_open("mae.mask_ratio", config.mask_ratio)?;
    crop_scale("mae.crop_scale_min", config.crop_scale_min)?;
    at_least_one("mae.decoder_depth", config.decoder_depth)?;
    let spec = ctx.config.backbone_spec(ctx.input.channels);
    let p = spec.patch_side();
    let (h, w) = (ctx.input.height, ctx.input.width);
    if p == 0 || h % p != 0 || w % p != 0 || (h / p) * (w / p) < 2 {
        return Err(Error::config(
            "patch_size",
            format!("mae needs images cut into at least 2 whole patches: {h}×{w} images, {p}-px patches"),
        ));
    }
    if config.crop_scale_min < 1.0 && h != w {
        return Err(Error::config(
            "mae.crop_scale_min",
            format!("the random resized crop needs square images, found {h}×{w}; set it to 1"),
        ));
    }
    let dec_width = if config.decoder_width == 0 {
        (spec.width / 2).max(32)
    } else {
        config.decoder_width
    };
    if dec_width % 32 != 0 {
        return Err(Error::config(
            "mae.decoder_width",
            format!("must be a multiple of 32 (the head width), found {dec_width}"),
        ));
    }
    let backbone = backbone(ctx, ctx.input.channels);
    let pixels = p * p * ctx.input.channels;
    let decoder = MaeDecoder::new(
        backbone.dim(),
        dec_width,
        config.decoder_depth,
        pixels,
        &ctx.device,
    );
    let task = Mae {
        config,
        input: ctx.input.clone(),
        patch: p,
        device: ctx.device.clone(),
    };
    Ok(bind(task, MaeModel { backbone, decoder }, ctx))
}

/// How many of `n` patches stay visible at `ratio` hidden: ⌊n·(1 − ratio)⌋, at least 1 and at
/// most n − 1.
pub fn visible_count(n: usize, ratio: f64) -> usize {
    ((n as f64 * (1.0 - ratio)).floor() as usize).clamp(1, n - 1)
}

/// The pure "damage the data, keep the answer" half: each image cropped/flipped (when
/// `augment`), normalised, and its own random choice of visible patches.
pub fn make_batch(
    images: &[Img],
    config: &MaeConfig,
    input: &InputSpec,
    patch: usize,
    augment: bool,
    rngs: &BatchRngs,
) -> MaeBatch {
    let (c, h, w) = (input.channels, input.height, input.width);
    let grid = [h / patch, w / patch];
    let n = grid[0] * grid[1];
    let k = visible_count(n, config.mask_ratio);
    let b = images.len();
    let mut out = Vec::with_capacity(b * c * h * w);
    let (mut keep, mut restore, mut mask) = (
        Vec::with_capacity(b * k),
        vec![0i64; b * n],
        vec![1f32; b * n],
    );
    let mut order: Vec<usize> = (0..n).collect();
    for (r, img) in images.iter().enumerate() {
        let rng = &mut rngs.item(r);
        let mut img = if augment && config.crop_scale_min < 1.0 {
            inception_crop(img, h, config.crop_scale_min, rng)
        } else {
            img.clone()
        };
        img = maybe_flip(img, augment && config.flip, rng);
        input.normalize(&mut img);
        out.extend_from_slice(&img.data);
        order.shuffle(rng);
        for (j, &patch) in order.iter().enumerate() {
            restore[r * n + patch] = (r * n + j) as i64;
            if j < k {
                keep.push((r * n + patch) as i64);
                mask[r * n + patch] = 0.0;
            }
        }
    }
    MaeBatch {
        images: out,
        shape: [b, c, h, w],
        keep,
        restore,
        mask,
        grid,
    }
}

/// The loss: mean squared error over the hidden patches' pixels. pred, target: [b, n, p·p·c];
/// mask: [b, n], 1 = hidden. With `norm_pix` each target patch is first standardised by its own
/// mean and (unbiased) variance, as in the paper.
pub fn masked_loss(
    pred: Tensor<3>,
    target: Tensor<3>,
    mask: Tensor<2>,
    norm_pix: bool,
) -> Tensor<1> {
    let target = if norm_pix {
        norm_patches(target)
    } else {
        target
    };
    let [b, n, _] = pred.dims();
    let per_patch = (pred - target).powi_scalar(2).mean_dim(2).reshape([b, n]);
    (per_patch * mask.clone()).sum() / mask.sum().clamp_min(1.0)
}

/// Each patch's pixels (last dim) standardised by its own mean and unbiased variance (+1e-6).
fn norm_patches(t: Tensor<3>) -> Tensor<3> {
    let mean = t.clone().mean_dim(2);
    let var = t.clone().var(2);
    (t - mean) / (var + 1e-6).sqrt()
}

impl Mae {
    /// The batch's tensors on `device`: images, keep, restore, mask.
    fn tensors(
        b: &MaeBatch,
        device: &Device,
    ) -> (Tensor<4>, Tensor<1, Int>, Tensor<1, Int>, Tensor<2>) {
        let n = b.grid[0] * b.grid[1];
        let x = images_tensor(b.images.clone(), b.shape, device);
        let ints =
            |v: &[i64]| Tensor::<1, Int>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        let mask = Tensor::<2>::from_data(TensorData::new(b.mask.clone(), [b.shape[0], n]), device);
        (x, ints(&b.keep), ints(&b.restore), mask)
    }

    /// Loss of `model` on `batch` (any device).
    fn loss(&self, model: &MaeModel, batch: &MaeBatch, device: &Device) -> Tensor<1> {
        let (x, keep, restore, mask) = Self::tensors(batch, device);
        let pred = model.forward(x.clone(), keep, restore);
        masked_loss(
            pred,
            patchify(x, self.patch),
            mask,
            self.config.norm_pix_loss,
        )
    }

    /// For pictures: normalised pixels back to [0, 1] (per-image standardised data: stretched).
    fn shown(&self, data: &[f32], c: usize, h: usize, w: usize) -> Img {
        let mut img = Img {
            c,
            h,
            w,
            data: data.to_vec(),
        };
        if self.input.per_image {
            let (lo, hi) = data
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, u), &v| (l.min(v), u.max(v)));
            let span = (hi - lo).max(1e-6);
            img.data.iter_mut().for_each(|v| *v = (*v - lo) / span);
        } else {
            let plane = h * w;
            for ch in 0..c {
                for v in &mut img.data[ch * plane..(ch + 1) * plane] {
                    *v = (*v * self.input.std[ch] + self.input.mean[ch]).clamp(0.0, 1.0);
                }
            }
        }
        img
    }
}

impl Task for Mae {
    type Model = MaeModel;
    type Batch = MaeBatch;
    type Encoder = Backbone;

    fn step(
        &mut self,
        model: MaeModel,
        batch: MaeBatch,
        cx: &mut StepCtx,
    ) -> (MaeModel, StepStats) {
        let loss = self.loss(&model, &batch, &self.device);
        let stats = StepStats::new(loss.clone().detach().into_scalar::<f32>(), Vec::new());
        let lr = cx.lr;
        (cx.descend("model", lr, model, loss), stats)
    }

    fn items(batch: &MaeBatch) -> u64 {
        batch.shape[0] as u64
    }

    fn encoder(model: &MaeModel) -> Backbone {
        model.backbone.clone()
    }
}

impl ImageTask for Mae {
    fn make_batch(&self) -> MakeBatch<MaeBatch> {
        let (config, input, patch) = (self.config.clone(), self.input.clone(), self.patch);
        Arc::new(move |images, _labels, rngs| {
            make_batch(images, &config, &input, patch, true, rngs)
        })
    }

    /// Rows of (the encoder's view: hidden patches grey | the reconstruction: visible patches as
    /// they were, hidden ones predicted | the original).
    fn write_samples(&self, model: &MaeModel, batch: &MaeBatch, dir: &Path) -> Result<()> {
        let [b, c, h, w] = batch.shape;
        let n_show = b.min(8);
        let device = self.device.clone().inner();
        let model = model.valid().to_device(&device);
        let (x, keep, restore, mask) = Self::tensors(batch, &device);
        let p = self.patch;
        let target = patchify(x.clone(), p);
        let mut pred = model.forward(x, keep, restore);
        if self.config.norm_pix_loss {
            // Predictions are in each patch's own standardised units: undo with the truth's.
            let mean = target.clone().mean_dim(2);
            let std = (target.clone().var(2) + 1e-6).sqrt();
            pred = pred * std + mean;
        }
        let m = mask.unsqueeze_dim::<3>(2); // [b, n, 1]
        let filled = target.clone() * (m.clone().neg() + 1.0) + pred * m.clone();
        let greyed = target.clone() * (m.clone().neg() + 1.0);
        let to_vec = |t: Tensor<3>| {
            unpatchify(t, p, c, batch.grid)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32")
        };
        let (filled, greyed) = (to_vec(filled), to_vec(greyed));
        let plane = c * h * w;
        let rows: Vec<Vec<Img>> = (0..n_show)
            .map(|i| {
                let r = i * plane..(i + 1) * plane;
                let mut view = self.shown(&greyed[r.clone()], c, h, w);
                // Hidden patches shown mid-grey, whatever the normalisation.
                for (j, &hidden) in batch.mask[i * batch.grid[0] * batch.grid[1]..]
                    .iter()
                    .take(batch.grid[0] * batch.grid[1])
                    .enumerate()
                {
                    if hidden > 0.5 {
                        let (gy, gx) = (j / batch.grid[1], j % batch.grid[1]);
                        for ch in 0..c {
                            for y in gy * p..(gy + 1) * p {
                                for x in gx * p..(gx + 1) * p {
                                    view.data[(ch * h + y) * w + x] = 0.5;
                                }
                            }
                        }
                    }
                }
                vec![
                    view,
                    self.shown(&filled[r.clone()], c, h, w),
                    self.shown(&batch.images[r], c, h, w),
                ]
            })
            .collect();
        write_grid(&dir.join("samples-mae.png"), &rows, zoom_for(h))
    }

    /// The masked-patch loss on (up to 512 of) the held-out images, unaugmented, with a fixed
    /// draw of hidden patches.
    fn evaluate(&self, model: &MaeModel, held_out: &[Img]) -> Result<Vec<(String, f32)>> {
        if held_out.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.device.clone().inner();
        let model = model.valid().to_device(&device);
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (k, chunk) in held_out[..held_out.len().min(512)].chunks(128).enumerate() {
            // Fixed masks: the same held-out measurement at every evaluation.
            let batch = make_batch(
                chunk,
                &self.config,
                &self.input,
                self.patch,
                false,
                &BatchRngs::new(0, k as u64),
            );
            let loss = self.loss(&model, &batch, &device).into_scalar::<f32>();
            sum += loss as f64 * chunk.len() as f64;
            count += chunk.len();
        }
        Ok(vec![("masked_loss".into(), (sum / count as f64) as f32)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PretrainConfig;
    use crate::nn::BackboneKind;

    fn spec(c: usize, s: usize) -> InputSpec {
        InputSpec::square(c, s, 0.5, 0.25)
    }

    fn images(n: usize, c: usize, s: usize) -> Vec<Img> {
        (0..n)
            .map(|k| {
                Img::from_fn(c, s, s, move |ch, y, x| {
                    ((y * 3 + x * (k + 1) + ch) % 7) as f32 / 7.0
                })
            })
            .collect()
    }

    fn small_config(task: &str) -> PretrainConfig {
        PretrainConfig {
            task: task.into(),
            backbone: BackboneKind::Vit,
            width: 32,
            ..PretrainConfig::default()
        }
    }

    #[test]
    fn the_mask_ratio_is_exact_per_image_and_differs_across_images() {
        let cfg = MaeConfig::default();
        let input = spec(1, 16);
        let b = make_batch(
            &images(6, 1, 16),
            &cfg,
            &input,
            4,
            true,
            &BatchRngs::new(3, 0),
        );
        let n = 16;
        let k = visible_count(n, 0.75);
        assert_eq!(k, 4);
        assert_eq!(b.keep.len(), 6 * k);
        let masks: Vec<&[f32]> = b.mask.chunks(n).collect();
        for (r, m) in masks.iter().enumerate() {
            assert_eq!(m.iter().filter(|&&v| v == 1.0).count(), n - k, "image {r}");
            // keep lists exactly this image's visible patches.
            for &g in &b.keep[r * k..(r + 1) * k] {
                let g = g as usize;
                assert_eq!(g / n, r);
                assert_eq!(m[g % n], 0.0);
            }
        }
        assert!(
            masks.windows(2).any(|w| w[0] != w[1]),
            "every image got the same mask"
        );
        // restore is a permutation of each image's rows, the visible patches first.
        for (r, m) in masks.iter().enumerate() {
            let mut rows: Vec<i64> = b.restore[r * n..(r + 1) * n].to_vec();
            for (j, &row) in rows.iter().enumerate() {
                assert_eq!((row as usize) < r * n + k, m[j] == 0.0);
            }
            rows.sort();
            assert_eq!(
                rows,
                ((r * n) as i64..((r + 1) * n) as i64).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn loss_is_zero_on_a_perfect_reconstruction_of_the_hidden_patches_whatever_the_visible() {
        let device = Device::flex();
        let t = |v: Vec<f32>| Tensor::<3>::from_data(TensorData::new(v, [1, 3, 4]), &device);
        let target: Vec<f32> = (0..12).map(|i| (i * i % 5) as f32).collect();
        let mut pred = target.clone();
        // Patch 1 is visible: anything there.
        for v in &mut pred[4..8] {
            *v += 100.0;
        }
        let mask = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0], [1, 3]), &device);
        let raw = masked_loss(t(pred.clone()), t(target.clone()), mask.clone(), false);
        assert_eq!(raw.into_scalar::<f32>(), 0.0);
        // With norm_pix the perfect prediction is the standardised target.
        let normed = norm_patches(t(target.clone()));
        let mut normed_v = normed.into_data().try_to_vec::<f32>().unwrap();
        normed_v[4..8].iter_mut().for_each(|v| *v = -7.0);
        let l = masked_loss(t(normed_v), t(target.clone()), mask.clone(), true);
        assert!(l.into_scalar::<f32>().abs() < 1e-10);
        // A wrong hidden patch costs its squared error / pixels / hidden patches.
        let mut bad = target.clone();
        bad[0] += 2.0;
        let l = masked_loss(t(bad), t(target), mask, false).into_scalar::<f32>();
        assert!((l - 4.0 / 4.0 / 2.0).abs() < 1e-6, "{l}");
    }

    #[test]
    fn the_encoder_sees_only_the_visible_patches() {
        let device = Device::flex();
        let cfg = MaeConfig::default();
        let input = spec(1, 16);
        let model = crate::platform::device::seeded(&device, 1, || MaeModel {
            backbone: Backbone::Vit(Vit::new(1, 32, 2, 1, 4, &device)),
            decoder: MaeDecoder::new(32, 32, 1, 16, &device),
        });
        let b = make_batch(
            &images(2, 1, 16),
            &cfg,
            &input,
            4,
            false,
            &BatchRngs::new(0, 0),
        );
        let (x, keep, restore, _) = Mae::tensors(&b, &device);
        // The encoder's sequence is the visible patches: 4 of 16.
        let (tokens, grid) = model.vit().tokens(x.clone());
        let visible = tokens
            .reshape([32, 32])
            .select(0, keep.clone())
            .reshape([2, 4, 32]);
        assert_eq!(model.vit().encode(visible).dims(), [2, 4, 32]);
        assert_eq!(grid, [4, 4]);
        let pred = model.forward(x.clone(), keep.clone(), restore.clone());
        assert_eq!(pred.dims(), [2, 16, 16]);
        // Changing a hidden patch's pixels changes no prediction (the encoder never saw it);
        // changing a visible one does.
        let perturb = |patch: usize| {
            let mut imgs = b.images.clone();
            let (gy, gx) = (patch / 4, patch % 4);
            for y in gy * 4..gy * 4 + 4 {
                for x in gx * 4..gx * 4 + 4 {
                    imgs[y * 16 + x] += 3.0;
                }
            }
            let x = images_tensor(imgs, b.shape, &device);
            let p = model.forward(x, keep.clone(), restore.clone());
            (p - pred.clone()).abs().max().into_scalar::<f32>()
        };
        let hidden = (0..16).find(|&j| b.mask[j] == 1.0).unwrap();
        let visible = (0..16).find(|&j| b.mask[j] == 0.0).unwrap();
        assert_eq!(perturb(hidden), 0.0);
        assert!(perturb(visible) > 1e-4);
    }

    #[test]
    fn overfits_one_batch() {
        let device = Device::flex().autodiff();
        let mut cfg = small_config("mae");
        cfg.lr = 3e-3;
        cfg.warmup_steps = 0;
        cfg.sections.insert(
            "mae".into(),
            toml::toml! { crop_scale_min = 1.0
            flip = false
            decoder_width = 32 }
            .into(),
        );
        let input = spec(1, 16);
        let mut trainer = crate::platform::device::seeded(&device, 0, || {
            build(&TaskContext {
                config: &cfg,
                input: &input,
                device: device.clone(),
            })
        })
        .unwrap();
        let make = trainer.make_batch();
        let batch = make(&images(4, 1, 16), &[], &BatchRngs::new(0, 0));
        let losses: Vec<f32> = (0..150)
            .map(|s| trainer.step(batch.clone(), s, 3e-3).loss)
            .collect();
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(last < 0.3 * first, "loss {first} → {last}");
    }

    #[test]
    fn a_convolutional_backbone_and_bad_geometry_are_config_errors() {
        let device = Device::flex().autodiff();
        let input = spec(1, 16);
        let try_build = |cfg: &PretrainConfig, input: &InputSpec| {
            build(&TaskContext {
                config: cfg,
                input,
                device: device.clone(),
            })
            .err()
            .expect("an error")
            .to_string()
        };
        let conv = PretrainConfig {
            task: "mae".into(),
            ..PretrainConfig::default()
        };
        assert!(try_build(&conv, &input).contains("vision transformer"));
        let mut odd = small_config("mae");
        odd.patch_size = 5;
        assert!(try_build(&odd, &input).contains("patch_size"));
        let mut ratio = small_config("mae");
        ratio
            .sections
            .insert("mae".into(), toml::toml! { mask_ratio = 1.0 }.into());
        assert!(try_build(&ratio, &input).contains("mae.mask_ratio"));
    }
}
