//! Pretext tasks: one file per task plus this registry. Adding a task is one new file and one
//! line in [`TASKS`].

use std::path::Path;

use burn::prelude::*;

use crate::config::PretrainConfig;
use crate::data::augment::Img;
use crate::data::loader::{Batch, MakeBatch};
use crate::error::{Error, Result};
use crate::input::{InputSpec, InputTransform};
use crate::nn::decoder::Generator;
use crate::nn::{Backbone, BackboneSpec};
use crate::train::step::StepStats;

pub mod causal_lm;
pub mod colorize;
pub mod context;
pub mod inpaint;
pub mod jigsaw;
pub mod masked_lm;
pub mod permutations;
pub mod rotation;
pub mod superres;
pub mod text;

/// Everything a task needs to build itself.
pub struct TaskContext<'a> {
    pub config: &'a PretrainConfig,
    pub input: &'a InputSpec,
    /// The training device (autodiff enabled).
    pub device: Device,
}

/// A registered task: its name on the command line, a one-line description, a constructor.
pub struct TaskEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub build: fn(&TaskContext) -> Result<Box<dyn PretextTask>>,
}

/// Every pretext task pretext knows, in the order `pretext tasks` lists them.
pub const TASKS: &[TaskEntry] = &[
    rotation::ENTRY,
    context::ENTRY,
    jigsaw::ENTRY,
    colorize::ENTRY,
    superres::ENTRY,
    inpaint::ENTRY,
];

pub fn find(name: &str) -> Option<&'static TaskEntry> {
    TASKS.iter().find(|t| t.name == name)
}

pub fn names() -> Vec<&'static str> {
    TASKS.iter().map(|t| t.name).collect()
}

/// A pretext task owns its model(s) and optimiser(s).
pub trait PretextTask {
    /// The CPU half: damage a batch of raw images and keep the answer. Runs on loader threads.
    fn make_batch(&self) -> MakeBatch;
    /// One optimisation step on a batch made by `make_batch`, at learning rate `lr`.
    fn step(&mut self, batch: Batch, lr: f64) -> StepStats;
    /// The part that transfers downstream.
    fn encoder(&self) -> Backbone;
    /// Trainable parameters plus batch-norm running statistics of every model the task trains
    /// (generator and discriminator for the GAN tasks), as burn's `num_params` counts them.
    fn num_params(&self) -> usize;
    /// What the encoder is fed, given the dataset's input spec `data`: by default the images as
    /// they are; colorization feeds the lightness channel only.
    fn encoder_input(&self, data: &InputSpec) -> (InputSpec, InputTransform) {
        (data.clone(), InputTransform::None)
    }
    /// Write model and optimiser state into `dir` (an empty directory).
    fn save(&self, dir: &Path) -> Result<()>;
    /// Restore what `save` wrote.
    fn load(&mut self, dir: &Path) -> Result<()>;
    /// Write pictures that show what the task does (the inputs as the network sees them with the
    /// answers; for generative tasks also what the model makes of them) into the run directory
    /// `dir`. Called once when the loop ends, with a copy of the first batch of this invocation.
    fn write_samples(&mut self, _batch: &Batch, _dir: &Path) -> Result<()> {
        Ok(())
    }
    /// Measure the task on held-out images (the dataset's test split, values in [0,1]), e.g.
    /// PSNR/SSIM of a generator. Called once when the loop ends, if the data has a test split;
    /// the numbers go into `summary.json` as `eval`.
    fn evaluate(&mut self, _held_out: &[Img]) -> Result<Vec<(String, f32)>> {
        Ok(Vec::new())
    }
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
    let spec = BackboneSpec {
        kind: ctx.config.backbone,
        in_channels,
        width: ctx.config.width(),
    };
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
