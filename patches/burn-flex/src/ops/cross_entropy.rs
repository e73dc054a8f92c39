//! New in pretext's copy (see PRETEXT.md): softmax cross-entropy of f32 logit rows against
//! target ids, with its gradient, in three passes over each row (max; `exp(x − max)` and its
//! sum; the scaled softmax minus the one-hot), the gradient written over the logits.
//!
//! burn's `log_softmax` under autodiff is six tensor ops forward (max, subtract, exp, sum, log,
//! subtract) and as many backward, each a fresh full-size buffer: for a language model's
//! vocabulary head (4,096 tokens × 4,096 ids, 67 MB) about twenty passes over memory. Here a row
//! (16 KB) stays in the first-level cache between its passes, so the logits are read once and the
//! gradient written once. The caller builds the gradients of the head's inputs from it (pretext's
//! `src/nn/lm_head_loss.rs`).
//!
//! Same bits on every vector width and thread count: sums run in 16 fixed lanes combined in a
//! fixed order, `exp` is `fast_math::exp_f32` (no fused multiply-adds), rows are independent and
//! the per-row results are returned in row order for the caller to sum.

#[cfg(not(feature = "std"))]
#[allow(unused_imports)]
use num_traits::Float;

use alloc::vec::Vec;

use super::fast_math::{exp_f32, widest_simd};

const LANES: usize = 16;

/// One row's result: `lse − x[target]` (the row's loss before its weight) and whether the first
/// arg-max of the row is the target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowLoss {
    pub loss: f32,
    pub correct: bool,
}

/// Rows below which the kernel stays on the calling thread.
#[cfg(feature = "rayon")]
const PARALLEL_MIN_ELEMS: usize = 64 * 1024;

/// Softmax cross-entropy of every row of `logits` (`[rows, vocab]`, row-major) against
/// `targets[row]`, overwriting each row with its gradient `scale · weights[row] · (softmax − onehot)`.
/// A row of weight 0 is zeroed without being computed (its `RowLoss` is `{0, false}`).
///
/// Panics where the lengths disagree or a target is not below `vocab`.
pub fn cross_entropy_grad_f32(
    logits: &mut [f32],
    vocab: usize,
    targets: &[usize],
    weights: &[f32],
    scale: f32,
) -> Vec<RowLoss> {
    assert!(vocab > 0, "cross_entropy: empty vocabulary");
    let rows = targets.len();
    assert_eq!(logits.len(), rows * vocab, "cross_entropy: logits are not [rows, vocab]");
    assert_eq!(weights.len(), rows, "cross_entropy: one weight per row");
    if let Some(&t) = targets.iter().find(|&&t| t >= vocab) {
        panic!("cross_entropy: target {t} is not below the vocabulary size {vocab}");
    }
    let one = |(row, (&target, &w)): (&mut [f32], (&usize, &f32))| {
        if w == 0.0 {
            row.fill(0.0);
            return RowLoss { loss: 0.0, correct: false };
        }
        row_grad(row, target, w * scale)
    };
    #[cfg(feature = "rayon")]
    if logits.len() >= PARALLEL_MIN_ELEMS && rows > 1 && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        return logits
            .par_chunks_mut(vocab)
            .zip(targets.par_iter().zip(weights.par_iter()))
            .map(one)
            .collect();
    }
    logits
        .chunks_mut(vocab)
        .zip(targets.iter().zip(weights.iter()))
        .map(one)
        .collect()
}

/// One row: its loss and arg-max check, then the row overwritten by `g · (softmax − onehot)`.
fn row_grad(row: &mut [f32], target: usize, g: f32) -> RowLoss {
    let max = row_max(row);
    let correct = row.iter().position(|&x| x == max) == Some(target);
    let x_t = row[target];
    let sum = exp_shifted_sum(row, max);
    let loss = (max + sum.ln()) - x_t;
    scale_in_place(row, g / sum);
    row[target] -= g;
    RowLoss { loss, correct }
}

/// `row` replaced by its softmax: `exp(x − max) / Σ exp(x − max)` (the f32 `softmax` op's row
/// kernel, activation.rs).
pub(crate) fn softmax_row_in_place(row: &mut [f32]) {
    let max = row_max(row);
    let sum = exp_shifted_sum(row, max);
    scale_in_place(row, 1.0 / sum);
}

/// The largest element (NaNs are passed over; they reach the sum, and the loss, in the next pass).
fn row_max(row: &[f32]) -> f32 {
    widest_simd!((row: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &x) in lanes.iter_mut().zip(c) {
                *m = if x > *m { x } else { *m };
            }
        }
        let mut max = f32::NEG_INFINITY;
        for &x in lanes.iter().chain(chunks.remainder()) {
            max = if x > max { x } else { max };
        }
        max
    })
}

/// `row[i] = exp(row[i] − max)` in place; returns their sum (16 lanes, then in lane order).
fn exp_shifted_sum(row: &mut [f32], max: f32) -> f32 {
    widest_simd!((row: &mut [f32], max: f32) -> f32 {
        let mut lanes = [0.0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, x) in lanes.iter_mut().zip(c.iter_mut()) {
                *x = exp_f32(*x - max);
                *s += *x;
            }
        }
        let mut sum = 0.0f32;
        for s in lanes {
            sum += s;
        }
        for x in chunks.into_remainder() {
            *x = exp_f32(*x - max);
            sum += *x;
        }
        sum
    })
}

fn scale_in_place(row: &mut [f32], k: f32) {
    widest_simd!((row: &mut [f32], k: f32) {
        for x in row.iter_mut() {
            *x *= k;
        }
    })
}
