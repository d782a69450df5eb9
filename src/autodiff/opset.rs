//! Raising a graph to the opset the backward graph needs.
//!
//! Between opsets 13 and 18 only two changes alter what an existing node means:
//! the reductions other than `ReduceSum` moved `axes` from an attribute to an input
//! (18), and `RoiAlign`'s default coordinate mode changed (16). The first is
//! rewritten here; the second, and anything older than 13, is an error.

use super::{AutodiffError, MIN_OPSET};
use crate::ir::Graph;
use crate::onnx::make;

const AXES_TO_INPUT: &[&str] = &[
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
];

/// Rewrites `graph` (written for `from`) so that it means the same at the returned
/// opset, `max(from, 18)`.
pub(crate) fn raise(graph: &mut Graph, from: i64) -> Result<i64, AutodiffError> {
    if from >= MIN_OPSET {
        return Ok(from);
    }
    let err = |why: String| AutodiffError::Opset { target: MIN_OPSET, why };
    if from < 13 {
        return Err(err(format!(
            "the model imports default-domain opset {from}, older than 13; convert it first \
             (onnx.version_converter.convert_version(model, 18))"
        )));
    }
    for idx in graph.ops_in_order() {
        let node = graph.op(idx).expect("an op").clone();
        if node.op_type() == "RoiAlign" && from < 16 {
            return Err(err(format!(
                "node {}: RoiAlign's default coordinate mode changed in opset 16",
                graph.describe(idx)
            )));
        }
        if !AXES_TO_INPUT.contains(&node.op_type()) || !node.domain().is_empty() {
            continue;
        }
        let Some(pos) = node.attribute.iter().position(|a| a.name() == "axes") else { continue };
        let mut new = node.clone();
        let axes = new.attribute.remove(pos).ints;
        let name = graph.fresh_name(&format!("{}.axes", node.output.first().map(String::as_str).unwrap_or("reduce")));
        graph.add_initializer(make::tensor_i64(&name, &[axes.len() as i64], &axes))?;
        new.input.truncate(1);
        new.input.push(name);
        graph.replace_op(idx, new)?;
    }
    Ok(MIN_OPSET)
}
