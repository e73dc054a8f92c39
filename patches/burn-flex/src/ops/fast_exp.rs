//! New in pretext's copy (see PRETEXT.md): `exp` for f32 as straight-line arithmetic that the
//! compiler vectorizes, instead of one call into libm per element.
//!
//! Cephes' `expf` reduction and polynomial (relative error below 2e-7 on the normal range,
//! about one ulp), with the power of two applied in two halves so that results down to the
//! subnormals and up to overflow come out right: `x > 88.72` gives +∞, `x < -103.98` gives 0,
//! −∞ gives 0, NaN stays NaN.

#[cfg(not(feature = "std"))]
#[allow(unused_imports)]
use num_traits::Float;

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

/// `exp_f32` of every element of `src`, into a new vector. AVX2 where the CPU has it (one
/// dispatch per call), otherwise what the build's baseline vectorizes (SSE2 on x86-64).
pub fn exp_f32_vec(src: &[f32]) -> alloc::vec::Vec<f32> {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { exp_f32_vec_avx2(src) };
    }
    src.iter().map(|&x| exp_f32(x)).collect()
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn exp_f32_vec_avx2(src: &[f32]) -> alloc::vec::Vec<f32> {
    // a plain loop: a closure here would not get the function's target features
    let mut out = alloc::vec![0.0f32; src.len()];
    for (y, &x) in out.iter_mut().zip(src) {
        *y = exp_f32(x);
    }
    out
}

/// `exp_f32` of every element of `v`, in place (dispatch as [`exp_f32_vec`]).
pub fn exp_f32_in_place(v: &mut [f32]) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { exp_f32_in_place_avx2(v) };
        return;
    }
    for x in v.iter_mut() {
        *x = exp_f32(*x);
    }
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn exp_f32_in_place_avx2(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = exp_f32(*x);
    }
}
