//! Loss ops as PyTorch exports them. Both share one shape: the gradient for the
//! scores is `(p - onehot(label))` (cross-entropy) or `-onehot(label)` (NLL), times
//! the per-element weight (class weight, 0 where the label is `ignore_index`) and the
//! reduction's factor (`dY / Σ weights` for `mean`).

use super::{Ctx, Grads, Rule, R};
use crate::autodiff::emit::G;
use crate::autodiff::facts::known;
use crate::ir::attr;

pub(super) const RULES: &[(&str, Rule)] =
    &[("SoftmaxCrossEntropyLoss", softmax_cross_entropy), ("NegativeLogLikelihoodLoss", nll)];

/// dScores = (softmax(scores) - onehot(labels))·w·factor, along class axis 1
fn softmax_cross_entropy(c: &mut Ctx) -> R<Grads> {
    if c.has_dy(1) {
        return Err(c.unsupported("a gradient through the log_prob output"));
    }
    let scores = c.x(0);
    Ok(vec![c.when(0, |c| {
        let p = match c.y(1) {
            lp if !lp.is_empty() => c.unary("Exp", &lp)?,
            _ => c.op("Softmax", &[&scores], vec![attr::int("axis", 1)])?,
        };
        let (onehot, factor) = label_terms(c)?;
        let diff = c.sub(&p, &onehot)?;
        let g = c.dy_g(0)?;
        Ok(G { name: c.mul(&diff, &factor)?, scale: g.scale, bshape: None })
    })?])
}

/// dInput = -onehot(target)·w·factor
fn nll(c: &mut Ctx) -> R<Grads> {
    Ok(vec![c.when(0, |c| {
        let (onehot, factor) = label_terms(c)?;
        let g = c.dy_g(0)?;
        Ok(G { name: c.mul(&onehot, &factor)?, scale: -g.scale, bshape: None })
    })?])
}

/// The one-hot labels [N, C, …] and the per-element factor [N, 1, …] (weight times
/// the reduction's share of dY), with the dY factor not yet applied.
fn label_terms(c: &mut Ctx) -> R<(String, String)> {
    let (scores, labels, weights) = (c.x(0), c.x(1), c.x(2));
    if c.need(2) {
        return Err(c.unsupported("a gradient for the class weights"));
    }
    let dtype = c.dtype(&scores)?;
    let rank = c.rank(&scores)?;
    let reduction = c.attr_str("reduction", "mean");
    let ignore = c.node.attribute.iter().find(|a| a.name() == "ignore_index").and_then(|a| a.i);
    let (safe, valid) = match ignore {
        Some(ii) => {
            let iit = c.constant(crate::onnx::DataType::Int64 as i32, &[], ii.to_le_bytes().to_vec())?;
            let is_ignored = c.op("Equal", &[&labels, &iit], vec![])?;
            let zero = c.int_scalar(0)?;
            let safe = c.where_(&is_ignored, &zero, &labels)?;
            let valid = c.op("Not", &[&is_ignored], vec![])?;
            (safe, Some(c.cast(&valid, dtype)?))
        }
        None => (labels.clone(), None),
    };
    let weight = match (weights.is_empty(), valid) {
        (true, v) => v,
        (false, None) => Some(c.op("Gather", &[&weights, &safe], vec![])?),
        (false, Some(v)) => {
            let w = c.op("Gather", &[&weights, &safe], vec![])?;
            Some(c.mul(&w, &v)?)
        }
    };
    // One-hot along axis 1: labels [N, 1, …] against classes [1, C, 1, …].
    let one = c.ints(&[1])?;
    let lab = c.op("Unsqueeze", &[&safe, &one], vec![])?;
    let classes = match c.shape(&scores).and_then(|s| known(&s[1])) {
        Some(n) => {
            let mut dims = vec![1; rank];
            dims[1] = n;
            let iota: Vec<u8> = (0..n).flat_map(|i| i.to_le_bytes()).collect();
            c.constant(crate::onnx::DataType::Int64 as i32, &dims, iota)?
        }
        None => {
            let n = c.op("Shape", &[&scores], vec![attr::int("start", 1), attr::int("end", 2)])?;
            let n = c.op("Squeeze", &[&n], vec![])?;
            let (zero, step) = (c.int_scalar(0)?, c.int_scalar(1)?);
            let r = c.op("Range", &[&zero, &n, &step], vec![])?;
            let mut dims = vec![1; rank];
            dims[1] = -1;
            let dims = c.ints(&dims)?;
            c.reshape(&r, &dims)?
        }
    };
    let hit = c.op("Equal", &[&lab, &classes], vec![])?;
    let onehot = c.cast(&hit, dtype)?;
    let dy = c.dy_exact(0)?.name;
    let share = match (reduction.as_str(), &weight) {
        ("mean", Some(w)) => {
            let total = c.op("ReduceSum", &[w], vec![attr::int("keepdims", 0)])?;
            let k = c.div(&dy, &total)?;
            c.mul(w, &k)?
        }
        ("mean", None) => {
            let n = match c.static_shape_of(&labels) {
                Some(d) => c.scalar(d.iter().product::<i64>() as f64, dtype)?,
                None => {
                    let n = c.op("Size", &[&labels], vec![])?;
                    c.cast(&n, dtype)?
                }
            };
            c.div(&dy, &n)?
        }
        ("sum" | "none", Some(w)) => c.mul(w, &dy)?,
        ("sum" | "none", None) => dy,
        (other, _) => return Err(c.unsupported(format!("reduction=\"{other}\""))),
    };
    let factor =
        if reduction == "none" || weight.is_some() { c.op("Unsqueeze", &[&share, &one], vec![])? } else { share };
    Ok((onehot, factor))
}
