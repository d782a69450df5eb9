//! The gradient rules, one short function per op, found by op type in [`lookup`].
//!
//! A rule sees the forward node, the gradient of each output (a [`G`], `None` for
//! outputs the loss does not depend on) and which inputs need a gradient; it returns
//! one entry per input (`None`: not needed, or zero). The returned gradient has its
//! input's shape, or a smaller one that broadcasts up to it (see [`G`]).

mod elementwise;
mod index;
mod linalg;
mod loss;
mod nn;
mod reduce;
mod scatter;
mod shape;

use super::emit::{Emitter, G};
use super::facts::broadcast;
use super::AutodiffError;
use crate::ir::{Node, TensorName};
use crate::onnx::proto::attribute_proto::AttributeType;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{NodeProto, TensorProto};
use crate::runtime::tract::Dim;
use std::ops::{Deref, DerefMut};

pub(crate) type R<T> = Result<T, AutodiffError>;
/// One gradient per input of the forward node.
pub(crate) type Grads = Vec<Option<G>>;
pub(crate) type Rule = fn(&mut Ctx) -> R<Grads>;

fn tables() -> impl Iterator<Item = &'static (&'static str, Rule)> {
    [
        elementwise::RULES,
        linalg::RULES,
        shape::RULES,
        index::RULES,
        reduce::RULES,
        nn::RULES,
        loss::RULES,
        scatter::RULES,
    ]
    .into_iter()
    .flatten()
}

/// The rule for a default-domain op type.
pub(crate) fn lookup(op_type: &str) -> Option<Rule> {
    tables().find(|(name, _)| *name == op_type).map(|(_, rule)| *rule)
}

/// Every op type with a rule, sorted.
pub fn known_ops() -> Vec<&'static str> {
    let mut ops: Vec<&'static str> = tables().map(|(name, _)| *name).collect();
    ops.sort_unstable();
    ops
}

/// Ops whose outputs have a zero gradient (piecewise constant, or integer/boolean
/// valued): they end the gradient path instead of needing a rule.
pub(crate) const ZERO_GRAD: &[&str] = &[
    "Shape",
    "Size",
    "NonZero",
    "ArgMax",
    "ArgMin",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "IsNaN",
    "IsInf",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "EyeLike",
    "RandomNormalLike",
    "RandomUniformLike",
    "Bernoulli",
    "Multinomial",
    "ConstantOfShape",
];

/// What a rule works with. Derefs to the [`Emitter`] for emitting nodes.
pub(crate) struct Ctx<'a> {
    pub em: &'a mut Emitter,
    pub node: NodeProto,
    /// The node as messages name it.
    pub label: String,
    pub dys: Vec<Option<G>>,
    pub needs: Vec<bool>,
}

impl Deref for Ctx<'_> {
    type Target = Emitter;
    fn deref(&self) -> &Emitter {
        self.em
    }
}

impl DerefMut for Ctx<'_> {
    fn deref_mut(&mut self) -> &mut Emitter {
        self.em
    }
}

impl Ctx<'_> {
    /// Input `i`'s name (empty when absent).
    pub fn x(&self, i: usize) -> TensorName {
        self.node.input.get(i).cloned().unwrap_or_default()
    }

    pub fn y(&self, i: usize) -> TensorName {
        self.node.output.get(i).cloned().unwrap_or_default()
    }

    pub fn need(&self, i: usize) -> bool {
        self.needs.get(i).copied().unwrap_or(false)
    }

    /// The gradient of output `i` as it comes (maybe scaled, maybe smaller).
    pub fn dy_g(&self, i: usize) -> R<G> {
        self.dys.get(i).cloned().flatten().ok_or_else(|| {
            AutodiffError::Internal(format!("{}: no gradient for output {i} reached its rule", self.label))
        })
    }

    /// The gradient of output `i` with exactly its shape (factor not applied).
    pub fn dy_exact(&mut self, i: usize) -> R<G> {
        let g = self.dy_g(i)?;
        let y = self.y(i);
        self.em.exact(&g, &y)
    }

    /// The gradient of output `i` as one plain tensor.
    pub fn dy(&mut self, i: usize) -> R<TensorName> {
        let g = self.dy_g(i)?;
        let y = self.y(i);
        self.em.materialize(&g, &y)
    }

    /// Whether output `i`'s gradient is present.
    pub fn has_dy(&self, i: usize) -> bool {
        self.dys.get(i).is_some_and(Option::is_some)
    }

    // ---- attributes and constant inputs ----

    fn attribute(&self, name: &str) -> Option<&crate::onnx::proto::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name() == name)
    }

    pub fn attr_int(&self, name: &str, default: i64) -> i64 {
        self.attribute(name).and_then(|a| a.i).unwrap_or(default)
    }

    pub fn attr_float(&self, name: &str, default: f64) -> f64 {
        self.attribute(name).and_then(|a| a.f).map(f64::from).unwrap_or(default)
    }

    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attribute(name).map(|a| a.ints.clone())
    }

    pub fn attr_str(&self, name: &str, default: &str) -> String {
        self.attribute(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    /// The values of a constant input (an initializer not overridden by a graph input,
    /// or a `Constant` node), as numbers.
    pub fn const_values(&self, name: &str) -> Option<Vec<f64>> {
        if self.em.variables.contains(name) {
            return None;
        }
        const_values(&self.em.graph, name)
    }

    pub fn const_ints(&self, name: &str) -> Option<Vec<i64>> {
        Some(self.const_values(name)?.into_iter().map(|v| v as i64).collect())
    }

    /// The value of a constant input holding one number.
    pub fn const_scalar(&self, name: &str) -> Option<f64> {
        match self.const_values(name)?.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }

    pub fn unsupported(&self, what: impl Into<String>) -> AutodiffError {
        AutodiffError::Unsupported { node: self.label.clone(), op: self.node.op_type().to_string(), what: what.into() }
    }

    /// `axis` in `0..rank` (negative axes count from the end).
    pub fn norm_axis(&self, axis: i64, rank: usize) -> i64 {
        if axis < 0 {
            axis + rank as i64
        } else {
            axis
        }
    }

    // ---- shaping the results ----

    /// `f()` when input `i` needs a gradient.
    pub fn when(&mut self, i: usize, f: impl FnOnce(&mut Self) -> R<G>) -> R<Option<G>> {
        if self.need(i) {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// `g` (shaped like output 0) brought to input `i`'s shape.
    pub fn pass(&mut self, i: usize, g: &G) -> R<Option<G>> {
        if !self.need(i) {
            return Ok(None);
        }
        let (x, y) = (self.x(i), self.y(0));
        let dims = self.em.g_shape(g, &y);
        self.em.fit(&g.name, dims, g.scale, &x).map(Some)
    }

    /// `op(g, other)` brought to input `i`'s shape.
    pub fn combine(&mut self, op: &str, g: &G, other: &str, i: usize) -> R<G> {
        let (x, y) = (self.x(i), self.y(0));
        self.em.combine(op, g, other, true, &x, &y)
    }

    /// `g` where `mask` holds (or where it does not, when `keep` is false), zero
    /// elsewhere, brought to input `i`'s shape.
    pub fn masked(&mut self, mask: &str, g: &G, keep: bool, i: usize) -> R<G> {
        let y = self.y(0);
        self.masked_as(mask, g, keep, i, &y)
    }

    /// [`Ctx::masked`] for a `g` shaped like `full` (where it is not smaller).
    pub fn masked_as(&mut self, mask: &str, g: &G, keep: bool, i: usize, full: &str) -> R<G> {
        let x = self.x(i);
        let mut g = g.clone();
        let mut dims = self.em.g_shape(&g, full).zip(self.em.shape(mask)).and_then(|(a, b)| broadcast(&a, &b));
        if dims.is_none() && g.bshape.is_some() {
            g = self.em.exact(&g, full)?;
            dims = self.em.shape(full).zip(self.em.shape(mask)).and_then(|(a, b)| broadcast(&a, &b));
        }
        let zero = self.em.scalar_like(0.0, full)?;
        let w = if keep { self.em.where_(mask, &g.name, &zero)? } else { self.em.where_(mask, &zero, &g.name)? };
        let dtype = self.em.facts.dtype(full);
        self.em.facts.set(&w, dtype, dims.clone());
        self.em.fit(&w, dims, g.scale, &x)
    }

    /// Records the shape of a value a rule made, for the helpers that read shapes.
    pub fn note_shape(&mut self, name: &str, like: &str, shape: Option<Vec<Dim>>) {
        let dtype = self.em.facts.dtype(like);
        self.em.facts.set(name, dtype, shape);
    }
}

/// The numbers held by a constant value, when `name` is one.
pub(crate) fn const_values(graph: &crate::ir::Graph, name: &str) -> Option<Vec<f64>> {
    let (idx, _) = graph.producer(name)?;
    match graph.node(idx) {
        Node::Initializer(t) => tensor_values(t),
        Node::Op { proto, .. } if proto.op_type() == "Constant" => {
            let a = proto.attribute.first()?;
            match (a.name(), a.r#type()) {
                ("value", _) => tensor_values(a.t.as_ref()?),
                (_, AttributeType::Float) => Some(vec![f64::from(a.f?)]),
                (_, AttributeType::Floats) => Some(a.floats.iter().map(|&v| f64::from(v)).collect()),
                (_, AttributeType::Int) => Some(vec![a.i? as f64]),
                (_, AttributeType::Ints) => Some(a.ints.iter().map(|&v| v as f64).collect()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The values of a tensor stored in the model file itself (not external data).
fn tensor_values(t: &TensorProto) -> Option<Vec<f64>> {
    use DataType as D;
    let dt = D::try_from(t.data_type()).ok()?;
    if let Some(raw) = &t.raw_data {
        let v: Vec<f64> = match dt {
            D::Float => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            D::Double => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            D::Int64 => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            D::Int32 => raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            D::Bool | D::Uint8 => raw.iter().map(|&b| b as f64).collect(),
            _ => return None,
        };
        return Some(v);
    }
    if !t.external_data.is_empty() {
        return None;
    }
    Some(match dt {
        D::Float => t.float_data.iter().map(|&v| v as f64).collect(),
        D::Double => t.double_data.clone(),
        D::Int64 => t.int64_data.iter().map(|&v| v as f64).collect(),
        D::Int32 | D::Bool | D::Uint8 => t.int32_data.iter().map(|&v| v as f64).collect(),
        _ => return None,
    })
}
