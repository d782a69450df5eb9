//! Gathers: the gradient scatters back, adding where an index repeats
//! (`ScatterND`/`ScatterElements` with `reduction="add"`, opset 16+).

use super::{Ctx, Grads, Rule, R};
use crate::autodiff::emit::G;
use crate::ir::attr;

pub(super) const RULES: &[(&str, Rule)] =
    &[("Gather", gather), ("GatherElements", gather_elements), ("GatherND", gather_nd)];

fn add() -> Vec<crate::onnx::proto::AttributeProto> {
    vec![attr::string("reduction", "add")]
}

/// axis 0 (embeddings): dX = ScatterND(0, Unsqueeze(idx, -1), dY, add); other axes:
/// dY viewed as X's shape with the index dimensions flattened, scattered by
/// ScatterElements along the axis with the indices broadcast to it.
fn gather(c: &mut Ctx) -> R<Grads> {
    let (x, idx) = (c.x(0), c.x(1));
    let rank = c.rank(&x)?;
    let axis = c.norm_axis(c.attr_int("axis", 0), rank);
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        if let Some(name) = gather_back_by_position(c, &g.name, &x, &idx, axis as usize)? {
            return Ok(G { name, ..g.clone() });
        }
        let zeros = c.zeros_like(&x)?;
        let name = if axis == 0 {
            let last = c.ints(&[-1])?;
            let i = c.op("Unsqueeze", &[&idx, &last], vec![])?;
            c.op("ScatterND", &[&zeros, &i, &g.name], add())?
        } else {
            let a = axis as usize;
            let target = match c.static_shape_of(&x) {
                Some(mut dims) => {
                    dims[a] = -1;
                    c.ints(&dims)?
                }
                None => {
                    let lead = c.op("Shape", &[&x], vec![attr::int("start", 0), attr::int("end", axis)])?;
                    let trail = c.op("Shape", &[&x], vec![attr::int("start", axis + 1)])?;
                    let minus1 = c.ints(&[-1])?;
                    c.op("Concat", &[&lead, &minus1, &trail], vec![attr::int("axis", 0)])?
                }
            };
            let gy = c.reshape(&g.name, &target)?;
            let mut ishape = vec![1i64; rank];
            ishape[a] = -1;
            let ishape = c.ints(&ishape)?;
            let i = c.reshape(&idx, &ishape)?;
            let gshape = c.op("Shape", &[&gy], vec![])?;
            let i = c.op("Expand", &[&i, &gshape], vec![])?;
            let mut attrs = add();
            attrs.push(attr::int("axis", axis));
            c.op("ScatterElements", &[&zeros, &i, &gy], attrs)?
        };
        Ok(G { name, ..g.clone() })
    })?])
}

/// The gradient of a Gather by constant, distinct 1-D indices along an axis of known
/// size n (e.g. the channel order a split Conv layer gathers by): every
/// position p of X was picked at most once, so dX = Gather(Concat(dY, 0), J) with
/// J[p] the position that picked p, or the appended zero slice. Two copies and an
/// `[n]` index, where the scatter would need zeros, an index broadcast to dY's size
/// and a scatter. `None` when the indices do not qualify.
fn gather_back_by_position(c: &mut Ctx, g: &str, x: &str, idx: &str, axis: usize) -> R<Option<String>> {
    let one_d = c.static_shape_of(idx).is_some_and(|s| s.len() == 1);
    let (Some(ids), true) = (c.const_ints(idx), one_d) else { return Ok(None) };
    let Some(n) = c.shape(x).and_then(|s| s.get(axis).and_then(crate::autodiff::facts::known)) else {
        return Ok(None);
    };
    let mut from = vec![-1i64; n as usize];
    for (pos, &v) in ids.iter().enumerate() {
        let v = if v < 0 { v + n } else { v };
        match from.get_mut(v.max(0) as usize) {
            Some(slot) if (0..n).contains(&v) && *slot < 0 => *slot = pos as i64,
            _ => return Ok(None),
        }
    }
    let m = ids.len() as i64;
    let a = axis as i64;
    let source = if from.iter().all(|&p| p >= 0) {
        g.to_string()
    } else {
        for p in from.iter_mut().filter(|p| **p < 0) {
            *p = m;
        }
        let lead = c.op("Shape", &[g], vec![attr::int("start", 0), attr::int("end", a)])?;
        let trail = c.op("Shape", &[g], vec![attr::int("start", a + 1)])?;
        let one = c.ints(&[1])?;
        let shape = c.op("Concat", &[&lead, &one, &trail], vec![attr::int("axis", 0)])?;
        let dtype = c.dtype(x)?;
        let zero = c.zeros(&shape, dtype)?;
        c.op("Concat", &[g, &zero], vec![attr::int("axis", a)])?
    };
    let j = c.ints(&from)?;
    Ok(Some(c.op("Gather", &[&source, &j], vec![attr::int("axis", a)])?))
}

/// dX = ScatterElements(0, idx, dY, axis, add)
fn gather_elements(c: &mut Ctx) -> R<Grads> {
    let (x, idx) = (c.x(0), c.x(1));
    let axis = c.attr_int("axis", 0);
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        let zeros = c.zeros_like(&x)?;
        let mut attrs = add();
        attrs.push(attr::int("axis", axis));
        Ok(G { name: c.op("ScatterElements", &[&zeros, &idx, &g.name], attrs)?, ..g.clone() })
    })?])
}

/// dX = ScatterND(0, idx, dY, add)
fn gather_nd(c: &mut Ctx) -> R<Grads> {
    if c.attr_int("batch_dims", 0) != 0 {
        return Err(c.unsupported(format!("batch_dims={}", c.attr_int("batch_dims", 0))));
    }
    let (x, idx) = (c.x(0), c.x(1));
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        let zeros = c.zeros_like(&x)?;
        Ok(G { name: c.op("ScatterND", &[&zeros, &idx, &g.name], add())?, ..g.clone() })
    })?])
}
