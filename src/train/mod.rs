//! Running compiled artifacts: one optimizer step or one evaluation per call.

mod session;

pub use session::{StepOutput, TrainSession};
