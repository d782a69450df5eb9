//! The part of a graph near one name: what `--dot --around` draws and what the HTML
//! report's layer view shows.
//!
//! In: a graph, a value or node name, a depth. Out: the nodes within that many edges
//! (either direction), nearest first, so a caller that must draw fewer keeps the
//! closest ones.

use crate::ir::{Graph, NodeIndex};
use petgraph::Direction;
use std::collections::{BTreeSet, VecDeque};

/// The node producing the value `name` (an op, graph input or initializer), else the op
/// called `name`.
pub fn find(graph: &Graph, name: &str) -> Option<NodeIndex> {
    graph
        .producer(name)
        .map(|p| p.0)
        .or_else(|| graph.op_indices().find(|&i| graph.op(i).is_some_and(|o| o.name() == name)))
}

/// Nodes within `depth` edges of `name`, in breadth-first order from it.
pub fn neighbourhood(graph: &Graph, name: &str, depth: usize) -> anyhow::Result<Vec<NodeIndex>> {
    let start = find(graph, name)
        .ok_or_else(|| anyhow::anyhow!("--around {name}: no value or node of that name in the graph"))?;
    let mut seen = BTreeSet::from([start]);
    let mut order = vec![start];
    let mut queue = VecDeque::from([(start, 0usize)]);
    while let Some((n, d)) = queue.pop_front() {
        if d == depth {
            continue;
        }
        for dir in [Direction::Incoming, Direction::Outgoing] {
            let mut next: Vec<NodeIndex> = graph.g.neighbors_directed(n, dir).filter(|m| seen.insert(*m)).collect();
            // petgraph lists neighbours newest edge first; index order is stable across runs.
            next.sort();
            for m in next {
                order.push(m);
                queue.push_back((m, d + 1));
            }
        }
    }
    Ok(order)
}
