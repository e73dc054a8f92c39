//! Small heads that sit on top of a backbone's pooled features.

use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;

/// A single linear layer: features [batch, dim] → logits [batch, classes].
#[derive(Module, Debug)]
pub struct LinearHead {
    fc: Linear,
}

impl LinearHead {
    pub fn new(dim: usize, classes: usize, device: &Device) -> Self {
        crate::platform::device::init_now(Self {
            fc: LinearConfig::new(dim, classes).init(device),
        })
    }

    /// A head whose weights and bias start at zero (a probe that has learnt nothing predicts
    /// every class alike, and a weight no label moves stays zero).
    pub fn zeros(dim: usize, classes: usize, device: &Device) -> Self {
        Self {
            fc: LinearConfig::new(dim, classes)
                .with_initializer(burn::nn::Initializer::Zeros)
                .init(device),
        }
    }

    /// A head with the given weights (row-major [dim, classes]) and bias ([classes]).
    pub fn from_affine(
        weight: Vec<f32>,
        bias: Vec<f32>,
        dim: usize,
        classes: usize,
        device: &Device,
    ) -> Self {
        let mut fc = LinearConfig::new(dim, classes).init(device);
        fc.weight = burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(weight, [dim, classes]),
            device,
        ));
        fc.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [classes]),
            device,
        )));
        Self { fc }
    }

    /// Weights (row-major [dim, classes]) and bias ([classes]).
    pub fn affine(&self) -> (Vec<f32>, Vec<f32>) {
        let w = self
            .fc
            .weight
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32");
        let b = self.fc.bias.as_ref().map_or_else(
            || vec![0.0; self.fc.weight.dims()[1]],
            |b| b.val().into_data().try_into_vec::<f32>().expect("f32"),
        );
        (w, b)
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

/// The projection (and BYOL's prediction) head of the joint-embedding methods: Linear → batch
/// norm → ReLU → Linear (SimCLR v2, BYOL). Features [batch, dim] → embeddings [batch, out].
#[derive(Module, Debug)]
pub struct ProjectionHead {
    fc1: Linear,
    bn: BatchNorm,
    fc2: Linear,
}

impl ProjectionHead {
    pub fn new(dim: usize, hidden: usize, out: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(dim, hidden).init(device),
            bn: BatchNormConfig::new(hidden).init(device),
            fc2: LinearConfig::new(hidden, out).init(device),
        }
    }

    /// x: [batch, dim] → [batch, out]
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = burn::tensor::activation::relu(self.bn.forward(self.fc1.forward(x)));
        self.fc2.forward(h)
    }
}
