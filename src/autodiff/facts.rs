//! What autodiff knows of each value: element type and shape, symbolic where the
//! model's dimensions are (`batch`, `seq`).
//!
//! In: tract's inference over the forward graph (as far as it got: it stops at ops it
//! cannot analyse, such as a `Flatten` of `seq*seq` elements in an exporter's mask
//! subgraph), the graph's declared types (inputs, initializers, `value_info`), and a
//! propagation of types, shapes and at least ranks over the ops it missed.
//! Out: queries by value name; the rules add facts for the values they create.

use crate::ir::Graph;
use crate::onnx::make::{declared, DimSpec};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::NodeProto;
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
            let shape = propagate_shape(node, &shapes).or_else(|| propagate_rank(graph, node, &shapes));
            if let Some(o) = node.output.first().filter(|o| !o.is_empty()) {
                facts.fill(o, dtype, shape);
            }
            // Split's outputs: the input's rank, sizes along the axis unknown.
            let rest = (node.op_type() == "Split").then(|| shapes.first().cloned().flatten()).flatten();
            for o in node.output.iter().skip(1).filter(|o| !o.is_empty()) {
                facts.fill(o, dtype, rest.as_ref().map(|d| vec![Dim::Unknown; d.len()]));
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
pub(crate) fn propagate_dtype(node: &NodeProto, inputs: &[Option<i32>]) -> Option<i32> {
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
        "IsNaN",
        "IsInf",
        "Floor",
        "Ceil",
        "Round",
        "LeakyRelu",
        "Elu",
        "HardSigmoid",
    ];
    if UNARY.contains(&op) {
        return inputs.first()?.clone();
    }
    if !BROADCASTING.contains(&op) {
        return None;
    }
    inputs.iter().try_fold(vec![], |acc: Vec<Dim>, s| broadcast(&acc, s.as_ref()?))
}

/// The first output's shape for ops whose shape is simple to tell, where tract
/// could not (it has no `SoftmaxCrossEntropyLoss`, for one).
fn propagate_shape(node: &NodeProto, inputs: &[Option<Vec<Dim>>]) -> Option<Vec<Dim>> {
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

/// The output rank (and whatever dimensions are easy to tell, `Dim::Unknown` for the
/// rest) of the ops that reshape, where [`propagate_shape`] cannot tell the full shape:
/// what the gradient rules need to pick their form, with `Shape`-based ops for the
/// sizes they cannot know.
fn propagate_rank(graph: &Graph, node: &NodeProto, inputs: &[Option<Vec<Dim>>]) -> Option<Vec<Dim>> {
    let unknown = |r: usize| Some(vec![Dim::Unknown; r]);
    let rank = |i: usize| inputs.get(i).and_then(|s| s.as_ref()).map(Vec::len);
    let ints_attr = |name: &str| node.attribute.iter().find(|a| a.name() == name).map(|a| a.ints.clone());
    let int_attr = |name: &str, default: i64| {
        node.attribute.iter().find(|a| a.name() == name).and_then(|a| a.i).unwrap_or(default)
    };
    let consts = |i: usize| -> Option<Vec<i64>> {
        let name = node.input.get(i).filter(|n| !n.is_empty())?;
        Some(super::rules::const_values(graph, name)?.into_iter().map(|v| v as i64).collect())
    };
    // The length of a 1-D input (a shape, or a list of axes).
    let length = |i: usize| match inputs.get(i)?.as_deref()? {
        [Dim::Known(n)] => Some(*n as usize),
        _ => None,
    };
    let norm = |axis: i64, r: usize| if axis < 0 { axis + r as i64 } else { axis } as usize;
    match node.op_type() {
        op if BROADCASTING.contains(&op) => {
            let shapes: Option<Vec<&Vec<Dim>>> = inputs.iter().map(Option::as_ref).collect();
            shapes?.into_iter().try_fold(vec![], |acc, s| Some(loose_broadcast(&acc, s)))
        }
        "Softmax" | "LogSoftmax" | "LayerNormalization" | "Dropout" | "Gelu" | "CumSum" | "Trilu" => {
            inputs.first().cloned().flatten()
        }
        "MatMul" => {
            let (a, b) = (inputs.first()?.as_ref()?, inputs.get(1)?.as_ref()?);
            if a.len() < 2 || b.len() < 2 {
                return None;
            }
            let mut dims = loose_broadcast(&a[..a.len() - 2], &b[..b.len() - 2]);
            dims.extend([a[a.len() - 2].clone(), b[b.len() - 1].clone()]);
            Some(dims)
        }
        "Shape" => {
            let r = rank(0)? as i64;
            let start = norm(int_attr("start", 0), r as usize).min(r as usize) as i64;
            let end = node.attribute.iter().find(|a| a.name() == "end").and_then(|a| a.i).unwrap_or(r);
            let end = norm(end, r as usize).min(r as usize) as i64;
            Some(vec![Dim::Known((end - start).max(0))])
        }
        "Size" => Some(vec![]),
        "Flatten" => unknown(2),
        "Range" => unknown(1),
        "NonZero" => Some(vec![Dim::Known(rank(0)? as i64), Dim::Unknown]),
        "ConstantOfShape" => unknown(length(0)?),
        "Reshape" => {
            let target = consts(1);
            match target {
                Some(t) => Some(
                    t.iter()
                        .enumerate()
                        .map(|(i, &n)| match n {
                            n if n > 0 => Dim::Known(n),
                            0 if int_attr("allowzero", 0) == 0 => inputs
                                .first()
                                .cloned()
                                .flatten()
                                .and_then(|d| d.get(i).cloned())
                                .unwrap_or(Dim::Unknown),
                            _ => Dim::Unknown,
                        })
                        .collect(),
                ),
                None => unknown(length(1)?),
            }
        }
        "Expand" => {
            let (x, n) = (rank(0)?, length(1)?);
            let mut dims = vec![Dim::Unknown; n.max(x)];
            let xs = inputs[0].as_ref()?;
            // Where the target is known to be 1, the input's size stays.
            if let Some(t) = consts(1) {
                let r = dims.len();
                for (i, d) in dims.iter_mut().enumerate() {
                    let ti = (i + t.len()).checked_sub(r).map(|j| t[j]);
                    let xi = (i + xs.len()).checked_sub(r).map(|j| &xs[j]);
                    *d = match (ti, xi) {
                        (Some(1) | None, Some(x)) => x.clone(),
                        (Some(n), Some(Dim::Known(1)) | None) if n > 1 => Dim::Known(n),
                        (Some(n), Some(x)) if n > 1 => match x {
                            Dim::Known(_) => x.clone(),
                            _ => Dim::Known(n),
                        },
                        _ => Dim::Unknown,
                    };
                }
            }
            Some(dims)
        }
        op if op.starts_with("Reduce") => {
            let x = inputs.first()?.as_ref()?;
            let axes = match consts(1).or_else(|| ints_attr("axes")) {
                Some(a) if !a.is_empty() => a,
                _ if int_attr("noop_with_empty_axes", 0) == 1 => return Some(x.clone()),
                _ => (0..x.len() as i64).collect(),
            };
            let axes: Vec<usize> = axes.iter().map(|&a| norm(a, x.len())).collect();
            let keep = int_attr("keepdims", 1) == 1;
            let dims = x.iter().enumerate().filter_map(|(i, d)| match (axes.contains(&i), keep) {
                (false, _) => Some(d.clone()),
                (true, true) => Some(Dim::Known(1)),
                (true, false) => None,
            });
            Some(dims.collect())
        }
        "Transpose" => {
            let x = inputs.first()?.as_ref()?;
            let perm =
                ints_attr("perm").filter(|p| !p.is_empty()).unwrap_or_else(|| (0..x.len() as i64).rev().collect());
            perm.iter().map(|&p| x.get(p as usize).cloned()).collect()
        }
        "Gather" => {
            let (x, idx) = (inputs.first()?.as_ref()?, inputs.get(1)?.as_ref()?);
            let axis = norm(int_attr("axis", 0), x.len());
            let mut dims = x.get(..axis)?.to_vec();
            dims.extend(idx.iter().cloned());
            dims.extend(x.get(axis + 1..)?.iter().cloned());
            Some(dims)
        }
        "GatherElements" => inputs.get(1).cloned().flatten(),
        "Slice" => unknown(rank(0)?),
        "Split" => unknown(rank(0)?),
        "Concat" => {
            let shapes: Option<Vec<&Vec<Dim>>> = inputs.iter().map(Option::as_ref).collect();
            let shapes = shapes?;
            let r = shapes.first()?.len();
            let axis = norm(int_attr("axis", 0), r);
            let mut dims = shapes[0].clone();
            let total: Option<i64> = shapes.iter().map(|s| s.get(axis).and_then(known)).sum();
            *dims.get_mut(axis)? = total.map_or(Dim::Unknown, Dim::Known);
            for s in &shapes[1..] {
                for (i, d) in dims.iter_mut().enumerate() {
                    if i != axis && dims_equal(d, &s[i]) != Some(true) {
                        *d = Dim::Unknown;
                    }
                }
            }
            Some(dims)
        }
        "Unsqueeze" | "Squeeze" => {
            let x = inputs.first()?.as_ref()?;
            let axes = consts(1).or_else(|| ints_attr("axes"));
            if node.op_type() == "Unsqueeze" {
                let axes = axes?;
                let r = x.len() + axes.len();
                let axes: Vec<usize> = axes.iter().map(|&a| norm(a, r)).collect();
                let mut rest = x.iter();
                (0..r).map(|i| if axes.contains(&i) { Some(Dim::Known(1)) } else { rest.next().cloned() }).collect()
            } else {
                match axes {
                    Some(axes) => {
                        let axes: Vec<usize> = axes.iter().map(|&a| norm(a, x.len())).collect();
                        Some(x.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect())
                    }
                    None if x.iter().all(|d| matches!(d, Dim::Known(_))) => {
                        Some(x.iter().filter(|d| **d != Dim::Known(1)).cloned().collect())
                    }
                    None => None,
                }
            }
        }
        _ => None,
    }
}

/// Ops that broadcast their inputs.
const BROADCASTING: &[&str] = &[
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

/// Numpy-style broadcast that never fails: a dimension that cannot be told is
/// `Dim::Unknown` (a number above 1 against an unknown one is that number).
fn loose_broadcast(a: &[Dim], b: &[Dim]) -> Vec<Dim> {
    broadcast_dims(a, b, |da, db| match (da, db) {
        (Dim::Known(n), _) | (_, Dim::Known(n)) => Dim::Known(*n),
        _ => Dim::Unknown,
    })
}

/// Numpy-style broadcast of two shapes, aligned on their last axes; `undecided` gives
/// the dimension where neither is 1 and they are not known to be equal.
fn broadcast_dims<T>(a: &[Dim], b: &[Dim], undecided: impl Fn(&Dim, &Dim) -> T) -> Vec<T>
where
    T: From<Dim>,
{
    let r = a.len().max(b.len());
    let one = Dim::Known(1);
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { &a[i + a.len() - r] } else { &one };
            let db = if i + b.len() >= r { &b[i + b.len() - r] } else { &one };
            match (da, db) {
                (Dim::Known(1), d) | (d, Dim::Known(1)) => T::from(d.clone()),
                _ if dims_equal(da, db) == Some(true) => T::from(da.clone()),
                _ => undecided(da, db),
            }
        })
        .collect()
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
    broadcast_dims(a, b, |_, _| None).into_iter().collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attr;
    use crate::onnx::make::{node, tensor_i64, value_info};
    use crate::onnx::proto::GraphProto;

    /// Where nothing is inferred (as past an op tract stops on), ranks and the easy
    /// dimensions still follow the ops: what the gradient rules need to pick a form.
    #[test]
    fn ranks_propagate_where_inference_stopped() {
        let x = value_info("x", DataType::Float, &["b".into(), "s".into(), 32.into()]);
        let g = GraphProto {
            input: vec![x],
            initializer: vec![
                tensor_i64("shape", &[4], &[0, 0, 4, 8]),
                tensor_i64("axes", &[1], &[-1]),
                tensor_i64("idx", &[2], &[0, 1]),
            ],
            node: vec![
                node("Flatten", &["x"], &["flat"], vec![]), // tract's failure: the rest is ours
                node("Reshape", &["x", "shape"], &["heads"], vec![]),
                node("Transpose", &["heads"], &["t"], vec![attr::ints("perm", &[0, 2, 1, 3])]),
                node("ReduceMean", &["t", "axes"], &["m"], vec![]),
                node("Unsqueeze", &["flat", "axes"], &["u"], vec![]),
                node("Gather", &["x", "idx"], &["gx"], vec![attr::int("axis", 1)]),
                node("Transpose", &["t"], &["kt"], vec![attr::ints("perm", &[0, 1, 3, 2])]),
                node("MatMul", &["t", "kt"], &["scores"], vec![]),
                node("Add", &["scores", "flat"], &["masked"], vec![]),
                node("Shape", &["masked"], &["sh"], vec![]),
            ],
            ..Default::default()
        };
        let graph = Graph::from_proto(&g).unwrap();
        let facts = Facts::new(&graph, HashMap::new());
        let sym = |s: &str| Dim::Symbolic(s.into());
        let k = Dim::Known;
        assert_eq!(facts.shape("flat"), Some(&[Dim::Unknown, Dim::Unknown][..]));
        assert_eq!(facts.shape("heads"), Some(&[sym("b"), sym("s"), k(4), k(8)][..]));
        assert_eq!(facts.shape("t"), Some(&[sym("b"), k(4), sym("s"), k(8)][..]));
        assert_eq!(facts.shape("m"), Some(&[sym("b"), k(4), sym("s"), k(1)][..]));
        assert_eq!(facts.rank("u"), Some(3));
        assert_eq!(facts.shape("gx"), Some(&[sym("b"), k(2), k(32)][..]));
        assert_eq!(facts.shape("scores"), Some(&[sym("b"), k(4), sym("s"), sym("s")][..]));
        assert_eq!(facts.rank("masked"), Some(4), "a broadcast is as wide as its widest input");
        assert_eq!(facts.shape("sh"), Some(&[k(4)][..]));
        assert_eq!(facts.dtype("sh"), Some(DataType::Int64 as i32));
    }
}
