//! Pretext tasks: one file per task plus this registry. A task file holds its idea only — its
//! settings, how a batch is made from the data, its model and its step (see
//! [`crate::engine::Task`]); the engine owns optimisers, checkpoints and the loop. Adding a task
//! is one new file and one line in [`TASKS`].

use std::sync::Arc;

use burn::prelude::*;

use crate::config::PretrainConfig;
use crate::error::Result;
use crate::nn::input::InputSpec;

pub mod byol;
pub mod causal_lm;
pub mod colorize;
pub mod context;
pub mod electra;
pub mod inpaint;
pub mod jigsaw;

pub mod mae;
pub mod masked_lm;
pub mod rotation;
pub mod shared;
pub mod simclr;
pub mod superres;

pub use shared::image::{
    backbone, bind, build_gan, build_generator, ClassBatch, ImageTask, ImageTrainer,
};
pub use shared::text_tasks::{Specials, TextBatch, TextTask};

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
