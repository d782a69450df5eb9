//! Ops that move elements without changing them: the gradient moves them back.

use super::{Ctx, Grads, Rule, R};
use crate::autodiff::emit::G;
use crate::autodiff::facts::known;
use crate::ir::attr;

pub(super) const RULES: &[(&str, Rule)] = &[
    ("Reshape", reshape),
    ("Flatten", reshape),
    ("Squeeze", squeeze),
    ("Unsqueeze", unsqueeze),
    ("Transpose", transpose),
    ("Concat", concat),
    ("Split", split),
    ("Slice", slice),
    ("Expand", expand),
    ("Pad", pad),
    ("Tile", tile),
];

/// dX = Reshape(dY, shape of X)
fn reshape(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| Ok(G { name: c.reshape_like(&g.name, &x)?, ..g.clone() }))?])
}

/// dX = Unsqueeze(dY, axes)
fn squeeze(c: &mut Ctx) -> R<Grads> {
    let (x, axes) = (c.x(0), c.x(1));
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        let name =
            if axes.is_empty() { c.reshape_like(&g.name, &x)? } else { c.op("Unsqueeze", &[&g.name, &axes], vec![])? };
        Ok(G { name, ..g.clone() })
    })?])
}

/// dX = Squeeze(dY, axes)
fn unsqueeze(c: &mut Ctx) -> R<Grads> {
    let axes = c.x(1);
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| Ok(G { name: c.op("Squeeze", &[&g.name, &axes], vec![])?, ..g.clone() }))?])
}

/// dX = Transpose(dY, inverse permutation)
fn transpose(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let g = c.dy_exact(0)?;
    let perm = match c.attr_ints("perm") {
        Some(p) if !p.is_empty() => p,
        _ => (0..c.rank(&x)? as i64).rev().collect(),
    };
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p as usize] = i as i64;
    }
    Ok(vec![c.when(0, |c| Ok(G { name: c.transpose(&g.name, &inverse)?, ..g.clone() }))?])
}

/// dXᵢ = the i-th piece of Split(dY) at the inputs' sizes along the axis
fn concat(c: &mut Ctx) -> R<Grads> {
    let n = c.node.input.len();
    let g = c.dy_exact(0)?;
    if n == 1 {
        return Ok(vec![Some(g)]);
    }
    let rank = c.rank(&c.x(0))?;
    let axis = c.norm_axis(c.attr_int("axis", 0), rank);
    let xs: Vec<String> = (0..n).map(|i| c.x(i)).collect();
    let sizes: Option<Vec<i64>> = xs.iter().map(|x| c.shape(x).and_then(|s| known(&s[axis as usize]))).collect();
    let split = match sizes {
        Some(s) => c.ints(&s)?,
        None => {
            let mut parts = vec![];
            for x in &xs {
                parts.push(c.op("Shape", &[x], vec![attr::int("start", axis), attr::int("end", axis + 1)])?);
            }
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            c.op("Concat", &refs, vec![attr::int("axis", 0)])?
        }
    };
    let pieces = c.node("Split", &[&g.name, &split], vec![attr::int("axis", axis)], n)?;
    Ok((0..n).map(|i| c.need(i).then(|| G { name: pieces[i].clone(), ..g.clone() })).collect())
}

/// dX = Concat(dYᵢ, zeros for outputs without a gradient)
fn split(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let rank = c.rank(&x)?;
    let axis = c.norm_axis(c.attr_int("axis", 0), rank);
    let mut parts = vec![];
    for j in 0..c.node.output.len() {
        let y = c.y(j);
        parts.push(if c.has_dy(j) { c.dy(j)? } else { c.zeros_like(&y)? });
    }
    Ok(vec![c.when(0, |c| {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        Ok(G::exact(c.op("Concat", &refs, vec![attr::int("axis", axis)])?))
    })?])
}

/// dX = dY padded back to X's shape: `Pad` whenever the slice has unit steps and
/// constant axes (its amounts constant where bounds and dimensions are known, else
/// computed from `Shape(X)`); otherwise dY scattered to the positions the same slice
/// picks out of an index tensor.
fn slice(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        let name = match slice_pads(c)? {
            Some(pads) if pads.iter().all(|&p| p == 0) => g.name.clone(),
            Some(pads) => {
                let p = c.ints(&pads)?;
                c.op("Pad", &[&g.name, &p], vec![])?
            }
            None => match runtime_slice_pads(c)? {
                Some(p) => c.op("Pad", &[&g.name, &p], vec![])?,
                None => scatter_back(c, &g.name, &x)?,
            },
        };
        Ok(G { name, ..g.clone() })
    })?])
}

/// The slice's constant axes (normalised, in input order), when its steps are all 1
/// and X's rank is known.
fn unit_step_axes(c: &Ctx, rank: usize) -> Option<Vec<i64>> {
    let n =
        c.const_ints(&c.x(1)).map(|s| s.len()).or_else(|| c.static_shape_of(&c.x(1))?.first().map(|&d| d as usize))?;
    let axes = match c.x(3) {
        a if a.is_empty() => (0..n as i64).collect(),
        a => c.const_ints(&a)?,
    };
    let unit = match c.x(4) {
        s if s.is_empty() => true,
        s => c.const_ints(&s)?.iter().all(|&v| v == 1),
    };
    unit.then(|| axes.iter().map(|&a| c.norm_axis(a, rank)).collect())
}

/// `Pad` amounts undoing a unit-step slice, computed at run time from `Shape(X)` where
/// a bound or a dimension is not known at compile time: per sliced axis, ONNX's
/// clamping of start and end into `[0, dim]`, then `before = start` and
/// `after = dim - start - max(end - start, 0)`. Only `[k]`-sized integers are computed.
fn runtime_slice_pads(c: &mut Ctx) -> R<Option<String>> {
    let x = c.x(0);
    let Ok(rank) = c.rank(&x) else { return Ok(None) };
    let Some(axes) = unit_step_axes(c, rank) else { return Ok(None) };
    let int64 = crate::onnx::DataType::Int64 as i32;
    let as_i64 = |c: &mut Ctx, v: &str| -> R<String> {
        match c.dtype(v)? {
            t if t == int64 => Ok(v.to_string()),
            _ => c.cast(v, int64),
        }
    };
    let (starts, ends) = (as_i64(c, &c.x(1))?, as_i64(c, &c.x(2))?);
    let shape = c.op("Shape", &[&x], vec![])?;
    let axes_t = c.ints(&axes)?;
    let dims = c.op("Gather", &[&shape, &axes_t], vec![attr::int("axis", 0)])?;
    let zero = c.int_scalar(0)?;
    // clamp(v) = max(where(v < 0, min(v, dim) + dim, min(v, dim)), 0); the min first
    // keeps an end of i64::MAX from overflowing.
    let clamp = |c: &mut Ctx, v: &str| -> R<String> {
        let v = c.op("Min", &[v, &dims], vec![])?;
        let negative = c.op("Less", &[&v, &zero], vec![])?;
        let wrapped = c.add(&v, &dims)?;
        let v = c.where_(&negative, &wrapped, &v)?;
        c.op("Max", &[&v, &zero], vec![])
    };
    let (start, end) = (clamp(c, &starts)?, clamp(c, &ends)?);
    let len = c.sub(&end, &start)?;
    let len = c.op("Max", &[&len, &zero], vec![])?;
    let rest = c.sub(&dims, &start)?;
    let after = c.sub(&rest, &len)?;
    let amounts = c.op("Concat", &[&start, &after], vec![attr::int("axis", 0)])?;
    let at: Vec<i64> = axes.iter().copied().chain(axes.iter().map(|&a| a + rank as i64)).collect();
    let at = c.ints(&at)?;
    let none = c.ints(&vec![0; 2 * rank])?;
    let pads = c.op("ScatterElements", &[&none, &at, &amounts], vec![attr::int("axis", 0)])?;
    Ok(Some(pads))
}

/// `Pad` amounts undoing the slice, when they are known at compile time.
fn slice_pads(c: &Ctx) -> R<Option<Vec<i64>>> {
    let x = c.x(0);
    let Some(shape) = c.shape(&x) else { return Ok(None) };
    let r = shape.len();
    let (Some(starts), Some(ends)) = (c.const_ints(&c.x(1)), c.const_ints(&c.x(2))) else { return Ok(None) };
    let axes = match c.x(3) {
        a if a.is_empty() => (0..starts.len() as i64).collect(),
        a => match c.const_ints(&a) {
            Some(v) => v,
            None => return Ok(None),
        },
    };
    let steps = match c.x(4) {
        s if s.is_empty() => vec![1; starts.len()],
        s => match c.const_ints(&s) {
            Some(v) => v,
            None => return Ok(None),
        },
    };
    if steps.iter().any(|&s| s != 1) {
        return Ok(None);
    }
    let mut pads = vec![0; 2 * r];
    for ((&start, &end), &axis) in starts.iter().zip(&ends).zip(&axes) {
        let a = c.norm_axis(axis, r) as usize;
        let Some(dim) = known(&shape[a]) else { return Ok(None) };
        let clamp = |v: i64| if v < 0 { v.saturating_add(dim).max(0) } else { v.min(dim) };
        let (s, e) = (clamp(start), clamp(end));
        let len = (e - s).max(0);
        pads[a] = s.min(dim);
        pads[a + r] = dim - pads[a] - len;
    }
    Ok(Some(pads))
}

/// dX for any slice: the flat positions the slice picks from X (the same `Slice`
/// applied to 0, 1, 2, … shaped like X) receive dY; the rest stays zero. The
/// positions come from a `CumSum` of ones rather than a `Range`, so that shape
/// inference can follow them.
fn scatter_back(c: &mut Ctx, g: &str, x: &str) -> R<String> {
    let shape = c.shape_of(x)?;
    let one = crate::onnx::make::tensor_i64("value", &[1], &[1]);
    let ones = c.op("ConstantOfShape", &[&shape], vec![attr::tensor("value", one)])?;
    let flat = c.ints(&[-1])?;
    let ones = c.reshape(&ones, &flat)?;
    let axis = c.int_scalar(0)?;
    let positions = c.op("CumSum", &[&ones, &axis], vec![attr::int("exclusive", 1)])?;
    let positions = c.reshape(&positions, &shape)?;
    let mut ins: Vec<String> = vec![positions];
    ins.extend((1..c.node.input.len()).map(|i| c.x(i)));
    let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
    let picked = c.op("Slice", &refs, vec![])?;
    let picked = c.reshape(&picked, &flat)?;
    let values = c.reshape(g, &flat)?;
    let zeros = c.zeros_like(x)?;
    let zeros = c.reshape(&zeros, &flat)?;
    let scattered = c.op("ScatterElements", &[&zeros, &picked, &values], vec![attr::int("axis", 0)])?;
    c.reshape(&scattered, &shape)
}

/// dX = dY summed over the broadcast axes
fn expand(c: &mut Ctx) -> R<Grads> {
    let g = c.dy_g(0)?;
    Ok(vec![c.pass(0, &g)?])
}

/// Constant-mode padding with constant non-negative pads: dX = Slice(dY)
fn pad(c: &mut Ctx) -> R<Grads> {
    if c.attr_str("mode", "constant") != "constant" {
        return Err(c.unsupported(format!("mode=\"{}\"", c.attr_str("mode", "constant"))));
    }
    if c.need(2) {
        return Err(c.unsupported("a gradient for the padding value"));
    }
    let x = c.x(0);
    let Some(pads) = c.const_ints(&c.x(1)) else { return Err(c.unsupported("pads that are not constant")) };
    if pads.iter().any(|&p| p < 0) {
        return Err(c.unsupported("negative pads"));
    }
    let n = pads.len() / 2;
    let axes = match c.x(3) {
        a if a.is_empty() => (0..n as i64).collect(),
        a => c.const_ints(&a).ok_or_else(|| c.unsupported("axes that are not constant"))?,
    };
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        let starts = c.ints(&pads[..n])?;
        let ends: Vec<i64> = pads[n..].iter().map(|&e| if e > 0 { -e } else { i64::MAX }).collect();
        let ends = c.ints(&ends)?;
        let axes = c.ints(&axes)?;
        let name = c.op("Slice", &[&g.name, &starts, &ends, &axes], vec![])?;
        c.note_shape(&name, &x, c.shape(&x));
        Ok(G { name, ..g.clone() })
    })?])
}

/// Y = Tile(X, repeats): view dY as [r₀, d₀, r₁, d₁, …] and sum over the rᵢ.
fn tile(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let (Some(dims), Some(reps)) = (c.static_shape_of(&x), c.const_ints(&c.x(1))) else {
        return Err(c.unsupported("repeats or input dimensions not known at compile time"));
    };
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        let split: Vec<i64> = reps.iter().zip(&dims).flat_map(|(&r, &d)| [r, d]).collect();
        let target = c.ints(&split)?;
        let v = c.reshape(&g.name, &target)?;
        let axes: Vec<i64> = (0..dims.len() as i64).map(|i| 2 * i).collect();
        let s = c.reduce_sum(&v, &axes, false)?;
        Ok(G { name: s, ..g.clone() })
    })?])
}
