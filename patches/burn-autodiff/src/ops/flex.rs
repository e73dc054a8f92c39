//! New in pretext's copy (see PRETEXT.md): the fused kernels of pretext's carried burn-flex
//! (`src/ops/fused.rs` there), for the ops of this crate that would otherwise run as a chain of
//! element-wise ops and row sums on the inner backend: layer norm's forward and input gradient,
//! attention's softmax backward, and GELU with the erf term its backward reuses. They apply
//! where the inner backend's float tensors are `burn_flex::FlexTensor`s (checked by type at run
//! time); every function here returns `None` / gives its argument back otherwise, and the caller
//! keeps its op-by-op path. The kernels give the same bits as the ops they replace.

use alloc::boxed::Box;
use core::any::Any;

use burn_backend::{Backend, tensor::FloatTensor};
use burn_flex::FlexTensor;

fn as_flex<B: Backend>(t: &FloatTensor<B>) -> Option<&FlexTensor> {
    (t as &dyn Any).downcast_ref::<FlexTensor>()
}

fn into_flex<B: Backend>(t: FloatTensor<B>) -> Result<FlexTensor, FloatTensor<B>> {
    let boxed: Box<dyn Any> = Box::new(t);
    match boxed.downcast::<FlexTensor>() {
        Ok(f) => Ok(*f),
        Err(other) => Err(*other
            .downcast::<FloatTensor<B>>()
            .expect("the value boxed just above")),
    }
}

/// Only called with tensors that came out of `into_flex`/`as_flex` for the same `B`.
fn from_flex<B: Backend>(t: FlexTensor) -> FloatTensor<B> {
    let boxed: Box<dyn Any> = Box::new(t);
    *boxed
        .downcast::<FloatTensor<B>>()
        .expect("B's float tensors are FlexTensors")
}

/// `probs ⊙ (dp − rowsum(dp ⊙ probs))` over the last dim (`burn_flex::softmax_backward_f32`),
/// or `Err(dp)`.
pub(crate) fn softmax_backward<B: Backend>(
    probs: &FloatTensor<B>,
    dp: FloatTensor<B>,
) -> Result<FloatTensor<B>, FloatTensor<B>> {
    let Some(p) = as_flex::<B>(probs) else {
        return Err(dp);
    };
    let dp = into_flex::<B>(dp)?;
    burn_flex::softmax_backward_f32(p, dp)
        .map(from_flex::<B>)
        .map_err(from_flex::<B>)
}

/// Layer norm's forward as one pass over the rows (`burn_flex::layer_norm_f32`): `(output,
/// x̂, σ)`, or `None`.
pub(crate) fn layer_norm<B: Backend>(
    x: &FloatTensor<B>,
    gamma: &FloatTensor<B>,
    beta: Option<&FloatTensor<B>>,
    epsilon: f64,
) -> Option<(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>)> {
    let beta = match beta {
        Some(b) => Some(as_flex::<B>(b)?),
        None => None,
    };
    let (y, x_hat, sigma) =
        burn_flex::layer_norm_f32(as_flex::<B>(x)?, as_flex::<B>(gamma)?, beta, epsilon)?;
    Some((
        from_flex::<B>(y),
        from_flex::<B>(x_hat),
        from_flex::<B>(sigma),
    ))
}

/// Layer norm's input gradient (`burn_flex::layer_norm_backward_x_f32`), or `Err(grad)`.
pub(crate) fn layer_norm_backward_x<B: Backend>(
    grad: FloatTensor<B>,
    x_hat: &FloatTensor<B>,
    sigma: &FloatTensor<B>,
    gamma: &FloatTensor<B>,
) -> Result<FloatTensor<B>, FloatTensor<B>> {
    let (Some(x_hat), Some(sigma), Some(gamma)) = (
        as_flex::<B>(x_hat),
        as_flex::<B>(sigma),
        as_flex::<B>(gamma),
    ) else {
        return Err(grad);
    };
    let grad = into_flex::<B>(grad)?;
    burn_flex::layer_norm_backward_x_f32(grad, x_hat, sigma, gamma)
        .map(from_flex::<B>)
        .map_err(from_flex::<B>)
}

/// GELU's output and the erf term its backward can reuse (`burn_flex::gelu_with_erf_f32`).
pub(crate) fn gelu_with_erf<B: Backend>(
    x: &FloatTensor<B>,
) -> Option<(FloatTensor<B>, FloatTensor<B>)> {
    let (y, e) = burn_flex::gelu_with_erf_f32(as_flex::<B>(x)?)?;
    Some((from_flex::<B>(y), from_flex::<B>(e)))
}

/// GELU's input gradient from the saved erf term (`burn_flex::gelu_backward_with_erf_f32`), or
/// `Err(grad)`.
pub(crate) fn gelu_backward_with_erf<B: Backend>(
    x: &FloatTensor<B>,
    erf: &FloatTensor<B>,
    grad: FloatTensor<B>,
) -> Result<FloatTensor<B>, FloatTensor<B>> {
    let (Some(x), Some(erf)) = (as_flex::<B>(x), as_flex::<B>(erf)) else {
        return Err(grad);
    };
    let grad = into_flex::<B>(grad)?;
    burn_flex::gelu_backward_with_erf_f32(x, erf, grad)
        .map(from_flex::<B>)
        .map_err(from_flex::<B>)
}
