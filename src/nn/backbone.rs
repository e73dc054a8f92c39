//! The backbone (encoder) that every pretext task trains and every transfer protocol reuses.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::convnet::ConvNet;
use super::resnet::ResNet;
use super::vit::Vit;

/// Which architecture, as named in configs and on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackboneKind {
    /// Small 4-stage VGG-style conv net (CPU-sized).
    Convnet,
    /// CIFAR-style ResNet-18.
    Resnet18,
    /// Vision transformer sized for the CPU: 128 wide, 6 blocks, 4 heads, 4-px patches.
    Vit,
    /// ViT-S/16 (DeiT-S: 384 wide, 12 blocks, 6 heads, 16-px patches), for GPUs.
    #[serde(rename = "vit-small")]
    VitSmall,
    /// ViT-B/16 (768 wide, 12 blocks, 12 heads, 16-px patches), for GPUs.
    #[serde(rename = "vit-base")]
    VitBase,
}

/// A ViT preset: blocks, width of one attention head, patch side (the width is the kind's
/// default width unless the config sets one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VitPreset {
    pub depth: usize,
    pub head_dim: usize,
    pub patch: usize,
}

impl BackboneKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "convnet" => Some(Self::Convnet),
            "resnet18" => Some(Self::Resnet18),
            "vit" => Some(Self::Vit),
            "vit-small" => Some(Self::VitSmall),
            "vit-base" => Some(Self::VitBase),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Convnet => "convnet",
            Self::Resnet18 => "resnet18",
            Self::Vit => "vit",
            Self::VitSmall => "vit-small",
            Self::VitBase => "vit-base",
        }
    }

    /// Every kind's name, for messages.
    pub const NAMES: &'static str = "convnet, resnet18, vit, vit-small, vit-base";

    /// The ViT shape of a ViT kind (`None` for the convolutional ones).
    pub fn vit(self) -> Option<VitPreset> {
        let (depth, head_dim, patch) = match self {
            Self::Convnet | Self::Resnet18 => return None,
            Self::Vit => (6, 32, 4),
            Self::VitSmall => (12, 64, 16),
            Self::VitBase => (12, 64, 16),
        };
        Some(VitPreset {
            depth,
            head_dim,
            patch,
        })
    }

    /// A width and patch side this kind can be built with, or a config error naming the key
    /// (`patch` 0 = the preset's).
    pub fn check_shape(self, width: usize, patch: usize) -> crate::error::Result<()> {
        let Some(vit) = self.vit() else {
            return Ok(());
        };
        if !width.is_multiple_of(vit.head_dim) || !width.is_multiple_of(4) {
            return Err(crate::error::Error::config(
                "width",
                format!(
                    "{} needs a width that is a multiple of its head width {} (and of 4), found {width}",
                    self.name(),
                    vit.head_dim
                ),
            ));
        }
        if patch > 64 {
            return Err(crate::error::Error::config(
                "patch_size",
                format!(
                    "must be at most 64 (0 = the preset's {}), found {patch}",
                    vit.patch
                ),
            ));
        }
        Ok(())
    }

    /// Base width when the config leaves it at 0.
    pub fn default_width(self) -> usize {
        match self {
            Self::Convnet => 32,
            Self::Resnet18 => 64,
            Self::Vit => 128,
            Self::VitSmall => 384,
            Self::VitBase => 768,
        }
    }
}

/// Everything needed to rebuild a backbone before loading its weights (saved as JSON with them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneSpec {
    pub kind: BackboneKind,
    pub in_channels: usize,
    pub width: usize,
    /// ViT patch side; 0 = the preset's (ignored by the convolutional backbones).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub patch: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl BackboneSpec {
    /// The backbone with its weights drawn now (see `device::init_now`).
    pub fn init(&self, device: &Device) -> Backbone {
        crate::platform::device::init_now(match self.kind {
            BackboneKind::Convnet => {
                Backbone::Convnet(ConvNet::new(self.in_channels, self.width, device))
            }
            BackboneKind::Resnet18 => {
                Backbone::Resnet18(ResNet::resnet18(self.in_channels, self.width, device))
            }
            kind => {
                let vit = kind.vit().expect("a ViT kind");
                Backbone::Vit(Vit::new(
                    self.in_channels,
                    self.width,
                    vit.depth,
                    self.width / vit.head_dim,
                    self.patch_side(),
                    device,
                ))
            }
        })
    }

    /// The ViT patch side this spec builds with (the preset's when `patch` is 0).
    pub fn patch_side(&self) -> usize {
        match (self.patch, self.kind.vit()) {
            (0, Some(v)) => v.patch,
            (p, _) => p,
        }
    }
}

/// One of the backbones; the variants are the modules themselves (a few handles each, so the
/// size difference clippy notes is immaterial).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    Convnet(ConvNet),
    Resnet18(ResNet),
    Vit(Vit),
}

impl Backbone {
    /// Number of stages `features_at` accepts (1-based; the last equals `features`).
    pub fn stages(&self) -> usize {
        match self {
            Self::Convnet(_) => ConvNet::STAGES,
            Self::Resnet18(_) => ResNet::STAGES,
            Self::Vit(m) => m.depth(),
        }
    }

    /// Set the running-statistics momentum of every batch norm (1 replaces the statistics
    /// with the next batch's; 1/(k+1) at the k-th batch keeps their plain average).
    pub fn set_bn_momentum(&mut self, momentum: f64) {
        match self {
            Self::Convnet(m) => m.set_bn_momentum(momentum),
            Self::Resnet18(m) => m.set_bn_momentum(momentum),
            // LayerNorm only: no running statistics.
            Self::Vit(_) => {}
        }
    }

    /// Parameter ids by depth, input side first (stages; a ViT's patch embedding and blocks),
    /// for layer-wise learning rates. Parameters in no group (a ViT's final norm) sit on top.
    pub fn depth_groups(&self) -> Vec<Vec<burn::module::ParamId>> {
        match self {
            Self::Convnet(m) => m.depth_groups(),
            Self::Resnet18(m) => m.depth_groups(),
            Self::Vit(m) => m.depth_groups(),
        }
    }

    /// Width of the pooled feature vector.
    pub fn dim(&self) -> usize {
        match self {
            Self::Convnet(m) => m.dim(),
            Self::Resnet18(m) => m.dim(),
            Self::Vit(m) => m.dim(),
        }
    }

    /// Width of `features_at(x, stage)`.
    pub fn stage_dim(&self, stage: usize) -> usize {
        match self {
            Self::Convnet(m) => m.stage_dim(stage),
            Self::Resnet18(m) => m.stage_dim(stage),
            Self::Vit(m) => m.dim(),
        }
    }

    /// x: [batch, channels, h, w] → un-pooled feature maps of stages 1..=`stage`
    /// ([batch, stage_dim(k), h_k, w_k] each), for decoders with U-Net skips.
    pub fn stage_maps(&self, x: Tensor<4>, stage: usize) -> Vec<Tensor<4>> {
        match self {
            Self::Convnet(m) => m.stage_maps(x, stage),
            Self::Resnet18(m) => m.stage_maps(x, stage),
            Self::Vit(m) => m.stage_maps(x, stage),
        }
    }

    /// x: [batch, channels, h, w] → pooled features [batch, dim].
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.features_at(x, self.stages())
    }

    /// x: [batch, channels, h, w] → global-average-pooled output of `stage` [batch, stage_dim]
    /// (for a ViT: the mean of its tokens after block `stage`).
    pub fn features_at(&self, x: Tensor<4>, stage: usize) -> Tensor<2> {
        let map = match self {
            Self::Convnet(m) => m.forward_to(x, stage),
            Self::Resnet18(m) => m.forward_to(x, stage),
            Self::Vit(m) => return m.features_at(x, stage),
        };
        // [b, c, h, w] → mean over h, w → [b, c]
        let [b, c, h, w] = map.dims();
        map.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
    }
}
