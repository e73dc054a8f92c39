//! `pretext pretrain`: set a run up for the engine. Image tasks read images through the loader
//! ([`image_run`]); text tasks tokenize a corpus and draw windows ([`text_run`]). Both hand their
//! task to the same loop (`crate::engine::run_loop`).

pub mod image_run;
pub mod monitor;
mod run_pretrain;
pub mod text_run;

pub use crate::engine::run_dir::{EncoderInfo, PretrainSummary, TextRunInfo};
pub use image_run::{open_dataset, pretrain, PretrainRequest, EVAL_IMAGES};
pub use run_pretrain::{command, run, Pretrained};
pub use text_run::{pretrain_text, TextPretrainRequest};
