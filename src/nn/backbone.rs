//! The backbone (encoder) that every pretext task trains and every transfer protocol reuses.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::convnet::ConvNet;
use super::resnet::ResNet;

/// Which architecture, as named in configs and on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackboneKind {
    /// Small 4-stage VGG-style conv net (CPU-sized).
    Convnet,
    /// CIFAR-style ResNet-18.
    Resnet18,
}

impl BackboneKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "convnet" => Some(Self::Convnet),
            "resnet18" => Some(Self::Resnet18),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Convnet => "convnet",
            Self::Resnet18 => "resnet18",
        }
    }

    /// Base width when the config leaves it at 0.
    pub fn default_width(self) -> usize {
        match self {
            Self::Convnet => 32,
            Self::Resnet18 => 64,
        }
    }
}

/// Everything needed to rebuild a backbone before loading its weights (saved as JSON with them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneSpec {
    pub kind: BackboneKind,
    pub in_channels: usize,
    pub width: usize,
}

impl BackboneSpec {
    /// The backbone with its weights drawn now (see `device::init_now`).
    pub fn init(&self, device: &Device) -> Backbone {
        crate::device::init_now(match self.kind {
            BackboneKind::Convnet => {
                Backbone::Convnet(ConvNet::new(self.in_channels, self.width, device))
            }
            BackboneKind::Resnet18 => {
                Backbone::Resnet18(ResNet::resnet18(self.in_channels, self.width, device))
            }
        })
    }
}

/// One of the backbones; the variants are the modules themselves (a few handles each, so the
/// size difference clippy notes is immaterial).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    Convnet(ConvNet),
    Resnet18(ResNet),
}

impl Backbone {
    /// Number of stages `features_at` accepts (1-based; the last equals `features`).
    pub fn stages(&self) -> usize {
        match self {
            Self::Convnet(_) => ConvNet::STAGES,
            Self::Resnet18(_) => ResNet::STAGES,
        }
    }

    /// Set the running-statistics momentum of every batch norm (1 replaces the statistics
    /// with the next batch's; 1/(k+1) at the k-th batch keeps their plain average).
    pub fn set_bn_momentum(&mut self, momentum: f64) {
        match self {
            Self::Convnet(m) => m.set_bn_momentum(momentum),
            Self::Resnet18(m) => m.set_bn_momentum(momentum),
        }
    }

    /// Width of the pooled feature vector.
    pub fn dim(&self) -> usize {
        match self {
            Self::Convnet(m) => m.dim(),
            Self::Resnet18(m) => m.dim(),
        }
    }

    /// Width of `features_at(x, stage)`.
    pub fn stage_dim(&self, stage: usize) -> usize {
        match self {
            Self::Convnet(m) => m.stage_dim(stage),
            Self::Resnet18(m) => m.stage_dim(stage),
        }
    }

    /// x: [batch, channels, h, w] → un-pooled feature maps of stages 1..=`stage`
    /// ([batch, stage_dim(k), h_k, w_k] each), for decoders with U-Net skips.
    pub fn stage_maps(&self, x: Tensor<4>, stage: usize) -> Vec<Tensor<4>> {
        match self {
            Self::Convnet(m) => m.stage_maps(x, stage),
            Self::Resnet18(m) => m.stage_maps(x, stage),
        }
    }

    /// x: [batch, channels, h, w] → pooled features [batch, dim].
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.features_at(x, self.stages())
    }

    /// x: [batch, channels, h, w] → global-average-pooled output of `stage` [batch, stage_dim].
    pub fn features_at(&self, x: Tensor<4>, stage: usize) -> Tensor<2> {
        let map = match self {
            Self::Convnet(m) => m.forward_to(x, stage),
            Self::Resnet18(m) => m.forward_to(x, stage),
        };
        // [b, c, h, w] → mean over h, w → [b, c]
        let [b, c, h, w] = map.dims();
        map.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
    }
}
