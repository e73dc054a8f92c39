//! Optimiser set-up from the config: AdamW or SGD with momentum. Weight decay pulls weight
//! matrices, convolution kernels and embeddings towards 0 and leaves biases and the
//! normalisation layers' scale and shift alone, as GPT-2 and nanoGPT have it (a second,
//! decay-free optimiser for the parameters [`NO_DECAY`] names; `decay_biases_and_norms = true`
//! decays everything, as runs before December 6, 2026 did).

use burn::module::ParamGroup;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, DynOptimizer, ModuleOptimizer, SgdConfig};

use crate::config::{OptimizerKind, PretrainConfig};

/// The module paths weight decay leaves alone: biases and the normalisation layers' `gamma` and
/// `beta` (batch norm, layer norm) — every 1-D parameter of pretext's networks, and only those
/// (tested).
pub const NO_DECAY: &str = r"(^|\.)(bias|gamma|beta)$";

/// `optim` for every parameter, and `no_decay` (the same optimiser without weight decay) for
/// the [`NO_DECAY`] ones.
fn spare_biases_and_norms(
    optim: ModuleOptimizer,
    no_decay: impl DynOptimizer + 'static,
) -> ModuleOptimizer {
    let clip = optim.grad_clipping().cloned();
    let group = ParamGroup::from_regex(NO_DECAY).expect("NO_DECAY is a valid pattern");
    optim.with_group(group, no_decay, clip)
}

pub fn build_optimizer(cfg: &PretrainConfig) -> ModuleOptimizer {
    let spare = !cfg.decay_biases_and_norms;
    optimizer_beta2(
        cfg.optimizer,
        cfg.weight_decay,
        cfg.momentum,
        cfg.beta2,
        spare,
    )
}

/// AdamW with Adam's β₂ = 0.999, or SGD with momentum (fine-tuning and the semi stage), biases
/// and norms spared from weight decay.
pub fn optimizer(kind: OptimizerKind, weight_decay: f64, momentum: f64) -> ModuleOptimizer {
    optimizer_beta2(kind, weight_decay, momentum, 0.999, true)
}

fn optimizer_beta2(
    kind: OptimizerKind,
    weight_decay: f64,
    momentum: f64,
    beta2: f64,
    spare: bool,
) -> ModuleOptimizer {
    let spare = spare && weight_decay > 0.0;
    match kind {
        OptimizerKind::Adamw => {
            let config = AdamWConfig::new().with_beta_2(beta2 as f32);
            let optim = config.clone().with_weight_decay(weight_decay as f32).init();
            if spare {
                spare_biases_and_norms(optim, config.with_weight_decay(0.0).build())
            } else {
                optim
            }
        }
        OptimizerKind::Sgd => {
            let config = SgdConfig::new().with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(momentum)
                    .with_dampening(0.0),
            ));
            let optim = config
                .clone()
                .with_weight_decay(
                    (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)),
                )
                .init();
            if spare {
                spare_biases_and_norms(optim, config.with_weight_decay(None).build())
            } else {
                optim
            }
        }
    }
}

/// The language models' AdamW (β₂ = 0.95, as GPT-2/3; ε 1e-5 and decoupled weight decay
/// θ ← θ·(1 − lr·weight_decay), burn's defaults, on the weight matrices and embeddings; biases
/// and layer norms too with `decay_all`) with burn's per-tensor gradient clipping at
/// `per_tensor_clip` (0 = off). The global-norm clipping language runs use by default is the
/// engine's, after the sum over replicas and ranks ([`super::Bound::with_global_clip`]).
pub fn text_optimizer(weight_decay: f64, per_tensor_clip: f64, decay_all: bool) -> ModuleOptimizer {
    let config =
        AdamWConfig::new()
            .with_beta_2(0.95)
            .with_grad_clipping((per_tensor_clip > 0.0).then_some(
                burn::grad_clipping::GradientClippingConfig::Norm(per_tensor_clip as f32),
            ));
    let optim = config.clone().with_weight_decay(weight_decay as f32).init();
    if decay_all || weight_decay == 0.0 {
        optim
    } else {
        spare_biases_and_norms(optim, config.with_weight_decay(0.0).build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;

    /// Every float parameter's module path and rank.
    #[derive(Default)]
    struct Paths {
        at: Vec<String>,
        found: Vec<(String, usize)>,
    }

    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.at.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.at.pop();
        }
        fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<D>>) {
            self.found.push((self.at.join("."), D));
        }
    }

    fn check<M: Module>(what: &str, m: &M) {
        let mut v = Paths::default();
        m.visit(&mut v);
        assert!(v.found.len() > 2, "{what}: {:?}", v.found);
        let group = ParamGroup::from_regex(NO_DECAY).unwrap();
        // Batch norm's running statistics are no parameters an optimiser updates.
        let trained = v.found.iter().filter(|(p, _)| !p.contains(".running_"));
        for (path, rank) in trained {
            let spared = group.matches(&burn::module::ParamId::new(), Some(path));
            assert_eq!(spared, *rank == 1, "{what}: {path} (rank {rank})");
        }
    }

    #[test]
    fn the_parameters_spared_from_decay_are_exactly_the_1d_ones() {
        use crate::nn::{BackboneKind, BackboneSpec};
        let device = Device::flex();
        for kind in [
            BackboneKind::Convnet,
            BackboneKind::Resnet18,
            BackboneKind::Vit,
        ] {
            let spec = BackboneSpec {
                kind,
                in_channels: 3,
                width: 16,
                patch: 4,
            };
            check(kind.name(), &spec.init(&device));
        }
        let lm = crate::nn::transformer::TransformerSpec {
            vocab: 300,
            d_model: 32,
            layers: 2,
            heads: 2,
            d_ff: 64,
            max_len: 16,
            dropout: 0.0,
            tie_weights: false,
            causal: true,
        };
        check("transformer", &lm.init(&device));
        check(
            "discriminator",
            &crate::nn::discriminator::Discriminator::new(3, 8, &device),
        );
        check(
            "mlp head",
            &crate::nn::heads::MlpHead::new(16, 32, 4, &device),
        );
        let projection = crate::nn::heads::ProjectionHead::new(16, 32, 8, &device);
        check("projection head", &projection);
    }

    /// One AdamW step at lr 1 with weight decay 0.5 and a zero gradient: decay alone moves the
    /// weights (× 0.5); the bias stays, unless every parameter decays.
    #[test]
    fn decay_halves_the_weights_and_spares_the_bias() {
        use burn::nn::LinearConfig;
        use burn::optim::GradientsParams;
        let device = Device::flex().autodiff();
        let values = |t: Tensor<1>| t.into_data().iter::<f32>().collect::<Vec<_>>();
        for spare in [true, false] {
            let lin = crate::platform::device::seeded(&device, 0, || {
                LinearConfig::new(3, 2).init(&device)
            });
            let loss = lin
                .forward(Tensor::<2>::ones([1, 3], &device))
                .sum()
                .mul_scalar(0.0);
            let grads = GradientsParams::from_grads(loss.backward(), &lin);
            let (w0, b0) = (
                values(lin.weight.val().flatten(0, 1)),
                values(lin.bias.as_ref().unwrap().val()),
            );
            let mut optim = optimizer_beta2(OptimizerKind::Adamw, 0.5, 0.9, 0.999, spare);
            let lin = optim.step(1.0, lin, grads);
            let (w1, b1) = (
                values(lin.weight.val().flatten(0, 1)),
                values(lin.bias.as_ref().unwrap().val()),
            );
            for (a, b) in w0.iter().zip(&w1) {
                assert!((b - a * 0.5).abs() < 1e-6, "weight {a} → {b}");
            }
            let bias_factor = if spare { 1.0 } else { 0.5 };
            for (a, b) in b0.iter().zip(&b1) {
                assert!(
                    (b - a * bias_factor).abs() < 1e-6,
                    "spare {spare}: bias {a} → {b}"
                );
            }
            assert!(b0.iter().any(|&b| b != 0.0), "a bias to see: {b0:?}");
        }
    }
}
