//! Linear probe: a linear classifier trained on frozen, standardised encoder features.
//!
//! The standardiser is fitted on a sample of the unlabelled training pool (no labels needed), not
//! on the few labelled rows: a feature that happens to be constant on 10 labelled images would
//! otherwise be multiplied by ~1e6 at test time. Its spread is floored at 1% of the typical
//! feature's, and the head starts at zero, so a weight that the labels never move stays zero.

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

/// How many unlabelled pool rows the standardiser is fitted on.
pub const STANDARDIZER_POOL: usize = 2048;

/// Per-dimension mean and std of row-major features [n, dim]; each std is at least 1% of the
/// mean std over all dimensions (and 1e-6), so a near-constant feature is not blown up.
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
    let std: Vec<f32> = sq
        .iter()
        .zip(&mean)
        .map(|(s, &m)| (s / n - (m as f64).powi(2)).max(0.0).sqrt() as f32)
        .collect();
    let floor = (1e-2 * std.iter().sum::<f32>() / dim.max(1) as f32).max(1e-6);
    let std = std.into_iter().map(|s| s.max(floor)).collect();
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
    pool_x: Option<&[f32]>,
    dim: usize,
    classes: usize,
    s: &ProbeSettings,
    device: &Device,
) -> f32 {
    let pred = linear_probe_predict(train_x, train_y, test_x, pool_x, dim, classes, s, device);
    super::scores::accuracy(&pred, test_y)
}

/// Train on (train_x, train_y), return the predicted class of every row of test_x. The
/// standardiser is fitted on `pool_x` (unlabelled rows of the training pool) when given, else on
/// the labelled rows.
#[allow(clippy::too_many_arguments)]
pub fn linear_probe_predict(
    train_x: Vec<f32>,
    train_y: &[u32],
    test_x: Vec<f32>,
    pool_x: Option<&[f32]>,
    dim: usize,
    classes: usize,
    s: &ProbeSettings,
    device: &Device,
) -> Vec<u32> {
    let head = train_probe(train_x, train_y, pool_x, dim, classes, s, device).folded(device);
    predict(|x| head.forward(x), &test_x, dim, device)
}

/// A trained probe: a linear head over standardised features and the standardiser.
pub struct TrainedProbe {
    pub head: LinearHead,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl TrainedProbe {
    /// The same classifier as one linear layer over raw features (the standardiser folded into
    /// the weights: w' = w / std, b' = b − Σ w·mean / std), e.g. to start fine-tuning from.
    pub fn folded(&self, device: &Device) -> LinearHead {
        let (mut w, mut b) = self.head.affine();
        let classes = b.len();
        for (j, row) in w.chunks_mut(classes).enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v /= self.std[j];
                b[k] -= *v * self.mean[j];
            }
        }
        LinearHead::from_affine(w, b, self.mean.len(), classes, device)
    }
}

/// Train a probe on (train_x, train_y), the standardiser fitted on `pool_x` when given.
#[allow(clippy::too_many_arguments)]
pub fn train_probe(
    mut train_x: Vec<f32>,
    train_y: &[u32],
    pool_x: Option<&[f32]>,
    dim: usize,
    classes: usize,
    s: &ProbeSettings,
    device: &Device,
) -> TrainedProbe {
    let (mean, std) = standardizer(pool_x.unwrap_or(&train_x), dim);
    standardize(&mut train_x, dim, &mean, &std);
    let ad = device.clone().autodiff();
    let mut head = LinearHead::zeros(dim, classes, &ad);
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
    TrainedProbe {
        head: head.valid().to_device(device),
        mean,
        std,
    }
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
        let acc = linear_probe(x.clone(), &y, x, &y, None, dim, 2, &s, &Device::flex());
        assert!(acc > 0.95, "accuracy {acc}");
    }

    #[test]
    fn a_feature_constant_on_the_labelled_rows_is_scaled_by_the_pool() {
        // Feature 1 is 0 on every labelled row but spreads over the pool: fitted on the labelled
        // rows its std would be the floor and a test value of 1 would become huge.
        let dim = 2;
        let train = vec![1.0, 0.0, -1.0, 0.0, 1.1, 0.0, -0.9, 0.0];
        let pool: Vec<f32> = (0..100)
            .flat_map(|i| [((i % 2) as f32) * 2.0 - 1.0, (i as f32 / 50.0) - 1.0])
            .collect();
        let (mean, std) = standardizer(&pool, dim);
        assert!((std[1] - 0.577).abs() < 0.01, "pool std {std:?}");
        let mut test = vec![1.0, 1.0];
        standardize(&mut test, dim, &mean, &std);
        assert!(test[1].abs() < 2.0, "standardised {test:?}");
        let (_, labelled_std) = standardizer(&train, dim);
        assert!(
            labelled_std[1] >= 1e-2 * 0.5,
            "floored std {labelled_std:?}"
        );
    }

    #[test]
    fn the_untrained_probe_predicts_every_class_alike() {
        // Zero-initialised head: with no steps the logits are equal and arg-max picks class 0.
        let s = ProbeSettings {
            steps: 0,
            batch_size: 4,
            lr: 0.01,
            weight_decay: 0.0,
            seed: 3,
        };
        let x = vec![1.0, -2.0, 0.5, 3.0, -1.0, 0.2];
        let pred = linear_probe_predict(x.clone(), &[0, 1, 2], x, None, 2, 3, &s, &Device::flex());
        assert_eq!(pred, vec![0, 0, 0]);
    }

    #[test]
    fn the_folded_probe_gives_the_same_logits_on_raw_features() {
        let (dim, classes) = (3, 2);
        let x: Vec<f32> = (0..60).map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.0).collect();
        let y: Vec<u32> = (0..20).map(|i| (i % 2) as u32).collect();
        let s = ProbeSettings {
            steps: 50,
            batch_size: 8,
            lr: 0.05,
            weight_decay: 0.0,
            seed: 1,
        };
        let d = Device::flex();
        let p = train_probe(x.clone(), &y, None, dim, classes, &s, &d);
        let mut standardised = x.clone();
        standardize(&mut standardised, dim, &p.mean, &p.std);
        let raw = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [20, dim]), &d);
        let a = p
            .head
            .forward(raw(standardised))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let b = p
            .folded(&d)
            .forward(raw(x))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
