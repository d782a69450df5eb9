//! Graph rewrites, one per file, each labelling the nodes it adds (`neft.pass`
//! metadata) so `neft inspect` can say which pass did what.
//!
//! Order in `neft-compile`: [`append_loss`] → [`split_rows`] (whole MLP units through
//! `unit_blocks`; or [`mask_params`], or [`lora`]) → autodiff → optimizer → dead-node
//! elimination.

pub mod append_loss;
pub mod lora;
pub mod mask_params;
pub mod split_rows;
mod unit_blocks;

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

/// Checks that `layer`'s weight can be rewritten by `pass`: an initializer, FLOAT,
/// read only as the weight input (input 1) of nodes whose op is in `ops`, which it
/// returns.
pub(crate) fn weight_uses(
    pass: &'static str,
    graph: &crate::ir::Graph,
    layer: &crate::analyze::Layer,
    ops: &[&str],
) -> Result<Vec<crate::ir::NodeIndex>, PassError> {
    use crate::onnx::DataType;
    let w = &layer.weight;
    if layer.source != crate::analyze::WeightSource::Initializer {
        return Err(refuse(
            pass,
            format!("weight '{w}' is made by a {:?} node; only initializer weights can be rewritten", layer.source),
        ));
    }
    let dtype = graph.initializer(w).map(|t| t.data_type()).unwrap_or_default();
    if dtype != DataType::Float as i32 {
        return Err(refuse(
            pass,
            format!("weight '{w}' is {}; only FLOAT weights can be trained", crate::onnx::dtype_name(dtype)),
        ));
    }
    let users = graph.consumers(w);
    for (node, slot) in &users {
        let op = graph.op(*node).map(|n| n.op_type()).unwrap_or_default();
        if slot != &Some(1) || !ops.contains(&op) {
            return Err(refuse(
                pass,
                format!(
                    "weight '{w}' is also read by {} (input {slot:?}); only {} weight inputs can be rewritten",
                    graph.describe(*node),
                    ops.join("/")
                ),
            ));
        }
    }
    Ok(users.into_iter().map(|(n, _)| n).collect())
}

/// Every reader of `y` (graph outputs included) reads `y + change` instead: the sum
/// takes over the name `y`, the old value gets a fresh `<y>.frozen`.
pub(crate) fn add_to_value(graph: &mut crate::ir::Graph, y: &str, change: &str) -> Result<(), PassError> {
    let frozen = graph.fresh_name(&format!("{y}.frozen"));
    graph.rename_value(y, &frozen)?;
    let sum = graph.add_op(crate::onnx::make::node("Add", &[&frozen, change], &[y], vec![]))?;
    graph.replace_uses(&frozen, y, &[sum])?;
    Ok(())
}
