//! Linear probe: a linear classifier trained on frozen, standardised encoder features.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::engine::schedule::lr_at;
use crate::nn::heads::LinearHead;

#[derive(Clone, Debug)]
pub struct ProbeSettings {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

/// Per-dimension mean and std of row-major features [n, dim].
pub fn standardizer(x: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / dim).max(1) as f64;
    let mut mean = vec![0f64; dim];
    let mut sq = vec![0f64; dim];
    for row in x.chunks(dim) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(s, &m)| ((s / n - (m as f64).powi(2)).max(0.0).sqrt() as f32).max(1e-6))
        .collect();
    (mean, std)
}

pub fn standardize(x: &mut [f32], dim: usize, mean: &[f32], std: &[f32]) {
    for row in x.chunks_mut(dim) {
        for j in 0..dim {
            row[j] = (row[j] - mean[j]) / std[j];
        }
    }
}

/// Train on (train_x, train_y), return the accuracy on (test_x, test_y).
#[allow(clippy::too_many_arguments)]
pub fn linear_probe(
    train_x: Vec<f32>,
    train_y: &[u32],
    test_x: Vec<f32>,
    test_y: &[u32],
    dim: usize,
    classes: usize,
    s: &ProbeSettings,
    device: &Device,
) -> f32 {
    let pred = linear_probe_predict(train_x, train_y, test_x, dim, classes, s, device);
    super::scores::accuracy(&pred, test_y)
}

/// Train on (train_x, train_y), return the predicted class of every row of test_x.
pub fn linear_probe_predict(
    mut train_x: Vec<f32>,
    train_y: &[u32],
    mut test_x: Vec<f32>,
    dim: usize,
    classes: usize,
    s: &ProbeSettings,
    device: &Device,
) -> Vec<u32> {
    let (mean, std) = standardizer(&train_x, dim);
    standardize(&mut train_x, dim, &mean, &std);
    standardize(&mut test_x, dim, &mean, &std);
    let ad = device.clone().autodiff();
    let mut head = crate::device::seeded(&ad, s.seed, || LinearHead::new(dim, classes, &ad));
    let mut optim = AdamWConfig::new()
        .with_weight_decay(s.weight_decay as f32)
        .init();
    let n = train_y.len();
    let bs = s.batch_size.min(n);
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut pos = n;
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    for step in 0..s.steps {
        if pos + bs > n {
            order.shuffle(&mut rng);
            pos = 0;
        }
        let idx = &order[pos..pos + bs];
        pos += bs;
        let mut xb = Vec::with_capacity(bs * dim);
        let mut yb = Vec::with_capacity(bs);
        for &i in idx {
            xb.extend_from_slice(&train_x[i * dim..(i + 1) * dim]);
            yb.push(train_y[i] as i64);
        }
        let x = Tensor::<2>::from_data(TensorData::new(xb, [bs, dim]), &ad);
        let y = Tensor::<1, Int>::from_data(TensorData::new(yb, [bs]), &ad);
        let loss = loss_fn.forward(head.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &head);
        let lr = lr_at(step, s.lr, s.steps / 20, s.steps, 0.0);
        head = optim.step(lr, head, grads);
    }
    let head = head.valid().to_device(device);
    predict(|x| head.forward(x), &test_x, dim, device)
}

/// The arg-max class of a classifier over row-major features, evaluated in chunks.
pub fn predict(
    forward: impl Fn(Tensor<2>) -> Tensor<2>,
    x: &[f32],
    dim: usize,
    device: &Device,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(x.len() / dim.max(1));
    for rows in x.chunks(1024 * dim) {
        let n = rows.len() / dim;
        let logits = forward(Tensor::<2>::from_data(
            TensorData::new(rows.to_vec(), [n, dim]),
            device,
        ));
        out.extend(logits.argmax(1).into_data().iter::<i64>().map(|p| p as u32));
    }
    out
}

/// Accuracy of a classifier over row-major features, evaluated in chunks.
pub fn accuracy(
    forward: impl Fn(Tensor<2>) -> Tensor<2>,
    x: &[f32],
    y: &[u32],
    dim: usize,
    device: &Device,
) -> f32 {
    let mut correct = 0usize;
    for (rows, labels) in x.chunks(1024 * dim).zip(y.chunks(1024)) {
        let n = labels.len();
        let logits = forward(Tensor::<2>::from_data(
            TensorData::new(rows.to_vec(), [n, dim]),
            device,
        ));
        let pred: Vec<i64> = logits.argmax(1).into_data().iter::<i64>().collect();
        correct += pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == **l as i64)
            .count();
    }
    correct as f32 / y.len().max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_features_are_learned() {
        // Two Gaussian-free clusters: class = sign of the first coordinate.
        let dim = 4;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..64 {
            let c = (i % 2) as u32;
            let s = if c == 1 { 1.0 } else { -1.0 };
            x.extend_from_slice(&[
                s * (1.0 + (i as f32) * 0.01),
                (i as f32 * 0.37).sin(),
                0.5,
                (i as f32).cos(),
            ]);
            y.push(c);
        }
        let s = ProbeSettings {
            steps: 200,
            batch_size: 32,
            lr: 0.05,
            weight_decay: 0.0,
            seed: 0,
        };
        let acc = linear_probe(x.clone(), &y, x, &y, dim, 2, &s, &Device::flex());
        assert!(acc > 0.95, "accuracy {acc}");
    }
}
