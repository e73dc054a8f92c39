//! Matrix products on the CPU backend against a plain f64 loop.
//!
//! pretext's carried burn-flex allocates a matmul's output without zero-filling it (gemm writes
//! every element; `patches/burn-flex/src/ops/matmul.rs`, `OutBuf`): these tests check that every
//! element comes out right for 2-D, transposed (strided), batched and broadcast products, and
//! that an inner dimension of 0 gives zeros rather than whatever the allocator held.

use burn::prelude::*;
use burn::tensor::Distribution;

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// `[batch, m, k] × [batch, k, n]` by a triple loop in f64.
fn reference(a: &[f32], b: &[f32], batch: usize, m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0f64; batch * m * n];
    for s in 0..batch {
        for i in 0..m {
            for j in 0..n {
                out[(s * m + i) * n + j] = (0..k)
                    .map(|p| a[(s * m + i) * k + p] as f64 * b[(s * k + p) * n + j] as f64)
                    .sum();
            }
        }
    }
    out
}

fn check(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

/// Allocates and frees NaN-filled buffers of every size the tests' outputs have.
fn dirty(device: &Device) {
    for n in [
        1,
        30,
        60,
        85,
        128 * 128,
        3 * 9 * 70,
        4 * 17 * 5,
        8 * 128 * 128,
        4 * 128 * 128,
    ] {
        let junk = Tensor::<1>::ones([n], device).mul_scalar(f32::NAN);
        drop(junk.into_data());
    }
}

#[test]
fn products_match_a_plain_loop() {
    let device = Device::flex();
    // Fill the allocator with freed NaN buffers of the outputs' sizes first, so that an output
    // element gemm did not write (or read and scaled by 0) would show.
    dirty(&device);
    for &(batch, m, k, n) in &[
        (1, 1, 1, 1),
        (1, 17, 33, 5),
        (1, 128, 128, 128),
        (3, 9, 4, 70),
        (8, 128, 32, 128),
    ] {
        let a = Tensor::<3>::random([batch, m, k], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<3>::random([batch, k, n], Distribution::Normal(0.0, 1.0), &device);
        let (av, bv) = (to_vec(a.clone()), to_vec(b.clone()));
        let want = reference(&av, &bv, batch, m, k, n);
        let what = format!("[{batch}, {m}, {k}] × [{batch}, {k}, {n}]");
        check(&what, &to_vec(a.clone().matmul(b.clone())), &want);
        // The right side as a transposed view of its [n, k] transpose (strided gemm input).
        let bt = b.clone().swap_dims(1, 2).into_data();
        let bt = Tensor::<3>::from_data(bt, &device).swap_dims(1, 2);
        check(
            &format!("{what}, strided"),
            &to_vec(a.clone().matmul(bt)),
            &want,
        );
        if batch == 1 {
            let a2 = a.clone().reshape([m, k]);
            let b2 = b.clone().reshape([k, n]);
            check(
                &format!("{what}, 2-D"),
                &to_vec(a2.clone().matmul(b2.clone())),
                &want,
            );
            // Broadcast: one [k, n] right side against a batch of four left sides.
            let a4 = Tensor::cat(vec![a.clone(); 4], 0);
            let want4: Vec<f64> = (0..4).flat_map(|_| want.clone()).collect();
            check(
                &format!("{what}, broadcast"),
                &to_vec(a4.matmul(b2.unsqueeze::<3>())),
                &want4,
            );
        }
    }
}

#[test]
fn an_empty_inner_dimension_gives_zeros() {
    let device = Device::flex();
    dirty(&device);
    let a = Tensor::<2>::zeros([6, 0], &device);
    let b = Tensor::<2>::zeros([0, 5], &device);
    assert_eq!(to_vec(a.matmul(b)), vec![0.0; 30]);
    let a = Tensor::<3>::zeros([2, 6, 0], &device);
    let b = Tensor::<3>::zeros([2, 0, 5], &device);
    assert_eq!(to_vec(a.matmul(b)), vec![0.0; 60]);
}
