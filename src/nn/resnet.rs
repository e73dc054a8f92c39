//! CIFAR-style ResNet-18 (He et al. 2016): a 3×3 stem without max-pooling, four stages of two
//! basic blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2), global average pooling.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Two 3×3 conv–BN layers with an identity (or 1×1 projection) shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<Shortcut>,
}

/// 1×1 strided conv + BN, used when the block changes resolution or width.
#[derive(Module, Debug)]
pub struct Shortcut {
    conv: Conv2d,
    bn: BatchNorm,
}

fn conv3x3(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

impl BasicBlock {
    pub fn new(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| Shortcut {
            conv: Conv2dConfig::new([c_in, c_out], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(c_out).init(device),
        });
        Self {
            conv1: conv3x3(c_in, c_out, stride, device),
            bn1: BatchNormConfig::new(c_out).init(device),
            conv2: conv3x3(c_out, c_out, 1, device),
            bn2: BatchNormConfig::new(c_out).init(device),
            shortcut,
        }
    }

    /// x: [batch, c_in, h, w] → [batch, c_out, h/stride, w/stride]
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        let out = self.bn2.forward(self.conv2.forward(out));
        let skip = match &self.shortcut {
            Some(s) => s.bn.forward(s.conv.forward(x)),
            None => x,
        };
        relu(out + skip)
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    stem: Conv2d,
    stem_bn: BatchNorm,
    stages: Vec<Vec<BasicBlock>>,
    width: usize,
}

impl ResNet {
    pub const STAGES: usize = 4;

    /// Parameter ids by depth, input side first: the stem, then one group per stage.
    pub fn depth_groups(&self) -> Vec<Vec<burn::module::ParamId>> {
        let mut stem = super::param_ids(&self.stem);
        stem.extend(super::param_ids(&self.stem_bn));
        std::iter::once(stem)
            .chain(
                self.stages
                    .iter()
                    .map(|blocks| blocks.iter().flat_map(super::param_ids).collect()),
            )
            .collect()
    }

    /// Set the running-statistics momentum of every batch norm.
    pub fn set_bn_momentum(&mut self, momentum: f64) {
        self.stem_bn.momentum = momentum;
        for block in self.stages.iter_mut().flatten() {
            block.bn1.momentum = momentum;
            block.bn2.momentum = momentum;
            if let Some(s) = &mut block.shortcut {
                s.bn.momentum = momentum;
            }
        }
    }

    /// ResNet-18 layout with base width `width` (64 in the paper).
    pub fn resnet18(in_channels: usize, width: usize, device: &Device) -> Self {
        let widths = [width, width * 2, width * 4, width * 8];
        let mut c_in = width;
        let mut stages = Vec::new();
        for (i, &c) in widths.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            stages.push(vec![
                BasicBlock::new(c_in, c, stride, device),
                BasicBlock::new(c, c, 1, device),
            ]);
            c_in = c;
        }
        Self {
            stem: conv3x3(in_channels, width, 1, device),
            stem_bn: BatchNormConfig::new(width).init(device),
            stages,
            width,
        }
    }

    pub fn dim(&self) -> usize {
        self.width * 8
    }

    pub fn stage_dim(&self, stage: usize) -> usize {
        self.width << (stage - 1)
    }

    /// x: [batch, in_channels, h, w] → feature map after `stage` (1..=4), before pooling.
    pub fn forward_to(&self, x: Tensor<4>, stage: usize) -> Tensor<4> {
        let mut x = relu(self.stem_bn.forward(self.stem.forward(x)));
        for blocks in self.stages.iter().take(stage) {
            for block in blocks {
                x = block.forward(x);
            }
        }
        x
    }

    /// x: [batch, in_channels, h, w] → the feature maps of stages 1..=`stage` (each as
    /// `forward_to` returns it), for decoders with skip connections.
    pub fn stage_maps(&self, x: Tensor<4>, stage: usize) -> Vec<Tensor<4>> {
        let mut x = relu(self.stem_bn.forward(self.stem.forward(x)));
        let mut maps = Vec::with_capacity(stage);
        for blocks in self.stages.iter().take(stage) {
            for block in blocks {
                x = block.forward(x);
            }
            maps.push(x.clone());
        }
        maps
    }
}
