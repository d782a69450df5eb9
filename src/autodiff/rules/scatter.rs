//! Scatters without reduction (`Y = Scatter(X, idx, U)`): the gradient of X is dY with
//! the written positions zeroed, the gradient of U the written positions of dY.

use super::{Ctx, Grads, Rule, R};
use crate::autodiff::emit::G;
use crate::ir::attr;

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
        let name = c.op("GatherElements", &[&g.name, &idx], vec![attr::int("axis", axis)])?;
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
    let du = c.when(2, |c| Ok(G { name: c.op("GatherND", &[&g.name, &idx], vec![])?, ..g.clone() }))?;
    Ok(vec![dx, None, du])
}
