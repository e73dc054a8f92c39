// pretext: changed file (`leaky_relu` as one op; GELU keeps the erf term of its forward for its
// backward on burn-flex; see PRETEXT.md).
use core::marker::PhantomData;

use crate::{
    Autodiff,
    checkpoint::{
        base::Checkpointer, retro_forward::RetroForward, state::BackwardStates,
        strategy::CheckpointStrategy,
    },
    grads::Gradients,
    graph::NodeId,
    ops::{Backward, Ops, OpsKind, unary},
    retro_unary, retro_unary_scalar,
};
use burn_backend::{
    Backend, Scalar, TensorMetadata, get_or_init_device_settings,
    ops::{ActivationOps, FloatTensorOps},
    tensor::FloatTensor,
};

impl<B: Backend, C: CheckpointStrategy> ActivationOps<Autodiff<B, C>> for Autodiff<B, C> {
    fn gelu(tensor: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Gelu;

        retro_unary!(RetroGelu, B::gelu);

        impl<B: Backend> Backward<B, 1> for Gelu {
            /// pretext: the input, and the erf term of the forward where burn-flex computed it
            /// (`ops/flex.rs`), so the backward does not compute erf again (the same bits).
            type State = (NodeId, Option<FloatTensor<B>>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let (input_id, erf) = ops.state;
                let input = checkpointer.retrieve_node_output(input_id);

                unary::<B, _>(ops.parents, ops.node, grads, |grad| match erf {
                    Some(erf) => super::flex::gelu_backward_with_erf::<B>(&input, &erf, grad)
                        .unwrap_or_else(|grad| B::gelu_backward(input, grad)),
                    None => B::gelu_backward(input, grad),
                });
            }
        }

        match Gelu
            .prepare::<C>([tensor.node()])
            .memory_bound()
            .retro_forward(RetroGelu::<B>::new(tensor.node.id))
            .parents([&tensor])
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&tensor);
                match super::flex::gelu_with_erf::<B>(&tensor.primitive) {
                    Some((output, erf)) => prep.finish((state, Some(erf)), output),
                    None => prep.finish((state, None), B::gelu(tensor.primitive.clone())),
                }
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gelu(tensor.primitive)),
        }
    }

    /// pretext: one op instead of the trait default's three tracked ones (`x < 0`, `x · slope`,
    /// `mask_where`), whose backward made two masked copies of the gradient, a negation of the
    /// mask, a product and a sum. Forward: the inner backend's `leaky_relu` (the same values as
    /// the default: `x` where `x ≥ 0` or NaN, `slope · x` below zero). Backward, the same bits as
    /// the default's two paths summed: `0 + slope · g` below zero, `g + 0` elsewhere (the `+ 0`
    /// turns a `−0` into `+0`, as the default's sum does); a negative slope keeps the default.
    fn leaky_relu(tensor: FloatTensor<Self>, negative_slope: Scalar) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LeakyRelu;

        retro_unary_scalar!(RetroLeakyRelu, B::leaky_relu);

        impl<B: Backend> Backward<B, 1> for LeakyRelu {
            type State = (NodeId, Scalar);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let (input_id, slope) = ops.state;
                let input = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(input_id);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    let bool_dtype = get_or_init_device_settings::<B>(&input.device()).bool_dtype;
                    let below = B::float_lower_elem(input, 0f32.into(), bool_dtype);
                    let scaled = B::float_mul_scalar(grad.clone(), slope);
                    let picked = B::float_mask_where(grad, below, scaled);
                    B::float_add_scalar(picked, 0f32.into())
                });
            }
        }

        let slope: f64 = negative_slope.elem();
        if !(slope >= 0.0) {
            let bool_dtype = get_or_init_device_settings::<Self>(&tensor.device()).bool_dtype;
            let mask = Self::float_lower_elem(tensor.clone(), 0f32.into(), bool_dtype);
            let scaled = Self::float_mul_scalar(tensor.clone(), negative_slope);
            return Self::float_mask_where(tensor, mask, scaled);
        }

        match LeakyRelu
            .prepare::<C>([tensor.node()])
            .memory_bound()
            .retro_forward(RetroLeakyRelu::<B>::new(tensor.node.id, negative_slope))
            .parents([&tensor])
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&tensor), negative_slope);
                prep.finish(state, B::leaky_relu(tensor.primitive, negative_slope))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::leaky_relu(tensor.primitive, negative_slope))
            }
        }
    }

    fn relu(tensor: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Relu;

        retro_unary!(RetroRelu, B::relu);

        impl<B: Backend> Backward<B, 1> for Relu {
            type State = NodeId;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let state = checkpointer.retrieve_node_output(ops.state);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::relu_backward(state, grad)
                });
            }
        }

        match Relu
            .prepare::<C>([tensor.node()])
            .memory_bound()
            .retro_forward(RetroRelu::<B>::new(tensor.node.id))
            .parents([&tensor])
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&tensor);
                prep.finish(state, B::relu(tensor.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::relu(tensor.primitive)),
        }
    }

    fn sigmoid(tensor: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Sigmoid;

        retro_unary!(RetroSigmoid, B::sigmoid);

        impl<B: Backend> Backward<B, 1> for Sigmoid {
            type State = NodeId;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let input = checkpointer.retrieve_node_output(ops.state);
                let output = B::sigmoid(input);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::sigmoid_backward(output, grad)
                });
            }
        }

        match Sigmoid
            .prepare::<C>([tensor.node()])
            .memory_bound()
            .retro_forward(RetroSigmoid::<B>::new(tensor.node.id))
            .parents([&tensor])
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&tensor);
                prep.finish(state, B::sigmoid(tensor.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::sigmoid(tensor.primitive)),
        }
    }

    fn log_sigmoid(tensor: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct LogSigmoid;

        retro_unary!(RetroLogSigmoid, B::log_sigmoid);

        impl<B: Backend> Backward<B, 1> for LogSigmoid {
            type State = NodeId;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let input = checkpointer.retrieve_node_output(ops.state);

                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::log_sigmoid_backward(input, grad)
                });
            }
        }

        match LogSigmoid
            .prepare::<C>([tensor.node()])
            .memory_bound()
            .retro_forward(RetroLogSigmoid::<B>::new(tensor.node.id))
            .parents([&tensor])
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&tensor);
                prep.finish(state, B::log_sigmoid(tensor.primitive.clone()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::log_sigmoid(tensor.primitive)),
        }
    }
}
