//! The GAN step of the generative tasks (superres, inpaint), in the order it runs:
//!
//! 1. the task runs its generator once, getting `fake` (with graph) and its content loss;
//! 2. [`discriminator_phase`]: D sees real and `fake.detach()` — only the `discriminator`
//!    optimiser steps, and no gradient can reach the generator;
//! 3. [`generator_phase`]: loss = content + adv_weight · BCE(D'(fake), "real"), with D' the
//!    freshly updated discriminator made non-trainable (`no_grad`), so only the `generator`
//!    optimiser steps.
//!
//! [`gan_step`] is that order written out once; a task supplies step 1.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::activation::softplus;

use super::step::StepStats;
use super::task::StepCtx;
use crate::nn::decoder::Generator;
use crate::nn::discriminator::Discriminator;

/// The two networks of a GAN task, trained as one model with two optimisers.
#[derive(Module, Debug)]
pub struct Gan {
    pub generator: Generator,
    pub discriminator: Discriminator,
}

/// The optimiser names of a GAN task.
pub const GAN_OPTIMIZERS: &[&str] = &["generator", "discriminator"];

/// What step 1 of a GAN step hands back: the content loss (scalar, with graph back to the
/// generator), and the real and generated images in [0, 1] as the discriminator judges them.
pub struct Generated {
    pub content: Tensor<1>,
    pub real: Tensor<4>,
    pub fake: Tensor<4>,
}

/// How a GAN step weighs its parts.
#[derive(Clone, Copy, Debug)]
pub struct GanWeights {
    /// Weight of the adversarial term in the generator's loss ...
    pub adv_weight: f64,
    /// ... which is 0 for the first this many steps (the discriminator still trains).
    pub content_only_steps: u64,
    /// The discriminator's learning rate as a multiple of the step's.
    pub d_lr_scale: f64,
    /// The task's weight on its content loss: the reported loss is the content loss divided by it.
    pub content_scale: f64,
}

/// One GAN step: `generate` (step 1), then the discriminator phase at `lr · d_lr_scale`, then the
/// generator phase at `lr` with the adversarial term weighted `adv_weight` (0 during the first
/// `content_only_steps`). Reports the content loss (over `content_scale`) with `g_adv`,
/// `d_loss`, `d_acc_real`, `d_acc_fake` as metrics.
pub fn gan_step(
    model: Gan,
    cx: &mut StepCtx,
    w: GanWeights,
    generate: impl FnOnce(&Generator) -> Generated,
) -> (Gan, StepStats) {
    let Gan {
        generator,
        discriminator,
    } = model;
    let adv_weight = if cx.step < w.content_only_steps {
        0.0
    } else {
        w.adv_weight
    };
    let (d_lr_scale, content_scale) = (w.d_lr_scale, w.content_scale);
    let g = generate(&generator);
    let (discriminator, d) = discriminator_phase(
        discriminator,
        cx,
        cx.lr * d_lr_scale,
        centre(g.real),
        centre(g.fake.clone()),
    );
    let (generator, content, adv) = generator_phase(
        generator,
        cx,
        cx.lr,
        g.content,
        centre(g.fake),
        &discriminator,
        adv_weight,
    );
    let stats = StepStats::new(
        content / content_scale.max(1e-12) as f32,
        vec![
            ("g_adv", adv),
            ("d_loss", d.loss),
            ("d_acc_real", d.acc_real),
            ("d_acc_fake", d.acc_fake),
        ],
    );
    (
        Gan {
            generator,
            discriminator,
        },
        stats,
    )
}

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
    cx: &mut StepCtx,
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
    let loss_value = loss.clone().detach().into_scalar::<f32>();
    let disc = cx.descend("discriminator", lr, disc, loss);
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
pub fn generator_phase<G: Module + 'static>(
    gen: G,
    cx: &mut StepCtx,
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
    let gen = cx.descend("generator", lr, gen, loss);
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

/// Test support for the GAN tasks: one D phase on (`real`, `fake`), then one G phase on
/// `content` and `fake`, each asserted to change its own network and only it. Returns the
/// generator phase's adversarial loss.
#[cfg(test)]
pub(crate) fn assert_each_phase_updates_only_its_network<G: Module + 'static>(
    gen: G,
    disc: Discriminator,
    optim: &mut super::Optimizers,
    real: Tensor<4>,
    fake: Tensor<4>,
    content: Tensor<1>,
) -> f32 {
    let (g0, d0) = (flat_params(&gen), flat_params(&disc));
    let (disc, _) = discriminator_phase(
        disc,
        &mut StepCtx::new(0, 1e-2, optim),
        1e-2,
        centre(real),
        centre(fake.clone()),
    );
    let (g1, d1) = (flat_params(&gen), flat_params(&disc));
    assert_eq!(g0, g1, "the discriminator phase changed the generator");
    assert_ne!(
        d0, d1,
        "the discriminator phase left the discriminator unchanged"
    );
    let (gen, _, adv) = generator_phase(
        gen,
        &mut StepCtx::new(0, 1e-2, optim),
        1e-2,
        content,
        centre(fake),
        &disc,
        0.5,
    );
    let (g2, d2) = (flat_params(&gen), flat_params(&disc));
    assert_ne!(g1, g2, "the generator phase left the generator unchanged");
    assert_eq!(d1, d2, "the generator phase changed the discriminator");
    adv
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
