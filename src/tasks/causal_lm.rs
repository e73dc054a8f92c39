//! Next-token prediction (causal language modelling, as GPT): every position of a window
//! predicts the token that follows it, seeing only the tokens before. The loss over a window of
//! t+1 tokens is the mean cross-entropy of its t predictions; validation perplexity = e^loss.
//!
//! `pretext pretrain --task causal-lm --data text:../shared/data/text/austen.txt.gz --out runs/gpt`

use crate::data::rngs::BatchRngs;

use std::sync::Arc;

use super::shared::text_tasks::{Specials, TextBatch, TextTask};
use super::{Build, TaskEntry};
use crate::error::{Error, Result};

pub const ENTRY: TaskEntry = TaskEntry {
    name: "causal-lm",
    description: "predict the next token from the ones before it (GPT-style language model)",
    build: Build::Text {
        causal: true,
        build,
    },
};

fn build(section: &toml::Value, _specials: &Specials) -> Result<Arc<dyn TextTask>> {
    if let Some((key, _)) = section.as_table().and_then(|t| t.iter().next()) {
        return Err(Error::config(
            format!("causal-lm.{key}"),
            "unknown key; causal-lm has no settings of its own",
        ));
    }
    Ok(Arc::new(CausalLm))
}

pub struct CausalLm;

/// Inputs are tokens 0..t of each window, targets tokens 1..t+1; every position counts.
pub fn make_batch(windows: &[Vec<u32>]) -> TextBatch {
    let b = windows.len();
    let t = windows.first().map_or(0, |w| w.len().saturating_sub(1));
    let mut batch = TextBatch {
        b,
        t,
        inputs: Vec::with_capacity(b * t),
        targets: Vec::with_capacity(b * t),
        weights: vec![1.0; b * t],
        draws: Vec::new(),
    };
    for w in windows {
        assert_eq!(w.len(), t + 1, "windows of one batch have one length");
        batch.inputs.extend(w[..t].iter().map(|&x| x as i64));
        batch.targets.extend(w[1..].iter().map(|&x| x as i64));
    }
    batch
}

impl TextTask for CausalLm {
    fn window_len(&self, t: usize) -> usize {
        t + 1
    }

    fn make_batch(&self, windows: &[Vec<u32>], _: &BatchRngs) -> TextBatch {
        make_batch(windows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_inputs_shifted_by_one() {
        let w = vec![vec![5u32, 6, 7, 8], vec![1, 2, 3, 4]];
        let b = make_batch(&w);
        assert_eq!((b.b, b.t), (2, 3));
        assert_eq!(b.inputs, vec![5, 6, 7, 1, 2, 3]);
        assert_eq!(b.targets, vec![6, 7, 8, 2, 3, 4]);
        assert!(b.weights.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let specials = Specials {
            vocab: 10,
            pad: 0,
            eos: 1,
            mask: 2,
            cls: 3,
            ordinary: (4..10).collect(),
        };
        let section: toml::Value = toml::from_str("x = 1").unwrap();
        let err = build(&section, &specials).err().unwrap();
        assert!(err.to_string().contains("causal-lm.x"), "{err}");
    }
}
