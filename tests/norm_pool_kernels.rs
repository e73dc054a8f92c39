//! Batch norm (training statistics) and 2-D max pooling on the CPU backend, forward and
//! gradients, against a plain f64 reference.
//!
//! pretext's carried burn-flex (`patches/burn-flex`) has its own kernels for both:
//! `src/ops/batch_norm.rs` (statistics, output and the three gradients in two passes each) and
//! `src/ops/max_pool2d_plain.rs` (pools without padding or dilation). These tests run them
//! through burn's public API on `Device::flex().autodiff()` — the path every pretext model takes
//! — on random shapes and on pretext's layer shapes, compare with direct loops in f64 and with
//! batch norm written out of plain tensor ops (burn's autodiff through reductions), and check
//! that one and two rayon threads give bit-identical results; batch norm synchronised over parts
//! of a batch (`set_batch_norm_sync`, pretext's replicas) against the whole batch.

use burn::prelude::*;
use burn::tensor::module::{batch_norm_train, max_pool2d};
use burn::tensor::ops::MaxPoolOptions;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const EPS: f64 = 1e-5;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Largest |got − want| relative to max(1, max |want|), and where.
fn worst(got: &[f32], want: &[f64]) -> (usize, f64) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs() / scale)
        .enumerate()
        .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a })
}

// ---------------------------------------------------------------------------------------------
// batch norm
// ---------------------------------------------------------------------------------------------

/// `[N, C, S...]` input, per-channel gamma/beta and an output gradient.
#[derive(Debug)]
struct Norm {
    dims: Vec<usize>,
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    dy: Vec<f32>,
}

impl Norm {
    fn new(dims: Vec<usize>, offset: f32, rng: &mut ChaCha8Rng) -> Self {
        let len: usize = dims.iter().product();
        let c = dims[1];
        let mut v = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..n).map(|_| rng.gen_range(lo..hi)).collect()
        };
        // per-channel offsets like a conv's output before its norm
        let x = v(len, -1.0, 1.0);
        let per_c = v(c, -offset, offset + f32::EPSILON);
        let s: usize = dims[2..].iter().product();
        let x = x
            .iter()
            .enumerate()
            .map(|(i, xv)| xv * 2.0 + per_c[(i / s) % c])
            .collect();
        Norm {
            x,
            gamma: v(c, 0.5, 1.5),
            beta: v(c, -0.5, 0.5),
            dy: v(len, -1.0, 1.0),
            dims,
        }
    }

    fn nsc(&self) -> (usize, usize, usize) {
        (self.dims[0], self.dims[1], self.dims[2..].iter().product())
    }

    /// output, x grad, gamma grad, beta grad, mean, variance in f64.
    fn reference(&self) -> [Vec<f64>; 6] {
        let (n, c, s) = self.nsc();
        let at = |i: usize, ch: usize, k: usize| (i * c + ch) * s + k;
        let cnt = (n * s) as f64;
        let mut y = vec![0.0; self.x.len()];
        let mut dx = vec![0.0; self.x.len()];
        let (mut dg, mut db, mut means, mut vars) = (vec![], vec![], vec![], vec![]);
        for ch in 0..c {
            let idx: Vec<usize> = (0..n)
                .flat_map(|i| (0..s).map(move |k| at(i, ch, k)))
                .collect();
            let mean = idx.iter().map(|&j| self.x[j] as f64).sum::<f64>() / cnt;
            let var = idx
                .iter()
                .map(|&j| (self.x[j] as f64 - mean).powi(2))
                .sum::<f64>()
                / cnt;
            let inv = 1.0 / (var + EPS).sqrt();
            let g = self.gamma[ch] as f64;
            let xhat = |j: usize| (self.x[j] as f64 - mean) * inv;
            let sum_dy: f64 = idx.iter().map(|&j| self.dy[j] as f64).sum();
            let sum_dy_xhat: f64 = idx.iter().map(|&j| self.dy[j] as f64 * xhat(j)).sum();
            for &j in &idx {
                y[j] = xhat(j) * g + self.beta[ch] as f64;
                dx[j] = g * inv * (self.dy[j] as f64 - sum_dy / cnt - xhat(j) * sum_dy_xhat / cnt);
            }
            dg.push(sum_dy_xhat);
            db.push(sum_dy);
            means.push(mean);
            vars.push(var);
        }
        [y, dx, dg, db, means, vars]
    }

    /// The same six through burn: `fused` takes `batch_norm_train` (the backend's kernel), else
    /// batch norm written out of mean/sub/mul/sqrt tensor ops.
    fn burn(&self, fused: bool) -> [Vec<f32>; 6] {
        let device = Device::flex().autodiff();
        let (n, c, s) = self.nsc();
        let x = Tensor::<3>::from_data(TensorData::new(self.x.clone(), [n, c, s]), &device)
            .require_grad();
        let gamma = Tensor::<1>::from_data(TensorData::new(self.gamma.clone(), [c]), &device)
            .require_grad();
        let beta =
            Tensor::<1>::from_data(TensorData::new(self.beta.clone(), [c]), &device).require_grad();
        let dy = Tensor::<3>::from_data(TensorData::new(self.dy.clone(), [n, c, s]), &device);
        let (y, mean, var) = if fused {
            let r = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), EPS);
            (r.output, r.mean, r.variance)
        } else {
            let flat = x.clone().swap_dims(0, 1).reshape([c, n * s]);
            let mean = flat.clone().mean_dim(1).reshape([c]);
            let centred = x.clone() - mean.clone().reshape([1, c, 1]);
            let var = (centred.clone() * centred.clone())
                .swap_dims(0, 1)
                .reshape([c, n * s])
                .mean_dim(1)
                .reshape([c]);
            let y = centred / (var.clone().reshape([1, c, 1]) + EPS).sqrt()
                * gamma.clone().reshape([1, c, 1])
                + beta.clone().reshape([1, c, 1]);
            (y, mean.detach(), var.detach())
        };
        let grads = (y.clone() * dy).sum().backward();
        [
            to_vec(y),
            to_vec(x.grad(&grads).expect("x has a gradient")),
            to_vec(gamma.grad(&grads).expect("gamma has a gradient")),
            to_vec(beta.grad(&grads).expect("beta has a gradient")),
            to_vec(mean),
            to_vec(var),
        ]
    }

    fn check(&self) {
        let want = self.reference();
        for fused in [true, false] {
            let got = self.burn(fused);
            for (k, name) in [
                "output",
                "x grad",
                "gamma grad",
                "beta grad",
                "mean",
                "variance",
            ]
            .iter()
            .enumerate()
            {
                let (i, err) = worst(&got[k], &want[k]);
                assert!(
                    err < 2e-4,
                    "batch norm {name} (fused {fused}) off by {err:.2e} at {i}: {} vs {}, dims {:?}",
                    got[k][i],
                    want[k][i],
                    self.dims
                );
            }
        }
    }
}

fn norm_shapes(rng: &mut ChaCha8Rng) -> Vec<Norm> {
    let mut cases = vec![
        // pretext's conv net on 28-px images (batch 32 here), its MLP heads, a 1-sample batch
        Norm::new(vec![32, 16, 28, 28], 3.0, rng),
        Norm::new(vec![32, 64, 7, 7], 3.0, rng),
        Norm::new(vec![64, 128, 2, 2], 3.0, rng),
        Norm::new(vec![256, 512], 1.0, rng),
        Norm::new(vec![2, 3], 1.0, rng),
        Norm::new(vec![1, 5, 3, 3], 0.0, rng),
        // a large per-channel offset (cancellation in x − mean)
        Norm::new(vec![8, 4, 5, 5], 100.0, rng),
    ];
    for _ in 0..30 {
        let rank = rng.gen_range(2..=5);
        let dims = (0..rank)
            .map(|d| match d {
                0 => rng.gen_range(1..=9),
                1 => rng.gen_range(1..=12),
                _ => rng.gen_range(1..=7),
            })
            .collect();
        cases.push(Norm::new(dims, 2.0, rng));
    }
    cases
}

#[test]
fn batch_norm_matches_the_f64_reference_and_plain_tensor_ops() {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    for case in norm_shapes(&mut rng) {
        case.check();
        pool(1).install(|| case.check());
    }
}

#[test]
fn batch_norm_one_and_two_threads_give_identical_results() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for case in norm_shapes(&mut rng) {
        let one = pool(1).install(|| case.burn(true));
        let two = pool(2).install(|| case.burn(true));
        for k in 0..6 {
            let same = one[k]
                .iter()
                .zip(&two[k])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "result {k} differs, dims {:?}", case.dims);
        }
    }
}

impl Norm {
    /// The samples `rows` of this batch (x and dy cut along N; gamma and beta shared).
    fn part(&self, rows: std::ops::Range<usize>) -> Norm {
        let (_, c, s) = self.nsc();
        let cut = |v: &[f32]| v[rows.start * c * s..rows.end * c * s].to_vec();
        let mut dims = self.dims.clone();
        dims[0] = rows.len();
        Norm {
            dims,
            x: cut(&self.x),
            gamma: self.gamma.clone(),
            beta: self.beta.clone(),
            dy: cut(&self.dy),
        }
    }
}

/// A hook for each of `n` threads that sums their buffers in thread order (what pretext's
/// replicas do through their exchange), meeting at a barrier.
fn summing_hooks(n: usize) -> Vec<burn_flex::BatchNormSync> {
    use std::sync::{Arc, Barrier, Mutex};
    let slots = Arc::new(Mutex::new(vec![Vec::<f64>::new(); n]));
    let barrier = Arc::new(Barrier::new(n));
    (0..n)
        .map(|p| {
            let (slots, barrier) = (slots.clone(), barrier.clone());
            let hook: burn_flex::BatchNormSync = Arc::new(move |buf: &mut [f64]| {
                slots.lock().unwrap()[p] = buf.to_vec();
                barrier.wait();
                let sum = slots
                    .lock()
                    .unwrap()
                    .iter()
                    .fold(vec![0.0; buf.len()], |mut acc, v| {
                        acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                        acc
                    });
                // Nobody refills a slot before everyone has read this round.
                barrier.wait();
                buf.copy_from_slice(&sum);
            });
            hook
        })
        .collect()
}

/// Batch norm synchronised over parts of the batch (burn-flex's `set_batch_norm_sync`, one
/// thread per part): each part's output and input gradient are the whole batch's rows, the
/// statistics the whole batch's, and the parts' gamma and beta gradients sum to the whole
/// batch's; with the hook cleared the kernel is the plain one again.
#[test]
fn synchronised_batch_norm_over_parts_equals_the_whole_batch() {
    let mut rng = ChaCha8Rng::seed_from_u64(35);
    let cases = [
        (
            Norm::new(vec![12, 5, 6, 7], 3.0, &mut rng),
            vec![0..4, 4..8, 8..12],
        ),
        (Norm::new(vec![10, 16], 1.0, &mut rng), vec![0..7, 7..10]),
        (
            Norm::new(vec![8, 4, 5, 5], 100.0, &mut rng),
            vec![0..2, 2..4, 4..6, 6..8],
        ),
    ];
    for (whole, cuts) in cases {
        let want = whole.reference();
        let (_, c, s) = whole.nsc();
        let hooks = summing_hooks(cuts.len());
        let got: Vec<[Vec<f32>; 6]> = std::thread::scope(|scope| {
            let handles: Vec<_> = cuts
                .iter()
                .zip(hooks)
                .map(|(rows, hook)| {
                    let part = whole.part(rows.clone());
                    scope.spawn(move || {
                        let before = burn_flex::set_batch_norm_sync(Some(hook));
                        assert!(before.is_none());
                        let synced = part.burn(true);
                        burn_flex::set_batch_norm_sync(None);
                        // Cleared: this part's own statistics, as without the hook.
                        let own = part.burn(true);
                        let (i, err) = worst(&own[4], &part.reference()[4]);
                        assert!(err < 1e-6, "own mean off by {err:.2e} at {i}");
                        synced
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let rows_of =
            |v: &[f64], r: &std::ops::Range<usize>| v[r.start * c * s..r.end * c * s].to_vec();
        for (k, name) in ["output", "x grad"].iter().enumerate() {
            for (part, rows) in got.iter().zip(&cuts) {
                let (i, err) = worst(&part[k], &rows_of(&want[k], rows));
                assert!(
                    err < 2e-4,
                    "synced {name} of rows {rows:?} off by {err:.2e} at {i}, dims {:?}",
                    whole.dims
                );
            }
        }
        for (k, name) in [(4, "mean"), (5, "variance")] {
            for part in &got {
                let (i, err) = worst(&part[k], &want[k]);
                assert!(
                    err < 2e-4,
                    "synced {name} off by {err:.2e} at {i}, dims {:?}",
                    whole.dims
                );
            }
        }
        for (k, name) in [(2, "gamma grad"), (3, "beta grad")] {
            let sum: Vec<f32> = (0..c)
                .map(|ch| got.iter().map(|p| p[k][ch]).sum())
                .collect();
            let (i, err) = worst(&sum, &want[k]);
            assert!(
                err < 2e-4,
                "summed {name} off by {err:.2e} at {i}, dims {:?}",
                whole.dims
            );
        }
        // A part's own statistics are not the batch's (so the test can tell them apart).
        let own = whole.part(cuts[0].clone()).reference();
        assert!(
            worst(&to_vec_f32(&own[4]), &want[4]).1 > 1e-3,
            "dims {:?}",
            whole.dims
        );
    }
}

fn to_vec_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

// ---------------------------------------------------------------------------------------------
// max pool
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Pool {
    dims: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    x: Vec<f32>,
    dy: Vec<f32>,
}

impl Pool {
    /// Values on a coarse grid when `ties`, so windows hold equal maxima.
    fn new(
        dims: [usize; 4],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        ties: bool,
        rng: &mut ChaCha8Rng,
    ) -> Self {
        let len = dims.iter().product();
        let x = (0..len)
            .map(|_| {
                let v = rng.gen_range(-1.0f32..1.0);
                if ties {
                    (v * 2.0).round()
                } else {
                    v
                }
            })
            .collect();
        let mut p = Pool {
            dims,
            kernel,
            stride,
            padding,
            x,
            dy: vec![],
        };
        let (oh, ow) = p.out();
        p.dy = (0..dims[0] * dims[1] * oh * ow)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        p
    }

    fn out(&self) -> (usize, usize) {
        let o = |i: usize, k: usize, s: usize, p: usize| (i + 2 * p - k) / s + 1;
        (
            o(
                self.dims[2],
                self.kernel[0],
                self.stride[0],
                self.padding[0],
            ),
            o(
                self.dims[3],
                self.kernel[1],
                self.stride[1],
                self.padding[1],
            ),
        )
    }

    /// Output and x grad: each output is the max of its window (padding never wins), its
    /// gradient goes to the first maximum in row-major order (PyTorch's rule).
    fn reference(&self) -> [Vec<f64>; 2] {
        let [n, c, h, w] = self.dims;
        let (oh, ow) = self.out();
        let mut y = vec![0.0; n * c * oh * ow];
        let mut dx = vec![0.0; self.x.len()];
        for p in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut best: Option<(f32, usize)> = None;
                    for r in 0..self.kernel[0] {
                        for q in 0..self.kernel[1] {
                            let ih = (i * self.stride[0] + r) as isize - self.padding[0] as isize;
                            let iw = (j * self.stride[1] + q) as isize - self.padding[1] as isize;
                            if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                continue;
                            }
                            let at = p * h * w + ih as usize * w + iw as usize;
                            if best.is_none_or(|(b, _)| self.x[at] > b) {
                                best = Some((self.x[at], at));
                            }
                        }
                    }
                    let (b, at) = best.expect("a window holds at least one input");
                    let o = (p * oh + i) * ow + j;
                    y[o] = b as f64;
                    dx[at] += self.dy[o] as f64;
                }
            }
        }
        [y, dx]
    }

    fn burn(&self) -> [Vec<f32>; 2] {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_data(TensorData::new(self.x.clone(), self.dims), &device)
            .require_grad();
        let options = MaxPoolOptions::new(self.kernel)
            .with_stride(self.stride)
            .with_padding(self.padding);
        let y = max_pool2d(x.clone(), options);
        let (oh, ow) = self.out();
        assert_eq!(y.dims(), [self.dims[0], self.dims[1], oh, ow], "{self:?}");
        let dy = Tensor::<4>::from_data(
            TensorData::new(self.dy.clone(), [self.dims[0], self.dims[1], oh, ow]),
            &device,
        );
        let grads = (y.clone() * dy).sum().backward();
        [to_vec(y), to_vec(x.grad(&grads).expect("x has a gradient"))]
    }

    fn check(&self) {
        let want = self.reference();
        let got = self.burn();
        for (k, name) in ["output", "x grad"].iter().enumerate() {
            let (i, err) = worst(&got[k], &want[k]);
            assert!(
                err < 1e-6,
                "max pool {name} off by {err:.2e} at {i}: {} vs {}, {:?} k{:?} s{:?} p{:?}",
                got[k][i],
                want[k][i],
                self.dims,
                self.kernel,
                self.stride,
                self.padding
            );
        }
    }
}

fn pool_shapes(rng: &mut ChaCha8Rng) -> Vec<Pool> {
    let mut cases = vec![
        // pretext's conv net: 2×2/2 pools after each stage, odd maps included
        Pool::new([16, 16, 28, 28], [2, 2], [2, 2], [0, 0], false, rng),
        Pool::new([16, 32, 14, 14], [2, 2], [2, 2], [0, 0], true, rng),
        Pool::new([16, 64, 7, 7], [2, 2], [2, 2], [0, 0], false, rng),
        Pool::new([8, 8, 3, 3], [2, 2], [2, 2], [0, 0], true, rng),
        // 2×2/2 on odd sizes and widths that leave 1–3 outputs after each block of four
        Pool::new([3, 4, 17, 23], [2, 2], [2, 2], [0, 0], true, rng),
        Pool::new([2, 5, 9, 8], [2, 2], [2, 2], [0, 0], true, rng),
        Pool::new([2, 3, 6, 21], [2, 2], [2, 2], [0, 0], false, rng),
        Pool::new([1, 2, 2, 2], [2, 2], [2, 2], [0, 0], true, rng),
        // ResNet's stem pool has padding (flex's own kernel)
        Pool::new([4, 8, 16, 16], [3, 3], [2, 2], [1, 1], false, rng),
    ];
    for i in 0..40 {
        let k = [rng.gen_range(1..=4), rng.gen_range(1..=4)];
        let s = [rng.gen_range(1..=3), rng.gen_range(1..=3)];
        let dims = [
            rng.gen_range(1..=4),
            rng.gen_range(1..=6),
            rng.gen_range(k[0]..=12),
            rng.gen_range(k[1]..=12),
        ];
        let padding = if i % 5 == 0 {
            [k[0] / 2, k[1] / 2]
        } else {
            [0, 0]
        };
        cases.push(Pool::new(dims, k, s, padding, i % 2 == 0, rng));
    }
    cases
}

#[test]
fn max_pool_matches_the_f64_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(4242);
    for case in pool_shapes(&mut rng) {
        case.check();
        pool(1).install(|| case.check());
    }
}

#[test]
fn max_pool_one_and_two_threads_give_identical_results() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for case in pool_shapes(&mut rng) {
        let one = pool(1).install(|| case.burn());
        let two = pool(2).install(|| case.burn());
        for k in 0..2 {
            assert!(
                one[k]
                    .iter()
                    .zip(&two[k])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "result {k} differs, {case:?}"
            );
        }
    }
}
