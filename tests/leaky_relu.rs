//! Leaky ReLU on the autodiff backend (the GAN discriminator's activation).
//!
//! pretext's carried burn-autodiff (`patches/burn-autodiff/src/ops/activation.rs`) runs
//! `leaky_relu` as one op with its own backward instead of burn's default composition
//! (`x < 0`, `x · slope`, `mask_where`). It promises the same bits as that composition, value
//! and gradient, signed zeros and NaN included: this test writes the composition out of the
//! same tensor ops and compares bit for bit.

use burn::prelude::*;
use burn::tensor::activation::leaky_relu;

fn bits(t: Tensor<1>) -> Vec<u32> {
    t.into_data()
        .try_to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// burn's default leaky ReLU, written out: `slope · x` where `x < 0`, else `x`.
fn composed(x: Tensor<1>, slope: f64) -> Tensor<1> {
    let below = x.clone().lower_elem(0.0);
    x.clone().mask_where(below, x.mul_scalar(slope))
}

/// (value bits, gradient bits) of `sum(f(x) · w)` for x.
fn value_and_grad(
    x: &[f32],
    w: &[f32],
    f: impl Fn(Tensor<1>) -> Tensor<1>,
) -> (Vec<u32>, Vec<u32>) {
    let device = Device::flex().autodiff();
    let xt = Tensor::<1>::from_floats(x, &device).require_grad();
    let wt = Tensor::<1>::from_floats(w, &device);
    let y = f(xt.clone());
    let grads = (y.clone() * wt).sum().backward();
    let gx = xt.grad(&grads).expect("x has a gradient");
    (bits(y), bits(Tensor::from_inner(gx)))
}

#[test]
fn leaky_relu_matches_the_default_composition_bit_for_bit() {
    // values of both signs, ±0, a NaN, ±∞ and a subnormal; upstream gradients with −0 where
    // the default's sum turns it into +0 (both branches)
    let x = [
        1.5,
        -2.0,
        0.0,
        -0.0,
        f32::NAN,
        -3.25,
        7.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -1e-40,
        0.25,
        -0.5,
    ];
    let w = [
        0.3, -1.7, 2.0, 0.5, 1.0, -0.0, -0.0, 1.0, 2.0, 1.0, 0.0, 1e-45,
    ];
    for slope in [0.2, 0.01, 0.0, 1.0, -0.5] {
        let fused = value_and_grad(&x, &w, |t| leaky_relu(t, slope));
        let plain = value_and_grad(&x, &w, |t| composed(t, slope));
        assert_eq!(fused.0, plain.0, "value, slope {slope}");
        assert_eq!(fused.1, plain.1, "gradient, slope {slope}");
    }
    // the gradient really is the leaky one (not the composition's bits by accident of a zero
    // slope): slope 0.2 scales the negative side
    let (_, g) = value_and_grad(&[-1.0, 1.0], &[1.0, 1.0], |t| leaky_relu(t, 0.2));
    assert_eq!(g, [0.2f32.to_bits(), 1.0f32.to_bits()]);
    // without autodiff tracking the same values
    let device = Device::flex().autodiff();
    let untracked = bits(leaky_relu(Tensor::<1>::from_floats(x, &device), 0.2));
    assert_eq!(untracked, value_and_grad(&x, &w, |t| composed(t, 0.2)).0);
}
