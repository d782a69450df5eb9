//! Split rows: only the selected neurons of a weight are parameters.
//!
//! In: a graph, its layers, and the selected rows of some of them. Out: for each
//! selected weight `W` a new graph input `<W>.rows` holding only those rows (and
//! `<bias>.rows` for the matching bias elements); the frozen weight stays an
//! initializer, never a graph output, so it cannot change, and nothing of its size is
//! written per step.
//!
//! - Output neurons (columns of a MatMul weight, rows of a Gemm `transB` weight,
//!   output channels of a Conv): the layer runs twice, on the frozen weight and on
//!   `W.rows` alone, and the selected neurons' outputs replace the frozen ones:
//!   `Y = Y_frozen ⊙ keep + Y_selected · P` on a last axis (`keep` a 0/1 vector, `P`
//!   the one-hot `[k, out]` placement: exact, and a product where ONNX Runtime would
//!   gather or scatter element by element), `Gather(Concat(Y_frozen, Y_selected),
//!   order)` over Conv channels. The weight gradient then is `Xᵀ · dY[.., S]`, k/out
//!   of a full one, from the ordinary rules.
//! - Input rows of a MatMul weight (the down projection's part of an MLP unit):
//!   `Y = X·W + (X·Q) · (W.rows − W[S, :])`, `Q` the one-hot `[in, k]` pick of the
//!   selected inputs; `W[S, :]` is a constant gather that ONNX Runtime folds once.
//!
//! The one-hot constants cost `k × out` floats per layer (51 MB for 6% of SmolLM2's
//! MLP units), read-only beside the frozen weights. MLP blocks whose units are
//! selected whole skip both forms: see [`super::unit_blocks`].

use super::{refuse, unit_blocks, PassError};
use crate::analyze::{Layer, LayerKind};
use crate::ir::{attr, Graph, NodeIndex};
use crate::onnx::make::{self, DimSpec};
use crate::onnx::DataType;
use crate::types::NeuronSet;
pub use crate::types::Trainable;
use std::collections::HashMap;

const PASS: &str = "split_rows";

/// Rewrites every selected layer; returns the new parameters (weights, then biases).
pub fn split_rows(graph: &mut Graph, layers: &[Layer], neurons: &NeuronSet) -> Result<Vec<Trainable>, PassError> {
    graph.set_pass(Some(PASS));
    let selected = super::selected_layers(PASS, layers, neurons)?;
    // MLP blocks whose units are selected whole first; the parameters keep the order
    // of the selection either way.
    let mut by_weight: HashMap<String, Trainable> = HashMap::new();
    for (down, sel) in &selected {
        if let Some(block) = unit_blocks::find(PASS, graph, &selected, down, sel) {
            if block.weights().all(|w| !by_weight.contains_key(w)) {
                by_weight.extend(unit_blocks::rewrite(graph, &block)?.into_iter().map(|t| (t.source.clone(), t)));
            }
        }
    }
    let mut out = vec![];
    for (layer, sel) in selected {
        if let Some(t) = by_weight.remove(&layer.weight) {
            out.push(t);
        } else if sel.axis != layer.axis {
            out.push(split_input_rows(graph, layer, &sel.rows)?);
        } else {
            out.extend(split_layer(graph, layer, &sel.rows)?);
        }
    }
    graph.set_pass(None);
    Ok(out)
}

fn split_layer(graph: &mut Graph, layer: &Layer, rows: &[usize]) -> Result<Vec<Trainable>, PassError> {
    let w = &layer.weight;
    let users = super::weight_uses(PASS, graph, layer, &["MatMul", "Gemm", "Conv"])?;
    let k = rows.len() as i64;
    let mut shape = layer.shape.clone();
    shape[layer.axis] = k;
    let rows_name = format!("{w}.rows");
    let dims: Vec<DimSpec> = shape.iter().map(|&d| d.into()).collect();
    graph.add_input(make::value_info(&rows_name, DataType::Float, &dims))?;
    let mut params = vec![Trainable::rows_of(&rows_name, shape, w, layer.axis, rows)];

    let bias_rows = match &layer.bias {
        Some(b) => {
            let name = format!("{b}.rows");
            graph.add_input(make::value_info(&name, DataType::Float, &[k.into()]))?;
            params.push(Trainable::rows_of(&name, vec![k], b, 0, rows));
            Some(name)
        }
        None => None,
    };
    let selected: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    for node in users {
        rewrite_use(graph, node, layer, &rows_name, bias_rows.as_deref(), &selected)?;
    }
    // A MatMul's bias lives in the Add after it: scatter the trainable elements in.
    if let (LayerKind::MatMul, Some(b), Some(b_rows)) = (layer.kind, &layer.bias, &bias_rows) {
        let idx = graph.const_i64s(&format!("{b}.selected"), &selected);
        let merged =
            graph.add1("ScatterElements", &[b, &idx, b_rows], vec![attr::int("axis", 0)], &format!("{b}.merged"))?;
        let readers: Vec<NodeIndex> = graph
            .consumers(b)
            .into_iter()
            .map(|(n, _)| n)
            .filter(|&n| graph.op(n).is_some_and(|o| o.op_type() == "Add"))
            .collect();
        for n in readers {
            let slot = graph.op(n).and_then(|o| o.input.iter().position(|i| i == b));
            if let Some(slot) = slot {
                graph.set_input(n, slot, &merged)?;
            }
        }
    }
    Ok(params)
}

/// Rows of a MatMul weight `W [in, out]` along its input axis (the down projection's
/// part of an MLP unit): each use `Y = X·W` gains `X[.., S] · (W.rows − W[S, :])`.
fn split_input_rows(graph: &mut Graph, layer: &Layer, rows: &[usize]) -> Result<Trainable, PassError> {
    let w = layer.weight.clone();
    let users = super::weight_uses(PASS, graph, layer, &["MatMul", "Gemm"])?;
    // The rewrite below adds to `X·W`, X the first input: a Gemm must compute that.
    for &node in &users {
        let op = graph.op(node).expect("a layer use is an op");
        let plain = op.attribute.iter().all(|a| match a.name() {
            "transA" | "transB" => a.i() == 0,
            "alpha" => a.f() == 1.0,
            _ => true,
        });
        if !plain {
            return Err(refuse(
                PASS,
                format!(
                    "{}: input rows of '{w}' can be split only where the layer computes X·W (no transA, transB or \
                     alpha)",
                    graph.describe(node)
                ),
            ));
        }
    }
    let mut shape = layer.shape.clone();
    shape[0] = rows.len() as i64;
    let rows_name = format!("{w}.rows");
    let dims: Vec<DimSpec> = shape.iter().map(|&d| d.into()).collect();
    graph.add_input(make::value_info(&rows_name, DataType::Float, &dims))?;
    let selected: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let idx = graph.const_i64s(&format!("{w}.selected"), &selected);
    let original = graph.add1("Gather", &[&w, &idx], vec![attr::int("axis", 0)], &format!("{w}.original_rows"))?;
    let delta = graph.add1("Sub", &[&rows_name, &original], vec![], &format!("{w}.delta"))?;
    let pick = one_hot(&selected, layer.shape[0] as usize, true);
    let pick = f32_constant(graph, &format!("{w}.pick"), &[layer.shape[0], selected.len() as i64], &pick)?;
    for node in users {
        let proto = graph.op(node).cloned().expect("a layer use is an op");
        let (x, y) = (proto.input[0].clone(), proto.output[0].clone());
        // X[.., S] as a product with a one-hot [in, k] matrix (exact), since ONNX
        // Runtime gathers the last axis element by element.
        let x_sel = graph.add1("MatMul", &[&x, &pick], vec![], &format!("{x}.selected"))?;
        let change = graph.add1("MatMul", &[&x_sel, &delta], vec![], &format!("{y}.change"))?;
        super::add_to_value(graph, &y, &change)?;
    }
    Ok(Trainable::rows_of(&rows_name, shape, &w, 0, rows))
}

/// `Y = op(X, W, ...)` becomes the frozen output with the selected neurons' outputs
/// `op(X, W.rows, ...)` in their place (see the module doc for the two forms).
fn rewrite_use(
    graph: &mut Graph,
    node: NodeIndex,
    layer: &Layer,
    rows: &str,
    bias_rows: Option<&str>,
    selected: &[i64],
) -> Result<(), PassError> {
    let proto = graph.op(node).cloned().expect("a layer use is an op");
    let y = proto.output[0].clone();
    let mut part = proto.clone();
    part.name = Some(graph.fresh_name(&format!("{}.selected", proto.name())));
    part.metadata_props.clear();
    part.input[1] = rows.to_string();
    match layer.kind {
        LayerKind::MatMul => {}
        LayerKind::Gemm | LayerKind::Conv => {
            if layer.kind == LayerKind::Conv {
                let group = proto.attribute.iter().find(|a| a.name() == "group").map(|a| a.i()).unwrap_or(1);
                if group != 1 {
                    return Err(refuse(PASS, format!("{}: Conv with group={group}: selecting output channels of a grouped convolution is not supported", graph.describe(node))));
                }
            }
            part.input.truncate(2);
            if let Some(b) = bias_rows {
                part.input.push(b.to_string());
            }
        }
    }
    let y_sel = graph.fresh_name(&format!("{y}.selected"));
    part.output = vec![y_sel.clone()];
    graph.add_op(part)?;
    // The merged value takes over the name `y`, so graph outputs keep their names.
    let frozen = graph.fresh_name(&format!("{y}.frozen"));
    graph.rename_value(&y, &frozen)?;
    let out = layer.shape[layer.axis];
    let w = &layer.weight;
    let (merged, reads_frozen) = if layer.kind == LayerKind::Conv {
        // Channels are whole feature maps: Gather moves them as blocks.
        // order[j] = j for a frozen channel, out + (its position in S) for a selected one.
        let mut order: Vec<i64> = (0..out).collect();
        for (pos, &j) in selected.iter().enumerate() {
            order[j as usize] = out + pos as i64;
        }
        let order = graph.const_i64s(&format!("{w}.order"), &order);
        let both = graph.add1("Concat", &[&frozen, &y_sel], vec![attr::int("axis", 1)], &format!("{y}.both"))?;
        let gather = make::node("Gather", &[&both, &order], &[&y], vec![attr::int("axis", 1)]);
        (graph.add_op(gather)?, graph.producer(&both).expect("just made").0)
    } else {
        // The last axis: ONNX Runtime gathers or scatters it element by element, so
        // the selected columns are placed by a product with a one-hot [k, out] matrix
        // (exact: each output adds one value to zeros) and the frozen ones kept by a
        // 0/1 mask.
        let mut keep = vec![1.0f32; out as usize];
        for &j in selected {
            keep[j as usize] = 0.0;
        }
        let keep = f32_constant(graph, &format!("{w}.keep"), &[out], &keep)?;
        let place = one_hot(selected, out as usize, false);
        let place = f32_constant(graph, &format!("{w}.place"), &[selected.len() as i64, out], &place)?;
        let kept = graph.add1("Mul", &[&frozen, &keep], vec![], &format!("{y}.kept"))?;
        let placed = graph.add1("MatMul", &[&y_sel, &place], vec![], &format!("{y}.placed"))?;
        let sum = graph.add_op(make::node("Add", &[&kept, &placed], &[&y], vec![]))?;
        (sum, graph.producer(&kept).expect("just made").0)
    };
    graph.replace_uses(&frozen, &y, &[merged, reads_frozen])?;
    Ok(())
}

/// A new FLOAT initializer.
fn f32_constant(graph: &mut Graph, hint: &str, dims: &[i64], values: &[f32]) -> Result<String, PassError> {
    let name = graph.fresh_name(hint);
    graph.add_initializer(make::tensor_f32(&name, dims, values))?;
    Ok(name)
}

/// The one-hot matrix of `selected` among `n`: `[k, n]` with a 1 at (i, S_i), or its
/// transpose `[n, k]`.
fn one_hot(selected: &[i64], n: usize, transposed: bool) -> Vec<f32> {
    let k = selected.len();
    let mut m = vec![0.0f32; k * n];
    for (i, &j) in selected.iter().enumerate() {
        let at = if transposed { j as usize * k + i } else { i * n + j as usize };
        m[at] = 1.0;
    }
    m
}
