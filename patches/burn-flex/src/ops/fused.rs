//! New in pretext's copy (see PRETEXT.md): kernels for pretext's carried burn-autodiff, which ran
//! these as chains of element-wise ops and row sums (a full-size buffer and a pass over memory
//! each): layer norm's forward (with the normalised input and σ its backward keeps) and input
//! gradient, attention's softmax backward, and GELU with the erf term its backward can reuse —
//! here each as one pass over the rows of contiguous f32 tensors. burn-autodiff calls them where
//! its inner backend's tensors are `FlexTensor`s and keeps its op-by-op path otherwise.
//!
//! Each gives the same bits as the ops it replaces: the same element-wise arithmetic in the same
//! order (plain IEEE operations, so the vector width does not matter), and the row sums through
//! the kernel `sum_dim` uses on a contiguous last dim (`simd::kernels::sum_f32`, one row at a
//! time as `sum_rows_f32` does it). Rows are split over the rayon pool in fixed chunks; a row's
//! result does not depend on the split.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use burn_backend::DType;

use crate::FlexTensor;
use crate::ops::fast_math::{gelu_backward_with_erf_one, gelu_with_erf_one, widest_simd};

/// Rows per rayon task.
const ROWS_PER_TASK: usize = 64;

/// A contiguous f32 tensor starting at its buffer's beginning: its `n` elements.
fn plain(t: &FlexTensor) -> Option<&[f32]> {
    if t.dtype() != DType::F32 || !t.layout().is_contiguous() || t.layout().start_offset() != 0 {
        return None;
    }
    Some(&t.storage::<f32>()[..t.layout().num_elements()])
}

/// A contiguous f32 tensor of `shape` holding `v`.
fn f32_tensor(v: Vec<f32>, shape: burn_std::Shape) -> FlexTensor {
    FlexTensor::new(
        burn_std::Bytes::from_elems(v),
        crate::Layout::contiguous(shape),
        DType::F32,
    )
}

/// Sum of a row, as `sum_dim` over a contiguous last dim computes it.
#[inline]
fn row_sum(row: &[f32]) -> f32 {
    #[cfg(feature = "simd")]
    {
        crate::simd::kernels::sum_f32(row)
    }
    #[cfg(not(feature = "simd"))]
    {
        row.iter().copied().sum()
    }
}

/// `f(chunk, first row, rows)` over chunks of `out` of `ROWS_PER_TASK` rows of `len`.
fn for_row_chunks(out: &mut [f32], len: usize, f: impl Fn(&mut [f32], usize, usize) + Sync + Send) {
    let chunk = ROWS_PER_TASK * len;
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(o, i * ROWS_PER_TASK, o.len() / len));
    }
    #[cfg(not(feature = "rayon"))]
    for (i, o) in out.chunks_mut(chunk).enumerate() {
        f(o, i * ROWS_PER_TASK, o.len() / len);
    }
}

/// Softmax's backward as attention takes it, `dS = P ⊙ (dP − rowsum(dP ⊙ P))` over the last
/// dim, written over `dp` (the same bits as `mul`, `sum_dim`, `sub`, `mul`). `Err(dp)` untouched
/// where it does not apply (not f32, not contiguous, shapes differ, `dp` shared).
pub fn softmax_backward_f32(
    probs: &FlexTensor,
    mut dp: FlexTensor,
) -> Result<FlexTensor, FlexTensor> {
    let shape = dp.layout().shape().clone();
    let len = shape.last().copied().unwrap_or(0);
    let ok = probs.layout().shape() == &shape && dp.is_unique() && len > 0;
    let (Some(p), true, Some(_)) = (plain(probs), ok, plain(&dp)) else {
        return Err(dp);
    };
    let n = shape.num_elements();
    let d: &mut [f32] = &mut dp.storage_mut::<f32>()[..n];
    for_row_chunks(d, len, |d, first, rows| {
        let mut tmp = vec![0f32; len];
        for r in 0..rows {
            let at = (first + r) * len;
            softmax_backward_row(&mut d[r * len..(r + 1) * len], &p[at..at + len], &mut tmp);
        }
    });
    Ok(dp)
}

fn softmax_backward_row(d: &mut [f32], p: &[f32], tmp: &mut [f32]) {
    widest_simd!((d: &mut [f32], p: &[f32], tmp: &mut [f32]) {
        for ((t, &dv), &pv) in tmp.iter_mut().zip(d.iter()).zip(p) {
            *t = dv * pv;
        }
        let s = row_sum(tmp);
        for (dv, &pv) in d.iter_mut().zip(p) {
            *dv = pv * (*dv - s);
        }
    })
}

/// Layer norm over the last dim of `x` `[…, d]` with `gamma` (and `beta`), `d` elements each:
/// `(y, x̂, σ)` with `σ = √(mean((x − mean(x))²) + ε)` (`[…, 1]`), `x̂ = (x − mean(x)) / σ` and
/// `y = x̂ ⊙ γ (+ β)`, the same bits as `mean_dim`, `sub`, `mul`, `mean_dim`, `add_scalar`,
/// `sqrt`, `div`, `mul` (and `add`). `None` where it does not apply.
pub fn layer_norm_f32(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: Option<&FlexTensor>,
    epsilon: f64,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let xs = plain(x)?;
    let shape = x.layout().shape().clone();
    let len = shape.last().copied().unwrap_or(0);
    let gm = plain(gamma)?;
    let bt = match beta {
        Some(b) => Some(plain(b)?),
        None => None,
    };
    if len == 0 || gm.len() != len || bt.is_some_and(|b| b.len() != len) {
        return None;
    }
    let n = xs.len();
    let rows = n / len;
    let (eps, dim) = (epsilon as f32, len as f32);
    let mut x_hat = vec![0f32; n];
    let mut y = vec![0f32; n];
    let mut sigma = vec![0f32; rows];
    // chunks of rows: x̂ and y by row chunks, σ by the same rows
    let chunk = ROWS_PER_TASK * len;
    let work = |((xh, y), s): ((&mut [f32], &mut [f32]), &mut [f32]), first: usize| {
        let mut tmp = vec![0f32; len];
        for r in 0..s.len() {
            let at = (first + r) * len;
            let (xh, y) = (
                &mut xh[r * len..(r + 1) * len],
                &mut y[r * len..(r + 1) * len],
            );
            s[r] = layer_norm_row(&xs[at..at + len], gm, bt, eps, dim, xh, y, &mut tmp);
        }
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        x_hat
            .par_chunks_mut(chunk)
            .zip(y.par_chunks_mut(chunk))
            .zip(sigma.par_chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .for_each(|(i, parts)| work(parts, i * ROWS_PER_TASK));
    }
    #[cfg(not(feature = "rayon"))]
    for (i, parts) in x_hat
        .chunks_mut(chunk)
        .zip(y.chunks_mut(chunk))
        .zip(sigma.chunks_mut(ROWS_PER_TASK))
        .enumerate()
    {
        work(parts, i * ROWS_PER_TASK);
    }
    let mut sigma_shape = shape.clone();
    let last = sigma_shape.num_dims() - 1;
    sigma_shape[last] = 1;
    Some((
        f32_tensor(y, shape.clone()),
        f32_tensor(x_hat, shape),
        f32_tensor(sigma, sigma_shape),
    ))
}

/// One row of [`layer_norm_f32`]: writes x̂ and y, returns σ.
#[allow(clippy::too_many_arguments)]
fn layer_norm_row(
    x: &[f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
    dim: f32,
    xh: &mut [f32],
    y: &mut [f32],
    tmp: &mut [f32],
) -> f32 {
    widest_simd!((x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, dim: f32,
                  xh: &mut [f32], y: &mut [f32], tmp: &mut [f32]) -> f32 {
        let mean = row_sum(x) / dim;
        for (c, &v) in xh.iter_mut().zip(x) {
            *c = v - mean;
        }
        for (t, &c) in tmp.iter_mut().zip(xh.iter()) {
            *t = c * c;
        }
        let sigma = (row_sum(tmp) / dim + eps).sqrt();
        for c in xh.iter_mut() {
            *c = *c / sigma;
        }
        match beta {
            Some(beta) => {
                for (((o, &h), &g), &b) in y.iter_mut().zip(xh.iter()).zip(gamma).zip(beta) {
                    *o = h * g + b;
                }
            }
            None => {
                for ((o, &h), &g) in y.iter_mut().zip(xh.iter()).zip(gamma) {
                    *o = h * g;
                }
            }
        }
        sigma
    })
}

/// Layer norm's input gradient from the output gradient `grad` `[…, d]`, the normalised input
/// `x_hat` (same shape), `sigma` = √(var + ε) (`[…, 1]`) and `gamma` (`d` elements):
/// `g = grad ⊙ γ`, `dx = ((g − mean(g)) − x̂ ⊙ mean(g ⊙ x̂)) / σ`, written over `grad` (the same
/// bits as `mul`, `mean_dim`, `mul`, `mean_dim`, `sub`, `mul`, `sub`, `div`). `Err(grad)`
/// untouched where it does not apply.
pub fn layer_norm_backward_x_f32(
    mut grad: FlexTensor,
    x_hat: &FlexTensor,
    sigma: &FlexTensor,
    gamma: &FlexTensor,
) -> Result<FlexTensor, FlexTensor> {
    let shape = grad.layout().shape().clone();
    let len = shape.last().copied().unwrap_or(0);
    let n = shape.num_elements();
    let rows = if len == 0 { 0 } else { n / len };
    let ok = x_hat.layout().shape() == &shape
        && sigma.layout().num_elements() == rows
        && gamma.layout().num_elements() == len
        && grad.is_unique()
        && len > 0;
    let (Some(xh), Some(sg), Some(gm), true, Some(_)) =
        (plain(x_hat), plain(sigma), plain(gamma), ok, plain(&grad))
    else {
        return Err(grad);
    };
    let g: &mut [f32] = &mut grad.storage_mut::<f32>()[..n];
    let dim = len as f32;
    for_row_chunks(g, len, |g, first, rows| {
        let mut tmp = vec![0f32; len];
        for r in 0..rows {
            let (row, at) = (first + r, (first + r) * len);
            let g = &mut g[r * len..(r + 1) * len];
            layer_norm_backward_row(g, &xh[at..at + len], gm, sg[row], dim, &mut tmp);
        }
    });
    Ok(grad)
}

fn layer_norm_backward_row(
    g: &mut [f32],
    xh: &[f32],
    gamma: &[f32],
    sigma: f32,
    dim: f32,
    tmp: &mut [f32],
) {
    widest_simd!((g: &mut [f32], xh: &[f32], gamma: &[f32], sigma: f32, dim: f32, tmp: &mut [f32]) {
        for (gv, &c) in g.iter_mut().zip(gamma) {
            *gv = *gv * c;
        }
        let mean_g = row_sum(g) / dim;
        for ((t, &gv), &x) in tmp.iter_mut().zip(g.iter()).zip(xh) {
            *t = gv * x;
        }
        let mean_gx = row_sum(tmp) / dim;
        for (gv, &x) in g.iter_mut().zip(xh) {
            *gv = ((*gv - mean_g) - x * mean_gx) / sigma;
        }
    })
}

/// GELU (exact form) of a contiguous f32 tensor and the erf term it used, `erf(x / √2)`, for
/// [`gelu_backward_with_erf_f32`]; the output is bit for bit flex's `gelu`. `None` where it does
/// not apply.
pub fn gelu_with_erf_f32(x: &FlexTensor) -> Option<(FlexTensor, FlexTensor)> {
    let xs = plain(x)?;
    let n = xs.len();
    let mut y: Vec<f32> = Vec::with_capacity(n);
    let mut e: Vec<f32> = Vec::with_capacity(n);
    gelu_with_erf_slices(
        xs,
        &mut y.spare_capacity_mut()[..n],
        &mut e.spare_capacity_mut()[..n],
    );
    // SAFETY: the loop above wrote all `n` elements of both.
    unsafe {
        y.set_len(n);
        e.set_len(n);
    }
    let shape = x.layout().shape().clone();
    Some((f32_tensor(y, shape.clone()), f32_tensor(e, shape)))
}

fn gelu_with_erf_slices(x: &[f32], y: &mut [MaybeUninit<f32>], e: &mut [MaybeUninit<f32>]) {
    widest_simd!((x: &[f32], y: &mut [MaybeUninit<f32>], e: &mut [MaybeUninit<f32>]) {
        for ((yv, ev), &xv) in y.iter_mut().zip(e.iter_mut()).zip(x) {
            let (out, erf) = gelu_with_erf_one(xv);
            yv.write(out);
            ev.write(erf);
        }
    })
}

/// GELU's input gradient from the input `x`, the erf term [`gelu_with_erf_f32`] returned with
/// the output, and the output gradient `grad`, written over `grad`: bit for bit flex's
/// `gelu_backward`, without computing erf again. `Err(grad)` untouched where it does not apply.
pub fn gelu_backward_with_erf_f32(
    x: &FlexTensor,
    erf: &FlexTensor,
    mut grad: FlexTensor,
) -> Result<FlexTensor, FlexTensor> {
    let shape = grad.layout().shape().clone();
    let ok = x.layout().shape() == &shape && erf.layout().shape() == &shape && grad.is_unique();
    let (Some(xs), Some(es), true, Some(_)) = (plain(x), plain(erf), ok, plain(&grad)) else {
        return Err(grad);
    };
    let n = xs.len();
    gelu_backward_with_erf_slices(xs, es, &mut grad.storage_mut::<f32>()[..n]);
    Ok(grad)
}

fn gelu_backward_with_erf_slices(x: &[f32], e: &[f32], g: &mut [f32]) {
    widest_simd!((x: &[f32], e: &[f32], g: &mut [f32]) {
        for ((gv, &xv), &ev) in g.iter_mut().zip(x).zip(e) {
            *gv = gelu_backward_with_erf_one(xv, ev, *gv);
        }
    })
}
