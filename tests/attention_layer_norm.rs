//! Attention and layer normalisation on the autodiff backend, and softmax on the CPU backend.
//!
//! pretext's carried burn-autodiff (`patches/burn-autodiff`) runs `attention` and `layer_norm`
//! as single ops with their own backward (`src/ops/attention.rs`, `src/ops/layer_norm.rs`);
//! the carried burn-flex's f32 softmax runs its rows through vectorized passes. These tests
//! compare values and gradients with the same functions written out of plain differentiable
//! tensor ops (burn's autodiff through matmul, exp, sums and divisions), and softmax with a loop
//! in f64; masks include a row with no key left and a causal mask with more queries than keys.

use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::{attention, layer_norm};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, Tensor};

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite() && (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: fused {g}, composed {w}"
        );
    }
}

/// softmax(QKᵀ·scale) V written out of differentiable ops; `blocked` is true where a key is
/// masked; a row with every key masked gives zeros.
fn composed_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    blocked: Tensor<4, Bool>,
    scale: f64,
) -> Tensor<4> {
    let scores = q.matmul(k.transpose()).mul_scalar(scale);
    let keep = blocked.clone().bool_not().float();
    let scores = scores.mask_fill(blocked, -1e9);
    let max = scores.clone().detach().max_dim(3);
    let e = (scores - max).exp() * keep;
    let sum = e.clone().sum_dim(3).clamp_min(1e-30);
    (e / sum).matmul(v)
}

#[test]
fn attention_value_and_gradients_match_composed_ops() {
    let device = Device::flex().autodiff();
    let (b, h, dk, dv) = (2, 3, 4, 6);
    // (queries, keys, causal, a boolean mask with one row fully masked, scale)
    let cases = [
        (5, 5, false, false, None),
        (5, 5, true, false, None),
        (5, 7, true, false, Some(0.3)),
        (5, 3, true, false, None),
        (4, 6, false, true, None),
        (4, 6, true, true, None),
    ];
    for (t_q, t_k, causal, with_mask, scale) in cases {
        let what = format!("t_q {t_q} t_k {t_k} causal {causal} mask {with_mask}");
        let normal = Distribution::Normal(0.0, 1.5);
        let q = Tensor::<4>::random([b, h, t_q, dk], normal, &device).require_grad();
        let k = Tensor::<4>::random([b, h, t_k, dk], normal, &device).require_grad();
        let v = Tensor::<4>::random([b, h, t_k, dv], normal, &device).require_grad();
        let w = Tensor::<4>::random([b, h, t_q, dv], normal, &device);

        // Boolean mask: key j of batch 0 masked when (i + j) % 3 == 0, and query row 1 of
        // batch 1 with every key masked.
        let mut mask = vec![false; b * h * t_q * t_k];
        if with_mask {
            for (n, m) in mask.iter_mut().enumerate() {
                let (j, i, s) = (n % t_k, (n / t_k) % t_q, n / (h * t_q * t_k));
                *m = (s == 0 && (i + j) % 3 == 0) || (s == 1 && i == 1);
            }
        }
        let mask =
            Tensor::<4, Bool>::from_data(TensorData::new(mask.clone(), [b, h, t_q, t_k]), &device);
        let offset = t_k as i64 - t_q as i64;
        let causal_blocked: Vec<bool> = (0..b * h * t_q * t_k)
            .map(|n| {
                let (j, i) = ((n % t_k) as i64, ((n / t_k) % t_q) as i64);
                causal && j > i + offset
            })
            .collect();
        let causal_blocked = Tensor::<4, Bool>::from_data(
            TensorData::new(causal_blocked, [b, h, t_q, t_k]),
            &device,
        );
        let blocked = mask.clone().bool_or(causal_blocked);

        let options = AttentionModuleOptions {
            scale,
            softcap: None,
            is_causal: causal,
        };
        let mask_arg = with_mask.then_some(mask.clone());
        let fused = attention(
            q.clone(),
            k.clone(),
            v.clone(),
            mask_arg.clone(),
            None,
            options,
        );
        let fused_out = to_vec(fused.clone());
        let scale = scale.unwrap_or(1.0 / (dk as f64).sqrt());
        let composed = composed_attention(q.clone(), k.clone(), v.clone(), blocked, scale);
        close(
            &format!("{what}: output"),
            &fused_out,
            &to_vec(composed.clone()),
            1e-5,
        );
        let fused_grads = (fused * w.clone()).sum().backward();
        let composed_grads = (composed * w).sum().backward();
        for (name, t) in [("dq", &q), ("dk", &k), ("dv", &v)] {
            let got = to_vec(t.grad(&fused_grads).expect("a gradient"));
            let want = to_vec(t.grad(&composed_grads).expect("a gradient"));
            assert!(
                want.iter().any(|x| x.abs() > 1e-3),
                "{what}: {name} worth testing"
            );
            close(&format!("{what}: {name}"), &got, &want, 1e-4);
        }

        // The same op without gradients gives the same output.
        let untracked = attention(q.detach(), k.detach(), v.detach(), mask_arg, None, options);
        assert_eq!(to_vec(untracked), fused_out, "{what}: untracked");
    }
}

#[test]
fn layer_norm_value_and_gradients_match_composed_ops() {
    let device = Device::flex().autodiff();
    let (b, t, d) = (3, 5, 19);
    let eps = 1e-5;
    for with_beta in [true, false] {
        let x =
            Tensor::<3>::random([b, t, d], Distribution::Normal(0.5, 2.0), &device).require_grad();
        let gamma =
            Tensor::<1>::random([d], Distribution::Normal(1.0, 0.5), &device).require_grad();
        let beta = Tensor::<1>::random([d], Distribution::Normal(0.0, 0.5), &device).require_grad();
        let w = Tensor::<3>::random([b, t, d], Distribution::Normal(0.0, 1.0), &device);

        let fused = layer_norm(
            x.clone(),
            gamma.clone(),
            with_beta.then(|| beta.clone()),
            eps,
        );
        let mean = x.clone().mean_dim(2);
        let centred = x.clone() - mean;
        let var = (centred.clone() * centred.clone()).mean_dim(2);
        let composed = centred / (var + eps).sqrt() * gamma.clone().reshape([1, 1, d]);
        let composed = if with_beta {
            composed + beta.clone().reshape([1, 1, d])
        } else {
            composed
        };
        let what = if with_beta { "with beta" } else { "no beta" };
        // The forward is the default's, op for op.
        assert_eq!(
            to_vec(fused.clone()),
            to_vec(composed.clone()),
            "{what}: output"
        );
        let fused_grads = (fused * w.clone()).sum().backward();
        let composed_grads = (composed * w).sum().backward();
        let grad3 = |t: &Tensor<3>, g| to_vec(t.grad(g).expect("a gradient"));
        let grad1 = |t: &Tensor<1>, g| to_vec(t.grad(g).expect("a gradient"));
        let mut pairs = vec![
            ("dx", grad3(&x, &fused_grads), grad3(&x, &composed_grads)),
            (
                "dgamma",
                grad1(&gamma, &fused_grads),
                grad1(&gamma, &composed_grads),
            ),
        ];
        if with_beta {
            pairs.push((
                "dbeta",
                grad1(&beta, &fused_grads),
                grad1(&beta, &composed_grads),
            ));
        }
        for (name, got, want) in pairs {
            close(&format!("{what}: {name}"), &got, &want, 1e-4);
        }
        if !with_beta {
            assert!(beta.grad(&fused_grads).is_none(), "no beta: no gradient");
        }
    }
}

#[test]
fn softmax_matches_an_f64_loop_on_any_thread_count() {
    let device = Device::flex();
    for row in [1usize, 7, 16, 37, 128] {
        let rows = 150; // more than one rayon chunk of 64 rows
        let mut values: Vec<f32> = (0..rows * row)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 40.0)
            .collect();
        // Masked keys (-inf), and a row whose exp would overflow without the shift.
        for (i, x) in values.iter_mut().enumerate() {
            if (i / row) % 5 == 1 && i % row > 0 && i % 3 == 0 {
                *x = f32::NEG_INFINITY;
            }
            if i / row == 2 {
                *x += 120.0;
            }
        }
        let input = Tensor::<2>::from_data(TensorData::new(values.clone(), [rows, row]), &device);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a rayon pool")
                .install(|| to_vec(softmax(input.clone(), 1)))
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(one, two, "row {row}: one and two threads");
        for (r, (got, x)) in one.chunks(row).zip(values.chunks(row)).enumerate() {
            let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
            for (j, (&g, &v)) in got.iter().zip(x).enumerate() {
                let want = (v as f64 - max).exp() / sum;
                assert!(
                    (g as f64 - want).abs() <= 1e-6 * (1.0 + want),
                    "row {row}, [{r}][{j}]: {g} vs {want}"
                );
            }
        }
    }
}
