//! Structural labels for layers, found by pattern rather than by name (real exports
//! fold weights into anonymous initializers): which block a layer belongs to and its
//! role (`attn.q`, `attn.k`, `attn.v`, `attn.o`, `mlp.gate`, `mlp.up`, `mlp.down`, `head`),
//! and the gated-MLP units the paper trains (up row, gate row and down column together).

use super::{Layer, LayerKind};
use crate::ir::{Graph, NodeIndex};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};

/// A layer's place in the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Role {
    pub block: Option<usize>,
    /// `attn.q`, `mlp.up`, `head`, ...; `linear`/`conv` when no pattern matched.
    pub role: String,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.block {
            Some(b) => write!(f, "block {b} / {}", self.role),
            None => f.write_str(&self.role),
        }
    }
}

/// An MLP whose intermediate units couple rows of several weights: unit n is column n
/// of `gate` and `up` (`[hidden, ffn]`) and row n of `down` (`[ffn, hidden]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MlpUnits {
    pub block: usize,
    pub gate: Option<String>,
    pub up: String,
    pub down: String,
    pub units: usize,
}

/// Ops that compute each element from the same element of their inputs (and from
/// broadcast operands): what may sit between the products of an MLP unit.
pub const ELEMENTWISE: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Sigmoid",
    "Tanh",
    "Relu",
    "Erf",
    "Gelu",
    "Silu",
    "Softplus",
    "Pow",
    "Sqrt",
    "Exp",
    "Abs",
    "Reciprocal",
    "LeakyRelu",
    "Elu",
    "HardSigmoid",
    "HardSwish",
    "Cast",
    "Identity",
    "Where",
    "Cos",
    "Sin",
    "Max",
    "Min",
    "IsNaN",
];
/// Ops that only move data.
const MOVEMENT: &[&str] = &["Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Concat", "Expand", "Split"];

/// Ops a trace may pass through: data movement and elementwise arithmetic, the glue
/// between layers in attention and MLP blocks.
fn is_glue(op: &str) -> bool {
    ELEMENTWISE.contains(&op) || MOVEMENT.contains(&op)
}
const ACTIVATIONS: &[&str] = &["Sigmoid", "Tanh", "Relu", "Erf", "Gelu", "Silu", "Softplus"];
const MAX_DEPTH: usize = 48;

pub struct Structure {
    pub roles: HashMap<String, Role>,
    pub mlps: Vec<MlpUnits>,
}

/// Whether a layer is a linear layer with an `[in, out]` weight: `MatMul`, or a
/// `Gemm` without `transB` (GPT-2's Conv1D, exported on flattened rows).
fn in_out_linear(l: &Layer) -> bool {
    l.kind == LayerKind::MatMul || (l.kind == LayerKind::Gemm && l.axis == 1)
}

pub fn analyze_structure(graph: &Graph, layers: &[Layer]) -> Structure {
    let by_output: HashMap<String, &Layer> = layers
        .iter()
        .filter(|l| in_out_linear(l))
        .flat_map(|l| {
            graph
                .consumers(&l.weight)
                .into_iter()
                .filter_map(move |(n, _)| Some((graph.op(n)?.output.first()?.clone(), l)))
        })
        .collect();
    let mut roles: HashMap<String, Role> = HashMap::new();
    let mut mlps = vec![];
    let mut attn_blocks = 0;
    for idx in graph.ops_in_order() {
        let node = graph.op(idx).expect("op");
        match node.op_type() {
            "Softmax" => {
                if let Some(found) = attention(graph, idx, &by_output) {
                    for (role, w) in &found {
                        // One weight behind several of q, k and v: a fused projection (GPT-2's c_attn).
                        let fused = found.iter().filter(|(r, x)| x == w && r != role && *r != "attn.o").count() > 0;
                        let role = if fused && *role != "attn.o" { "attn.qkv" } else { role };
                        roles.entry(w.clone()).or_insert(Role { block: Some(attn_blocks), role: role.into() });
                    }
                    attn_blocks += 1;
                }
            }
            "MatMul" | "Gemm" => {
                let Some(down) = by_output.get(&node.output[0]) else { continue };
                let ffn = down.shape[0];
                let feeders: Vec<&Layer> =
                    mlp_sources(graph, &node.input[0], &by_output).into_iter().filter(|l| l.shape[1] == ffn).collect();
                let block = mlps.len();
                let unit = match feeders.as_slice() {
                    [a, b] => {
                        let (gate, up) = if activated(graph, &a.weight) { (a, b) } else { (b, a) };
                        Some(MlpUnits {
                            block,
                            gate: Some(gate.weight.clone()),
                            up: up.weight.clone(),
                            down: down.weight.clone(),
                            units: ffn as usize,
                        })
                    }
                    [up] if activated(graph, &up.weight) || activated_later(graph, &up.weight) => Some(MlpUnits {
                        block,
                        gate: None,
                        up: up.weight.clone(),
                        down: down.weight.clone(),
                        units: ffn as usize,
                    }),
                    _ => None,
                };
                if let Some(u) = unit {
                    if let Some(g) = &u.gate {
                        roles.insert(g.clone(), Role { block: Some(block), role: "mlp.gate".into() });
                    }
                    roles.insert(u.up.clone(), Role { block: Some(block), role: "mlp.up".into() });
                    roles.insert(u.down.clone(), Role { block: Some(block), role: "mlp.down".into() });
                    mlps.push(u);
                }
            }
            _ => {}
        }
    }
    // A layer whose output reaches a graph output through glue only is the head.
    let outputs: HashSet<&str> = graph.outputs().iter().map(|o| o.name()).collect();
    for l in layers {
        if roles.contains_key(&l.weight) {
            continue;
        }
        let is_head = l.kind == LayerKind::MatMul
            && graph
                .consumers(&l.weight)
                .iter()
                .filter_map(|(n, _)| graph.op(*n)?.output.first().cloned())
                .any(|y| reaches_output(graph, &y, &outputs));
        let role = if is_head {
            "head"
        } else if l.kind == LayerKind::Conv {
            "conv"
        } else {
            "linear"
        };
        roles.insert(l.weight.clone(), Role { block: None, role: role.into() });
    }
    Structure { roles, mlps }
}

/// q, k (the two sides of the scores MatMul before the Softmax), v (the value side of
/// the MatMul after it) and o (the first layer after that).
fn attention(
    graph: &Graph,
    softmax: NodeIndex,
    by_output: &HashMap<String, &Layer>,
) -> Option<Vec<(&'static str, String)>> {
    let input = graph.op(softmax)?.input.first()?;
    let scores = find_back(graph, input, |op| op == "MatMul")?;
    let scores_op = graph.op(scores)?;
    if by_output.contains_key(&scores_op.output[0]) {
        return None;
    }
    let out = graph.op(softmax)?.output.first()?;
    let pv = find_forward(graph, out, |op| op == "MatMul")?;
    let pv_op = graph.op(pv)?;
    let mut found = vec![];
    for (role, value) in [("attn.q", &scores_op.input[0]), ("attn.k", &scores_op.input[1]), ("attn.v", &pv_op.input[1])]
    {
        for l in sources(graph, value, by_output) {
            found.push((role, l.weight.clone()));
        }
    }
    let o = find_forward(graph, &pv_op.output[0], |op| op == "MatMul" || op == "Gemm")?;
    if let Some(l) = by_output.get(&graph.op(o)?.output[0]) {
        found.push(("attn.o", l.weight.clone()));
    }
    Some(found)
}

/// The layers whose outputs flow into `value` through glue ops only.
fn sources<'a>(graph: &Graph, value: &str, by_output: &HashMap<String, &'a Layer>) -> Vec<&'a Layer> {
    trace_layers(graph, value, by_output, |op| {
        if is_glue(op.op_type()) {
            op.input.iter().filter(|i| !i.is_empty()).cloned().collect()
        } else {
            vec![]
        }
    })
}

/// The layers feeding an MLP's down projection: through activations, gating products,
/// additions of constants (biases) and reshapes, but never through a residual addition.
fn mlp_sources<'a>(graph: &Graph, value: &str, by_output: &HashMap<String, &'a Layer>) -> Vec<&'a Layer> {
    const MLP_GLUE: &[&str] = &[
        "Mul", "Div", "Add", "Sub", "Sigmoid", "Tanh", "Relu", "Erf", "Gelu", "Silu", "Softplus", "Cast", "Identity",
        "Pow",
    ];
    let constant = |name: &str| {
        graph.initializer(name).is_some()
            || graph.producer(name).and_then(|p| graph.op(p.0)).is_some_and(|o| o.op_type() == "Constant")
    };
    trace_layers(graph, value, by_output, |op| {
        // Reshapes between flattened rows and [batch, seq, n] (GPT-2's Conv1D): the data only.
        if matches!(op.op_type(), "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze") {
            return op.input.first().cloned().into_iter().collect();
        }
        let variable: Vec<String> = op.input.iter().filter(|i| !i.is_empty() && !constant(i)).cloned().collect();
        let residual = variable.len() > 1 && op.op_type() != "Mul";
        if MLP_GLUE.contains(&op.op_type()) && !residual {
            variable
        } else {
            vec![]
        }
    })
}

/// Walks back from `value`, stopping at layer outputs (collected, each once) and
/// following the inputs `follow` picks of every other producing op.
fn trace_layers<'a>(
    graph: &Graph,
    value: &str,
    by_output: &HashMap<String, &'a Layer>,
    follow: impl Fn(&crate::onnx::proto::NodeProto) -> Vec<String>,
) -> Vec<&'a Layer> {
    let mut found: Vec<&Layer> = vec![];
    let mut seen = BTreeSet::new();
    let mut stack = vec![(value.to_string(), 0usize)];
    while let Some((v, depth)) = stack.pop() {
        if depth > MAX_DEPTH || !seen.insert(v.clone()) {
            continue;
        }
        if let Some(l) = by_output.get(&v) {
            if !found.iter().any(|f| f.weight == l.weight) {
                found.push(l);
            }
            continue;
        }
        let Some(op) = graph.producer(&v).and_then(|(idx, _)| graph.op(idx)) else { continue };
        stack.extend(follow(op).into_iter().map(|i| (i, depth + 1)));
    }
    found
}

fn find_back(graph: &Graph, value: &str, want: impl Fn(&str) -> bool) -> Option<NodeIndex> {
    let mut v = value.to_string();
    for _ in 0..MAX_DEPTH {
        let (idx, _) = graph.producer(&v)?;
        let op = graph.op(idx)?;
        if want(op.op_type()) {
            return Some(idx);
        }
        if !is_glue(op.op_type()) {
            return None;
        }
        // Follow the first floating-point-looking input: the data path of Add/Where/Mul.
        v = op
            .input
            .iter()
            .find(|i| {
                !i.is_empty()
                    && graph.initializer(i).is_none()
                    && graph.producer(i).and_then(|p| graph.op(p.0)).is_some()
            })?
            .clone();
    }
    None
}

fn find_forward(graph: &Graph, value: &str, want: impl Fn(&str) -> bool) -> Option<NodeIndex> {
    let mut frontier = vec![value.to_string()];
    for _ in 0..MAX_DEPTH {
        let mut next = vec![];
        for v in &frontier {
            for (n, _) in graph.consumers(v) {
                let op = graph.op(n)?;
                if want(op.op_type()) {
                    return Some(n);
                }
                if is_glue(op.op_type()) {
                    next.extend(op.output.iter().cloned());
                }
            }
        }
        if next.is_empty() {
            return None;
        }
        frontier = next;
    }
    None
}

/// Whether a layer's output goes straight into an activation function.
fn activated(graph: &Graph, weight: &str) -> bool {
    graph.consumers(weight).iter().filter_map(|(n, _)| graph.op(*n)?.output.first().cloned()).any(|y| {
        graph.consumers(&y).iter().any(|(c, _)| graph.op(*c).is_some_and(|o| ACTIVATIONS.contains(&o.op_type())))
            || graph.consumers(&y).iter().any(|(c, _)| {
                // A bias Add between the layer and its activation (BERT-style MLPs).
                graph.op(*c).is_some_and(|o| {
                    o.op_type() == "Add"
                        && graph.consumers(&o.output[0]).iter().any(|(d, _)| {
                            graph.op(*d).is_some_and(|p| ACTIVATIONS.contains(&p.op_type()) || p.op_type() == "Div")
                        })
                })
            })
    })
}

/// Whether a layer's output reaches an activation function through reshapes and
/// elementwise arithmetic (GPT-2's tanh GELU, written as Mul, Pow, Add, Tanh after a
/// Reshape back from flattened rows).
fn activated_later(graph: &Graph, weight: &str) -> bool {
    graph
        .consumers(weight)
        .iter()
        .filter_map(|(n, _)| graph.op(*n)?.output.first().cloned())
        .any(|y| find_forward(graph, &y, |op| ACTIVATIONS.contains(&op)).is_some())
}

fn reaches_output(graph: &Graph, value: &str, outputs: &HashSet<&str>) -> bool {
    let mut v = value.to_string();
    for _ in 0..MAX_DEPTH {
        if outputs.contains(v.as_str()) {
            return true;
        }
        let consumers = graph.consumers(&v);
        let [(n, _)] = consumers.as_slice() else { return false };
        let Some(op) = graph.op(*n) else { return false };
        if !is_glue(op.op_type()) {
            return false;
        }
        v = op.output[0].clone();
    }
    false
}
