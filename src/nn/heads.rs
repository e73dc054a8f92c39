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
