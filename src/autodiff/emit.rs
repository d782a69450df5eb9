//! Adding backward nodes: one place that names them, labels them, shares identical
//! nodes (the same `Shape(x)` or `Reshape(a, [-1, k])` asked for by several rules is
//! emitted once), makes constants, and knows how to bring a gradient to its value's
//! shape (the broadcast reduction every binary rule needs).
//!
//! A gradient travels as a [`G`]: a tensor, a constant factor not yet applied, and,
//! where it is smaller than its value, the shape it has (it broadcasts up). Rules that
//! are linear pass the factor along and rules that multiply elementwise consume the
//! small shape directly, so `ReduceMean`'s `Expand` and the `Mul` by `0.5` or `-1`
//! that `Sqrt`, `Neg` or a scaled attention would add only appear where they must.

use super::facts::{broadcast, dims_equal, known, Facts};
use super::AutodiffError;
use crate::ir::{attr, Graph, TensorName};
use crate::onnx::make;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::AttributeProto;
use crate::runtime::tract::Dim;
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};

type R<T> = Result<T, AutodiffError>;

/// A gradient: the value `scale * name`, where `name` has the shape `bshape` that
/// broadcasts up to its value's shape (`None`: exactly the value's shape).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct G {
    pub name: TensorName,
    pub scale: f64,
    pub bshape: Option<Vec<Dim>>,
}

impl G {
    pub fn exact(name: TensorName) -> G {
        G { name, scale: 1.0, bshape: None }
    }

    pub fn scaled(self, by: f64) -> G {
        G { scale: self.scale * by, ..self }
    }
}

pub(crate) struct Emitter {
    pub graph: Graph,
    pub facts: Facts,
    /// Name hint for what is emitted now (the forward node being differentiated).
    pub hint: String,
    /// Op type → how many nodes were emitted.
    pub counts: BTreeMap<String, usize>,
    /// Every value the emitter created.
    pub created: HashSet<TensorName>,
    /// The tensors gradients are taken for: never read as constants, even when
    /// they are initializers (their values change during training).
    pub variables: HashSet<TensorName>,
    cse: HashMap<(String, Vec<String>, Vec<u8>), Vec<TensorName>>,
    consts: HashMap<(i32, Vec<i64>, Vec<u8>), TensorName>,
    /// One-element float constants made here: (type, dims, value), so that scaling
    /// one makes another constant instead of a node.
    single: HashMap<TensorName, (i32, Vec<i64>, f64)>,
}

impl Emitter {
    pub fn new(graph: Graph, facts: Facts) -> Emitter {
        Emitter {
            graph,
            facts,
            hint: "grad".into(),
            counts: BTreeMap::new(),
            created: HashSet::new(),
            variables: HashSet::new(),
            cse: HashMap::new(),
            consts: HashMap::new(),
            single: HashMap::new(),
        }
    }

    // ---- nodes and constants ----

    /// Emits `op(inputs)` with `n_out` outputs, or returns the outputs of an identical
    /// node emitted before.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, n_out: usize) -> R<Vec<TensorName>> {
        let key_attrs: Vec<u8> = attrs.iter().flat_map(|a| a.encode_to_vec()).collect();
        let key = (op.to_string(), inputs.iter().map(|s| s.to_string()).collect::<Vec<_>>(), key_attrs);
        if let Some(out) = self.cse.get(&key).filter(|o| o.len() == n_out) {
            return Ok(out.clone());
        }
        let hint = self.hint.clone();
        let outputs = self.graph.add_node(op, inputs, n_out, attrs, &hint)?;
        *self.counts.entry(op.to_string()).or_default() += 1;
        let proto = self.graph.op(self.graph.producer(&outputs[0]).expect("just added").0).cloned().unwrap_or_default();
        let in_types: Vec<Option<i32>> = inputs.iter().map(|i| self.facts.dtype(i)).collect();
        let dtype = super::facts::propagate_dtype(&proto, &in_types);
        let in_shapes: Vec<Option<Vec<Dim>>> = inputs.iter().map(|i| self.shape(i)).collect();
        let shape = super::facts::elementwise_shape(op, &in_shapes);
        for o in &outputs {
            self.facts.set(o, dtype, shape.clone());
            self.created.insert(o.clone());
        }
        self.cse.insert(key, outputs.clone());
        Ok(outputs)
    }

    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> R<TensorName> {
        Ok(self.node(op, inputs, attrs, 1)?.remove(0))
    }

    /// A constant (an initializer, so it adds no node).
    pub fn constant(&mut self, dtype: i32, dims: &[i64], raw: Vec<u8>) -> R<TensorName> {
        let key = (dtype, dims.to_vec(), raw.clone());
        if let Some(name) = self.consts.get(&key) {
            return Ok(name.clone());
        }
        let name = self.graph.fresh_name("ad.const");
        let dt = DataType::try_from(dtype).unwrap_or(DataType::Float);
        self.graph.add_initializer(make::tensor_raw(&name, dt, dims, raw))?;
        self.facts.set(&name, Some(dtype), Some(dims.iter().map(|&d| Dim::Known(d)).collect()));
        if let Some(v) = single_float(dtype, &key.2) {
            self.single.insert(name.clone(), (dtype, dims.to_vec(), v));
        }
        self.consts.insert(key, name.clone());
        Ok(name)
    }

    /// A 1-D int64 constant.
    pub fn ints(&mut self, v: &[i64]) -> R<TensorName> {
        self.constant(DataType::Int64 as i32, &[v.len() as i64], v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// A 0-D int64 constant.
    pub fn int_scalar(&mut self, v: i64) -> R<TensorName> {
        self.constant(DataType::Int64 as i32, &[], v.to_le_bytes().to_vec())
    }

    /// A 0-D float constant of element type `dtype`.
    pub fn scalar(&mut self, v: f64, dtype: i32) -> R<TensorName> {
        let raw =
            float_bytes(&[v], dtype).ok_or_else(|| AutodiffError::Internal(format!("constant of type {dtype}")))?;
        self.constant(dtype, &[], raw)
    }

    /// A float constant with the element type of `like`.
    pub fn scalar_like(&mut self, v: f64, like: &str) -> R<TensorName> {
        let dtype = self.dtype(like)?;
        self.scalar(v, dtype)
    }

    pub fn dtype(&self, name: &str) -> R<i32> {
        self.facts.dtype(name).ok_or_else(|| AutodiffError::UnknownType { tensor: name.to_string() })
    }

    pub fn shape(&self, name: &str) -> Option<Vec<Dim>> {
        self.facts.shape(name).map(<[Dim]>::to_vec)
    }

    pub fn static_shape_of(&self, name: &str) -> Option<Vec<i64>> {
        self.facts.static_shape(name)
    }

    pub fn rank(&self, name: &str) -> R<usize> {
        self.facts.rank(name).ok_or_else(|| AutodiffError::UnknownRank { tensor: name.to_string() })
    }

    // ---- arithmetic ----

    pub fn add(&mut self, a: &str, b: &str) -> R<TensorName> {
        self.op("Add", &[a, b], vec![])
    }
    pub fn sub(&mut self, a: &str, b: &str) -> R<TensorName> {
        self.op("Sub", &[a, b], vec![])
    }
    pub fn mul(&mut self, a: &str, b: &str) -> R<TensorName> {
        self.op("Mul", &[a, b], vec![])
    }
    pub fn div(&mut self, a: &str, b: &str) -> R<TensorName> {
        self.op("Div", &[a, b], vec![])
    }
    pub fn neg(&mut self, a: &str) -> R<TensorName> {
        self.op("Neg", &[a], vec![])
    }
    pub fn unary(&mut self, op: &str, a: &str) -> R<TensorName> {
        self.op(op, &[a], vec![])
    }
    /// `a * c` for a number `c`, with `a`'s element type.
    pub fn mul_const(&mut self, a: &str, c: f64) -> R<TensorName> {
        if c == 1.0 {
            return Ok(a.to_string());
        }
        if let Some((dtype, dims, v)) = self.single.get(a).cloned() {
            let raw = float_bytes(&[v * c], dtype)
                .ok_or_else(|| AutodiffError::Internal(format!("constant of type {dtype}")))?;
            return self.constant(dtype, &dims, raw);
        }
        if c == -1.0 {
            return self.neg(a);
        }
        let k = self.scalar_like(c, a)?;
        self.mul(a, &k)
    }
    /// `c - a` for a number `c`.
    pub fn rsub_const(&mut self, c: f64, a: &str) -> R<TensorName> {
        let k = self.scalar_like(c, a)?;
        self.sub(&k, a)
    }
    pub fn reduce_sum(&mut self, a: &str, axes: &[i64], keepdims: bool) -> R<TensorName> {
        let axes = self.ints(axes)?;
        self.op("ReduceSum", &[a, &axes], vec![attr::int("keepdims", keepdims as i64)])
    }
    pub fn where_(&mut self, cond: &str, a: &str, b: &str) -> R<TensorName> {
        self.op("Where", &[cond, a, b], vec![])
    }
    /// `Transpose(a)`; when `a` is an `Einsum` made here, an `Einsum` writing the
    /// permuted output directly (the first one is removed if nothing else reads it).
    pub fn transpose(&mut self, a: &str, perm: &[i64]) -> R<TensorName> {
        // Transposing a transpose back: the original tensor (e.g. K for Q·Kᵀ).
        if let Some(node) = self.graph.producer(a).and_then(|(i, _)| self.graph.op(i)) {
            let first = node.attribute.iter().find(|x| x.name() == "perm").map(|x| x.ints.clone());
            if node.op_type() == "Transpose" && first.as_ref().is_some_and(|f| f.len() == perm.len()) {
                let first = first.unwrap();
                if perm.iter().enumerate().all(|(i, &p)| first[p as usize] == i as i64) {
                    return Ok(node.input[0].clone());
                }
            }
        }
        if let Some((inputs, lhs, out)) = self.einsum_parts(a) {
            if out.len() == perm.len() {
                let permuted: String = perm.iter().map(|&p| out.as_bytes()[p as usize] as char).collect();
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                let eq = format!("{lhs}->{permuted}");
                return self.op("Einsum", &refs, vec![attr::string("equation", &eq)]);
            }
        }
        self.op("Transpose", &[a], vec![attr::ints("perm", perm)])
    }

    /// Inputs, left-hand side and output subscripts of an explicit `Einsum` made here.
    fn einsum_parts(&self, name: &str) -> Option<(Vec<String>, String, String)> {
        if !self.created.contains(name) {
            return None;
        }
        let node = self.graph.op(self.graph.producer(name)?.0)?;
        if node.op_type() != "Einsum" {
            return None;
        }
        let eq = node.attribute.iter().find(|a| a.name() == "equation")?.s.as_ref()?;
        let (lhs, out) = std::str::from_utf8(eq).ok()?.split_once("->")?;
        Some((node.input.clone(), lhs.to_string(), out.to_string()))
    }

    /// Removes nodes made here whose outputs nothing reads (left behind when a later
    /// request was served by a different node). Returns how many.
    pub fn remove_unused(&mut self) -> R<usize> {
        let mut removed = 0;
        loop {
            let outputs: HashSet<&str> = self.graph.outputs().iter().map(|o| o.name()).collect();
            let dead: Vec<TensorName> = self
                .created
                .iter()
                .filter(|n| !outputs.contains(n.as_str()) && self.graph.producer(n).is_some())
                .filter(|n| {
                    let idx = self.graph.producer(n).expect("checked").0;
                    let node = self.graph.op(idx).expect("made here");
                    node.output
                        .iter()
                        .all(|o| o.is_empty() || (self.graph.consumers(o).is_empty() && !outputs.contains(o.as_str())))
                })
                .cloned()
                .collect();
            if dead.is_empty() {
                return Ok(removed);
            }
            for n in dead {
                let Some((idx, _)) = self.graph.producer(&n) else { continue };
                let op = self.graph.op(idx).expect("made here").op_type().to_string();
                self.graph.remove(idx)?;
                if let Some(c) = self.counts.get_mut(&op) {
                    *c -= 1;
                }
                removed += 1;
            }
        }
    }
    pub fn reshape(&mut self, a: &str, shape: &str) -> R<TensorName> {
        self.op("Reshape", &[a, shape], vec![])
    }
    pub fn cast(&mut self, a: &str, to: i32) -> R<TensorName> {
        self.op("Cast", &[a], vec![attr::int("to", to as i64)])
    }

    // ---- shapes ----

    /// `x`'s shape as a 1-D int64 tensor: a constant when known, else `Shape(x)`.
    pub fn shape_of(&mut self, x: &str) -> R<TensorName> {
        match self.facts.static_shape(x) {
            Some(dims) => self.ints(&dims),
            None => self.op("Shape", &[x], vec![]),
        }
    }

    /// A `Reshape` target turning a tensor of shape `from` into `x`'s shape: a
    /// constant where the dimensions allow it (numbers; 0, "copy", for a symbolic
    /// dimension `from` has at the same position; -1 for one other), else `Shape(x)`.
    pub fn reshape_target(&mut self, x: &str, from: Option<&[Dim]>) -> R<TensorName> {
        match self.constant_reshape_target(x, from)? {
            Some(target) => Ok(target),
            None => self.op("Shape", &[x], vec![]),
        }
    }

    /// [`Self::reshape_target`]'s constant, where the dimensions allow one.
    fn constant_reshape_target(&mut self, x: &str, from: Option<&[Dim]>) -> R<Option<TensorName>> {
        if let Some(dims) = self.shape(x) {
            let mut v = vec![];
            for (i, d) in dims.iter().enumerate() {
                v.push(match (known(d), from.and_then(|f| f.get(i))) {
                    (Some(n), _) if n > 0 => n,
                    (None, Some(f)) if dims_equal(d, f) == Some(true) => 0,
                    _ => -1,
                });
            }
            if v.iter().filter(|&&n| n == -1).count() <= 1 {
                return self.ints(&v).map(Some);
            }
        }
        Ok(None)
    }

    /// `g` reshaped to `x`'s shape.
    pub fn reshape_like(&mut self, g: &str, x: &str) -> R<TensorName> {
        let from = self.shape(g);
        let target = self.reshape_target(x, from.as_deref())?;
        let out = self.reshape(g, &target)?;
        let (dtype, shape) = (self.facts.dtype(g), self.shape(x));
        self.facts.set(&out, dtype, shape);
        Ok(out)
    }

    /// `p` (rows × `last`) reshaped to `x`'s shape, where `x` has the leading
    /// dimensions of `lead` and `last` columns. Where no constant target fits, the
    /// target is read from `lead`, not from `x`: a backward `Shape(x)` would keep a
    /// forward activation alive until the backward pass reaches it.
    pub fn reshape_with_lead(&mut self, p: &str, x: &str, lead: &str, last: i64) -> R<TensorName> {
        let from = self.shape(p);
        let target = match self.constant_reshape_target(x, from.as_deref())? {
            Some(target) => target,
            None => {
                let dims = self.op("Shape", &[lead], vec![attr::int("end", -1)])?;
                let last = self.ints(&[last])?;
                self.op("Concat", &[&dims, &last], vec![attr::int("axis", 0)])?
            }
        };
        let out = self.reshape(p, &target)?;
        let (dtype, shape) = (self.facts.dtype(p), self.shape(x));
        self.facts.set(&out, dtype, shape);
        Ok(out)
    }

    /// Zeros shaped and typed like `x`.
    pub fn zeros_like(&mut self, x: &str) -> R<TensorName> {
        let dtype = self.dtype(x)?;
        let shape = self.shape_of(x)?;
        self.zeros(&shape, dtype)
    }

    /// Zeros of element type `dtype` and the shape held by the 1-D tensor `shape`.
    pub fn zeros(&mut self, shape: &str, dtype: i32) -> R<TensorName> {
        let raw = float_bytes(&[0.0], dtype).unwrap_or_else(|| vec![0; crate::onnx::dtype_size(dtype).unwrap_or(4)]);
        let dt = DataType::try_from(dtype).unwrap_or(DataType::Float);
        let value = make::tensor_raw("value", dt, &[1], raw);
        self.op("ConstantOfShape", &[shape], vec![attr::tensor("value", value)])
    }

    /// The shape `g.name` has.
    pub fn g_shape(&self, g: &G, value: &str) -> Option<Vec<Dim>> {
        g.bshape.clone().or_else(|| self.shape(value))
    }

    /// `g` with exactly `value`'s shape (an `Expand` where it is smaller); the factor stays.
    pub fn exact(&mut self, g: &G, value: &str) -> R<G> {
        let Some(small) = &g.bshape else { return Ok(g.clone()) };
        if let Some(full) = self.shape(value) {
            if small.len() == full.len() && small.iter().zip(&full).all(|(a, b)| dims_equal(a, b) == Some(true)) {
                return Ok(G { bshape: None, ..g.clone() });
            }
        }
        let shape = self.shape_of(value)?;
        let name = self.op("Expand", &[&g.name, &shape], vec![])?;
        Ok(G { name, scale: g.scale, bshape: None })
    }

    /// `g` as one tensor of `value`'s shape, its factor applied.
    pub fn materialize(&mut self, g: &G, value: &str) -> R<TensorName> {
        let scaled = self.apply_scale(g)?;
        let g = self.exact(&G { name: scaled, scale: 1.0, bshape: g.bshape.clone() }, value)?;
        Ok(g.name)
    }

    /// `g`'s factor applied, its shape unchanged.
    pub fn apply_scale(&mut self, g: &G) -> R<TensorName> {
        self.mul_const(&g.name, g.scale)
    }

    /// Brings `name` (of shape `dims` where the caller knows it better than the facts)
    /// to the shape of `x` by summing over the axes along which `x` was broadcast.
    /// Axes where `name` is smaller than `x` stay small (the result broadcasts up to `x`).
    pub fn fit(&mut self, name: &str, dims: Option<Vec<Dim>>, scale: f64, x: &str) -> R<G> {
        let gd = dims.or_else(|| self.shape(name));
        let (Some(gd), Some(xd)) = (gd.clone(), self.shape(x)) else {
            let name = self.dynamic_sum_to(name, gd.is_some(), x)?;
            return Ok(G { name, scale, bshape: None });
        };
        let m = gd.len().min(xd.len());
        let (off_g, off_x) = (gd.len() - m, xd.len() - m);
        let mut reduce: Vec<i64> = (0..off_g as i64).collect();
        let mut result: Vec<Dim> = vec![];
        let mut small = off_x > 0;
        for j in 0..m {
            let (a, b) = (&gd[off_g + j], &xd[off_x + j]);
            if dims_equal(a, b) == Some(true) {
                result.push(a.clone());
            } else if known(b) == Some(1) {
                reduce.push((off_g + j) as i64);
                result.push(Dim::Known(1));
            } else if known(a) == Some(1) {
                small = true;
                result.push(Dim::Known(1));
            } else {
                let name = self.dynamic_sum_to(name, true, x)?;
                return Ok(G { name, scale, bshape: None });
            }
        }
        let inner = reduce.len() > off_g;
        let out = match (off_g > 0, inner) {
            (false, false) => name.to_string(),
            (true, false) => self.reduce_sum(name, &reduce, false)?,
            (false, true) => self.reduce_sum(name, &reduce, true)?,
            (true, true) => {
                let r = self.reduce_sum(name, &reduce, true)?;
                let lead = self.ints(&(0..off_g as i64).collect::<Vec<_>>())?;
                self.op("Squeeze", &[&r, &lead], vec![])?
            }
        };
        let dtype = self.facts.dtype(name).or(self.facts.dtype(x));
        if small {
            self.facts.set(&out, dtype, Some(result.clone()));
            Ok(G { name: out, scale, bshape: Some(result) })
        } else {
            self.facts.set(&out, dtype, Some(xd));
            Ok(G { name: out, scale, bshape: None })
        }
    }

    /// Sums `name` down to `x`'s shape with shapes read at run time: the axes where
    /// `x` (padded with leading ones) has size 1 are summed, then the result is
    /// reshaped to `x`. When `name` may be smaller than `x` along some axis, it is
    /// first expanded (bidirectionally) to `x`'s shape.
    fn dynamic_sum_to(&mut self, name: &str, maybe_small: bool, x: &str) -> R<TensorName> {
        let sx = self.op("Shape", &[x], vec![])?;
        let name = if maybe_small { self.op("Expand", &[name, &sx], vec![])? } else { name.to_string() };
        let padded = match (self.facts.rank(&name), self.facts.rank(x)) {
            (Some(rf), Some(rx)) if rf == rx => sx.clone(),
            (Some(rf), Some(rx)) if rf > rx => {
                let ones = self.ints(&vec![1; rf - rx])?;
                self.op("Concat", &[&ones, &sx], vec![attr::int("axis", 0)])?
            }
            _ => {
                let sf = self.op("Shape", &[&name], vec![])?;
                let rank_f = self.op("Shape", &[&sf], vec![])?;
                let rank_x = self.op("Shape", &[&sx], vec![])?;
                let lead = self.sub(&rank_f, &rank_x)?;
                let one = make::tensor_i64("value", &[1], &[1]);
                let ones = self.op("ConstantOfShape", &[&lead], vec![attr::tensor("value", one)])?;
                self.op("Concat", &[&ones, &sx], vec![attr::int("axis", 0)])?
            }
        };
        let one = self.int_scalar(1)?;
        let mask = self.op("Equal", &[&padded, &one], vec![])?;
        let nz = self.op("NonZero", &[&mask], vec![])?;
        let flat = self.ints(&[-1])?;
        let axes = self.reshape(&nz, &flat)?;
        let summed = self.op(
            "ReduceSum",
            &[&name, &axes],
            vec![attr::int("keepdims", 1), attr::int("noop_with_empty_axes", 1)],
        )?;
        let out = self.reshape(&summed, &sx)?;
        let (dtype, shape) = (self.facts.dtype(x), self.shape(x));
        self.facts.set(&out, dtype, shape);
        Ok(out)
    }

    /// `op(g, other)` (or `op(other, g)` when `g_first` is false) for an elementwise
    /// `op`, brought to `x`'s shape; the factor of `g` carries over.
    pub fn combine(&mut self, op: &str, g: &G, other: &str, g_first: bool, x: &str, full: &str) -> R<G> {
        let mut g = g.clone();
        let mut dims = self.g_shape(&g, full).zip(self.shape(other)).and_then(|(a, b)| broadcast(&a, &b));
        if dims.is_none() && g.bshape.is_some() {
            g = self.exact(&g, full)?;
            dims = self.shape(full).zip(self.shape(other)).and_then(|(a, b)| broadcast(&a, &b));
        }
        let ins = if g_first { [g.name.as_str(), other] } else { [other, g.name.as_str()] };
        let t = self.op(op, &ins, vec![])?;
        let dtype = self.facts.dtype(&t);
        self.facts.set(&t, dtype, dims.clone());
        self.fit(&t, dims, g.scale, x)
    }
}

/// The value of a one-element float constant from its bytes.
fn single_float(dtype: i32, raw: &[u8]) -> Option<f64> {
    match DataType::try_from(dtype).ok()? {
        DataType::Float if raw.len() == 4 => Some(f32::from_le_bytes(raw.try_into().ok()?) as f64),
        DataType::Double if raw.len() == 8 => Some(f64::from_le_bytes(raw.try_into().ok()?)),
        _ => None,
    }
}

/// Little-endian bytes of `values` as element type `dtype` (floating types only), each
/// rounded to nearest even: a float16 `1/n` keeps its subnormal value instead of becoming 0.
pub(crate) fn float_bytes(values: &[f64], dtype: i32) -> Option<Vec<u8>> {
    Some(crate::onnx::float_format(dtype)?.encode(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float16_loss_scale_for_many_tokens_stays_nonzero() {
        // The mean over 20,000 tokens scales the seed gradient by 1/20000, a float16 subnormal.
        let raw = float_bytes(&[1.0 / 20_000.0], DataType::Float16 as i32).unwrap();
        assert_eq!(u16::from_le_bytes([raw[0], raw[1]]), 0x0347); // 5.0e-5, nearest to 1/20000
        let raw = float_bytes(&[f64::NAN], DataType::Bfloat16 as i32).unwrap();
        assert!(crate::precision::FloatFormat::BF16.decode(&raw)[0].is_nan());
    }
}
