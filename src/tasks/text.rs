//! Text pretext tasks: the trait and registry for the language-model tasks. Like the image tasks,
//! adding one is one new file plus one line in [`TEXT_TASKS`]. A text task turns windows of
//! tokens cut from the corpus into (inputs, targets, weights); the model, loss and loop are
//! shared (`src/train/text.rs`), the transformer is `src/nn/transformer.rs`.

use rand_chacha::ChaCha8Rng;

use crate::error::Result;

pub use super::causal_lm;
pub use super::masked_lm;

/// Ids the tasks need from the tokenizer.
#[derive(Clone, Debug)]
pub struct Specials {
    pub vocab: usize,
    pub pad: u32,
    pub eos: u32,
    pub mask: u32,
    pub cls: u32,
    /// Ordinary (non-special) token ids: what the masked model's random replacement draws from.
    pub ordinary: Vec<u32>,
}

/// One batch for the model: `b` sequences of `t` tokens.
#[derive(Clone, Debug, Default)]
pub struct TextBatch {
    pub b: usize,
    pub t: usize,
    /// Model input ids, [b, t] row-major.
    pub inputs: Vec<i64>,
    /// What each position must predict, [b, t]; any valid id where `weights` is 0.
    pub targets: Vec<i64>,
    /// 1 where a position counts in the loss, 0 where not, [b, t].
    pub weights: Vec<f32>,
}

/// A text pretext task: the CPU half, "damage the text, keep the answer".
pub trait TextTask: Send + Sync {
    /// Tokens to read from the corpus for a sequence of `t` model positions.
    fn window_len(&self, t: usize) -> usize;
    /// Make a batch from windows of `window_len(t)` tokens each.
    fn make_batch(&self, windows: &[Vec<u32>], rng: &mut ChaCha8Rng) -> TextBatch;
}

/// A registered text task.
pub struct TextTaskEntry {
    pub name: &'static str,
    pub description: &'static str,
    /// Whether the transformer is causal (GPT) or bidirectional (BERT) for this task.
    pub causal: bool,
    /// Build from the task's config section (`[masked-lm]`) and the tokenizer's specials.
    pub build: fn(&toml::Value, &Specials) -> Result<Box<dyn TextTask>>,
}

/// Every text pretext task, in the order `pretext tasks` lists them.
pub const TEXT_TASKS: &[TextTaskEntry] = &[causal_lm::ENTRY, masked_lm::ENTRY];

pub fn find(name: &str) -> Option<&'static TextTaskEntry> {
    TEXT_TASKS.iter().find(|t| t.name == name)
}

pub fn names() -> Vec<&'static str> {
    TEXT_TASKS.iter().map(|t| t.name).collect()
}
