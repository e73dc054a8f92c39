//! pretext: new file. Layer normalisation under autodiff as one op.
//!
//! burn 0.22.1 had no autodiff `layer_norm`: the default composed it from about ten
//! differentiable ops (mean, subtraction, square, mean, add, sqrt, division, scale, shift), each
//! with its own backward and broadcast reductions. Here the forward runs the same inner-backend
//! ops in the same order (the output is bit for bit the default's) and keeps `x̂` and the
//! denominator `σ = sqrt(var + ε)`; the backward is the closed form over the last dim `d`:
//!
//! ```text
//! dβ = Σ_rows dy    dγ = Σ_rows dy ⊙ x̂    g = dy ⊙ γ    dx = (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)) / σ
//! ```

use alloc::vec::Vec;
use burn_backend::tensor::FloatTensor;
use burn_backend::{Backend, TensorMetadata};
use burn_std::Shape;

use crate::Autodiff;
use crate::checkpoint::base::Checkpointer;
use crate::checkpoint::strategy::CheckpointStrategy;
use crate::grads::Gradients;
use crate::graph::NodeRef;
use crate::ops::{Backward, Ops, OpsKind};

/// x̂, σ and γ (as the forward reshaped it, `[1, …, 1, d]`).
type State<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

#[derive(Debug)]
struct LayerNormWithBeta;

#[derive(Debug)]
struct LayerNormNoBeta;

impl<B: Backend> Backward<B, 3> for LayerNormWithBeta {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, sum_rows::<B>(grad.clone()));
        }
        backward::<B>(ops.state, grad, node_x, node_gamma, grads);
    }
}

impl<B: Backend> Backward<B, 2> for LayerNormNoBeta {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        backward::<B>(ops.state, grad, node_x, node_gamma, grads);
    }
}

fn backward<B: Backend>(
    (x_hat, sigma, gamma): State<B>,
    grad: FloatTensor<B>,
    node_x: Option<NodeRef>,
    node_gamma: Option<NodeRef>,
    grads: &mut Gradients,
) {
    if let Some(node) = node_gamma {
        let dgamma = sum_rows::<B>(B::float_mul(grad.clone(), x_hat.clone()));
        grads.register::<B>(node.id, dgamma);
    }
    if let Some(node) = node_x {
        // One pass over the rows on burn-flex (the same bits), else op by op.
        let dx = match super::flex::layer_norm_backward_x::<B>(grad, &x_hat, &sigma, &gamma) {
            Ok(dx) => dx,
            Err(grad) => {
                let last = x_hat.shape().num_dims() - 1;
                let g = B::float_mul(grad, gamma);
                let mean_g = B::float_mean_dim(g.clone(), last);
                let mean_gx = B::float_mean_dim(B::float_mul(g.clone(), x_hat.clone()), last);
                let centred = B::float_sub(g, mean_g);
                let dx = B::float_sub(centred, B::float_mul(x_hat, mean_gx));
                B::float_div(dx, sigma)
            }
        };
        grads.register::<B>(node.id, dx);
    }
}

/// `[…, d]` summed over every dim but the last: `[d]`.
fn sum_rows<B: Backend>(tensor: FloatTensor<B>) -> FloatTensor<B> {
    let shape = tensor.shape();
    let d = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / d.max(1);
    let flat = B::float_reshape(tensor, Shape::new([rows, d]));
    B::float_reshape(B::float_sum_dim(flat, 0), Shape::new([d]))
}

/// `ModuleOps::layer_norm` for `Autodiff<B, C>`.
pub(crate) fn layer_norm<B: Backend, C: CheckpointStrategy>(
    tensor: FloatTensor<Autodiff<B, C>>,
    gamma: FloatTensor<Autodiff<B, C>>,
    beta: Option<FloatTensor<Autodiff<B, C>>>,
    epsilon: f64,
) -> FloatTensor<Autodiff<B, C>> {
    // The default's forward, op for op; on burn-flex as one pass over the rows (the same bits).
    let x = tensor.primitive.clone();
    let rank = x.shape().num_dims();
    let last = rank - 1;
    let d = x.shape()[last];
    let broadcast: Vec<usize> = (0..rank).map(|i| if i == last { d } else { 1 }).collect();
    let gamma_b = B::float_reshape(gamma.primitive.clone(), Shape::from(broadcast.clone()));
    let beta_b = beta
        .as_ref()
        .map(|beta| B::float_reshape(beta.primitive.clone(), Shape::from(broadcast)));
    let (output, x_hat, sigma) =
        match super::flex::layer_norm::<B>(&x, &gamma_b, beta_b.as_ref(), epsilon) {
            Some(fused) => fused,
            None => {
                let mean = B::float_mean_dim(x.clone(), last);
                let centred = B::float_sub(x, mean);
                let var = B::float_mean_dim(B::float_mul(centred.clone(), centred.clone()), last);
                let sigma = B::float_sqrt(B::float_add_scalar(var, epsilon.into()));
                let x_hat = B::float_div(centred, sigma.clone());
                let scaled = B::float_mul(x_hat.clone(), gamma_b.clone());
                let output = match beta_b {
                    Some(beta_b) => B::float_add(scaled, beta_b),
                    None => scaled,
                };
                (output, x_hat, sigma)
            }
        };
    let state = (x_hat, sigma, gamma_b);

    match beta {
        Some(beta) => {
            match LayerNormWithBeta
                .prepare::<C>([tensor.node(), gamma.node(), beta.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(state, output),
                OpsKind::UnTracked(prep) => prep.finish(output),
            }
        }
        None => match LayerNormNoBeta
            .prepare::<C>([tensor.node(), gamma.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        },
    }
}
