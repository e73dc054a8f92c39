//! An encoder's tensors under conventional PyTorch names.
//!
//! - batch norm: burn's `gamma`/`beta` are PyTorch's `weight`/`bias`; `running_mean` and
//!   `running_var` keep their names (and each norm gets the `num_batches_tracked` counter a
//!   PyTorch state dict has, written as 0).
//! - resnet18 takes torchvision's names: `stem` → `conv1`, `stem_bn` → `bn1`, `stages.S.B` →
//!   `layer{S+1}.B`, a block's `shortcut.conv`/`shortcut.bn` → `downsample.0`/`downsample.1`.
//! - convnet keeps its own: `stages.I.conv.weight`, `stages.I.bn.*`.
//!
//! Convolution weights are [out, in, kh, kw] in both frameworks, so no tensor is transposed.

use std::collections::BTreeMap;

use burn::store::ModuleSnapshot;

use crate::error::{Error, Result};
use crate::nn::{Backbone, BackboneKind};

/// One float tensor: shape and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The PyTorch name of a backbone tensor named `name` by burn.
pub fn torch_name(kind: BackboneKind, name: &str) -> String {
    let name = match name.rsplit_once('.') {
        Some((module, "gamma")) => format!("{module}.weight"),
        Some((module, "beta")) => format!("{module}.bias"),
        _ => name.to_string(),
    };
    if kind != BackboneKind::Resnet18 {
        return name;
    }
    if let Some(rest) = name.strip_prefix("stem_bn.") {
        return format!("bn1.{rest}");
    }
    if let Some(rest) = name.strip_prefix("stem.") {
        return format!("conv1.{rest}");
    }
    if let Some(rest) = name.strip_prefix("stages.") {
        if let Some((stage, rest)) = rest.split_once('.') {
            if let Ok(s) = stage.parse::<usize>() {
                let rest = rest
                    .replace(".shortcut.conv.", ".downsample.0.")
                    .replace(".shortcut.bn.", ".downsample.1.");
                return format!("layer{}.{rest}", s + 1);
            }
        }
    }
    name
}

/// Every tensor of the encoder (parameters and batch-norm statistics) by PyTorch name.
pub fn torch_params(encoder: &Backbone, kind: BackboneKind) -> Result<BTreeMap<String, Param>> {
    let mut out = BTreeMap::new();
    for t in encoder.collect(None, None, true) {
        let name = torch_name(kind, &t.name);
        let data = burn::store::bridge::into_data(t)
            .map_err(|e| Error::Usage(format!("reading the encoder's {name}: {e}")))?;
        let shape = data.shape().to_vec();
        let data = data
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| Error::Usage(format!("the encoder's {name} is not float: {e:?}")))?;
        out.insert(name, Param { shape, data });
    }
    Ok(out)
}

/// The batch-norm modules among `params` (those with a `running_var`), by module path.
pub fn norm_modules(params: &BTreeMap<String, Param>) -> Vec<String> {
    params
        .keys()
        .filter_map(|k| k.strip_suffix(".running_var").map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::BackboneSpec;
    use burn::prelude::Device;

    #[test]
    fn resnet_names_are_torchvision_names() {
        let k = BackboneKind::Resnet18;
        assert_eq!(torch_name(k, "stem.weight"), "conv1.weight");
        assert_eq!(torch_name(k, "stem_bn.gamma"), "bn1.weight");
        assert_eq!(
            torch_name(k, "stages.1.0.shortcut.bn.beta"),
            "layer2.0.downsample.1.bias"
        );
        assert_eq!(
            torch_name(k, "stages.3.1.bn2.running_var"),
            "layer4.1.bn2.running_var"
        );
        assert_eq!(
            torch_name(BackboneKind::Convnet, "stages.2.bn.gamma"),
            "stages.2.bn.weight"
        );
    }

    #[test]
    fn every_tensor_of_both_backbones_is_collected_under_its_torch_name() {
        let device = Device::flex();
        let spec = |kind| BackboneSpec {
            kind,
            in_channels: 3,
            width: 4,
            patch: 0,
        };
        let conv = torch_params(
            &spec(BackboneKind::Convnet).init(&device),
            BackboneKind::Convnet,
        )
        .unwrap();
        let names: Vec<&str> = conv.keys().map(String::as_str).collect();
        assert_eq!(names.len(), 4 * 5, "{names:?}");
        assert!(names.contains(&"stages.0.conv.weight"), "{names:?}");
        assert!(names.contains(&"stages.3.bn.running_mean"), "{names:?}");
        assert_eq!(conv["stages.0.conv.weight"].shape, [4, 3, 3, 3]);
        let res = torch_params(
            &spec(BackboneKind::Resnet18).init(&device),
            BackboneKind::Resnet18,
        )
        .unwrap();
        // stem conv + bn (5), 8 blocks × 2 conv + bn (80), 3 downsample conv + bn (15)
        assert_eq!(res.len(), 100, "{:?}", res.keys().collect::<Vec<_>>());
        assert_eq!(res["layer2.0.downsample.0.weight"].shape, [8, 4, 1, 1]);
        assert_eq!(norm_modules(&res).len(), 1 + 16 + 3);
    }
}
