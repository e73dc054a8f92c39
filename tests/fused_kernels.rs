//! The fused kernels of pretext's carried burn-flex (`patches/burn-flex/src/ops/fused.rs`), which
//! the carried burn-autodiff calls for attention's softmax backward, layer norm's forward and
//! input gradient, and GELU (whose backward reuses the erf term its forward kept). Each
//! must give the same bits as the burn-flex ops it replaces, on row lengths that are not a
//! multiple of the vector width and on more rows than one rayon chunk (64) holds; and GELU's
//! gradient through the autodiff op must be burn-flex's `gelu_backward`, bit for bit.

use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::{Shape, TensorData};
use burn_backend::ops::{ActivationOps, FloatTensorOps};
use burn_flex::{Flex, FlexTensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Values in ±`scale`, with zeros of both signs sprinkled in.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| match i % 23 {
            7 => 0.0,
            13 => -0.0,
            _ => rng.gen_range(-scale..scale),
        })
        .collect()
}

fn flex(shape: &[usize], seed: u64, scale: f32) -> FlexTensor {
    let n = shape.iter().product();
    FlexTensor::from_data(TensorData::new(values(n, seed, scale), shape.to_vec()))
}

fn values_of(t: FlexTensor) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// `got` and `want` hold the same bits; else the first element that differs.
fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} is {:e}, the ops give {:e}",
            got[i], want[i]
        );
    }
}

#[test]
fn softmax_backward_is_the_ops_it_replaces_bit_for_bit() {
    for shape in [[2, 3, 5, 37], [3, 4, 17, 33], [1, 2, 70, 128]] {
        // rows of real probabilities, with masked (−∞) keys as exact zeros
        let n: usize = shape.iter().product();
        let mut scores = values(n, 1, 6.0);
        for v in scores.iter_mut().step_by(5) {
            *v = f32::NEG_INFINITY;
        }
        let probs = Flex::softmax(
            FlexTensor::from_data(TensorData::new(scores, shape.to_vec())),
            3,
        );
        let zeros = values_of(probs.clone())
            .iter()
            .filter(|&&p| p == 0.0)
            .count();
        assert!(zeros >= n / 5, "masked keys give zeros ({zeros} of {n})");
        let dp = flex(&shape, 2, 3.0);
        let row = Flex::float_sum_dim(Flex::float_mul(dp.clone(), probs.clone()), 3);
        let want = Flex::float_mul(probs.clone(), Flex::float_sub(dp.clone(), row));
        let shared = dp.clone();
        let dp = burn_flex::softmax_backward_f32(&probs, dp)
            .expect_err("a dp that is shared is given back untouched");
        drop(shared);
        let got = burn_flex::softmax_backward_f32(&probs, dp).expect("a contiguous f32 dp");
        same_bits(
            &format!("shape {shape:?}"),
            &values_of(got),
            &values_of(want),
        );
    }
}

#[test]
fn layer_norm_forward_is_the_ops_it_replaces_bit_for_bit() {
    for (shape, with_beta) in [
        ([2, 3, 48], true),
        ([4, 70, 37], false),
        ([1, 130, 128], true),
    ] {
        let d = shape[2];
        let x = flex(&shape, 8, 4.0);
        let gamma = Flex::float_reshape(flex(&[d], 9, 2.0), Shape::new([1, 1, d]));
        let beta = Flex::float_reshape(flex(&[d], 10, 1.0), Shape::new([1, 1, d]));
        let eps = 1e-5;
        let mean = Flex::float_mean_dim(x.clone(), 2);
        let centred = Flex::float_sub(x.clone(), mean);
        let var = Flex::float_mean_dim(Flex::float_mul(centred.clone(), centred.clone()), 2);
        let sigma = Flex::float_sqrt(Flex::float_add_scalar(var, eps.into()));
        let x_hat = Flex::float_div(centred, sigma.clone());
        let scaled = Flex::float_mul(x_hat.clone(), gamma.clone());
        let y = match with_beta {
            true => Flex::float_add(scaled, beta.clone()),
            false => scaled,
        };
        let (got_y, got_x_hat, got_sigma) =
            burn_flex::layer_norm_f32(&x, &gamma, with_beta.then_some(&beta), eps)
                .expect("contiguous f32 tensors");
        let what = format!("shape {shape:?} beta {with_beta}");
        assert_eq!(
            got_sigma.layout().shape(),
            sigma.layout().shape(),
            "{what}: σ's shape"
        );
        same_bits(&format!("{what}: y"), &values_of(got_y), &values_of(y));
        same_bits(
            &format!("{what}: x̂"),
            &values_of(got_x_hat),
            &values_of(x_hat),
        );
        same_bits(
            &format!("{what}: σ"),
            &values_of(got_sigma),
            &values_of(sigma),
        );
    }
}

#[test]
fn layer_norm_input_gradient_is_the_ops_it_replaces_bit_for_bit() {
    for shape in [[2, 3, 48], [4, 70, 37], [1, 130, 128]] {
        let d = shape[2];
        // the autodiff op's forward, op for op
        let x = flex(&shape, 3, 4.0);
        let mean = Flex::float_mean_dim(x.clone(), 2);
        let centred = Flex::float_sub(x, mean);
        let var = Flex::float_mean_dim(Flex::float_mul(centred.clone(), centred.clone()), 2);
        let sigma = Flex::float_sqrt(Flex::float_add_scalar(var, 1e-5f64.into()));
        let x_hat = Flex::float_div(centred, sigma.clone());
        let gamma = Flex::float_reshape(flex(&[d], 4, 2.0), Shape::new([1, 1, d]));
        let grad = flex(&shape, 5, 1.0);
        // its former backward, op for op
        let g = Flex::float_mul(grad.clone(), gamma.clone());
        let mean_g = Flex::float_mean_dim(g.clone(), 2);
        let mean_gx = Flex::float_mean_dim(Flex::float_mul(g.clone(), x_hat.clone()), 2);
        let centred = Flex::float_sub(g, mean_g);
        let dx = Flex::float_sub(centred, Flex::float_mul(x_hat.clone(), mean_gx));
        let want = Flex::float_div(dx, sigma.clone());
        let got = burn_flex::layer_norm_backward_x_f32(grad, &x_hat, &sigma, &gamma)
            .expect("contiguous f32 tensors");
        same_bits(
            &format!("shape {shape:?}"),
            &values_of(got),
            &values_of(want),
        );
    }
}

#[test]
fn gelu_keeps_its_erf_term_and_its_gradient_is_flexs_bit_for_bit() {
    let shape = [3, 41, 29];
    let x = flex(&shape, 6, 7.0);
    let g = flex(&shape, 7, 2.0);
    let (y, erf) = burn_flex::gelu_with_erf_f32(&x).expect("a contiguous f32 tensor");
    same_bits(
        "the output",
        &values_of(y),
        &values_of(Flex::gelu(x.clone())),
    );
    let want = Flex::gelu_backward(x.clone(), g.clone());
    let shared = g.clone();
    let g_again = burn_flex::gelu_backward_with_erf_f32(&x, &erf, shared)
        .expect_err("a shared gradient is given back untouched");
    drop(g_again);
    let got = burn_flex::gelu_backward_with_erf_f32(&x, &erf, flex(&shape, 7, 2.0))
        .expect("a gradient of its own");
    same_bits(
        "the gradient from the kept erf term",
        &values_of(got),
        &values_of(want.clone()),
    );

    // through the autodiff op: d/dx Σ gelu(x) ⊙ g = gelu'(x) ⊙ g
    let device = Device::flex().autodiff();
    let data = |t: &FlexTensor| t.clone().into_data();
    let xt = Tensor::<3>::from_data(data(&x), &device).require_grad();
    let gt = Tensor::<3>::from_data(data(&g), &device);
    let grads = (gelu(xt.clone()) * gt).sum().backward();
    let dx = xt.grad(&grads).expect("x's gradient");
    let dx = dx.into_data().try_to_vec::<f32>().unwrap();
    same_bits("the autodiff op's gradient", &dx, &values_of(want));
}
