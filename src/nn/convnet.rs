//! A small VGG-style conv net sized for a laptop CPU: four conv–BN–ReLU stages, the first three
//! followed by 2×2 max-pooling, then global average pooling. Widths 32/64/128/256 by default.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// conv 3×3 (padding 1, no bias) → batch norm → ReLU.
#[derive(Module, Debug)]
pub struct ConvBnRelu {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBnRelu {
    pub fn new(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    /// x: [batch, c_in, h, w] → [batch, c_out, h/stride, w/stride]
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.bn.forward(self.conv.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct ConvNet {
    stages: Vec<ConvBnRelu>,
    pool: MaxPool2d,
    width: usize,
}

impl ConvNet {
    /// Number of stages `features_at` accepts (1-based).
    pub const STAGES: usize = 4;

    /// Parameter ids by depth, input side first: one group per stage.
    pub fn depth_groups(&self) -> Vec<Vec<burn::module::ParamId>> {
        self.stages.iter().map(super::param_ids).collect()
    }

    pub fn new(in_channels: usize, width: usize, device: &Device) -> Self {
        let w = [width, width * 2, width * 4, width * 8];
        let stages = vec![
            ConvBnRelu::new(in_channels, w[0], 1, device),
            ConvBnRelu::new(w[0], w[1], 1, device),
            ConvBnRelu::new(w[1], w[2], 1, device),
            ConvBnRelu::new(w[2], w[3], 1, device),
        ];
        Self {
            stages,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            width,
        }
    }

    pub fn dim(&self) -> usize {
        self.width * 8
    }

    /// Set the running-statistics momentum of every batch norm.
    pub fn set_bn_momentum(&mut self, momentum: f64) {
        for s in &mut self.stages {
            s.bn.momentum = momentum;
        }
    }

    pub fn stage_dim(&self, stage: usize) -> usize {
        self.width << (stage - 1)
    }

    /// x: [batch, in_channels, h, w] → feature map of `stage` (1..=4), before pooling.
    pub fn forward_to(&self, mut x: Tensor<4>, stage: usize) -> Tensor<4> {
        for (i, block) in self.stages.iter().take(stage).enumerate() {
            x = block.forward(x);
            // Pool after the first three stages, as long as the map is at least 2×2.
            if i < 3 && x.dims()[2] >= 2 && x.dims()[3] >= 2 {
                x = self.pool.forward(x);
            }
        }
        x
    }

    /// x: [batch, in_channels, h, w] → the feature maps of stages 1..=`stage` (each as
    /// `forward_to` returns it), for decoders with skip connections.
    pub fn stage_maps(&self, mut x: Tensor<4>, stage: usize) -> Vec<Tensor<4>> {
        let mut maps = Vec::with_capacity(stage);
        for (i, block) in self.stages.iter().take(stage).enumerate() {
            x = block.forward(x);
            if i < 3 && x.dims()[2] >= 2 && x.dims()[3] >= 2 {
                x = self.pool.forward(x);
            }
            maps.push(x.clone());
        }
        maps
    }
}
