//! Strong views for the semi-supervised stage: RandAugment (Cubuk et al. 2020) as FixMatch
//! uses it (Sohn et al. 2020, "RA"): `ops` operations drawn from the pool below, each applied
//! with probability ½ at a random magnitude, then Cutout. Every operation works on grey images
//! (one channel; the colour operation is then the identity) and on colour ones, at any size
//! (geometric magnitudes are fractions of the side), so the same policy suits 28-px
//! Fashion-MNIST and photographs.
//!
//! Magnitudes follow torchvision's `RandAugment` at its strongest bin, drawn uniformly in
//! (0, 1] of that range with a random sign where the operation has one: shear up to 0.3,
//! translation up to 0.3 of the side, rotation up to 30°, brightness / colour / contrast /
//! sharpness factors in [0.1, 1.9], posterize to 4–8 bits, solarize above a threshold in
//! [0, 1). Geometric operations fill what comes in from outside with the mean of the image's
//! border pixels (black for Fashion-MNIST, the edge colour of a photograph). Cutout greys a
//! square of `cutout` × the side at a random centre (clipped at the edges), as FixMatch does.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::augment::{grayscale, Img};

/// `[semi]`-level settings of the strong view.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrongConfig {
    /// Operations drawn per image (with replacement), each applied with probability ½.
    pub ops: usize,
    /// Largest magnitude, a fraction of each operation's range (FixMatch's m = 10 of 10 is 1).
    pub magnitude: f32,
    /// Side of the Cutout square as a fraction of the image side (0 = no Cutout).
    pub cutout: f32,
}

impl Default for StrongConfig {
    fn default() -> Self {
        Self {
            ops: 2,
            magnitude: 1.0,
            cutout: 0.5,
        }
    }
}

impl StrongConfig {
    /// Range checks; `Err((key, message))` names the offending key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.ops > 14 {
            return Err(("ops", format!("must be 0 to 14, found {}", self.ops)));
        }
        if !(0.0..=1.0).contains(&self.magnitude) {
            return Err((
                "magnitude",
                format!("must be in [0, 1], found {}", self.magnitude),
            ));
        }
        if !(0.0..=1.0).contains(&self.cutout) {
            return Err((
                "cutout",
                format!("must be in [0, 1], found {}", self.cutout),
            ));
        }
        Ok(())
    }
}

/// The operations of the pool, in FixMatch's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AutoContrast,
    Brightness,
    Color,
    Contrast,
    Equalize,
    Identity,
    Posterize,
    Rotate,
    Sharpness,
    ShearX,
    ShearY,
    Solarize,
    TranslateX,
    TranslateY,
}

pub const POOL: [Op; 14] = [
    Op::AutoContrast,
    Op::Brightness,
    Op::Color,
    Op::Contrast,
    Op::Equalize,
    Op::Identity,
    Op::Posterize,
    Op::Rotate,
    Op::Sharpness,
    Op::ShearX,
    Op::ShearY,
    Op::Solarize,
    Op::TranslateX,
    Op::TranslateY,
];

/// A strong view of `img` (values in [0, 1]): RandAugment, then Cutout.
pub fn strong_view(img: &Img, cfg: &StrongConfig, rng: &mut impl Rng) -> Img {
    let mut out = img.clone();
    for _ in 0..cfg.ops {
        let op = POOL[rng.gen_range(0..POOL.len())];
        // Magnitude and sign are drawn whether or not the op applies, so the draws per image
        // do not depend on the coin.
        let m = cfg.magnitude * (1.0 - rng.gen::<f32>());
        let signed = if rng.gen_bool(0.5) { m } else { -m };
        if rng.gen_bool(0.5) {
            out = apply(&out, op, signed);
        }
    }
    if cfg.cutout > 0.0 {
        let side = (cfg.cutout * out.h.min(out.w) as f32).round() as usize;
        let (cy, cx) = (rng.gen_range(0..out.h), rng.gen_range(0..out.w));
        cutout(&mut out, cy, cx, side, 0.5);
    }
    out
}

/// `op` at signed magnitude `m` in [−1, 1] (operations without a direction use |m|).
pub fn apply(img: &Img, op: Op, m: f32) -> Img {
    let a = m.abs();
    let side = img.h.min(img.w) as f32;
    match op {
        Op::Identity => img.clone(),
        Op::AutoContrast => autocontrast(img),
        Op::Equalize => equalize(img),
        Op::Brightness => blend(img, &Img::zeros(img.c, img.h, img.w), 1.0 + 0.9 * m),
        Op::Color => blend(img, &grayscale(img), 1.0 + 0.9 * m),
        Op::Contrast => {
            let mean = grayscale(img).data.iter().sum::<f32>() / img.data.len() as f32;
            let flat = Img {
                data: vec![mean; img.data.len()],
                ..img.clone()
            };
            blend(img, &flat, 1.0 + 0.9 * m)
        }
        Op::Sharpness => blend(img, &smooth(img), 1.0 + 0.9 * m),
        Op::Posterize => posterize(img, 8 - (4.0 * a).round() as u32),
        Op::Solarize => solarize(img, 1.0 - a),
        Op::Rotate => {
            let t = (30.0 * m).to_radians();
            let (s, c) = t.sin_cos();
            affine(img, [c, -s, 0.0, s, c, 0.0])
        }
        Op::ShearX => affine(img, [1.0, 0.3 * m, 0.0, 0.0, 1.0, 0.0]),
        Op::ShearY => affine(img, [1.0, 0.0, 0.0, 0.3 * m, 1.0, 0.0]),
        Op::TranslateX => affine(img, [1.0, 0.0, 0.3 * m * side, 0.0, 1.0, 0.0]),
        Op::TranslateY => affine(img, [1.0, 0.0, 0.0, 0.0, 1.0, 0.3 * m * side]),
    }
}

/// `degenerate + f·(img − degenerate)`, clamped to [0, 1] (PIL's `ImageEnhance`).
fn blend(img: &Img, degenerate: &Img, f: f32) -> Img {
    let mut out = img.clone();
    for (v, d) in out.data.iter_mut().zip(&degenerate.data) {
        *v = (d + f * (*v - d)).clamp(0.0, 1.0);
    }
    out
}

/// PIL's SMOOTH filter (3×3, centre 5, the rest 1, /13); the border pixels unchanged.
fn smooth(img: &Img) -> Img {
    let mut out = img.clone();
    if img.h < 3 || img.w < 3 {
        return out;
    }
    for c in 0..img.c {
        for y in 1..img.h - 1 {
            for x in 1..img.w - 1 {
                let mut s = 4.0 * img.get(c, y, x);
                for dy in 0..3 {
                    for dx in 0..3 {
                        s += img.get(c, y + dy - 1, x + dx - 1);
                    }
                }
                out.set(c, y, x, s / 13.0);
            }
        }
    }
    out
}

/// Each channel stretched to [0, 1] (unchanged where it is flat).
pub fn autocontrast(img: &Img) -> Img {
    let mut out = img.clone();
    let plane = img.h * img.w;
    for ch in out.data.chunks_mut(plane) {
        let lo = ch.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = ch.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if hi > lo {
            ch.iter_mut().for_each(|v| *v = (*v - lo) / (hi - lo));
        }
    }
    out
}

/// Histogram equalisation per channel on 256 levels, as PIL's `ImageOps.equalize`.
pub fn equalize(img: &Img) -> Img {
    let mut out = img.clone();
    let plane = img.h * img.w;
    for ch in out.data.chunks_mut(plane) {
        let level = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as usize;
        let mut hist = [0usize; 256];
        ch.iter().for_each(|&v| hist[level(v)] += 1);
        let last = hist.iter().rev().find(|&&n| n > 0).copied().unwrap_or(0);
        let step = (plane - last) / 255;
        if step == 0 {
            continue;
        }
        let mut lut = [0f32; 256];
        let mut n = step / 2;
        for (i, h) in hist.iter().enumerate() {
            lut[i] = (n / step).min(255) as f32 / 255.0;
            n += h;
        }
        ch.iter_mut().for_each(|v| *v = lut[level(*v)]);
    }
    out
}

/// Keep the top `bits` bits of every 8-bit level.
pub fn posterize(img: &Img, bits: u32) -> Img {
    let mask = !((1u32 << (8 - bits.clamp(1, 8))) - 1) & 0xff;
    let mut out = img.clone();
    out.data
        .iter_mut()
        .for_each(|v| *v = (((v.clamp(0.0, 1.0) * 255.0).round() as u32) & mask) as f32 / 255.0);
    out
}

/// Invert every value at or above `threshold`.
pub fn solarize(img: &Img, threshold: f32) -> Img {
    let mut out = img.clone();
    out.data
        .iter_mut()
        .filter(|v| **v >= threshold)
        .for_each(|v| *v = 1.0 - *v);
    out
}

/// The mean of each channel's outermost pixels: what geometric operations fill with.
fn border_mean(img: &Img) -> Vec<f32> {
    (0..img.c)
        .map(|c| {
            let mut s = 0.0;
            let mut n = 0;
            for y in 0..img.h {
                for x in 0..img.w {
                    if y == 0 || x == 0 || y + 1 == img.h || x + 1 == img.w {
                        s += img.get(c, y, x);
                        n += 1;
                    }
                }
            }
            s / n.max(1) as f32
        })
        .collect()
}

/// The affine map `[a, b, tx, c, d, ty]` about the image centre: output pixel p takes the input
/// at `A·(p − centre) + centre − t` (the inverse map), bilinear; outside pixels are filled with
/// the border mean.
pub fn affine(img: &Img, m: [f32; 6]) -> Img {
    let fill = border_mean(img);
    let (cy, cx) = ((img.h as f32 - 1.0) / 2.0, (img.w as f32 - 1.0) / 2.0);
    let [a, b, tx, c, d, ty] = m;
    Img::from_fn(img.c, img.h, img.w, |ch, y, x| {
        let (dx, dy) = (x as f32 - cx - tx, y as f32 - cy - ty);
        let sx = a * dx + b * dy + cx;
        let sy = c * dx + d * dy + cy;
        sample(img, ch, sy, sx, fill[ch])
    })
}

/// Bilinear sample of channel `ch` at (y, x); taps outside the image read `fill`.
fn sample(img: &Img, ch: usize, y: f32, x: f32, fill: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let at = |yy: f32, xx: f32| {
        if yy < 0.0 || xx < 0.0 || yy > (img.h - 1) as f32 || xx > (img.w - 1) as f32 {
            fill
        } else {
            img.get(ch, yy as usize, xx as usize)
        }
    };
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1.0) * fx;
    let bot = at(y0 + 1.0, x0) * (1.0 - fx) + at(y0 + 1.0, x0 + 1.0) * fx;
    top * (1.0 - fy) + bot * fy
}

/// Set a `side` × `side` square centred at (cy, cx), clipped at the edges, to `value`.
pub fn cutout(img: &mut Img, cy: usize, cx: usize, side: usize, value: f32) {
    let half = side / 2;
    let (y0, x0) = (cy.saturating_sub(half), cx.saturating_sub(half));
    let (y1, x1) = ((cy + side - half).min(img.h), (cx + side - half).min(img.w));
    for c in 0..img.c {
        for y in y0..y1 {
            for x in x0..x1 {
                img.set(c, y, x, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ramp(c: usize, h: usize, w: usize) -> Img {
        Img::from_fn(c, h, w, |ch, y, x| {
            ((y * w + x + ch * 7) % 97) as f32 / 96.0
        })
    }

    #[test]
    fn every_op_keeps_shape_and_range_on_grey_and_colour() {
        for (c, side) in [(1, 28), (3, 32)] {
            let img = ramp(c, side, side);
            for op in POOL {
                for m in [-1.0, -0.3, 0.0, 0.5, 1.0] {
                    let out = apply(&img, op, m);
                    assert_eq!((out.c, out.h, out.w), (c, side, side), "{op:?}");
                    assert!(
                        out.data.iter().all(|v| (0.0..=1.0).contains(v)),
                        "{op:?} at {m} left [0, 1]"
                    );
                }
            }
        }
    }

    #[test]
    fn zero_magnitude_geometry_and_enhancements_are_the_identity() {
        let img = ramp(3, 16, 16);
        for op in [
            Op::Rotate,
            Op::ShearX,
            Op::ShearY,
            Op::TranslateX,
            Op::TranslateY,
            Op::Brightness,
            Op::Color,
            Op::Contrast,
            Op::Sharpness,
            Op::Posterize,
        ] {
            let out = apply(&img, op, 0.0);
            for (a, b) in out.data.iter().zip(&img.data) {
                assert!((a - b).abs() < 2.0 / 255.0, "{op:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn translation_moves_pixels_and_fills_with_the_border() {
        // A black image with one bright pixel: a shift by 0.25·8 = 2 px moves it 2 right.
        let mut img = Img::zeros(1, 8, 8);
        img.set(0, 3, 2, 1.0);
        let out = apply(&img, Op::TranslateX, 0.25 / 0.3);
        assert!((out.get(0, 3, 4) - 1.0).abs() < 1e-4, "{:?}", out.data);
        assert!(out.get(0, 3, 2).abs() < 1e-4);
        // What comes in from outside is the border's mean (0 here).
        assert!(out.get(0, 0, 0).abs() < 1e-6);
        let grey = Img::from_fn(1, 8, 8, |_, _, _| 0.4);
        let moved = apply(&grey, Op::TranslateY, 1.0);
        assert!(moved.data.iter().all(|v| (v - 0.4).abs() < 1e-5));
    }

    #[test]
    fn point_operations_by_hand() {
        let img = Img {
            c: 1,
            h: 1,
            w: 4,
            data: vec![0.2, 0.4, 0.6, 0.8],
        };
        let ac = autocontrast(&img);
        for (a, b) in ac.data.iter().zip([0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]) {
            assert!((a - b).abs() < 1e-6);
        }
        let sol = solarize(&img, 0.5);
        for (a, b) in sol.data.iter().zip([0.2, 0.4, 0.4, 0.2]) {
            assert!((a - b).abs() < 1e-6);
        }
        // 0.4 → level 102 = 0b0110_0110; 4 bits keep 0b0110_0000 = 96.
        let post = posterize(&img, 4);
        assert!((post.data[1] - 96.0 / 255.0).abs() < 1e-6);
        // Too few pixels for PIL's step ((pixels − last level's count) / 255 = 0): unchanged.
        assert_eq!(equalize(&img).data, img.data);
        // Four levels of 256 pixels each spread over the range, order kept, the darkest at 0.
        let big = Img {
            c: 1,
            h: 1,
            w: 1024,
            data: (0..1024).map(|i| img.data[i / 256]).collect(),
        };
        let eq = equalize(&big);
        let levels: Vec<f32> = (0..4).map(|k| eq.data[k * 256]).collect();
        assert!(levels.windows(2).all(|w| w[0] < w[1]), "{levels:?}");
        assert_eq!(levels[0], 0.0);
        assert!(levels[3] > 0.6, "{levels:?}");
    }

    #[test]
    fn cutout_is_clipped_at_the_edges() {
        let mut img = Img::from_fn(1, 6, 6, |_, _, _| 1.0);
        cutout(&mut img, 0, 0, 4, 0.5);
        let grey = img.data.iter().filter(|&&v| v == 0.5).count();
        assert_eq!(
            grey, 4,
            "a 4×4 square centred on the corner keeps 2×2 inside"
        );
    }

    #[test]
    fn strong_views_are_seeded_and_differ_from_the_image() {
        let img = ramp(1, 28, 28);
        let cfg = StrongConfig::default();
        let view = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            strong_view(&img, &cfg, &mut rng)
        };
        assert_eq!(view(1), view(1));
        assert_ne!(view(1), view(2));
        assert_ne!(view(1), img, "Cutout alone changes the image");
        let none = StrongConfig {
            ops: 0,
            magnitude: 1.0,
            cutout: 0.0,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        assert_eq!(strong_view(&img, &none, &mut rng), img);
        assert!(StrongConfig {
            magnitude: 1.5,
            ..cfg
        }
        .check()
        .is_err());
    }
}
