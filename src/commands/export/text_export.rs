//! A text run's transformer as an encoder: the function `pretext embed` computes for a text run
//! (see `crate::commands::embed::text_embed`), as ONNX and as a PyTorch state dict.
//!
//! The function: token embedding + learned position embedding (positions 0..seq); `layers`
//! pre-LayerNorm blocks `x + proj(attention(LN1(x)))`, `x + fc2(GELU(fc1(LN2(x))))` with GELU
//! the exact, erf-based one (burn's `gelu`), LayerNorm epsilon 1e-5, attention scaled by
//! 1/√(d_model/heads) and masked — a key at a padding position (attention_mask 0) is hidden
//! from every query, and a causal-lm run's queries also see no later position; the final
//! LayerNorm; the mean of the final hidden states over each document's tokens (attention_mask
//! 1). The vocabulary head is not part of it.
//!
//! ONNX (opset 17, default domain only): inputs `input_ids` and `attention_mask`, int64
//! [batch, seq] with both dimensions symbolic (seq ≤ max_len; padding on the right); output
//! `features`, float32 [batch, d_model]. Linear weights are stored as burn keeps them,
//! [in, out], for `MatMul`; in the PyTorch state dict they are transposed to `nn.Linear`'s
//! [out, in].
//!
//! Tensor names (both formats): `tok.weight`, `pos.weight`, `blocks.N.{ln1,ln2}.{weight,bias}`,
//! `blocks.N.{qkv,proj,fc1,fc2}.{weight,bias}`, `ln_f.{weight,bias}` — the module layout of
//! src/nn/transformer.rs, with PyTorch's `weight`/`bias` for burn's LayerNorm `gamma`/`beta`.

use std::collections::BTreeMap;

use burn::store::ModuleSnapshot;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::GraphProto;
use serde::{Deserialize, Serialize};

use super::onnx::{
    float, int, ints, model_proto_bytes, tensor, tensor_i64, typed_value_info, Graph,
};
use super::params::Param;
use crate::error::{Error, Result};
use crate::nn::transformer::{Transformer, TransformerSpec};

/// LayerNorm epsilon of every norm in src/nn/transformer.rs (burn's default).
pub const LN_EPS: f32 = 1e-5;
/// The score given to a position a query may not attend to (softmax weight exactly 0 in f32
/// next to any real score; finite, so a row with no token at all gives no NaN).
const MASKED: f32 = -1e9;

/// The transformer as the Python module and an ONNX reader need it (`config.json`'s
/// `architecture` for a text export).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TextArchitecture {
    /// `transformer`.
    pub name: String,
    /// Token ids run from 0 to vocab − 1.
    pub vocab: usize,
    /// Width of every hidden state.
    pub d_model: usize,
    /// Transformer blocks (pre-LayerNorm).
    pub layers: usize,
    /// Attention heads per block, each of width d_model / heads.
    pub heads: usize,
    /// Width of each block's MLP.
    pub d_ff: usize,
    /// Longest input (position embeddings).
    pub max_len: usize,
    /// causal-lm: a query sees no later position.
    pub causal: bool,
    pub layer_norm_eps: f32,
    /// `gelu_erf`: 0.5·x·(1 + erf(x/√2)).
    pub activation: String,
    /// `mean`: the average of the final hidden states over the tokens (attention_mask 1).
    pub pooling: String,
}

impl TextArchitecture {
    pub fn new(spec: &TransformerSpec) -> Self {
        Self {
            name: "transformer".into(),
            vocab: spec.vocab,
            d_model: spec.d_model,
            layers: spec.layers,
            heads: spec.heads,
            d_ff: spec.d_ff,
            max_len: spec.max_len,
            causal: spec.causal,
            layer_norm_eps: LN_EPS,
            activation: "gelu_erf".into(),
            pooling: "mean".into(),
        }
    }
}

/// How `pretext embed` turns a document into `input_ids` (`config.json`'s `tokenization`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tokenization {
    /// The tokenizer file beside the export (Hugging Face `tokenizer.json`, byte-level BPE).
    pub tokenizer: String,
    /// Always false: pretext encodes without adding special tokens.
    pub add_special_tokens: bool,
    /// Documents longer than this are cut to their first `max_len` tokens (not split).
    pub max_len: usize,
    pub truncation: String,
    /// A document with no tokens is the one token `<eos>`.
    pub empty_document: String,
    pub pad_id: u32,
    pub eos_id: u32,
    pub mask_id: u32,
    pub cls_id: u32,
    pub padding: String,
}

impl Tokenization {
    pub fn new(
        tokenizer_file: &str,
        tok: &crate::data::tokenizer::Tokenizer,
        max_len: usize,
    ) -> Self {
        Self {
            tokenizer: tokenizer_file.into(),
            add_special_tokens: false,
            max_len,
            truncation: format!(
                "the first {max_len} tokens of a longer document (pretext embed does the same: \
                 one vector per document, the rest is not read)"
            ),
            empty_document: format!("[{}] (<eos>)", tok.eos_id()),
            pad_id: tok.pad_id(),
            eos_id: tok.eos_id(),
            mask_id: tok.mask_id(),
            cls_id: tok.cls_id(),
            padding: format!(
                "on the right with <pad> ({}) and attention_mask 0; the padded ids are not read",
                tok.pad_id()
            ),
        }
    }
}

/// Every tensor of the encoder (the vocabulary head left out) under its PyTorch name, in
/// burn's layout (linear weights [in, out]).
pub fn params(model: &Transformer) -> Result<BTreeMap<String, Param>> {
    let mut out = BTreeMap::new();
    for t in model.collect(None, None, true) {
        if t.name.starts_with("head.") {
            continue;
        }
        let name = match t.name.rsplit_once('.') {
            Some((module, "gamma")) => format!("{module}.weight"),
            Some((module, "beta")) => format!("{module}.bias"),
            _ => t.name.clone(),
        };
        let data = burn::store::bridge::into_data(t)
            .map_err(|e| Error::Usage(format!("reading the transformer's {name}: {e}")))?;
        let shape = data.shape().to_vec();
        let data = data
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| Error::Usage(format!("the transformer's {name} is not float: {e:?}")))?;
        out.insert(name, Param { shape, data });
    }
    Ok(out)
}

/// Whether `name` is a linear layer's weight (transposed between burn and PyTorch).
fn is_linear_weight(name: &str, p: &Param) -> bool {
    p.shape.len() == 2 && name.ends_with(".weight") && !matches!(name, "tok.weight" | "pos.weight")
}

/// `params` in PyTorch's layout: linear weights [out, in] (a text run's transformer, and a
/// ViT's patch embedding and blocks).
pub fn torch_layout(params: &BTreeMap<String, Param>) -> BTreeMap<String, Param> {
    params
        .iter()
        .map(|(k, p)| {
            if !is_linear_weight(k, p) {
                return (k.clone(), p.clone());
            }
            let (i, o) = (p.shape[0], p.shape[1]);
            let mut data = vec![0f32; p.data.len()];
            for r in 0..i {
                for c in 0..o {
                    data[c * i + r] = p.data[r * o + c];
                }
            }
            (
                k.clone(),
                Param {
                    shape: vec![o, i],
                    data,
                },
            )
        })
        .collect()
}

impl Graph<'_> {
    pub(super) fn scalar_f32(&mut self, name: &str, v: f32) -> String {
        self.inits.push(tensor(name, &[], &[v]));
        name.into()
    }

    pub(super) fn const_i64(&mut self, name: &str, v: &[i64], scalar: bool) -> String {
        let shape: &[usize] = if scalar { &[] } else { &[v.len()] };
        self.inits.push(tensor_i64(name, shape, v));
        name.into()
    }

    pub(super) fn layer_norm(&mut self, x: &str, module: &str) -> Result<String> {
        let w = self.param(&format!("{module}.weight"))?;
        let b = self.param(&format!("{module}.bias"))?;
        Ok(self.node(
            "LayerNormalization",
            &[x, &w, &b],
            vec![int("axis", -1), float("epsilon", LN_EPS)],
        ))
    }

    /// x [.., in] → x·W + b [.., out].
    pub(super) fn linear(&mut self, x: &str, module: &str) -> Result<String> {
        let w = self.param(&format!("{module}.weight"))?;
        let b = self.param(&format!("{module}.bias"))?;
        let y = self.node("MatMul", &[x, &w], vec![]);
        Ok(self.node("Add", &[&y, &b], vec![]))
    }

    /// The initializers [`Graph::block`] reads, for blocks of width `d` with `h` heads:
    /// `i64_0`/`i64_1`/`i64_2` (int64 scalars), `shape_qkv` [0, 0, 3, h, d/h], `shape_btd`
    /// [0, 0, d], `attn_scale` 1/√(d/h), `attn_masked`, `sqrt2`, `one`, `half`.
    pub(super) fn block_constants(&mut self, d: usize, h: usize) {
        self.const_i64("i64_0", &[0], true);
        self.const_i64("i64_1", &[1], true);
        self.const_i64("i64_2", &[2], true);
        self.const_i64("shape_qkv", &[0, 0, 3, h as i64, (d / h) as i64], false);
        self.const_i64("shape_btd", &[0, 0, d as i64], false);
        self.scalar_f32("attn_scale", 1.0 / ((d / h) as f32).sqrt());
        self.scalar_f32("attn_masked", MASKED);
        self.scalar_f32("sqrt2", std::f32::consts::SQRT_2);
        self.scalar_f32("one", 1.0);
        self.scalar_f32("half", 0.5);
    }

    /// One block of src/nn/transformer.rs; `mask` [b or 1, 1, t, t] bool, true = hidden. Needs
    /// the constants of [`Graph::block_constants`].
    pub(super) fn block(&mut self, x: &str, i: usize, mask: &str) -> Result<String> {
        let p = format!("blocks.{i}");
        let ln = self.layer_norm(x, &format!("{p}.ln1"))?;
        let qkv = self.linear(&ln, &format!("{p}.qkv"))?;
        // [b, t, 3d] → [b, t, 3, h, dk] → [3, b, h, t, dk]
        let qkv = self.node("Reshape", &[&qkv, "shape_qkv"], vec![]);
        let qkv = self.node("Transpose", &[&qkv], vec![ints("perm", &[2, 0, 3, 1, 4])]);
        let part = |g: &mut Self, idx: &str| g.node("Gather", &[&qkv, idx], vec![int("axis", 0)]);
        let (q, k, v) = (
            part(self, "i64_0"),
            part(self, "i64_1"),
            part(self, "i64_2"),
        );
        let kt = self.node("Transpose", &[&k], vec![ints("perm", &[0, 1, 3, 2])]);
        let scores = self.node("MatMul", &[&q, &kt], vec![]);
        let scores = self.node("Mul", &[&scores, "attn_scale"], vec![]);
        let scores = self.node("Where", &[mask, "attn_masked", &scores], vec![]);
        let probs = self.node("Softmax", &[&scores], vec![int("axis", -1)]);
        let ctx = self.node("MatMul", &[&probs, &v], vec![]);
        // [b, h, t, dk] → [b, t, h, dk] → [b, t, d]
        let ctx = self.node("Transpose", &[&ctx], vec![ints("perm", &[0, 2, 1, 3])]);
        let ctx = self.node("Reshape", &[&ctx, "shape_btd"], vec![]);
        let attn = self.linear(&ctx, &format!("{p}.proj"))?;
        let x = self.node("Add", &[x, &attn], vec![]);
        let ln = self.layer_norm(&x, &format!("{p}.ln2"))?;
        let f = self.linear(&ln, &format!("{p}.fc1"))?;
        // GELU as burn computes it: 0.5 · x · (1 + erf(x / √2))
        let e = self.node("Div", &[&f, "sqrt2"], vec![]);
        let e = self.node("Erf", &[&e], vec![]);
        let e = self.node("Add", &[&e, "one"], vec![]);
        let half = self.node("Mul", &[&f, "half"], vec![]);
        let g = self.node("Mul", &[&half, &e], vec![]);
        let mlp = self.linear(&g, &format!("{p}.fc2"))?;
        Ok(self.node("Add", &[&x, &mlp], vec![]))
    }
}

/// The encoder as ONNX bytes; `params` from [`params`] (burn layout); `metadata` goes into
/// `metadata_props` in the order given.
pub fn onnx_bytes(
    spec: &TransformerSpec,
    params: &BTreeMap<String, Param>,
    metadata: &[(String, String)],
) -> Result<Vec<u8>> {
    let (d, h) = (spec.d_model, spec.heads);
    let mut g = Graph::new(params);
    g.block_constants(d, h);
    g.const_i64("axes_1", &[1], false);
    g.const_i64("axes_2", &[2], false);
    g.const_i64("axes_1_2", &[1, 2], false);

    // Token + position embeddings: [b, t, d] + [t, d].
    let tok = g.param("tok.weight")?;
    let x = g.node("Gather", &[&tok, "input_ids"], vec![int("axis", 0)]);
    let shape = g.node("Shape", &["input_ids"], vec![]);
    let t = g.node("Gather", &[&shape, "i64_1"], vec![int("axis", 0)]);
    let positions = g.node("Range", &["i64_0", &t, "i64_1"], vec![]);
    let pos = g.param("pos.weight")?;
    let p = g.node("Gather", &[&pos, &positions], vec![int("axis", 0)]);
    let mut x = g.node("Add", &[&x, &p], vec![]);

    // Hidden keys: padding [b, 1, 1, t], and for a causal model the future [t, t] as well.
    let pad = g.node("Equal", &["attention_mask", "i64_0"], vec![]);
    let mut mask = g.node("Unsqueeze", &[&pad, "axes_1_2"], vec![]);
    if spec.causal {
        g.const_i64("axes_0", &[0], false);
        let rows = g.node("Unsqueeze", &[&positions, "axes_1"], vec![]);
        let cols = g.node("Unsqueeze", &[&positions, "axes_0"], vec![]);
        let future = g.node("Greater", &[&cols, &rows], vec![]);
        mask = g.node("Or", &[&mask, &future], vec![]);
    }
    for i in 0..spec.layers {
        x = g.block(&x, i, &mask)?;
    }
    let hidden = g.layer_norm(&x, "ln_f")?;

    // Mean over the tokens: Σ_t h·m / max(Σ_t m, 1).
    let m = g.node(
        "Cast",
        &["attention_mask"],
        vec![int("to", DataType::FLOAT as i64)],
    );
    let m = g.node("Unsqueeze", &[&m, "axes_2"], vec![]);
    let weighted = g.node("Mul", &[&hidden, &m], vec![]);
    let sum = g.node(
        "ReduceSum",
        &[&weighted, "axes_1"],
        vec![int("keepdims", 0)],
    );
    let count = g.node("ReduceSum", &[&m, "axes_1"], vec![int("keepdims", 0)]);
    let count = g.node("Max", &[&count, "one"], vec![]);
    g.node("Div", &[&sum, &count], vec![]);
    g.nodes.last_mut().expect("a node").output = vec!["features".into()];

    let ids = |name: &str| typed_value_info(name, DataType::INT64, &[Err("batch"), Err("seq")]);
    let graph = GraphProto {
        name: format!(
            "pretext transformer ({})",
            if spec.causal {
                "causal"
            } else {
                "bidirectional"
            }
        ),
        node: g.nodes,
        initializer: g.inits,
        input: vec![ids("input_ids"), ids("attention_mask")],
        output: vec![typed_value_info(
            "features",
            DataType::FLOAT,
            &[Err("batch"), Ok(d)],
        )],
        doc_string: format!(
            "input_ids: int64 [batch, seq], seq <= {}, padded on the right; attention_mask: \
             int64 [batch, seq], 1 = token, 0 = padding; features: float32 [batch, {d}], the \
             mean of the final hidden states over the tokens",
            spec.max_len
        ),
        ..Default::default()
    };
    model_proto_bytes(graph, metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::Device;

    fn spec(tie: bool) -> TransformerSpec {
        TransformerSpec {
            vocab: 50,
            d_model: 16,
            layers: 2,
            heads: 2,
            d_ff: 32,
            max_len: 8,
            dropout: 0.0,
            tie_weights: tie,
            causal: true,
        }
    }

    #[test]
    fn every_encoder_tensor_is_collected_under_its_torch_name_and_the_head_is_not() {
        let device = Device::flex();
        let p = params(&spec(false).init(&device)).unwrap();
        let names: Vec<&str> = p.keys().map(String::as_str).collect();
        // tok, pos, 2 × (2 norms × 2 + 4 linears × 2), ln_f × 2
        assert_eq!(names.len(), 2 + 2 * 12 + 2, "{names:?}");
        assert!(names.iter().all(|n| !n.starts_with("head")), "{names:?}");
        assert_eq!(p["blocks.1.qkv.weight"].shape, [16, 48]);
        assert_eq!(p["blocks.0.ln1.weight"].shape, [16]);
        assert_eq!(p["ln_f.bias"].shape, [16]);
        assert_eq!(p["tok.weight"].shape, [50, 16]);
        let torch = torch_layout(&p);
        assert_eq!(torch["blocks.1.qkv.weight"].shape, [48, 16]);
        assert_eq!(torch["tok.weight"], p["tok.weight"]);
        let (a, b) = (&p["blocks.0.fc1.weight"], &torch["blocks.0.fc1.weight"]);
        // burn [in 16, out 32] (r, c) = torch [out 32, in 16] (c, r)
        assert_eq!(a.data[3 * 32 + 5], b.data[5 * 16 + 3]);
        let bytes = onnx_bytes(&spec(true), &p, &[]).unwrap();
        assert!(bytes.len() > 4 * p.values().map(|p| p.data.len()).sum::<usize>());
    }
}
