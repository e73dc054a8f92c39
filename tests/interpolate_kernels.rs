//! Bilinear resizing on the CPU backend, forward and gradient, against a plain f64 reference.
//!
//! The decoder of pretext's generative tasks (colorize, superres, inpaint) upsamples with
//! `interpolate(.., Bilinear)`; pretext's carried burn-flex (`patches/burn-flex`,
//! `src/ops/interpolate.rs`) computes the bilinear taps once per axis. These tests run it through
//! burn's public API on `Device::flex().autodiff()` on random sizes (up and down, both corner
//! conventions, odd sizes, size-1 axes) and on the decoder's own shapes, compare the output and
//! the input gradient with the textbook formula in f64, and check that one and two rayon threads
//! give bit-identical results.

use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug)]
struct Case {
    dims: [usize; 4],
    out: [usize; 2],
    align_corners: bool,
    x: Vec<f32>,
    dy: Vec<f32>,
}

impl Case {
    fn new(dims: [usize; 4], out: [usize; 2], align_corners: bool, rng: &mut ChaCha8Rng) -> Self {
        let [b, c, _, _] = dims;
        let mut v = |n: usize| (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        Self {
            x: v(dims.iter().product()),
            dy: v(b * c * out[0] * out[1]),
            dims,
            out,
            align_corners,
        }
    }

    /// Source position of output coordinate `o` on an axis of `n` inputs resized to `m`:
    /// (low, high, weight of high), PyTorch's convention.
    fn taps(&self, o: usize, n: usize, m: usize) -> (usize, usize, f64) {
        let c = if self.align_corners {
            if m > 1 {
                o as f64 * (n as f64 - 1.0) / (m as f64 - 1.0)
            } else {
                0.0
            }
        } else {
            ((o as f64 + 0.5) * n as f64 / m as f64 - 0.5).max(0.0)
        };
        let low = (c.floor() as usize).min(n - 1);
        let high = (low + 1).min(n - 1);
        (low, high, c - low as f64)
    }

    /// Output and input gradient (of sum(y · dy)) in f64.
    fn reference(&self) -> (Vec<f64>, Vec<f64>) {
        let [b, c, h, w] = self.dims;
        let [oh, ow] = self.out;
        let mut y = vec![0f64; b * c * oh * ow];
        let mut dx = vec![0f64; self.x.len()];
        for p in 0..b * c {
            for i in 0..oh {
                let (y0, y1, wy) = self.taps(i, h, oh);
                for j in 0..ow {
                    let (x0, x1, wx) = self.taps(j, w, ow);
                    let corners = [
                        (y0, x0, (1.0 - wy) * (1.0 - wx)),
                        (y0, x1, (1.0 - wy) * wx),
                        (y1, x0, wy * (1.0 - wx)),
                        (y1, x1, wy * wx),
                    ];
                    let o = (p * oh + i) * ow + j;
                    for (r, s, k) in corners {
                        let at = (p * h + r) * w + s;
                        y[o] += k * self.x[at] as f64;
                        dx[at] += k * self.dy[o] as f64;
                    }
                }
            }
        }
        (y, dx)
    }

    fn burn(&self) -> (Vec<f32>, Vec<f32>) {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_data(TensorData::new(self.x.clone(), self.dims), &device)
            .require_grad();
        let [b, c, _, _] = self.dims;
        let y = interpolate(
            x.clone(),
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(self.align_corners)
                .with_output_size(self.out),
        );
        assert_eq!(y.dims(), [b, c, self.out[0], self.out[1]], "{self:?}");
        let dy = Tensor::<4>::from_data(
            TensorData::new(self.dy.clone(), [b, c, self.out[0], self.out[1]]),
            &device,
        );
        let grads = (y.clone() * dy).sum().backward();
        let dx = x.grad(&grads).expect("x has a gradient");
        (
            y.into_data().try_to_vec::<f32>().unwrap(),
            dx.into_data().try_to_vec::<f32>().unwrap(),
        )
    }

    fn check(&self) {
        let (y, dx) = self.burn();
        let (want_y, want_dx) = self.reference();
        for (name, got, want) in [("output", &y, &want_y), ("input gradient", &dx, &want_dx)] {
            assert_eq!(got.len(), want.len(), "{name} length, {self:?}");
            for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{name}[{i}]: {g} vs {w}; dims {:?} → {:?}, align_corners {}",
                    self.dims,
                    self.out,
                    self.align_corners
                );
            }
        }
    }
}

#[test]
fn bilinear_matches_the_f64_reference_on_random_sizes() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for k in 0..120 {
        let dims = [
            rng.gen_range(1..4),
            rng.gen_range(1..5),
            rng.gen_range(1..12),
            rng.gen_range(1..12),
        ];
        let out = [rng.gen_range(1..24), rng.gen_range(1..24)];
        Case::new(dims, out, k % 3 == 0, &mut rng).check();
    }
}

#[test]
fn bilinear_matches_the_f64_reference_on_the_decoders_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    // the conv net decoder's upsamplings at width 8 (28 px: 3 → 7 → 14 → 28; 32 px: 4 → 8 → 16
    // → 32), large enough to take the parallel path
    for (dims, out) in [
        ([32, 64, 3, 3], [7, 7]),
        ([32, 32, 7, 7], [14, 14]),
        ([32, 16, 14, 14], [28, 28]),
        ([16, 32, 16, 16], [32, 32]),
    ] {
        Case::new(dims, out, false, &mut rng).check();
    }
}

#[test]
fn one_and_two_threads_agree_bit_for_bit() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let case = Case::new([32, 16, 14, 14], [28, 28], false, &mut rng);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a rayon pool")
            .install(|| case.burn())
    };
    let (y1, dx1) = run(1);
    let (y2, dx2) = run(2);
    assert!(y1.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(dx1
        .iter()
        .zip(&dx2)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}
