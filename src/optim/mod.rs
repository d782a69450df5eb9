//! Optimizers written as ONNX ops, appended to a graph that already computes
//! gradients: AdamW (bias-corrected, decoupled weight decay) and SGD (optional
//! momentum, coupled weight decay as in PyTorch), with optional global-norm clipping.
//!
//! In: a graph, and for each parameter its value and gradient names (and optionally a
//! 0/1 mask that freezes elements). Out: the same graph with new inputs `lr` (FLOAT
//! scalar), `step` (INT64 scalar, the number of updates made so far, from 0), one
//! input per state tensor, and outputs `<param>.new`, `<state>.new`, `grad_norm`.
//! Run the graph, then feed each `.new` output back in as the next step's input.

use crate::ir::{attr, Graph, IrError, TensorName};
use crate::onnx::make;
use crate::onnx::DataType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Optimizer {
    AdamW { beta1: f32, beta2: f32, eps: f32, weight_decay: f32 },
    Sgd { momentum: f32, weight_decay: f32 },
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Optimizer::AdamW { beta1, beta2, eps, weight_decay } => {
                write!(f, "AdamW (betas {beta1}, {beta2}, eps {eps:e}, weight decay {weight_decay})")
            }
            Optimizer::Sgd { momentum, weight_decay } => {
                write!(f, "SGD (momentum {momentum}, weight decay {weight_decay})")
            }
        }
    }
}

impl Optimizer {
    pub fn adamw(weight_decay: f32) -> Self {
        Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }

    /// Names of the state tensors kept per parameter (suffixes of the parameter name).
    pub fn state_suffixes(&self) -> &'static [&'static str] {
        match self {
            Optimizer::AdamW { .. } => &[".m", ".v"],
            Optimizer::Sgd { momentum, .. } if *momentum != 0.0 => &[".momentum"],
            Optimizer::Sgd { .. } => &[],
        }
    }
}

/// One tensor to update.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: TensorName,
    pub grad: TensorName,
    pub shape: Vec<i64>,
    /// BOOL tensor, broadcastable to the parameter: false marks frozen elements, which
    /// get no gradient and keep their value exactly.
    pub mask: Option<TensorName>,
}

/// Names the optimizer added, for the trainer and the artifacts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OptimizerIo {
    pub lr: String,
    pub step: String,
    pub step_out: String,
    pub grad_norm: String,
    /// (input, output) pairs: every parameter, state tensor and the step counter, with
    /// its updated value.
    pub updates: Vec<(String, String)>,
}

/// The output name for the updated value of `name`.
pub fn updated(name: &str) -> String {
    format!("{name}.new")
}

/// Appends the optimizer. See the module docs for the interface it adds.
pub fn append(graph: &mut Graph, params: &[Param], opt: Optimizer, clip: Option<f32>) -> Result<OptimizerIo, IrError> {
    graph.set_pass(Some("optimizer"));
    let scalar = |n: &str, t| make::value_info(n, t, &[]);
    graph.add_input(scalar("lr", DataType::Float))?;
    graph.add_input(scalar("step", DataType::Int64))?;
    let one_i = graph.const_i64("one", 1);
    let step_out = graph.add1("Add", &["step", &one_i], vec![], "step.next")?;
    // Bias corrections use t = step + 1, the number of this update.
    let step_f = graph.add1("Cast", &[&step_out], vec![attr::int("to", DataType::Float as i64)], "step_f")?;

    // Masked gradients first: frozen elements must not count towards the norm.
    let mut grads = vec![];
    for p in params {
        grads.push(match &p.mask {
            Some(mask) => {
                let zero = graph.const_f32("zero", 0.0);
                graph.add1("Where", &[mask, &p.grad, &zero], vec![], &format!("{}.masked_grad", p.name))?
            }
            None => p.grad.clone(),
        });
    }
    let grad_norm = global_norm(graph, &grads)?;
    if let Some(max_norm) = clip {
        // scale = max_norm / max(norm, max_norm): 1 below the threshold.
        let c = graph.const_f32("clip", max_norm);
        let denom = graph.add1("Max", &[&grad_norm, &c], vec![], "clip_denom")?;
        let scale = graph.add1("Div", &[&c, &denom], vec![], "clip_scale")?;
        for g in grads.iter_mut() {
            *g = graph.add1("Mul", &[g, &scale], vec![], "clipped_grad")?;
        }
    }

    let mut updates = vec![];
    for (p, g) in params.iter().zip(&grads) {
        let (new_param, states) = match opt {
            Optimizer::AdamW { beta1, beta2, eps, weight_decay } => {
                adamw(graph, p, g, &step_f, beta1, beta2, eps, weight_decay)?
            }
            Optimizer::Sgd { momentum, weight_decay } => sgd(graph, p, g, momentum, weight_decay)?,
        };
        let new_param = match &p.mask {
            Some(mask) => graph.add1("Where", &[mask, &new_param, &p.name], vec![], &format!("{}.kept", p.name))?,
            None => new_param,
        };
        updates.push(expose(graph, &p.name, &new_param, &p.shape)?);
        for (state, new_state) in states {
            updates.push(expose(graph, &state, &new_state, &p.shape)?);
        }
    }
    let step_update = expose(graph, "step", &step_out, &[])?;
    let step_name = step_update.1.clone();
    updates.push(step_update);
    graph.add_output(make::value_info(&grad_norm, DataType::Float, &[]))?;
    graph.set_pass(None);
    Ok(OptimizerIo { lr: "lr".into(), step: "step".into(), step_out: step_name, grad_norm, updates })
}

/// Publishes `value` as the graph output `<name>.new`.
fn expose(graph: &mut Graph, name: &str, value: &str, shape: &[i64]) -> Result<(String, String), IrError> {
    let out = updated(name);
    let id = graph.add1("Identity", &[value], vec![], &out)?;
    // add1 may have had to pick another name; the output must be exactly `<name>.new`.
    if id != out {
        return Err(IrError::Misuse(format!("the graph already uses the name '{out}'")));
    }
    let dtype = if name == "step" { DataType::Int64 } else { DataType::Float };
    let dims: Vec<make::DimSpec> = shape.iter().map(|&d| d.into()).collect();
    graph.add_output(make::value_info(&out, dtype, &dims))?;
    Ok((name.to_string(), out))
}

fn global_norm(graph: &mut Graph, grads: &[TensorName]) -> Result<TensorName, IrError> {
    let mut sum: Option<TensorName> = None;
    for g in grads {
        let sq = graph.add1("Mul", &[g, g], vec![], "grad_sq")?;
        let s = graph.add1("ReduceSum", &[&sq], vec![attr::int("keepdims", 0)], "grad_sq_sum")?;
        sum = Some(match sum {
            None => s,
            Some(acc) => graph.add1("Add", &[&acc, &s], vec![], "grad_sq_total")?,
        });
    }
    let total = match sum {
        Some(t) => t,
        None => graph.const_f32("zero", 0.0),
    };
    graph.add1("Sqrt", &[&total], vec![], "grad_norm")
}

/// Adds a state input `<param><suffix>` shaped like the parameter.
fn state_input(graph: &mut Graph, p: &Param, suffix: &str) -> Result<TensorName, IrError> {
    let name = format!("{}{suffix}", p.name);
    let dims: Vec<make::DimSpec> = p.shape.iter().map(|&d| d.into()).collect();
    graph.add_input(make::value_info(&name, DataType::Float, &dims))?;
    Ok(name)
}

type Update = (TensorName, Vec<(String, TensorName)>);

#[allow(clippy::too_many_arguments)]
fn adamw(
    graph: &mut Graph,
    p: &Param,
    g: &str,
    step: &str,
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
) -> Result<Update, IrError> {
    let m = state_input(graph, p, ".m")?;
    let v = state_input(graph, p, ".v")?;
    let c = |graph: &mut Graph, v: f32| graph.const_f32("c", v);
    let (kb1, k1b1, kb2, k1b2) = (c(graph, b1), c(graph, 1.0 - b1), c(graph, b2), c(graph, 1.0 - b2));
    // m' = b1 m + (1 - b1) g ;  v' = b2 v + (1 - b2) g²
    let m1 = graph.add1("Mul", &[&m, &kb1], vec![], "adam_m")?;
    let m2 = graph.add1("Mul", &[g, &k1b1], vec![], "adam_m")?;
    let m_new = graph.add1("Add", &[&m1, &m2], vec![], "adam_m")?;
    let gg = graph.add1("Mul", &[g, g], vec![], "adam_gg")?;
    let v1 = graph.add1("Mul", &[&v, &kb2], vec![], "adam_v")?;
    let v2 = graph.add1("Mul", &[&gg, &k1b2], vec![], "adam_v")?;
    let v_new = graph.add1("Add", &[&v1, &v2], vec![], "adam_v")?;
    // Bias corrections 1 - b^t.
    let one = c(graph, 1.0);
    let pb1 = graph.add1("Pow", &[&kb1, step], vec![], "adam_b1t")?;
    let bc1 = graph.add1("Sub", &[&one, &pb1], vec![], "adam_bc1")?;
    let pb2 = graph.add1("Pow", &[&kb2, step], vec![], "adam_b2t")?;
    let bc2 = graph.add1("Sub", &[&one, &pb2], vec![], "adam_bc2")?;
    let mhat = graph.add1("Div", &[&m_new, &bc1], vec![], "adam_mhat")?;
    let vhat = graph.add1("Div", &[&v_new, &bc2], vec![], "adam_vhat")?;
    let root = graph.add1("Sqrt", &[&vhat], vec![], "adam_sqrt")?;
    let keps = c(graph, eps);
    let denom = graph.add1("Add", &[&root, &keps], vec![], "adam_denom")?;
    let dir = graph.add1("Div", &[&mhat, &denom], vec![], "adam_dir")?;
    // Decoupled weight decay: p' = p - lr (dir + wd p), which is PyTorch's
    // p (1 - lr wd) - lr dir up to rounding.
    let dir = if wd != 0.0 {
        let kwd = c(graph, wd);
        let decay = graph.add1("Mul", &[&p.name, &kwd], vec![], "adam_decay")?;
        graph.add1("Add", &[&dir, &decay], vec![], "adam_dir_wd")?
    } else {
        dir
    };
    let delta = graph.add1("Mul", &["lr", &dir], vec![], "adam_delta")?;
    let new_p = graph.add1("Sub", &[&p.name, &delta], vec![], &format!("{}.adam", p.name))?;
    Ok((new_p, vec![(m, m_new), (v, v_new)]))
}

fn sgd(graph: &mut Graph, p: &Param, g: &str, momentum: f32, wd: f32) -> Result<Update, IrError> {
    let g = if wd != 0.0 {
        let kwd = graph.const_f32("wd", wd);
        let decay = graph.add1("Mul", &[&p.name, &kwd], vec![], "sgd_decay")?;
        graph.add1("Add", &[g, &decay], vec![], "sgd_grad")?
    } else {
        g.to_string()
    };
    let mut states = vec![];
    let dir = if momentum != 0.0 {
        let buf = state_input(graph, p, ".momentum")?;
        let km = graph.const_f32("momentum", momentum);
        let scaled = graph.add1("Mul", &[&buf, &km], vec![], "sgd_buf")?;
        let new_buf = graph.add1("Add", &[&scaled, &g], vec![], "sgd_buf")?;
        states.push((buf, new_buf.clone()));
        new_buf
    } else {
        g
    };
    let delta = graph.add1("Mul", &["lr", &dir], vec![], "sgd_delta")?;
    let new_p = graph.add1("Sub", &[&p.name, &delta], vec![], &format!("{}.sgd", p.name))?;
    Ok((new_p, states))
}
