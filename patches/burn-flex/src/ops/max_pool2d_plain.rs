//! pretext patch (new file, upstreamable): 2-D max pooling without padding or dilation.
//!
//! Why: burn-flex 0.22.1 runs every 2-D max pool through its 3-D kernel, which works out the
//! valid kernel range of each output element in three dims with integer divisions and reads
//! the input through a closure. With no padding, dilation 1 and floor rounding every window lies
//! inside the input, so each output is a plain max over `KH` row slices. Same results as the 3-D
//! kernel, indices included: the index is the flat `ih·W + iw` position of the first maximum in
//! the window (row-major), a NaN wins (the last NaN of the window), as in PyTorch.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_std::{Bytes, Shape};
use core::hint::select_unpredictable;

use crate::{FlexTensor, Layout};

/// Whether [max_pool2d] computes this pool (otherwise flex's general kernel does).
pub fn applies(dtype: DType, padding: [usize; 2], dilation: [usize; 2], ceil_mode: bool) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
        && padding == [0, 0]
        && dilation == [1, 1]
        && !ceil_mode
}

trait PoolElem: bytemuck::Pod + burn_backend::Element + Copy + Send + Sync + PartialOrd {
    const DTYPE: DType;
    fn is_nan(self) -> bool;
}

impl PoolElem for f32 {
    const DTYPE: DType = DType::F32;
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl PoolElem for f64 {
    const DTYPE: DType = DType::F64;
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// Output elements below which the pool stays on the calling thread.
#[cfg(feature = "rayon")]
const PARALLEL_MIN: usize = 16 * 1024;

/// Max of the window whose top-left input is (`top`, `left`), and its flat index: the first
/// maximum in row-major order, or the last NaN.
#[inline]
fn window<T: PoolElem>(
    x: &[T],
    w: usize,
    top: usize,
    left: usize,
    kernel: [usize; 2],
) -> (T, usize) {
    let mut best = x[top * w + left];
    let mut best_at = top * w + left;
    for r in 0..kernel[0] {
        let row = (top + r) * w + left;
        for (k, &v) in x[row..row + kernel[1]].iter().enumerate() {
            let take = (v > best) | v.is_nan();
            best = select_unpredictable(take, v, best);
            best_at = select_unpredictable(take, row + k, best_at);
        }
    }
    (best, best_at)
}

/// One `[H, W]` plane: writes its `[OH, OW]` maxima and, when asked, their indices.
#[allow(clippy::too_many_arguments)]
fn plane<T: PoolElem>(
    x: &[T],
    w: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    ow: usize,
    out: &mut [T],
    idx: Option<&mut [i64]>,
) {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == DType::F32 && kernel == [2, 2] && stride == [2, 2] {
        let x: &[f32] = bytemuck::cast_slice(x);
        let out: &mut [f32] = bytemuck::cast_slice_mut(out);
        return plane_2x2_f32_sse(x, w, ow, out, idx);
    }
    let mut idx = idx;
    for (oh, out_row) in out.chunks_mut(ow).enumerate() {
        let top = oh * stride[0];
        for (o, slot) in out_row.iter_mut().enumerate() {
            let (best, best_at) = window(x, w, top, o * stride[1], kernel);
            *slot = best;
            if let Some(idx) = idx.as_deref_mut() {
                idx[oh * ow + o] = best_at as i64;
            }
        }
    }
}

/// The 2×2 / stride 2 pool of an f32 plane, four outputs at a time with SSE2 (part of every
/// x86-64 CPU): a branch-free tournament (top pair, bottom pair, then the two winners) that
/// keeps the scalar rule exactly — a later element wins only if it is greater or NaN, so ties go
/// to the first maximum in row-major order and a NaN to the last NaN. The compiler turns the
/// scalar loop's select into a branch that mispredicts on real activations.
#[cfg(target_arch = "x86_64")]
fn plane_2x2_f32_sse(x: &[f32], w: usize, ow: usize, out: &mut [f32], idx: Option<&mut [i64]>) {
    use core::arch::x86_64::*;
    let mut idx = idx;
    let oh = if ow == 0 { 0 } else { out.len() / ow };
    for r in 0..oh {
        let (top, bottom) = (2 * r * w, (2 * r + 1) * w);
        // 2·ow ≤ w, so the 8 floats read for outputs o..o+4 stay inside each row
        let row0 = &x[top..top + w];
        let row1 = &x[bottom..bottom + w];
        let out_row = &mut out[r * ow..(r + 1) * ow];
        let mut o = 0;
        while o + 4 <= ow {
            // SAFETY: SSE2 is part of x86-64; the loads read row0/row1[2o..2o+8] and
            // 2o + 8 ≤ 2·ow ≤ w; the store writes out_row[o..o+4] with o + 4 ≤ ow.
            let (m1, m2, m3) = unsafe {
                let a0 = _mm_loadu_ps(row0.as_ptr().add(2 * o));
                let a1 = _mm_loadu_ps(row0.as_ptr().add(2 * o + 4));
                let b0 = _mm_loadu_ps(row1.as_ptr().add(2 * o));
                let b1 = _mm_loadu_ps(row1.as_ptr().add(2 * o + 4));
                // even and odd columns: [v0, v2, v4, v6] and [v1, v3, v5, v7]
                let tl = _mm_shuffle_ps::<0b10_00_10_00>(a0, a1);
                let tr = _mm_shuffle_ps::<0b11_01_11_01>(a0, a1);
                let bl = _mm_shuffle_ps::<0b10_00_10_00>(b0, b1);
                let br = _mm_shuffle_ps::<0b11_01_11_01>(b0, b1);
                let takes = |later: __m128, earlier: __m128| {
                    _mm_or_ps(_mm_cmpgt_ps(later, earlier), _mm_cmpunord_ps(later, later))
                };
                let pick = |t: __m128, later: __m128, earlier: __m128| {
                    _mm_or_ps(_mm_and_ps(t, later), _mm_andnot_ps(t, earlier))
                };
                let t1 = takes(tr, tl);
                let mt = pick(t1, tr, tl);
                let t2 = takes(br, bl);
                let mb = pick(t2, br, bl);
                let t3 = takes(mb, mt);
                let m = pick(t3, mb, mt);
                _mm_storeu_ps(out_row.as_mut_ptr().add(o), m);
                (
                    _mm_movemask_ps(t1),
                    _mm_movemask_ps(t2),
                    _mm_movemask_ps(t3),
                )
            };
            if let Some(idx) = idx.as_deref_mut() {
                for l in 0..4 {
                    let row_bit = ((m3 >> l) & 1) as usize;
                    let col_bit = ((((m2 & m3) | (m1 & !m3)) >> l) & 1) as usize;
                    idx[r * ow + o + l] = ((2 * r + row_bit) * w + 2 * (o + l) + col_bit) as i64;
                }
            }
            o += 4;
        }
        for o in o..ow {
            let (best, best_at) = window(x, w, 2 * r, 2 * o, [2, 2]);
            out_row[o] = best;
            if let Some(idx) = idx.as_deref_mut() {
                idx[r * ow + o] = best_at as i64;
            }
        }
    }
}

fn run<T: PoolElem>(
    x: FlexTensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    with_indices: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let x = x.to_contiguous();
    let shape = x.layout().shape().clone();
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    assert!(
        kernel[0] > 0 && kernel[1] > 0 && stride[0] > 0 && stride[1] > 0,
        "max_pool2d: kernel {:?} and stride {:?} must be positive",
        kernel,
        stride
    );
    let oh = if h >= kernel[0] {
        (h - kernel[0]) / stride[0] + 1
    } else {
        0
    };
    let ow = if w >= kernel[1] {
        (w - kernel[1]) / stride[1] + 1
    } else {
        0
    };
    let xd: &[T] = x.storage();
    let planes = n * c;
    let (in_plane, out_plane) = (h * w, oh * ow);
    let zero: T = bytemuck::Zeroable::zeroed();
    let mut out = vec![zero; planes * out_plane];
    let mut idx: Vec<i64> = if with_indices {
        vec![0; out.len()]
    } else {
        Vec::new()
    };

    if out_plane > 0 {
        let work = |p: usize, o: &mut [T], i: Option<&mut [i64]>| {
            plane(
                &xd[p * in_plane..(p + 1) * in_plane],
                w,
                kernel,
                stride,
                ow,
                o,
                i,
            )
        };
        #[cfg(feature = "rayon")]
        let parallel = planes > 1 && out.len() >= PARALLEL_MIN && rayon::current_num_threads() > 1;
        #[cfg(not(feature = "rayon"))]
        let parallel = false;
        if parallel {
            #[cfg(feature = "rayon")]
            {
                use rayon::prelude::*;
                if with_indices {
                    out.par_chunks_mut(out_plane)
                        .zip(idx.par_chunks_mut(out_plane))
                        .enumerate()
                        .for_each(|(p, (o, i))| work(p, o, Some(i)));
                } else {
                    out.par_chunks_mut(out_plane)
                        .enumerate()
                        .for_each(|(p, o)| work(p, o, None));
                }
            }
        } else if with_indices {
            for (p, (o, i)) in out
                .chunks_mut(out_plane)
                .zip(idx.chunks_mut(out_plane))
                .enumerate()
            {
                work(p, o, Some(i));
            }
        } else {
            for (p, o) in out.chunks_mut(out_plane).enumerate() {
                work(p, o, None);
            }
        }
    }

    let out_shape = Shape::from(vec![n, c, oh, ow]);
    let output = FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(out_shape.clone()),
        T::DTYPE,
    );
    let indices = with_indices.then(|| {
        FlexTensor::new(
            Bytes::from_elems(idx),
            Layout::contiguous(out_shape),
            DType::I64,
        )
    });
    (output, indices)
}

/// Max pool of a `[N, C, H, W]` f32 or f64 tensor where [applies] holds; the indices (i64,
/// flat within each plane) when `with_indices`.
pub fn max_pool2d(
    x: FlexTensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    with_indices: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    match x.dtype() {
        DType::F64 => run::<f64>(x, kernel, stride, with_indices),
        _ => run::<f32>(x, kernel, stride, with_indices),
    }
}
