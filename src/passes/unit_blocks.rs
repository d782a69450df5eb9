//! Split rows, whole MLP units: when the same units `S` are selected in every matrix of
//! an MLP block (the up/gate columns and the down rows, `--unit mlp-unit`), the block
//! keeps its frozen computation untouched and gains two narrow copies of itself:
//!
//! ```text
//! Y = down(act(X·W_up, X·W_gate))                          frozen, every unit, as exported
//!   + act(X·W_up.rows, X·W_gate.rows) · W_down.rows        the trained units
//!   − act(X·W_up[:, S], X·W_gate[:, S]) · W_down[S, :]     the same units, frozen
//! ```
//!
//! The last two terms are `k` units wide (`k = |S|`); the correction is added as one
//! difference, so at step 0 (`.rows` equal to the frozen rows) the output is the
//! model's exactly. Against the per-layer form of [`super::split_rows`] nothing is
//! placed or picked along the `ffn` axis (no one-hot products, no masks over the full
//! width): the extra work is three `k`-wide products per copy.
//!
//! Matched by graph shape, not names: a down `MatMul` whose input is made from up/gate
//! `MatMul` outputs by elementwise ops alone (other operands single-element
//! constants), every intermediate value read only inside the block.

use super::{weight_uses, PassError};
use crate::analyze::{Layer, LayerKind};
use crate::ir::{attr, Graph, Node, NodeIndex};
use crate::onnx::make::{self, DimSpec};
use crate::onnx::DataType;
use crate::types::{LayerNeurons, Trainable};
use std::collections::{BTreeSet, HashMap};

/// One MLP block whose units `rows` are selected in all its matrices.
pub(super) struct UnitBlock<'a> {
    /// The up/gate layers with the MatMul that reads each.
    feeders: Vec<(&'a Layer, NodeIndex)>,
    down: &'a Layer,
    down_node: NodeIndex,
    /// The elementwise nodes between the feeders and the down MatMul, in graph order.
    chain: Vec<NodeIndex>,
    rows: Vec<usize>,
}

impl UnitBlock<'_> {
    /// The weights this block rewrites.
    pub(super) fn weights(&self) -> impl Iterator<Item = &str> {
        self.feeders.iter().map(|(l, _)| l.weight.as_str()).chain([self.down.weight.as_str()])
    }
}

/// The block `down` closes, when its units are selected whole; `None` leaves the
/// layers to the per-layer rewrite.
pub(super) fn find<'a>(
    pass: &'static str,
    graph: &Graph,
    selected: &[(&'a Layer, &'a LayerNeurons)],
    down: &'a Layer,
    down_sel: &LayerNeurons,
) -> Option<UnitBlock<'a>> {
    if down.kind != LayerKind::MatMul || down_sel.axis != 0 || down.axis != 1 {
        return None;
    }
    let down_node = match weight_uses(pass, graph, down, &["MatMul"]).ok()?.as_slice() {
        [n] => *n,
        _ => return None,
    };
    let h = graph.op(down_node)?.input[0].clone();
    let mut chain = BTreeSet::new();
    let mut feeders: Vec<(&Layer, NodeIndex)> = vec![];
    let mut todo = vec![h];
    let mut seen = BTreeSet::new();
    while let Some(t) = todo.pop() {
        if !seen.insert(t.clone()) {
            continue;
        }
        let (n, _) = graph.producer(&t)?;
        let op = graph.op(n)?;
        let feeder =
            (op.op_type() == "MatMul").then(|| selected.iter().find(|(l, _)| l.weight == op.input[1])).flatten();
        if let Some((layer, sel)) = feeder {
            let reads = weight_uses(pass, graph, layer, &["MatMul"]).ok()?;
            let plain = layer.kind == LayerKind::MatMul
                && layer.bias.is_none()
                && layer.axis == 1
                && sel.axis == 1
                && reads == [n];
            if !plain || sel.rows != down_sel.rows {
                return None;
            }
            feeders.push((layer, n));
        } else if crate::analyze::ELEMENTWISE.contains(&op.op_type()) && op.domain().is_empty() && op.output.len() == 1
        {
            chain.insert(n);
            todo.extend(op.input.iter().filter(|i| !single_element_constant(graph, i)).cloned());
        } else {
            return None;
        }
    }
    // Every value inside the block is read only inside it: what else reads it would
    // see the frozen units.
    let outputs: BTreeSet<&str> = graph.outputs().iter().map(|o| o.name()).collect();
    let inside = |n: NodeIndex| n == down_node || chain.contains(&n);
    for &n in chain.iter().chain(feeders.iter().map(|(_, n)| n)) {
        let y = &graph.op(n)?.output[0];
        if outputs.contains(y.as_str()) || graph.consumers(y).iter().any(|(c, _)| !inside(*c)) {
            return None;
        }
    }
    if feeders.is_empty() {
        return None;
    }
    let chain = graph.ops_in_order().into_iter().filter(|n| chain.contains(n)).collect();
    Some(UnitBlock { feeders, down, down_node, chain, rows: down_sel.rows.clone() })
}

/// A constant with one element (a scale, an exponent): it broadcasts the same way
/// over any number of units.
fn single_element_constant(graph: &Graph, name: &str) -> bool {
    let Some((idx, _)) = graph.producer(name) else { return false };
    match graph.node(idx) {
        Node::Initializer(t) => crate::onnx::element_count(&t.dims) == 1,
        Node::Op { proto, .. } if proto.op_type() == "Constant" => {
            proto.attribute.first().is_some_and(|a| match &a.t {
                Some(t) => crate::onnx::element_count(&t.dims) == 1,
                None => a.f.is_some() || a.i.is_some(),
            })
        }
        _ => false,
    }
}

/// Rewrites `block` as the module doc says; returns its parameters by weight name.
pub(super) fn rewrite(graph: &mut Graph, block: &UnitBlock) -> Result<Vec<Trainable>, PassError> {
    let k = block.rows.len() as i64;
    let selected: Vec<i64> = block.rows.iter().map(|&r| r as i64).collect();
    let mut params = vec![];
    // Each block value's two narrow copies: (trained, frozen).
    let mut copies: HashMap<String, (String, String)> = HashMap::new();
    for &(layer, node) in &block.feeders {
        let w = &layer.weight;
        let rows = add_rows_input(graph, layer, 1, k, &block.rows, &mut params)?;
        let idx = graph.const_i64s(&format!("{w}.selected"), &selected);
        let frozen_w = graph.add1("Gather", &[w, &idx], vec![attr::int("axis", 1)], &format!("{w}.frozen_units"))?;
        let proto = graph.op(node).cloned().expect("a feeder is an op");
        let (x, y) = (&proto.input[0], &proto.output[0]);
        let trained = graph.add1("MatMul", &[x, &rows], vec![], &format!("{y}.units"))?;
        let frozen = graph.add1("MatMul", &[x, &frozen_w], vec![], &format!("{y}.frozen_units"))?;
        copies.insert(y.clone(), (trained, frozen));
    }
    for &n in &block.chain {
        let proto = graph.op(n).cloned().expect("a chain node is an op");
        let y = proto.output[0].clone();
        let mut pair = vec![];
        for (which, suffix) in [(0, "units"), (1, "frozen_units")] {
            let mut copy = proto.clone();
            copy.metadata_props.clear();
            copy.name = Some(graph.fresh_name(&format!("{}.{suffix}", proto.name())));
            for input in &mut copy.input {
                if let Some(c) = copies.get(input.as_str()) {
                    *input = if which == 0 { c.0.clone() } else { c.1.clone() };
                }
            }
            let out = graph.fresh_name(&format!("{y}.{suffix}"));
            copy.output = vec![out.clone()];
            graph.add_op(copy)?;
            pair.push(out);
        }
        copies.insert(y, (pair[0].clone(), pair[1].clone()));
    }
    let down = block.down;
    let w = &down.weight;
    let rows = add_rows_input(graph, down, 0, k, &block.rows, &mut params)?;
    let idx = graph.const_i64s(&format!("{w}.selected"), &selected);
    let frozen_w = graph.add1("Gather", &[w, &idx], vec![attr::int("axis", 0)], &format!("{w}.frozen_units"))?;
    let proto = graph.op(block.down_node).cloned().expect("the down layer is an op");
    let (h, y) = (&proto.input[0], proto.output[0].clone());
    let (h_trained, h_frozen) = copies.get(h).cloned().expect("the down input is a block value");
    let trained = graph.add1("MatMul", &[&h_trained, &rows], vec![], &format!("{y}.units"))?;
    let frozen = graph.add1("MatMul", &[&h_frozen, &frozen_w], vec![], &format!("{y}.frozen_units"))?;
    let change = graph.add1("Sub", &[&trained, &frozen], vec![], &format!("{y}.change"))?;
    super::add_to_value(graph, &y, &change)?;
    Ok(params)
}

/// The graph input `<W>.rows` (`k` slices of `layer`'s weight along `axis`) and its
/// parameter record.
fn add_rows_input(
    graph: &mut Graph,
    layer: &Layer,
    axis: usize,
    k: i64,
    rows: &[usize],
    params: &mut Vec<Trainable>,
) -> Result<String, PassError> {
    let w = &layer.weight;
    let mut shape = layer.shape.clone();
    shape[axis] = k;
    let name = format!("{w}.rows");
    let dims: Vec<DimSpec> = shape.iter().map(|&d| d.into()).collect();
    graph.add_input(make::value_info(&name, DataType::Float, &dims))?;
    params.push(Trainable::rows_of(&name, shape, w, axis, rows));
    Ok(name)
}
