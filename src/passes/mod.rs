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

/// The layers a neuron set selects rows of, with those rows; a weight that is not a
/// trainable layer is refused in the name of `pass`.
pub(crate) fn selected_layers<'a>(
    pass: &'static str,
    layers: &'a [crate::analyze::Layer],
    neurons: &'a crate::types::NeuronSet,
) -> Result<Vec<(&'a crate::analyze::Layer, &'a crate::types::LayerNeurons)>, PassError> {
    neurons
        .layers
        .iter()
        .filter(|(_, sel)| !sel.rows.is_empty())
        .map(|(weight, sel)| {
            let layer = layers
                .iter()
                .find(|l| &l.weight == weight)
                .ok_or_else(|| refuse(pass, format!("'{weight}' is not a trainable layer")))?;
            Ok((layer, sel))
        })
        .collect()
}
