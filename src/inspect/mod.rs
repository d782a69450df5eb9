//! What a model is: its header, interface, op mix, parameters and trainable layers,
//! as a readable report or as JSON.
//!
//! In: a loaded [`Model`]. Out: a [`ModelSummary`] (serializable; the JSON fields are
//! documented in README.md) and its text rendering.

mod around;
mod artifact;
mod check;
mod diff;
mod dot;
mod html;
mod layer_view;
mod layered;
mod table;

pub use artifact::{render_artifacts, summarize_artifacts, ArtifactSummary};
pub use check::{check_runtime, synthetic_inputs, RuntimeCheck};
pub use diff::{diff, render_diff, ModelDiff};
pub use dot::{to_dot, write_dot};
pub use html::{artifact_html, model_html, write_html, Focus};

use crate::analyze::{find_layers, Layer};
use crate::ir::Graph;
use crate::onnx::make::{declared, DimSpec};
use crate::onnx::proto::ValueInfoProto;
use crate::onnx::{dtype_name, dtype_size, Model};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use table::{facts_text, Facts, Table};

#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub path: String,
    pub ir_version: i64,
    pub producer: String,
    pub opsets: Vec<Opset>,
    pub inputs: Vec<ValueSummary>,
    pub outputs: Vec<ValueSummary>,
    pub nodes: usize,
    pub op_histogram: BTreeMap<String, usize>,
    pub parameters: Parameters,
    pub layers: Vec<Layer>,
    pub trainable: Trainable,
}

#[derive(Debug, Serialize)]
pub struct Opset {
    pub domain: String,
    pub version: i64,
}

#[derive(Debug, Serialize)]
pub struct ValueSummary {
    pub name: String,
    pub dtype: String,
    /// Dimensions: numbers, or names for symbolic ones; `null` when the rank is unknown.
    pub shape: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Serialize)]
pub struct Parameters {
    /// Initializers (dense and sparse).
    pub tensors: usize,
    /// Elements over all initializers.
    pub count: u64,
    pub bytes: u64,
    /// Bytes held in external data files.
    pub external_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Trainable {
    pub layers: usize,
    pub neurons: u64,
    pub params: u64,
}

/// Summarizes a model.
pub fn summarize(model: &Model, graph: &Graph) -> ModelSummary {
    let mut op_histogram = BTreeMap::new();
    for idx in graph.op_indices() {
        let op = graph.op(idx).expect("op index");
        let key = match op.domain() {
            "" | "ai.onnx" => op.op_type().to_string(),
            d => format!("{d}.{}", op.op_type()),
        };
        *op_histogram.entry(key).or_insert(0) += 1;
    }
    let mut parameters = Parameters { tensors: 0, count: 0, bytes: 0, external_bytes: 0 };
    for t in graph.initializers() {
        let n = crate::onnx::element_count(&t.dims);
        let bytes = n.saturating_mul(dtype_size(t.data_type()).unwrap_or(0) as u64);
        parameters.tensors += 1;
        parameters.count = parameters.count.saturating_add(n);
        parameters.bytes = parameters.bytes.saturating_add(bytes);
        if t.data_location() == crate::onnx::proto::tensor_proto::DataLocation::External {
            parameters.external_bytes = parameters.external_bytes.saturating_add(bytes);
        }
    }
    for s in graph.sparse_initializers() {
        parameters.tensors += 1;
        parameters.count = parameters.count.saturating_add(crate::onnx::element_count(&s.dims));
    }
    let layers = find_layers(graph);
    let trainable = Trainable {
        layers: layers.len(),
        neurons: layers.iter().fold(0u64, |a, l| a.saturating_add(l.neurons as u64)),
        params: layers.iter().fold(0u64, |a, l| a.saturating_add(l.params)),
    };
    let p = &model.proto;
    ModelSummary {
        path: model.display_path(),
        ir_version: p.ir_version(),
        producer: format!("{} {}", p.producer_name(), p.producer_version()).trim().to_string(),
        opsets: p
            .opset_import
            .iter()
            .map(|o| Opset {
                domain: if o.domain().is_empty() { "ai.onnx".into() } else { o.domain().into() },
                version: o.version(),
            })
            .collect(),
        inputs: graph.inputs().filter(|i| graph.initializer(i.name()).is_none()).map(value_summary).collect(),
        outputs: graph.outputs().iter().map(value_summary).collect(),
        nodes: graph.op_count(),
        op_histogram,
        parameters,
        layers,
        trainable,
    }
}

fn value_summary(v: &ValueInfoProto) -> ValueSummary {
    let (dtype, shape) = match declared(v) {
        Some((dt, shape)) => (dtype_name(dt), shape),
        None => ("?".into(), None),
    };
    let shape = shape.map(|dims| {
        dims.into_iter()
            .map(|d| match d {
                DimSpec::Fixed(n) => serde_json::Value::from(n),
                DimSpec::Named(s) => serde_json::Value::from(s),
            })
            .collect()
    });
    ValueSummary { name: v.name().into(), dtype, shape }
}

fn shape_text(shape: &Option<Vec<serde_json::Value>>) -> String {
    match shape {
        None => "?".into(),
        Some(dims) => {
            let d: Vec<String> =
                dims.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect();
            format!("[{}]", d.join(", "))
        }
    }
}

/// Human units: 1.5 MB, 12.3 kB, 512 B.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The header of the model report: file, format, producer.
fn model_facts(s: &ModelSummary) -> Facts {
    let opsets: Vec<String> = s.opsets.iter().map(|o| format!("{} {}", o.domain, o.version)).collect();
    let mut facts = vec![
        ("model", s.path.clone()),
        ("format", format!("IR version {}, opsets: {}", s.ir_version, opsets.join(", "))),
    ];
    if !s.producer.is_empty() {
        facts.push(("producer", s.producer.clone()));
    }
    facts
}

/// Graph inputs or outputs with their types and shapes.
fn value_table(values: &[ValueSummary]) -> Table {
    let mut t = Table::new(&["name", "dtype", "shape"]);
    for v in values {
        t.row(vec![v.name.clone(), v.dtype.clone(), shape_text(&v.shape)]);
    }
    t
}

/// Op types, most frequent first.
fn ops_by_count(s: &ModelSummary) -> Vec<(&str, usize)> {
    let mut ops: Vec<(&str, usize)> = s.op_histogram.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ops
}

fn parameters_text(p: &Parameters) -> String {
    let external =
        if p.external_bytes > 0 { format!(" ({} external)", human_bytes(p.external_bytes)) } else { String::new() };
    format!("{} in {} initializers, {}{external}", p.count, p.tensors, human_bytes(p.bytes))
}

fn trainable_text(t: &Trainable) -> String {
    format!("{} layers with {} neurons, {} parameters", t.layers, t.neurons, t.params)
}

/// One row per trainable layer: its role, weight, neurons and the node using it.
fn layer_table(layers: &[Layer]) -> Table {
    let mut t = Table::new(&["role", "weight", "kind", "shape", ">axis", ">neurons", ">params", "node"]);
    for l in layers {
        let shape: Vec<String> = l.shape.iter().map(|d| d.to_string()).collect();
        let mut node = l.node.clone();
        if let Some(b) = &l.bias {
            let _ = write!(node, " +bias {b}");
        }
        if l.uses > 1 {
            let _ = write!(node, " (used {}x)", l.uses);
        }
        t.row(vec![
            l.role.clone(),
            l.weight.clone(),
            format!("{:?}", l.kind),
            format!("[{}]", shape.join(", ")),
            l.axis.to_string(),
            l.neurons.to_string(),
            l.params.to_string(),
            node,
        ]);
    }
    t
}

/// The text report printed by `neft inspect MODEL.onnx`.
pub fn render_text(s: &ModelSummary) -> String {
    let mut o = facts_text(&model_facts(s));
    let _ = write!(o, "\ninputs\n{}outputs\n{}", value_table(&s.inputs).text(), value_table(&s.outputs).text());
    let _ = writeln!(o, "\nnodes      {} ({} op types)", s.nodes, s.op_histogram.len());
    let line: Vec<String> = ops_by_count(s).iter().map(|(k, v)| format!("{k} {v}")).collect();
    for chunk in line.chunks(8) {
        let _ = writeln!(o, "  {}", chunk.join(", "));
    }
    let _ = writeln!(o, "\nparameters {}", parameters_text(&s.parameters));
    let _ = writeln!(o, "\ntrainable {}", trainable_text(&s.trainable));
    if !s.layers.is_empty() {
        o.push_str(&layer_table(&s.layers).text());
    }
    o
}
