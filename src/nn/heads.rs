//! Small heads that sit on top of a backbone's pooled features.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

/// A single linear layer: features [batch, dim] → logits [batch, classes].
#[derive(Module, Debug)]
pub struct LinearHead {
    fc: Linear,
}

impl LinearHead {
    pub fn new(dim: usize, classes: usize, device: &Device) -> Self {
        Self {
            fc: LinearConfig::new(dim, classes).init(device),
        }
    }

    /// x: [batch, dim] → [batch, classes]
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc.forward(x)
    }
}

/// Two linear layers with a ReLU between: features [batch, dim] → hidden → logits [batch, classes].
/// For heads that must combine several feature vectors (jigsaw, context prediction): a single
/// linear layer over concatenated features scores each part separately and cannot relate them.
#[derive(Module, Debug)]
pub struct MlpHead {
    fc1: Linear,
    fc2: Linear,
}

impl MlpHead {
    pub fn new(dim: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(dim, hidden).init(device),
            fc2: LinearConfig::new(hidden, classes).init(device),
        }
    }

    /// x: [batch, dim] → [batch, classes]
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(burn::tensor::activation::relu(self.fc1.forward(x)))
    }
}
