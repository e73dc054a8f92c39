//! `pretext export --format onnx`: the image encoder as a standard ONNX graph.
//!
//! ONNX opset 17 (IR version 8), operators from the default domain only: Sub, Div (the input
//! normalisation), Conv, BatchNormalization (inference form), Relu, MaxPool, Add,
//! GlobalAveragePool, Flatten for the conv nets; for a ViT, Pad (zeros bottom/right to a
//! multiple of the patch), Reshape/Transpose (the patches), MatMul + Add (the patch embedding,
//! then the fixed sine-cosine positions as a constant), the text export's transformer block
//! ([`super::text`]: LayerNormalization, Softmax, Erf, …) with a constant all-false mask, and
//! ReduceMean over the tokens. Input `image`: float32 [batch, C, H, W], pixel / 255 (after the
//! run's resize and input transform); output `features`: float32 [batch, dim], the pooled last
//! stage (a ViT: the mean of its final tokens), as `pretext embed` writes it. The batch
//! dimension is symbolic (`batch`). The run's metadata (`config.json`'s content) is in the
//! model's `metadata_props`. The protobuf messages come from the `onnx-protobuf` crate
//! (rust-protobuf code generated from onnx.proto).

use std::collections::BTreeMap;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use protobuf::{EnumOrUnknown, MessageField};

use super::params::Param;
use crate::error::{Error, Result};
use crate::nn::input::InputSpec;
use crate::nn::{BackboneKind, BackboneSpec};

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;
/// Batch-norm epsilon of every `BatchNorm` in `src/nn` (burn's default).
pub const BN_EPS: f32 = 1e-5;

/// Nodes and initializers, with names made unique by a counter.
pub(super) struct Graph<'a> {
    pub(super) params: &'a BTreeMap<String, Param>,
    pub(super) nodes: Vec<NodeProto>,
    pub(super) inits: Vec<TensorProto>,
    used: Vec<String>,
    count: usize,
}

pub(super) fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: EnumOrUnknown::new(AttributeType::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub(super) fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: EnumOrUnknown::new(AttributeType::FLOAT),
        f: v,
        ..Default::default()
    }
}

pub(super) fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: EnumOrUnknown::new(AttributeType::INT),
        i: v,
        ..Default::default()
    }
}

pub(super) fn tensor(name: &str, shape: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: DataType::FLOAT as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An int64 tensor (initializer or constant).
pub(super) fn tensor_i64(name: &str, shape: &[usize], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: DataType::INT64 as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A dimension of a graph input or output: symbolic (`Err(name)`) or fixed (`Ok(size)`).
pub(super) type Dim<'a> = std::result::Result<usize, &'a str>;

/// A float32 value with a symbolic batch dimension and fixed others.
fn value_info(name: &str, fixed: &[usize]) -> ValueInfoProto {
    let mut dims = vec![Err("batch")];
    dims.extend(fixed.iter().map(|&d| Ok(d)));
    typed_value_info(name, DataType::FLOAT, &dims)
}

/// A value of `elem` type with the given dimensions.
pub(super) fn typed_value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Ok(n) => dimension::Value::DimValue(*n as i64),
                Err(s) => dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        type_: MessageField::some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: MessageField::some(TensorShapeProto {
                    dim,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl<'a> Graph<'a> {
    pub(super) fn new(params: &'a BTreeMap<String, Param>) -> Self {
        Self {
            params,
            nodes: Vec::new(),
            inits: Vec::new(),
            used: Vec::new(),
            count: 0,
        }
    }

    /// A node of `op` on `inputs`; returns its output's name.
    pub(super) fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.count += 1;
        let out = format!("{}_{}", op.to_ascii_lowercase(), self.count);
        self.nodes.push(NodeProto {
            name: format!("{op}_{}", self.count),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// The initializer for the encoder tensor `name` (added once).
    pub(super) fn param(&mut self, name: &str) -> Result<String> {
        let p = self.params.get(name).ok_or_else(|| {
            Error::Usage(format!(
                "the encoder has no tensor {name}; cannot export it"
            ))
        })?;
        if !self.used.iter().any(|u| u == name) {
            self.inits.push(tensor(name, &p.shape, &p.data));
            self.used.push(name.to_string());
        }
        Ok(name.to_string())
    }

    /// Conv (no bias) → BatchNormalization [→ Relu]; `conv`/`bn` are module paths.
    fn conv_bn(
        &mut self,
        x: &str,
        conv: &str,
        bn: &str,
        stride: usize,
        relu: bool,
    ) -> Result<String> {
        let w = self.param(&format!("{conv}.weight"))?;
        let k = self.params[&w].shape[2];
        let pad = (k / 2) as i64;
        let y = self.node(
            "Conv",
            &[x, &w],
            vec![
                ints("kernel_shape", &[k as i64, k as i64]),
                ints("strides", &[stride as i64, stride as i64]),
                ints("pads", &[pad, pad, pad, pad]),
            ],
        );
        let bn_in: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .map(|p| self.param(&format!("{bn}.{p}")))
            .collect::<Result<_>>()?;
        let mut inputs = vec![y.as_str()];
        inputs.extend(bn_in.iter().map(String::as_str));
        let y = self.node(
            "BatchNormalization",
            &inputs,
            vec![float("epsilon", BN_EPS)],
        );
        Ok(if relu {
            self.node("Relu", &[&y], vec![])
        } else {
            y
        })
    }

    /// (x − mean) / std per channel, or each image standardised on its own (`per_image`), as
    /// `InputSpec::normalize`.
    fn normalize(&mut self, x: &str, input: &InputSpec) -> String {
        if input.per_image {
            let axes = || ints("axes", &[1, 2, 3]);
            let keep = || int("keepdims", 1);
            let mean = self.node("ReduceMean", &[x], vec![axes(), keep()]);
            let centred = self.node("Sub", &[x, &mean], vec![]);
            let sq = self.node("Mul", &[&centred, &centred], vec![]);
            let var = self.node("ReduceMean", &[&sq], vec![axes(), keep()]);
            let std = self.node("Sqrt", &[&var], vec![]);
            self.inits.push(tensor(
                "input_std_floor",
                &[],
                &[crate::nn::input::PER_IMAGE_STD_FLOOR],
            ));
            let std = self.node("Max", &[&std, "input_std_floor"], vec![]);
            return self.node("Div", &[&centred, &std], vec![]);
        }
        let c = input.channels;
        self.inits
            .push(tensor("input_mean", &[1, c, 1, 1], &input.mean));
        self.inits
            .push(tensor("input_std", &[1, c, 1, 1], &input.std));
        let y = self.node("Sub", &[x, "input_mean"], vec![]);
        self.node("Div", &[&y, "input_std"], vec![])
    }

    /// src/nn/convnet.rs: 4 × conv–BN–ReLU, 2×2 max-pooling after the first three while the
    /// map is at least 2×2.
    fn convnet(&mut self, mut x: String, mut hw: (usize, usize)) -> Result<String> {
        for i in 0..4 {
            x = self.conv_bn(
                &x,
                &format!("stages.{i}.conv"),
                &format!("stages.{i}.bn"),
                1,
                true,
            )?;
            if i < 3 && hw.0 >= 2 && hw.1 >= 2 {
                x = self.node(
                    "MaxPool",
                    &[&x],
                    vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
                );
                hw = (hw.0 / 2, hw.1 / 2);
            }
        }
        Ok(x)
    }

    /// src/nn/resnet.rs under torchvision names: stem conv–BN–ReLU, 4 layers of 2 basic blocks.
    fn resnet18(&mut self, x: String) -> Result<String> {
        let mut x = self.conv_bn(&x, "conv1", "bn1", 1, true)?;
        for layer in 1..=4 {
            for block in 0..2 {
                let p = format!("layer{layer}.{block}");
                let stride = if layer > 1 && block == 0 { 2 } else { 1 };
                let y =
                    self.conv_bn(&x, &format!("{p}.conv1"), &format!("{p}.bn1"), stride, true)?;
                let y = self.conv_bn(&y, &format!("{p}.conv2"), &format!("{p}.bn2"), 1, false)?;
                let skip = if self
                    .params
                    .contains_key(&format!("{p}.downsample.0.weight"))
                {
                    self.conv_bn(
                        &x,
                        &format!("{p}.downsample.0"),
                        &format!("{p}.downsample.1"),
                        stride,
                        false,
                    )?
                } else {
                    x.clone()
                };
                let sum = self.node("Add", &[&y, &skip], vec![]);
                x = self.node("Relu", &[&sum], vec![]);
            }
        }
        Ok(x)
    }
}

/// The ViT's fixed 2-D sine-cosine positions [gh·gw, d] as the model computes them.
fn vit_positions(grid: [usize; 2], d: usize) -> Vec<f32> {
    crate::nn::vit::sincos_2d(grid, d, &burn::prelude::Device::flex())
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 positions")
}

impl Graph<'_> {
    /// src/nn/vit.rs on x [b, c, h, w] (normalised): zeros at the bottom/right up to a multiple
    /// of the patch side p, the patches (row, column, channel) embedded by `embed`, + the fixed
    /// positions, the blocks, `norm`, the mean over the tokens → [b, d].
    fn vit(
        &mut self,
        x: String,
        spec: &BackboneSpec,
        input: &InputSpec,
        d: usize,
    ) -> Result<String> {
        let preset = spec
            .kind
            .vit()
            .ok_or_else(|| Error::Usage(format!("{} is not a ViT backbone", spec.kind.name())))?;
        let heads = d / preset.head_dim;
        let (p, c) = (spec.patch_side(), input.channels);
        let (gh, gw) = (input.height.div_ceil(p), input.width.div_ceil(p));
        let (ph, pw) = (gh * p - input.height, gw * p - input.width);
        let mut x = x;
        if ph + pw > 0 {
            // pads: the starts of b, c, h, w, then their ends
            self.inits.push(tensor_i64(
                "vit_pads",
                &[8],
                &[0, 0, 0, 0, 0, 0, ph as i64, pw as i64],
            ));
            x = self.node("Pad", &[&x, "vit_pads"], vec![]);
        }
        let i = |v: usize| v as i64;
        // [b, c, gh·p, gw·p] → [b, c, gh, p, gw, p] → [b, gh, gw, p, p, c] → [b, gh·gw, p·p·c]
        self.inits.push(tensor_i64(
            "shape_patch_grid",
            &[6],
            &[0, i(c), i(gh), i(p), i(gw), i(p)],
        ));
        let t = self.node("Reshape", &[&x, "shape_patch_grid"], vec![]);
        let t = self.node("Transpose", &[&t], vec![ints("perm", &[0, 2, 4, 3, 5, 1])]);
        self.inits.push(tensor_i64(
            "shape_patches",
            &[3],
            &[0, i(gh * gw), i(p * p * c)],
        ));
        let t = self.node("Reshape", &[&t, "shape_patches"], vec![]);
        // [b, t, c·p·p] → [b, t, d], + positions [t, d]
        let t = self.linear(&t, "embed")?;
        self.inits.push(tensor(
            "vit_positions",
            &[gh * gw, d],
            &vit_positions([gh, gw], d),
        ));
        let mut t = self.node("Add", &[&t, "vit_positions"], vec![]);
        // Every token sees every token: a mask that hides nothing, broadcast to [b, h, t, t].
        self.block_constants(d, heads);
        self.inits.push(TensorProto {
            name: "vit_mask".into(),
            dims: vec![1, 1, 1, 1],
            data_type: DataType::BOOL as i32,
            raw_data: vec![0],
            ..Default::default()
        });
        for k in 0..preset.depth {
            t = self.block(&t, k, "vit_mask")?;
        }
        let t = self.layer_norm(&t, "norm")?;
        // [b, t, d] → mean over t → [b, d]
        Ok(self.node(
            "ReduceMean",
            &[&t],
            vec![ints("axes", &[1]), int("keepdims", 0)],
        ))
    }
}

/// The encoder as ONNX bytes; `metadata` goes into `metadata_props` in the order given.
pub fn model_bytes(
    spec: &BackboneSpec,
    input: &InputSpec,
    dim: usize,
    params: &BTreeMap<String, Param>,
    metadata: &[(String, String)],
) -> Result<Vec<u8>> {
    let mut g = Graph::new(params);
    let x = g.normalize("image", input);
    let map = match spec.kind {
        BackboneKind::Convnet => Some(g.convnet(x, (input.height, input.width))?),
        BackboneKind::Resnet18 => Some(g.resnet18(x)?),
        BackboneKind::Vit | BackboneKind::VitSmall | BackboneKind::VitBase => {
            g.vit(x, spec, input, dim)?;
            None
        }
    };
    if let Some(map) = map {
        // [b, dim, h, w] → mean over h, w → [b, dim]
        let pooled = g.node("GlobalAveragePool", &[&map], vec![]);
        g.node("Flatten", &[&pooled], vec![int("axis", 1)]);
    }
    let pooled = if spec.kind.vit().is_some() {
        "the mean of the final tokens"
    } else {
        "the pooled last stage"
    };
    // The graph's output is the last node's.
    g.nodes.last_mut().expect("a node").output = vec!["features".into()];
    let graph = GraphProto {
        name: format!("pretext {}", spec.kind.name()),
        node: g.nodes,
        initializer: g.inits,
        input: vec![value_info(
            "image",
            &[input.channels, input.height, input.width],
        )],
        output: vec![value_info("features", &[dim])],
        doc_string: format!(
            "image: float32 [batch, C, H, W] = pixel / 255 (normalisation is inside); \
             features: {pooled}"
        ),
        ..Default::default()
    };
    model_proto_bytes(graph, metadata)
}

/// The model around `graph` (opset 17, IR 8), `metadata` as its `metadata_props`, encoded.
pub(super) fn model_proto_bytes(
    graph: GraphProto,
    metadata: &[(String, String)],
) -> Result<Vec<u8>> {
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        producer_name: "pretext".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: MessageField::some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    model
        .write_to_bytes()
        .map_err(|e| Error::Usage(format!("encoding the ONNX model: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::Device;

    #[test]
    fn a_vit_exports_under_torch_names_with_padding() {
        let device = Device::flex();
        let spec = BackboneSpec {
            kind: BackboneKind::Vit,
            in_channels: 1,
            width: 64,
            patch: 8,
        };
        let p = super::super::params::torch_params(&spec.init(&device), spec.kind).unwrap();
        // embed (2), 6 blocks × (2 norms × 2 + 4 linears × 2), norm (2)
        assert_eq!(
            p.len(),
            2 + 6 * 12 + 2,
            "{:?}",
            p.keys().collect::<Vec<_>>()
        );
        assert_eq!(p["embed.weight"].shape, [64, 64]);
        assert_eq!(p["blocks.0.ln1.weight"].shape, [64]);
        assert_eq!(p["blocks.5.qkv.weight"].shape, [64, 192]);
        assert_eq!(p["norm.bias"].shape, [64]);
        let input = InputSpec::square(1, 28, 0.5, 0.25);
        let bytes = model_bytes(&spec, &input, 64, &p, &[]).unwrap();
        let model = ModelProto::parse_from_bytes(&bytes).unwrap();
        let graph = model.graph.as_ref().unwrap();
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops[2], "Pad", "{ops:?}");
        assert_eq!(ops.last(), Some(&"ReduceMean"));
        let pos = graph
            .initializer
            .iter()
            .find(|t| t.name == "vit_positions")
            .unwrap();
        assert_eq!(pos.dims, [16, 64], "28 padded to 32: a 4×4 grid");
    }
}
