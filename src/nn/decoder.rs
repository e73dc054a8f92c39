//! The generator shared by the generative pretext tasks (colorize, superres, inpaint): the
//! project's [`Backbone`] as the encoder — so what transfers downstream is a plain backbone — and a
//! small decoder that upsamples the feature map of one encoder stage back to the input size.
//!
//! With `skips` the decoder is a U-Net: at each resolution it concatenates the encoder's map of
//! that stage (and, at full size, the input itself) before its conv; without, it sees only the
//! bottleneck (a Context Encoder).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use super::convnet::ConvBnRelu;
use super::{Backbone, BackboneSpec};

/// x: [b, c, h, w] → bilinear resize to [b, c, size[0], size[1]] (identity when equal;
/// `align_corners = false`, PyTorch's `F.interpolate` convention).
///
/// On the CPU burn's own kernel (and its backward); on a GPU the same map as two matrix products
/// ([`bilinear_by_matmul`]), since burn's GPU backends have no bilinear backward.
pub fn upsample(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    if !crate::platform::device::is_cpu(&x.device()) {
        return bilinear_by_matmul(x, size);
    }
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Bilinear)
            .with_align_corners(false)
            .with_output_size(size),
    )
}

/// Bilinear resizing as `A_h · x · A_wᵀ` per image and channel, with the interpolation matrices
/// of [`bilinear_matrix`]: the gradient is two more products, on any backend.
pub fn bilinear_by_matmul(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let device = x.device();
    let n = b * c;
    let a_h = Tensor::<2>::from_data(
        TensorData::new(bilinear_matrix(h, size[0]), [size[0], h]),
        &device,
    );
    let a_w_t = Tensor::<2>::from_data(
        TensorData::new(bilinear_matrix(w, size[1]), [size[1], w]),
        &device,
    )
    .transpose();
    let rows = a_h.unsqueeze::<3>().expand([n, size[0], h]);
    let cols = a_w_t.unsqueeze::<3>().expand([n, w, size[1]]);
    rows.matmul(x.reshape([n, h, w]))
        .matmul(cols)
        .reshape([b, c, size[0], size[1]])
}

/// The `[to, from]` matrix of 1-D linear interpolation from `from` samples to `to`, with
/// `align_corners = false`: output `i` samples the input at `(i + 0.5)·from/to − 0.5` (clamped at
/// 0), between its two neighbours.
pub fn bilinear_matrix(from: usize, to: usize) -> Vec<f32> {
    let scale = from as f32 / to as f32;
    let mut m = vec![0.0f32; to * from];
    for i in 0..to {
        let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(from - 1);
        let i1 = (i0 + 1).min(from - 1);
        let t = src - i0 as f32;
        m[i * from + i0] += 1.0 - t;
        m[i * from + i1] += t;
    }
    m
}

#[derive(Module, Debug)]
pub struct Decoder {
    /// blocks[k] works at the resolution of encoder stage k+1 (stages below the chosen one).
    blocks: Vec<ConvBnRelu>,
    /// At the input resolution.
    top: ConvBnRelu,
    out: Conv2d,
    skips: bool,
}

impl Decoder {
    /// `stage_dims`: channels of encoder stages 1..=s; `in_channels`: channels of the encoder
    /// input (concatenated at full size when `skips`).
    pub fn new(
        stage_dims: &[usize],
        in_channels: usize,
        out_channels: usize,
        skips: bool,
        device: &Device,
    ) -> Self {
        let s = stage_dims.len();
        let mut c = stage_dims[s - 1];
        let mut blocks = Vec::new();
        for j in (0..s - 1).rev() {
            let c_in = c + if skips { stage_dims[j] } else { 0 };
            blocks.push(ConvBnRelu::new(c_in, stage_dims[j], 1, device));
            c = stage_dims[j];
        }
        blocks.reverse();
        let c_top = c + if skips { in_channels } else { 0 };
        Self {
            blocks,
            top: ConvBnRelu::new(c_top, c, 1, device),
            // Zero-initialised: the generator starts from a neutral output (no residual, mid
            // grey, zero chroma) instead of random noise.
            out: Conv2dConfig::new([c, out_channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device),
            skips,
        }
    }

    /// maps: encoder maps of stages 1..=s; x: the encoder input [b, in, h, w] → [b, out, h, w].
    pub fn forward(&self, mut maps: Vec<Tensor<4>>, x: Tensor<4>) -> Tensor<4> {
        let mut y = maps.pop().expect("at least one stage");
        for (j, block) in self.blocks.iter().enumerate().rev() {
            let skip = maps[j].clone();
            let [_, _, h, w] = skip.dims();
            y = upsample(y, [h, w]);
            if self.skips {
                y = Tensor::cat(vec![y, skip], 1);
            }
            y = block.forward(y);
        }
        let [_, _, h, w] = x.dims();
        y = upsample(y, [h, w]);
        if self.skips {
            y = Tensor::cat(vec![y, x], 1);
        }
        self.out.forward(self.top.forward(y))
    }
}

/// Encoder (a [`Backbone`], run up to `stage`) + [`Decoder`].
#[derive(Module, Debug)]
pub struct Generator {
    pub encoder: Backbone,
    pub decoder: Decoder,
    stage: usize,
}

impl Generator {
    pub fn new(
        spec: &BackboneSpec,
        stage: usize,
        out_channels: usize,
        skips: bool,
        device: &Device,
    ) -> Self {
        let encoder = spec.init(device);
        let dims: Vec<usize> = (1..=stage).map(|k| encoder.stage_dim(k)).collect();
        let decoder = Decoder::new(&dims, spec.in_channels, out_channels, skips, device);
        Self {
            encoder,
            decoder,
            stage,
        }
    }

    /// x: [b, in_channels, h, w] → [b, out_channels, h, w] (raw, no output activation).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let maps = self.encoder.stage_maps(x.clone(), self.stage);
        self.decoder.forward(maps, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::BackboneKind;

    #[test]
    fn generator_keeps_the_input_size() {
        let device = Device::flex();
        for (kind, size) in [(BackboneKind::Convnet, 28), (BackboneKind::Resnet18, 16)] {
            for skips in [false, true] {
                let spec = BackboneSpec {
                    kind,
                    in_channels: 1,
                    width: 4,
                    patch: 0,
                };
                let g = Generator::new(&spec, 3, 2, skips, &device);
                let y = g.forward(Tensor::zeros([2, 1, size, size], &device));
                assert_eq!(y.dims(), [2, 2, size, size]);
            }
        }
    }

    /// The GPU's form of the resize is burn's bilinear interpolation, values and gradients, at
    /// the decoders' sizes (3 → 7 → 14 → 28 for 28-px inputs) and a few others.
    #[test]
    fn bilinear_by_matmul_is_burns_bilinear_resize() {
        let device = Device::flex().autodiff();
        for (from, to) in [
            ([3, 3], [7, 7]),
            ([7, 7], [14, 14]),
            ([14, 14], [28, 28]),
            ([4, 6], [9, 5]),
            ([1, 2], [3, 4]),
        ] {
            let n = 2 * 3 * from[0] * from[1];
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let x =
                Tensor::<4>::from_data(TensorData::new(values, [2, 3, from[0], from[1]]), &device)
                    .require_grad();
            let weights = Tensor::<4>::random(
                [2, 3, to[0], to[1]],
                burn::tensor::Distribution::Default,
                &device,
            );
            let mut out = Vec::new();
            for by_matmul in [false, true] {
                let y = if by_matmul {
                    bilinear_by_matmul(x.clone(), to)
                } else {
                    upsample(x.clone(), to)
                };
                let grads = (y.clone() * weights.clone()).sum().backward();
                let g = x.grad(&grads).unwrap();
                out.push((
                    y.into_data().try_to_vec::<f32>().unwrap(),
                    g.into_data().try_to_vec::<f32>().unwrap(),
                ));
            }
            for (a, b) in out[0]
                .0
                .iter()
                .zip(&out[1].0)
                .chain(out[0].1.iter().zip(&out[1].1))
            {
                assert!((a - b).abs() < 1e-5, "{from:?} → {to:?}: {a} vs {b}");
            }
        }
    }
}
