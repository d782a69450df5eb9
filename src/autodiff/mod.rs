//! Reverse-mode automatic differentiation over ONNX graphs, in standard ONNX ops.
//!
//! In: an [`ir::Graph`](crate::ir::Graph), a scalar loss value (or seed gradients
//! for some values), and the tensors to differentiate for (initializers, graph
//! inputs, or any float value). Out: the same graph plus the backward nodes
//! (labelled `neft.pass = "autodiff"`), with `<t>.grad` as a new graph output for
//! every requested `t`, the loss kept as an output, and a [`GradReport`].
//!
//! Only nodes on a path from a requested tensor to the loss are differentiated;
//! integer and boolean values (shape arithmetic, masks, indices) end every path.
//! Every op on the path needs a rule from [`rules`](self::known_ops) (one short
//! function per op, default ONNX domain only); the backward graph uses only default
//! domain ops, at opset 18 or newer (the model's opset is raised when that is safe).
//! Broadcasts are undone with `ReduceSum` over axes known from shape inference, or
//! `Shape`-based ops where dimensions are symbolic.

mod driver;
mod emit;
mod facts;
mod opset;
mod rules;

use crate::ir::{Graph, IrError, TensorName};
use crate::onnx::proto::OperatorSetIdProto;
use crate::onnx::Model;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

pub use rules::known_ops;

/// The `neft.pass` label of the nodes autodiff adds.
pub const PASS_LABEL: &str = "autodiff";

/// The default-domain opset the backward graph needs at least (`ScatterND` and
/// `ScatterElements` with `reduction="add"`, `ReduceMean` with an `axes` input).
pub const MIN_OPSET: i64 = 18;

#[derive(Debug, thiserror::Error)]
pub enum AutodiffError {
    #[error("the loss '{0}' is not a value of the graph")]
    UnknownLoss(String),
    #[error(
        "the loss '{name}' must hold one element, but its shape is [{shape}]; pass seed gradients for a tensor loss"
    )]
    LossNotScalar { name: String, shape: String },
    #[error("'{0}' (asked for a gradient) is not a value of the graph")]
    UnknownTensor(String),
    #[error("cannot differentiate with respect to '{name}': its type is {dtype}, not floating point")]
    NotFloat { name: String, dtype: String },
    #[error("node {node}: no gradient rule for op '{op}' (it lies between '{input}' and the loss); rules exist for: {known}")]
    NoRule { node: String, op: String, input: String, known: String },
    // `node` is `graph.describe(..)`, which already names the op.
    #[error("node {node}: its gradient rule does not support {what}")]
    Unsupported { node: String, op: String, what: String },
    #[error("the element type of '{tensor}' is unknown (shape inference did not reach it and nothing declares it)")]
    UnknownType { tensor: String },
    #[error("the rank of '{tensor}' is unknown (shape inference did not reach it and nothing declares it)")]
    UnknownRank { tensor: String },
    #[error("cannot raise the model to opset {target}: {why}")]
    Opset { target: i64, why: String },
    #[error("the gradient output name '{0}' is already used in the graph")]
    NameTaken(String),
    #[error("graph edit failed: {0}")]
    Ir(#[from] IrError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How to differentiate.
#[derive(Debug, Clone)]
pub struct GradOptions {
    /// The default-domain opset the graph was written for (the model's `opset_import`).
    pub opset: i64,
    /// The folder the graph's external data are relative to (shape inference reads
    /// small initializers; large float weights are never read).
    pub model_dir: PathBuf,
}

impl Default for GradOptions {
    fn default() -> Self {
        GradOptions { opset: MIN_OPSET, model_dir: PathBuf::from(".") }
    }
}

impl GradOptions {
    /// Options matching a loaded model.
    pub fn for_model(model: &Model) -> GradOptions {
        GradOptions {
            opset: default_opset(&model.proto.opset_import).unwrap_or(MIN_OPSET),
            model_dir: model.dir.clone(),
        }
    }
}

/// The default-domain version among a model's opset imports.
pub fn default_opset(imports: &[OperatorSetIdProto]) -> Option<i64> {
    imports.iter().find(|o| matches!(o.domain(), "" | "ai.onnx")).and_then(|o| o.version)
}

/// The graph with gradients, the opset it needs, and what was added.
#[derive(Debug, Clone)]
pub struct GradOutput {
    pub graph: Graph,
    /// The default-domain opset to write into the model (≥ the input's and ≥ 18).
    pub opset: i64,
    pub report: GradReport,
}

/// What `grad` did: node counts by op type, and the gradient outputs.
#[derive(Debug, Clone, Default)]
pub struct GradReport {
    /// Ops of the graph given to `grad`, by type.
    pub forward: BTreeMap<String, usize>,
    /// Ops `grad` added, by type.
    pub backward: BTreeMap<String, usize>,
    /// (tensor, name of its gradient output), in the order asked.
    pub grads: Vec<(TensorName, TensorName)>,
    /// Requested tensors the loss does not depend on (their gradient is zeros).
    pub unreachable: Vec<TensorName>,
    /// Forward ops that were differentiated.
    pub differentiated: usize,
    /// Why shape inference failed, if it did (declared shapes were used instead).
    pub inference_warning: Option<String>,
}

impl GradReport {
    pub fn forward_ops(&self) -> usize {
        self.forward.values().sum()
    }
    pub fn backward_ops(&self) -> usize {
        self.backward.values().sum()
    }
}

impl fmt::Display for GradReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let (fw, bw) = (self.forward_ops(), self.backward_ops());
        writeln!(
            f,
            "autodiff: {fw} forward ops ({} differentiated), {bw} backward ops ({:.2}x), {} gradients",
            self.differentiated,
            bw as f64 / fw.max(1) as f64,
            self.grads.len()
        )?;
        let ops: std::collections::BTreeSet<&String> = self.forward.keys().chain(self.backward.keys()).collect();
        writeln!(f, "  {:<28} {:>8} {:>8}", "op", "forward", "backward")?;
        for op in ops {
            let (a, b) = (self.forward.get(op).copied().unwrap_or(0), self.backward.get(op).copied().unwrap_or(0));
            writeln!(f, "  {op:<28} {a:>8} {b:>8}")?;
        }
        if !self.unreachable.is_empty() {
            writeln!(f, "  zero gradients (the loss does not depend on them): {}", self.unreachable.join(", "))?;
        }
        if let Some(w) = &self.inference_warning {
            writeln!(f, "  shape inference failed, declared shapes used: {w}")?;
        }
        Ok(())
    }
}

/// The graph computing `loss` and `d loss / d t` for every `t` in `wrt`, as outputs
/// named `<t>.grad`. `loss` must hold one element.
pub fn grad(graph: &Graph, loss: &str, wrt: &[TensorName], opts: &GradOptions) -> Result<GradOutput, AutodiffError> {
    driver::run(graph, driver::Seeds::Loss(loss.to_string()), wrt, opts)
}

/// Like [`grad`], for given upstream gradients: each `(y, dy)` pair names a value of
/// the graph and an existing value (e.g. a new graph input) holding `d L / d y`.
pub fn grad_with_seeds(
    graph: &Graph,
    seeds: &[(TensorName, TensorName)],
    wrt: &[TensorName],
    opts: &GradOptions,
) -> Result<GradOutput, AutodiffError> {
    driver::run(graph, driver::Seeds::Given(seeds.to_vec()), wrt, opts)
}

/// [`grad`] on a whole model: the returned model has the gradient graph and the
/// raised opset; everything else (metadata, other opset imports) is kept.
pub fn grad_model(model: &Model, loss: &str, wrt: &[TensorName]) -> Result<(Model, GradReport), AutodiffError> {
    let graph = Graph::from_proto(model.graph())?;
    let out = grad(&graph, loss, wrt, &GradOptions::for_model(model))?;
    let mut proto = model.proto.clone();
    proto.graph = Some(out.graph.to_proto());
    set_default_opset(&mut proto.opset_import, out.opset);
    let mut m = Model::new(proto, model.dir.clone());
    m.path = model.path.clone();
    Ok((m, out.report))
}

/// Sets the default-domain version in a model's opset imports.
pub fn set_default_opset(imports: &mut Vec<OperatorSetIdProto>, opset: i64) {
    match imports.iter_mut().find(|o| matches!(o.domain(), "" | "ai.onnx")) {
        Some(o) => o.version = Some(opset),
        None => imports.push(OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }),
    }
}
