//! The frozen-feature protocols, the same for images and text: features of the labelled
//! examples and of the held-out ones in, the held-out predictions out (linear probe or k-NN).

use burn::prelude::Device;

use super::linear_probe::{linear_probe_predict, ProbeSettings};
use super::protocol_tables::KnnTable;
use super::{knn, Protocol};

/// Settings of the two frozen protocols.
#[derive(Clone, Debug)]
pub struct FrozenSettings {
    pub probe: ProbeSettings,
    pub knn: KnnTable,
}

/// Row-major features ([n, dim]) with their labels.
pub struct Features {
    pub train_x: Vec<f32>,
    pub train_y: Vec<u32>,
    pub test_x: Vec<f32>,
    /// Features of unlabelled rows of the training pool (the linear probe's standardiser is
    /// fitted on them); `None` fits it on the labelled rows.
    pub pool_x: Option<Vec<f32>>,
    pub dim: usize,
    pub classes: usize,
}

/// The predicted class of every held-out row under `protocol` (`linear` or `knn`).
pub fn predict(protocol: Protocol, f: Features, s: &FrozenSettings, device: &Device) -> Vec<u32> {
    match protocol {
        Protocol::Linear => linear_probe_predict(
            f.train_x,
            &f.train_y,
            f.test_x,
            f.pool_x.as_deref(),
            f.dim,
            f.classes,
            &s.probe,
            device,
        ),
        Protocol::Knn => knn::knn_predict(
            f.train_x,
            &f.train_y,
            f.test_x,
            f.dim,
            f.classes,
            s.knn.k,
            s.knn.temperature,
            device,
        ),
        Protocol::Finetune | Protocol::Semi => {
            unreachable!("fine-tuning trains the encoder, not frozen features")
        }
    }
}
