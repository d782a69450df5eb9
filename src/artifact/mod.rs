//! The artifact directory `neft-compile` writes and `neft train` reads:
//!
//! ```text
//! OUT/train_step.onnx    forward + loss + backward + optimizer, one step per run
//! OUT/eval.onnx          forward + loss, trainable tensors as inputs
//! OUT/weights.bin        frozen weights, written once, shared by both graphs
//! OUT/state.safetensors  trainable tensors, optimizer moments, step
//! OUT/plan.json          what was compiled, from what, with which options
//! ```

mod plan;
mod state;
mod write;

pub use plan::{hex_digest, Counts, ModelLayer, Plan, SourceInfo, PLAN_FORMAT};
pub use state::{State, StateError, StateTensor};
pub use write::{write_artifacts, ArtifactError, Graphs};
