//! `neft inspect MODEL --dot FILE [--around NAME --depth N]`: the graph (or the
//! neighbourhood of one value or node) as Graphviz DOT. Ops are coloured by the neft pass
//! that added them; frozen weights are grey boxes, graph inputs (trainable rows, data,
//! optimizer state) green.

use crate::ir::{Graph, Node, NodeIndex, PASS_KEY};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::BTreeSet;
use std::fmt::Write;

/// Graph inputs: trainable rows, data, optimizer state.
pub(super) const INPUT_FILL: &str = "#b8e0b8";
/// Initializers: weights the train step never changes.
pub(super) const FROZEN_FILL: &str = "#dddddd";

pub(super) fn pass_colour(pass: Option<&str>) -> &'static str {
    match pass {
        None => "#ffffff",
        Some("autodiff") => "#fde2c8",
        Some("optimizer") => "#e1d5f5",
        Some("loss") => "#fbd3d9",
        Some("split_rows") | Some("mask_params") | Some("lora") => "#c8ecd4",
        Some(_) => "#d6e6f7",
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Nodes within `depth` edges of the value or node called `around`, or every node.
fn selection(graph: &Graph, around: Option<&str>, depth: usize) -> anyhow::Result<BTreeSet<NodeIndex>> {
    match around {
        Some(name) => Ok(super::around::neighbourhood(graph, name, depth)?.into_iter().collect()),
        None => Ok(graph.topo_order()?.into_iter().collect()),
    }
}

pub fn to_dot(graph: &Graph, around: Option<&str>, depth: usize) -> anyhow::Result<String> {
    let keep = selection(graph, around, depth)?;
    let mut o = String::from("digraph neft {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n");
    for &i in &keep {
        let id = format!("n{}", i.index());
        let line = match graph.node(i) {
            Node::Op { proto, .. } => {
                let pass = proto.metadata_props.iter().find(|m| m.key() == PASS_KEY).map(|m| m.value());
                let label = if proto.name().is_empty() {
                    proto.op_type().to_string()
                } else {
                    format!("{}\\n{}", proto.op_type(), proto.name())
                };
                format!(
                    "{id} [shape=box, style=\"rounded,filled\", fillcolor={}, label={}];",
                    quote(pass_colour(pass)),
                    quote(&label)
                )
            }
            Node::Input(v) => {
                format!(
                    "{id} [shape=ellipse, style=filled, fillcolor={}, label={}];",
                    quote(INPUT_FILL),
                    quote(v.name())
                )
            }
            Node::Initializer(t) => {
                format!(
                    "{id} [shape=box, style=filled, fillcolor={}, label={}];",
                    quote(FROZEN_FILL),
                    quote(&format!("{} {:?}", t.name(), t.dims))
                )
            }
            Node::SparseInitializer(s) => {
                format!(
                    "{id} [shape=box, style=filled, fillcolor={}, label={}];",
                    quote(FROZEN_FILL),
                    quote(s.values.as_ref().map(|v| v.name()).unwrap_or(""))
                )
            }
        };
        let _ = writeln!(o, "  {line}");
    }
    for &i in &keep {
        for e in graph.g.edges_directed(i, Direction::Outgoing) {
            if keep.contains(&e.target()) {
                let _ = writeln!(
                    o,
                    "  n{} -> n{} [label={}, fontsize=8];",
                    i.index(),
                    e.target().index(),
                    quote(&e.weight().name)
                );
            }
        }
    }
    o.push_str("}\n");
    Ok(o)
}

/// Writes DOT, or SVG through Graphviz's `dot` when `path` ends in `.svg`.
pub fn write_dot(dot: &str, path: &std::path::Path) -> anyhow::Result<()> {
    if path.extension().is_some_and(|e| e == "svg") {
        let mut child = std::process::Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: SVG needs Graphviz's `dot` program ({e}); install graphviz, or write .dot",
                    path.display()
                )
            })?;
        std::io::Write::write_all(child.stdin.as_mut().expect("piped"), dot.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            anyhow::bail!("dot -Tsvg failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        crate::fsutil::write_bytes_atomic(path, &out.stdout)?;
    } else {
        crate::fsutil::write_bytes_atomic(path, dot.as_bytes())?;
    }
    Ok(())
}
