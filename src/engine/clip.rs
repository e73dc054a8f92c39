//! Global-norm gradient clipping, as `torch.nn.utils.clip_grad_norm_` (nanoGPT, GPT-2/3): the L2
//! norm of all of a module's gradients taken together, and every gradient scaled by
//! min(1, max_norm / (norm + 1e-6)). burn's own `GradientClipping::Norm` clips each parameter's
//! gradient on its own.
//!
//! [`super::Optimizers`] applies it to the gradient an update actually uses — after the sum over
//! replicas ([`sum`]) and over MPI ranks — so the norm is the whole batch's, whatever the replica
//! and process counts.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

use super::ranks::trainable;

/// `clip_grad_norm_`'s epsilon in the denominator.
pub const EPS: f64 = 1e-6;

/// `grads` clipped to the global norm `max_norm` (0 = left as they are), and their global norm
/// before clipping.
pub fn clip_global<M: Module>(
    module: &M,
    grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, f32) {
    let norm = global_norm(module, &grads);
    let coef = max_norm / (norm as f64 + EPS);
    // A NaN norm compares false: the gradients go on as they are, and the engine, which sees the
    // NaN `grad_norm`, stops at or undoes the step.
    if max_norm > 0.0 && coef < 1.0 {
        (scale(module, grads, coef), norm)
    } else {
        (grads, norm)
    }
}

/// The L2 norm of the gradients of all of `module`'s trainable parameters together (a parameter
/// without a gradient counts 0). One read from the device.
pub fn global_norm<M: Module>(module: &M, grads: &GradientsParams) -> f32 {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !trainable(param) {
                return;
            }
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.square().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut v = SumSquares { grads, total: None };
    module.visit(&mut v);
    v.total
        .map_or(0.0, |t| t.into_scalar::<f32>().max(0.0).sqrt())
}

/// Every gradient of `module`'s trainable parameters multiplied by `factor`.
pub fn scale<M: Module>(module: &M, grads: GradientsParams, factor: f64) -> GradientsParams {
    struct Scale {
        grads: GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut v = Scale { grads, factor };
    module.visit(&mut v);
    v.grads
}

/// The replicas' gradients of `module` summed, in replica order (so the sum is the same from run
/// to run). A parameter no replica has a gradient for stays without one.
pub fn sum<M: Module>(module: &M, parts: Vec<GradientsParams>) -> GradientsParams {
    struct Sum {
        parts: Vec<GradientsParams>,
        out: GradientsParams,
    }
    impl ModuleVisitor for Sum {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let mut total: Option<Tensor<D>> = None;
            for part in &mut self.parts {
                if let Some(g) = part.remove::<D>(param.id) {
                    total = Some(match total.take() {
                        Some(t) => {
                            let device = t.device();
                            t + g.to_device(&device)
                        }
                        None => g,
                    });
                }
            }
            if let Some(t) = total {
                self.out.register(param.id, t);
            }
        }
    }
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one part");
    }
    let mut v = Sum {
        parts,
        out: GradientsParams::new(),
    };
    module.visit(&mut v);
    v.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    /// Two linear layers, so the norm spans several tensors.
    #[derive(Module, Debug)]
    struct Two {
        a: Linear,
        b: Linear,
    }

    fn two() -> Two {
        let device = Device::flex().autodiff();
        crate::platform::device::seeded(&device, 3, || {
            crate::platform::device::init_now(Two {
                a: LinearConfig::new(2, 2).init(&device),
                b: LinearConfig::new(2, 1).init(&device),
            })
        })
    }

    /// Known gradients: every parameter's gradient set by hand.
    fn grads(m: &Two, k: f32) -> GradientsParams {
        let device = Device::flex();
        let mut g = GradientsParams::new();
        let t2 = |v: [[f32; 2]; 2]| Tensor::<2>::from_data(TensorData::from(v), &device);
        let t1 =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
        // a.weight [[1, 2], [0, 2]] · k: squares 9k²; a.bias [0, 0]; b.weight [[4], [0]] · k:
        // 16k²; b.bias none.
        g.register(m.a.weight.id, t2([[k, 2.0 * k], [0.0, 2.0 * k]]));
        g.register(m.a.bias.as_ref().unwrap().id, t1(&[0.0, 0.0]));
        let bw = Tensor::<2>::from_data(TensorData::new(vec![4.0 * k, 0.0], [2, 1]), &device);
        g.register(m.b.weight.id, bw);
        g
    }

    fn values<const D: usize>(g: &GradientsParams, id: burn::module::ParamId) -> Vec<f32> {
        g.get::<D>(id).unwrap().into_data().iter::<f32>().collect()
    }

    #[test]
    fn the_norm_is_over_every_tensor_together() {
        let m = two();
        // √(1 + 4 + 0 + 4 + 16) = 5
        assert_eq!(global_norm(&m, &grads(&m, 1.0)), 5.0);
        assert_eq!(global_norm(&m, &GradientsParams::new()), 0.0);
    }

    #[test]
    fn clipping_scales_everything_by_max_over_norm_plus_eps() {
        let m = two();
        let (g, norm) = clip_global(&m, grads(&m, 1.0), 1.0);
        assert_eq!(norm, 5.0);
        let c = (1.0 / (5.0 + EPS)) as f32;
        let close = |a: Vec<f32>, b: Vec<f32>| {
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-7) && a.len() == b.len()
        };
        assert!(close(
            values::<2>(&g, m.a.weight.id),
            vec![c, 2.0 * c, 0.0, 2.0 * c]
        ));
        assert!(close(values::<2>(&g, m.b.weight.id), vec![4.0 * c, 0.0]));
        assert!(g.get::<1>(m.b.bias.as_ref().unwrap().id).is_none());
        // Per tensor, b.weight (norm 4) would have been clipped to norm 1 on its own: 1, 0.
        assert!(!close(values::<2>(&g, m.b.weight.id), vec![1.0, 0.0]));
        let clipped = global_norm(&m, &g);
        assert!((clipped - 1.0).abs() < 1e-6, "{clipped}");
    }

    #[test]
    fn a_norm_under_the_limit_or_no_limit_leaves_the_gradients_alone() {
        let m = two();
        for (max, k) in [(10.0, 1.0), (0.0, 100.0)] {
            let (g, norm) = clip_global(&m, grads(&m, k), max);
            assert_eq!(norm, 5.0 * k);
            assert_eq!(
                values::<2>(&g, m.a.weight.id),
                vec![k, 2.0 * k, 0.0, 2.0 * k]
            );
        }
    }

    #[test]
    fn replicas_sum_in_order() {
        let m = two();
        let s = sum(
            &m,
            vec![grads(&m, 1.0), grads(&m, 2.0), GradientsParams::new()],
        );
        assert_eq!(values::<2>(&s, m.a.weight.id), vec![3.0, 6.0, 0.0, 6.0]);
        assert_eq!(values::<2>(&s, m.b.weight.id), vec![12.0, 0.0]);
        assert!(s.get::<1>(m.b.bias.as_ref().unwrap().id).is_none());
    }
}
