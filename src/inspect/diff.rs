//! `neft inspect --diff A.onnx B.onnx`: what B adds, removes or changes relative to A —
//! nodes (by name, or by op and outputs when unnamed), initializers, inputs, outputs —
//! with added nodes grouped by the neft pass that made them.

use crate::ir::PASS_KEY;
use crate::onnx::proto::{GraphProto, NodeProto};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ModelDiff {
    pub nodes_added: usize,
    pub nodes_removed: Vec<String>,
    pub nodes_changed: Vec<String>,
    /// Pass label (`model` for unlabelled nodes) → op type → nodes added.
    pub added_by_pass: BTreeMap<String, BTreeMap<String, usize>>,
    pub initializers_added: Vec<String>,
    pub initializers_removed: Vec<String>,
    pub initializers_changed: Vec<String>,
    pub inputs_added: Vec<String>,
    pub inputs_removed: Vec<String>,
    pub outputs_added: Vec<String>,
    pub outputs_removed: Vec<String>,
}

impl ModelDiff {
    pub fn is_empty(&self) -> bool {
        *self == ModelDiff::default()
    }
}

fn key(n: &NodeProto) -> String {
    if n.name().is_empty() {
        format!("{}->{}", n.op_type(), n.output.join(","))
    } else {
        n.name().to_string()
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    it.map(str::to_string).collect()
}

fn minus(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

/// Compares the main graphs. Initializers count as changed when their type, shape or
/// storage differs (values on disk are not read).
pub fn diff(a: &GraphProto, b: &GraphProto) -> ModelDiff {
    let na: BTreeMap<String, &NodeProto> = a.node.iter().map(|n| (key(n), n)).collect();
    let nb: BTreeMap<String, &NodeProto> = b.node.iter().map(|n| (key(n), n)).collect();
    let mut d = ModelDiff::default();
    for (k, n) in &nb {
        match na.get(k) {
            None => {
                d.nodes_added += 1;
                let pass = n.metadata_props.iter().find(|m| m.key() == PASS_KEY).map(|m| m.value()).unwrap_or("model");
                *d.added_by_pass.entry(pass.to_string()).or_default().entry(n.op_type().to_string()).or_default() += 1;
            }
            Some(old) if old != n => d.nodes_changed.push(k.clone()),
            Some(_) => {}
        }
    }
    d.nodes_removed = na.keys().filter(|k| !nb.contains_key(*k)).cloned().collect();
    let ia: BTreeMap<&str, _> = a.initializer.iter().map(|t| (t.name(), t)).collect();
    let ib: BTreeMap<&str, _> = b.initializer.iter().map(|t| (t.name(), t)).collect();
    let (sa, sb) = (names(ia.keys().copied()), names(ib.keys().copied()));
    d.initializers_added = minus(&sb, &sa);
    d.initializers_removed = minus(&sa, &sb);
    d.initializers_changed = ia
        .iter()
        .filter_map(|(n, t)| {
            let u = ib.get(n)?;
            let same = t.dims == u.dims && t.data_type() == u.data_type() && t.raw_data == u.raw_data;
            (!same && (t.data_location() == u.data_location() || t.raw_data.is_some() && u.raw_data.is_some()))
                .then(|| n.to_string())
        })
        .collect();
    let inputs = |g: &GraphProto| names(g.input.iter().map(|v| v.name()));
    let outputs = |g: &GraphProto| names(g.output.iter().map(|v| v.name()));
    d.inputs_added = minus(&inputs(b), &inputs(a));
    d.inputs_removed = minus(&inputs(a), &inputs(b));
    d.outputs_added = minus(&outputs(b), &outputs(a));
    d.outputs_removed = minus(&outputs(a), &outputs(b));
    d
}

pub fn render_diff(d: &ModelDiff) -> String {
    use std::fmt::Write;
    if d.is_empty() {
        return "no differences\n".into();
    }
    let mut o = String::new();
    let list = |o: &mut String, what: &str, v: &[String]| {
        if !v.is_empty() {
            let shown: Vec<&str> = v.iter().take(12).map(String::as_str).collect();
            let more = if v.len() > 12 { format!(", and {} more", v.len() - 12) } else { String::new() };
            let _ = writeln!(o, "{what} ({}): {}{more}", v.len(), shown.join(", "));
        }
    };
    let _ = writeln!(o, "nodes added: {}", d.nodes_added);
    for (pass, ops) in &d.added_by_pass {
        let ops: Vec<String> = ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(o, "  {pass:<12} {}", ops.join(", "));
    }
    list(&mut o, "nodes removed", &d.nodes_removed);
    list(&mut o, "nodes changed", &d.nodes_changed);
    list(&mut o, "initializers added", &d.initializers_added);
    list(&mut o, "initializers removed", &d.initializers_removed);
    list(&mut o, "initializers changed", &d.initializers_changed);
    list(&mut o, "inputs added", &d.inputs_added);
    list(&mut o, "inputs removed", &d.inputs_removed);
    list(&mut o, "outputs added", &d.outputs_added);
    list(&mut o, "outputs removed", &d.outputs_removed);
    o
}
