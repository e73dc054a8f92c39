//! Language-model pretraining configuration (`pretext pretrain --task causal-lm|masked-lm|electra`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{in_range, positive, NonFinite};
use crate::error::{Error, Result};
use crate::nn::transformer::{TransformerSpec, PRESETS};

/// Language-model pretraining configuration (`pretext pretrain --task causal-lm|masked-lm|electra`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// causal-lm, masked-lm or electra.
    pub task: String,
    /// `text:PATH` (.txt/.txt.gz files or a folder of them) or `jsonl:PATH`.
    pub data: String,
    /// The JSON field holding the text (jsonl data).
    pub text_field: String,
    /// A tokenizer.json to use; empty = train a byte-level BPE of `vocab` tokens on the corpus;
    /// `bytes` = the byte-level tokenizer (260 tokens).
    pub tokenizer: String,
    /// Vocabulary size when the tokenizer is trained here.
    pub vocab: usize,
    /// Model size preset: tiny, small or base (see `src/nn/transformer.rs`).
    pub model: String,
    /// Overrides of the preset, 0 = the preset's value: the width of the hidden states,
    pub d_model: usize,
    /// the number of blocks,
    pub layers: usize,
    /// attention heads per block (d_model must divide by it),
    pub heads: usize,
    /// and the MLP's width (0: 4 × d_model).
    pub d_ff: usize,
    /// Longest sequence the model accepts (position embeddings); 0 = the preset's.
    pub max_len: usize,
    pub dropout: f64,
    pub tie_weights: bool,
    /// Training sequence length in tokens; 0 = max_len.
    pub seq_len: usize,
    pub steps: u64,
    /// Stop at the first step after this many minutes of wall-clock time, with a checkpoint
    /// (`--resume` continues, with the budget afresh); fractions allowed; 0 = no limit.
    pub max_minutes: f64,
    /// Sequences per step.
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Whether weight decay also pulls biases and the normalisation layers' scale and shift
    /// towards 0. Off (the default, as GPT-2 and nanoGPT): only weight matrices, convolution
    /// kernels and embeddings decay (`engine::optim`); runs before December 6, 2026
    /// decayed every parameter, as `true` does.
    pub decay_biases_and_norms: bool,
    pub warmup_steps: u64,
    pub min_lr_ratio: f64,
    /// Clip the gradients to this L2 norm before each update; 0 = off. With `grad_clip_mode =
    /// "global"` (the default) the norm is that of all the gradients together, as
    /// `torch.nn.utils.clip_grad_norm_` and nanoGPT: every gradient is scaled by
    /// min(1, grad_clip / (norm + 1e-6)). Before, pretext clipped each parameter's gradient on its
    /// own (burn's clipping), now `grad_clip_mode = "per-tensor"`. Runs report the global norm
    /// (before clipping) as `grad_norm` in `metrics.jsonl`, in either mode.
    pub grad_clip: f64,
    /// `global` (the norm of all gradients together; after the sum over replicas and processes)
    /// or `per-tensor` (each parameter's gradient clipped to `grad_clip` on its own).
    pub grad_clip_mode: ClipMode,
    /// Fraction of documents (paragraphs / JSON lines) held out for validation. The default
    /// equals `transfer`'s `test_fraction` (same hash, same seed 0), so the documents a transfer
    /// tests on were never pretraining text.
    pub val_fraction: f64,
    /// Validation loss every N steps (and at the end).
    pub eval_every: u64,
    /// Validation batches per evaluation (fixed windows, the same every time).
    pub eval_batches: usize,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub seed: u64,
    /// Model replicas stepping on parts of each batch at once (see `engine::replicas`); 0 = one
    /// per core (CPU; 1 on a GPU).
    pub replicas: usize,
    /// Under MPI (`mpirun … pretext pretrain`): compare the ranks' weights every N steps (a
    /// checksum; they must be identical) and stop with an error if they differ; 0 = never.
    pub rank_check_every: u64,
    pub on_nonfinite: NonFinite,
    /// Write `record/` into the run: the initial weights (`init.safetensors`) and the offsets of
    /// every step's training windows and of the validation windows (`inputs.json`), so an outside
    /// implementation can train on exactly the same data from the same start
    /// (`bench/lm_match.py`, the PyTorch reference of the causal model).
    pub record_inputs: bool,
    /// Task sections, e.g. `[masked-lm] mask_prob = 0.15`.
    #[serde(flatten)]
    pub sections: BTreeMap<String, toml::Value>,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            task: "causal-lm".into(),
            data: String::new(),
            text_field: "text".into(),
            tokenizer: String::new(),
            vocab: 4096,
            model: "tiny".into(),
            d_model: 0,
            layers: 0,
            heads: 0,
            d_ff: 0,
            max_len: 0,
            dropout: 0.1,
            tie_weights: true,
            seq_len: 0,
            steps: 2000,
            max_minutes: 0.0,
            batch_size: 32,
            lr: 1e-3,
            weight_decay: 0.1,
            decay_biases_and_norms: false,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
            grad_clip_mode: ClipMode::Global,
            val_fraction: 0.2,
            eval_every: 200,
            eval_batches: 8,
            log_every: 10,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            seed: 0,
            replicas: 0,
            rank_check_every: 100,
            on_nonfinite: NonFinite::Stop,
            record_inputs: false,
            sections: BTreeMap::new(),
        }
    }
}

/// How `grad_clip` clips (see [`TextConfig::grad_clip`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClipMode {
    /// The norm of all the gradients together (PyTorch's `clip_grad_norm_`).
    Global,
    /// Each parameter's gradient on its own (burn's `GradientClipping::Norm`).
    PerTensor,
}

impl TextConfig {
    pub fn validate(&self) -> Result<()> {
        positive("steps", self.steps as f64)?;
        positive("batch_size", self.batch_size as f64)?;
        positive("lr", self.lr)?;
        positive("eval_every", self.eval_every as f64)?;
        positive("log_every", self.log_every as f64)?;
        positive("checkpoint_every", self.checkpoint_every as f64)?;
        positive("keep_checkpoints", self.keep_checkpoints as f64)?;
        in_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)?;
        in_range("max_minutes", self.max_minutes, 0.0, 1e9)?;
        in_range("val_fraction", self.val_fraction, 0.0, 0.5)?;
        in_range("weight_decay", self.weight_decay, 0.0, 10.0)?;
        in_range("grad_clip", self.grad_clip, 0.0, 1e6)?;
        if self.tokenizer.is_empty() && self.vocab < 260 {
            return Err(Error::config(
                "vocab",
                format!(
                    "must be at least 260 (256 bytes + 4 special tokens), found {}",
                    self.vocab
                ),
            ));
        }
        Ok(())
    }

    /// The model this config describes for a tokenizer of `vocab` tokens.
    pub fn spec(&self, vocab: usize, causal: bool) -> Result<TransformerSpec> {
        let mut spec = TransformerSpec::preset(&self.model, vocab, causal).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
            Error::config(
                "model",
                format!(
                    "unknown preset {:?}; expected one of {}",
                    self.model,
                    names.join(", ")
                ),
            )
        })?;
        let pick = |v: usize, default: usize| if v == 0 { default } else { v };
        spec.d_model = pick(self.d_model, spec.d_model);
        spec.layers = pick(self.layers, spec.layers);
        spec.heads = pick(self.heads, spec.heads);
        spec.d_ff = pick(self.d_ff, 4 * spec.d_model);
        spec.max_len = pick(self.max_len, spec.max_len);
        spec.dropout = self.dropout;
        spec.tie_weights = self.tie_weights;
        spec.validate()?;
        if self.seq_len > spec.max_len {
            return Err(Error::config(
                "seq_len",
                format!(
                    "must be at most max_len {}, found {}",
                    spec.max_len, self.seq_len
                ),
            ));
        }
        Ok(spec)
    }

    pub fn seq_len(&self, spec: &TransformerSpec) -> usize {
        if self.seq_len == 0 {
            spec.max_len
        } else {
            self.seq_len
        }
    }

    /// The per-tensor clipping norm burn's optimiser applies (0 = none) and the global one the
    /// engine applies (0 = none; the norm is measured either way).
    pub fn clip_norms(&self) -> (f64, f64) {
        match self.grad_clip_mode {
            ClipMode::Global => (0.0, self.grad_clip),
            ClipMode::PerTensor => (self.grad_clip, 0.0),
        }
    }
}
