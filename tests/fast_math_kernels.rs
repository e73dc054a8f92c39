//! `exp`, softmax and GELU on the CPU backend against f64.
//!
//! pretext's carried burn-flex computes f32 `exp` and GELU's `erf` with straight-line arithmetic
//! that vectorizes (`patches/burn-flex/src/ops/fast_math.rs`: Cephes' exp, Numerical Recipes'
//! erfc fit) instead of one libm call per element; the softmax row kernels use the exp too.
//! These tests check exp over the whole f32 range through burn's public API — contiguous
//! tensors owned by the op (in place), shared ones (a new buffer) and strided views (flex's
//! generic path) — softmax and its gradient under autodiff (the path attention and
//! cross-entropy take), and GELU with its gradient.

use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Every 97th f32 from −110 to 90 plus the special values.
fn inputs() -> Vec<f32> {
    let mut xs = vec![
        f32::NEG_INFINITY,
        f32::INFINITY,
        0.0,
        -0.0,
        88.72,
        88.73,
        -103.9,
        -104.5,
    ];
    let mut x = -110.0f32;
    while x < 90.0 {
        xs.push(x);
        let b = x.to_bits();
        x = if x > 0.0 {
            f32::from_bits(b + 97)
        } else if b > 0x8000_0000 + 97 {
            f32::from_bits(b - 97)
        } else {
            0.0
        };
        if x == 0.0 {
            xs.push(0.0);
            x = f32::from_bits(97);
        }
    }
    // an even count, for the [2, n/2] transposed view
    if xs.len() % 2 == 1 {
        xs.push(1.0);
    }
    xs
}

/// Largest relative error over results in the normal range; results that underflow must be
/// within 1e-38 absolute, overflows must be +∞.
fn check(xs: &[f32], got: &[f32], what: &str) -> f64 {
    assert_eq!(xs.len(), got.len());
    let mut worst = 0.0f64;
    for (&x, &g) in xs.iter().zip(got) {
        let want = (x as f64).exp();
        if (want as f32).is_infinite() {
            assert!(
                g.is_infinite() && g > 0.0,
                "{what}: exp({x}) = {g}, want +inf"
            );
        } else if want < f32::MIN_POSITIVE as f64 {
            assert!(
                (g as f64 - want).abs() < 1e-38,
                "{what}: exp({x}) = {g}, want {want:e}"
            );
        } else {
            worst = worst.max((g as f64 - want).abs() / want);
        }
    }
    assert!(worst < 3e-7, "{what}: relative error {worst:e}");
    worst
}

#[test]
fn exp_matches_f64_over_the_f32_range() {
    let xs = inputs();
    let n = xs.len();
    let device = Device::flex();
    let t = || Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &device);
    // owned by the op: computed in place
    check(&xs, &to_vec(t().exp()), "in place");
    // shared: a new buffer
    let shared = t();
    let keep = shared.clone();
    check(&xs, &to_vec(shared.exp()), "shared");
    drop(keep);
    // strided: a transposed view through flex's generic unary path
    let m = t().reshape([n / 2, 2]).transpose();
    let got = to_vec(m.exp().transpose().reshape([n]));
    check(&xs, &got, "transposed");
    // the slice loops (AVX-512 or AVX2 where the CPU has it) give the generic path's scalar bits
    let vectorized = to_vec(t().exp());
    for ((&x, &v), &s) in xs.iter().zip(&vectorized).zip(&got) {
        assert_eq!(
            v.to_bits(),
            s.to_bits(),
            "exp({x}): {v} vectorized, {s} scalar"
        );
    }
    // NaN stays NaN
    let nan = Tensor::<1>::from_data(TensorData::new(vec![f32::NAN], [1]), &device);
    assert!(to_vec(nan.exp())[0].is_nan());
}

#[test]
fn softmax_and_its_gradient_match_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let device = Device::flex().autodiff();
    for &(rows, len, masked) in &[(64usize, 128usize, 0.5f64), (8, 4096, 0.0), (50, 7, 0.3)] {
        let mut x: Vec<f32> = (0..rows * len)
            .map(|_| rng.gen_range(-12.0..12.0))
            .collect();
        for (i, v) in x.iter_mut().enumerate() {
            // never the row's first entry, so no row is fully masked
            if i % len != 0 && rng.gen_bool(masked) {
                *v = f32::NEG_INFINITY;
            }
        }
        let dy: Vec<f32> = (0..rows * len).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let xt =
            Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, len]), &device).require_grad();
        let dyt = Tensor::<2>::from_data(TensorData::new(dy.clone(), [rows, len]), &device);
        let y = softmax(xt.clone(), 1);
        let grads = (y.clone() * dyt).sum().backward();
        let (y, dx) = (to_vec(y), to_vec(xt.grad(&grads).unwrap()));
        for r in 0..rows {
            let row = &x[r * len..(r + 1) * len];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|v| v / sum).collect();
            let dot: f64 = (0..len).map(|j| p[j] * dy[r * len + j] as f64).sum();
            for j in 0..len {
                let k = r * len + j;
                let dp = p[j] * (dy[k] as f64 - dot);
                assert!(
                    (y[k] as f64 - p[j]).abs() < 1e-6,
                    "softmax [{r}, {j}] of {rows}×{len}"
                );
                assert!(
                    (dx[k] as f64 - dp).abs() < 1e-6,
                    "gradient [{r}, {j}] of {rows}×{len}"
                );
                if row[j] == f32::NEG_INFINITY {
                    assert_eq!(y[k], 0.0, "a masked entry gets exactly 0");
                }
            }
        }
    }
}

/// erf in f64: Taylor series below 4 (about 1e-9 absolute after cancellation), ±1 beyond
/// (erfc(4) ≈ 1.5e-8).
fn erf64(x: f64) -> f64 {
    if x.abs() >= 4.0 {
        return x.signum();
    }
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x * x / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn gelu_and_its_gradient_match_f64() {
    let device = Device::flex().autodiff();
    let xs: Vec<f32> = (0..24_001).map(|i| -12.0 + i as f32 * 1e-3).collect();
    let n = xs.len();
    let dy: Vec<f32> = (0..n).map(|i| 1.0 - (i % 7) as f32 * 0.3).collect();
    let xt = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &device).require_grad();
    let dyt = Tensor::<1>::from_data(TensorData::new(dy.clone(), [n]), &device);
    let y = gelu(xt.clone());
    let grads = (y.clone() * dyt).sum().backward();
    let (y, dx) = (to_vec(y), to_vec(xt.grad(&grads).unwrap()));
    for i in 0..n {
        let x = xs[i] as f64;
        let cdf = 0.5 * (1.0 + erf64(x / std::f64::consts::SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let (want_y, want_dx) = (x * cdf, dy[i] as f64 * (cdf + x * pdf));
        let tol = 1e-6 * x.abs().max(1.0);
        assert!(
            (y[i] as f64 - want_y).abs() < tol,
            "gelu({x}) = {}, want {want_y}",
            y[i]
        );
        assert!(
            (dx[i] as f64 - want_dx).abs() < tol,
            "gelu'({x}) · {} = {}, want {want_dx}",
            dy[i],
            dx[i]
        );
    }
}
