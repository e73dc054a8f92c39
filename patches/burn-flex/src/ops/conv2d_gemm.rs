//! pretext patch (new file, upstreamable): conv2d forward, input gradient and weight gradient
//! as im2col + gemm on NCHW data, a block of samples per gemm.
//!
//! Why: burn-flex 0.22.1 has no conv2d backward of its own, so burn-autodiff falls back to
//! burn-backend's defaults: the weight gradient is a conv over swapped (batch, channel) dims and
//! the input gradient a transposed conv. Both go through flex's generic 3-D kernels, which copy
//! the swapped tensors to contiguous memory, convert them to NHWC, build im2col tiles and copy
//! the gemm results back; the weight gradient's outer parallel loop runs over input channels.
//! Here every op is an im2col (or col2im) per sample plus one gemm per block of samples and
//! group, reading and writing NCHW in place:
//!
//! - forward:       `Y[blk] (Cout × S·OH·OW) = W (Cout × K) · col(X[blk]) (K × S·OH·OW)`
//! - weight grad:  `dW (Cout × K) = Σ_blk dY[blk] (Cout × S·OH·OW) · col(X[blk])ᵀ`
//! - input grad:   `dX[blk] = col2im(Wᵀ (K × Cout) · dY[blk])`
//!
//! with `K = Cin/groups · KH · KW`, one gemm per group, and `S` samples side by side in a block
//! (`block_samples`: enough that a gemm has ~512 columns; 1 for maps of 23×23 and more), so the
//! small maps of late stages and 16-px patches do not run one thin gemm per sample. Stride,
//! dilation, groups and asymmetric padding are handled directly (the output size comes from the
//! output gradient). f32 and f64 run natively; f16 and bf16 go through f32.
//!
//! Threads: the blocks are split over rayon only when the current pool has more than one thread
//! (a single-thread pool runs the plain loop with one scratch buffer). The weight gradient sums
//! fixed chunks of whole blocks (at least `WGRAD_CHUNK` samples), then the chunk sums in order,
//! in both cases; blocks and chunks depend only on the shapes, so one and many threads give
//! bit-identical results.
//!
//! Scratch: the im2col and column-gradient matrices (up to several MB) live in a per-thread
//! buffer kept between calls; every element is written before it is read, so it is neither
//! reallocated nor zero-filled per call.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_std::{Bytes, Shape, bf16, f16};
use core::ops::Add;

use crate::ops::module::{cast_from_f32, cast_to_f32};
use crate::{FlexTensor, Layout};

/// Samples per partial sum of the weight gradient (fixed, so the sum order never depends on
/// the thread count).
const WGRAD_CHUNK: usize = 8;

/// Element types the kernels run on natively.
pub(crate) trait ConvElem:
    bytemuck::Pod + burn_backend::Element + Copy + Send + Sync + Add<Output = Self> + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const DTYPE: DType;
}

impl ConvElem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const DTYPE: DType = DType::F32;
}

impl ConvElem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const DTYPE: DType = DType::F64;
}

/// Shapes and options of one conv2d, all in NCHW / OIHW.
#[derive(Clone, Copy, Debug)]
struct Geom {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    groups: usize,
    /// input channels per group
    cg: usize,
    /// output channels per group
    cog: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    dw: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(x: &[usize], w: &[usize], oh: usize, ow: usize, options: &ConvOptions<2>) -> Self {
        let groups = options.groups;
        Self {
            batch: x[0],
            c_in: x[1],
            h: x[2],
            w: x[3],
            c_out: w[0],
            groups,
            cg: w[1],
            cog: w[0] / groups,
            kh: w[2],
            kw: w[3],
            sh: options.stride[0],
            sw: options.stride[1],
            ph: options.padding[0].0,
            pw: options.padding[1].0,
            dh: options.dilation[0],
            dw: options.dilation[1],
            oh,
            ow,
        }
    }

    /// Rows of the im2col matrix (per group).
    fn k(&self) -> usize {
        self.cg * self.kh * self.kw
    }

    /// Output positions per sample.
    fn n(&self) -> usize {
        self.oh * self.ow
    }

    /// The im2col matrix of a 1×1, stride-1, unpadded conv is the input itself.
    fn col_is_input(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.ph == 0
            && self.pw == 0
            && self.oh == self.h
            && self.ow == self.w
    }
}

/// Output size of a conv along one dimension with `(begin, end)` padding.
fn out_size(input: usize, kernel: usize, stride: usize, pad: (usize, usize), dil: usize) -> usize {
    let span = dil * (kernel - 1) + 1;
    let padded = input + pad.0 + pad.1;
    assert!(
        padded >= span,
        "conv2d: kernel larger than the padded input"
    );
    (padded - span) / stride + 1
}

/// Output positions `o` in `[lo, hi)` whose input index `o * stride + off - pad` lies in
/// `[0, size)`.
fn valid_range(out: usize, stride: usize, off: usize, pad: usize, size: usize) -> (usize, usize) {
    let lo = if pad > off {
        (pad - off).div_ceil(stride)
    } else {
        0
    };
    let hi = if size + pad > off {
        ((size + pad - off - 1) / stride + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// im2col of one sample and group: `x` holds the group's `cg` channels (`h × w` each), `col`
/// receives `K` rows of `OH·OW` in `(c, kh, kw)` order, the order of the weight's last three
/// dims; row `r` starts at `r * ld` (`ld ≥ OH·OW`: a block of samples side by side).
fn im2col<T: ConvElem>(x: &[T], g: &Geom, col: &mut [T], ld: usize) {
    let n = g.n();
    let plane = g.h * g.w;
    // Stride 1 with output rows as wide as input rows (a "same" conv): row `(c, i, j)` is the
    // channel's plane read at a fixed flat offset, so it is built from one copy of the plane
    // instead of `OH` short ones (issue 16: im2col was 11 % of a width-16 SimCLR step).
    let flat = g.sh == 1 && g.sw == 1 && g.ow == g.w;
    for c in 0..g.cg {
        let xc = &x[c * plane..(c + 1) * plane];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let r = (c * g.kh + i) * g.kw + j;
                let row = &mut col[r * ld..r * ld + n];
                let (lo, hi) = valid_range(g.ow, g.sw, j * g.dw, g.pw, g.w);
                if flat {
                    im2col_row_flat(xc, g, i, j, (lo, hi), row);
                    continue;
                }
                for o_h in 0..g.oh {
                    let dst = &mut row[o_h * g.ow..(o_h + 1) * g.ow];
                    let ih = (o_h * g.sh + i * g.dh) as isize - g.ph as isize;
                    if ih < 0 || ih >= g.h as isize || lo >= hi {
                        dst.fill(T::ZERO);
                        continue;
                    }
                    let src = &xc[ih as usize * g.w..(ih as usize + 1) * g.w];
                    dst[..lo].fill(T::ZERO);
                    dst[hi..].fill(T::ZERO);
                    // first input column read: lo * sw + j * dw - pw (>= 0 by valid_range)
                    let s0 = lo * g.sw + j * g.dw - g.pw;
                    if g.sw == 1 {
                        dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    } else {
                        for (d, s) in dst[lo..hi].iter_mut().zip(src[s0..].iter().step_by(g.sw)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

/// One im2col row of a "same" stride-1 conv (see [`im2col`]): the plane `xc` read at the flat
/// offset `(i·dh − ph)·w + j·dw − pw` (zeros where the offset leaves the plane), then the output
/// columns outside `[lo, hi)` of each row zeroed, as they would wrap into the neighbouring input
/// row.
fn im2col_row_flat<T: ConvElem>(
    xc: &[T],
    g: &Geom,
    i: usize,
    j: usize,
    (lo, hi): (usize, usize),
    row: &mut [T],
) {
    let n = row.len() as isize;
    let shift = (i * g.dh) as isize * g.w as isize + (j * g.dw) as isize
        - g.ph as isize * g.w as isize
        - g.pw as isize;
    // row[p] = xc[p + shift] where 0 <= p + shift < plane.
    let lo_p = (-shift).clamp(0, n) as usize;
    let hi_p = (xc.len() as isize - shift).clamp(lo_p as isize, n) as usize;
    row[..lo_p].fill(T::ZERO);
    if hi_p > lo_p {
        let s0 = (lo_p as isize + shift) as usize;
        row[lo_p..hi_p].copy_from_slice(&xc[s0..s0 + (hi_p - lo_p)]);
    }
    row[hi_p..].fill(T::ZERO);
    // strided single stores: a `fill` per output row compiles to a `memset` call per row
    for c in (0..lo).chain(hi..g.ow) {
        for q in 0..g.oh {
            row[q * g.ow + c] = T::ZERO;
        }
    }
}

/// Stride-1 "same" convs (output as large as the input): a block of samples can then be
/// im2col'd (col2im'd) as whole rows: with the block's input planes laid channel by channel
/// (`[c][sample][position]`, see [`gather_planes`]), row `(c, i, j)` of the im2col matrix is the
/// channel's `S·H·W` values read at one flat offset, with the positions whose tap falls in the
/// padding zeroed afterwards ([`zero_padding_taps`]). One long copy (or add) per row instead
/// of one short one per sample and output row: on 4×4 and 2×2 maps those were a few floats
/// each, and their `memcpy`/`memset` calls cost more than the data (issue 36).
fn block_flat(g: &Geom) -> bool {
    g.sh == 1 && g.sw == 1 && g.oh == g.h && g.ow == g.w
}

/// Copies group `gr`'s input channels of samples `b0..b0 + s` into `dst` channel by channel:
/// `dst[c · s·plane + si · plane + p] = x[b0 + si][gr·cg + c][p]`.
fn gather_planes<T: ConvElem>(x: &[T], g: &Geom, gr: usize, b0: usize, s: usize, dst: &mut [T]) {
    let plane = g.h * g.w;
    for si in 0..s {
        let src = &x[(b0 + si) * g.c_in * plane + gr * g.cg * plane..][..g.cg * plane];
        for c in 0..g.cg {
            dst[(c * s + si) * plane..][..plane].copy_from_slice(&src[c * plane..][..plane]);
        }
    }
}

/// The flat offset of tap `(i, j)`: output position `p` reads input position `p + shift` of
/// its plane (when the tap is inside the input).
fn tap_shift(g: &Geom, i: usize, j: usize) -> isize {
    (i * g.dh) as isize * g.w as isize + (j * g.dw) as isize
        - g.ph as isize * g.w as isize
        - g.pw as isize
}

/// Zeroes the entries of one block row (`s` samples of `OH × OW` side by side) whose input
/// position for tap `(i, j)` lies in the padding: whole output rows of every sample, then whole
/// output columns. Strided single stores (these are a few per row), not `memset` calls.
fn zero_padding_taps<T: ConvElem>(row: &mut [T], g: &Geom, s: usize, i: usize, j: usize) {
    let n = g.n();
    let (rlo, rhi) = valid_range(g.oh, 1, i * g.dh, g.ph, g.h);
    for o_h in (0..rlo).chain(rhi..g.oh) {
        for c in 0..g.ow {
            for si in 0..s {
                row[si * n + o_h * g.ow + c] = T::ZERO;
            }
        }
    }
    let (clo, chi) = valid_range(g.ow, 1, j * g.dw, g.pw, g.w);
    for c in (0..clo).chain(chi..g.ow) {
        for q in 0..s * g.oh {
            row[q * g.ow + c] = T::ZERO;
        }
    }
}

/// im2col of a block of `s` samples for a [`block_flat`] conv: `xt` is the group's `cg`
/// channels from [`gather_planes`], `col` receives `K` rows of `s·OH·OW`.
fn im2col_block<T: ConvElem>(xt: &[T], g: &Geom, s: usize, col: &mut [T]) {
    let len = s * g.n();
    for c in 0..g.cg {
        let xc = &xt[c * len..(c + 1) * len];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let r = (c * g.kh + i) * g.kw + j;
                let row = &mut col[r * len..(r + 1) * len];
                let shift = tap_shift(g, i, j);
                // row[p] = xc[p + shift] where 0 <= p + shift < len
                let lo = (-shift).clamp(0, len as isize) as usize;
                let hi = (len as isize - shift).clamp(lo as isize, len as isize) as usize;
                row[..lo].fill(T::ZERO);
                if hi > lo {
                    let s0 = (lo as isize + shift) as usize;
                    row[lo..hi].copy_from_slice(&xc[s0..s0 + (hi - lo)]);
                }
                row[hi..].fill(T::ZERO);
                zero_padding_taps(row, g, s, i, j);
            }
        }
    }
}

/// col2im of a block of `s` samples for a [`block_flat`] conv: adds the `K × s·OH·OW` matrix
/// `col` into `dxt` (the group's `cg` channels laid as [`gather_planes`] lays them). Each row's
/// entries whose tap lies in the padding are zeroed first (`col` is scratch), so the row is one
/// add at a flat offset; the other entries land on the same elements in the same order as
/// [`col2im`]'s, and adding a zero changes no element (`dxt` starts at +0 and a sum of floats
/// is never −0 then), so the results are the same bits.
fn col2im_block<T: ConvElem>(col: &mut [T], g: &Geom, s: usize, dxt: &mut [T]) {
    let len = s * g.n();
    for c in 0..g.cg {
        let dxc = &mut dxt[c * len..(c + 1) * len];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let r = (c * g.kh + i) * g.kw + j;
                let row = &mut col[r * len..(r + 1) * len];
                zero_padding_taps(row, g, s, i, j);
                let shift = tap_shift(g, i, j);
                let lo = (-shift).clamp(0, len as isize) as usize;
                let hi = (len as isize - shift).clamp(lo as isize, len as isize) as usize;
                if hi > lo {
                    let s0 = (lo as isize + shift) as usize;
                    for (d, v) in dxc[s0..s0 + (hi - lo)].iter_mut().zip(&row[lo..hi]) {
                        *d = *d + *v;
                    }
                }
            }
        }
    }
}

/// The im2col matrix (`K × s·OH·OW`) of group `gr` of samples `b0..b0 + s` of `x`: the input
/// itself for one sample of a 1×1 stride-1 conv, else built in `col` (through `xt`, the
/// planes by channel, for a [`block_flat`] block of several samples).
#[allow(clippy::too_many_arguments)]
fn block_col<'a, T: ConvElem>(
    x: &'a [T],
    g: &Geom,
    flat: bool,
    gr: usize,
    b0: usize,
    s: usize,
    col: &'a mut [T],
    xt: &mut [T],
) -> &'a [T] {
    let plane = g.h * g.w;
    let x_g = |si: usize| &x[(b0 + si) * g.c_in * plane + gr * g.cg * plane..][..g.cg * plane];
    if s == 1 && g.col_is_input() {
        return x_g(0);
    }
    if flat {
        let planes: &[T] = if s == 1 {
            x_g(0)
        } else {
            gather_planes(x, g, gr, b0, s, xt);
            xt
        };
        im2col_block(planes, g, s, col);
    } else {
        let (n, cols) = (g.n(), s * g.n());
        for si in 0..s {
            im2col(x_g(si), g, &mut col[si * n..], cols);
        }
    }
    col
}

/// col2im of one sample and group: adds the `K × OH·OW` matrix `col` into the group's `cg`
/// channels of `dx` (the inverse scatter of [`im2col`]); row `r` of `col` starts at `r * ld`.
fn col2im<T: ConvElem>(col: &[T], g: &Geom, dx: &mut [T], ld: usize) {
    let n = g.n();
    let plane = g.h * g.w;
    for c in 0..g.cg {
        let dxc = &mut dx[c * plane..(c + 1) * plane];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let r = (c * g.kh + i) * g.kw + j;
                let row = &col[r * ld..r * ld + n];
                let (lo, hi) = valid_range(g.ow, g.sw, j * g.dw, g.pw, g.w);
                if lo >= hi {
                    continue;
                }
                for o_h in 0..g.oh {
                    let ih = (o_h * g.sh + i * g.dh) as isize - g.ph as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    let src = &row[o_h * g.ow + lo..o_h * g.ow + hi];
                    let dst = &mut dxc[ih as usize * g.w..(ih as usize + 1) * g.w];
                    let s0 = lo * g.sw + j * g.dw - g.pw;
                    if g.sw == 1 {
                        for (d, s) in dst[s0..s0 + (hi - lo)].iter_mut().zip(src) {
                            *d = *d + *s;
                        }
                    } else {
                        for (d, s) in dst[s0..].iter_mut().step_by(g.sw).zip(src) {
                            *d = *d + *s;
                        }
                    }
                }
            }
        }
    }
}

/// `dst[c · rows + r] = src[r · cols + c]`: the `rows × cols` matrix `src` transposed, in tiles
/// of 16 source columns so the 16 destination rows being written stay in the first-level cache.
///
/// Used by the weight gradient (its output gradient going in, its result coming out), so that
/// `gemm` reads both of its operands as stored; see [`conv2d_weight_backward`].
fn transpose_into<T: ConvElem>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 16;
    let (src, dst) = (&src[..rows * cols], &mut dst[..rows * cols]);
    for c0 in (0..cols).step_by(TILE) {
        let c1 = (c0 + TILE).min(cols);
        for r in 0..rows {
            let row = &src[r * cols + c0..r * cols + c1];
            for (c, v) in (c0..c1).zip(row) {
                dst[c * rows + r] = *v;
            }
        }
    }
}

/// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)`, single-threaded. Strides are (column,
/// row) in elements, as `gemm::gemm` takes them.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<T: ConvElem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_cs: usize,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const T,
    lhs_cs: usize,
    lhs_rs: usize,
    rhs: *const T,
    rhs_cs: usize,
    rhs_rs: usize,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { T::ONE } else { T::ZERO },
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Whether to split `batch` blocks over the current rayon pool.
fn parallel(batch: usize) -> bool {
    #[cfg(feature = "rayon")]
    {
        batch > 1 && rayon::current_num_threads() > 1
    }
    #[cfg(not(feature = "rayon"))]
    {
        let _ = batch;
        false
    }
}

/// Columns a gemm should at least have: small feature maps (a 7×7 or 4×4 stage, 16-px patches)
/// are stacked side by side, `block_samples` samples per gemm, instead of one thin gemm each.
const GEMM_COLS: usize = 512;

/// Samples per gemm for `n` output positions per sample (at least 1, at most the batch); a
/// function of the shapes only, so the blocks, and the sums, do not depend on the thread count.
fn block_samples(n: usize, batch: usize) -> usize {
    GEMM_COLS.div_ceil(n.max(1)).clamp(1, batch.max(1))
}

#[cfg(feature = "std")]
std::thread_local! {
    /// This thread's scratch for [`with_scratch`], in 8-byte words (any `ConvElem` fits).
    static SCRATCH: core::cell::RefCell<Vec<u64>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` elements whose contents are unspecified (left from an
/// earlier call, or zero): `f` must write every element it reads. With `std` this is the
/// thread's buffer, grown when needed and kept; otherwise (or if it is in use) a fresh vector.
fn with_scratch<T: ConvElem, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    #[cfg(feature = "std")]
    {
        let mut f = Some(f);
        let words = (len * core::mem::size_of::<T>()).div_ceil(8);
        let done = SCRATCH.try_with(|cell| {
            let mut buf = cell.try_borrow_mut().ok()?;
            if buf.len() < words {
                buf.resize(words, 0);
            }
            let all: &mut [T] = bytemuck::cast_slice_mut(&mut buf[..words]);
            Some((f.take().expect("called once"))(&mut all[..len]))
        });
        if let Ok(Some(r)) = done {
            return r;
        }
        return (f.take().expect("called once"))(&mut vec![T::ZERO; len]);
    }
    #[cfg(not(feature = "std"))]
    f(&mut vec![T::ZERO; len])
}

/// Runs `f(i, out_i, scratch)` for every chunk `i` of `out` of `chunk` elements (the last may be
/// shorter); in parallel over the chunks when the pool has several threads. `scratch` has
/// `scratch_len` elements of unspecified contents (see [`with_scratch`]).
fn for_each_chunk<T: ConvElem>(
    out: &mut [T],
    chunk: usize,
    scratch_len: usize,
    f: impl Fn(usize, &mut [T], &mut [T]) + Send + Sync,
) {
    if chunk == 0 || out.is_empty() {
        return;
    }
    #[cfg(feature = "rayon")]
    if parallel(out.len().div_ceil(chunk)) {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, out_i)| with_scratch(scratch_len, |scratch| f(i, out_i, scratch)));
        return;
    }
    with_scratch(scratch_len, |scratch| {
        for (i, out_i) in out.chunks_mut(chunk).enumerate() {
            f(i, out_i, scratch);
        }
    });
}

/// Copies group `gr`'s output gradient of samples `b0..b0 + s` (each `cog × n` inside its
/// sample's `c_out × n`) side by side into `dst` (`cog × s·n`).
fn gather_block<T: ConvElem>(dy: &[T], g: &Geom, gr: usize, b0: usize, s: usize, dst: &mut [T]) {
    let n = g.n();
    let cols = s * n;
    for si in 0..s {
        let src = &dy[(b0 + si) * g.c_out * n + gr * g.cog * n..][..g.cog * n];
        for co in 0..g.cog {
            dst[co * cols + si * n..][..n].copy_from_slice(&src[co * n..][..n]);
        }
    }
}
fn contiguous_data<T: ConvElem>(t: FlexTensor) -> FlexTensor {
    let t = t.to_contiguous();
    debug_assert_eq!(t.dtype(), T::DTYPE);
    t
}

fn new_tensor<T: ConvElem>(data: Vec<T>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(Shape::from(shape)),
        T::DTYPE,
    )
}

/// Forward conv2d (NCHW), any padding, stride, dilation and groups.
pub(crate) fn conv2d<T: ConvElem>(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = contiguous_data::<T>(x);
    let weight = contiguous_data::<T>(weight);
    let xs = x.layout().shape().to_vec();
    let ws = weight.layout().shape().to_vec();
    let oh = out_size(
        xs[2],
        ws[2],
        options.stride[0],
        options.padding[0],
        options.dilation[0],
    );
    let ow = out_size(
        xs[3],
        ws[3],
        options.stride[1],
        options.padding[1],
        options.dilation[1],
    );
    let g = Geom::new(&xs, &ws, oh, ow, options);
    let (k, n) = (g.k(), g.n());
    let x_data: &[T] = x.storage();
    let w_data: &[T] = weight.storage();
    let bias = bias.map(contiguous_data::<T>);
    let bias_data: Option<&[T]> = bias.as_ref().map(|b| b.storage());

    let sb = block_samples(n, g.batch);
    let mut out = vec![T::ZERO; g.batch * g.c_out * n];
    // scratch: the block's im2col (k × sb·n), then its gemm result (cog × sb·n) when sb > 1,
    // then its input planes by channel (cg × sb·n) for a block-flat conv
    let flat = block_flat(&g);
    let scratch = k * sb * n
        + if sb > 1 { g.cog * sb * n } else { 0 }
        + if flat && sb > 1 { g.cg * sb * n } else { 0 };
    for_each_chunk(&mut out, sb * g.c_out * n, scratch, |blk, y, scratch| {
        let b0 = blk * sb;
        let s = y.len() / (g.c_out * n);
        let cols = s * n;
        let (col, rest) = scratch.split_at_mut(k * sb * n);
        let (tmp, xt) = rest.split_at_mut(if sb > 1 { g.cog * sb * n } else { 0 });
        for gr in 0..g.groups {
            let rhs = block_col(x_data, &g, flat, gr, b0, s, &mut *col, &mut *xt);
            let w_g = &w_data[gr * g.cog * k..(gr + 1) * g.cog * k];
            // (cog × cols) = w_g (cog × k) · col (k × cols), straight into y for one sample
            let dst = if s == 1 {
                y[gr * g.cog * n..].as_mut_ptr()
            } else {
                tmp.as_mut_ptr()
            };
            unsafe {
                gemm_into(
                    g.cog,
                    cols,
                    k,
                    dst,
                    1,
                    cols,
                    false,
                    w_g.as_ptr(),
                    1,
                    k,
                    rhs.as_ptr(),
                    1,
                    cols,
                );
            }
            if s > 1 {
                for si in 0..s {
                    for co in 0..g.cog {
                        y[si * g.c_out * n + (gr * g.cog + co) * n..][..n]
                            .copy_from_slice(&tmp[co * cols + si * n..][..n]);
                    }
                }
            }
        }
        if let Some(bias) = bias_data {
            for y_b in y.chunks_mut(g.c_out * n) {
                for (co, y_c) in y_b.chunks_mut(n).enumerate() {
                    for v in y_c {
                        *v = *v + bias[co];
                    }
                }
            }
        }
    });
    new_tensor(out, vec![g.batch, g.c_out, oh, ow])
}

/// Gradient of conv2d with respect to its input.
pub(crate) fn conv2d_x_backward<T: ConvElem>(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let xs = x.layout().shape().to_vec();
    let weight = contiguous_data::<T>(weight);
    let dy = contiguous_data::<T>(output_grad);
    let ws = weight.layout().shape().to_vec();
    let ys = dy.layout().shape().to_vec();
    let g = Geom::new(&xs, &ws, ys[2], ys[3], options);
    let (k, n) = (g.k(), g.n());
    let w_data: &[T] = weight.storage();
    let dy_data: &[T] = dy.storage();
    let plane = g.h * g.w;

    let sb = block_samples(n, g.batch);
    let mut dx = vec![T::ZERO; g.batch * g.c_in * plane];
    // scratch: the block's column gradient (k × sb·n), then its gathered dy (cog × sb·n), then
    // its input gradient by channel (cg × sb·n) for a block-flat conv
    let flat = block_flat(&g);
    let scratch = k * sb * n
        + if sb > 1 { g.cog * sb * n } else { 0 }
        + if flat && sb > 1 { g.cg * sb * n } else { 0 };
    for_each_chunk(
        &mut dx,
        sb * g.c_in * plane,
        scratch,
        |blk, dx_blk, scratch| {
            let b0 = blk * sb;
            let s = dx_blk.len() / (g.c_in * plane);
            let cols = s * n;
            let (col, rest) = scratch.split_at_mut(k * sb * n);
            let (dyt, dxt) = rest.split_at_mut(if sb > 1 { g.cog * sb * n } else { 0 });
            for gr in 0..g.groups {
                let rhs: &[T] = if s == 1 {
                    &dy_data[b0 * g.c_out * n + gr * g.cog * n..][..g.cog * n]
                } else {
                    gather_block(dy_data, &g, gr, b0, s, dyt);
                    dyt
                };
                let w_g = &w_data[gr * g.cog * k..(gr + 1) * g.cog * k];
                // dcol (k × cols) = w_gᵀ (k × cog) · dy (cog × cols); a 1×1 conv's dcol is dx itself
                let direct = s == 1 && g.col_is_input();
                let dst = if direct {
                    dx_blk[gr * g.cg * plane..].as_mut_ptr()
                } else {
                    col.as_mut_ptr()
                };
                unsafe {
                    gemm_into(
                        k,
                        cols,
                        g.cog,
                        dst,
                        1,
                        cols,
                        false,
                        w_g.as_ptr(),
                        k,
                        1,
                        rhs.as_ptr(),
                        1,
                        cols,
                    );
                }
                if direct {
                    // the gemm wrote dx itself
                } else if s == 1 && flat {
                    let dx_g = &mut dx_blk[gr * g.cg * plane..][..g.cg * plane];
                    col2im_block(&mut col[..k * cols], &g, 1, dx_g);
                } else if flat {
                    let dxt = &mut dxt[..g.cg * cols];
                    dxt.fill(T::ZERO);
                    col2im_block(&mut col[..k * cols], &g, s, dxt);
                    for si in 0..s {
                        let dst = &mut dx_blk[si * g.c_in * plane + gr * g.cg * plane..];
                        for c in 0..g.cg {
                            dst[c * plane..][..plane]
                                .copy_from_slice(&dxt[(c * s + si) * plane..][..plane]);
                        }
                    }
                } else {
                    for si in 0..s {
                        let dx_g =
                            &mut dx_blk[si * g.c_in * plane + gr * g.cg * plane..][..g.cg * plane];
                        col2im(&col[si * n..], &g, dx_g, cols);
                    }
                }
            }
        },
    );
    new_tensor(dx, xs)
}

/// Gradient of conv2d with respect to its weight.
pub(crate) fn conv2d_weight_backward<T: ConvElem>(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let x = contiguous_data::<T>(x);
    let dy = contiguous_data::<T>(output_grad);
    let xs = x.layout().shape().to_vec();
    let ws = weight.layout().shape().to_vec();
    let ys = dy.layout().shape().to_vec();
    let g = Geom::new(&xs, &ws, ys[2], ys[3], options);
    let (k, n) = (g.k(), g.n());
    let x_data: &[T] = x.storage();
    let dy_data: &[T] = dy.storage();
    let w_len = g.c_out * k;
    let sb = block_samples(n, g.batch);
    // a chunk: whole blocks, at least WGRAD_CHUNK samples; its sum is one partial
    let per_chunk = sb * WGRAD_CHUNK.div_ceil(sb);
    let flat = block_flat(&g);
    // scratch: the chunk's weight gradient transposed (per group k × cog), the block's im2col
    // (k × sb·n), its output gradient transposed (sb·n × cog), its input planes by channel
    // (cg × sb·n) for a block-flat conv
    let scratch_len =
        w_len + k * sb * n + g.cog * sb * n + if flat && sb > 1 { g.cg * sb * n } else { 0 };

    // dw (c_out × k) = Σ over the chunk's blocks of dy_blk · col(x_blk)ᵀ, per group. Computed
    // transposed (dwᵀ = col · dyᵀ, column-major into `dwt`) from a transposed dy: `gemm`
    // turns a row-major destination into the transposed problem, whose left operand would then
    // be the im2col matrix with its depth contiguous, packed one strided scalar load at a time
    // (issue 36: 5–6 % of a one-thread GAN step); this way both operands are read as stored.
    let chunk_sum = |chunk: usize, dw: &mut [T], scratch: &mut [T]| {
        let (dwt, rest) = scratch.split_at_mut(w_len);
        let (col, rest) = rest.split_at_mut(k * sb * n);
        let (dyt, xt) = rest.split_at_mut(g.cog * sb * n);
        let first = chunk * per_chunk;
        let end = (first + per_chunk).min(g.batch);
        let mut b0 = first;
        while b0 < end {
            let s = sb.min(end - b0);
            let cols = s * n;
            for gr in 0..g.groups {
                let rhs = block_col(x_data, &g, flat, gr, b0, s, &mut *col, &mut *xt);
                // the block's output gradient transposed: dyt[(si·n + p)·cog + co]
                for si in 0..s {
                    let src = &dy_data[(b0 + si) * g.c_out * n + gr * g.cog * n..][..g.cog * n];
                    transpose_into(src, g.cog, n, &mut dyt[si * n * g.cog..]);
                }
                let lhs: &[T] = dyt;
                let dwt_g = &mut dwt[gr * g.cog * k..(gr + 1) * g.cog * k];
                // dw_g (cog × k, stored k × cog) [+]= dy (cog × cols, stored cols × cog)
                //                                      · colᵀ (cols × k)
                unsafe {
                    gemm_into(
                        g.cog,
                        k,
                        cols,
                        dwt_g.as_mut_ptr(),
                        g.cog,
                        1,
                        b0 > first,
                        lhs.as_ptr(),
                        g.cog,
                        1,
                        rhs.as_ptr(),
                        cols,
                        1,
                    );
                }
            }
            b0 += s;
        }
        for gr in 0..g.groups {
            let at = gr * g.cog * k..(gr + 1) * g.cog * k;
            transpose_into(&dwt[at.clone()], k, g.cog, &mut dw[at]);
        }
    };

    let chunks = g.batch.div_ceil(per_chunk);
    let mut dw = vec![T::ZERO; w_len];
    if chunks == 0 {
        return new_tensor(dw, ws);
    }
    let mut partials = vec![T::ZERO; (chunks - 1) * w_len];
    #[cfg(feature = "rayon")]
    let done = if parallel(chunks) {
        use rayon::prelude::*;
        rayon::join(
            || with_scratch(scratch_len, |scratch| chunk_sum(0, &mut dw, scratch)),
            || {
                partials
                    .par_chunks_mut(w_len)
                    .enumerate()
                    .for_each(|(c, p)| with_scratch(scratch_len, |s| chunk_sum(c + 1, p, s)))
            },
        );
        true
    } else {
        false
    };
    #[cfg(not(feature = "rayon"))]
    let done = false;
    if !done {
        with_scratch(scratch_len, |scratch| {
            chunk_sum(0, &mut dw, scratch);
            for (c, p) in partials.chunks_mut(w_len).enumerate() {
                chunk_sum(c + 1, p, scratch);
            }
        });
    }
    // the chunk sums, added in chunk order whatever the thread count
    for p in partials.chunks(w_len) {
        for (d, s) in dw.iter_mut().zip(p) {
            *d = *d + *s;
        }
    }
    new_tensor(dw, ws)
}

/// Gradient of conv2d with respect to its bias: the output gradient summed over batch and
/// positions (sample by sample, in order).
pub(crate) fn conv2d_bias_backward<T: ConvElem>(output_grad: FlexTensor) -> FlexTensor {
    let dy = contiguous_data::<T>(output_grad);
    let ys = dy.layout().shape().to_vec();
    let (c_out, n) = (ys[1], ys[2] * ys[3]);
    let data: &[T] = dy.storage();
    let mut db = vec![T::ZERO; c_out];
    for dy_b in data.chunks(c_out * n.max(1)) {
        for (d, row) in db.iter_mut().zip(dy_b.chunks(n.max(1))) {
            let mut s = T::ZERO;
            for v in row {
                s = s + *v;
            }
            *d = *d + s;
        }
    }
    new_tensor(db, vec![c_out])
}

/// The dtype the kernels run in for these inputs: f64 when all are f64, otherwise f32 (f16 and
/// bf16 are converted).
fn compute_dtype(tensors: &[&FlexTensor]) -> DType {
    if tensors.iter().all(|t| t.dtype() == DType::F64) {
        DType::F64
    } else {
        DType::F32
    }
}

/// `t` in f32 (f16, bf16 and f64 converted); also used by `batch_norm`.
pub(crate) fn to_f32(t: FlexTensor) -> FlexTensor {
    match t.dtype() {
        DType::F32 => t,
        DType::F16 => cast_to_f32(t, f16::to_f32),
        DType::BF16 => cast_to_f32(t, bf16::to_f32),
        DType::F64 => cast_to_f32(t, |v: f64| v as f32),
        dtype => panic!("to_f32: unsupported float dtype {:?}", dtype),
    }
}

/// `t` (f32) back in `dtype`; also used by `batch_norm`.
pub(crate) fn from_f32(t: FlexTensor, dtype: DType) -> FlexTensor {
    match dtype {
        DType::F32 => t,
        DType::F16 => cast_from_f32(t, f16::from_f32),
        DType::BF16 => cast_from_f32(t, bf16::from_f32),
        DType::F64 => cast_from_f32(t, |v: f32| v as f64),
        dtype => panic!("from_f32: unsupported float dtype {:?}", dtype),
    }
}

/// Dispatch of the three backward kernels on dtype; `which` picks the kernel's result dtype
/// from `x`, `weight` or the output gradient.
pub(crate) fn x_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let dtype = x.dtype();
    match compute_dtype(&[&x, &weight, &output_grad]) {
        DType::F64 => conv2d_x_backward::<f64>(x, weight, output_grad, options),
        _ => from_f32(
            conv2d_x_backward::<f32>(to_f32(x), to_f32(weight), to_f32(output_grad), options),
            dtype,
        ),
    }
}

/// See [`x_backward`].
pub(crate) fn weight_backward(
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let dtype = weight.dtype();
    match compute_dtype(&[&x, &weight, &output_grad]) {
        DType::F64 => conv2d_weight_backward::<f64>(x, weight, output_grad, options),
        _ => from_f32(
            conv2d_weight_backward::<f32>(to_f32(x), to_f32(weight), to_f32(output_grad), options),
            dtype,
        ),
    }
}

/// See [`x_backward`].
pub(crate) fn bias_backward(bias_dtype: DType, output_grad: FlexTensor) -> FlexTensor {
    match output_grad.dtype() {
        DType::F64 if bias_dtype == DType::F64 => conv2d_bias_backward::<f64>(output_grad),
        _ => from_f32(conv2d_bias_backward::<f32>(to_f32(output_grad)), bias_dtype),
    }
}

/// Whether the forward conv2d goes through [`conv2d`] rather than flex's own kernels: f32 and
/// f64 when flex would take its generic tiled im2col path (not depthwise, not a very small
/// channel count, not 1×1; those fast paths stay).
pub(crate) fn use_for_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    options: &ConvOptions<2>,
) -> bool {
    let xs = x.layout().shape();
    let ws = weight.layout().shape();
    let dtype_ok = matches!(x.dtype(), DType::F32 | DType::F64) && weight.dtype() == x.dtype();
    let depthwise = ws[1] == 1 && options.groups == xs[1] && ws[0] == xs[1];
    // flex's small-channel path (conv.rs: SMALL_CHANNEL_{IN,OUT}_THRESHOLD)
    let small_channel = options.groups == 1 && xs[1] <= 4 && ws[0] <= 16;
    let one_by_one =
        ws[2] == 1 && ws[3] == 1 && options.stride == [1, 1] && options.padding == [(0, 0), (0, 0)];
    dtype_ok && !depthwise && !small_channel && !one_by_one
}
