//! A small GAN discriminator: three stride-2 3×3 convs with LeakyReLU(0.2) (no normalisation, so
//! real and fake images can share one forward pass), global average pooling, one logit.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::leaky_relu;

#[derive(Module, Debug)]
pub struct Discriminator {
    convs: Vec<Conv2d>,
    fc: Linear,
}

impl Discriminator {
    /// Widths `width`, 2·`width`, 4·`width`.
    pub fn new(in_channels: usize, width: usize, device: &Device) -> Self {
        let w = [in_channels, width, width * 2, width * 4];
        let convs = (0..3)
            .map(|i| {
                Conv2dConfig::new([w[i], w[i + 1]], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device)
            })
            .collect();
        Self {
            convs,
            fc: LinearConfig::new(w[3], 1).init(device),
        }
    }

    /// x: [b, c, h, w] (images centred as the task feeds them) → logits [b] ("real" when > 0).
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<1> {
        for conv in &self.convs {
            x = leaky_relu(conv.forward(x), 0.2);
        }
        // [b, c, h, w] → mean over h, w → [b, c]
        let [b, c, h, w] = x.dims();
        let pooled = x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c]);
        self.fc.forward(pooled).reshape([b])
    }
}
