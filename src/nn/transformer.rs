//! The text model: a pre-LayerNorm transformer (GPT-2 layout). Token + learned position
//! embeddings, `layers` blocks of `x + attn(LN(x))`, `x + MLP(LN(x))` (GELU, 4× wide by default),
//! a final LayerNorm and a vocabulary head, tied to the token embedding by default.
//!
//! The causal model (next-token prediction) lets position t attend to positions ≤ t only; the
//! masked model (BERT style) is the same blocks without that mask, with an optional padding mask.
//! For generation the causal model reads a prompt once into a [`KvCache`] ([`Transformer::prefill`])
//! and then takes one token at a time ([`Transformer::step`]) through the same block code.
//! Initialisation as GPT-2: N(0, 0.02) weights, residual projections N(0, 0.02/√(2·layers)).

use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use serde::{Deserialize, Serialize};

use super::dropout::dropout;
use crate::error::{Error, Result};

/// Everything needed to rebuild the model before loading its weights (saved in the run's `run.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransformerSpec {
    pub vocab: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    /// Width of the MLP's hidden layer.
    pub d_ff: usize,
    /// Longest sequence (positions with an embedding).
    pub max_len: usize,
    pub dropout: f64,
    /// Share the token embedding with the output head.
    pub tie_weights: bool,
    /// Causal self-attention (GPT) or bidirectional (BERT).
    pub causal: bool,
}

/// Named sizes: (name, d_model, layers, heads, max_len). `d_ff` is 4 × d_model.
pub const PRESETS: &[(&str, usize, usize, usize, usize)] = &[
    // CPU, a few minutes (~0.8M parameters without embeddings).
    ("tiny", 128, 4, 4, 128),
    // nanoGPT's Shakespeare-char model: 6 × 384, context 256 (~10.6M without embeddings).
    ("small", 384, 6, 6, 256),
    // GPT-2 small: 12 × 768, context 1024 (~85M without embeddings, ~100M with a 16k vocabulary).
    ("base", 768, 12, 12, 1024),
];

impl TransformerSpec {
    /// A preset by name with the given vocabulary; `None` if the name is unknown.
    pub fn preset(name: &str, vocab: usize, causal: bool) -> Option<Self> {
        PRESETS
            .iter()
            .find(|p| p.0 == name)
            .map(|&(_, d, l, h, t)| Self {
                vocab,
                d_model: d,
                layers: l,
                heads: h,
                d_ff: 4 * d,
                max_len: t,
                dropout: 0.1,
                tie_weights: true,
                causal,
            })
    }

    /// Shape checks, as config errors naming the key.
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("vocab", self.vocab),
            ("d_model", self.d_model),
            ("layers", self.layers),
            ("heads", self.heads),
            ("d_ff", self.d_ff),
            ("max_len", self.max_len),
        ] {
            if v == 0 {
                return Err(Error::config(key, "must be at least 1, found 0"));
            }
        }
        if !self.d_model.is_multiple_of(self.heads) {
            return Err(Error::config(
                "heads",
                format!(
                    "d_model {} is not divisible by heads {}",
                    self.d_model, self.heads
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config(
                "dropout",
                format!("must be in [0, 1), found {}", self.dropout),
            ));
        }
        Ok(())
    }

    /// Parameter count of the model this spec builds.
    pub fn parameters(&self) -> usize {
        let d = self.d_model;
        let block = 2 * 2 * d
            + (d * 3 * d + 3 * d)
            + (d * d + d)
            + (d * self.d_ff + self.d_ff)
            + (self.d_ff * d + d);
        let head = if self.tie_weights {
            0
        } else {
            d * self.vocab + self.vocab
        };
        self.vocab * d + self.max_len * d + self.layers * block + 2 * d + head
    }

    /// Forward-pass FLOPs per token (matmuls only, 2 per multiply-add) at context length `t`,
    /// with the vocabulary head at a fraction `scored` of the tokens (1 for next-token
    /// prediction; the masked model's head sees only its chosen positions): the standard
    /// 6N-style estimate is 3× this for a training step.
    pub fn flops_per_token(&self, t: usize, scored: f64) -> f64 {
        let d = self.d_model as f64;
        let per_layer =
            2.0 * (3.0 * d * d + d * d + 2.0 * d * self.d_ff as f64) + 2.0 * 2.0 * t as f64 * d; // scores and weighted sum
        self.layers as f64 * per_layer + scored * 2.0 * d * self.vocab as f64
    }

    pub fn init(&self, device: &Device) -> Transformer {
        let std = 0.02;
        let resid_std = std / ((2 * self.layers) as f64).sqrt();
        let normal = |s: f64| Initializer::Normal { mean: 0.0, std: s };
        let linear = |i: usize, o: usize, s: f64| {
            LinearConfig::new(i, o)
                .with_initializer(normal(s))
                .init(device)
        };
        let blocks = (0..self.layers)
            .map(|_| {
                Block::new(
                    self.d_model,
                    self.heads,
                    self.d_ff,
                    self.dropout,
                    self.causal,
                    resid_std,
                    device,
                )
            })
            .collect();
        // Initialised here, where the caller seeded the generator (see `device::init_now`).
        crate::platform::device::init_now(Transformer {
            tok: EmbeddingConfig::new(self.vocab, self.d_model)
                .with_initializer(normal(std))
                .init(device),
            pos: EmbeddingConfig::new(self.max_len, self.d_model)
                .with_initializer(normal(std))
                .init(device),
            blocks,
            ln_f: LayerNormConfig::new(self.d_model).init(device),
            head: (!self.tie_weights).then(|| linear(self.d_model, self.vocab, std)),
            dropout: DropoutConfig::new(self.dropout).init(),
            max_len: self.max_len,
        })
    }
}

#[derive(Module, Debug)]
pub struct Block {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    dropout: Dropout,
    heads: usize,
    causal: bool,
}

impl Block {
    /// One pre-LayerNorm block of width `d` (GPT-2 initialisation: N(0, 0.02) weights, the two
    /// residual projections N(0, `resid_std`)). Also the ViT's block (`super::vit`).
    pub(crate) fn new(
        d: usize,
        heads: usize,
        d_ff: usize,
        dropout: f64,
        causal: bool,
        resid_std: f64,
        device: &Device,
    ) -> Self {
        let linear = |i: usize, o: usize, s: f64| {
            LinearConfig::new(i, o)
                .with_initializer(Initializer::Normal { mean: 0.0, std: s })
                .init(device)
        };
        Self {
            ln1: LayerNormConfig::new(d).init(device),
            qkv: linear(d, 3 * d, 0.02),
            proj: linear(d, d, resid_std),
            ln2: LayerNormConfig::new(d).init(device),
            fc1: linear(d, d_ff, 0.02),
            fc2: linear(d_ff, d, resid_std),
            dropout: DropoutConfig::new(dropout).init(),
            heads,
            causal,
        }
    }

    /// x: [b, t, d]; `mask`: [b, heads, t, t], true = may not attend.
    pub(crate) fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4, Bool>>) -> Tensor<3> {
        let [q, k, v] = self.qkv_heads(x.clone());
        self.attend(x, q, k, v, mask)
    }

    /// The causal block on the new tokens x [b, n, d] (positions `kv.len()`…): their queries see
    /// the cached keys and values and their own; their keys and values join `kv`.
    fn forward_cached(&self, x: Tensor<3>, kv: &mut LayerKv) -> Tensor<3> {
        let [q, k, v] = self.qkv_heads(x.clone());
        let (k, v) = kv.append(k, v);
        self.attend(x, q, k, v, None)
    }

    /// x: [b, t, d] → queries, keys and values of its tokens, each [b, heads, t, d / heads].
    fn qkv_heads(&self, x: Tensor<3>) -> [Tensor<4>; 3] {
        let [b, t, d] = x.dims();
        let h = self.heads;
        let qkv = by_rows(&self.qkv, self.ln1.forward(x))
            .reshape([b, t, 3, h, d / h])
            .permute([2, 0, 3, 1, 4]); // [3, b, h, t, dk]
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, h, t, d / h]);
        [part(0), part(1), part(2)]
    }

    /// The rest of the block for the tokens x [b, tq, d] with their queries q [b, h, tq, dk],
    /// attending to keys and values k, v [b, h, tk, dk] (tk ≥ tq; the queries are the last tq
    /// of the tk positions, so the causal mask is aligned at the bottom right): attention, the
    /// projection and residual, then the MLP and residual. `mask`: [b, h, tq, tk], true = may
    /// not attend.
    fn attend(
        &self,
        x: Tensor<3>,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: self.causal,
        };
        let context = attention(q, k, v, mask, None, options)
            .swap_dims(1, 2)
            .reshape([b, t, d]);
        let x = x + dropout(&self.dropout, by_rows(&self.proj, context));
        let mlp = by_rows(
            &self.fc2,
            gelu(by_rows(&self.fc1, self.ln2.forward(x.clone()))),
        );
        x + dropout(&self.dropout, mlp)
    }
}

/// `linear` applied to every row of x [b, t, d_in] as one [b·t, d_in] product. Given x as it is,
/// burn runs a batch of b [t, d_in] products (it merges them only where t is not a multiple of
/// 32) and, under autodiff, makes a [b, d_in, d_out] weight gradient to sum over b: 16–22 %
/// slower forward and backward at the bench model's shapes (one thread, b = 32, t = 128).
pub(crate) fn by_rows(linear: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, t, d] = x.dims();
    let y = linear.forward(x.reshape([b * t, d]));
    let out = y.dims()[1];
    y.reshape([b, t, out])
}

/// One block's cached keys and values, each [b, heads, t, head_dim]; `None` before the first
/// token.
#[derive(Clone, Debug, Default)]
struct LayerKv(Option<(Tensor<4>, Tensor<4>)>);

impl LayerKv {
    /// Appends the new tokens' keys and values [b, h, n, dk] along the positions; returns all
    /// of them [b, h, t + n, dk].
    fn append(&mut self, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let kv = match self.0.take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        };
        self.0 = Some(kv.clone());
        kv
    }
}

/// The keys and values of every block for the tokens a causal [`Transformer`] has read so far
/// (positions 0‥[`len`](KvCache::len)), so that the next token costs one token's work: made by
/// [`Transformer::prefill`], grown by [`Transformer::step`]. Inference only.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// Rows of the batch.
    batch: usize,
    /// Tokens (positions) cached.
    len: usize,
}

impl KvCache {
    /// Tokens cached: the position the next token gets.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Module, Debug)]
pub struct Transformer {
    tok: Embedding,
    pos: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// None when tied to `tok`.
    head: Option<Linear>,
    dropout: Dropout,
    max_len: usize,
}

impl Transformer {
    /// One vector per document ([b, d]): the documents' tokens padded on the right with `pad_id`
    /// into one batch, then the final hidden states averaged over each document's tokens
    /// (`cls: None`), or the state at its `<cls>` token, first (`Some(true)`) or last
    /// (`Some(false)`). Every document has at least one token.
    pub fn pooled(
        &self,
        docs: &[&[u32]],
        pad_id: u32,
        cls: Option<bool>,
        device: &Device,
    ) -> Tensor<2> {
        self.pooled_at(docs, pad_id, cls, 0, 0, device)
    }

    /// As [`Self::pooled`], of the states after block `stage` (see [`Self::hidden_at`]; 0 = the
    /// final states), with the batch padded to at least `min_len` positions (a fixed shape makes
    /// a document's vector independent of the documents batched with it).
    pub fn pooled_at(
        &self,
        docs: &[&[u32]],
        pad_id: u32,
        cls: Option<bool>,
        stage: usize,
        min_len: usize,
        device: &Device,
    ) -> Tensor<2> {
        let b = docs.len();
        let t = docs
            .iter()
            .map(|d| d.len())
            .max()
            .unwrap_or(1)
            .max(min_len)
            .max(1);
        let mut ids = vec![pad_id as i64; b * t];
        let mut pad = vec![true; b * t];
        let mut w = vec![0f32; b * t];
        for (r, doc) in docs.iter().enumerate() {
            let n = doc.len();
            for (i, &tok) in doc.iter().enumerate() {
                ids[r * t + i] = tok as i64;
                pad[r * t + i] = false;
            }
            match cls {
                None => w[r * t..r * t + n]
                    .iter_mut()
                    .for_each(|x| *x = 1.0 / n as f32),
                Some(true) => w[r * t] = 1.0,
                Some(false) => w[r * t + n - 1] = 1.0,
            }
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
        let pad = Tensor::<2, Bool>::from_data(TensorData::new(pad, [b, t]), device);
        let w = Tensor::<3>::from_data(TensorData::new(w, [b, t, 1]), device);
        // [b, t, d] weighted by [b, t, 1], summed over t → [b, d]
        let hidden = self.hidden_at(ids, Some(pad), stage);
        let [b, _, d] = hidden.dims();
        (hidden * w).sum_dim(1).reshape([b, d])
    }

    /// tokens [b, t] (t ≤ max_len) → final hidden states [b, t, d] (after the last LayerNorm).
    /// `pad`: [b, t], true at padding positions; they are hidden from every query (bidirectional
    /// model) — the causal model needs no padding mask when padding is on the right.
    pub fn hidden(&self, tokens: Tensor<2, Int>, pad: Option<Tensor<2, Bool>>) -> Tensor<3> {
        self.hidden_at(tokens, pad, 0)
    }

    /// As [`Self::hidden`] for `stage` 0; for `stage` k in 1..=layers the states after block k
    /// (the residual stream the next block reads, without the final LayerNorm): the per-layer
    /// probe's features.
    pub fn hidden_at(
        &self,
        tokens: Tensor<2, Int>,
        pad: Option<Tensor<2, Bool>>,
        stage: usize,
    ) -> Tensor<3> {
        let [b, t] = tokens.dims();
        assert!(
            t <= self.max_len,
            "sequence of {t} > max_len {}",
            self.max_len
        );
        let mut x = self.embed(tokens, 0);
        let mask = pad.map(|p| {
            let heads = self.blocks.first().map_or(1, |bl| bl.heads);
            p.reshape([b, 1, 1, t]).expand([b, heads, t, t])
        });
        let n = if stage == 0 {
            self.blocks.len()
        } else {
            stage.min(self.blocks.len())
        };
        for block in &self.blocks[..n] {
            x = block.forward(x, mask.clone());
        }
        if stage == 0 {
            self.ln_f.forward(x)
        } else {
            x
        }
    }

    /// Transformer blocks (the stages of the per-layer probe).
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// tokens [b, t] at positions `start`‥`start + t` → token + position embeddings [b, t, d]
    /// (after dropout). Also ELECTRA's generator's input (it shares them).
    pub(crate) fn embed(&self, tokens: Tensor<2, Int>, start: usize) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let device = tokens.device();
        let positions =
            Tensor::<1, Int>::arange(start as i64..(start + t) as i64, &device).reshape([1, t]);
        let x = self.tok.forward(tokens) + self.pos.forward(positions);
        dropout(&self.dropout, x)
    }

    /// Reads a causal model's prompt once. tokens [b, t] (1 ≤ t ≤ max_len) → the logits of its
    /// last position [b, vocab] (the next token's distribution) and the cache of every block's
    /// keys and values, for [`step`](Self::step).
    pub fn prefill(&self, tokens: Tensor<2, Int>) -> Result<(Tensor<2>, KvCache)> {
        let [b, _] = tokens.dims();
        let mut cache = KvCache {
            layers: vec![LayerKv::default(); self.blocks.len()],
            batch: b,
            len: 0,
        };
        let logits = self.extend(tokens, &mut cache)?;
        Ok((logits, cache))
    }

    /// One new token per row, tokens [b], at position `cache.len()` (< max_len) → its logits
    /// [b, vocab]; its keys and values join the cache. The result equals the full forward's at
    /// that position (up to float rounding).
    pub fn step(&self, tokens: Tensor<1, Int>, cache: &mut KvCache) -> Result<Tensor<2>> {
        let [b] = tokens.dims();
        self.extend(tokens.reshape([b, 1]), cache)
    }

    /// tokens [b, n] at positions `cache.len()`‥ through every block against the cache (which
    /// grows by n) → the logits of the last [b, vocab].
    fn extend(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Result<Tensor<2>> {
        let [b, n] = tokens.dims();
        if self.blocks.first().is_some_and(|bl| !bl.causal) {
            return Err(Error::Usage(
                "a key/value cache needs a causal model; this one attends both ways".into(),
            ));
        }
        if n == 0 || b == 0 {
            return Err(Error::Usage(format!(
                "no tokens to read (batch {b}, {n} tokens)"
            )));
        }
        if b != cache.batch {
            return Err(Error::Usage(format!(
                "{b} rows of tokens for a key/value cache of {} rows",
                cache.batch
            )));
        }
        if cache.len + n > self.max_len {
            return Err(Error::Usage(format!(
                "{n} token(s) after {} cached: positions run past max_len {}",
                cache.len, self.max_len
            )));
        }
        let mut x = self.embed(tokens, cache.len);
        for (block, kv) in self.blocks.iter().zip(&mut cache.layers) {
            x = block.forward_cached(x, kv);
        }
        cache.len += n;
        let [_, _, d] = x.dims();
        let last = self.ln_f.forward(x.narrow(1, n - 1, 1)).reshape([b, d]);
        // Two dimensions: the tied head's transposed embedding goes to the matmul as a strided
        // view, where [b, 1, d] would copy it (vocab × d) for every token.
        Ok(self.head(last))
    }

    /// The token embedding `[vocab, d]` (tracked): ELECTRA's generator ties its logits to it.
    pub(crate) fn token_embedding(&self) -> Tensor<2> {
        self.tok.weight.val()
    }

    /// Size of the vocabulary (rows of the token embedding).
    pub fn vocab(&self) -> usize {
        self.tok.weight.val().dims()[0]
    }

    /// Hidden states [b, t, d] → logits over the vocabulary [b, t, vocab].
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.head(hidden)
    }

    /// The vocabulary head's parameters, for `lm_head_loss::head_cross_entropy`.
    pub fn vocab_head(&self) -> crate::nn::lm_head_loss::Head {
        use crate::nn::lm_head_loss::Head;
        match &self.head {
            Some(head) => Head::Linear {
                weight: head.weight.val(),
                bias: head.bias.as_ref().map(|b| b.val()),
            },
            None => Head::Tied(self.tok.weight.val()),
        }
    }

    /// Hidden states [.., d] → logits [.., vocab].
    fn head<const D: usize>(&self, hidden: Tensor<D>) -> Tensor<D> {
        match &self.head {
            Some(head) => head.forward(hidden),
            None => burn::tensor::module::linear(hidden, self.tok.weight.val().transpose(), None),
        }
    }

    /// tokens [b, t] → logits [b, t, vocab].
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.logits(self.hidden(tokens, None))
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(causal: bool) -> TransformerSpec {
        TransformerSpec {
            vocab: 50,
            d_model: 32,
            layers: 2,
            heads: 4,
            d_ff: 64,
            max_len: 16,
            dropout: 0.0,
            tie_weights: true,
            causal,
        }
    }

    fn tokens(v: &[i64], device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), device)
    }

    #[test]
    fn parameter_count_matches_the_module() {
        let device = Device::flex();
        for tie in [true, false] {
            let spec = TransformerSpec {
                tie_weights: tie,
                ..tiny(true)
            };
            let model = spec.init(&device);
            assert_eq!(model.num_params(), spec.parameters(), "tie {tie}");
        }
    }

    /// The model's logits for one sequence, flattened.
    fn logits(model: &Transformer, ids: &[i64]) -> Vec<f32> {
        let device = Device::flex();
        model
            .forward(tokens(ids, &device))
            .into_data()
            .iter::<f32>()
            .collect()
    }

    #[test]
    fn causal_mask_blocks_the_future() {
        let device = Device::flex();
        let model = crate::platform::device::seeded(&device, 1, || tiny(true).init(&device));
        let a = [3i64, 7, 1, 9, 4, 4, 2, 8];
        let mut b = a;
        b[5] = 11; // change a later token
        b[7] = 0;
        let (la, lb) = (logits(&model, &a), logits(&model, &b));
        let v = 50;
        // Positions 0..5 see only tokens before the change: identical logits.
        for i in 0..5 * v {
            assert!((la[i] - lb[i]).abs() < 1e-5, "position {} changed", i / v);
        }
        // Position 5 onwards sees the change.
        let diff: f32 = (5 * v..8 * v).map(|i| (la[i] - lb[i]).abs()).sum();
        assert!(diff > 1e-3, "later logits did not change: {diff}");
    }

    #[test]
    fn bidirectional_model_sees_the_future() {
        let device = Device::flex();
        let model = crate::platform::device::seeded(&device, 1, || tiny(false).init(&device));
        let a = [3i64, 7, 1, 9];
        let b = [3i64, 7, 1, 5];
        let (la, lb) = (logits(&model, &a), logits(&model, &b));
        let diff: f32 = (0..50).map(|i| (la[i] - lb[i]).abs()).sum();
        assert!(diff > 1e-4, "position 0 did not see position 3: {diff}");
    }

    #[test]
    fn padding_is_invisible_to_the_bidirectional_model() {
        let device = Device::flex();
        let model = crate::platform::device::seeded(&device, 2, || tiny(false).init(&device));
        let run = |v: [i64; 6]| {
            let pad = Tensor::<2, Bool>::from_data(
                TensorData::new(vec![false, false, false, false, true, true], [1, 6]),
                &device,
            );
            model
                .hidden(tokens(&v, &device), Some(pad))
                .narrow(1, 0, 4)
                .into_data()
                .iter::<f32>()
                .collect::<Vec<_>>()
        };
        let a = run([3, 7, 1, 9, 0, 0]);
        let b = run([3, 7, 1, 9, 12, 30]);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5);
        }
    }

    fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
        x.into_data().iter::<f32>().collect()
    }

    /// The largest difference between two logit vectors.
    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn cached_steps_give_the_full_forward_logits_at_every_position() {
        let device = Device::flex();
        for tie in [true, false] {
            let spec = TransformerSpec {
                tie_weights: tie,
                ..tiny(true)
            };
            let model = crate::platform::device::seeded(&device, 4, || spec.init(&device));
            let seq: Vec<i64> = (0..16).map(|i| (i * 7 + 3) % 50).collect();
            let full = values(model.forward(tokens(&seq, &device))); // [1, 16, 50]
            let v = 50;
            // Prefill of 1 token and of 5 tokens, then one step per token up to max_len.
            for first in [1, 5] {
                let (logits, mut cache) = model.prefill(tokens(&seq[..first], &device)).unwrap();
                assert_eq!(cache.len(), first);
                let at = |p: usize| &full[p * v..(p + 1) * v];
                let d = max_diff(&values(logits), at(first - 1));
                assert!(d < 1e-4, "tie {tie}, prefill {first}: {d}");
                for (p, &tok) in seq.iter().enumerate().skip(first) {
                    let one = Tensor::<1, Int>::from_data(TensorData::new(vec![tok], [1]), &device);
                    let logits = model.step(one, &mut cache).unwrap();
                    assert_eq!(cache.len(), p + 1);
                    let d = max_diff(&values(logits), at(p));
                    assert!(d < 1e-4, "tie {tie}, prefill {first}, position {p}: {d}");
                }
                // The window is full: one more position is an error, not a panic.
                let one = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64], [1]), &device);
                let err = model.step(one, &mut cache).unwrap_err();
                assert!(err.to_string().contains("max_len 16"), "{err}");
                assert_eq!(cache.len(), 16, "a refused step leaves the cache as it was");
            }
        }
    }

    #[test]
    fn a_cache_holds_a_batch_of_rows() {
        let device = Device::flex();
        let model = crate::platform::device::seeded(&device, 5, || tiny(true).init(&device));
        let rows = [[3i64, 7, 1, 9, 4], [12, 0, 5, 5, 40]];
        let batch = Tensor::<2, Int>::from_data(TensorData::new(rows.concat(), [2, 5]), &device);
        let full = values(model.forward(batch.clone())); // [2, 5, 50]
        let (_, mut cache) = model.prefill(batch.narrow(1, 0, 3)).unwrap();
        for (p, (&a, &b)) in rows[0].iter().zip(&rows[1]).enumerate().skip(3) {
            let next = Tensor::<1, Int>::from_data(TensorData::new(vec![a, b], [2]), &device);
            let got = values(model.step(next, &mut cache).unwrap()); // [2, 50]
            for r in 0..2 {
                let want = &full[(r * 5 + p) * 50..(r * 5 + p + 1) * 50];
                let d = max_diff(&got[r * 50..(r + 1) * 50], want);
                assert!(d < 1e-4, "row {r}, position {p}: {d}");
            }
        }
        // A step with the wrong number of rows is refused.
        let one = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64], [1]), &device);
        let err = model.step(one, &mut cache).unwrap_err();
        assert!(err.to_string().contains("2 rows"), "{err}");
    }

    #[test]
    fn the_cache_refuses_what_it_cannot_do() {
        let device = Device::flex();
        let causal = crate::platform::device::seeded(&device, 6, || tiny(true).init(&device));
        let long: Vec<i64> = (0..17).collect();
        let err = causal.prefill(tokens(&long, &device)).unwrap_err();
        assert!(err.to_string().contains("max_len"), "{err}");
        let bert = crate::platform::device::seeded(&device, 6, || tiny(false).init(&device));
        let err = bert.prefill(tokens(&[1, 2, 3], &device)).unwrap_err();
        assert!(err.to_string().contains("causal"), "{err}");
    }

    #[test]
    fn bad_specs_are_config_errors() {
        let err = TransformerSpec {
            heads: 5,
            ..tiny(true)
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("heads"), "{err}");
        assert!(TransformerSpec::preset("tiny", 100, true).is_some());
        assert!(TransformerSpec::preset("huge", 100, true).is_none());
        let base = TransformerSpec::preset("base", 16384, true).unwrap();
        let p = base.parameters();
        assert!((90_000_000..130_000_000).contains(&p), "{p}");
    }
}
