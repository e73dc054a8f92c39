//! Exponential moving averages of a network's weights: BYOL's target, the semi-supervised
//! stage's averaged student.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// `target ← τ·target + (1 − τ)·online`, parameter by parameter (both have the same structure,
/// so they are visited in the same order); batch-norm running statistics move the same way.
/// The result takes no gradients.
pub fn ema_update<M: Module>(target: M, online: &M, tau: f64) -> M {
    struct Collect(Vec<Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val().detach();
            let n = t.shape().num_elements();
            self.0.push(t.reshape([n]));
        }
    }
    struct Blend {
        online: std::vec::IntoIter<Tensor<1>>,
        tau: f64,
    }
    impl ModuleMapper for Blend {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let o = self
                .online
                .next()
                .expect("target and online have the same parameters");
            param.map(|t| {
                let shape = t.shape();
                let blended =
                    t.detach().mul_scalar(self.tau) + o.reshape(shape).mul_scalar(1.0 - self.tau);
                blended.detach().set_require_grad(false)
            })
        }
    }
    let mut c = Collect(Vec::new());
    online.visit(&mut c);
    let mut blend = Blend {
        online: c.0.into_iter(),
        tau,
    };
    target.map(&mut blend)
}

/// A copy of `module` with parameters of its own (fresh ids, so an optimiser or a checkpoint
/// never confuses the two) that takes no gradients: where a moving average starts.
pub fn detached_copy<M: Module>(module: &M) -> M {
    struct Fresh;
    impl ModuleMapper for Fresh {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            Param::from_tensor(param.val().detach().set_require_grad(false))
        }
    }
    module.clone().map(&mut Fresh).no_grad()
}
