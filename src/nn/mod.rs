//! Neural-network building blocks (burn Modules). Every backbone offers the same three calls:
//! `features(x)` (pooled vector), `features_at(x, stage)` (pooled output of one stage, for
//! per-layer probes) and `dim()`. `decoder.rs` and `discriminator.rs` serve the generative tasks; `input.rs` says how
//! images become a network's input (normalisation, lightness, per-image standardisation).

pub mod backbone;
pub mod convnet;
pub mod decoder;
pub mod discriminator;
pub mod dropout;
pub mod ema;
pub mod heads;
pub mod input;
pub mod lm_head_loss;
pub mod resnet;
pub mod transformer;
pub mod vit;

pub use backbone::{Backbone, BackboneKind, BackboneSpec, VitPreset};

/// The ids of every float parameter of `module`, in visiting order (for splitting a model's
/// parameters into groups with their own learning rates).
pub fn param_ids<M: burn::module::Module>(module: &M) -> Vec<burn::module::ParamId> {
    struct Ids(Vec<burn::module::ParamId>);
    impl burn::module::ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::Tensor<D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}
