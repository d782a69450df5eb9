//! Training compiled artifacts, and what a run leaves behind.
//!
//! In: an artifact folder from `neft-compile` and JSONL data. Out: checkpoints,
//! `metrics.jsonl`, `loss.svg` in that folder, and a summary.
//!
//! - [`session`]: one step or one evaluation at a time with host-side state (tests,
//!   small tools);
//! - [`device`]: the same steps with the state resident on the execution provider's
//!   device (double-buffered through an IoBinding on CUDA, handed from one plain run
//!   to the next on the CPU; what `neft train` runs);
//! - [`data`], [`run`], [`schedule`], [`checkpoint`], [`metrics`], [`plot`],
//!   [`progress`]: the training loop and its inputs and outputs; [`cli`]: `neft train|export|merge`.

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod metrics;
pub mod plot;
mod progress;
pub mod run;
pub mod schedule;
mod session;

pub use device::DeviceTrainer;
pub use run::{train, Interrupted, Length, Summary, TrainOptions};
pub use session::{StepOutput, TrainSession};
