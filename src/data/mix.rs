//! Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a labelled batch, as the MAE and
//! DeiT fine-tuning recipes use them (timm's `Mixup`): one λ per batch drawn from Beta(α, α),
//! each image mixed with the image at the mirrored position of the batch (the batch reversed),
//! and the loss weighted λ on an image's own label, 1 − λ on its partner's. With both on, each
//! batch takes one of the two at even odds.

use rand::Rng;
use rand_distr::{Beta, Distribution};

use super::augment::Img;

/// Beta concentrations α; 0 turns that kind of mixing off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MixSettings {
    pub mixup: f32,
    pub cutmix: f32,
}

impl MixSettings {
    pub fn is_off(&self) -> bool {
        self.mixup <= 0.0 && self.cutmix <= 0.0
    }
}

/// How a batch was mixed: the label each image was mixed with and the weight λ of its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    pub partner: Vec<u32>,
    pub lam: f32,
}

fn beta(alpha: f32, rng: &mut impl Rng) -> f32 {
    Beta::new(alpha, alpha)
        .expect("α > 0 checked by the caller")
        .sample(rng)
}

/// Mixes `images` (all the same shape) in place and returns the partners' labels and λ; `None`
/// (images untouched) when mixing is off or the batch has a single image.
pub fn mix_batch(
    images: &mut [Img],
    labels: &[u32],
    s: &MixSettings,
    rng: &mut impl Rng,
) -> Option<Mix> {
    let n = images.len();
    if s.is_off() || n < 2 {
        return None;
    }
    let use_cutmix = match (s.mixup > 0.0, s.cutmix > 0.0) {
        (true, true) => rng.gen_bool(0.5),
        (_, cutmix) => cutmix,
    };
    let original: Vec<Img> = images.to_vec();
    let lam = if use_cutmix {
        let (h, w) = (images[0].h, images[0].w);
        let (y0, y1, x0, x1) = cut_box(h, w, beta(s.cutmix, rng), rng);
        for (i, img) in images.iter_mut().enumerate() {
            let other = &original[n - 1 - i];
            for c in 0..img.c {
                for y in y0..y1 {
                    let row = (c * h + y) * w;
                    img.data[row + x0..row + x1].copy_from_slice(&other.data[row + x0..row + x1]);
                }
            }
        }
        // The pasted area may be clipped at the border: λ is what is left of the own image.
        1.0 - ((y1 - y0) * (x1 - x0)) as f32 / (h * w) as f32
    } else {
        let lam = beta(s.mixup, rng);
        for (i, img) in images.iter_mut().enumerate() {
            let other = &original[n - 1 - i];
            for (p, q) in img.data.iter_mut().zip(&other.data) {
                *p = lam * *p + (1.0 - lam) * q;
            }
        }
        lam
    };
    Some(Mix {
        partner: labels.iter().rev().copied().collect(),
        lam,
    })
}

/// CutMix's box: area ratio 1 − λ of the image, centred uniformly, clipped at the borders.
/// Returns rows y0..y1 and columns x0..x1.
fn cut_box(h: usize, w: usize, lam: f32, rng: &mut impl Rng) -> (usize, usize, usize, usize) {
    let r = (1.0 - lam).max(0.0).sqrt();
    let (ch, cw) = ((h as f32 * r) as usize, (w as f32 * r) as usize);
    let cy = rng.gen_range(0..h);
    let cx = rng.gen_range(0..w);
    let y0 = cy.saturating_sub(ch / 2);
    let y1 = (cy + ch / 2).min(h);
    let x0 = cx.saturating_sub(cw / 2);
    let x1 = (cx + cw / 2).min(w);
    (y0, y1, x0, x1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn flat(value: f32) -> Img {
        Img {
            c: 2,
            h: 8,
            w: 6,
            data: vec![value; 2 * 8 * 6],
        }
    }

    #[test]
    fn mixup_blends_with_the_mirrored_image_by_lambda() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let s = MixSettings {
            mixup: 0.8,
            cutmix: 0.0,
        };
        let mut lams = Vec::new();
        for _ in 0..20 {
            let mut imgs = vec![flat(0.0), flat(1.0), flat(3.0)];
            let mix = mix_batch(&mut imgs, &[5, 6, 7], &s, &mut rng).unwrap();
            assert_eq!(mix.partner, vec![7, 6, 5]);
            let lam = mix.lam;
            assert!((0.0..=1.0).contains(&lam));
            // image 0 (0.0) with image 2 (3.0), image 1 with itself.
            assert!(imgs[0]
                .data
                .iter()
                .all(|&v| (v - 3.0 * (1.0 - lam)).abs() < 1e-5));
            assert!(imgs[1].data.iter().all(|&v| (v - 1.0).abs() < 1e-6));
            assert!(imgs[2].data.iter().all(|&v| (v - 3.0 * lam).abs() < 1e-5));
            lams.push(lam);
        }
        // One λ per batch, drawn anew each batch.
        lams.dedup();
        assert!(lams.len() > 10, "{lams:?}");
    }

    #[test]
    fn cutmix_pastes_a_box_whose_area_is_one_minus_lambda() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let s = MixSettings {
            mixup: 0.0,
            cutmix: 1.0,
        };
        let mut pasted_some = false;
        for _ in 0..50 {
            let mut imgs = vec![flat(0.0), flat(1.0)];
            let mix = mix_batch(&mut imgs, &[0, 1], &s, &mut rng).unwrap();
            assert_eq!(mix.partner, vec![1, 0]);
            let from_partner = imgs[0].data.iter().filter(|&&v| v == 1.0).count();
            // The same box in every channel, and λ the share left of the own image.
            assert_eq!(from_partner % 2, 0);
            let share = from_partner as f32 / imgs[0].data.len() as f32;
            assert!(
                (share - (1.0 - mix.lam)).abs() < 1e-6,
                "{share} vs λ {}",
                mix.lam
            );
            let back = imgs[1].data.iter().filter(|&&v| v == 0.0).count();
            assert_eq!(back, from_partner);
            pasted_some |= from_partner > 0;
        }
        assert!(pasted_some);
    }

    #[test]
    fn both_on_picks_either_and_off_leaves_the_batch_alone() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let s = MixSettings {
            mixup: 0.8,
            cutmix: 1.0,
        };
        let (mut blended, mut cut) = (0, 0);
        for _ in 0..40 {
            let mut imgs = vec![flat(0.0), flat(1.0)];
            mix_batch(&mut imgs, &[0, 1], &s, &mut rng).unwrap();
            // Mixup leaves values strictly between 0 and 1; CutMix only 0s and 1s.
            if imgs[0].data.iter().all(|&v| v == 0.0 || v == 1.0) {
                cut += 1;
            } else {
                blended += 1;
            }
        }
        assert!(blended > 5 && cut > 5, "mixup {blended}, cutmix {cut}");
        let mut imgs = vec![flat(0.0), flat(1.0)];
        assert!(mix_batch(&mut imgs, &[0, 1], &MixSettings::default(), &mut rng).is_none());
        assert_eq!(imgs[0], flat(0.0));
    }
}
