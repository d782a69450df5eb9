//! Running models: ONNX Runtime ([`ort`]) to execute, tract ([`tract`]) to infer
//! shapes and types without executing.

pub mod cuda_libs;
pub mod neuron_stats;
pub mod ort;
pub mod shared_weights;
pub mod tract;
pub mod train_pair;

pub use self::ort::{Ep, HostTensor, RuntimeError, Session};
