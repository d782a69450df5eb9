//! Where activations are measured: every trainable layer's output (after its bias),
//! and in every MLP the units entering the down projection (after the activation and
//! gating), which are the down weight's input units.
//!
//! In: a graph and its layers. Out: [`Site`]s, each naming the tensor to reduce, the
//! axis that indexes its neurons and whether it is counted over tokens (`[batch, seq,
//! neurons]`, padding masked out) or over every row (`[batch, neurons]`, conv maps).

use crate::analyze::{analyze_structure, Layer, LayerKind};
use crate::ir::Graph;
use crate::runtime::tract::{Dim, ValueFact};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What a site measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteKind {
    /// The layer's output neurons (along the weight's neuron axis).
    Output,
    /// The units entering a down projection: the weight's input units (axis 0).
    Input,
}

/// One measured tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Key in the profile: the weight name, with `.input` for input units.
    pub name: String,
    pub weight: String,
    pub kind: SiteKind,
    /// The layer's structural label (`block 0 / mlp.up`).
    pub role: String,
    /// The value whose statistics are taken.
    pub tensor: String,
    /// The axis of `tensor` that indexes neurons; `None`: the last.
    pub axis: Option<usize>,
    /// The rank of `tensor`, when the axis is not the last.
    pub rank: Option<usize>,
    pub neurons: usize,
    /// Counted over real tokens (`true`) or over every row of the tensor.
    pub tokens: bool,
}

/// The sites of `layers`. `facts` (shape inference, as far as it got) tell token
/// tensors `[batch, seq, n]` from others; without them every MatMul output is taken to
/// be one.
pub fn find_sites(graph: &Graph, layers: &[Layer], facts: Option<&HashMap<String, ValueFact>>) -> Vec<Site> {
    let ids_shape = facts.and_then(|f| f.get("input_ids")).and_then(|f| f.shape.clone());
    let per_token = |tensor: &str, kind: LayerKind| match (facts, &ids_shape) {
        (Some(f), Some(ids)) => match f.get(tensor).and_then(|v| v.shape.as_ref()) {
            Some(s) => token_shaped(s, ids),
            // Inference stopped before this value (it goes on past ops it cannot analyse).
            None => kind == LayerKind::MatMul,
        },
        _ => kind == LayerKind::MatMul,
    };
    let mut sites = vec![];
    for l in layers.iter().filter(|l| l.neurons > 0) {
        let Some(tensor) = layer_output(graph, l) else { continue };
        let (axis, rank) = match l.kind {
            LayerKind::Conv => (Some(1), Some(l.shape.len())),
            _ => (None, None),
        };
        let tokens = l.kind != LayerKind::Conv && per_token(&tensor, l.kind);
        sites.push(Site {
            name: l.weight.clone(),
            weight: l.weight.clone(),
            kind: SiteKind::Output,
            role: l.role.clone(),
            tensor,
            axis,
            rank,
            neurons: l.neurons,
            tokens,
        });
    }
    for m in analyze_structure(graph, layers).mlps {
        let Some(down) = layers.iter().find(|l| l.weight == m.down) else { continue };
        let Some(tensor) = layer_node(graph, down).and_then(|n| graph.op(n)?.input.first().cloned()) else {
            continue;
        };
        sites.push(Site {
            name: input_site(&m.down),
            weight: m.down.clone(),
            kind: SiteKind::Input,
            role: down.role.clone(),
            tokens: per_token(&tensor, LayerKind::MatMul),
            tensor,
            axis: None,
            rank: None,
            neurons: m.units,
        });
    }
    sites
}

/// The profile key of a weight's input units.
pub fn input_site(weight: &str) -> String {
    format!("{weight}.input")
}

/// `[batch, seq, n]` where `[batch, seq]` is the shape of `input_ids`.
fn token_shaped(shape: &[Dim], ids: &[Dim]) -> bool {
    shape.len() == ids.len() + 1 && shape[..ids.len()] == *ids
}

/// The first MatMul, Gemm or Conv that reads the layer's weight as its weight.
fn layer_node(graph: &Graph, layer: &Layer) -> Option<crate::ir::NodeIndex> {
    let op = match layer.kind {
        LayerKind::MatMul => "MatMul",
        LayerKind::Gemm => "Gemm",
        LayerKind::Conv => "Conv",
    };
    graph
        .consumers(&layer.weight)
        .into_iter()
        .find(|(n, slot)| *slot == Some(1) && graph.op(*n).is_some_and(|o| o.op_type() == op))
        .map(|(n, _)| n)
}

/// The layer's output, after the bias `Add` of a MatMul that has one.
fn layer_output(graph: &Graph, layer: &Layer) -> Option<String> {
    let out = graph.op(layer_node(graph, layer)?)?.output.first()?.clone();
    if layer.kind != LayerKind::MatMul || layer.bias.is_none() {
        return Some(out);
    }
    let add = graph.consumers(&out).into_iter().find_map(|(n, _)| graph.op(n).filter(|o| o.op_type() == "Add"));
    Some(add.and_then(|a| a.output.first().cloned()).unwrap_or(out))
}
