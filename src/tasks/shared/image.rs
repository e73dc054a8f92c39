//! The image-task framework the image task files build on: [`ImageTask`] (what an image task adds
//! to the engine's `Task`), [`ImageTrainer`] (a bound task with its batch type erased, what
//! `pretrain` and `bench` drive), [`bind`], the backbone and GAN builders, and the batch shared by
//! the classification tasks ([`ClassBatch`]).

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::prelude::*;

use crate::config::{at_least_one, NonFinite};
use crate::data::augment::Img;
use crate::data::loader::MakeBatch;
use crate::engine::gan::Gan;
use crate::engine::optim::build_optimizer;
use crate::engine::replicas::split_batch;
use crate::engine::step::{classification_step, images_tensor, labels_tensor};
use crate::engine::{AnyBatch, Bound, StepCtx, StepStats, Task, Trainable};
use crate::error::{Error, Result};
use crate::nn::decoder::Generator;
use crate::nn::discriminator::Discriminator;
use crate::nn::input::{InputSpec, InputTransform};
use crate::nn::Backbone;

use crate::tasks::TaskContext;

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
    at_least_one(&format!("{}.d_width", ctx.config.task), d_width)?;
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
