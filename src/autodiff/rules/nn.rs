//! Neural-network ops: softmax, normalization, convolution and pooling.

use super::{Ctx, Grads, Rule, R};
use crate::autodiff::emit::{float_bytes, G};
use crate::autodiff::facts::known;
use crate::ir::attr;

pub(super) const RULES: &[(&str, Rule)] = &[
    ("Softmax", softmax),
    ("LogSoftmax", log_softmax),
    ("LayerNormalization", layer_norm),
    ("BatchNormalization", batch_norm),
    ("Conv", conv),
    ("MaxPool", max_pool),
    ("GlobalAveragePool", global_average_pool),
];

/// `k·(a - b)` as a gradient; a negative factor swaps the operands instead of
/// staying to be applied later.
fn difference(c: &mut Ctx, k: f64, a: &str, b: &str) -> R<G> {
    let (a, b, k) = if k < 0.0 { (b, a, -k) } else { (a, b, k) };
    Ok(G { name: c.sub(a, b)?, scale: k, bshape: None })
}

/// dX = dY·Y - Y·Σ dY·Y along the axis
fn softmax(c: &mut Ctx) -> R<Grads> {
    let y = c.y(0);
    let axis = c.attr_int("axis", -1);
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        let gy = c.mul(&g.name, &y)?;
        let s = c.reduce_sum(&gy, &[axis], true)?;
        let ys = c.mul(&y, &s)?;
        difference(c, g.scale, &gy, &ys)
    })?])
}

/// dX = dY - exp(Y)·Σ dY along the axis
fn log_softmax(c: &mut Ctx) -> R<Grads> {
    let y = c.y(0);
    let axis = c.attr_int("axis", -1);
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        if let Some((idx, updates)) = scattered_into_zeros(c, &g.name, axis) {
            return sparse_log_softmax_grad(c, &y, axis, &idx, &updates, g.scale);
        }
        let s = c.reduce_sum(&g.name, &[axis], true)?;
        let p = c.unary("Exp", &y)?;
        let ps = c.mul(&p, &s)?;
        difference(c, g.scale, &g.name, &ps)
    })?])
}

/// dY is a few values scattered into zeros (a gathered log-probability: the NLL):
/// dX = scatter_add(exp(Y)·(-ΣdY), idx, updates). Three passes over X's size
/// (Exp, Mul, the scatter's copy) instead of six, and no zero tensor of that size.
/// ΣdY along the axis is itself a scatter, of the updates into zeros one element wide
/// at index 0: exact whatever part of X the updates cover.
fn sparse_log_softmax_grad(c: &mut Ctx, y: &str, axis: i64, idx: &str, updates: &str, scale: f64) -> R<G> {
    let rank = c.rank(y)? as i64;
    let axis = (axis + rank) % rank;
    let mut parts = vec![];
    if axis > 0 {
        parts.push(c.op("Shape", &[y], vec![attr::int("end", axis)])?);
    }
    parts.push(c.ints(&[1])?);
    if axis + 1 < rank {
        parts.push(c.op("Shape", &[y], vec![attr::int("start", axis + 1)])?);
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let row_shape = c.op("Concat", &refs, vec![attr::int("axis", 0)])?;
    let dtype = c.dtype(y)?;
    let row_zeros = c.zeros(&row_shape, dtype)?;
    let idx_shape = c.shape_of(idx)?;
    let first = c.zeros(&idx_shape, crate::onnx::DataType::Int64 as i32)?;
    let add = |axis| vec![attr::string("reduction", "add"), attr::int("axis", axis)];
    let total = c.op("ScatterElements", &[&row_zeros, &first, updates], add(axis))?;
    let minus_total = c.neg(&total)?;
    let p = c.unary("Exp", y)?;
    let start = c.mul(&p, &minus_total)?;
    let name = c.op("ScatterElements", &[&start, idx, updates], add(axis))?;
    Ok(G { name, scale, bshape: None })
}

/// `(indices, updates)` when `g` is `ScatterElements(zeros, indices, updates)` along
/// `axis` with `reduction="add"` into a `ConstantOfShape` of 0.
fn scattered_into_zeros(c: &Ctx, g: &str, axis: i64) -> Option<(String, String)> {
    let (n, _) = c.graph.producer(g)?;
    let scatter = c.graph.op(n)?;
    let scatter_axis = scatter.attribute.iter().find(|a| a.name() == "axis").and_then(|a| a.i).unwrap_or(0);
    let reduction = scatter.attribute.iter().find(|a| a.name() == "reduction").map(|a| a.s().to_vec());
    let rank = c.rank(g).ok()? as i64;
    let same_axis = (scatter_axis + rank) % rank == (axis + rank) % rank;
    if scatter.op_type() != "ScatterElements" || !same_axis || reduction.as_deref() != Some(b"add") {
        return None;
    }
    let (z, _) = c.graph.producer(&scatter.input[0])?;
    let zeros = c.graph.op(z)?;
    let value = zeros.attribute.iter().find(|a| a.name() == "value").and_then(|a| a.t.as_ref());
    let zero = value.is_some_and(|t| t.raw_data.as_deref().is_some_and(|r| r.iter().all(|&b| b == 0)));
    (zeros.op_type() == "ConstantOfShape" && zero).then(|| (scatter.input[1].clone(), scatter.input[2].clone()))
}

/// With x̂ = (X - mean)·r, r = 1/√(var + ε) over the normalized axes and g = dY·scale:
/// dX = r·(g - mean(g) - x̂·mean(g·x̂)), dScale = Σ dY·x̂, dB = Σ dY.
/// x̂ and r come from a second `LayerNormalization` with unit scale.
fn layer_norm(c: &mut Ctx) -> R<Grads> {
    if c.has_dy(1) || c.has_dy(2) {
        return Err(c.unsupported("a gradient through the Mean or InvStdDev outputs"));
    }
    let (x, scale, y) = (c.x(0), c.x(1), c.y(0));
    let rank = c.rank(&x)?;
    let axis = c.norm_axis(c.attr_int("axis", -1), rank);
    let axes: Vec<i64> = (axis..rank as i64).collect();
    let g = c.dy_exact(0)?;
    if !(c.need(0) || c.need(1)) {
        return Ok(vec![None, None, c.pass(2, &g)?]);
    }
    let dtype = c.dtype(&x)?;
    let ones = match c.static_shape_of(&scale) {
        Some(dims) => {
            let n: i64 = dims.iter().product();
            let raw = float_bytes(&vec![1.0; n as usize], dtype).ok_or_else(|| c.unsupported("its element type"))?;
            c.constant(dtype, &dims, raw)?
        }
        None => {
            let shape = c.op("Shape", &[&x], vec![attr::int("start", axis)])?;
            let one = crate::onnx::make::tensor_raw(
                "value",
                dtype.try_into().unwrap_or_default(),
                &[1],
                float_bytes(&[1.0], dtype).unwrap_or_default(),
            );
            c.op("ConstantOfShape", &[&shape], vec![attr::tensor("value", one)])?
        }
    };
    let attrs = vec![
        attr::int("axis", axis),
        attr::float("epsilon", c.attr_float("epsilon", 1e-5) as f32),
        attr::int("stash_type", c.attr_int("stash_type", 1)),
    ];
    let norm = c.node("LayerNormalization", &[&x, &ones], attrs, 3)?;
    let xhat = norm[0].clone();
    // InvStdDev has the stash type (float32 unless stash_type says otherwise).
    let stash = c.attr_int("stash_type", 1) as i32;
    let inv = if stash == dtype { norm[2].clone() } else { c.cast(&norm[2], dtype)? };
    c.note_shape(&xhat, &x, c.shape(&x));
    let dx = c.when(0, |c| {
        let gs = c.mul(&g.name, &scale)?;
        let axes_t = c.ints(&axes)?;
        let keep = vec![attr::int("keepdims", 1)];
        let m1 = c.op("ReduceMean", &[&gs, &axes_t], keep.clone())?;
        let gx = c.mul(&gs, &xhat)?;
        let m2 = c.op("ReduceMean", &[&gx, &axes_t], keep)?;
        let t = c.mul(&xhat, &m2)?;
        let d = c.sub(&gs, &m1)?;
        let d = c.sub(&d, &t)?;
        Ok(G { name: c.mul(&inv, &d)?, ..g.clone() })
    })?;
    let dscale = c.when(1, |c| c.em.combine("Mul", &g, &xhat, true, &scale, &y))?;
    Ok(vec![dx, dscale, c.pass(2, &g)?])
}

/// Inference mode (running statistics as constants), per channel (axis 1):
/// dX = dY·scale·r, dScale = Σ dY·x̂, dB = Σ dY, r = 1/√(var + ε).
fn batch_norm(c: &mut Ctx) -> R<Grads> {
    if c.attr_int("training_mode", 0) != 0 || c.node.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(c.unsupported("training mode"));
    }
    if c.need(3) || c.need(4) {
        return Err(c.unsupported("gradients for the running mean or variance"));
    }
    let (x, scale, mean, var) = (c.x(0), c.x(1), c.x(3), c.x(4));
    let rank = c.rank(&x)?;
    let eps = c.attr_float("epsilon", 1e-5);
    let g = c.dy_exact(0)?;
    let per_channel = c.ints(&(1..rank as i64 - 1).collect::<Vec<_>>())?;
    let others: Vec<i64> = (0..rank as i64).filter(|&a| a != 1).collect();
    let e = c.scalar_like(eps, &var)?;
    let ve = c.add(&var, &e)?;
    let sd = c.unary("Sqrt", &ve)?;
    let inv = c.unary("Reciprocal", &sd)?;
    let dx = c.when(0, |c| {
        let k = c.mul(&scale, &inv)?;
        let k = c.op("Unsqueeze", &[&k, &per_channel], vec![])?;
        Ok(G { name: c.mul(&g.name, &k)?, ..g.clone() })
    })?;
    let dscale = c.when(1, |c| {
        let m = c.op("Unsqueeze", &[&mean, &per_channel], vec![])?;
        let r = c.op("Unsqueeze", &[&inv, &per_channel], vec![])?;
        let xc = c.sub(&x, &m)?;
        let xhat = c.mul(&xc, &r)?;
        let t = c.mul(&g.name, &xhat)?;
        Ok(G { name: c.reduce_sum(&t, &others, false)?, ..g.clone() })
    })?;
    let db = c.when(2, |c| Ok(G { name: c.reduce_sum(&g.name, &others, false)?, ..g.clone() }))?;
    Ok(vec![dx, dscale, db])
}

/// Static convolution geometry: strides, dilations, explicit pads, kernel, and the
/// spatial sizes of input and output.
struct Geometry {
    strides: Vec<i64>,
    dilations: Vec<i64>,
    pads: Vec<i64>,
    kernel: Vec<i64>,
    xs: Vec<i64>,
    ys: Vec<i64>,
}

fn geometry(c: &Ctx) -> R<Geometry> {
    let (x, w, y) = (c.x(0), c.x(1), c.y(0));
    let spatial = |name: &str| -> Option<Vec<i64>> { c.shape(name)?.iter().skip(2).map(known).collect() };
    let (Some(xs), Some(ys), Some(ws)) = (spatial(&x), spatial(&y), c.static_shape_of(&w)) else {
        return Err(c.unsupported("spatial dimensions or kernel shape not known at compile time"));
    };
    let n = xs.len();
    let kernel = ws[2..].to_vec();
    let strides = c.attr_ints("strides").filter(|v| !v.is_empty()).unwrap_or(vec![1; n]);
    let dilations = c.attr_ints("dilations").filter(|v| !v.is_empty()).unwrap_or(vec![1; n]);
    let pads = match c.attr_str("auto_pad", "NOTSET").as_str() {
        "NOTSET" => c.attr_ints("pads").filter(|v| !v.is_empty()).unwrap_or(vec![0; 2 * n]),
        "VALID" => vec![0; 2 * n],
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let mut p = vec![0; 2 * n];
            for i in 0..n {
                let out = (xs[i] + strides[i] - 1) / strides[i];
                let total = ((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - xs[i]).max(0);
                let (small, large) = (total / 2, total - total / 2);
                (p[i], p[i + n]) = if mode == "SAME_UPPER" { (small, large) } else { (large, small) };
            }
            p
        }
        other => return Err(c.unsupported(format!("auto_pad=\"{other}\""))),
    };
    Ok(Geometry { strides, dilations, pads, kernel, xs, ys })
}

/// dX = ConvTranspose(dY, W) with the output padding that restores X's size;
/// dW = the convolution of X with dY, batch and channels swapped (per group);
/// dB = Σ dY over batch and space.
fn conv(c: &mut Ctx) -> R<Grads> {
    let (x, w) = (c.x(0), c.x(1));
    let geo = geometry(c)?;
    let group = c.attr_int("group", 1);
    let n = geo.xs.len();
    let g = c.dy_exact(0)?;
    let dx = c.when(0, |c| {
        let out_pad: Vec<i64> = (0..n)
            .map(|i| {
                let covered = geo.strides[i] * (geo.ys[i] - 1) + (geo.kernel[i] - 1) * geo.dilations[i] + 1;
                geo.xs[i] + geo.pads[i] + geo.pads[i + n] - covered
            })
            .collect();
        let mut attrs = vec![
            attr::ints("strides", &geo.strides),
            attr::ints("dilations", &geo.dilations),
            attr::ints("pads", &geo.pads),
            attr::int("group", group),
            attr::ints("kernel_shape", &geo.kernel),
        ];
        if out_pad.iter().any(|&p| p != 0) {
            attrs.push(attr::ints("output_padding", &out_pad));
        }
        Ok(G { name: c.op("ConvTranspose", &[&g.name, &w], attrs)?, ..g.clone() })
    })?;
    let dw = c.when(1, |c| {
        let swap: Vec<i64> = [1, 0].into_iter().chain(2..n as i64 + 2).collect();
        let xt = if group == 1 {
            c.transpose(&x, &swap)?
        } else {
            // [N, C, …] → [C/G, G·N, …]: group j's batch rows become channels of group j.
            let Some(cin) = c.shape(&x).and_then(|s| known(&s[1])) else {
                return Err(c.unsupported("grouped convolution with an unknown channel count"));
            };
            let split: Vec<i64> = [0, group, cin / group].into_iter().chain(geo.xs.iter().copied()).collect();
            let split = c.ints(&split)?;
            let v = c.reshape(&x, &split)?;
            let perm: Vec<i64> = [2, 1, 0].into_iter().chain(3..n as i64 + 3).collect();
            let v = c.transpose(&v, &perm)?;
            let merged: Vec<i64> = [cin / group, -1].into_iter().chain(geo.xs.iter().copied()).collect();
            let merged = c.ints(&merged)?;
            c.reshape(&v, &merged)?
        };
        let gt = c.transpose(&g.name, &swap)?;
        let attrs = vec![
            attr::ints("strides", &geo.dilations),
            attr::ints("dilations", &geo.strides),
            attr::ints("pads", &geo.pads),
            attr::int("group", group),
        ];
        let z = c.op("Conv", &[&xt, &gt], attrs)?;
        let dw = c.transpose(&z, &swap)?;
        let got: Vec<i64> = (0..n)
            .map(|i| {
                (geo.xs[i] + geo.pads[i] + geo.pads[i + n] - (geo.ys[i] - 1) * geo.strides[i] - 1) / geo.dilations[i]
                    + 1
            })
            .collect();
        let name = if got == geo.kernel {
            dw
        } else {
            let starts = c.ints(&vec![0; n])?;
            let ends = c.ints(&geo.kernel)?;
            let axes = c.ints(&(2..n as i64 + 2).collect::<Vec<_>>())?;
            c.op("Slice", &[&dw, &starts, &ends, &axes], vec![])?
        };
        Ok(G { name, ..g.clone() })
    })?;
    let db = c.when(2, |c| {
        let axes: Vec<i64> = [0].into_iter().chain(2..n as i64 + 2).collect();
        Ok(G { name: c.reduce_sum(&g.name, &axes, false)?, ..g.clone() })
    })?;
    Ok(vec![dx, dw, db])
}

/// dX = dY added at the argmax positions: a second `MaxPool` returns them as flat
/// indices into X, `ScatterElements(add)` puts dY there.
fn max_pool(c: &mut Ctx) -> R<Grads> {
    if c.attr_int("storage_order", 0) != 0 {
        return Err(c.unsupported("storage_order=1"));
    }
    let x = c.x(0);
    let g = c.dy_exact(0)?;
    Ok(vec![c.when(0, |c| {
        let attrs = c.node.attribute.clone();
        let pooled = c.node("MaxPool", &[&x], attrs, 2)?;
        let flat = c.ints(&[-1])?;
        let idx = c.reshape(&pooled[1], &flat)?;
        let values = c.reshape(&g.name, &flat)?;
        let zeros = match c.static_shape_of(&x) {
            Some(dims) => {
                let numel = c.ints(&[dims.iter().product()])?;
                let dtype = c.dtype(&x)?;
                c.zeros(&numel, dtype)?
            }
            None => {
                let z = c.zeros_like(&x)?;
                c.reshape(&z, &flat)?
            }
        };
        let attrs = vec![attr::int("axis", 0), attr::string("reduction", "add")];
        let s = c.op("ScatterElements", &[&zeros, &idx, &values], attrs)?;
        Ok(G { name: c.reshape_like(&s, &x)?, ..g.clone() })
    })?])
}

/// dX = dY / (spatial size), broadcast over space
fn global_average_pool(c: &mut Ctx) -> R<Grads> {
    let x = c.x(0);
    let g = c.dy_exact(0)?;
    let Some(xs) = c.shape(&x) else { return Err(c.unsupported("input of unknown rank")) };
    let Some(area) = xs[2..].iter().map(known).product::<Option<i64>>() else {
        return Err(c.unsupported("spatial dimensions not known at compile time"));
    };
    let small: Vec<_> =
        xs[..2].iter().cloned().chain(xs[2..].iter().map(|_| crate::runtime::tract::Dim::Known(1))).collect();
    Ok(vec![c.need(0).then(|| G { bshape: Some(small), ..g.clone().scaled(1.0 / area as f64) })])
}
