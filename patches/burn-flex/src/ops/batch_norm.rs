//! pretext patch (new file, upstreamable; the f32 backward sums on the widest vectors): batch norm with batch statistics, forward and
//! backward, each one pass over the statistics and one over the elements; optionally with its
//! per-channel sums synchronised across data-parallel parts ([`set_batch_norm_sync`]).
//!
//! Why: burn-backend 0.22.1's defaults compute the statistics by swapping the batch and
//! channel dims and reshaping (a full strided copy of the input, twice in the forward and twice
//! in the backward), then run about ten separate element-wise ops with a buffer each. Here the
//! input is read in place as `[N, C, S]` (`S` the product of the spatial dims, 1 for `[N, C]`):
//!
//! - forward:  `mean_c`, `var_c` (biased) per channel, then
//!   `y = (x − mean_c) · (γ_c / √(var_c + ε)) + β_c`
//! - backward: `Σdy_c`, `Σdy·x̂_c` per channel, then
//!   `dx = γ_c / √(var_c + ε) · (dy − Σdy_c / n − x̂ · Σdy·x̂_c / n)`, `dγ = Σdy·x̂`, `dβ = Σdy`
//!
//! Per-channel sums accumulate in f64, in the same order whatever the thread count (channels
//! are split between threads, never one channel's sum), so one and many threads give
//! bit-identical results. f32 and f64 run natively; f16 and bf16 go through f32.
//!
//! Synchronised batch norm: a thread that set a hook with [`set_batch_norm_sync`] hands it its
//! per-channel f64 sums, and the hook sums them in place over every part of the global batch
//! (each part's thread calls it the same number of times in the same order). The forward hands
//! it `[count, Σx_c…]` (then `mean = Σx / count`) and `[Σ(x − mean)²_c…]` (then
//! `var = Σ(x − mean)² / count`); the backward `[count, Σdy_c…, Σdy·x̂_c…]` for `dx`, while `dγ`
//! and `dβ` stay this part's own sums (data-parallel training sums parameter gradients across
//! parts already; the global sums would count them once per part). Without a hook the kernels
//! are exactly the unsynchronised ones.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_backend::ops::{BatchNormTrain, BatchNormTrainBackward};
use burn_std::{Bytes, Shape};
use core::ops::{Add, Mul, Sub};

use crate::ops::conv2d_gemm::{from_f32, to_f32};
use crate::ops::fast_math::widest_simd;
use crate::{Flex, FlexTensor, Layout};

/// Element types the kernels run on natively.
trait NormElem:
    bytemuck::Pod
    + burn_backend::Element
    + Copy
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + 'static
{
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;

    /// `Σ x` (`lane_sum`) on the widest vectors this element type has a path for.
    #[inline]
    fn lane_sum_x(xs: &[Self], acc: &mut [f64; LANES]) {
        lane_sum(xs, acc, |v| v)
    }

    /// `Σ (x − mean)²` (`lane_sum`) on the widest vectors this element type has a path for.
    #[inline]
    fn lane_sum_sq(xs: &[Self], mean: f64, acc: &mut [f64; LANES]) {
        lane_sum(xs, acc, |v| (v - mean) * (v - mean))
    }

    /// `lane_sum2` on the widest vectors this element type has a path for.
    #[inline]
    fn lane_sum2(dy: &[Self], xs: &[Self], m: f64, s: f64, acc: &mut [[f64; LANES]; 2]) {
        lane_sum2(dy, xs, m, s, acc)
    }
}

impl NormElem for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }

    // The sums below: the same arithmetic in the same order, compiled for AVX-512 or AVX2
    // where the CPU has them (the crate's baseline is SSE2: two f64 lanes per instruction),
    // so the same bits on every path.
    fn lane_sum_x(xs: &[f32], acc: &mut [f64; LANES]) {
        widest_simd!((xs: &[f32], acc: &mut [f64; LANES]) { lane_sum(xs, acc, |v| v) })
    }

    fn lane_sum_sq(xs: &[f32], mean: f64, acc: &mut [f64; LANES]) {
        widest_simd!((xs: &[f32], mean: f64, acc: &mut [f64; LANES]) {
            lane_sum(xs, acc, |v| (v - mean) * (v - mean))
        })
    }

    fn lane_sum2(dy: &[f32], xs: &[f32], m: f64, s: f64, acc: &mut [[f64; LANES]; 2]) {
        widest_simd!((dy: &[f32], xs: &[f32], m: f64, s: f64, acc: &mut [[f64; LANES]; 2]) {
            lane_sum2(dy, xs, m, s, acc)
        })
    }
}

impl NormElem for f64 {
    const DTYPE: DType = DType::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// Sums a buffer of per-channel f64 sums in place over every part of a data-parallel batch.
pub type BatchNormSync = alloc::sync::Arc<dyn Fn(&mut [f64]) + Send + Sync>;

#[cfg(feature = "std")]
std::thread_local! {
    static SYNC: core::cell::RefCell<Option<BatchNormSync>> = const { core::cell::RefCell::new(None) };
}

/// Sets (or with `None` clears) the calling thread's batch-norm synchronisation hook; returns
/// the previous one. While set, every `batch_norm_train` and its backward on this thread sum
/// their per-channel statistics through it (see the module doc). Without `std` there are no
/// thread-locals: the hook is ignored.
pub fn set_batch_norm_sync(hook: Option<BatchNormSync>) -> Option<BatchNormSync> {
    #[cfg(feature = "std")]
    {
        SYNC.with(|s| s.replace(hook))
    }
    #[cfg(not(feature = "std"))]
    {
        let _ = hook;
        None
    }
}

/// The calling thread's hook (cloned out, so it may block without holding the cell).
fn sync_hook() -> Option<BatchNormSync> {
    #[cfg(feature = "std")]
    {
        SYNC.with(|s| s.borrow().clone())
    }
    #[cfg(not(feature = "std"))]
    {
        None
    }
}

/// Elements below which the kernels stay on the calling thread.
const PARALLEL_MIN: usize = 32 * 1024;

fn parallel(elems: usize, units: usize) -> bool {
    #[cfg(feature = "rayon")]
    {
        units > 1 && elems >= PARALLEL_MIN && rayon::current_num_threads() > 1
    }
    #[cfg(not(feature = "rayon"))]
    {
        let _ = (elems, units);
        false
    }
}

/// `[N, C, S]` of a `[N, C, ...]` shape.
fn dims(shape: &Shape) -> (usize, usize, usize) {
    assert!(
        shape.num_dims() >= 2,
        "batch_norm: expected an input of rank 2 or more, got shape {:?}",
        shape
    );
    let n = shape[0];
    let c = shape[1];
    let s = (2..shape.num_dims()).map(|d| shape[d]).product();
    (n, c, s)
}

/// Runs `f(c)` for every channel and collects the results in channel order.
fn per_channel<R: Send>(
    channels: usize,
    elems: usize,
    f: impl Fn(usize) -> R + Send + Sync,
) -> Vec<R> {
    #[cfg(feature = "rayon")]
    if parallel(elems, channels) {
        use rayon::prelude::*;
        return (0..channels).into_par_iter().map(f).collect();
    }
    (0..channels).map(f).collect()
}

/// Runs `f(sample, out)` over the samples' `[C, S]` slices of `out`.
fn per_sample<T: NormElem>(
    out: &mut [T],
    sample_len: usize,
    f: impl Fn(usize, &mut [T]) + Send + Sync,
) {
    if sample_len == 0 || out.is_empty() {
        return;
    }
    #[cfg(feature = "rayon")]
    if parallel(out.len(), out.len() / sample_len) {
        use rayon::prelude::*;
        out.par_chunks_mut(sample_len)
            .enumerate()
            .for_each(|(i, chunk)| f(i, chunk));
        return;
    }
    for (i, chunk) in out.chunks_mut(sample_len).enumerate() {
        f(i, chunk);
    }
}

/// Accumulator lanes of the f64 sums (fixed, so the order of the additions never changes).
const LANES: usize = 8;

/// `Σ f(x)` in f64 over `LANES` interleaved partial sums (vectorisable), added in a fixed order.
#[inline(always)]
fn lane_sum<T: NormElem>(xs: &[T], acc: &mut [f64; LANES], f: impl Fn(f64) -> f64) {
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for j in 0..LANES {
            acc[j] += f(chunk[j].to_f64());
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        acc[j] += f(v.to_f64());
    }
}

/// `(Σ dy, Σ dy·(x − m)·s)` in f64 over `LANES` interleaved partial sums.
#[inline(always)]
fn lane_sum2<T: NormElem>(dy: &[T], xs: &[T], m: f64, s: f64, acc: &mut [[f64; LANES]; 2]) {
    let mut dy_chunks = dy.chunks_exact(LANES);
    let mut x_chunks = xs.chunks_exact(LANES);
    for (g, v) in (&mut dy_chunks).zip(&mut x_chunks) {
        for j in 0..LANES {
            let g = g[j].to_f64();
            acc[0][j] += g;
            acc[1][j] += g * ((v[j].to_f64() - m) * s);
        }
    }
    for (j, (&g, &v)) in dy_chunks
        .remainder()
        .iter()
        .zip(x_chunks.remainder())
        .enumerate()
    {
        let g = g.to_f64();
        acc[0][j] += g;
        acc[1][j] += g * ((v.to_f64() - m) * s);
    }
}

fn total(acc: &[f64; LANES]) -> f64 {
    acc.iter().sum()
}

fn channel_vec<T: NormElem>(values: Vec<T>) -> FlexTensor {
    let len = values.len();
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(vec![len])),
        T::DTYPE,
    )
}

/// Per-channel `(mean, biased variance)` over every part: local sums through `sync`.
fn synced_stats<T: NormElem>(
    xd: &[T],
    n: usize,
    c: usize,
    s: usize,
    sync: &BatchNormSync,
) -> Vec<(f64, f64)> {
    let sums = per_channel(c, xd.len(), |ch| {
        let mut acc = [0.0f64; LANES];
        for i in 0..n {
            let base = (i * c + ch) * s;
            T::lane_sum_x(&xd[base..base + s], &mut acc);
        }
        total(&acc)
    });
    let mut buf = Vec::with_capacity(c + 1);
    buf.push((n * s) as f64);
    buf.extend(sums);
    sync(&mut buf);
    let count = buf[0];
    let means: Vec<f64> = buf[1..]
        .iter()
        .map(|&t| if count > 0.0 { t / count } else { 0.0 })
        .collect();
    let mut squares = per_channel(c, xd.len(), |ch| {
        let mean = means[ch];
        let mut acc = [0.0f64; LANES];
        for i in 0..n {
            let base = (i * c + ch) * s;
            T::lane_sum_sq(&xd[base..base + s], mean, &mut acc);
        }
        total(&acc)
    });
    sync(&mut squares);
    means
        .into_iter()
        .zip(squares)
        .map(|(m, q)| (m, if count > 0.0 { q / count } else { 0.0 }))
        .collect()
}

fn train_native<T: NormElem>(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> BatchNormTrain<Flex> {
    let x = x.to_contiguous();
    let gamma = gamma.to_contiguous();
    let beta = beta.to_contiguous();
    let shape = x.layout().shape().clone();
    let (n, c, s) = dims(&shape);
    let xd: &[T] = x.storage();
    let gd: &[T] = gamma.storage();
    let bd: &[T] = beta.storage();
    let count = (n * s) as f64;

    let stats = match sync_hook() {
        Some(sync) => synced_stats(xd, n, c, s, &sync),
        None => per_channel(c, xd.len(), |ch| {
            let mut acc = [0.0f64; LANES];
            for i in 0..n {
                let base = (i * c + ch) * s;
                T::lane_sum_x(&xd[base..base + s], &mut acc);
            }
            let mean = if count > 0.0 {
                total(&acc) / count
            } else {
                0.0
            };
            let mut acc = [0.0f64; LANES];
            for i in 0..n {
                let base = (i * c + ch) * s;
                T::lane_sum_sq(&xd[base..base + s], mean, &mut acc);
            }
            let var = if count > 0.0 {
                total(&acc) / count
            } else {
                0.0
            };
            (mean, var)
        }),
    };

    // y = (x − mean) · scale + β, per channel, in T.
    let coeffs: Vec<(T, T, T)> = stats
        .iter()
        .enumerate()
        .map(|(ch, &(mean, var))| {
            let scale = gd[ch].to_f64() / (var + epsilon).sqrt();
            (T::from_f64(mean), T::from_f64(scale), bd[ch])
        })
        .collect();

    let mut out: Vec<T> = vec![T::from_f64(0.0); xd.len()];
    per_sample(&mut out, c * s, |i, chunk| {
        let xs = &xd[i * c * s..(i + 1) * c * s];
        for ch in 0..c {
            let (mean, scale, shift) = coeffs[ch];
            let src = &xs[ch * s..(ch + 1) * s];
            let dst = &mut chunk[ch * s..(ch + 1) * s];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = (v - mean) * scale + shift;
            }
        }
    });

    let mean: Vec<T> = stats.iter().map(|&(m, _)| T::from_f64(m)).collect();
    let var: Vec<T> = stats.iter().map(|&(_, v)| T::from_f64(v)).collect();
    BatchNormTrain::new(
        FlexTensor::new(Bytes::from_elems(out), Layout::contiguous(shape), T::DTYPE),
        channel_vec(mean),
        channel_vec(var),
    )
}

fn backward_native<T: NormElem>(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
    output_grad: FlexTensor,
) -> BatchNormTrainBackward<Flex> {
    let x = x.to_contiguous();
    let dy = output_grad.to_contiguous();
    let gamma = gamma.to_contiguous();
    let mean = mean.to_contiguous();
    let variance = variance.to_contiguous();
    let shape = x.layout().shape().clone();
    let (n, c, s) = dims(&shape);
    let xd: &[T] = x.storage();
    let dyd: &[T] = dy.storage();
    let gd: &[T] = gamma.storage();
    let md: &[T] = mean.storage();
    let vd: &[T] = variance.storage();
    let count = (n * s) as f64;
    let inv_std: Vec<f64> = vd
        .iter()
        .map(|&v| 1.0 / (v.to_f64() + epsilon).sqrt())
        .collect();

    // (Σdy, Σdy·x̂) per channel.
    let sums = per_channel(c, xd.len(), |ch| {
        let (m, is) = (md[ch].to_f64(), inv_std[ch]);
        let mut acc = [[0.0f64; LANES]; 2];
        for i in 0..n {
            let base = (i * c + ch) * s;
            T::lane_sum2(&dyd[base..base + s], &xd[base..base + s], m, is, &mut acc);
        }
        (total(&acc[0]), total(&acc[1]))
    });

    // Synchronised: the sums (and the count) over every part, for dx only.
    let synced = sync_hook().map(|sync| {
        let mut buf = Vec::with_capacity(2 * c + 1);
        buf.push(count);
        buf.extend(sums.iter().map(|&(a, _)| a));
        buf.extend(sums.iter().map(|&(_, b)| b));
        sync(&mut buf);
        let global: Vec<(f64, f64)> = (0..c).map(|ch| (buf[1 + ch], buf[1 + c + ch])).collect();
        (buf[0], global)
    });
    let (count, global) = match &synced {
        Some((count, global)) => (*count, global.as_slice()),
        None => (count, sums.as_slice()),
    };

    // dx = dy · a + (x − mean) · b + k per channel, in T, with a = γ/σ,
    // b = −a · mean(dy·x̂) / σ and k = −a · mean(dy).
    let coeffs: Vec<(T, T, T, T)> = (0..c)
        .map(|ch| {
            let (sum_dy, sum_dy_xhat) = global[ch];
            let is = inv_std[ch];
            let a = gd[ch].to_f64() * is;
            let (mean_dy, mean_dy_xhat) = if count > 0.0 {
                (sum_dy / count, sum_dy_xhat / count)
            } else {
                (0.0, 0.0)
            };
            (
                md[ch],
                T::from_f64(a),
                T::from_f64(-a * mean_dy_xhat * is),
                T::from_f64(-a * mean_dy),
            )
        })
        .collect();
    let mut dx: Vec<T> = vec![T::from_f64(0.0); xd.len()];
    per_sample(&mut dx, c * s, |i, chunk| {
        let off = i * c * s;
        for ch in 0..c {
            let (m, a, b, k) = coeffs[ch];
            let range = off + ch * s..off + (ch + 1) * s;
            let dst = &mut chunk[ch * s..(ch + 1) * s];
            for ((d, &g), &v) in dst.iter_mut().zip(&dyd[range.clone()]).zip(&xd[range]) {
                *d = g * a + (v - m) * b + k;
            }
        }
    });

    // This part's own sums: the parameter gradients of every part are summed by the caller.
    let gamma_grad: Vec<T> = sums.iter().map(|&(_, b)| T::from_f64(b)).collect();
    let beta_grad: Vec<T> = sums.iter().map(|&(a, _)| T::from_f64(a)).collect();
    BatchNormTrainBackward::new(
        FlexTensor::new(Bytes::from_elems(dx), Layout::contiguous(shape), T::DTYPE),
        channel_vec(gamma_grad),
        channel_vec(beta_grad),
    )
}

/// Batch norm with the batch's own statistics (returned as `[C]` mean and biased variance).
pub fn batch_norm_train(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> BatchNormTrain<Flex> {
    match x.dtype() {
        DType::F32 => train_native::<f32>(x, gamma, beta, epsilon),
        DType::F64 => train_native::<f64>(x, gamma, beta, epsilon),
        dtype @ (DType::F16 | DType::BF16) => {
            let r = train_native::<f32>(to_f32(x), to_f32(gamma), to_f32(beta), epsilon);
            BatchNormTrain::new(
                from_f32(r.output, dtype),
                from_f32(r.mean, dtype),
                from_f32(r.variance, dtype),
            )
        }
        dtype => panic!("batch_norm_train: unsupported dtype {:?}", dtype),
    }
}

/// Gradients of [batch_norm_train] for the input, `gamma` and `beta`.
pub fn batch_norm_train_backward(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
    output_grad: FlexTensor,
) -> BatchNormTrainBackward<Flex> {
    match x.dtype() {
        DType::F32 => backward_native::<f32>(x, gamma, mean, variance, epsilon, output_grad),
        DType::F64 => backward_native::<f64>(x, gamma, mean, variance, epsilon, output_grad),
        dtype @ (DType::F16 | DType::BF16) => {
            let r = backward_native::<f32>(
                to_f32(x),
                to_f32(gamma),
                to_f32(mean),
                to_f32(variance),
                epsilon,
                to_f32(output_grad),
            );
            BatchNormTrainBackward::new(
                from_f32(r.x_grad, dtype),
                from_f32(r.gamma_grad, dtype),
                from_f32(r.beta_grad, dtype),
            )
        }
        dtype => panic!("batch_norm_train_backward: unsupported dtype {:?}", dtype),
    }
}
