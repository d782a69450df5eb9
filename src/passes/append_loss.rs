//! Makes the graph end in a scalar loss.
//!
//! In: a graph with a scalar loss output, or a `logits [batch, seq, vocab]` output, or
//! (with `--loss auto`) a `logits [batch, classes]` output.
//! Out: the same graph with a scalar FLOAT output holding the loss. For logits, a
//! causal-LM cross-entropy is appended: a new input `labels [batch, seq]` (INT64),
//! logits at position t predict labels at t+1 (the labels are shifted, not the
//! logits), label -100 is ignored, the loss is the mean over counted tokens. For rank-2 logits, a sequence-classification
//! cross-entropy: `labels [batch]`, one class per row (-100 ignored), the mean over
//! counted rows, and a count of the rows predicted right (for the accuracy). Built from LogSoftmax + GatherElements + a masked mean:
//! ONNX Runtime's CUDA provider has no SoftmaxCrossEntropyLoss kernel.
//!
//! When the model's logits are `MatMul(hidden, W)` with a frozen `W` (an LM head),
//! the causal-LM loss does not read them: it gathers the hidden rows of the counted
//! positions and multiplies only those by `W`. Prompt and padding positions (often
//! more than half of an instruction batch) then cost nothing in the head's product,
//! the log-softmax or their gradients. The `logits` output itself is unchanged.

use super::{refuse, PassError};
use crate::ir::{attr, Graph};
use crate::onnx::make::{self, declared, DimSpec};
use crate::onnx::DataType;
pub use crate::types::{LossInfo, LossSpec, IGNORE_INDEX};

/// [`append_loss_training`] with every weight frozen.
pub fn append_loss(graph: &mut Graph, spec: &LossSpec) -> Result<LossInfo, PassError> {
    append_loss_training(graph, spec, &|_| false)
}

/// Appends the loss; `is_trained` names the weights a later pass makes trainable (an
/// LM head among them keeps the loss on the full logits).
pub fn append_loss_training(
    graph: &mut Graph,
    spec: &LossSpec,
    is_trained: &dyn Fn(&str) -> bool,
) -> Result<LossInfo, PassError> {
    let outputs: Vec<(String, Option<Vec<DimSpec>>)> =
        graph.outputs().iter().map(|o| (o.name().to_string(), declared(o).and_then(|d| d.1))).collect();
    let names: Vec<&str> = outputs.iter().map(|o| o.0.as_str()).collect();
    let scalar = |name: &str| outputs.iter().any(|(n, s)| n == name && s.as_deref().is_some_and(|s| s.is_empty()));
    match spec {
        LossSpec::Output(name) => {
            if !names.contains(&name.as_str()) {
                return Err(refuse(
                    "loss",
                    format!("--loss {name}: the model has no such output (outputs: {})", names.join(", ")),
                ));
            }
            Ok(LossInfo { loss: name.clone(), kind: "output".into(), labels: None, tokens: None, correct: None })
        }
        LossSpec::Auto => {
            if let Some((n, _)) = outputs.iter().find(|(n, _)| n.to_lowercase().contains("loss") && scalar(n)) {
                return Ok(LossInfo {
                    loss: n.clone(),
                    kind: "output".into(),
                    labels: None,
                    tokens: None,
                    correct: None,
                });
            }
            let logits = names.iter().find(|n| **n == "logits").ok_or_else(|| {
                refuse(
                    "loss",
                    format!(
                        "no scalar loss output and no 'logits' output (outputs: {}); name the loss with --loss OUTPUT",
                        names.join(", ")
                    ),
                )
            })?;
            let rank = outputs.iter().find(|(n, _)| n == *logits).and_then(|(_, s)| s.as_ref()).map(Vec::len);
            match rank {
                Some(2) => sequence_classification(graph, logits),
                _ => causal_lm(graph, logits, is_trained),
            }
        }
        LossSpec::CausalLm => {
            let logits = names.iter().find(|n| **n == "logits").ok_or_else(|| {
                refuse(
                    "loss",
                    format!("--loss causal-lm needs an output named 'logits' (outputs: {})", names.join(", ")),
                )
            })?;
            causal_lm(graph, logits, is_trained)
        }
    }
}

/// Adds the INT64 `labels` input neft's loss reads, shaped `dims`.
fn add_labels(graph: &mut Graph, dims: &[DimSpec]) -> Result<(), PassError> {
    if graph.producer("labels").is_some() {
        return Err(refuse("loss", "the model already has a value named 'labels'; name its loss output with --loss"));
    }
    graph.add_input(make::value_info("labels", DataType::Int64, dims))?;
    Ok(())
}

fn causal_lm(graph: &mut Graph, logits: &str, is_trained: &dyn Fn(&str) -> bool) -> Result<LossInfo, PassError> {
    add_labels(graph, &["batch".into(), "seq".into()])?;
    graph.set_pass(Some("loss"));
    let g = graph;
    // Position t predicts token t+1. The labels are shifted (left by one, -100 in the
    // last column), not the logits: a Slice of the logits would cost a logits-sized
    // copy in the backward pass, and the last position's prediction simply counts as
    // ignored.
    let axis1 = g.const_i64s("axis1", &[1]);
    let one = g.const_i64s("start1", &[1]);
    let end = g.const_i64s("end_max", &[i64::MAX]);
    let next = g.add1("Slice", &["labels", &one, &end, &axis1], vec![], "next_labels")?;
    let shape = g.add1("Shape", &["labels"], vec![attr::int("end", 1)], "label_rows")?;
    let shape = g.add1("Concat", &[&shape, &one], vec![attr::int("axis", 0)], "last_column_shape")?;
    let fill = make::tensor_i64("value", &[1], &[IGNORE_INDEX]);
    let last = g.add1("ConstantOfShape", &[&shape], vec![attr::tensor("value", fill)], "last_column")?;
    let lb = g.add1("Concat", &[&next, &last], vec![attr::int("axis", 1)], "shift_labels")?;
    let (loss, count) = match frozen_head(g, logits, is_trained) {
        Some(head) => counted_rows_nll(g, &head, &lb)?,
        None => masked_mean_nll(g, logits, &lb)?,
    };
    g.set_pass(None);
    Ok(LossInfo { loss, kind: "causal-lm".into(), labels: Some("labels".into()), tokens: Some(count), correct: None })
}

/// An LM head: `logits = MatMul(hidden, weight)` with a frozen matrix.
struct Head {
    hidden: String,
    /// The MatMul's second input (the matrix, or a Transpose of it).
    weight: String,
    /// The hidden size (rows of the product's matrix).
    width: i64,
    /// A frozen vector added to the product (a head with a bias).
    bias: Option<String>,
}

/// The head producing `logits` (through Identity nodes), if it is a product with a
/// frozen rank-2 initializer, used as is or through `Transpose`, plus at most one
/// frozen bias vector.
fn frozen_head(g: &Graph, logits: &str, is_trained: &dyn Fn(&str) -> bool) -> Option<Head> {
    let frozen = |n: &str, rank: usize| g.initializer(n).filter(|t| t.dims.len() == rank && !is_trained(n));
    let mut name = logits.to_string();
    let mut bias = None;
    let op = loop {
        let op = g.op(g.producer(&name)?.0)?;
        match op.op_type() {
            "Identity" => name = op.input.first()?.clone(),
            "Add" if bias.is_none() && op.input.len() == 2 => {
                let b = op.input.iter().position(|i| frozen(i, 1).is_some())?;
                bias = Some(op.input[b].clone());
                name = op.input[1 - b].clone();
            }
            "MatMul" => break op,
            _ => return None,
        }
    };
    let (hidden, weight) = (op.input.first()?, op.input.get(1)?);
    let matrix = |n: &str| frozen(n, 2);
    let width = match matrix(weight) {
        Some(t) => t.dims[0],
        None => {
            let t = g.op(g.producer(weight)?.0)?;
            let perm = t.attribute.iter().find(|a| a.name() == "perm").map(|a| a.ints.clone());
            let plain = perm.as_deref().is_none_or(|p| p == [1, 0]);
            if t.op_type() != "Transpose" || !plain {
                return None;
            }
            matrix(t.input.first()?)?.dims[1]
        }
    };
    if g.initializer(hidden).is_some() {
        return None;
    }
    Some(Head { hidden: hidden.clone(), weight: weight.clone(), width, bias })
}

/// The causal-LM loss on the head's product of the counted positions' hidden rows
/// only (`lb`: labels already shifted to the positions that predict them).
fn counted_rows_nll(g: &mut Graph, head: &Head, lb: &str) -> Result<(String, String), PassError> {
    let flat = g.const_i64s("flat", &[-1]);
    let labels = g.add1("Reshape", &[lb, &flat], vec![], "flat_labels")?;
    let ignore = g.const_i64("ignore_index", IGNORE_INDEX);
    let ignored = g.add1("Equal", &[&labels, &ignore], vec![], "ignored_position")?;
    let counted = g.add1("Not", &[&ignored], vec![], "counted_position")?;
    let rows = g.add1("NonZero", &[&counted], vec![], "counted_rows")?;
    let rows = g.add1("Reshape", &[&rows, &flat], vec![], "counted_rows")?;
    let width = g.const_i64s("hidden_rows_shape", &[-1, head.width]);
    let hidden = g.add1("Reshape", &[&head.hidden, &width], vec![], "hidden_rows")?;
    let hidden = g.add1("Gather", &[&hidden, &rows], vec![attr::int("axis", 0)], "counted_hidden")?;
    let mut logits = g.add1("MatMul", &[&hidden, &head.weight], vec![], "counted_logits")?;
    if let Some(bias) = &head.bias {
        logits = g.add1("Add", &[&logits, bias], vec![], "counted_logits")?;
    }
    let labels = g.add1("Gather", &[&labels, &rows], vec![attr::int("axis", 0)], "counted_labels")?;
    masked_mean_nll(g, &logits, &labels)
}

/// Rank-2 logits `[batch, classes]`: labels `[batch]`, one class per row.
fn sequence_classification(graph: &mut Graph, logits: &str) -> Result<LossInfo, PassError> {
    add_labels(graph, &["batch".into()])?;
    graph.set_pass(Some("loss"));
    let (loss, count) = masked_mean_nll(graph, logits, "labels")?;
    // Rows whose argmax is the label (a label of -100 never is), for the accuracy.
    let g = graph;
    let guess =
        g.add1("ArgMax", &[logits], vec![attr::int("axis", -1), attr::int("keepdims", 0)], "predicted_class")?;
    let hit = g.add1("Equal", &[&guess, "labels"], vec![], "predicted_right")?;
    let hit = g.add1("Cast", &[&hit], vec![attr::int("to", DataType::Float as i64)], "predicted_right")?;
    let correct = g.add1("ReduceSum", &[&hit], vec![attr::int("keepdims", 0)], "correct_count")?;
    g.add_output(make::value_info(&correct, DataType::Float, &[]))?;
    g.set_pass(None);
    let labels = Some("labels".into());
    Ok(LossInfo { loss, kind: SEQUENCE_CLASSIFICATION.into(), labels, tokens: Some(count), correct: Some(correct) })
}

/// The `kind` of a sequence-classification loss (labels: one class per row).
pub const SEQUENCE_CLASSIFICATION: &str = "sequence-classification";

/// `-mean(log_softmax(logits)[label])` over the labels that are not -100 (`labels` has
/// the shape of `logits` without its last axis); adds the loss and the count as graph
/// outputs and returns their names.
fn masked_mean_nll(g: &mut Graph, logits: &str, lb: &str) -> Result<(String, String), PassError> {
    let lp = g.add1("LogSoftmax", &[logits], vec![attr::int("axis", -1)], "log_probs")?;
    let ignore = g.const_i64("ignore_index", IGNORE_INDEX);
    let is_ignored = g.add1("Equal", &[lb, &ignore], vec![], "ignored")?;
    let valid = g.add1("Not", &[&is_ignored], vec![], "counted")?;
    let zero_i = g.const_i64("zero_label", 0);
    let safe = g.add1("Where", &[&valid, lb, &zero_i], vec![], "safe_labels")?;
    let last = g.const_i64s("last_axis", &[-1]);
    let idx = g.add1("Unsqueeze", &[&safe, &last], vec![], "label_index")?;
    let picked = g.add1("GatherElements", &[&lp, &idx], vec![attr::int("axis", -1)], "label_log_prob")?;
    let picked = g.add1("Squeeze", &[&picked, &last], vec![], "label_log_prob")?;
    let weight = g.add1("Cast", &[&valid], vec![attr::int("to", DataType::Float as i64)], "token_weight")?;
    let masked = g.add1("Mul", &[&picked, &weight], vec![], "masked_log_prob")?;
    let total = g.add1("ReduceSum", &[&masked], vec![attr::int("keepdims", 0)], "sum_log_prob")?;
    let count = g.add1("ReduceSum", &[&weight], vec![attr::int("keepdims", 0)], "token_count")?;
    let one_f = g.const_f32("one", 1.0);
    let count = g.add1("Max", &[&count, &one_f], vec![], "token_count")?;
    let mean = g.add1("Div", &[&total, &count], vec![], "mean_log_prob")?;
    let loss = g.add1("Neg", &[&mean], vec![], "loss")?;
    g.add_output(make::value_info(&loss, DataType::Float, &[]))?;
    g.add_output(make::value_info(&count, DataType::Float, &[]))?;
    Ok((loss, count))
}
