//! The graph IR that passes rewrite: a `petgraph` [`StableGraph`] whose nodes are
//! ops, graph inputs and initializers, and whose edges are the tensors flowing between
//! them. Every node keeps its ONNX proto whole, so exporting an unchanged import gives
//! back the original `GraphProto`, field for field.
//!
//! In: a `GraphProto` ([`Graph::from_proto`]). Out: a `GraphProto` ([`Graph::to_proto`])
//! with ops in a topological order that keeps the original order where it can.

mod build;
mod extra;
mod graph;
mod scope;
mod topo;

pub use build::attr;
pub use graph::{Graph, IrError, Node, Wire, PASS_KEY};

pub use petgraph::stable_graph::NodeIndex;

/// The name of a value (tensor) in an ONNX graph.
pub type TensorName = String;
