//! Topological order that keeps the source order: Kahn's algorithm always taking the
//! ready op that came first in the source graph (new ops come after all old ones), so
//! an unchanged graph comes out in exactly its original order.

use super::graph::{Graph, IrError, Node};
use petgraph::stable_graph::NodeIndex;
use petgraph::Direction;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

impl Graph {
    /// All nodes (sources first, then ops) in topological order; an error names the
    /// nodes on a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeIndex>, IrError> {
        let key = |i: NodeIndex| match self.node(i) {
            Node::Op { .. } => (1u8, self.op_order(i), i.index()),
            _ => (0, 0, i.index()),
        };
        let mut pending: HashMap<NodeIndex, usize> = HashMap::new();
        let mut ready = BinaryHeap::new();
        for i in self.g.node_indices() {
            let n = self.g.neighbors_directed(i, Direction::Incoming).count();
            if n == 0 {
                ready.push(Reverse((key(i), i)));
            } else {
                pending.insert(i, n);
            }
        }
        let mut order = Vec::with_capacity(self.g.node_count());
        while let Some(Reverse((_, i))) = ready.pop() {
            order.push(i);
            // neighbors_directed yields a target once per edge, matching the in-degree count.
            for j in self.g.neighbors_directed(i, Direction::Outgoing) {
                let left = pending.get_mut(&j).expect("every consumer counted");
                *left -= 1;
                if *left == 0 {
                    pending.remove(&j);
                    ready.push(Reverse((key(j), j)));
                }
            }
        }
        if pending.is_empty() {
            return Ok(order);
        }
        let mut stuck: Vec<NodeIndex> = pending.into_keys().collect();
        stuck.sort_by_key(|&i| key(i));
        let mut nodes: Vec<String> = stuck.iter().take(6).map(|&i| self.describe(i)).collect();
        if stuck.len() > 6 {
            nodes.push(format!("and {} more", stuck.len() - 6));
        }
        Err(IrError::Cycle { nodes: nodes.join(", ") })
    }

    /// The ops in topological order.
    pub fn ops_in_order(&self) -> Vec<NodeIndex> {
        let order = self.topo_order().expect("passes keep the graph acyclic");
        order.into_iter().filter(|&i| self.op(i).is_some()).collect()
    }
}
