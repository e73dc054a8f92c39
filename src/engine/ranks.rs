//! The engine's side of training across processes ([`crate::platform::dist`]): gradients summed over
//! ranks at every optimiser update, a step's numbers averaged, weights compared.
//!
//! A module's gradients travel as one flat `f32` buffer: every trainable parameter in the
//! module's visiting order (the same on every rank), zeros where this rank has no gradient,
//! then one presence flag per parameter, so a parameter no rank has a gradient for stays
//! without one (the optimiser then leaves it alone, as it would in one process).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

use super::step::StepStats;
use crate::platform::dist;

/// `grads` (this rank's) summed over every rank. Nothing to do alone.
pub fn all_reduce_grads<M: Module>(module: &M, grads: GradientsParams) -> GradientsParams {
    if dist::size() <= 1 {
        return grads;
    }
    let (mut flat, device) = flatten(module, &grads);
    dist::all_reduce_sum(&mut flat);
    unflatten(module, &flat, device)
}

/// The replicas' gradients of this rank summed, then summed over every rank (one all-reduce).
pub fn sum_local_then_ranks<M: Module>(module: &M, local: Vec<GradientsParams>) -> GradientsParams {
    let mut total: Option<(Vec<f32>, Device)> = None;
    for grads in &local {
        let (flat, device) = flatten(module, grads);
        match &mut total {
            None => total = Some((flat, device)),
            // Values add; presence flags add too (only > 0 matters).
            Some((sum, _)) => sum.iter_mut().zip(flat).for_each(|(a, b)| *a += b),
        }
    }
    let (mut flat, device) = total.expect("the leader's gradients at least");
    dist::all_reduce_sum(&mut flat);
    unflatten(module, &flat, device)
}

/// This rank's share of an update it cannot make (one of its replicas failed): NaN gradients,
/// so the sum every rank receives is NaN and every rank undoes or stops at the step.
pub fn join_without_grads<M: Module>(module: &M) {
    if dist::size() <= 1 {
        return;
    }
    let (mut flat, _) = flatten(module, &GradientsParams::new());
    flat.iter_mut().for_each(|v| *v = f32::NAN);
    dist::all_reduce_sum(&mut flat);
}

/// The gradients of `module`'s trainable parameters as one buffer (values, then presence
/// flags), and the device they are on.
fn flatten<M: Module>(module: &M, grads: &GradientsParams) -> (Vec<f32>, Device) {
    let mut flat = Flatten {
        grads,
        values: Vec::new(),
        present: Vec::new(),
        device: None,
    };
    module.visit(&mut flat);
    let device = flat.device.unwrap_or_else(|| {
        module
            .devices()
            .into_iter()
            .next()
            .map_or_else(Device::flex, |d| d.inner())
    });
    let mut values = flat.values;
    values.extend(flat.present);
    (values, device)
}

/// What [`flatten`] made, back as gradients of `module`.
fn unflatten<M: Module>(module: &M, flat: &[f32], device: Device) -> GradientsParams {
    let (values, present) = flat.split_at(flat.len() - trainable_count(module));
    let mut out = Unflatten {
        grads: GradientsParams::new(),
        values,
        present,
        offset: 0,
        index: 0,
        device,
    };
    module.visit(&mut out);
    out.grads
}

/// Trainable parameters of a module.
struct Count(usize);

impl ModuleVisitor for Count {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if trainable(param) {
            self.0 += 1;
        }
    }
}

/// How many of `module`'s float tensors take gradients (running statistics never do).
pub(crate) fn trainable_count<M: Module>(module: &M) -> usize {
    let mut count = Count(0);
    module.visit(&mut count);
    count.0
}

pub(super) fn trainable<const D: usize>(param: &Param<Tensor<D>>) -> bool {
    param.val().is_require_grad()
}

struct Flatten<'a> {
    grads: &'a GradientsParams,
    values: Vec<f32>,
    present: Vec<f32>,
    device: Option<Device>,
}

impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !trainable(param) {
            return;
        }
        let n = param.lazy_shape().num_elements();
        match self.grads.get::<D>(param.id) {
            Some(g) => {
                self.device.get_or_insert_with(|| g.device());
                let data = g.into_data().convert::<f32>();
                self.values
                    .extend_from_slice(data.as_slice::<f32>().expect("f32 gradient data"));
                self.present.push(1.0);
            }
            None => {
                self.values.extend(std::iter::repeat_n(0.0, n));
                self.present.push(0.0);
            }
        }
    }
}

struct Unflatten<'a> {
    grads: GradientsParams,
    values: &'a [f32],
    present: &'a [f32],
    offset: usize,
    index: usize,
    device: Device,
}

impl ModuleVisitor for Unflatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !trainable(param) {
            return;
        }
        let shape = param.lazy_shape();
        let n = shape.num_elements();
        let values = &self.values[self.offset..self.offset + n];
        if self.present[self.index] > 0.0 {
            let t = Tensor::<D>::from_data(TensorData::new(values.to_vec(), shape), &self.device);
            self.grads.register(param.id, t);
        }
        self.offset += n;
        self.index += 1;
    }
}

/// A step's numbers over every rank: loss and metrics averaged (equal shares of the global
/// batch), items summed. A NaN on any rank makes the average NaN, so every rank undoes (or
/// stops at) the same step.
pub fn merge_stats(stats: StepStats) -> StepStats {
    if dist::size() <= 1 {
        return stats;
    }
    let mut buf: Vec<f64> = std::iter::once(stats.loss as f64)
        .chain(stats.metrics.iter().map(|(_, v)| *v as f64))
        .chain(std::iter::once(stats.items as f64))
        .collect();
    dist::all_reduce_sum_f64(&mut buf);
    let n = dist::size() as f64;
    let mut out = stats;
    out.loss = (buf[0] / n) as f32;
    for (i, (_, v)) in out.metrics.iter_mut().enumerate() {
        *v = (buf[i + 1] / n) as f32;
    }
    out.items = *buf.last().expect("items") as u64;
    out
}

/// Two numbers that change when any trainable weight does: the sum of the weights and a sum
/// weighted by position. Batch-norm running statistics are left out (the same on every rank
/// with synchronised batch norm, per rank with `sync_bn = false`).
pub fn checksum<M: Module>(module: &M) -> [f64; 2] {
    struct Sum([f64; 2], u64);
    impl ModuleVisitor for Sum {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !trainable(param) {
                return;
            }
            let data = param.val().into_data().convert::<f32>();
            for &v in data.as_slice::<f32>().expect("f32 weights") {
                self.1 += 1;
                self.0[0] += v as f64;
                self.0[1] += v as f64 * ((self.1 % 1009) as f64 + 1.0);
            }
        }
    }
    let mut s = Sum([0.0; 2], 0);
    module.visit(&mut s);
    s.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;

    fn linear(seed: u64) -> burn::nn::Linear {
        let device = Device::flex().autodiff();
        crate::platform::device::seeded(&device, seed, || {
            crate::platform::device::init_now(LinearConfig::new(3, 2).init(&device))
        })
    }

    #[test]
    fn gradients_survive_the_flat_buffer() {
        let lin = linear(1);
        let x = Tensor::<2>::ones([4, 3], &lin.weight.device());
        let grads = GradientsParams::from_grads(lin.forward(x).sum().backward(), &lin);
        let (flat, device) = flatten(&lin, &grads);
        assert_eq!(
            flat.len(),
            3 * 2 + 2 + 2,
            "weights, bias, two presence flags"
        );
        let back = unflatten(&lin, &flat, device);
        let id = lin.weight.id;
        let (a, b) = (grads.get::<2>(id).unwrap(), back.get::<2>(id).unwrap());
        a.into_data().assert_eq(&b.into_data(), true);
        let bias = lin.bias.as_ref().unwrap().id;
        let (a, b) = (grads.get::<1>(bias).unwrap(), back.get::<1>(bias).unwrap());
        a.into_data().assert_eq(&b.into_data(), true);
        // Alone, all-reduce hands the gradients back untouched.
        assert_eq!(all_reduce_grads(&lin, grads).len(), 2);
    }

    #[test]
    fn checksums_tell_weights_apart() {
        let (a, b) = (linear(1), linear(2));
        assert_eq!(checksum(&a), checksum(&a.clone()));
        assert_ne!(checksum(&a), checksum(&b));
    }
}
