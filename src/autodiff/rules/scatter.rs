//! Scatters without reduction, as the split-rows pass writes the selected neurons'
//! outputs over the frozen layer's output.

use super::{Ctx, Grads, Rule, R};
use crate::autodiff::emit::G;
use crate::ir::attr;

pub(super) const RULES: &[(&str, Rule)] = &[("ScatterElements", scatter_elements)];

/// Y = ScatterElements(X, idx, U): dX = dY with the written positions zeroed,
/// dU = GatherElements(dY, idx). Without reduction the indices are unique (the spec
/// leaves duplicates undefined), so every position has one source.
fn scatter_elements(c: &mut Ctx) -> R<Grads> {
    let reduction = c.attr_str("reduction", "none");
    if reduction != "none" {
        return Err(c.unsupported(format!("reduction=\"{reduction}\"")));
    }
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
