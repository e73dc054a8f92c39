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
    let [kh, kw] = kernel;
    let [sh, sw] = stride;
    let mut idx = idx;
    for (oh, out_row) in out.chunks_mut(ow).enumerate() {
        let top = oh * sh;
        for (o, slot) in out_row.iter_mut().enumerate() {
            let left = o * sw;
            let mut best = x[top * w + left];
            let mut best_at = top * w + left;
            for r in 0..kh {
                let row = (top + r) * w + left;
                for (k, &v) in x[row..row + kw].iter().enumerate() {
                    // a conditional move, not a branch: on real activations a branch here
                    // mispredicts about half of the time
                    let take = (v > best) | v.is_nan();
                    best = select_unpredictable(take, v, best);
                    best_at = select_unpredictable(take, row + k, best_at);
                }
            }
            *slot = best;
            if let Some(idx) = idx.as_deref_mut() {
                idx[oh * ow + o] = best_at as i64;
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
