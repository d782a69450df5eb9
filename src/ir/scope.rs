//! Names a subgraph (an `If`/`Loop`/`Scan` body) reads from the scopes around it.

use crate::onnx::proto::{GraphProto, NodeProto};
use std::collections::BTreeSet;

/// Values used inside `node`'s graph attributes that those graphs do not define.
pub fn outer_names(node: &NodeProto) -> BTreeSet<String> {
    node.attribute.iter().flat_map(|a| a.g.iter().chain(&a.graphs)).flat_map(free_names).collect()
}

fn free_names(g: &GraphProto) -> BTreeSet<String> {
    let mut defined: BTreeSet<&str> = g.input.iter().map(|v| v.name()).collect();
    defined.extend(g.initializer.iter().map(|t| t.name()));
    defined.extend(g.sparse_initializer.iter().filter_map(|s| s.values.as_ref()).map(|t| t.name()));
    defined.extend(g.node.iter().flat_map(|n| n.output.iter().map(String::as_str)));
    let mut used: BTreeSet<String> = BTreeSet::new();
    for n in &g.node {
        used.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
        used.extend(outer_names(n));
    }
    used.extend(g.output.iter().map(|v| v.name().to_string()));
    used.retain(|u| !defined.contains(u.as_str()));
    used
}
