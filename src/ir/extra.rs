//! Small edits passes need beyond adding nodes: replacing an op's proto in place.

use super::graph::{Graph, IrError, Node, Wire};
use super::scope::outer_names;
use crate::onnx::proto::NodeProto;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;

impl Graph {
    /// Replaces op `idx` by `proto`, which must define the same outputs (its readers
    /// stay wired); the inputs are wired afresh from `proto`. Used to rewrite an op's
    /// inputs or attributes, e.g. moving an attribute into an input when raising the opset.
    pub fn replace_op(&mut self, idx: NodeIndex, proto: NodeProto) -> Result<(), IrError> {
        let old_outputs = match self.g.node_weight(idx) {
            Some(Node::Op { proto: old, .. }) => old.output.clone(),
            _ => return Err(IrError::Misuse(format!("{} is not an op", self.describe(idx)))),
        };
        if old_outputs != proto.output {
            return Err(IrError::Misuse(format!(
                "replacing {} must keep its outputs {:?}, not {:?}",
                self.describe(idx),
                old_outputs,
                proto.output
            )));
        }
        let explicit = proto.input.iter().enumerate().filter(|(_, n)| !n.is_empty()).map(|(s, n)| (n.clone(), Some(s)));
        let implicit = outer_names(&proto).into_iter().map(|n| (n, None));
        let mut wires = vec![];
        for (name, to_slot) in explicit.chain(implicit) {
            let Some((src, from_slot)) = self.producer(&name) else {
                return Err(IrError::Dangling { node: self.describe(idx), name });
            };
            wires.push((src, Wire { name, from_slot, to_slot }));
        }
        let old: Vec<_> = self.g.edges_directed(idx, Direction::Incoming).map(|e| e.id()).collect();
        for e in old {
            self.g.remove_edge(e);
        }
        for (src, wire) in wires {
            self.g.add_edge(src, idx, wire);
        }
        if let Some(Node::Op { proto: slot, .. }) = self.g.node_weight_mut(idx) {
            *slot = proto;
        }
        Ok(())
    }
}
