//! Image-quality measures for the generative tasks, on images with values in [0, 1].
//!
//! PSNR = 10·log10(1 / MSE). SSIM (Wang et al. 2004) with an 8×8 sliding window (stride 1,
//! uniform weights rather than the paper's 11×11 Gaussian, since our images can be 28×28),
//! C1 = (0.01)², C2 = (0.03)², averaged over windows and channels.

use crate::data::augment::Img;

/// Peak signal-to-noise ratio in dB (capped at 100 dB for identical images).
pub fn psnr(a: &Img, b: &Img) -> f32 {
    assert_eq!((a.c, a.h, a.w), (b.c, b.h, b.w), "psnr: shapes differ");
    let mse = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / a.data.len() as f64;
    if mse <= 1e-10 {
        100.0
    } else {
        (10.0 * (1.0 / mse).log10()) as f32
    }
}

/// Mean structural similarity (1 for identical images).
pub fn ssim(a: &Img, b: &Img) -> f32 {
    assert_eq!((a.c, a.h, a.w), (b.c, b.h, b.w), "ssim: shapes differ");
    let win = 8.min(a.h).min(a.w);
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let n = (win * win) as f64;
    let (mut total, mut count) = (0.0f64, 0usize);
    for c in 0..a.c {
        for y0 in 0..=a.h - win {
            for x0 in 0..=a.w - win {
                let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for y in y0..y0 + win {
                    for x in x0..x0 + win {
                        let (p, q) = (a.get(c, y, x) as f64, b.get(c, y, x) as f64);
                        sa += p;
                        sb += q;
                        saa += p * p;
                        sbb += q * q;
                        sab += p * q;
                    }
                }
                let (ma, mb) = (sa / n, sb / n);
                let va = saa / n - ma * ma;
                let vb = sbb / n - mb * mb;
                let cov = sab / n - ma * mb;
                total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                    / ((ma * ma + mb * mb + c1) * (va + vb + c2));
                count += 1;
            }
        }
    }
    (total / count.max(1) as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images_are_perfect_and_noise_lowers_both() {
        let a = Img::from_fn(1, 16, 16, |_, y, x| (y * 16 + x) as f32 / 256.0);
        assert_eq!(psnr(&a, &a), 100.0);
        assert!((ssim(&a, &a) - 1.0).abs() < 1e-6);
        // A uniform error of 0.1 → MSE 0.01 → 20 dB.
        let b = Img::from_fn(1, 16, 16, |_, y, x| a.get(0, y, x) + 0.1);
        assert!((psnr(&a, &b) - 20.0).abs() < 1e-3);
        let noisy = Img::from_fn(1, 16, 16, |_, y, x| {
            a.get(0, y, x) + if (y + x) % 2 == 0 { 0.2 } else { -0.2 }
        });
        assert!(ssim(&a, &noisy) < 0.9);
        assert!(ssim(&a, &b) > ssim(&a, &noisy));
    }
}
