//! Visiting every tensor a model holds, wherever the format allows one: initializers,
//! sparse initializers, node attributes, subgraphs, training graphs and functions.

use super::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto};

/// Calls `f` on every tensor in the model. Stops at the first error.
pub fn for_each_tensor<E>(model: &ModelProto, f: &mut dyn FnMut(&TensorProto) -> Result<(), E>) -> Result<(), E> {
    if let Some(g) = &model.graph {
        graph(g, f)?;
    }
    for info in &model.training_info {
        for g in info.initialization.iter().chain(info.algorithm.iter()) {
            graph(g, f)?;
        }
    }
    for func in &model.functions {
        nodes(&func.node, f)?;
    }
    Ok(())
}

fn graph<E>(g: &GraphProto, f: &mut dyn FnMut(&TensorProto) -> Result<(), E>) -> Result<(), E> {
    for t in &g.initializer {
        f(t)?;
    }
    for s in &g.sparse_initializer {
        sparse(s, f)?;
    }
    nodes(&g.node, f)
}

fn nodes<E>(nodes: &[NodeProto], f: &mut dyn FnMut(&TensorProto) -> Result<(), E>) -> Result<(), E> {
    nodes.iter().flat_map(|n| &n.attribute).try_for_each(|a| attribute(a, f))
}

fn attribute<E>(a: &AttributeProto, f: &mut dyn FnMut(&TensorProto) -> Result<(), E>) -> Result<(), E> {
    for t in a.t.iter().chain(&a.tensors) {
        f(t)?;
    }
    for s in a.sparse_tensor.iter().chain(&a.sparse_tensors) {
        sparse(s, f)?;
    }
    for g in a.g.iter().chain(&a.graphs) {
        graph(g, f)?;
    }
    Ok(())
}

fn sparse<E>(s: &SparseTensorProto, f: &mut dyn FnMut(&TensorProto) -> Result<(), E>) -> Result<(), E> {
    for t in s.values.iter().chain(s.indices.iter()) {
        f(t)?;
    }
    Ok(())
}
