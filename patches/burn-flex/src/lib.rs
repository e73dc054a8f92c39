#![cfg_attr(not(feature = "std"), no_std)]
// pretext patch: re-exports the synchronised batch norm hook (`set_batch_norm_sync`).

//! # burn-flex
//!
//! A fast, portable CPU backend for [Burn](https://github.com/tracel-ai/burn).
//!
//! ## Features
//!
//! - Pure Rust (no C dependencies)
//! - f16/bf16 support
//! - SIMD acceleration via macerator (NEON, AVX2/AVX-512/SSE, SIMD128, scalar fallback)
//! - Zero-copy tensor views
//! - Thread-safe by design
//!
//! ## Usage
//!
//! ```ignore
//! use burn_flex::Flex;
//! use burn::tensor::Tensor;
//!
//! let tensor: Tensor<Flex, 2> = Tensor::from_data([[1.0, 2.0], [3.0, 4.0]], &Default::default());
//! ```

extern crate alloc;

#[cfg(all(not(target_has_atomic = "ptr"), not(feature = "critical-section")))]
compile_error!(
    "This target lacks atomic CAS support. Enable the `critical-section` feature: \
     burn-flex = { ..., features = [\"critical-section\"] }"
);

mod backend;
mod layout;
mod qtensor;
mod strided_index;
mod tensor;
mod zip;

#[doc(hidden)]
pub mod ops;

#[doc(hidden)]
pub mod simd;

pub use backend::{Flex, FlexDevice};
pub use layout::Layout;
pub use qtensor::FlexQTensor;
pub use tensor::FlexTensor;
// pretext patch: synchronised batch norm (see `ops/batch_norm.rs`).
pub use ops::batch_norm::{BatchNormSync, set_batch_norm_sync};
// pretext patch: fused softmax cross-entropy with its gradient (see `ops/cross_entropy.rs`).
pub use ops::cross_entropy::{RowLoss, cross_entropy_grad_f32};
pub use ops::fused::{
    gelu_backward_with_erf_f32, gelu_with_erf_f32, layer_norm_backward_x_f32, layer_norm_f32,
    softmax_backward_f32,
};
