use crate::ir::{Graph, NodeIndex};
use crate::onnx::proto::NodeProto;
use serde::Serialize;
use std::collections::HashMap;

/// The op a weight feeds, which decides which axis indexes its neurons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// `MatMul(X, W)`, `W [in, out]`: neuron j is column `W[:, j]`.
    MatMul,
    /// `Gemm(A, B)`: neuron j is row `B[j, :]` with `transB=1`, column `B[:, j]` without.
    Gemm,
    /// `Conv(X, W)`, `W [out, in/groups, k...]`: neuron j is output channel `W[j]`.
    Conv,
}

/// How a weight is stored. Only initializers can be split as they are; a weight made by
/// a `Constant` or `ConstantOfShape` node is folded into an initializer first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WeightSource {
    #[serde(rename = "initializer")]
    Initializer,
    Constant,
    ConstantOfShape,
}

/// One trainable weight and its neurons.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    /// The weight initializer's name.
    pub weight: String,
    pub kind: LayerKind,
    /// The first node that uses the weight (name or `#position`).
    pub node: String,
    /// The weight axis that indexes neurons.
    pub axis: usize,
    pub neurons: usize,
    pub shape: Vec<i64>,
    /// Where the weight's value comes from.
    pub source: WeightSource,
    /// The 1-D initializer adding one element per neuron, if any.
    pub bias: Option<String>,
    /// Weight elements plus bias elements.
    pub params: u64,
    /// How many nodes use the weight (more than one: shared, e.g. tied embeddings).
    pub uses: usize,
    /// Structural label, e.g. `block 3 / mlp.up` (see `analyze_structure`).
    pub role: String,
}

impl Layer {
    /// Whether the layer's input units are the rows (axis 0) of its weight: a 2-D weight
    /// stored `[in, out]` (a MatMul, or a Gemm without transB such as GPT-2's Conv1D),
    /// so that an MLP's down projection can join its units.
    pub fn input_units_are_rows(&self) -> bool {
        matches!(self.kind, LayerKind::MatMul | LayerKind::Gemm) && self.shape.len() == 2 && self.axis == 1
    }
}

/// Finds every MatMul, Gemm and Conv whose weight is a float initializer.
pub fn find_layers(graph: &Graph) -> Vec<Layer> {
    let mut layers: Vec<Layer> = vec![];
    let mut seen: HashMap<String, usize> = HashMap::new();
    for idx in graph.ops_in_order() {
        let Some(found) = layer_at(graph, idx) else {
            continue;
        };
        match seen.get(&found.weight) {
            Some(&i) => layers[i].uses += 1,
            None => {
                seen.insert(found.weight.clone(), layers.len());
                layers.push(found);
            }
        }
    }
    let structure = super::analyze_structure(graph, &layers);
    for l in &mut layers {
        l.role = structure.roles.get(&l.weight).map(|r| r.to_string()).unwrap_or_default();
    }
    layers
}

fn layer_at(graph: &Graph, idx: NodeIndex) -> Option<Layer> {
    let node = graph.op(idx)?;
    if !node.domain().is_empty() && node.domain() != "ai.onnx" {
        return None;
    }
    let (kind, weight, axis) = match node.op_type() {
        "MatMul" => (LayerKind::MatMul, node.input.get(1)?, 1),
        "Gemm" => (LayerKind::Gemm, node.input.get(1)?, if int_attr(node, "transB") == 1 { 0 } else { 1 }),
        "Conv" => (LayerKind::Conv, node.input.get(1)?, 0),
        _ => return None,
    };
    let (dims, dtype, source) = constant_weight(graph, weight)?;
    let float = matches!(
        crate::onnx::DataType::try_from(dtype),
        Ok(crate::onnx::DataType::Float
            | crate::onnx::DataType::Double
            | crate::onnx::DataType::Float16
            | crate::onnx::DataType::Bfloat16)
    );
    let rank_ok = match kind {
        LayerKind::Conv => dims.len() >= 3,
        _ => dims.len() == 2,
    };
    if !float || !rank_ok {
        return None;
    }
    let neurons = dims[axis].max(0) as usize;
    let bias = match kind {
        LayerKind::MatMul => following_bias(graph, node, neurons),
        LayerKind::Gemm | LayerKind::Conv => node.input.get(2).filter(|b| is_bias(graph, b, neurons)).cloned(),
    };
    let bias_params = if bias.is_some() { neurons as u64 } else { 0 };
    let params = crate::onnx::element_count(&dims).saturating_add(bias_params);
    Some(Layer {
        weight: weight.clone(),
        kind,
        node: graph.describe(idx),
        axis,
        neurons,
        shape: dims,
        source,
        bias,
        params,
        uses: 1,
        role: String::new(),
    })
}

/// A MatMul's bias is a 1-D initializer added to its output by the only node reading it.
fn following_bias(graph: &Graph, node: &NodeProto, neurons: usize) -> Option<String> {
    let out = node.output.first()?;
    let readers = graph.consumers(out);
    let [(reader, Some(_))] = readers.as_slice() else {
        return None;
    };
    let add = graph.op(*reader)?;
    if add.op_type() != "Add" {
        return None;
    }
    add.input.iter().find(|i| *i != out && is_bias(graph, i, neurons)).cloned()
}

fn is_bias(graph: &Graph, name: &str, neurons: usize) -> bool {
    constant_weight(graph, name).is_some_and(|(dims, _, _)| dims.as_slice() == [neurons as i64])
}

fn int_attr(node: &NodeProto, name: &str) -> i64 {
    node.attribute.iter().find(|a| a.name() == name).map(|a| a.i()).unwrap_or(0)
}

/// The shape, element type and storage of a weight that is a compile-time constant.
fn constant_weight(graph: &Graph, name: &str) -> Option<(Vec<i64>, i32, WeightSource)> {
    // A graph input of the same name could override the initializer at run time.
    let overridable = graph.inputs().any(|i| i.name() == name);
    if let Some(w) = graph.initializer(name) {
        return (!overridable).then(|| (w.dims.clone(), w.data_type(), WeightSource::Initializer));
    }
    let (idx, _) = graph.producer(name)?;
    let node = graph.op(idx)?;
    let attr = |n: &str| node.attribute.iter().find(|a| a.name() == n);
    match node.op_type() {
        "Constant" => {
            let t = attr("value")?.t.as_ref()?;
            Some((t.dims.clone(), t.data_type(), WeightSource::Constant))
        }
        "ConstantOfShape" => {
            let shape = graph.initializer(node.input.first()?).and_then(crate::onnx::embedded_i64)?;
            let dtype = attr("value")
                .and_then(|a| a.t.as_ref())
                .map(|t| t.data_type())
                .unwrap_or(crate::onnx::DataType::Float as i32);
            Some((shape, dtype, WeightSource::ConstantOfShape))
        }
        _ => None,
    }
}
