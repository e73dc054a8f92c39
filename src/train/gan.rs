//! The two phases of a GAN step, in the order the generative tasks run them:
//!
//! 1. the task runs its generator once, getting `fake` (with graph) and its content loss;
//! 2. [`discriminator_phase`]: D sees real and `fake.detach()` — only D's optimiser steps, and
//!    no gradient can reach the generator;
//! 3. [`generator_phase`]: loss = content + adv_weight · BCE(D'(fake), "real"), with D' the
//!    freshly updated discriminator made non-trainable (`no_grad`), so only G's optimiser steps.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::softplus;

use std::path::Path;

use crate::error::Result;
use crate::nn::decoder::Generator;
use crate::nn::discriminator::Discriminator;
use crate::train::checkpoint::{load_module, load_optimizer, save_module, save_optimizer};

/// Binary cross-entropy on logits, mean over the batch: target "real" → softplus(-z), "fake" →
/// softplus(z) (the numerically stable forms of -log σ(z) and -log(1-σ(z))).
pub fn bce_logits(logits: Tensor<1>, real: bool) -> Tensor<1> {
    let z = if real { logits.neg() } else { logits };
    softplus(z, 1.0).mean()
}

/// Pixels in [0,1] → the discriminator's input range [-1, 1].
pub fn centre(x: Tensor<4>) -> Tensor<4> {
    (x - 0.5) * 2.0
}

/// What the discriminator phase reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct DStats {
    pub loss: f32,
    /// Fraction of real images D calls real.
    pub acc_real: f32,
    /// Fraction of fake images D calls fake.
    pub acc_fake: f32,
}

/// One D update on `real` and `fake` ([b, c, h, w] each, as D is fed). `fake` is detached here.
pub fn discriminator_phase(
    disc: Discriminator,
    optim: &mut ModuleOptimizer,
    lr: f64,
    real: Tensor<4>,
    fake: Tensor<4>,
) -> (Discriminator, DStats) {
    let b = real.dims()[0];
    // One forward over [real; fake]: D has no batch statistics, so this equals two passes.
    let logits = disc.forward(Tensor::cat(vec![real, fake.detach()], 0));
    let real_logits = logits.clone().slice(0..b);
    let fake_logits = logits.clone().slice(b..2 * b);
    let loss = bce_logits(real_logits, true) + bce_logits(fake_logits, false);
    let z = logits
        .detach()
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 logits");
    let acc_real = z[..b].iter().filter(|&&v| v > 0.0).count() as f32 / b as f32;
    let acc_fake = z[b..].iter().filter(|&&v| v <= 0.0).count() as f32 / b as f32;
    let grads = GradientsParams::from_grads(loss.backward(), &disc);
    let loss_value = loss.detach().into_scalar::<f32>();
    let disc = optim.step(lr, disc, grads);
    (
        disc,
        DStats {
            loss: loss_value,
            acc_real,
            acc_fake,
        },
    )
}

/// One G update: `content` (scalar, with graph back to `gen`) plus, when `adv_weight > 0`, the
/// adversarial loss of `fake` under a frozen copy of `disc`. Returns (gen, content, adversarial).
pub fn generator_phase<G: Module>(
    gen: G,
    optim: &mut ModuleOptimizer,
    lr: f64,
    content: Tensor<1>,
    fake: Tensor<4>,
    disc: &Discriminator,
    adv_weight: f64,
) -> (G, f32, f32) {
    let (loss, adv) = if adv_weight > 0.0 {
        let adv = bce_logits(disc.clone().no_grad().forward(fake), true);
        (content.clone() + adv.clone() * adv_weight, Some(adv))
    } else {
        (content.clone(), None)
    };
    let grads = GradientsParams::from_grads(loss.backward(), &gen);
    let gen = optim.step(lr, gen, grads);
    let adv = adv.map_or(0.0, |a| a.detach().into_scalar::<f32>());
    (gen, content.detach().into_scalar::<f32>(), adv)
}

/// Every float parameter of a module, flattened in visit order (for tests that check which
/// network a phase changed).
pub fn flat_params<M: Module>(module: &M) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let v = param
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32 param");
            self.0.extend(v);
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

/// Save generator, discriminator and both optimisers into `dir`.
pub fn save_gan(
    dir: &Path,
    gen: &Generator,
    disc: &Discriminator,
    g_optim: &ModuleOptimizer,
    d_optim: &ModuleOptimizer,
) -> Result<()> {
    save_module(gen.clone(), &dir.join("generator.bpk"))?;
    save_module(disc.clone(), &dir.join("discriminator.bpk"))?;
    save_optimizer(g_optim, &dir.join("g_optimizer.bpk"))?;
    save_optimizer(d_optim, &dir.join("d_optimizer.bpk"))
}

/// Restore what [`save_gan`] wrote.
pub fn load_gan(
    dir: &Path,
    gen: Generator,
    disc: Discriminator,
    g_optim: &mut ModuleOptimizer,
    d_optim: &mut ModuleOptimizer,
) -> Result<(Generator, Discriminator)> {
    let gen = load_module(gen, &dir.join("generator.bpk"))?;
    let disc = load_module(disc, &dir.join("discriminator.bpk"))?;
    *g_optim = load_optimizer(g_optim.clone(), &dir.join("g_optimizer.bpk"))?;
    *d_optim = load_optimizer(d_optim.clone(), &dir.join("d_optimizer.bpk"))?;
    Ok((gen, disc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bce_matches_the_formula() {
        let device = Device::flex();
        let z = Tensor::<1>::from_floats([0.0, 2.0, -1.0], &device);
        let real = bce_logits(z.clone(), true).into_scalar::<f32>();
        let fake = bce_logits(z, false).into_scalar::<f32>();
        let sp = |x: f32| (1.0 + x.exp()).ln();
        let want_real = (sp(0.0) + sp(-2.0) + sp(1.0)) / 3.0;
        let want_fake = (sp(0.0) + sp(2.0) + sp(-1.0)) / 3.0;
        assert!((real - want_real).abs() < 1e-5, "{real} vs {want_real}");
        assert!((fake - want_fake).abs() < 1e-5, "{fake} vs {want_fake}");
    }
}
