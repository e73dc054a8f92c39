//! pretext: self-supervised learning from unlabelled data, with transfer to labelled tasks.
//!
//! A pretext task damages or rearranges its input and trains a network to predict what was done;
//! the network's encoder then transfers to the task the user has, where a few labels go far.
//! See `../shared/DESIGN.md` (or the README) for the layout.

pub mod bench;
pub mod compare;
pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod error;
pub mod generate;
pub mod input;
pub mod nn;
pub mod report;
pub mod tasks;
pub mod tokenize_cmd;
pub mod train;
pub mod transfer;

pub use error::{Error, Result};
