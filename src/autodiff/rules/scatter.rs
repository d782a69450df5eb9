//! Scatters without reduction, as the split-rows pass writes trainable rows into a
//! frozen weight (`W' = Scatter(W, S, R)`).
//!
//! The generic gradients gather `dR` out of the full `dW'`. When `dW'` is the weight
//! gradient of a linear layer, `Aᵀ·dY` (a `Gemm` with `transA=1`), the rules instead
//! take only the selected columns (or rows) before the product: `dR = Aᵀ·dY[:, S]`
//! costs k/n of the full weight gradient, and the full product is left unused.

use super::{Ctx, Grads, Rule, R};
use crate::autodiff::emit::G;
use crate::ir::attr;
use crate::onnx::proto::NodeProto;

pub(super) const RULES: &[(&str, Rule)] = &[("ScatterElements", scatter_elements), ("ScatterND", scatter_nd)];

fn no_reduction(c: &Ctx) -> R<()> {
    match c.attr_str("reduction", "none").as_str() {
        "none" => Ok(()),
        other => Err(c.unsupported(format!("reduction=\"{other}\""))),
    }
}

/// Y = ScatterElements(X, idx, U): dX = dY with the written positions zeroed,
/// dU = GatherElements(dY, idx). Without reduction the indices are unique (the spec
/// leaves duplicates undefined), so every position has one source.
fn scatter_elements(c: &mut Ctx) -> R<Grads> {
    no_reduction(c)?;
    let (idx, u) = (c.x(1), c.x(2));
    let axis = c.attr_int("axis", 0);
    let g = c.dy_exact(0)?;
    let dx = c.when(0, |c| {
        let zeros = c.zeros_like(&u)?;
        let name = c.op("ScatterElements", &[&g.name, &idx, &zeros], vec![attr::int("axis", axis)])?;
        Ok(G { name, ..g.clone() })
    })?;
    let du = c.when(2, |c| {
        let columns = (axis == 1 || axis == -1).then(|| selected_columns(c, &idx)).flatten();
        let name = match (columns, weight_gradient(c, &g.name)) {
            // dW' = Aᵀ·Q: the selected columns are Aᵀ·Q[:, S].
            (Some(s), Some((a, q))) => {
                let s = c.ints(&s)?;
                let qs = c.op("Gather", &[&q, &s], vec![attr::int("axis", 1)])?;
                c.op("Gemm", &[&a, &qs], vec![attr::int("transA", 1)])?
            }
            _ => c.op("GatherElements", &[&g.name, &idx], vec![attr::int("axis", axis)])?,
        };
        Ok(G { name, ..g.clone() })
    })?;
    Ok(vec![dx, None, du])
}

/// Y = ScatterND(X, idx, U): dX = dY with the written slices zeroed, dU = GatherND(dY, idx).
fn scatter_nd(c: &mut Ctx) -> R<Grads> {
    no_reduction(c)?;
    let (idx, u) = (c.x(1), c.x(2));
    let g = c.dy_exact(0)?;
    let dx = c.when(0, |c| {
        let zeros = c.zeros_like(&u)?;
        Ok(G { name: c.op("ScatterND", &[&g.name, &idx, &zeros], vec![])?, ..g.clone() })
    })?;
    let du = c.when(2, |c| {
        let name = match (selected_rows(c, &idx), weight_gradient(c, &g.name)) {
            // dW' = Aᵀ·Q: its rows S are (A[:, S])ᵀ·Q.
            (Some(s), Some((a, q))) => {
                let s = c.ints(&s)?;
                let a_s = c.op("Gather", &[&a, &s], vec![attr::int("axis", 1)])?;
                c.op("Gemm", &[&a_s, &q], vec![attr::int("transA", 1)])?
            }
            _ => c.op("GatherND", &[&g.name, &idx], vec![])?,
        };
        Ok(G { name, ..g.clone() })
    })?;
    Ok(vec![dx, None, du])
}

fn producer<'a>(c: &'a Ctx, name: &str) -> Option<&'a NodeProto> {
    let (idx, _) = c.em.graph.producer(name)?;
    c.em.graph.op(idx)
}

/// `(A, Q)` when `name` is `Gemm(A, Q, transA=1)` with no other attribute: a weight
/// gradient `Aᵀ·Q` over flattened rows.
fn weight_gradient(c: &Ctx, name: &str) -> Option<(String, String)> {
    let n = producer(c, name)?;
    let plain = n.attribute.iter().all(|a| a.name() == "transA" && a.i() == 1);
    (n.op_type() == "Gemm" && n.input.len() == 2 && plain && !n.attribute.is_empty())
        .then(|| (n.input[0].clone(), n.input[1].clone()))
}

/// The column list S when `idx` is `Expand(S, _)` of a constant S shaped `[1, k]`.
fn selected_columns(c: &Ctx, idx: &str) -> Option<Vec<i64>> {
    let n = producer(c, idx)?;
    if n.op_type() != "Expand" {
        return None;
    }
    let t = c.em.graph.initializer(&n.input[0])?;
    (t.dims.len() == 2 && t.dims[0] == 1).then(|| crate::onnx::embedded_i64(t)).flatten()
}

/// The row list S when `idx` is a constant shaped `[k, 1]`.
fn selected_rows(c: &Ctx, idx: &str) -> Option<Vec<i64>> {
    let t = c.em.graph.initializer(idx)?;
    (t.dims.len() == 2 && t.dims[1] == 1).then(|| crate::onnx::embedded_i64(t)).flatten()
}
