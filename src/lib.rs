//! pretext: self-supervised learning from unlabelled data, with transfer to labelled tasks.
//!
//! A pretext task damages or rearranges its input and trains a network to predict what was done;
//! the network's encoder then transfers to the task the user has, where a few labels go far.
//! See `docs/architecture.md` for the layout.
//!
//! Layers, each importing only from those below it (`tests/layers.rs` checks this):
//!
//! 1. `error`, `fsio`, `device` — errors, atomic files, the compute device
//! 2. `data` — readers, augmentation, loader, tokenizer, token files
//! 3. `input`, `nn`, `report` — input normalisation, burn modules, pictures
//! 4. `config` — run settings
//! 5. `engine` — the training loop, optimisers, checkpoints, the run layout
//! 6. `tasks` — one file per pretext task
//! 7. `transfer` — linear probe, k-NN, fine-tuning
//! 8. commands: `pretrain`, `generate`, `compare`, `demo`, `bench`, `tokenize_cmd`, `embed`
//!    (and `similar`), `export`
//!
//! (`cli`/`main` sit on top, in the binary.)

pub mod bench;
pub mod compare;
pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod dist;
pub mod embed;
pub mod engine;
pub mod error;
pub mod export;
pub mod fsio;
pub mod generate;
pub mod input;
pub mod nn;
pub mod pretrain;
pub mod report;
pub mod tasks;
pub mod tokenize_cmd;
pub mod transfer;

pub use error::{Error, Result};
