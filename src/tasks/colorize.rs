//! Colorization (Zhang, Isola & Efros 2016, "Colorful Image Colorization"): a colour image is
//! converted to CIE Lab; the network sees the lightness L and predicts the colour channels ab.
//! Predicting plausible colour needs to recognise what is in the picture.
//!
//! `pretext pretrain --task colorize --data folder:../shared/data/photos --out runs/col`
//!
//! Two losses (`colorize.loss`):
//! - `classification` (the paper's): ab is quantised into the in-gamut cells of a grid of step
//!   10; each pixel's target is a soft encoding over its 5 nearest bins (Gaussian, σ = 5); pixels
//!   are weighted by class rebalancing — the empirical prior of the bins (accumulated over the
//!   batches seen so far, smoothed with a Gaussian of σ = 5 in ab) mixed with a uniform
//!   distribution (λ = 0.5), inverted and normalised to mean 1 under the prior.
//! - `l2` / `smooth_l1` regression of ab / 110.
//!
//! Images without colour (mean chroma below `min_chroma`) are kept out of the loss; grayscale
//! datasets are refused. The encoder gets one channel, L/100 normalised as (L/100 − 0.5)/0.25,
//! and `encoder.json` records `input_transform = "lightness"`, so `pretext transfer` converts the
//! downstream images to lightness the same way.

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

use serde::{Deserialize, Serialize};

use super::{bind, build_generator, Build, ImageTask, ImageTrainer};
use super::{TaskContext, TaskEntry};
use crate::config::{count_in, in_range, parse_section, positive};
use crate::data::augment::{lab_to_rgb, maybe_flip, rgb_to_lab, Img};
use crate::data::loader::MakeBatch;
use crate::data::rngs::BatchRngs;
use crate::engine::step::images_tensor;
use crate::engine::{StepCtx, StepStats, Task};
use crate::error::{Error, Result};
use crate::nn::decoder::Generator;
use crate::nn::input::{InputSpec, InputTransform};
use crate::nn::Backbone;
use crate::platform::fsio::write_atomic;
use crate::report::grid::{tensor_images, write_grid, zoom_for};

pub const ENTRY: TaskEntry = TaskEntry {
    name: "colorize",
    description: "predict the colour (Lab ab) of an image from its lightness (Zhang et al. 2016)",
    build: Build::Image(build),
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColorLoss {
    Classification,
    L2,
    SmoothL1,
}

/// `[colorize]` config section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColorizeConfig {
    pub loss: ColorLoss,
    /// σ of the Gaussian soft encoding over the nearest bins (ab units).
    pub sigma: f32,
    /// Bins each pixel's soft target spreads over.
    pub neighbours: usize,
    /// λ: weight of the uniform distribution mixed into the prior for class rebalancing
    /// (1 = no rebalancing).
    pub rebalance: f32,
    /// σ of the Gaussian that smooths the empirical prior (ab units).
    pub prior_sigma: f32,
    /// Images whose mean chroma √(a²+b²) is below this are left out of the loss.
    pub min_chroma: f32,
    /// Temperature of the annealed mean that turns bin probabilities into a colour (samples).
    pub temperature: f32,
    /// Random horizontal flip.
    pub flip: bool,
    /// Encoder stage the decoder starts from; 0 = the backbone's last stage (the whole encoder
    /// is trained; stages above the chosen one get no gradient and transfer untrained).
    pub stage: usize,
    /// U-Net skips from earlier encoder stages and the input. Off by default: with skips the
    /// decoder can take the fine detail from the early stages and the deep ones (what transfers)
    /// learn less; on gives sharper pictures.
    pub skips: bool,
}

impl Default for ColorizeConfig {
    fn default() -> Self {
        Self {
            loss: ColorLoss::Classification,
            sigma: 5.0,
            neighbours: 5,
            rebalance: 0.5,
            prior_sigma: 5.0,
            min_chroma: 2.0,
            temperature: 0.38,
            flip: true,
            stage: 0,
            skips: false,
        }
    }
}

/// Grid step of the ab quantisation, and the grid's extent.
const STEP: f32 = 10.0;
const GRID_MIN: f32 = -110.0;
const GRID_N: usize = 23;
/// Encoder input: (L/100 - MEAN) / STD.
const L_MEAN: f32 = 0.5;
const L_STD: f32 = 0.25;
/// Regression targets are ab / AB_SCALE.
const AB_SCALE: f32 = 110.0;

/// The in-gamut ab bins: cells of the grid that some sRGB colour falls into.
#[derive(Clone, Debug)]
pub struct AbBins {
    /// Bin centres (a, b).
    pub centres: Vec<[f32; 2]>,
    /// Grid cell (row-major, a then b) → bin index.
    cell: Vec<Option<usize>>,
}

impl AbBins {
    /// Sample the sRGB cube at 48 levels per channel and keep every grid cell that is hit.
    pub fn in_gamut() -> Self {
        let n = 48;
        let lv = |i: usize| i as f32 / (n - 1) as f32;
        let cube = Img::from_fn(3, n * n, n, |c, y, x| match c {
            0 => lv(y / n),
            1 => lv(y % n),
            _ => lv(x),
        });
        let lab = rgb_to_lab(&cube);
        let plane = n * n * n;
        let mut hit = vec![false; GRID_N * GRID_N];
        for p in 0..plane {
            if let Some(k) = cell_of(lab.data[plane + p], lab.data[2 * plane + p]) {
                hit[k] = true;
            }
        }
        let mut centres = Vec::new();
        let mut cell = vec![None; GRID_N * GRID_N];
        for (k, &h) in hit.iter().enumerate() {
            if h {
                cell[k] = Some(centres.len());
                centres.push([
                    GRID_MIN + STEP * (k / GRID_N) as f32,
                    GRID_MIN + STEP * (k % GRID_N) as f32,
                ]);
            }
        }
        Self { centres, cell }
    }

    pub fn len(&self) -> usize {
        self.centres.len()
    }

    pub fn is_empty(&self) -> bool {
        self.centres.is_empty()
    }

    /// The `k` bins nearest to (a, b), nearest first, with squared distances.
    pub fn nearest(&self, a: f32, b: f32, k: usize) -> Vec<(usize, f32)> {
        let (ia, ib) = (grid_index(a), grid_index(b));
        let mut found: Vec<(usize, f32)> = Vec::with_capacity(25);
        for da in -2i32..=2 {
            for db in -2i32..=2 {
                let (ra, rb) = (ia as i32 + da, ib as i32 + db);
                if !(0..GRID_N as i32).contains(&ra) || !(0..GRID_N as i32).contains(&rb) {
                    continue;
                }
                if let Some(q) = self.cell[ra as usize * GRID_N + rb as usize] {
                    found.push((q, dist2(self.centres[q], a, b)));
                }
            }
        }
        if found.len() < k {
            // Far outside the gamut (never for real sRGB pixels): search every bin.
            found = (0..self.len())
                .map(|q| (q, dist2(self.centres[q], a, b)))
                .collect();
        }
        found.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
        found.truncate(k);
        found
    }

    /// Soft encoding: the `k` nearest bins with Gaussian weights (σ = `sigma`) summing to 1.
    pub fn soft_encode(&self, a: f32, b: f32, k: usize, sigma: f32) -> Vec<(usize, f32)> {
        let near = self.nearest(a, b, k);
        let w: Vec<f32> = near
            .iter()
            .map(|&(_, d2)| (-d2 / (2.0 * sigma * sigma)).exp())
            .collect();
        let sum: f32 = w.iter().sum::<f32>().max(1e-12);
        near.iter()
            .zip(w)
            .map(|(&(q, _), w)| (q, w / sum))
            .collect()
    }

    /// Class-rebalancing weights from bin `counts`: smooth the empirical distribution with a
    /// Gaussian (σ = `prior_sigma`), mix with uniform (`lambda`), invert, and normalise so the
    /// expected weight under the smoothed prior is 1.
    pub fn rebalance_weights(&self, counts: &[f64], prior_sigma: f32, lambda: f32) -> Vec<f32> {
        let q = self.len();
        let total: f64 = counts.iter().sum();
        if total <= 0.0 {
            return vec![1.0; q];
        }
        let mut smooth = vec![0f64; q];
        for (i, ci) in self.centres.iter().enumerate() {
            for (j, &n) in counts.iter().enumerate() {
                if n > 0.0 {
                    let d2 = dist2(self.centres[j], ci[0], ci[1]) as f64;
                    smooth[i] += n * (-d2 / (2.0 * (prior_sigma as f64).powi(2))).exp();
                }
            }
        }
        let s: f64 = smooth.iter().sum();
        let lambda = lambda as f64;
        let w: Vec<f64> = smooth
            .iter()
            .map(|p| 1.0 / ((1.0 - lambda) * p / s + lambda / q as f64))
            .collect();
        let expect: f64 = smooth.iter().zip(&w).map(|(p, w)| p / s * w).sum();
        w.iter().map(|w| (w / expect) as f32).collect()
    }
}

fn grid_index(v: f32) -> usize {
    (((v - GRID_MIN) / STEP).round().max(0.0) as usize).min(GRID_N - 1)
}

fn cell_of(a: f32, b: f32) -> Option<usize> {
    let inside = |v: f32| (GRID_MIN - STEP / 2.0..-GRID_MIN + STEP / 2.0).contains(&v);
    (inside(a) && inside(b)).then(|| grid_index(a) * GRID_N + grid_index(b))
}

fn dist2(c: [f32; 2], a: f32, b: f32) -> f32 {
    (c[0] - a).powi(2) + (c[1] - b).powi(2)
}

/// Lightness in, colour as the answer.
#[derive(Clone, Debug)]
pub struct ColorizeBatch {
    /// Normalised lightness (L/100 − 0.5)/0.25: [b, 1, h, w].
    pub lightness: Vec<f32>,
    pub shape: [usize; 4],
    /// 1 for images with colour, 0 for those left out of the loss.
    pub keep: Vec<u32>,
    /// The true colour ab in Lab units: [b, 2, h, w].
    pub ab: Vec<f32>,
    /// Classification loss only (empty otherwise): each pixel's `k` target bins, nearest first,
    /// [b, k, h, w] …
    pub bins: Vec<u32>,
    /// … and their soft-encoding weights, [b, k, h, w].
    pub weights: Vec<f32>,
}

#[derive(Clone)]
pub struct Colorize {
    config: ColorizeConfig,
    bins: Arc<AbBins>,
    /// Kept pixels per bin (nearest bin) over all batches so far: the empirical prior.
    counts: Vec<f64>,
    device: Device,
}

fn build(ctx: &TaskContext) -> Result<Box<dyn ImageTrainer>> {
    let (task, gen) = Colorize::new(ctx)?;
    Ok(bind(task, gen, ctx))
}

impl Colorize {
    /// The task and its generator (one input channel, lightness), or a config error.
    fn new(ctx: &TaskContext) -> Result<(Self, Generator)> {
        let config: ColorizeConfig = parse_section("colorize", ctx.config.section("colorize"))?;
        if ctx.input.channels != 3 {
            return Err(Error::Usage(format!(
                "colorize needs colour (3-channel RGB) images, but {} has {} channel(s); \
                 use superres or inpaint on grayscale data",
                ctx.config.data, ctx.input.channels
            )));
        }
        count_in("colorize.neighbours", config.neighbours, 1, 25)?;
        in_range("colorize.rebalance", config.rebalance, 0.0, 1.0)?;
        positive("colorize.sigma", config.sigma)?;
        positive("colorize.prior_sigma", config.prior_sigma)?;
        positive("colorize.temperature", config.temperature)?;
        let bins = Arc::new(AbBins::in_gamut());
        let out = match config.loss {
            ColorLoss::Classification => bins.len(),
            ColorLoss::L2 | ColorLoss::SmoothL1 => 2,
        };
        let gen = build_generator(ctx, 1, config.stage, config.skips, out)?;
        let task = Colorize {
            counts: vec![0.0; bins.len()],
            bins,
            config,
            device: ctx.device.clone(),
        };
        Ok((task, gen))
    }
}

/// The pure half: lightness, which images have colour, the true ab and (for classification)
/// each pixel's soft target over the bins (see [`ColorizeBatch`]).
pub fn make_batch(
    images: &[Img],
    config: &ColorizeConfig,
    bins: &AbBins,
    rngs: &BatchRngs,
) -> ColorizeBatch {
    let (h, w) = images.first().map_or((0, 0), |i| (i.h, i.w));
    let (plane, k) = (h * w, config.neighbours);
    let classify = config.loss == ColorLoss::Classification;
    let mut l = Vec::with_capacity(images.len() * plane);
    let mut ab = Vec::with_capacity(images.len() * 2 * plane);
    let (mut idx, mut wts) = (Vec::new(), Vec::new());
    let mut keep = Vec::with_capacity(images.len());
    for (i, img) in images.iter().enumerate() {
        let rng = &mut rngs.item(i);
        let img = maybe_flip(img.clone(), config.flip, rng);
        let lab = rgb_to_lab(&img);
        l.extend(
            lab.data[..plane]
                .iter()
                .map(|v| (v / 100.0 - L_MEAN) / L_STD),
        );
        let (a, b) = (&lab.data[plane..2 * plane], &lab.data[2 * plane..]);
        let chroma = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a * a + b * b).sqrt())
            .sum::<f32>()
            / plane as f32;
        keep.push(u32::from(chroma >= config.min_chroma));
        ab.extend_from_slice(&lab.data[plane..]);
        if classify {
            let start = idx.len();
            idx.resize(start + k * plane, 0);
            wts.resize(start + k * plane, 0.0);
            for p in 0..plane {
                for (j, (q, wq)) in bins
                    .soft_encode(a[p], b[p], k, config.sigma)
                    .into_iter()
                    .enumerate()
                {
                    idx[start + j * plane + p] = q as u32;
                    wts[start + j * plane + p] = wq;
                }
            }
        }
    }
    ColorizeBatch {
        lightness: l,
        shape: [images.len(), 1, h, w],
        keep,
        ab,
        bins: idx,
        weights: wts,
    }
}

impl Colorize {
    /// This part's share of the loss over the global batch: the per-pixel loss of generator
    /// output `out` against the part's targets, weighted (image kept × class rebalancing),
    /// summed, over the kept pixels of the whole global batch ([`StepCtx::all_reduce`]; one part:
    /// the part's mean).
    ///
    /// Classification adds the global batch's kept pixels to the empirical prior first, so the
    /// prior (and every replica's copy of it) does not depend on how the batch is cut.
    fn loss(
        &mut self,
        out: Tensor<4>,
        batch: &ColorizeBatch,
        device: &Device,
        cx: &StepCtx,
    ) -> Tensor<1> {
        let [b, _, h, w] = batch.shape;
        let plane = h * w;
        let keep: Vec<f32> = batch.keep.iter().map(|&k| k as f32).collect();
        let classify = self.config.loss == ColorLoss::Classification;
        let k = self.config.neighbours;
        // Over every part: the nearest bin of every kept pixel (classification), then the kept
        // pixels.
        let q = if classify { self.counts.len() } else { 0 };
        let mut totals = vec![0.0f64; q + 1];
        totals[q] = (keep.iter().sum::<f32>() * plane as f32) as f64;
        if classify {
            for i in (0..b).filter(|&i| batch.keep[i] == 1) {
                for p in 0..plane {
                    totals[batch.bins[i * k * plane + p] as usize] += 1.0;
                }
            }
        }
        cx.all_reduce(&mut totals);
        let kept_pixels = totals[q] as f32;
        let keep_t = Tensor::<1>::from_floats(keep.as_slice(), device).reshape([b, 1, 1, 1]);
        let ab = Tensor::<4>::from_data(TensorData::new(batch.ab.clone(), [b, 2, h, w]), device);
        let per_pixel = match self.config.loss {
            ColorLoss::Classification => {
                let (bins, wts) = (&batch.bins, &batch.weights);
                // The prior counts the nearest bin of every kept pixel, this batch included.
                self.counts
                    .iter_mut()
                    .zip(&totals)
                    .for_each(|(c, t)| *c += t);
                let rw = self.bins.rebalance_weights(
                    &self.counts,
                    self.config.prior_sigma,
                    self.config.rebalance,
                );
                let pix_w: Vec<f32> = (0..b * plane)
                    .map(|j| rw[bins[(j / plane) * k * plane + j % plane] as usize])
                    .collect();
                let idx: Vec<i64> = bins.iter().map(|&q| q as i64).collect();
                let idx = Tensor::<4, Int>::from_data(TensorData::new(idx, [b, k, h, w]), device);
                let wts =
                    Tensor::<4>::from_data(TensorData::new(wts.clone(), [b, k, h, w]), device);
                let pix_w = Tensor::<4>::from_data(TensorData::new(pix_w, [b, 1, h, w]), device);
                // Soft cross-entropy: -Σ_j w_j log p(bin_j), only the k target bins are non-zero.
                let logp = log_softmax(out, 1).gather(1, idx);
                (logp * wts).sum_dim(1).neg() * pix_w
            }
            ColorLoss::L2 => (out - ab / AB_SCALE).powi_scalar(2).sum_dim(1),
            ColorLoss::SmoothL1 => {
                let beta = 0.1;
                let d = (out - ab / AB_SCALE).abs();
                let m = d.clone().clamp_max(beta);
                (m.clone() * (d - m * 0.5) / beta).sum_dim(1)
            }
        };
        (per_pixel * keep_t).sum() / kept_pixels.max(1.0)
    }

    /// Generator output → ab [b, 2, h, w] (annealed mean of the bins for classification).
    fn predict_ab(&self, out: Tensor<4>) -> Tensor<4> {
        match self.config.loss {
            ColorLoss::Classification => {
                let device = out.device();
                let [b, q, h, w] = out.dims();
                let p = softmax(log_softmax(out, 1) / self.config.temperature as f64, 1);
                let centres: Vec<f32> = self
                    .bins
                    .centres
                    .iter()
                    .flat_map(|c| [c[0], c[1]])
                    .collect();
                let centres = Tensor::<2>::from_data(TensorData::new(centres, [q, 2]), &device);
                // [b, q, h, w] → [b, h·w, q] · [q, 2] → [b, h·w, 2] → [b, 2, h, w]
                let p = p.reshape([b, q, h * w]).swap_dims(1, 2);
                p.matmul(centres.unsqueeze::<3>())
                    .swap_dims(1, 2)
                    .reshape([b, 2, h, w])
            }
            _ => out * AB_SCALE,
        }
    }
}

impl Task for Colorize {
    type Model = Generator;
    type Batch = ColorizeBatch;
    type Encoder = Backbone;

    fn step(
        &mut self,
        model: Generator,
        mut batch: ColorizeBatch,
        cx: &mut StepCtx,
    ) -> (Generator, StepStats) {
        let device = self.device.clone();
        let x = images_tensor(std::mem::take(&mut batch.lightness), batch.shape, &device);
        let out = model.forward(x);
        let loss = self.loss(out, &batch, &device, cx);
        // This part's share of the global loss, reported × parts: the engine averages the
        // parts' numbers.
        let value = loss.clone().detach().into_scalar::<f32>() * cx.parts() as f32;
        let kept = batch.keep.iter().sum::<u32>() as f32 / batch.shape[0] as f32;
        let stats = StepStats::new(value, vec![("kept", kept)]);
        let grads = GradientsParams::from_grads(cx.backward_global(loss), &model);
        (cx.update("model", cx.lr, model, grads), stats)
    }

    fn items(batch: &ColorizeBatch) -> u64 {
        batch.shape[0] as u64
    }

    fn encoder(model: &Generator) -> Backbone {
        model.encoder.clone()
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        write_atomic(
            &dir.join("ab_prior.json"),
            &serde_json::to_vec(&self.counts).expect("json"),
        )
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("ab_prior.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let counts: Vec<f64> =
            serde_json::from_slice(&bytes).map_err(|e| Error::checkpoint(&path, e))?;
        if counts.len() != self.bins.len() {
            return Err(Error::checkpoint(
                &path,
                format!("{} bins, expected {}", counts.len(), self.bins.len()),
            ));
        }
        self.counts = counts;
        Ok(())
    }
}

impl ImageTask for Colorize {
    fn make_batch(&self) -> MakeBatch<ColorizeBatch> {
        let config = self.config.clone();
        let bins = self.bins.clone();
        Arc::new(move |images, _labels, rngs| make_batch(images, &config, &bins, rngs))
    }

    fn encoder_input(&self, data: &InputSpec) -> (InputSpec, InputTransform) {
        let spec = InputSpec {
            channels: 1,
            height: data.height,
            width: data.width,
            mean: vec![L_MEAN],
            std: vec![L_STD],
            per_image: false,
        };
        (spec, InputTransform::Lightness)
    }

    fn write_samples(&self, model: &Generator, batch: &ColorizeBatch, dir: &Path) -> Result<()> {
        let device = self.device.clone().inner();
        let [b, _, h, w] = batch.shape;
        let b = b.min(8);
        let plane = h * w;
        let gen = model.valid().to_device(&device);
        let x = Tensor::<4>::from_data(
            TensorData::new(batch.lightness[..b * plane].to_vec(), [b, 1, h, w]),
            &device,
        );
        let ab = tensor_images(self.predict_ab(gen.forward(x)), b);
        let mut rows = Vec::new();
        for (i, ab_pred) in ab.iter().enumerate() {
            let l: Vec<f32> = batch.lightness[i * plane..(i + 1) * plane]
                .iter()
                .map(|v| (v * L_STD + L_MEAN) * 100.0)
                .collect();
            let lab = |ab: &[f32]| Img {
                c: 3,
                h,
                w,
                data: l.iter().copied().chain(ab.iter().copied()).collect(),
            };
            let truth_ab = &batch.ab[i * 2 * plane..(i + 1) * 2 * plane];
            let gray = Img {
                c: 1,
                h,
                w,
                data: l.iter().map(|v| v / 100.0).collect(),
            };
            rows.push(vec![
                gray,
                lab_to_rgb(&lab(&ab_pred.data)),
                lab_to_rgb(&lab(truth_ab)),
            ]);
        }
        write_grid(&dir.join("samples-colorize.png"), &rows, zoom_for(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::optim::build_optimizer;
    use crate::engine::Bound;

    fn colour_image(s: usize, k: usize) -> Img {
        Img::from_fn(3, s, s, |c, y, x| {
            (((y + k) as f32 / 3.0 + (x * (c + 1)) as f32 / 5.0 + c as f32).sin() * 0.5 + 0.5)
                .clamp(0.0, 1.0)
        })
    }

    /// The task bound to its generator and optimiser, as a run has it (no skipping).
    fn task(sets: &[&str], s: usize) -> Bound<Colorize> {
        let mut all = vec!["task=\"colorize\"".to_string(), "width=4".into()];
        all.extend(sets.iter().map(|s| s.to_string()));
        let cfg: crate::config::PretrainConfig =
            crate::config::resolve(None, &all, &crate::tasks::names()).unwrap();
        let input = InputSpec {
            channels: 3,
            height: s,
            width: s,
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
            per_image: false,
        };
        let device = Device::flex().autodiff();
        device.seed(0);
        let (task, gen) = Colorize::new(&TaskContext {
            config: &cfg,
            input: &input,
            device,
        })
        .unwrap();
        Bound::new(task, gen, &build_optimizer(&cfg), false)
    }

    #[test]
    fn in_gamut_bins_and_soft_encoding() {
        let bins = AbBins::in_gamut();
        // Zhang et al. report 313 in-gamut bins; the exact count depends on the gamut sampling.
        assert!((250..=330).contains(&bins.len()), "{} bins", bins.len());
        // Grey (a = b = 0) is a bin; pure red (a 80, b 67) falls in the cell (80, 70).
        let near = bins.nearest(0.0, 0.0, 5);
        assert_eq!(bins.centres[near[0].0], [0.0, 0.0]);
        assert_eq!(
            bins.centres[bins.nearest(80.09, 67.2, 1)[0].0],
            [80.0, 70.0]
        );
        let soft = bins.soft_encode(3.0, -2.0, 5, 5.0);
        assert_eq!(soft.len(), 5);
        assert!((soft.iter().map(|s| s.1).sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(
            soft.windows(2).all(|w| w[0].1 >= w[1].1),
            "nearest bins weigh most"
        );
        // Far outside the grid: still k bins.
        assert_eq!(bins.nearest(500.0, 500.0, 5).len(), 5);
    }

    #[test]
    fn rebalancing_favours_rare_colours_and_averages_to_one() {
        let bins = AbBins::in_gamut();
        let mut counts = vec![0.0; bins.len()];
        let grey = bins.nearest(0.0, 0.0, 1)[0].0;
        let red = bins.nearest(80.0, 70.0, 1)[0].0;
        counts[grey] = 1000.0;
        counts[red] = 10.0;
        let w = bins.rebalance_weights(&counts, 5.0, 0.5);
        assert!(
            w[red] > w[grey],
            "rare red {} vs common grey {}",
            w[red],
            w[grey]
        );
        // λ = 1: uniform, every weight 1.
        assert!(bins
            .rebalance_weights(&counts, 5.0, 1.0)
            .iter()
            .all(|&v| (v - 1.0).abs() < 1e-4));
        // The common colour is weighted down, below the mean weight of 1.
        assert!(
            w[grey] < 1.0 && w[red] > 1.0,
            "grey {} red {}",
            w[grey],
            w[red]
        );
    }

    #[test]
    fn batch_keeps_colour_images_and_skips_grey_ones() {
        let grey = Img::from_fn(3, 8, 8, |_, y, x| (y * 8 + x) as f32 / 64.0);
        let imgs = vec![colour_image(8, 0), grey];
        let cfg = ColorizeConfig {
            flip: false,
            ..Default::default()
        };
        let bins = AbBins::in_gamut();
        let b = make_batch(&imgs, &cfg, &bins, &BatchRngs::new(0, 0));
        assert_eq!(b.shape, [2, 1, 8, 8]);
        assert_eq!(b.keep, vec![1, 0]);
        assert_eq!(Colorize::items(&b), 2);
        // Lightness of a mid-grey pixel: (L/100 - 0.5) / 0.25 with L of the pixel.
        let lab = rgb_to_lab(&imgs[0]);
        assert!((b.lightness[0] - (lab.data[0] / 100.0 - 0.5) / 0.25).abs() < 1e-5);
    }

    #[test]
    fn grayscale_data_is_refused() {
        let cfg: crate::config::PretrainConfig = crate::config::resolve(
            None,
            &[
                "task=\"colorize\"".to_string(),
                "data=\"idx:fashion\"".into(),
            ],
            &crate::tasks::names(),
        )
        .unwrap();
        let input = InputSpec::square(1, 28, 0.3, 0.3);
        let err = build(&TaskContext {
            config: &cfg,
            input: &input,
            device: Device::flex().autodiff(),
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("colour (3-channel RGB)"), "{err}");
    }

    #[test]
    fn shapes_and_overfitting_lowers_the_loss_for_every_loss() {
        let imgs: Vec<Img> = (0..4).map(|k| colour_image(16, k)).collect();
        for loss in ["classification", "l2", "smooth_l1"] {
            let mut t = task(
                &[&format!("colorize.loss=\"{loss}\""), "colorize.flip=false"],
                16,
            );
            let make = t.task.make_batch();
            let batch = make(&imgs, &[], &BatchRngs::new(0, 0));
            let first = t.step_typed(batch.clone(), 0, 3e-3).loss;
            let mut last = first;
            for step in 1..=60 {
                last = t.step_typed(batch.clone(), step, 3e-3).loss;
            }
            assert!(last < 0.7 * first, "{loss}: {first} → {last}");
            let out = t
                .model()
                .forward(Tensor::zeros([2, 1, 16, 16], &t.task.device));
            assert_eq!(t.task.predict_ab(out).dims(), [2, 2, 16, 16]);
        }
    }

    #[test]
    fn the_encoder_takes_lightness() {
        let t = task(&[], 16);
        let data = InputSpec {
            channels: 3,
            height: 16,
            width: 16,
            mean: vec![0.4; 3],
            std: vec![0.2; 3],
            per_image: false,
        };
        let (spec, transform) = t.task.encoder_input(&data);
        assert_eq!((spec.channels, transform), (1, InputTransform::Lightness));
        let x = Tensor::<4>::zeros([1, 1, 16, 16], &t.task.device.clone().inner());
        let enc = Colorize::encoder(t.model())
            .valid()
            .to_device(&t.task.device.clone().inner());
        assert_eq!(enc.features(x).dims()[0], 1);
    }
}
