//! New in pretext's copy (see PRETEXT.md): `exp` and GELU's `erf` for f32 as straight-line
//! arithmetic that the compiler vectorizes, instead of one call into libm per element.
//!
//! `exp_f32`: Cephes' `expf` reduction and polynomial (relative error below 2e-7 on the normal
//! range, about one ulp), with the power of two applied in two halves so that results down to
//! the subnormals and up to overflow come out right: `x > 88.72` gives +∞, `x < -103.98` gives 0,
//! −∞ gives 0, NaN stays NaN.
//!
//! `erf_gelu_f32`: erf to an *absolute* error of ~2e-7 (Numerical Recipes' Chebyshev fit of
//! erfc, fractional error < 1.2e-7), which is what GELU's `1 + erf` and its derivative need;
//! the tensor op `erf` keeps libm's full relative precision near zero.

use alloc::vec::Vec;
use burn_backend::DType;
use burn_std::Bytes;
use core::mem::MaybeUninit;
#[cfg(not(feature = "std"))]
#[allow(unused_imports)]
use num_traits::Float;

use crate::{FlexTensor, Layout};

/// e^x for f32, branch-free (selects only), so loops over slices vectorize.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for the n that occur
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-104.0, 88.8);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let p = p * (r * r) + r + 1.0;
    // 2^n as two factors, each a normal float for n in [-150, 128]
    // (wrapping ops: no overflow checks, which would stop the vectorizer in debug-assertion
    // builds; the values never wrap)
    let half = ni >> 1;
    let s1 = f32::from_bits((half.wrapping_add(127) << 23) as u32);
    let s2 = f32::from_bits((ni.wrapping_sub(half).wrapping_add(127) << 23) as u32);
    let y = p * s1 * s2;
    if x < -104.0 { 0.0 } else { y }
}

/// erf(x) for GELU: absolute error ~2e-7 over the whole line, branch-free; NaN stays NaN.
#[inline(always)]
pub fn erf_gelu_f32(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77_f32;
    let p = p * t - 0.822_152_23;
    let p = p * t + 1.488_515_87;
    let p = p * t - 1.135_203_98;
    let p = p * t + 0.278_868_07;
    let p = p * t - 0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_68;
    let p = p * t - 1.265_512_23;
    // erfc(z) for z ≥ 0
    let erfc = t * exp_f32(p - z * z);
    let r = 1.0 - erfc;
    if x < 0.0 { -r } else { r }
}

/// Runs `body` (a loop over the slices it is given) compiled three times: with AVX-512F, with
/// AVX2, and for the build's baseline (SSE2 on x86-64), picking the widest the CPU has (one
/// check per call; `std` caches it). The bodies are plain IEEE arithmetic without fused
/// multiply-adds, so every path gives the same bits (`tests/fast_math_kernels.rs` checks it for
/// `exp`). Plain `for` loops in `body`: a closure inside a `#[target_feature]` function would not
/// get its features.
macro_rules! widest_simd {
    (($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {{
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? $body
            #[target_feature(enable = "avx2")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? $body
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                return unsafe { avx512($($arg),*) };
            }
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { avx2($($arg),*) };
            }
        }
        fn baseline($($arg: $ty),*) $(-> $ret)? $body
        baseline($($arg),*)
    }};
}
pub(crate) use widest_simd;

/// `$into(x, out)` and `$in_place(v)`: `$f` of every element, into `out` (same length) or in
/// place, on the widest vectors the CPU has (`widest_simd!`).
macro_rules! slice_maps {
    ($f:ident, $into:ident, $in_place:ident) => {
        #[doc = concat!("`", stringify!($f), "` of every element of `x`, written to `out` (which may be")]
        #[doc = "uninitialised: every element is written)."]
        pub fn $into(x: &[f32], out: &mut [MaybeUninit<f32>]) {
            assert_eq!(x.len(), out.len());
            widest_simd!((x: &[f32], out: &mut [MaybeUninit<f32>]) {
                for (y, &x) in out.iter_mut().zip(x) {
                    y.write($f(x));
                }
            })
        }

        #[doc = concat!("`", stringify!($f), "` of every element of `v`, in place.")]
        pub fn $in_place(v: &mut [f32]) {
            widest_simd!((v: &mut [f32]) {
                for x in v.iter_mut() {
                    *x = $f(*x);
                }
            })
        }
    };
}

slice_maps!(exp_f32, exp_f32_into, exp_f32_in_place);

const SQRT_HALF: f32 = core::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// GELU (exact form, `0.5 x (1 + erf(x / √2))`) of one element.
#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_gelu_f32(x * SQRT_HALF))
}

/// GELU of one element and the erf term it used (`gelu_one`'s value, bit for bit).
#[inline(always)]
pub(crate) fn gelu_with_erf_one(x: f32) -> (f32, f32) {
    let e = erf_gelu_f32(x * SQRT_HALF);
    (0.5 * x * (1.0 + e), e)
}

/// `gelu_backward_one(x, g)` from the erf term `e` of `gelu_with_erf_one(x)` (the same bits).
#[inline(always)]
pub(crate) fn gelu_backward_with_erf_one(x: f32, e: f32, g: f32) -> f32 {
    let cdf = 0.5 * (1.0 + e);
    let pdf = INV_SQRT_2PI * exp_f32(-0.5 * x * x);
    g * (cdf + x * pdf)
}

/// GELU's derivative at `x` times `g`.
#[inline(always)]
fn gelu_backward_one(x: f32, g: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_gelu_f32(x * SQRT_HALF));
    let pdf = INV_SQRT_2PI * exp_f32(-0.5 * x * x);
    g * (cdf + x * pdf)
}

slice_maps!(gelu_one, gelu_f32_into, gelu_f32_in_place);

/// GELU's input gradient for inputs `x` and output gradients `g` (same length), written to
/// `out`, on the widest vectors the CPU has.
pub fn gelu_backward_f32(x: &[f32], g: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(x.len() == g.len() && x.len() == out.len());
    widest_simd!((x: &[f32], g: &[f32], out: &mut [MaybeUninit<f32>]) {
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
            o.write(gelu_backward_one(x, g));
        }
    })
}

/// [`gelu_backward_f32`] written over the output gradients `g` (the same values).
pub fn gelu_backward_f32_in_place(x: &[f32], g: &mut [f32]) {
    assert_eq!(x.len(), g.len());
    widest_simd!((x: &[f32], g: &mut [f32]) {
        for (g, &x) in g.iter_mut().zip(x) {
            *g = gelu_backward_one(x, *g);
        }
    })
}

/// A new contiguous f32 tensor of `shape` whose `n` elements `fill` writes, every one of them
/// (pretext: no zero-fill before a kernel that overwrites the whole buffer).
pub fn new_f32_filled_by(
    shape: burn_std::Shape,
    n: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> FlexTensor {
    let mut out: Vec<f32> = Vec::with_capacity(n);
    fill(&mut out.spare_capacity_mut()[..n]);
    // SAFETY: `fill` wrote all `n` elements (every caller's kernel writes its whole output).
    unsafe { out.set_len(n) };
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// Runs a slice kernel over a contiguous f32 tensor that starts at its buffer's beginning: in
/// place when the tensor owns its buffer, into a new contiguous tensor otherwise. Any other
/// tensor comes back untouched as `Err`, for the caller's general path.
pub fn map_contiguous_f32(
    mut tensor: FlexTensor,
    in_place: fn(&mut [f32]),
    into: fn(&[f32], &mut [MaybeUninit<f32>]),
) -> Result<FlexTensor, FlexTensor> {
    if tensor.dtype() != DType::F32
        || !tensor.layout().is_contiguous()
        || tensor.layout().start_offset() != 0
    {
        return Err(tensor);
    }
    let n = tensor.layout().num_elements();
    if tensor.is_unique() {
        let storage: &mut [f32] = tensor.storage_mut();
        in_place(&mut storage[..n]);
        return Ok(tensor);
    }
    let shape = tensor.layout().shape().clone();
    Ok(new_f32_filled_by(shape, n, |out| {
        into(&tensor.storage::<f32>()[..n], out)
    }))
}
