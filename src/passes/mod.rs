//! Graph rewrites, one per file, each labelling the nodes it adds (`neft.pass`
//! metadata) so `neft inspect` can say which pass did what.
//!
//! Order in `neft-compile`: [`append_loss`] → [`split_rows`] (or [`mask_params`]) →
//! autodiff → optimizer → dead-node elimination.

pub mod append_loss;
pub mod mask_params;
pub mod split_rows;

use crate::ir::IrError;

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{pass}: {why}")]
    Refused { pass: &'static str, why: String },
    #[error(transparent)]
    Ir(#[from] IrError),
    #[error(transparent)]
    Onnx(#[from] crate::onnx::OnnxError),
}

pub(crate) fn refuse(pass: &'static str, why: impl Into<String>) -> PassError {
    PassError::Refused { pass, why: why.into() }
}
