//! Neural-network building blocks (burn Modules). Every backbone offers the same three calls:
//! `features(x)` (pooled vector), `features_at(x, stage)` (pooled output of one stage, for
//! per-layer probes) and `dim()`. `decoder.rs` and `discriminator.rs` serve the generative tasks.

pub mod backbone;
pub mod convnet;
pub mod decoder;
pub mod discriminator;
pub mod dropout;
pub mod heads;
pub mod resnet;
pub mod transformer;
pub mod vit;

pub use backbone::{Backbone, BackboneKind, BackboneSpec, VitPreset};
