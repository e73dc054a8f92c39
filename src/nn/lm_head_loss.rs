//! A language model's vocabulary head and its softmax cross-entropy as one op.
//!
//! The head's logits (`[rows, vocab]`: 4,096 tokens × 4,096 ids is 67 MB in the bench's model)
//! are computed outside autodiff, and pretext's burn-flex kernel
//! (`patches/burn-flex/src/ops/cross_entropy.rs`) turns them, in three in-cache passes per row,
//! into the loss, the arg-max check and the gradient `(softmax − onehot) · weight / n` written over
//! the logits. Two matmuls give the gradients of the head's input and parameters, as autodiff's
//! own matmul backward would, and autodiff receives them through a surrogate
//! `S = Σ hidden·dhidden + Σ W·dW (+ Σ b·db)` with the gradients held constant: `∂S/∂hidden` is
//! `dhidden` exactly. The loss tensor is `S − detach(S) + value`: its value is the loss, its
//! gradient the cross-entropy's. burn's `log_softmax` chain instead made about twenty full-size
//! buffers per step (six ops forward, their backward, the gather's scatter).
//!
//! Callers pass only the rows that are scored (`lm_loss` gathers the masked positions of a
//! masked-LM batch first), so the head's three matmuls run on those rows alone.
//!
//! The kernel runs on the host for every device: on a GPU backend the logits travel to the host
//! and the gradient back once per step (correct, tested on lavapipe by `tests/gpu.rs`; a GPU
//! kernel would spare the round trip).

use burn::prelude::*;
use burn::tensor::TensorData;

/// The vocabulary head's parameters (tracked, as the model holds them).
// Made once per step and borrowed: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Head {
    /// Tied to the token embedding: `[vocab, d]`; logits = hidden · Wᵀ.
    Tied(Tensor<2>),
    /// Its own linear layer: weight `[d, vocab]`, bias `[vocab]`; logits = hidden · W + b.
    Linear {
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    },
}

/// The mean weighted cross-entropy of the scored rows.
pub struct HeadLoss {
    /// `[1]`, equal to `value`; with `grad`, backward gives the head's input and parameters the
    /// cross-entropy's gradients. Without `grad`, a constant.
    pub loss: Tensor<1>,
    /// Σ weight · (logsumexp − logit[target]) / max(Σ weight, 1), summed in f64 in row order.
    pub value: f32,
    /// Σ weight over the rows whose first arg-max is the target.
    pub correct: f32,
}

/// Cross-entropy of `head(hidden)` (`hidden`: `[rows, d]`) against `targets` (ids below the
/// vocabulary size) with per-row `weights`. `grad`: build the differentiable loss (training);
/// without it only the value and the arg-max count are computed (validation).
pub fn head_cross_entropy(
    head: &Head,
    hidden: Tensor<2>,
    targets: &[i64],
    weights: &[f32],
    grad: bool,
) -> HeadLoss {
    HeadLogits::new(head, hidden).cross_entropy(targets, weights, grad)
}

/// The head's logits for some hidden rows, computed once outside autodiff: readable (ELECTRA's
/// generator samples from them), then turned into the cross-entropy in place.
pub struct HeadLogits<'a> {
    head: &'a Head,
    /// The rows, tracked: the loss's gradient reaches them.
    hidden: Tensor<2>,
    /// `[rows, vocab]`, row-major f32.
    data: TensorData,
    vocab: usize,
}

impl<'a> HeadLogits<'a> {
    pub fn new(head: &'a Head, hidden: Tensor<2>) -> Self {
        let h = hidden.clone().detach();
        let logits = match head {
            Head::Tied(w) => h.matmul(w.clone().detach().transpose()),
            Head::Linear { weight, bias } => {
                let z = h.matmul(weight.clone().detach());
                match bias {
                    Some(b) => z + b.clone().detach().unsqueeze::<2>(),
                    None => z,
                }
            }
        };
        let vocab = logits.dims()[1];
        HeadLogits {
            head,
            hidden,
            data: logits.into_data().convert::<f32>(),
            vocab,
        }
    }

    /// Row `i`'s logits.
    pub fn row(&self, i: usize) -> &[f32] {
        let all = self.data.as_slice::<f32>().expect("f32 logits");
        &all[i * self.vocab..(i + 1) * self.vocab]
    }

    /// The weighted mean cross-entropy against `targets` (one per row).
    pub fn cross_entropy(mut self, targets: &[i64], weights: &[f32], grad: bool) -> HeadLoss {
        let [rows, _] = self.hidden.dims();
        assert_eq!(targets.len(), rows, "one target per row");
        assert_eq!(weights.len(), rows, "one weight per row");
        let (vocab, device) = (self.vocab, self.hidden.device());
        let n = weights.iter().sum::<f32>().max(1.0);
        let ids: Vec<usize> = targets
            .iter()
            .map(|&t| usize::try_from(t).expect("token ids are not negative"))
            .collect();
        let per_row = burn_flex::cross_entropy_grad_f32(
            self.data.as_mut_slice::<f32>().expect("f32 logits"),
            vocab,
            &ids,
            weights,
            1.0 / n,
        );
        let (mut sum, mut correct) = (0f64, 0f64);
        for (r, &w) in per_row.iter().zip(weights) {
            sum += w as f64 * r.loss as f64;
            correct += if r.correct { w as f64 } else { 0.0 };
        }
        let value = (sum / n as f64) as f32;
        let constant = Tensor::<1>::from_data(TensorData::new(vec![value], [1]), &device);
        if !grad || rows == 0 {
            return HeadLoss {
                loss: constant,
                value,
                correct: correct as f32,
            };
        }
        let (hidden, h) = (self.hidden.clone(), self.hidden.detach());
        let g = Tensor::<2>::from_data(self.data, &device);
        let surrogate = match self.head {
            Head::Tied(w) => {
                let dh = g.clone().matmul(w.clone().detach()); // [rows, d]
                let dw = g.transpose().matmul(h); // [vocab, d]
                (hidden * dh).sum() + (w.clone() * dw).sum()
            }
            Head::Linear { weight, bias } => {
                let dh = g.clone().matmul(weight.clone().detach().transpose());
                let dw = h.transpose().matmul(g.clone()); // [d, vocab]
                let s = (hidden * dh).sum() + (weight.clone() * dw).sum();
                match bias {
                    Some(b) => s + (b.clone() * g.sum_dim(0).reshape([vocab])).sum(),
                    None => s,
                }
            }
        };
        HeadLoss {
            loss: surrogate.clone() - surrogate.detach() + constant,
            value,
            correct: correct as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::Distribution;

    fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: fused {x}, burn's log_softmax {y}"
            );
        }
    }

    /// Against burn's own `log_softmax` + gather under autodiff: the value, the arg-max count and
    /// the gradients of the hidden states and every head parameter, for a tied head and a linear
    /// one with a bias; weights of 0, 1 and 2, a vocabulary that is not a multiple of the kernel's
    /// 16 lanes, logits large enough that an unshifted exp would overflow.
    #[test]
    fn value_and_gradients_match_burns_log_softmax() {
        let device = Device::flex().autodiff();
        let (rows, d, vocab) = (7, 6, 37);
        let targets: Vec<i64> = vec![0, 36, 5, 5, 17, 2, 30];
        let weights: Vec<f32> = vec![1.0, 0.0, 2.0, 1.0, 1.0, 0.0, 1.0];
        let n = weights.iter().sum::<f32>();
        for tied in [true, false] {
            let hidden = Tensor::<2>::random([rows, d], Distribution::Normal(0.0, 6.0), &device)
                .require_grad();
            let head = if tied {
                Head::Tied(
                    Tensor::<2>::random([vocab, d], Distribution::Normal(0.0, 4.0), &device)
                        .require_grad(),
                )
            } else {
                let w = Tensor::<2>::random([d, vocab], Distribution::Normal(0.0, 4.0), &device)
                    .require_grad();
                let b = Tensor::<1>::random([vocab], Distribution::Normal(0.0, 1.0), &device)
                    .require_grad();
                Head::Linear {
                    weight: w,
                    bias: Some(b),
                }
            };
            let fused = head_cross_entropy(&head, hidden.clone(), &targets, &weights, true);
            let fused_grads = fused.loss.clone().backward();

            let logits = match &head {
                Head::Tied(w) => hidden.clone().matmul(w.clone().transpose()),
                Head::Linear { weight, bias } => {
                    hidden.clone().matmul(weight.clone()) + bias.clone().unwrap().unsqueeze::<2>()
                }
            };
            let t =
                Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [rows, 1]), &device);
            let w = Tensor::<1>::from_data(TensorData::new(weights.clone(), [rows]), &device);
            let picked = log_softmax(logits.clone(), 1).gather(1, t).reshape([rows]);
            let reference = (picked * w).sum().neg().div_scalar(n);
            let top = to_vec(logits.clone().detach().abs().max())[0];
            assert!(top > 89.0, "logits up to {top}: exp would not overflow");
            let arg = to_vec(logits.detach().argmax(1).reshape([rows]).float());
            let correct: f32 = arg
                .iter()
                .zip(&targets)
                .zip(&weights)
                .map(|((&a, &t), &w)| if a as i64 == t { w } else { 0.0 })
                .sum();
            let reference_grads = reference.clone().backward();

            let what = if tied { "tied" } else { "linear" };
            let value = to_vec(reference)[0];
            assert!(value > 1.0, "{what}: a loss worth testing ({value})");
            close(what, &[fused.value], &[value], 1e-5);
            close(what, &to_vec(fused.loss), &[value], 1e-5);
            assert_eq!(fused.correct, correct, "{what}: arg-max count");
            close(
                &format!("{what} d hidden"),
                &to_vec(hidden.grad(&fused_grads).unwrap()),
                &to_vec(hidden.grad(&reference_grads).unwrap()),
                1e-5,
            );
            match &head {
                Head::Tied(w) => close(
                    "tied dW",
                    &to_vec(w.grad(&fused_grads).unwrap()),
                    &to_vec(w.grad(&reference_grads).unwrap()),
                    1e-5,
                ),
                Head::Linear { weight, bias } => {
                    close(
                        "linear dW",
                        &to_vec(weight.grad(&fused_grads).unwrap()),
                        &to_vec(weight.grad(&reference_grads).unwrap()),
                        1e-5,
                    );
                    let b = bias.as_ref().unwrap();
                    close(
                        "linear db",
                        &to_vec(b.grad(&fused_grads).unwrap()),
                        &to_vec(b.grad(&reference_grads).unwrap()),
                        1e-5,
                    );
                }
            }
        }
    }

    /// Without `grad` the loss is a constant with the same value.
    #[test]
    fn validation_value_equals_the_training_value() {
        let device = Device::flex().autodiff();
        let hidden = Tensor::<2>::random([4, 5], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([9, 5], Distribution::Normal(0.0, 1.0), &device);
        let targets = [1, 8, 0, 4];
        let weights = [1.0, 1.0, 0.0, 1.0];
        let a = head_cross_entropy(
            &Head::Tied(w.clone()),
            hidden.clone(),
            &targets,
            &weights,
            true,
        );
        let b = head_cross_entropy(&Head::Tied(w), hidden, &targets, &weights, false);
        assert_eq!(a.value.to_bits(), b.value.to_bits());
        assert_eq!(a.correct, b.correct);
        assert_eq!(to_vec(b.loss), vec![a.value]);
    }
}
