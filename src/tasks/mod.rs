//! Pretext tasks: one file per task plus this registry. A task file holds its idea only — its
//! settings, how a batch is made from the data, its model and its step (see
//! [`crate::engine::Task`]); the engine owns optimisers, checkpoints and the loop. Adding a task
//! is one new file and one line in [`TASKS`].

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;

use crate::config::{NonFinite, PretrainConfig};
use crate::data::augment::Img;
use crate::data::loader::MakeBatch;
use crate::engine::gan::Gan;
use crate::engine::optim::build_optimizer;
use crate::engine::replicas::{split_batch, Parts};
use crate::engine::step::{classification_step, images_tensor, labels_tensor};
use crate::engine::{AnyBatch, Bound, StepCtx, StepStats, Task, Trainable};
use crate::error::{Error, Result};
use crate::nn::decoder::Generator;
use crate::nn::discriminator::Discriminator;
use crate::nn::input::{InputSpec, InputTransform};
use crate::nn::Backbone;

pub mod byol;
pub mod causal_lm;
pub mod colorize;
pub mod context;
pub mod electra;
pub mod image_quality;
pub mod inpaint;
pub mod jigsaw;
pub mod lm;
pub mod mae;
pub mod masked_lm;
pub mod permutations;
pub mod rotation;
pub mod simclr;
pub mod superres;

pub use lm::{Specials, TextBatch, TextTask};

/// Everything an image task needs to build itself.
pub struct TaskContext<'a> {
    pub config: &'a PretrainConfig,
    pub input: &'a InputSpec,
    /// The training device (autodiff enabled).
    pub device: Device,
}

/// How a registered task is built: image tasks from the run's config and the data's input spec,
/// text tasks from their config section and the tokenizer's special ids.
#[derive(Clone, Copy)]
pub enum Build {
    Image(fn(&TaskContext) -> Result<Box<dyn ImageTrainer>>),
    Text {
        /// Whether the transformer is causal (GPT) or bidirectional (BERT) for this task.
        causal: bool,
        build: fn(&toml::Value, &Specials) -> Result<Arc<dyn TextTask>>,
    },
}

/// A registered task: its name on the command line, a one-line description, how to build it.
pub struct TaskEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub build: Build,
}

impl TaskEntry {
    /// `image` or `text`.
    pub fn kind(&self) -> &'static str {
        match self.build {
            Build::Image(_) => "image",
            Build::Text { .. } => "text",
        }
    }

    pub fn is_text(&self) -> bool {
        matches!(self.build, Build::Text { .. })
    }

    /// Whether a text task's transformer is causal (false for image tasks).
    pub fn causal(&self) -> bool {
        matches!(self.build, Build::Text { causal: true, .. })
    }
}

/// Every pretext task pretext knows, image and text, in the order `pretext tasks` lists them.
pub const TASKS: &[TaskEntry] = &[
    rotation::ENTRY,
    context::ENTRY,
    jigsaw::ENTRY,
    colorize::ENTRY,
    superres::ENTRY,
    inpaint::ENTRY,
    simclr::ENTRY,
    byol::ENTRY,
    mae::ENTRY,
    causal_lm::ENTRY,
    masked_lm::ENTRY,
    electra::ENTRY,
];

pub fn find(name: &str) -> Option<&'static TaskEntry> {
    TASKS.iter().find(|t| t.name == name)
}

/// The image task `name`, or `None` (unknown, or a text task).
pub fn find_image(name: &str) -> Option<&'static TaskEntry> {
    find(name).filter(|t| !t.is_text())
}

/// The text task `name`, or `None` (unknown, or an image task).
pub fn find_text(name: &str) -> Option<&'static TaskEntry> {
    find(name).filter(|t| t.is_text())
}

/// Every task's name.
pub fn names() -> Vec<&'static str> {
    TASKS.iter().map(|t| t.name).collect()
}

/// The image tasks' names.
pub fn image_names() -> Vec<&'static str> {
    TASKS
        .iter()
        .filter(|t| !t.is_text())
        .map(|t| t.name)
        .collect()
}

/// The text tasks' names.
pub fn text_names() -> Vec<&'static str> {
    TASKS
        .iter()
        .filter(|t| t.is_text())
        .map(|t| t.name)
        .collect()
}

/// A batch as flat arrays in the layout `bench/reference.py` reads: `images` [b, c, h, w],
/// `labels`, and the rest of the batch in `extra`.
#[derive(Clone, Debug, Default)]
pub struct FlatBatch {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub extra: Vec<f32>,
}

impl FlatBatch {
    pub fn new(shape: [usize; 4], images: &[f32], labels: &[u32], extra: Vec<f32>) -> Self {
        let [b, c, h, w] = shape;
        Self {
            b,
            c,
            h,
            w,
            images: images.to_vec(),
            labels: labels.to_vec(),
            extra,
        }
    }
}

/// The batch of a classification task (rotation, context, jigsaw): network inputs and a class
/// per example.
#[derive(Clone, Debug)]
pub struct ClassBatch {
    /// Network inputs [n, c, h, w], normalised.
    pub images: Vec<f32>,
    pub shape: [usize; 4],
    /// The class of each example (one per input, or one per group of inputs).
    pub labels: Vec<u32>,
    /// Images drawn from the data for this batch (what throughput counts).
    pub drawn: usize,
}

impl ClassBatch {
    /// Cross-entropy step of `model` on this batch: `forward` maps the inputs to logits.
    pub fn step<M: Module + 'static>(
        self,
        model: M,
        cx: &mut StepCtx,
        device: &Device,
        forward: impl FnOnce(&M, Tensor<4>) -> Tensor<2>,
    ) -> (M, StepStats) {
        let y = labels_tensor(&self.labels, device);
        let x = images_tensor(self.images, self.shape, device);
        classification_step(model, cx, y, |m| forward(m, x))
    }

    pub fn flat(&self) -> FlatBatch {
        FlatBatch::new(self.shape, &self.images, &self.labels, Vec::new())
    }
}

/// What an image task adds to [`Task`]: the CPU half on loader threads, the encoder that
/// transfers, and optional pictures and held-out measurements at the end of a run.
pub trait ImageTask: Task<Encoder = Backbone> {
    /// "Damage the data, keep the answer": raw images (values in [0,1]) → a batch.
    fn make_batch(&self) -> MakeBatch<Self::Batch>;
    /// What the encoder is fed, given the dataset's input spec `data`: by default the images as
    /// they are; colorization feeds the lightness channel only.
    fn encoder_input(&self, data: &InputSpec) -> (InputSpec, InputTransform) {
        (data.clone(), InputTransform::None)
    }
    /// Pictures of what the task does (inputs as the network sees them with the answers; for
    /// generative tasks what the model makes of them) into the run directory `dir`.
    fn write_samples(&self, _model: &Self::Model, _batch: &Self::Batch, _dir: &Path) -> Result<()> {
        Ok(())
    }
    /// Measurements on held-out images (the dataset's test split, values in [0,1]), e.g.
    /// PSNR/SSIM of a generator; they go into `summary.json` as `eval`.
    fn evaluate(&self, _model: &Self::Model, _held_out: &[Img]) -> Result<Vec<(String, f32)>> {
        Ok(Vec::new())
    }
    /// The batch in the layout of `bench/reference.py`.
    fn flat(batch: &Self::Batch) -> FlatBatch;
}

/// An image task bound to its model and optimisers, with its batch type erased: what
/// `pretrain`, `bench` and the tests drive.
pub trait ImageTrainer: Trainable {
    /// Batches as one part per replica (see [`crate::engine::replicas`]).
    fn make_batch(&self) -> MakeBatch<Box<dyn AnyBatch>>;
    /// Step with `n` replicas from now on (1 = none); batches made before are of the old count.
    fn set_replicas(&mut self, n: usize);
    /// Batch norm over the whole global batch (true, the default) or per part (see
    /// [`crate::engine::exchange::SyncBatchNorm`]).
    fn set_sync_bn(&mut self, on: bool);
    fn encoder(&self) -> Backbone;
    fn encoder_input(&self, data: &InputSpec) -> (InputSpec, InputTransform);
    /// Sample pictures from the first batch stepped on (nothing before the first step).
    fn write_samples(&self, dir: &Path) -> Result<()>;
    fn evaluate(&self, held_out: &[Img]) -> Result<Vec<(String, f32)>>;
    fn flat(&self, batch: &dyn AnyBatch) -> FlatBatch;
}

impl<T: ImageTask> ImageTrainer for Bound<T> {
    fn make_batch(&self) -> MakeBatch<Box<dyn AnyBatch>> {
        let make = self.task.make_batch();
        let parts = self.replicas();
        Arc::new(move |images, labels, rngs| {
            split_batch(images.len(), parts, rngs, |r, rngs| {
                // Unlabelled data has no labels to split.
                let labels = labels.get(r.clone()).unwrap_or(&[]);
                make(&images[r], labels, rngs)
            })
        })
    }
    fn set_replicas(&mut self, n: usize) {
        Bound::set_replicas(self, n);
    }
    fn set_sync_bn(&mut self, on: bool) {
        Bound::set_sync_bn(self, on);
    }
    fn encoder(&self) -> Backbone {
        <T as Task>::encoder(self.model())
    }
    fn encoder_input(&self, data: &InputSpec) -> (InputSpec, InputTransform) {
        self.task.encoder_input(data)
    }
    fn write_samples(&self, dir: &Path) -> Result<()> {
        match self.first_batch() {
            Some(b) => self.task.write_samples(self.model(), b, dir),
            None => Ok(()),
        }
    }
    fn evaluate(&self, held_out: &[Img]) -> Result<Vec<(String, f32)>> {
        self.task.evaluate(self.model(), held_out)
    }
    fn flat(&self, batch: &dyn AnyBatch) -> FlatBatch {
        let any = batch.as_any();
        let batch = any
            .downcast_ref::<T::Batch>()
            .or_else(|| any.downcast_ref::<Parts<T::Batch>>().map(|p| &p.0[0]))
            .expect("a batch made by this task");
        T::flat(batch)
    }
}

/// Bind an image task to its model with the optimiser the config names (one copy per
/// `T::OPTIMIZERS` entry).
pub fn bind<T: ImageTask>(task: T, model: T::Model, ctx: &TaskContext) -> Box<dyn ImageTrainer> {
    Box::new(Bound::new(
        task,
        model,
        &build_optimizer(ctx.config),
        ctx.config.on_nonfinite == NonFinite::Skip,
    ))
}

/// The backbone the config asks for, taking `in_channels` inputs.
pub fn backbone(ctx: &TaskContext, in_channels: usize) -> Backbone {
    ctx.config.backbone_spec(in_channels).init(&ctx.device)
}

/// For the GAN tasks: a generator restoring `channels` channels from as many (see
/// [`build_generator`]) and a discriminator of base width `d_width` (0 is a config error on
/// `TASK.d_width`).
pub fn build_gan(
    ctx: &TaskContext,
    channels: usize,
    stage: usize,
    skips: bool,
    d_width: usize,
) -> Result<Gan> {
    if d_width == 0 {
        return Err(Error::config(
            format!("{}.d_width", ctx.config.task),
            "must be > 0",
        ));
    }
    Ok(Gan {
        generator: build_generator(ctx, channels, stage, skips, channels)?,
        discriminator: Discriminator::new(channels, d_width, &ctx.device),
    })
}

/// For the generative tasks: a generator whose encoder is the configured backbone taking
/// `in_channels` inputs, its decoder starting at `stage` (0 = the last stage) with `out_channels`
/// outputs. An out-of-range stage is a config error on `TASK.stage`.
pub fn build_generator(
    ctx: &TaskContext,
    in_channels: usize,
    stage: usize,
    skips: bool,
    out_channels: usize,
) -> Result<Generator> {
    let spec = ctx.config.backbone_spec(in_channels);
    let stages = spec.init(&ctx.device).stages();
    let stage = if stage == 0 { stages } else { stage };
    if stage > stages {
        return Err(Error::config(
            format!("{}.stage", ctx.config.task),
            format!("the backbone has {stages} stages, found {stage}"),
        ));
    }
    Ok(Generator::new(
        &spec,
        stage,
        out_channels,
        skips,
        &ctx.device,
    ))
}
