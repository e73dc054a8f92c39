//! Optimiser set-up from the config: AdamW or SGD with momentum.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer, SgdConfig};

use crate::config::{OptimizerKind, PretrainConfig};

pub fn build_optimizer(cfg: &PretrainConfig) -> ModuleOptimizer {
    optimizer_beta2(cfg.optimizer, cfg.weight_decay, cfg.momentum, cfg.beta2)
}

/// AdamW with Adam's β₂ = 0.999, or SGD with momentum (fine-tuning and the semi stage).
pub fn optimizer(kind: OptimizerKind, weight_decay: f64, momentum: f64) -> ModuleOptimizer {
    optimizer_beta2(kind, weight_decay, momentum, 0.999)
}

fn optimizer_beta2(
    kind: OptimizerKind,
    weight_decay: f64,
    momentum: f64,
    beta2: f64,
) -> ModuleOptimizer {
    match kind {
        OptimizerKind::Adamw => AdamWConfig::new()
            .with_beta_2(beta2 as f32)
            .with_weight_decay(weight_decay as f32)
            .init(),
        OptimizerKind::Sgd => SgdConfig::new()
            .with_weight_decay(
                (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)),
            )
            .with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(momentum)
                    .with_dampening(0.0),
            ))
            .init(),
    }
}

/// The language models' AdamW (β₂ = 0.95, as GPT-2/3; ε 1e-5 and decoupled weight decay
/// θ ← θ·(1 − lr·weight_decay) on every parameter, burn's defaults) with burn's per-tensor
/// gradient clipping at `per_tensor_clip` (0 = off). The global-norm clipping language runs use
/// by default is the engine's, after the sum over replicas and ranks
/// ([`super::Bound::with_global_clip`]).
pub fn text_optimizer(weight_decay: f64, per_tensor_clip: f64) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_2(0.95)
        .with_weight_decay(weight_decay as f32)
        .with_grad_clipping((per_tensor_clip > 0.0).then_some(
            burn::grad_clipping::GradientClippingConfig::Norm(per_tensor_clip as f32),
        ))
        .init()
}
