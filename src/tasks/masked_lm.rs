//! Masked-token prediction (masked language modelling, as BERT): in every window `mask_prob`
//! (15%) of the positions are chosen; of those 80% are replaced by `<mask>`, 10% by a random
//! ordinary token and 10% are left as they are. The bidirectional transformer sees the whole
//! damaged window and must restore the original token at the chosen positions only.
//!
//! `pretext pretrain --task masked-lm --data text:../shared/data/text/austen.txt.gz --out runs/bert`

use rand::seq::index::sample;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::shared::text_tasks::{Specials, TextBatch, TextTask};
use super::{Build, TaskEntry};
use crate::config::{in_range, parse_section};
use crate::data::rngs::BatchRngs;
use crate::error::{Error, Result};

pub const ENTRY: TaskEntry = TaskEntry {
    name: "masked-lm",
    description: "restore 15% hidden tokens from both sides (BERT-style masked language model)",
    build: Build::Text {
        causal: false,
        build,
    },
};

/// `[masked-lm]` settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaskedLmConfig {
    /// Fraction of positions chosen for prediction (at least one per window).
    pub mask_prob: f64,
    /// Of the chosen positions: the fraction replaced by `<mask>` ...
    pub mask_token: f64,
    /// ... and the fraction replaced by a random token; the rest keep their token.
    pub random_token: f64,
}

impl Default for MaskedLmConfig {
    fn default() -> Self {
        Self {
            mask_prob: 0.15,
            mask_token: 0.8,
            random_token: 0.1,
        }
    }
}

fn build(section: &toml::Value, specials: &Specials) -> Result<Arc<dyn TextTask>> {
    let cfg: MaskedLmConfig = parse_section("masked-lm", section.clone())?;
    in_range("masked-lm.mask_prob", cfg.mask_prob, 1e-9, 1.0)?;
    in_range("masked-lm.mask_token", cfg.mask_token, 0.0, 1.0)?;
    in_range("masked-lm.random_token", cfg.random_token, 0.0, 1.0)?;
    if cfg.mask_token + cfg.random_token > 1.0 + 1e-9 {
        return Err(Error::config(
            "masked-lm.random_token",
            format!(
                "mask_token + random_token must be at most 1, found {} + {}",
                cfg.mask_token, cfg.random_token
            ),
        ));
    }
    if specials.ordinary.is_empty() {
        return Err(Error::Usage(
            "masked-lm: the tokenizer has no ordinary tokens".into(),
        ));
    }
    Ok(Arc::new(MaskedLm {
        cfg,
        specials: specials.clone(),
    }))
}

pub struct MaskedLm {
    pub cfg: MaskedLmConfig,
    pub specials: Specials,
}

/// What happened to a chosen position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    Masked,
    Random,
    Kept,
}

impl MaskedLmConfig {
    /// Positions chosen in a window of `t` tokens: `mask_prob` of them, rounded, at least one.
    pub fn chosen(&self, t: usize) -> usize {
        ((self.mask_prob * t as f64).round() as usize).clamp(1, t.max(1))
    }
}

impl MaskedLm {
    /// Damage one window in place; returns the chosen positions and what was done to each.
    pub fn damage(&self, tokens: &mut [u32], rng: &mut ChaCha8Rng) -> Vec<(usize, Damage)> {
        let t = tokens.len();
        let k = self.cfg.chosen(t);
        let mut chosen: Vec<usize> = sample(rng, t, k).into_vec();
        chosen.sort_unstable();
        chosen
            .into_iter()
            .map(|i| {
                let u: f64 = rng.gen();
                let what = if u < self.cfg.mask_token {
                    tokens[i] = self.specials.mask;
                    Damage::Masked
                } else if u < self.cfg.mask_token + self.cfg.random_token {
                    let o = &self.specials.ordinary;
                    tokens[i] = o[rng.gen_range(0..o.len())];
                    Damage::Random
                } else {
                    Damage::Kept
                };
                (i, what)
            })
            .collect()
    }
}

impl TextTask for MaskedLm {
    fn window_len(&self, t: usize) -> usize {
        t
    }

    fn make_batch(&self, windows: &[Vec<u32>], rngs: &BatchRngs) -> TextBatch {
        TextBatch::damaged(windows, rngs, false, |damaged, rng| {
            let changed = self.damage(damaged, rng);
            changed.into_iter().map(|(i, _)| (i, 0.0)).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn specials() -> Specials {
        Specials {
            vocab: 1000,
            pad: 0,
            eos: 1,
            mask: 2,
            cls: 3,
            ordinary: (4..1000).collect(),
        }
    }

    fn task() -> MaskedLm {
        MaskedLm {
            cfg: MaskedLmConfig::default(),
            specials: specials(),
        }
    }

    #[test]
    fn masking_proportions_over_many_draws() {
        let task = task();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let t = 128;
        let (mut chosen, mut masked, mut random, mut kept) = (0usize, 0usize, 0usize, 0usize);
        let (mut changed_random, mut total) = (0usize, 0usize);
        for _ in 0..2000 {
            let original: Vec<u32> = (0..t).map(|_| rng.gen_range(4..1000)).collect();
            let mut w = original.clone();
            let d = task.damage(&mut w, &mut rng);
            total += t;
            chosen += d.len();
            for (i, what) in &d {
                match what {
                    Damage::Masked => {
                        masked += 1;
                        assert_eq!(w[*i], 2);
                    }
                    Damage::Random => {
                        random += 1;
                        assert!((4..1000).contains(&w[*i]), "random token is ordinary");
                        changed_random += usize::from(w[*i] != original[*i]);
                    }
                    Damage::Kept => {
                        kept += 1;
                        assert_eq!(w[*i], original[*i]);
                    }
                }
            }
            // Positions not chosen are untouched.
            for i in 0..t {
                if !d.iter().any(|(j, _)| *j == i) {
                    assert_eq!(w[i], original[i]);
                }
            }
        }
        let p = chosen as f64 / total as f64;
        assert!((p - 0.15).abs() < 0.005, "chosen fraction {p}");
        let c = chosen as f64;
        assert!(
            (masked as f64 / c - 0.8).abs() < 0.01,
            "masked {}",
            masked as f64 / c
        );
        assert!(
            (random as f64 / c - 0.1).abs() < 0.01,
            "random {}",
            random as f64 / c
        );
        assert!(
            (kept as f64 / c - 0.1).abs() < 0.01,
            "kept {}",
            kept as f64 / c
        );
        assert!(changed_random as f64 / random as f64 > 0.99);
    }

    #[test]
    fn batch_weights_mark_exactly_the_chosen_positions() {
        let task = task();
        let windows: Vec<Vec<u32>> = (0..4)
            .map(|r| (0..20).map(|i| 4 + (r * 20 + i) as u32).collect())
            .collect();
        let b = task.make_batch(&windows, &BatchRngs::new(1, 0));
        assert_eq!((b.b, b.t), (4, 20));
        for r in 0..4 {
            let row = r * 20..(r + 1) * 20;
            assert_eq!(b.weights[row.clone()].iter().sum::<f32>(), 3.0); // round(0.15·20)
            for i in row {
                assert_eq!(b.targets[i], windows[i / 20][i % 20] as i64);
                if b.weights[i] == 0.0 {
                    assert_eq!(b.inputs[i], b.targets[i]);
                }
            }
        }
    }

    #[test]
    fn bad_settings_name_the_key() {
        let v: toml::Value = toml::from_str("mask_prob = 1.5").unwrap();
        let err = build(&v, &specials()).err().unwrap();
        assert!(err.to_string().contains("masked-lm.mask_prob"), "{err}");
        let v: toml::Value = toml::from_str("mask_token = 0.95\nrandom_token = 0.1").unwrap();
        let err = build(&v, &specials()).err().unwrap();
        assert!(err.to_string().contains("random_token"), "{err}");
        let v: toml::Value = toml::from_str("mask_probb = 0.1").unwrap();
        let err = build(&v, &specials()).err().unwrap();
        assert!(err.to_string().contains("mask_probb"), "{err}");
    }
}
