//! pretext: self-supervised learning from unlabelled data, with transfer to labelled tasks.
//!
//! A pretext task damages or rearranges its input and trains a network to predict what was done;
//! the network's encoder then transfers to the task the user has, where a few labels go far.
//! See `docs/architecture.md` for the layout.
//!
//! Layers, each importing only from those below it (`tests/layers.rs` checks this):
//!
//! 1. `error`, `platform` — errors; atomic files, the compute device, MPI
//! 2. `data` — readers, augmentation, loader, tokenizer, token files
//! 3. `nn`, `report` — burn modules and the network's input, pictures
//! 4. `config` — run settings
//! 5. `engine` — the training loop, optimisers, checkpoints, the run layout
//! 6. `tasks` — one file per pretext task
//! 7. `transfer` — linear probe, k-NN, fine-tuning, the semi-supervised stage
//! 8. `commands` — what the binary runs: pretrain, transfer, compare, demo, bench, embed,
//!    similar, export, generate, tokenizer (and the command line, `commands::cli`)
//!
//! (`main.rs` sits on top, in the binary: it parses and dispatches.)

pub mod commands;
pub mod config;
pub mod data;
pub mod engine;
pub mod error;
pub mod nn;
pub mod platform;
pub mod report;
pub mod tasks;
pub mod transfer;

pub use error::{Error, Result};
