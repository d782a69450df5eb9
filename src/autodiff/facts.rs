//! What autodiff knows of each value: element type and shape, symbolic where the
//! model's dimensions are (`batch`, `seq`).
//!
//! In: tract's inference over the forward graph, else the graph's declared types
//! (inputs, initializers, `value_info`), plus a simple type propagation over the ops.
//! Out: queries by value name; the rules add facts for the values they create.

use crate::ir::Graph;
use crate::onnx::make::{declared, DimSpec};
use crate::onnx::proto::tensor_proto::DataType;
use crate::runtime::tract::{Dim, ValueFact};
use std::collections::HashMap;

#[derive(Debug, Default, Clone)]
pub(crate) struct Facts {
    map: HashMap<String, ValueFact>,
}

impl Facts {
    /// Facts from tract (`inferred`, may be empty when inference failed), completed by
    /// declarations and type propagation.
    pub fn new(graph: &Graph, inferred: HashMap<String, ValueFact>) -> Facts {
        let mut facts = Facts { map: inferred };
        let declared_infos = graph.inputs().chain(graph.value_info()).chain(graph.outputs().iter());
        for info in declared_infos.cloned().collect::<Vec<_>>() {
            if let Some((dtype, shape)) = declared(&info) {
                let shape = shape.map(|dims| dims.iter().map(dim_of_spec).collect());
                facts.fill(info.name(), Some(dtype), shape);
            }
        }
        for t in graph.initializers().cloned().collect::<Vec<_>>() {
            facts.fill(t.name(), Some(t.data_type()), Some(t.dims.iter().map(|&d| Dim::Known(d)).collect()));
        }
        for idx in graph.ops_in_order() {
            let node = graph.op(idx).expect("ops_in_order yields ops");
            let inputs: Vec<Option<i32>> = node.input.iter().map(|i| facts.dtype(i)).collect();
            let dtype = propagate_dtype(node, &inputs);
            let shapes: Vec<Option<Vec<Dim>>> =
                node.input.iter().map(|i| facts.shape(i).map(<[Dim]>::to_vec)).collect();
            let shape = propagate_shape(node, &shapes);
            if let Some(o) = node.output.first().filter(|o| !o.is_empty()) {
                facts.fill(o, dtype, shape);
            }
            for o in node.output.iter().skip(1).filter(|o| !o.is_empty()) {
                facts.fill(o, dtype, None);
            }
        }
        facts
    }

    /// Sets what is still unknown of `name`.
    fn fill(&mut self, name: &str, dtype: Option<i32>, shape: Option<Vec<Dim>>) {
        let f = self.map.entry(name.to_string()).or_insert(ValueFact { dtype: None, shape: None });
        if f.dtype.is_none() {
            f.dtype = dtype;
        }
        if f.shape.is_none() {
            f.shape = shape;
        }
    }

    pub fn set(&mut self, name: &str, dtype: Option<i32>, shape: Option<Vec<Dim>>) {
        self.map.insert(name.to_string(), ValueFact { dtype, shape });
    }

    pub fn dtype(&self, name: &str) -> Option<i32> {
        self.map.get(name)?.dtype
    }

    pub fn shape(&self, name: &str) -> Option<&[Dim]> {
        self.map.get(name)?.shape.as_deref()
    }

    pub fn rank(&self, name: &str) -> Option<usize> {
        self.shape(name).map(<[Dim]>::len)
    }

    /// The shape when every dimension is a number.
    pub fn static_shape(&self, name: &str) -> Option<Vec<i64>> {
        self.shape(name)?.iter().map(known).collect()
    }
}

fn dim_of_spec(d: &DimSpec) -> Dim {
    match d {
        DimSpec::Fixed(n) if *n >= 0 => Dim::Known(*n),
        DimSpec::Named(s) if !s.is_empty() && s != "?" => Dim::Symbolic(s.clone()),
        _ => Dim::Unknown,
    }
}

/// The element type of an op's outputs, from its inputs' (the usual ONNX rules).
pub(crate) fn propagate_dtype(node: &crate::onnx::proto::NodeProto, inputs: &[Option<i32>]) -> Option<i32> {
    const INT64: i32 = DataType::Int64 as i32;
    const BOOL: i32 = DataType::Bool as i32;
    match node.op_type() {
        "Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin" => Some(INT64),
        "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "Not" | "And" | "Or" | "Xor" | "IsNaN"
        | "IsInf" => Some(BOOL),
        "Cast" => node.attribute.iter().find(|a| a.name() == "to").and_then(|a| a.i).map(|v| v as i32),
        "ConstantOfShape" => Some(
            node.attribute
                .iter()
                .find(|a| a.name() == "value")
                .and_then(|a| a.t.as_ref())
                .map(|t| t.data_type())
                .unwrap_or(DataType::Float as i32),
        ),
        "Constant" => node.attribute.first().and_then(|a| match a.name() {
            "value" => a.t.as_ref().map(|t| t.data_type()),
            "value_float" | "value_floats" => Some(DataType::Float as i32),
            "value_int" | "value_ints" => Some(INT64),
            _ => None,
        }),
        "Where" => inputs.get(1).copied().flatten().or(inputs.get(2).copied().flatten()),
        _ => inputs.iter().flatten().next().copied(),
    }
}

/// The output shape of an elementwise op from its inputs' (unary ops keep the shape,
/// the others broadcast); `None` for other ops or unknown inputs.
pub(crate) fn elementwise_shape(op: &str, inputs: &[Option<Vec<Dim>>]) -> Option<Vec<Dim>> {
    const UNARY: &[&str] = &[
        "Neg",
        "Exp",
        "Log",
        "Sqrt",
        "Reciprocal",
        "Tanh",
        "Sigmoid",
        "Erf",
        "Sign",
        "Sin",
        "Cos",
        "Abs",
        "Relu",
        "Not",
        "Cast",
        "Identity",
        "Softplus",
    ];
    const BROADCAST: &[&str] = &[
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Where",
        "Sum",
        "Max",
        "Min",
        "Equal",
        "Less",
        "LessOrEqual",
        "Greater",
        "GreaterOrEqual",
        "And",
        "Or",
    ];
    if UNARY.contains(&op) {
        return inputs.first()?.clone();
    }
    if !BROADCAST.contains(&op) {
        return None;
    }
    inputs.iter().try_fold(vec![], |acc: Vec<Dim>, s| broadcast(&acc, s.as_ref()?))
}

/// The first output's shape for ops whose shape is simple to tell, where tract
/// could not (it has no `SoftmaxCrossEntropyLoss`, for one).
fn propagate_shape(node: &crate::onnx::proto::NodeProto, inputs: &[Option<Vec<Dim>>]) -> Option<Vec<Dim>> {
    let int_attr = |name: &str, default: i64| {
        node.attribute.iter().find(|a| a.name() == name).and_then(|a| a.i).unwrap_or(default)
    };
    let reduction =
        node.attribute.iter().find(|a| a.name() == "reduction").and_then(|a| a.s.as_ref()).map(|s| s.to_vec());
    match node.op_type() {
        "SoftmaxCrossEntropyLoss" | "NegativeLogLikelihoodLoss" => match reduction.as_deref() {
            Some(b"none") => inputs.get(1).cloned().flatten(),
            _ => Some(vec![]),
        },
        op if op.starts_with("Reduce") && inputs.len() == 1 => {
            let rank = inputs[0].as_ref()?.len();
            if int_attr("noop_with_empty_axes", 0) == 1 {
                inputs[0].clone()
            } else if int_attr("keepdims", 1) == 1 {
                Some(vec![Dim::Known(1); rank])
            } else {
                Some(vec![])
            }
        }
        op => elementwise_shape(op, inputs),
    }
}

pub(crate) fn known(d: &Dim) -> Option<i64> {
    match d {
        Dim::Known(n) => Some(*n),
        _ => None,
    }
}

/// Whether two dimensions are equal: `None` when it cannot be told.
pub(crate) fn dims_equal(a: &Dim, b: &Dim) -> Option<bool> {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => Some(x == y),
        (Dim::Symbolic(x), Dim::Symbolic(y)) if x == y => Some(true),
        _ => None,
    }
}

/// Numpy-style broadcast of two shapes; `None` where a dimension cannot be told.
pub(crate) fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let r = a.len().max(b.len());
    let one = Dim::Known(1);
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { &a[i + a.len() - r] } else { &one };
            let db = if i + b.len() >= r { &b[i + b.len() - r] } else { &one };
            match (da, db) {
                (Dim::Known(1), d) | (d, Dim::Known(1)) => Some(d.clone()),
                _ if dims_equal(da, db) == Some(true) => Some(da.clone()),
                _ => None,
            }
        })
        .collect()
}

pub(crate) fn is_float(dtype: i32) -> bool {
    matches!(DataType::try_from(dtype), Ok(DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16))
}

/// Dimensions as a declared shape, for graph outputs.
pub(crate) fn dim_specs(shape: &[Dim]) -> Vec<DimSpec> {
    shape
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Known(n) => DimSpec::Fixed(*n),
            Dim::Symbolic(s) => DimSpec::Named(s.clone()),
            Dim::Unknown => DimSpec::Named(format!("unk_{i}")),
        })
        .collect()
}
