//! Reductions: the output gradient, with the reduced axes kept as size 1, broadcasts
//! back over the input (left small: the consumer broadcasts, no `Expand`).

use super::{Ctx, Grads, Rule, R};
use crate::autodiff::emit::G;
use crate::autodiff::facts::{dims_equal, known};
use crate::ir::attr;
use crate::runtime::tract::Dim;

pub(super) const RULES: &[(&str, Rule)] = &[
    ("ReduceSum", reduce_sum),
    ("ReduceMean", reduce_mean),
    ("ReduceMax", reduce_max_min),
    ("ReduceMin", reduce_max_min),
    ("ReduceSumSquare", reduce_sum_square),
    ("ReduceL1", reduce_l1),
    ("ReduceL2", reduce_l2),
    ("ReduceLogSumExp", reduce_log_sum_exp),
    ("CumSum", cumsum),
];

/// The output gradient and the output, both with the reduced axes kept (size 1), so
/// they broadcast against X; `None` when the op reduces nothing.
fn kept(c: &mut Ctx) -> R<Option<(G, String)>> {
    let (x, y, axes) = (c.x(0), c.y(0), c.x(1));
    let keepdims = c.attr_int("keepdims", 1) == 1;
    let empty = axes.is_empty() || c.const_ints(&axes).is_some_and(|v| v.is_empty());
    if empty && c.attr_int("noop_with_empty_axes", 0) == 1 {
        return Ok(None);
    }
    let g = c.dy_exact(0)?;
    let (name, yk, dims) = if keepdims || empty {
        let dims = if keepdims { c.shape(&y) } else { Some(vec![]) };
        (g.name.clone(), y.clone(), dims)
    } else {
        let gk = c.op("Unsqueeze", &[&g.name, &axes], vec![])?;
        let yk = c.op("Unsqueeze", &[&y, &axes], vec![])?;
        let dims = match (c.const_ints(&axes), c.shape(&x), c.shape(&y)) {
            (Some(ax), Some(xs), Some(ys)) => {
                let ax: Vec<usize> = ax.iter().map(|&a| c.norm_axis(a, xs.len()) as usize).collect();
                let mut rest = ys.into_iter();
                Some(
                    (0..xs.len())
                        .map(|i| if ax.contains(&i) { Dim::Known(1) } else { rest.next().unwrap_or(Dim::Unknown) })
                        .collect(),
                )
            }
            _ => None,
        };
        (gk, yk, dims)
    };
    match dims {
        Some(d) => {
            c.note_shape(&name, &x, Some(d.clone()));
            c.note_shape(&yk, &x, Some(d.clone()));
            Ok(Some((G { name, scale: g.scale, bshape: Some(d) }, yk)))
        }
        None => {
            let shape = c.shape_of(&x)?;
            let full = c.op("Expand", &[&name, &shape], vec![])?;
            Ok(Some((G { name: full, scale: g.scale, bshape: None }, yk)))
        }
    }
}

/// The identity's gradient, for reductions over no axis.
fn pass_through(c: &mut Ctx) -> R<Grads> {
    let g = c.dy_g(0)?;
    Ok(vec![c.pass(0, &g)?])
}

/// dX = dY broadcast over the reduced axes
fn reduce_sum(c: &mut Ctx) -> R<Grads> {
    match kept(c)? {
        Some((g, _)) => Ok(vec![c.need(0).then_some(g)]),
        None => pass_through(c),
    }
}

/// How many elements each output element averages, when the shapes tell it.
fn count(c: &Ctx, x: &str, y: &str) -> Option<f64> {
    let (xs, mut ys) = (c.shape(x)?, c.shape(y)?);
    let mut n = 1.0;
    for d in &xs {
        match ys.iter().position(|e| dims_equal(e, d) == Some(true)) {
            Some(p) => {
                ys.remove(p);
            }
            None => n *= known(d)? as f64,
        }
    }
    for d in &ys {
        n /= known(d)? as f64;
    }
    Some(n)
}

/// dX = dY / n broadcast over the reduced axes
fn reduce_mean(c: &mut Ctx) -> R<Grads> {
    let (x, y) = (c.x(0), c.y(0));
    let Some((g, _)) = kept(c)? else { return pass_through(c) };
    if !c.need(0) {
        return Ok(vec![None]);
    }
    if let Some(n) = count(c, &x, &y) {
        return Ok(vec![Some(g.scaled(1.0 / n))]);
    }
    // n = numel(X) / numel(Y), read at run time (numel(Y) folded in when known).
    let sx = c.op("Size", &[&x], vec![])?;
    let (n, scale) = match c.static_shape_of(&y) {
        Some(d) => (sx, d.iter().product::<i64>() as f64),
        None => {
            let sy = c.op("Size", &[&y], vec![])?;
            (c.div(&sx, &sy)?, 1.0)
        }
    };
    let dtype = c.dtype(&x)?;
    let n = c.cast(&n, dtype)?;
    let name = c.div(&g.name, &n)?;
    c.note_shape(&name, &x, g.bshape.clone());
    Ok(vec![Some(G { name, ..g.scaled(scale) })])
}

/// dX = dY where X equals the extremum (every tied element gets it)
fn reduce_max_min(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let Some((g, yk)) = kept(c)? else { return pass_through(c) };
    Ok(vec![c.when(0, |c| {
        let mask = c.op("Equal", &[&x, &yk], vec![])?;
        c.masked_as(&mask, &g, true, 0, &x)
    })?])
}

/// dX = 2·dY·X
fn reduce_sum_square(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let Some((g, _)) = kept(c)? else { return pass_through(c) };
    Ok(vec![c.when(0, |c| Ok(c.em.combine("Mul", &g, &x, true, &x, &x)?.scaled(2.0)))?])
}

/// dX = dY·sign(X)
fn reduce_l1(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let Some((g, _)) = kept(c)? else { return pass_through(c) };
    Ok(vec![c.when(0, |c| {
        let s = c.unary("Sign", &x)?;
        c.em.combine("Mul", &g, &s, true, &x, &x)
    })?])
}

/// dX = dY·X/Y
fn reduce_l2(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let Some((g, yk)) = kept(c)? else { return pass_through(c) };
    Ok(vec![c.when(0, |c| {
        let t = c.div(&x, &yk)?;
        c.em.combine("Mul", &g, &t, true, &x, &x)
    })?])
}

/// dX = dY·exp(X - Y)
fn reduce_log_sum_exp(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let Some((g, yk)) = kept(c)? else { return pass_through(c) };
    Ok(vec![c.when(0, |c| {
        let d = c.sub(&x, &yk)?;
        let e = c.unary("Exp", &d)?;
        c.em.combine("Mul", &g, &e, true, &x, &x)
    })?])
}

/// dX = CumSum(dY) in the other direction (same `exclusive`)
fn cumsum(c: &mut Ctx) -> R<Grads> {
    let axis = c.x(1);
    let (exclusive, reverse) = (c.attr_int("exclusive", 0), c.attr_int("reverse", 0));
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        let attrs = vec![attr::int("exclusive", exclusive), attr::int("reverse", 1 - reverse)];
        Ok(G { name: c.op("CumSum", &[&g.name, &axis], attrs)?, ..g.clone() })
    })?])
}
