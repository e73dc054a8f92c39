//! Random views of an image for the joint-embedding methods (SimCLR, BYOL): the augmentation
//! pipeline of SimCLR (Chen et al. 2020, appendix A) — random resized crop, horizontal flip,
//! colour jitter, random grayscale, Gaussian blur — with defaults per kind of data. Runs on the
//! loader threads.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::augment::{color_jitter, grayscale, inception_crop, maybe_flip, Img};

/// `[TASK.views]`: how views are made. A setting left out takes the default for the data
/// ([`ViewConfig::resolve`]): colour images get SimCLR's colour distortions, grey images crops and
/// intensity changes only.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewConfig {
    /// Smallest area fraction of the random resized crop (colour 0.2, grey 0.5). On the built-in
    /// 28-px Fashion-MNIST (SimCLR, 1,000 steps, 10 labels per class, 3 draws) grey crops from
    /// 0.2 / 0.3 / 0.5 / 0.7 of the area gave linear 0.698 / 0.692 / 0.715 / 0.716 and k-NN
    /// 0.642 / 0.644 / 0.685 / 0.698: small crops of small grey images lose the object.
    pub crop_scale_min: Option<f32>,
    /// Random horizontal flip (default on).
    pub flip: Option<bool>,
    /// Colour-jitter strength s: brightness, contrast and saturation factors drawn from
    /// [1-0.8s, 1+0.8s] (colour 0.5, grey 0.5; saturation has no effect on grey images).
    pub jitter: Option<f32>,
    /// Probability of applying the jitter (0.8).
    pub jitter_prob: Option<f32>,
    /// Probability of a grayscale view (colour 0.2; grey images are grey already).
    pub grayscale_prob: Option<f32>,
    /// Probability of a Gaussian blur with σ in [0.1, 2.0] px at 224 px, scaled to the image
    /// (colour images of 64 px and more: 0.5; smaller ones, as in SimCLR's CIFAR setting: 0).
    pub blur_prob: Option<f32>,
}

/// The settings with every default filled in for images of `channels` × `size` px.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Views {
    pub crop_scale_min: f32,
    pub flip: bool,
    pub jitter: f32,
    pub jitter_prob: f32,
    pub grayscale_prob: f32,
    pub blur_prob: f32,
}

impl ViewConfig {
    /// Fill in the defaults for the data; `Err((key, message))` for a value out of range.
    pub fn resolve(&self, channels: usize, size: usize) -> Result<Views, (String, String)> {
        let colour = channels == 3;
        let v = Views {
            crop_scale_min: self
                .crop_scale_min
                .unwrap_or(if colour { 0.2 } else { 0.5 }),
            flip: self.flip.unwrap_or(true),
            jitter: self.jitter.unwrap_or(0.5),
            jitter_prob: self.jitter_prob.unwrap_or(0.8),
            grayscale_prob: self
                .grayscale_prob
                .unwrap_or(if colour { 0.2 } else { 0.0 }),
            blur_prob: self
                .blur_prob
                .unwrap_or(if colour && size >= 64 { 0.5 } else { 0.0 }),
        };
        let check = |key: &str, x: f32, lo: f32, hi: f32| {
            if (lo..=hi).contains(&x) {
                Ok(())
            } else {
                Err((
                    format!("views.{key}"),
                    format!("must be in [{lo}, {hi}], found {x}"),
                ))
            }
        };
        check("crop_scale_min", v.crop_scale_min, 0.05, 1.0)?;
        check("jitter", v.jitter, 0.0, 1.0)?;
        check("jitter_prob", v.jitter_prob, 0.0, 1.0)?;
        check("grayscale_prob", v.grayscale_prob, 0.0, 1.0)?;
        check("blur_prob", v.blur_prob, 0.0, 1.0)?;
        Ok(v)
    }
}

impl Views {
    /// One random view of `img` (values in [0,1]), `size` × `size`.
    pub fn view(&self, img: &Img, size: usize, rng: &mut impl Rng) -> Img {
        let mut out = inception_crop(img, size, self.crop_scale_min, rng);
        out = maybe_flip(out, self.flip, rng);
        if self.jitter > 0.0 && rng.gen::<f32>() < self.jitter_prob {
            let s = 0.8 * self.jitter;
            out = color_jitter(&out, s, s, s, rng);
        }
        if out.c == 3 && rng.gen::<f32>() < self.grayscale_prob {
            out = grayscale(&out);
        }
        if rng.gen::<f32>() < self.blur_prob {
            let sigma = (0.1 + 1.9 * rng.gen::<f32>()) * size as f32 / 224.0;
            out = gaussian_blur(&out, sigma);
        }
        out
    }
}

/// Separable Gaussian blur with standard deviation `sigma` px (radius 3σ, edges clamped).
pub fn gaussian_blur(img: &Img, sigma: f32) -> Img {
    if sigma < 0.05 {
        return img.clone();
    }
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / total).collect();
    let (h, w) = (img.h as isize, img.w as isize);
    let pass = |src: &Img, horizontal: bool| {
        let mut out = src.clone();
        for c in 0..src.c {
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0.0;
                    for (j, kv) in k.iter().enumerate() {
                        let d = j as isize - r;
                        let (yy, xx) = if horizontal {
                            (y, (x + d).clamp(0, w - 1))
                        } else {
                            ((y + d).clamp(0, h - 1), x)
                        };
                        acc += kv * src.get(c, yy as usize, xx as usize);
                    }
                    out.set(c, y as usize, x as usize, acc);
                }
            }
        }
        out
    };
    pass(&pass(img, true), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn defaults_follow_the_data_and_bad_values_name_their_key() {
        let grey = ViewConfig::default().resolve(1, 28).unwrap();
        assert_eq!((grey.grayscale_prob, grey.blur_prob), (0.0, 0.0));
        let colour = ViewConfig::default().resolve(3, 96).unwrap();
        assert_eq!((colour.grayscale_prob, colour.blur_prob), (0.2, 0.5));
        assert_eq!(ViewConfig::default().resolve(3, 32).unwrap().blur_prob, 0.0);
        let bad = ViewConfig {
            jitter_prob: Some(1.5),
            ..Default::default()
        };
        assert_eq!(bad.resolve(1, 28).unwrap_err().0, "views.jitter_prob");
    }

    #[test]
    fn blur_keeps_flat_images_and_the_mean_and_smooths_an_edge() {
        let flat = Img::from_fn(3, 12, 12, |c, _, _| 0.1 + 0.3 * c as f32);
        for (a, b) in gaussian_blur(&flat, 1.5).data.iter().zip(&flat.data) {
            assert!((a - b).abs() < 1e-5);
        }
        let edge = Img::from_fn(1, 8, 8, |_, _, x| if x < 4 { 0.0 } else { 1.0 });
        let b = gaussian_blur(&edge, 1.0);
        assert!(b.get(0, 4, 3) > 0.1 && b.get(0, 4, 4) < 0.9);
        assert!(b.get(0, 4, 0) < 0.01 && b.get(0, 4, 7) > 0.99);
    }

    #[test]
    fn two_views_of_one_image_differ_and_keep_the_shape() {
        let img = Img::from_fn(3, 32, 32, |c, y, x| {
            ((y * 7 + x * 3 + c) % 11) as f32 / 11.0
        });
        let v = ViewConfig::default().resolve(3, 32).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (a, b) = (v.view(&img, 32, &mut rng), v.view(&img, 32, &mut rng));
        assert_eq!((a.c, a.h, a.w), (3, 32, 32));
        assert_ne!(a.data, b.data);
        assert!(a.data.iter().all(|p| (0.0..=1.0).contains(p)));
    }
}
