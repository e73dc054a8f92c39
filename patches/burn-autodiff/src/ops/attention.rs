//! pretext: new file. Scaled dot-product attention under autodiff as one op.
//!
//! burn 0.22.1 ran `attention_fallback` on the autodiff backend: about ten differentiable ops
//! (product, scale, masks, max, subtraction, exp, sum, division, product), each keeping its
//! inputs and making its own gradient buffers over the `[batch, heads, t_q, t_k]` scores. Here
//! the forward runs on the inner backend (the query scaled before the product, the backend's
//! own softmax, which is one fused pass on burn-flex) and keeps the probabilities `P`; the
//! backward is four products and one softmax-backward pass:
//!
//! ```text
//! dV = Pᵀ·dO    dP = dO·Vᵀ    dS = P ⊙ (dP − rowsum(dP ⊙ P))    dQ = dS·K·scale    dK = dSᵀ·(Q·scale)
//! ```
//!
//! Masked positions have `P = 0`, so their score gradient is 0, as through `mask_fill`. Rows
//! that a boolean mask (or a causal mask with fewer keys than queries) can leave with no key
//! take the fallback's NaN-safe softmax (all-zero probabilities); other rows the backend's
//! softmax. An additive bias or a softcap takes burn's fallback, as before.

use burn_backend::ops::AttentionModuleOptions;
use burn_backend::ops::attention::attention_fallback;
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::{Backend, TensorMetadata, get_or_init_device_settings};
use burn_std::Shape;

use crate::Autodiff;
use crate::checkpoint::base::Checkpointer;
use crate::checkpoint::strategy::CheckpointStrategy;
use crate::grads::Gradients;
use crate::ops::{Backward, Ops, OpsKind};

#[derive(Debug)]
struct Attention;

impl<B: Backend> Backward<B, 3> for Attention {
    /// The scaled query, the key, the value, the probabilities and the scale.
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        f64,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (q_scaled, key, value, probs, scale) = ops.state;

        if let Some(node) = node_v {
            let dv = B::float_matmul(B::float_transpose(probs.clone()), grad.clone());
            grads.register::<B>(node.id, dv);
        }
        if node_q.is_none() && node_k.is_none() {
            return;
        }
        let dp = B::float_matmul(grad, B::float_transpose(value));
        // One pass over the rows on burn-flex (the same bits), else op by op.
        let ds = match super::flex::softmax_backward::<B>(&probs, dp) {
            Ok(ds) => ds,
            Err(dp) => {
                let row = B::float_sum_dim(B::float_mul(dp.clone(), probs.clone()), 3);
                B::float_mul(probs, B::float_sub(dp, row))
            }
        };
        if let Some(node) = node_q {
            let dq = B::float_matmul(ds.clone(), key);
            grads.register::<B>(node.id, B::float_mul_scalar(dq, scale.into()));
        }
        if let Some(node) = node_k {
            let dk = B::float_matmul(B::float_transpose(ds), q_scaled);
            grads.register::<B>(node.id, dk);
        }
    }
}

/// `ModuleOps::attention` for `Autodiff<B, C>`.
pub(crate) fn attention<B: Backend, C: CheckpointStrategy>(
    query: FloatTensor<Autodiff<B, C>>,
    key: FloatTensor<Autodiff<B, C>>,
    value: FloatTensor<Autodiff<B, C>>,
    mask: Option<BoolTensor<Autodiff<B, C>>>,
    attn_bias: Option<FloatTensor<Autodiff<B, C>>>,
    options: AttentionModuleOptions,
) -> FloatTensor<Autodiff<B, C>> {
    if attn_bias.is_some() || options.softcap.is_some() {
        return attention_fallback::<Autodiff<B, C>>(query, key, value, mask, attn_bias, options);
    }
    let head_dim = query.primitive.shape().dims::<4>()[3];
    let scale = options
        .scale
        .unwrap_or_else(|| 1.0 / (head_dim as f64).sqrt());
    let q_scaled = B::float_mul_scalar(query.primitive.clone(), scale.into());
    let probs = probabilities::<B>(
        q_scaled.clone(),
        key.primitive.clone(),
        mask,
        options.is_causal,
    );
    let output = B::float_matmul(probs.clone(), value.primitive.clone());

    match Attention
        .prepare::<C>([query.node(), key.node(), value.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (q_scaled, key.primitive, value.primitive, probs, scale),
            output,
        ),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// softmax(Q_scaled·Kᵀ) over the keys, masked positions at probability 0.
fn probabilities<B: Backend>(
    q_scaled: FloatTensor<B>,
    key: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
) -> FloatTensor<B> {
    let scores = B::float_matmul(q_scaled, B::float_transpose(key));
    let [_, _, t_q, t_k] = scores.shape().dims::<4>();
    let mut row_may_be_empty = mask.is_some();
    let scores = match mask {
        Some(mask) => B::float_mask_fill(scores, mask, f32::NEG_INFINITY.into()),
        None => scores,
    };
    let scores = if causal {
        row_may_be_empty |= t_k < t_q;
        let mask = causal_mask::<B>(&scores);
        B::float_mask_fill(scores, mask, f32::NEG_INFINITY.into())
    } else {
        scores
    };
    if row_may_be_empty {
        nan_safe_softmax::<B>(scores)
    } else {
        B::softmax(scores, 3)
    }
}

/// burn's fallback softmax over the last dim: a row of -inf gives zeros, not NaN.
fn nan_safe_softmax<B: Backend>(scores: FloatTensor<B>) -> FloatTensor<B> {
    let finfo = scores.dtype().finfo().expect("float tensor");
    let max = B::float_clamp_min(B::float_max_dim(scores.clone(), 3), finfo.min.into());
    let numerator = B::float_exp(B::float_sub(scores, max));
    let sum = B::float_sum_dim(numerator.clone(), 3);
    let sum = B::float_clamp_min(sum, finfo.min_positive.into());
    B::float_div(numerator, sum)
}

/// `true` above the diagonal aligned at the bottom-right corner (key col > query row + t_k −
/// t_q), as burn's fallback builds it, expanded to the scores' shape.
fn causal_mask<B: Backend>(scores: &FloatTensor<B>) -> BoolTensor<B> {
    let device = scores.device();
    let [batch, heads, t_q, t_k] = scores.shape().dims::<4>();
    let settings = get_or_init_device_settings::<B>(&device);
    let offset = t_k as i64 - t_q as i64;
    let rows = B::int_reshape(
        B::int_arange(0..t_q as i64, &device, settings.int_dtype),
        Shape::new([t_q, 1]),
    );
    let cols = B::int_reshape(
        B::int_arange(0..t_k as i64, &device, settings.int_dtype),
        Shape::new([1, t_k]),
    );
    let above = B::int_lower(
        B::int_add_scalar(rows, offset.into()),
        cols,
        settings.bool_dtype,
    );
    let above = B::bool_reshape(above, Shape::new([1, 1, t_q, t_k]));
    B::bool_expand(above, Shape::new([batch, heads, t_q, t_k]))
}
