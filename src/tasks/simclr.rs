//! SimCLR (Chen, Kornblith, Norouzi & Hinton 2020, "A Simple Framework for Contrastive Learning
//! of Visual Representations"): two random views of every image (crop, flip, colour jitter,
//! grayscale, blur — `src/data/views.rs`), the backbone and a 2-layer projection head map each
//! view to an embedding, and the NT-Xent loss pulls the two views of an image together and pushes
//! them away from the other 2N−2 views of the batch. With the batch in parts (replicas, MPI
//! ranks) the embeddings are gathered first, so the negatives are always the whole global
//! batch's and the loss and its gradient do not depend on the part count.
//!
//! `pretext pretrain --task simclr --data idx:../shared/data/fashion-mnist --out runs/simclr`

use std::sync::Arc;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{backbone, bind, Build, ClassBatch, ImageTask, ImageTrainer};
use super::{TaskContext, TaskEntry};
use crate::config::{at_least_one, parse_section, positive};
use crate::data::augment::Img;
use crate::data::loader::MakeBatch;
use crate::data::rngs::BatchRngs;
use crate::data::views::{ViewConfig, Views};
use crate::engine::step::images_tensor;
use crate::engine::{StepCtx, StepStats, Task};
use crate::error::{Error, Result};
use crate::nn::heads::ProjectionHead;
use crate::nn::input::InputSpec;
use crate::nn::Backbone;

pub const ENTRY: TaskEntry = TaskEntry {
    name: "simclr",
    description:
        "pull two augmented views of an image together, push other images away (Chen et al. 2020)",
    build: Build::Image(build),
};

/// `[simclr]` config section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimclrConfig {
    /// τ of NT-Xent.
    pub temperature: f64,
    /// Width of the projection head's hidden layer and of its output.
    pub proj_hidden: usize,
    pub proj_dim: usize,
    /// How views are made (`simclr.views.jitter = 0.4`, …).
    pub views: ViewConfig,
}

impl Default for SimclrConfig {
    fn default() -> Self {
        Self {
            temperature: 0.2,
            proj_hidden: 512,
            proj_dim: 128,
            views: ViewConfig::default(),
        }
    }
}

/// Backbone + projection head.
#[derive(Module, Debug)]
pub struct SimclrModel {
    pub backbone: Backbone,
    pub projector: ProjectionHead,
}

impl SimclrModel {
    /// x: [n, c, h, w] → embeddings [n, proj_dim], L2-normalised.
    pub fn embed(&self, x: Tensor<4>) -> Tensor<2> {
        l2_normalize(self.projector.forward(self.backbone.features(x)))
    }
}

#[derive(Clone)]
pub struct Simclr {
    config: SimclrConfig,
    views: Views,
    input: InputSpec,
    device: Device,
}

/// The views settings for the data, or a config error naming the key.
pub fn resolve_views(task: &str, views: &ViewConfig, input: &InputSpec) -> Result<Views> {
    views
        .resolve(input.channels, input.height.min(input.width))
        .map_err(|(key, message)| Error::config(format!("{task}.{key}"), message))
}

fn build(ctx: &TaskContext) -> Result<Box<dyn ImageTrainer>> {
    let config: SimclrConfig = parse_section("simclr", ctx.config.section("simclr"))?;
    positive("simclr.temperature", config.temperature)?;
    at_least_one("simclr.proj_hidden", config.proj_hidden)?;
    at_least_one("simclr.proj_dim", config.proj_dim)?;
    if ctx.config.batch_size < 2 {
        return Err(Error::config(
            "batch_size",
            "simclr needs at least 2 images per batch (the other images are the negatives)",
        ));
    }
    let views = resolve_views("simclr", &config.views, ctx.input)?;
    let backbone = backbone(ctx, ctx.input.channels);
    let projector = ProjectionHead::new(
        backbone.dim(),
        config.proj_hidden,
        config.proj_dim,
        &ctx.device,
    );
    let task = Simclr {
        config,
        views,
        input: ctx.input.clone(),
        device: ctx.device.clone(),
    };
    Ok(bind(
        task,
        SimclrModel {
            backbone,
            projector,
        },
        ctx,
    ))
}

/// Two views of every image, normalised: the first views of all images, then the second views
/// ([2n, c, h, w]); view i and view i + n are of the same image, both drawn from the image's
/// own generator (`rngs.item(i)`). Labels are unused (empty).
pub fn two_views(images: &[Img], views: &Views, input: &InputSpec, rngs: &BatchRngs) -> ClassBatch {
    let (c, h, w) = (input.channels, input.height, input.width);
    let n = images.len();
    let plane = c * h * w;
    // First views fill the first half, second views the second half.
    let mut out = vec![0f32; 2 * n * plane];
    let (first, second) = out.split_at_mut(n * plane);
    for (i, img) in images.iter().enumerate() {
        let rng = &mut rngs.item(i);
        for half in [&mut *first, &mut *second] {
            let mut v = views.view(img, h, rng);
            input.normalize(&mut v);
            half[i * plane..(i + 1) * plane].copy_from_slice(&v.data);
        }
    }
    ClassBatch {
        images: out,
        shape: [2 * n, c, h, w],
        labels: Vec::new(),
        drawn: n,
    }
}

/// The embeddings of every view of the global batch, as [`nt_xent`] takes them (first views of
/// all images, then second views), from this part's `z` ([2m, d], its m images' first then
/// second views): the parts' rows gathered in image order ([`StepCtx::gather`]), so the
/// negatives are the whole global batch's (SimCLR's cross-replica negatives), this part's rows
/// attached and the others' constants. One part: `z` itself.
pub fn global_views(z: Tensor<2>, cx: &StepCtx) -> Tensor<2> {
    if cx.parts() <= 1 {
        return z;
    }
    let [n2, d] = z.dims();
    let m = n2 / 2;
    // One row per image (its two views side by side), so one gather keeps images in order.
    let pairs = Tensor::cat(vec![z.clone().slice(0..m), z.slice(m..n2)], 1);
    let all = cx.gather(pairs);
    let [n, _] = all.dims();
    Tensor::cat(
        vec![all.clone().slice([0..n, 0..d]), all.slice([0..n, d..2 * d])],
        0,
    )
}

/// Rows scaled to unit L2 norm: [n, d] → [n, d].
pub fn l2_normalize(z: Tensor<2>) -> Tensor<2> {
    let norm = z.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    z / norm
}

/// NT-Xent over 2n L2-normalised embeddings `z` ([2n, d]; rows i and i+n are a positive pair):
/// the mean over all 2n rows of the cross-entropy of picking the positive among the other 2n−1
/// rows by cosine similarity / τ. Also returns how often the positive ranks first.
pub fn nt_xent(z: Tensor<2>, temperature: f64) -> (Tensor<1>, Tensor<1>) {
    let [n2, _] = z.dims();
    let n = n2 / 2;
    let device = z.device();
    // [2n, 2n] similarities; a row's own similarity can never be picked.
    let self_mask = Tensor::<2, Bool>::diag_mask([n2, n2], 0, &device).bool_not();
    let logits = z
        .clone()
        .matmul(z.transpose())
        .div_scalar(temperature)
        .mask_fill(self_mask, -1e9);
    let targets: Vec<i64> = (0..n2).map(|i| ((i + n) % n2) as i64).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n2]), &device);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.clone(), targets.clone());
    let correct = logits
        .detach()
        .argmax(1)
        .reshape([n2])
        .equal(targets)
        .float()
        .mean();
    (loss, correct)
}

impl Task for Simclr {
    type Model = SimclrModel;
    type Batch = ClassBatch;
    type Encoder = Backbone;

    fn step(
        &mut self,
        model: SimclrModel,
        batch: ClassBatch,
        cx: &mut StepCtx,
    ) -> (SimclrModel, StepStats) {
        let x = images_tensor(batch.images, batch.shape, &self.device);
        let z = global_views(model.embed(x), cx);
        let (loss, acc) = nt_xent(z, self.config.temperature);
        let value = loss.clone().detach().into_scalar::<f32>();
        let stats = StepStats::new(value, vec![("acc", acc.into_scalar::<f32>())]);
        // Every part computes the same global loss, through its own rows only.
        let grads = GradientsParams::from_grads(cx.backward_global(loss), &model);
        (cx.update("model", cx.lr, model, grads), stats)
    }

    fn items(batch: &ClassBatch) -> u64 {
        batch.drawn as u64
    }

    fn encoder(model: &SimclrModel) -> Backbone {
        model.backbone.clone()
    }
}

impl ImageTask for Simclr {
    fn make_batch(&self) -> MakeBatch<ClassBatch> {
        let (views, input) = (self.views.clone(), self.input.clone());
        Arc::new(move |images, _labels, rngs| two_views(images, &views, &input, rngs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_xent_matches_a_hand_computation() {
        let device = Device::flex();
        // Two images, two views each, 2-d embeddings already of unit length (no ties).
        let rows = [[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, -0.8]];
        let z = Tensor::<2>::from_data(TensorData::new(rows.concat(), [4, 2]), &device);
        let t = 0.5;
        let (loss, acc) = nt_xent(z, t);
        // By hand: row i's positive is (i+2)%4; softmax over the 3 other rows' cos/τ.
        let dot = |a: [f32; 2], b: [f32; 2]| a[0] * b[0] + a[1] * b[1];
        let mut want = 0.0;
        let mut right = 0;
        for i in 0..4 {
            let others: Vec<usize> = (0..4).filter(|&j| j != i).collect();
            let lse = others
                .iter()
                .map(|&j| (dot(rows[i], rows[j]) / t as f32).exp())
                .sum::<f32>()
                .ln();
            let pos = (i + 2) % 4;
            want += lse - dot(rows[i], rows[pos]) / t as f32;
            let best = others
                .iter()
                .copied()
                .max_by(|&a, &b| dot(rows[i], rows[a]).total_cmp(&dot(rows[i], rows[b])))
                .unwrap();
            right += usize::from(best == pos);
        }
        want /= 4.0;
        let got = loss.into_scalar::<f32>();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert!((acc.into_scalar::<f32>() - right as f32 / 4.0).abs() < 1e-6);
    }

    #[test]
    fn views_are_paired_and_normalised() {
        let input = InputSpec {
            channels: 1,
            height: 16,
            width: 16,
            mean: vec![0.5],
            std: vec![0.25],
            per_image: false,
        };
        let imgs: Vec<Img> = (0..3)
            .map(|k| Img::from_fn(1, 16, 16, move |_, y, x| ((y + x * k) % 5) as f32 / 5.0))
            .collect();
        let views = ViewConfig::default().resolve(1, 16).unwrap();
        let b = two_views(&imgs, &views, &input, &BatchRngs::new(0, 0));
        assert_eq!(b.shape, [6, 1, 16, 16]);
        assert_eq!(b.drawn, 3);
        assert!(b.labels.is_empty());
        // Normalised: pixels in [(0-0.5)/0.25, (1-0.5)/0.25].
        assert!(b.images.iter().all(|v| (-2.0..=2.0).contains(v)));
    }
}
