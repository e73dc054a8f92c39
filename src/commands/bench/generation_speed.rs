//! `pretext bench --generate`: how fast `pretext generate` makes tokens, with the key/value cache
//! and recomputing the whole context for every token (`--no-cache`), at 128 and 1,024 tokens of
//! context.
//!
//! The model is the language-model rows' transformer ([`super::text_spec`]: the `tiny` preset,
//! 4 layers × 128, 4 heads, a 4,096-token vocabulary) with random weights and `max_len` raised to
//! hold the longest prompt and the tokens after it, so the window never restarts. For each
//! context length C a prompt of C random tokens is continued by [`TOKENS`] tokens through
//! [`generate_with`] (temperature 0.8, top-k 40, seed 0, as `generate`'s defaults), once per path.
//! The first token's time includes reading the prompt; the per-token rate is the median time
//! between the later tokens (each sees C to C + [`TOKENS`] tokens of context). Both paths must
//! give the same tokens.

use std::time::Instant;

use rand::{Rng, SeedableRng};

use crate::commands::generate::{generate_with, Sampling};
use crate::error::{Error, Result};

/// Context lengths measured (prompt tokens).
pub const CONTEXTS: &[usize] = &[128, 1024];

/// Tokens generated per measurement.
pub const TOKENS: usize = 32;

pub struct GenerateBenchOptions {
    pub device: String,
    /// Compute threads (burn-flex's rayon pool); 0 = one per core.
    pub threads: usize,
}

/// One path at one context length.
struct Timing {
    tokens: Vec<u32>,
    first_ms: f64,
    /// Median time between consecutive later tokens.
    step_ms: f64,
    total_s: f64,
}

pub fn run(opts: &GenerateBenchOptions) -> Result<()> {
    if opts.threads > 0 {
        // Fails only when the pool already exists (then RAYON_NUM_THREADS decided its size).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .build_global();
    }
    let device = crate::platform::device::parse(&opts.device)?;
    let longest = CONTEXTS.iter().max().copied().unwrap_or(1);
    let spec = crate::nn::transformer::TransformerSpec {
        max_len: longest + TOKENS,
        dropout: 0.0,
        ..super::text_spec(true)
    };
    let model = crate::platform::device::seeded(&device, 0, || spec.init(&device));
    let sampling = Sampling {
        temperature: 0.8,
        top_k: 40,
        seed: 0,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let prompt: Vec<u32> = (0..longest)
        .map(|_| rng.gen_range(4..spec.vocab as u32))
        .collect();
    let time = |context: usize, kv_cache: bool| -> Result<Timing> {
        let prompt = &prompt[..context];
        let t0 = Instant::now();
        let mut at = Vec::with_capacity(TOKENS);
        let tokens = generate_with(&model, prompt, TOKENS, &sampling, kv_cache, &device, |_| {
            at.push(t0.elapsed().as_secs_f64());
            Ok(())
        })?;
        let mut steps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        steps.sort_by(f64::total_cmp);
        Ok(Timing {
            tokens,
            first_ms: at.first().copied().unwrap_or(f64::NAN) * 1e3,
            step_ms: steps.get(steps.len() / 2).copied().unwrap_or(f64::NAN) * 1e3,
            total_s: at.last().copied().unwrap_or(f64::NAN),
        })
    };
    eprintln!(
        "bench --generate: tiny transformer ({} parameters, vocabulary {}, max_len {}), {TOKENS} \
         tokens after prompts of {CONTEXTS:?} tokens, on {} with {} compute threads",
        spec.parameters(),
        spec.vocab,
        spec.max_len,
        opts.device,
        rayon::current_num_threads()
    );
    // Warm-up: allocations and the thread pool.
    for kv_cache in [true, false] {
        generate_with(
            &model,
            &prompt[..8],
            4,
            &sampling,
            kv_cache,
            &device,
            |_| Ok(()),
        )?;
    }
    let mut table = String::from(
        "| context | path | first token (ms) | per token (ms, median) | tokens/s | speed-up | \
         end to end (tokens/s) |\n|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for &context in CONTEXTS {
        let slow = time(context, false)?;
        let fast = time(context, true)?;
        if slow.tokens != fast.tokens {
            return Err(Error::Usage(format!(
                "bench --generate: at context {context} the cached and recomputing paths gave \
                 different tokens"
            )));
        }
        for (name, t) in [
            ("recompute (--no-cache)", &slow),
            ("key/value cache", &fast),
        ] {
            table += &format!(
                "| {context} | {name} | {:.1} | {:.2} | {:.1} | {:.1}× | {:.1} |\n",
                t.first_ms,
                t.step_ms,
                1e3 / t.step_ms,
                slow.step_ms / t.step_ms,
                TOKENS as f64 / t.total_s
            );
        }
        eprintln!(
            "  context {context}: recompute {:.1} tokens/s, cache {:.1} tokens/s",
            1e3 / slow.step_ms,
            1e3 / fast.step_ms
        );
    }
    println!("{table}");
    Ok(())
}
