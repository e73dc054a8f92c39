//! `pretext generate`: continue a prompt with a causal language model, one sampled token at a
//! time (temperature, top-k, a seed), each token handed to the caller as it is produced so the
//! terminal shows the text as it grows.
//!
//! A key/value cache ([`KvCache`]) makes each new token one token's work: the prompt is read once
//! ([`Transformer::prefill`]), then every token is one [`Transformer::step`] against the cached
//! keys and values. `--no-cache` ([`generate_with`] with `kv_cache: false`) recomputes the whole
//! context for every token instead; both give the same tokens.
//!
//! The context window. Positions are learned embeddings 0‥max_len, so a cache cannot slide by
//! one token (every cached key would change position). The context is the tokens since a
//! window start: the last `max_len` tokens of the prompt at first; when a new token would not fit
//! (the window holds `max_len` tokens), the window restarts on the last `max_len / 2` tokens
//! ([`window_keep`]), which the cache reads again in one prefill. So a re-read happens once per
//! `max_len / 2` tokens, and every token sees between `max_len / 2` and `max_len` tokens of
//! context, exactly as the model computes it on that context. The uncached path uses the same
//! windows, so the two paths agree token for token.

use burn::prelude::*;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::nn::transformer::{KvCache, Transformer};

#[derive(Clone, Debug)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token every time.
    pub temperature: f64,
    /// Sample among the k most likely tokens only; 0 = all.
    pub top_k: usize,
    pub seed: u64,
}

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Usage(format!(
                "--temperature must be a finite number >= 0, found {}",
                self.temperature
            )));
        }
        Ok(())
    }
}

/// Draw the next token id from one position's logits.
pub fn sample_next(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if s.temperature == 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    if s.top_k > 0 && s.top_k < logits.len() {
        order.select_nth_unstable_by(s.top_k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        order.truncate(s.top_k);
    }
    let max = order
        .iter()
        .map(|&i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| (((logits[i] - max) as f64) / s.temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        return argmax();
    }
    let mut u = rng.gen::<f64>() * total;
    for (&i, w) in order.iter().zip(&weights) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    *order.last().expect("a vocabulary is not empty") as u32
}

/// Tokens kept when the context window is full and restarts (see the module doc): half the
/// window, at least one token.
pub fn window_keep(max_len: usize) -> usize {
    (max_len / 2).max(1)
}

/// Generate `n` tokens after `prompt` (at least one token) with the key/value cache, calling
/// `on_token` with each.
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    n: usize,
    s: &Sampling,
    device: &Device,
    on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    generate_with(model, prompt, n, s, true, device, on_token)
}

/// [`generate`], with the key/value cache (`kv_cache`) or recomputing the whole context for every
/// token; both read the same context windows and give the same tokens.
pub fn generate_with(
    model: &Transformer,
    prompt: &[u32],
    n: usize,
    s: &Sampling,
    kv_cache: bool,
    device: &Device,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    s.validate()?;
    if prompt.is_empty() {
        return Err(Error::Usage("the prompt encodes to no tokens".into()));
    }
    let vocab = model.vocab();
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::Usage(format!(
            "prompt token id {bad} is outside the model's vocabulary of {vocab}"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut ids: Vec<u32> = prompt.to_vec();
    let max_len = model.max_len();
    // The context of the next token is ids[start..]; `cache` holds ids[start..ids.len() - 1]
    // (all but the newest token) once the window has been read.
    let mut start = ids.len().saturating_sub(max_len);
    let mut cache: Option<KvCache> = None;
    for _ in 0..n {
        if ids.len() - start > max_len {
            start = ids.len() - window_keep(max_len);
            cache = None;
        }
        let ctx = &ids[start..];
        let logits = match (&mut cache, kv_cache) {
            (Some(cache), true) => {
                let last = Tensor::<1, Int>::from_data(
                    TensorData::new(vec![*ctx.last().expect("not empty") as i64], [1]),
                    device,
                );
                model.step(last, cache)?
            }
            (None, true) => {
                let (logits, filled) = model.prefill(row(ctx, device))?;
                cache = Some(filled);
                logits
            }
            (_, false) => {
                let t = ctx.len();
                let hidden = model.hidden(row(ctx, device), None).narrow(1, t - 1, 1);
                model.logits(hidden).reshape([1, vocab])
            }
        };
        let logits: Vec<f32> = logits.into_data().iter::<f32>().collect();
        let next = sample_next(&logits, s, &mut rng);
        ids.push(next);
        on_token(next)?;
    }
    Ok(ids[prompt.len()..].to_vec())
}

/// Token ids → one row [1, t].
fn row(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let t = ids.len();
    Tensor::from_data(
        TensorData::new(ids.iter().map(|&v| v as i64).collect::<Vec<_>>(), [1, t]),
        device,
    )
}

/// Text of generated ids, with each end-of-document token shown as a blank line.
pub fn render(tok: &Tokenizer, ids: &[u32]) -> String {
    ids.split(|&i| i == tok.eos_id())
        .map(|part| tok.decode(part))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// `pretext generate` from the command line: the continuation streams to the terminal.
pub fn command(a: crate::commands::cli::GenerateArgs) -> Result<()> {
    use std::io::Write;
    let device = crate::platform::device::parse(&a.device)?;
    let (info, model, tok) = crate::commands::pretrain::text_run::load_run(&a.from, &device)?;
    if !info.spec.causal {
        return Err(Error::Usage(format!(
            "{}: a {} model predicts hidden tokens from both sides and cannot continue a text; generate from a causal-lm run",
            a.from.display(),
            info.task
        )));
    }
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
    };
    let prompt = tok.encode(&a.prompt);
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", a.prompt);
    let _ = out.flush();
    let mut decoder = crate::data::tokenizer::StreamDecoder::new(&tok);
    let kv_cache = !a.no_cache;
    generate_with(
        &model,
        &prompt,
        a.tokens,
        &sampling,
        kv_cache,
        &device,
        |id| {
            let piece = if id == tok.eos_id() {
                "\n\n".to_string()
            } else {
                decoder.push(id)
            };
            let _ = write!(out, "{piece}");
            let _ = out.flush();
            Ok(())
        },
    )?;
    let _ = writeln!(out, "{}", decoder.finish());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::transformer::TransformerSpec;

    #[test]
    fn greedy_takes_the_maximum_and_top_k_limits_the_choice() {
        let logits = [0.1f32, 3.0, 2.9, -1.0, 0.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let greedy = Sampling {
            temperature: 0.0,
            top_k: 0,
            seed: 0,
        };
        assert_eq!(sample_next(&logits, &greedy, &mut rng), 1);
        let top2 = Sampling {
            temperature: 1.0,
            top_k: 2,
            seed: 0,
        };
        let mut seen = [0usize; 5];
        for _ in 0..2000 {
            seen[sample_next(&logits, &top2, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[3] + seen[4], 0, "{seen:?}");
        assert!(seen[1] > 900 && seen[2] > 800, "{seen:?}");
        // Low temperature concentrates on the best (3.0 vs 2.9 at T=0.02: odds e^5 ≈ 148).
        let cold = Sampling {
            temperature: 0.02,
            top_k: 0,
            seed: 0,
        };
        let best = (0..500)
            .filter(|_| sample_next(&logits, &cold, &mut rng) == 1)
            .count();
        assert!(best > 450, "{best}");
    }

    fn spec(layers: usize) -> TransformerSpec {
        TransformerSpec {
            vocab: 64,
            d_model: 32,
            layers,
            heads: 2,
            d_ff: 64,
            max_len: 8,
            dropout: 0.0,
            tie_weights: true,
            causal: true,
        }
    }

    #[test]
    fn the_cache_gives_the_same_tokens_as_recomputing_the_context() {
        let device = Device::flex();
        let spec = spec(2);
        let model = crate::platform::device::seeded(&device, 7, || spec.init(&device));
        let prompts: [&[u32]; 3] = [&[5], &[1, 2, 3], &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11]];
        for (temperature, top_k) in [(0.0, 0), (1.0, 0), (0.8, 5), (1.5, 20)] {
            for prompt in prompts {
                for seed in [0, 1] {
                    let s = Sampling {
                        temperature,
                        top_k,
                        seed,
                    };
                    // 40 tokens through a window of 8: it restarts many times (the long prompt
                    // restarts it at the first new token).
                    let run = |kv_cache| {
                        generate_with(&model, prompt, 40, &s, kv_cache, &device, |_| Ok(()))
                            .unwrap()
                    };
                    let cached = run(true);
                    assert_eq!(cached.len(), 40);
                    assert_eq!(
                        cached,
                        run(false),
                        "T {temperature}, top-k {top_k}, prompt {prompt:?}, seed {seed}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_window_keeps_half_its_tokens_when_it_restarts() {
        assert_eq!(window_keep(1024), 512);
        assert_eq!(window_keep(3), 1);
        assert_eq!(window_keep(1), 1);
        // A window of one token: every token is predicted from the one before it alone.
        let device = Device::flex();
        let spec = TransformerSpec {
            max_len: 1,
            ..spec(1)
        };
        let model = crate::platform::device::seeded(&device, 8, || spec.init(&device));
        let s = Sampling {
            temperature: 0.0,
            top_k: 0,
            seed: 0,
        };
        let out = generate(&model, &[4, 5], 6, &s, &device, |_| Ok(())).unwrap();
        let alone = |prev: u32| generate(&model, &[prev], 1, &s, &device, |_| Ok(())).unwrap()[0];
        let mut prev = 5;
        for &t in &out {
            assert_eq!(t, alone(prev));
            prev = t;
        }
        assert_eq!(
            out,
            generate_with(&model, &[4, 5], 6, &s, false, &device, |_| Ok(())).unwrap()
        );
    }

    #[test]
    fn bad_prompts_are_errors() {
        let device = Device::flex();
        let spec = spec(1);
        let model = crate::platform::device::seeded(&device, 3, || spec.init(&device));
        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            seed: 0,
        };
        for kv_cache in [true, false] {
            let err = generate_with(&model, &[], 3, &s, kv_cache, &device, |_| Ok(())).unwrap_err();
            assert!(err.to_string().contains("no tokens"), "{err}");
            let err =
                generate_with(&model, &[1, 64], 3, &s, kv_cache, &device, |_| Ok(())).unwrap_err();
            assert!(err.to_string().contains("vocabulary of 64"), "{err}");
        }
    }

    #[test]
    fn generation_is_reproducible_by_seed() {
        let device = Device::flex();
        let spec = spec(1);
        let model = crate::platform::device::seeded(&device, 3, || spec.init(&device));
        let run = |seed| {
            let s = Sampling {
                temperature: 1.0,
                top_k: 0,
                seed,
            };
            let mut streamed = Vec::new();
            let out = generate(&model, &[1, 2, 3], 20, &s, &device, |t| {
                streamed.push(t);
                Ok(())
            })
            .unwrap();
            assert_eq!(out, streamed);
            out
        };
        // 20 tokens > max_len 8: the context window slides.
        assert_eq!(run(5).len(), 20);
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
