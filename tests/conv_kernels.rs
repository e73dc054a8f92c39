//! conv2d on the CPU backend, forward and gradients, against a plain f64 reference.
//!
//! pretext carries burn-flex with its own conv2d kernels (`patches/burn-flex`,
//! `src/ops/conv2d_gemm.rs`: forward, input, weight and bias gradients as im2col + gemm). These
//! tests run conv2d through burn's public API on `Device::flex().autodiff()` — the path every
//! pretext model takes — on many random shapes (stride, padding, asymmetric padding, dilation,
//! groups, odd sizes) and on pretext's own layer shapes, and compare the output and the
//! gradients of x, weight and bias with direct loops in f64. They also check that one and two
//! rayon threads give bit-identical results (the kernels split the batch over threads).

use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One conv2d problem: shapes, options and data (NCHW, OIHW).
#[derive(Clone, Debug, Default)]
struct Case {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    groups: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    /// (begin, end) per spatial dim
    padding: [(usize, usize); 2],
    dilation: [usize; 2],
    bias: bool,
    x: Vec<f32>,
    weight: Vec<f32>,
    b: Vec<f32>,
    /// the output gradient: the loss is sum(y * dy)
    dy: Vec<f32>,
}

impl Case {
    fn out(&self) -> (usize, usize) {
        let o = |input: usize, k: usize, s: usize, p: (usize, usize), d: usize| {
            (input + p.0 + p.1 - d * (k - 1) - 1) / s + 1
        };
        (
            o(
                self.h,
                self.kh,
                self.stride[0],
                self.padding[0],
                self.dilation[0],
            ),
            o(
                self.w,
                self.kw,
                self.stride[1],
                self.padding[1],
                self.dilation[1],
            ),
        )
    }

    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new_with_padding(self.stride, self.padding, self.dilation, self.groups)
    }

    /// Fills x, weight, bias and the output gradient with uniform values in [-1, 1).
    fn with_data(mut self, rng: &mut ChaCha8Rng) -> Self {
        let mut v = |n: usize| {
            (0..n)
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect::<Vec<_>>()
        };
        let (oh, ow) = self.out();
        self.x = v(self.batch * self.c_in * self.h * self.w);
        self.weight = v(self.c_out * (self.c_in / self.groups) * self.kh * self.kw);
        self.b = v(self.c_out);
        self.dy = v(self.batch * self.c_out * oh * ow);
        self
    }

    /// A random valid problem of the sizes the issue asks for.
    fn random(rng: &mut ChaCha8Rng) -> Self {
        loop {
            let groups = if rng.gen_bool(0.2) {
                rng.gen_range(2..=3)
            } else {
                1
            };
            let c_in = groups * rng.gen_range(1..=9 / groups);
            let c_out = groups * rng.gen_range(1..=9 / groups);
            let (kh, kw) = (rng.gen_range(1..=5), rng.gen_range(1..=5));
            let (h, w) = (rng.gen_range(1..=13), rng.gen_range(1..=13));
            let stride = [rng.gen_range(1..=3), rng.gen_range(1..=3)];
            let dilation = [rng.gen_range(1..=2), rng.gen_range(1..=2)];
            let padding = if rng.gen_bool(0.2) {
                [
                    (rng.gen_range(0..=2), rng.gen_range(0..=2)),
                    (rng.gen_range(0..=2), rng.gen_range(0..=2)),
                ]
            } else {
                let (ph, pw) = (rng.gen_range(0..=2), rng.gen_range(0..=2));
                [(ph, ph), (pw, pw)]
            };
            let fits = h + padding[0].0 + padding[0].1 > dilation[0] * (kh - 1)
                && w + padding[1].0 + padding[1].1 > dilation[1] * (kw - 1);
            if !fits {
                continue;
            }
            let case = Self {
                batch: rng.gen_range(1..=5),
                c_in,
                h,
                w,
                c_out,
                groups,
                kh,
                kw,
                stride,
                padding,
                dilation,
                bias: rng.gen_bool(0.5),
                ..Self::default()
            };
            return case.with_data(rng);
        }
    }

    /// Output, dx, dweight, dbias in f64 by direct loops.
    #[allow(clippy::needless_range_loop)] // the direct loops are the reference's point
    fn reference(&self) -> [Vec<f64>; 4] {
        let (oh, ow) = self.out();
        let (cg, cog) = (self.c_in / self.groups, self.c_out / self.groups);
        let mut y = vec![0f64; self.batch * self.c_out * oh * ow];
        let mut dx = vec![0f64; self.x.len()];
        let mut dw = vec![0f64; self.weight.len()];
        let mut db = vec![0f64; self.c_out];
        for b in 0..self.batch {
            for co in 0..self.c_out {
                let g = co / cog;
                for o_h in 0..oh {
                    for o_w in 0..ow {
                        let yi = ((b * self.c_out + co) * oh + o_h) * ow + o_w;
                        let dy = self.dy[yi] as f64;
                        let mut acc = if self.bias { self.b[co] as f64 } else { 0.0 };
                        db[co] += dy;
                        for c in 0..cg {
                            let ci = g * cg + c;
                            for i in 0..self.kh {
                                for j in 0..self.kw {
                                    let ih = (o_h * self.stride[0] + i * self.dilation[0]) as isize
                                        - self.padding[0].0 as isize;
                                    let iw = (o_w * self.stride[1] + j * self.dilation[1]) as isize
                                        - self.padding[1].0 as isize;
                                    if ih < 0
                                        || iw < 0
                                        || ih >= self.h as isize
                                        || iw >= self.w as isize
                                    {
                                        continue;
                                    }
                                    let xi = ((b * self.c_in + ci) * self.h + ih as usize) * self.w
                                        + iw as usize;
                                    let wi = ((co * cg + c) * self.kh + i) * self.kw + j;
                                    acc += self.x[xi] as f64 * self.weight[wi] as f64;
                                    dx[xi] += dy * self.weight[wi] as f64;
                                    dw[wi] += dy * self.x[xi] as f64;
                                }
                            }
                        }
                        y[yi] = acc;
                    }
                }
            }
        }
        [y, dx, dw, db]
    }

    /// Output, dx, dweight, dbias through burn on `Device::flex().autodiff()`. With `strided_x`
    /// the input is handed over as a transposed view (exercises the non-contiguous path).
    fn burn(&self, strided_x: bool) -> [Vec<f32>; 4] {
        let device = Device::flex().autodiff();
        let x = if strided_x {
            // stored as [batch, c_in, w, h], then swapped to [batch, c_in, h, w]
            let mut t = vec![0f32; self.x.len()];
            for bc in 0..self.batch * self.c_in {
                for i in 0..self.h {
                    for j in 0..self.w {
                        t[(bc * self.w + j) * self.h + i] = self.x[(bc * self.h + i) * self.w + j];
                    }
                }
            }
            Tensor::<4>::from_data(
                TensorData::new(t, [self.batch, self.c_in, self.w, self.h]),
                &device,
            )
            .swap_dims(2, 3)
            .require_grad()
        } else {
            Tensor::<4>::from_data(
                TensorData::new(self.x.clone(), [self.batch, self.c_in, self.h, self.w]),
                &device,
            )
            .require_grad()
        };
        let weight = Tensor::<4>::from_data(
            TensorData::new(
                self.weight.clone(),
                [self.c_out, self.c_in / self.groups, self.kh, self.kw],
            ),
            &device,
        )
        .require_grad();
        let bias = self.bias.then(|| {
            Tensor::<1>::from_data(TensorData::new(self.b.clone(), [self.c_out]), &device)
                .require_grad()
        });
        let (oh, ow) = self.out();
        let y = conv2d(x.clone(), weight.clone(), bias.clone(), self.options());
        assert_eq!(y.dims(), [self.batch, self.c_out, oh, ow], "{self:?}");
        let dy = Tensor::<4>::from_data(
            TensorData::new(self.dy.clone(), [self.batch, self.c_out, oh, ow]),
            &device,
        );
        let grads = (y.clone() * dy).sum().backward();
        let vec = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        let db = match &bias {
            Some(b) => b
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            None => Vec::new(),
        };
        [
            vec(y),
            vec(x.grad(&grads).expect("x has a gradient")),
            vec(weight.grad(&grads).expect("weight has a gradient")),
            db,
        ]
    }

    /// Runs burn and the reference and fails with the case and the worst element.
    fn check(&self, strided_x: bool) {
        let got = self.burn(strided_x);
        let want = self.reference();
        for (k, name) in ["output", "x grad", "weight grad", "bias grad"]
            .iter()
            .enumerate()
        {
            if k == 3 && !self.bias {
                continue;
            }
            assert_eq!(got[k].len(), want[k].len(), "{name} length, {self:?}");
            let scale = want[k].iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let (i, err) = got[k]
                .iter()
                .zip(&want[k])
                .map(|(g, w)| (*g as f64 - w).abs())
                .enumerate()
                .fold((0, 0.0), |m, (i, e)| if e > m.1 { (i, e) } else { m });
            assert!(
                err <= 1e-4 * scale,
                "{name}: |error| {err:e} at {i} (got {}, want {}), scale {scale}, strided x \
                 {strided_x}, case {:?}",
                got[k][i],
                want[k][i],
                Case {
                    x: vec![],
                    weight: vec![],
                    b: vec![],
                    dy: vec![],
                    ..self.clone()
                }
            );
        }
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

#[test]
fn random_shapes_match_the_f64_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    for n in 0..300 {
        let case = Case::random(&mut rng);
        // every fourth case in a one-thread pool (the replicas' setting), every eighth with a
        // transposed input
        if n % 4 == 0 {
            pool(1).install(|| case.check(n % 8 == 0));
        } else {
            case.check(n % 8 == 1);
        }
    }
}

/// pretext's conv layers: the convnet's 3×3 / padding 1 stages (stride 1, 1→32→64 channels),
/// ResNet-18's stride-2 3×3 and 1×1 downsampling, the decoder's 3×3 at 32 px, and late stages
/// on 4×4 and 2×2 maps.
fn pretext_shapes(rng: &mut ChaCha8Rng) -> Vec<Case> {
    /// (batch, c_in, c_out, size, kernel, stride, padding, bias)
    type Layer = (usize, usize, usize, usize, usize, usize, usize, bool);
    const LAYERS: &[Layer] = &[
        (16, 1, 32, 28, 3, 1, 1, false),
        (18, 32, 64, 14, 3, 1, 1, false),
        (20, 64, 64, 7, 3, 1, 1, false),
        (16, 3, 32, 32, 3, 1, 1, true),
        (9, 16, 32, 16, 3, 2, 1, false),
        (9, 32, 64, 9, 1, 2, 0, false),
        (17, 8, 16, 8, 1, 1, 0, true),
        // small maps: several samples per gemm (conv2d_gemm's blocks), the last block and the
        // last weight-gradient chunk partial
        (40, 16, 32, 4, 3, 1, 1, false),
        (300, 5, 8, 2, 3, 1, 1, true),
    ];
    LAYERS
        .iter()
        .map(|&(batch, c_in, c_out, size, k, s, p, bias)| {
            Case {
                batch,
                c_in,
                h: size,
                w: size,
                c_out,
                groups: 1,
                kh: k,
                kw: k,
                stride: [s, s],
                padding: [(p, p); 2],
                dilation: [1, 1],
                bias,
                ..Case::default()
            }
            .with_data(rng)
        })
        .collect()
}

/// Stride-1 convs whose output rows are as wide as the input's (im2col's flat-shift path):
/// every kernel width 1–5 with dilation 1–2 and each split of the width padding between the
/// two sides, heights padded or not, 1–9 px maps.
#[test]
fn same_width_convs_match_the_f64_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(1717);
    let mut n = 0;
    for kw in 1..=5 {
        for dw in 1..=2 {
            let total = dw * (kw - 1);
            for begin in 0..=total {
                let kh = rng.gen_range(1..=5);
                let dh = rng.gen_range(1..=2);
                let (h, w) = (rng.gen_range(1..=9), rng.gen_range(1..=9));
                let ph = (rng.gen_range(0..=2), rng.gen_range(0..=2));
                if h + ph.0 + ph.1 <= dh * (kh - 1) {
                    continue;
                }
                let c_in = rng.gen_range(1..=4);
                let case = Case {
                    batch: rng.gen_range(1..=4),
                    c_in,
                    h,
                    w,
                    c_out: rng.gen_range(1..=4),
                    groups: 1,
                    kh,
                    kw,
                    stride: [1, 1],
                    padding: [ph, (begin, total - begin)],
                    dilation: [dh, dw],
                    bias: rng.gen_bool(0.5),
                    ..Case::default()
                }
                .with_data(&mut rng);
                assert_eq!(case.out().1, w, "{case:?}");
                case.check(n % 3 == 0);
                pool(1).install(|| case.check(false));
                n += 1;
            }
        }
    }
    assert!(n > 30, "{n} cases");
}

#[test]
fn pretext_layer_shapes_match_the_f64_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(1616);
    for case in pretext_shapes(&mut rng) {
        case.check(false);
        pool(1).install(|| case.check(false));
    }
}

#[test]
fn one_and_two_threads_give_identical_results() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut cases = pretext_shapes(&mut rng);
    cases.extend((0..20).map(|_| Case::random(&mut rng)));
    for case in cases {
        let one = pool(1).install(|| case.burn(false));
        let two = pool(2).install(|| case.burn(false));
        for k in 0..4 {
            let same = one[k]
                .iter()
                .zip(&two[k])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same && one[k].len() == two[k].len(),
                "result {k} differs, {case:?}"
            );
        }
    }
}
