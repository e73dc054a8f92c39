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

/// x: [b, c, h, w] → bilinear resize to [b, c, size[0], size[1]] (identity when equal).
pub fn upsample(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Bilinear)
            .with_align_corners(false)
            .with_output_size(size),
    )
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
}
