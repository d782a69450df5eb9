//! Elementwise ops (numpy broadcasting): `dA = fit(dY · ∂Y/∂A, A)`.

use super::{Ctx, Grads, Rule, R};
use crate::autodiff::emit::G;
use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI, PI};

pub(super) const RULES: &[(&str, Rule)] = &[
    ("Add", add),
    ("Sub", sub),
    ("Mul", mul),
    ("Div", div),
    ("Neg", neg),
    ("Pow", pow),
    ("Sqrt", sqrt),
    ("Reciprocal", reciprocal),
    ("Exp", exp),
    ("Log", log),
    ("Tanh", tanh),
    ("Sigmoid", sigmoid),
    ("Relu", relu),
    ("LeakyRelu", leaky_relu),
    ("Softplus", softplus),
    ("Erf", erf),
    ("Gelu", gelu),
    ("Abs", abs),
    ("Sin", sin),
    ("Cos", cos),
    ("Where", where_),
    ("Max", max_min),
    ("Min", max_min),
    ("Sum", sum),
    ("Mean", mean),
    ("Clip", clip),
    ("Cast", cast),
    ("Identity", identity),
    ("Dropout", dropout),
];

/// dA = dY, dB = dY
fn add(c: &mut Ctx) -> R<Grads> {
    let g = c.dy_g(0)?;
    Ok(vec![c.pass(0, &g)?, c.pass(1, &g)?])
}

/// dA = dY, dB = -dY
fn sub(c: &mut Ctx) -> R<Grads> {
    let g = c.dy_g(0)?;
    Ok(vec![c.pass(0, &g)?, c.pass(1, &g.clone().scaled(-1.0))?])
}

/// dA = dY·B, dB = dY·A (a constant scalar factor only scales the gradient)
fn mul(c: &mut Ctx) -> R<Grads> {
    if let Some(x_at) = silu_input(c) {
        return silu(c, x_at);
    }
    let g = c.dy_g(0)?;
    let mut out = vec![];
    for (i, other) in [(0, c.x(1)), (1, c.x(0))] {
        out.push(match c.const_scalar(&other) {
            Some(k) => c.pass(i, &g.clone().scaled(k))?,
            None => c.when(i, |c| c.combine("Mul", &g, &other, i))?,
        });
    }
    Ok(out)
}

/// Which input of this `Mul` is `X` when it computes SiLU, `X·Sigmoid(X)`.
fn silu_input(c: &Ctx) -> Option<usize> {
    let (a, b) = (c.x(0), c.x(1));
    let sigmoid_of = |s: &str, x: &str| {
        let (n, _) = c.graph.producer(s)?;
        let op = c.graph.op(n)?;
        (op.op_type() == "Sigmoid" && op.input.first().is_some_and(|i| i == x)).then_some(())
    };
    match (sigmoid_of(&b, &a), sigmoid_of(&a, &b)) {
        (Some(()), _) => Some(0),
        (_, Some(())) => Some(1),
        _ => None,
    }
}

/// SiLU, Y = X·S with S = Sigmoid(X), as one function of X:
/// dX = dY·(S + X·S·(1 - S)) = dY·(S + Y·(1 - S)).
/// Written with S and Y, not X: Y is read anyway by whatever multiplies it next (the
/// up projection in a gated MLP), so the backward pass holds two tensors here, not
/// three. The whole gradient goes to X; S gets none from this node.
fn silu(c: &mut Ctx, x_at: usize) -> R<Grads> {
    let (g, s, y) = (c.dy_g(0)?, c.x(1 - x_at), c.y(0));
    let dx = c.when(x_at, |c| {
        let om = c.rsub_const(1.0, &s)?;
        let t = c.mul(&y, &om)?;
        let d = c.add(&s, &t)?;
        c.combine("Mul", &g, &d, x_at)
    })?;
    let mut grads = vec![None, None];
    grads[x_at] = dx;
    Ok(grads)
}

/// dA = dY/B, dB = -(dY/B)·Y
fn div(c: &mut Ctx) -> R<Grads> {
    let g = c.dy_g(0)?;
    let (b, y) = (c.x(1), c.y(0));
    let da = match c.const_scalar(&b) {
        Some(k) => c.pass(0, &g.clone().scaled(1.0 / k))?,
        None => c.when(0, |c| c.combine("Div", &g, &b, 0))?,
    };
    let db = c.when(1, |c| {
        let t = c.em.combine("Div", &g, &b, true, &y, &y)?;
        Ok(c.combine("Mul", &t, &y, 1)?.scaled(-1.0))
    })?;
    Ok(vec![da, db])
}

/// dA = -dY
fn neg(c: &mut Ctx) -> R<Grads> {
    let g = c.dy_g(0)?;
    Ok(vec![c.pass(0, &g.scaled(-1.0))?])
}

/// dA = dY·B·A^(B-1), dB = dY·Y·ln A
fn pow(c: &mut Ctx) -> R<Grads> {
    let g = c.dy_g(0)?;
    let (a, b, y) = (c.x(0), c.x(1), c.y(0));
    let da = match c.const_scalar(&b) {
        Some(0.0) => None,
        Some(1.0) => c.pass(0, &g)?,
        Some(2.0) => c.when(0, |c| Ok(c.combine("Mul", &g, &a, 0)?.scaled(2.0)))?,
        Some(0.5) => c.when(0, |c| Ok(c.combine("Div", &g, &y, 0)?.scaled(0.5)))?,
        Some(e) => c.when(0, |c| {
            let k = c.scalar_like(e - 1.0, &a)?;
            let p = c.op("Pow", &[&a, &k], vec![])?;
            Ok(c.combine("Mul", &g, &p, 0)?.scaled(e))
        })?,
        None => c.when(0, |c| {
            let one = c.scalar_like(1.0, &b)?;
            let bm1 = c.sub(&b, &one)?;
            let p = c.op("Pow", &[&a, &bm1], vec![])?;
            let t = c.mul(&p, &b)?;
            c.combine("Mul", &g, &t, 0)
        })?,
    };
    let db = c.when(1, |c| {
        let l = c.unary("Log", &a)?;
        let t = c.mul(&y, &l)?;
        c.combine("Mul", &g, &t, 1)
    })?;
    Ok(vec![da, db])
}

/// dA = dY / (2·Y)
fn sqrt(c: &mut Ctx) -> R<Grads> {
    let (g, y) = (c.dy_g(0)?, c.y(0));
    Ok(vec![c.when(0, |c| Ok(c.combine("Div", &g, &y, 0)?.scaled(0.5)))?])
}

/// dA = -dY·Y²
fn reciprocal(c: &mut Ctx) -> R<Grads> {
    let (g, y) = (c.dy_g(0)?, c.y(0));
    Ok(vec![c.when(0, |c| {
        let yy = c.mul(&y, &y)?;
        Ok(c.combine("Mul", &g, &yy, 0)?.scaled(-1.0))
    })?])
}

/// dA = dY·Y
fn exp(c: &mut Ctx) -> R<Grads> {
    let (g, y) = (c.dy_g(0)?, c.y(0));
    Ok(vec![c.when(0, |c| c.combine("Mul", &g, &y, 0))?])
}

/// dA = dY/A
fn log(c: &mut Ctx) -> R<Grads> {
    let (g, a) = (c.dy_g(0)?, c.x(0));
    Ok(vec![c.when(0, |c| c.combine("Div", &g, &a, 0))?])
}

/// dA = dY·(1 - Y²)
fn tanh(c: &mut Ctx) -> R<Grads> {
    let (g, y) = (c.dy_g(0)?, c.y(0));
    Ok(vec![c.when(0, |c| {
        let yy = c.mul(&y, &y)?;
        let d = c.rsub_const(1.0, &yy)?;
        c.combine("Mul", &g, &d, 0)
    })?])
}

/// dA = dY·Y·(1 - Y)
fn sigmoid(c: &mut Ctx) -> R<Grads> {
    let (g, y) = (c.dy_g(0)?, c.y(0));
    Ok(vec![c.when(0, |c| {
        let om = c.rsub_const(1.0, &y)?;
        let d = c.mul(&y, &om)?;
        c.combine("Mul", &g, &d, 0)
    })?])
}

/// dA = dY where A > 0
fn relu(c: &mut Ctx) -> R<Grads> {
    let (g, a) = (c.dy_g(0)?, c.x(0));
    Ok(vec![c.when(0, |c| {
        let zero = c.scalar_like(0.0, &a)?;
        let mask = c.op("Greater", &[&a, &zero], vec![])?;
        c.masked(&mask, &g, true, 0)
    })?])
}

/// dA = dY·(A > 0 ? 1 : alpha)
fn leaky_relu(c: &mut Ctx) -> R<Grads> {
    let (g, a) = (c.dy_g(0)?, c.x(0));
    let alpha = c.attr_float("alpha", 0.01);
    Ok(vec![c.when(0, |c| {
        let zero = c.scalar_like(0.0, &a)?;
        let mask = c.op("Greater", &[&a, &zero], vec![])?;
        let (one, al) = (c.scalar_like(1.0, &a)?, c.scalar_like(alpha, &a)?);
        let slope = c.where_(&mask, &one, &al)?;
        c.combine("Mul", &g, &slope, 0)
    })?])
}

/// dA = dY·sigmoid(A)
fn softplus(c: &mut Ctx) -> R<Grads> {
    let (g, a) = (c.dy_g(0)?, c.x(0));
    Ok(vec![c.when(0, |c| {
        let s = c.unary("Sigmoid", &a)?;
        c.combine("Mul", &g, &s, 0)
    })?])
}

/// dA = dY·(2/√π)·exp(-A²)
fn erf(c: &mut Ctx) -> R<Grads> {
    let (g, a) = (c.dy_g(0)?, c.x(0));
    Ok(vec![c.when(0, |c| {
        let aa = c.mul(&a, &a)?;
        let n = c.neg(&aa)?;
        let e = c.unary("Exp", &n)?;
        Ok(c.combine("Mul", &g, &e, 0)?.scaled(FRAC_2_SQRT_PI))
    })?])
}

/// exact: dA = dY·(Φ(A) + A·φ(A)); tanh: the derivative of 0.5·A·(1 + tanh(√(2/π)(A + 0.044715·A³)))
fn gelu(c: &mut Ctx) -> R<Grads> {
    let (g, a) = (c.dy_g(0)?, c.x(0));
    let approximate = c.attr_str("approximate", "none");
    Ok(vec![c.when(0, |c| {
        let aa = c.mul(&a, &a)?;
        // Both forms are computed as 2·derivative, the 0.5 going into the factor.
        let d2 = match approximate.as_str() {
            "none" => {
                let u = c.mul_const(&a, FRAC_1_SQRT_2)?;
                let e = c.unary("Erf", &u)?;
                let one = c.scalar_like(1.0, &a)?;
                let p = c.add(&e, &one)?;
                let h = c.mul_const(&aa, -0.5)?;
                let ex = c.unary("Exp", &h)?;
                let xe = c.mul(&a, &ex)?;
                let q = c.mul_const(&xe, 2.0 / (2.0 * PI).sqrt())?;
                c.add(&p, &q)?
            }
            "tanh" => {
                let k0 = (2.0 / PI).sqrt();
                let k1 = 0.044715;
                let a3 = c.mul(&aa, &a)?;
                let a3k = c.mul_const(&a3, k1)?;
                let inner = c.add(&a, &a3k)?;
                let u = c.mul_const(&inner, k0)?;
                let t = c.unary("Tanh", &u)?;
                let one = c.scalar_like(1.0, &a)?;
                let p = c.add(&t, &one)?;
                let tt = c.mul(&t, &t)?;
                let sech2 = c.rsub_const(1.0, &tt)?;
                let du = c.mul_const(&aa, 3.0 * k1 * k0)?;
                let k = c.scalar_like(k0, &a)?;
                let du = c.add(&du, &k)?;
                let q = c.mul(&a, &sech2)?;
                let q = c.mul(&q, &du)?;
                c.add(&p, &q)?
            }
            other => return Err(c.unsupported(format!("approximate=\"{other}\""))),
        };
        Ok(c.combine("Mul", &g, &d2, 0)?.scaled(0.5))
    })?])
}

/// dA = dY·sign(A)
fn abs(c: &mut Ctx) -> R<Grads> {
    let (g, a) = (c.dy_g(0)?, c.x(0));
    Ok(vec![c.when(0, |c| {
        let s = c.unary("Sign", &a)?;
        c.combine("Mul", &g, &s, 0)
    })?])
}

/// dA = dY·cos(A)
fn sin(c: &mut Ctx) -> R<Grads> {
    let (g, a) = (c.dy_g(0)?, c.x(0));
    Ok(vec![c.when(0, |c| {
        let s = c.unary("Cos", &a)?;
        c.combine("Mul", &g, &s, 0)
    })?])
}

/// dA = -dY·sin(A)
fn cos(c: &mut Ctx) -> R<Grads> {
    let (g, a) = (c.dy_g(0)?, c.x(0));
    Ok(vec![c.when(0, |c| {
        let s = c.unary("Sin", &a)?;
        Ok(c.combine("Mul", &g, &s, 0)?.scaled(-1.0))
    })?])
}

/// dA = dY where C, dB = dY where not C
fn where_(c: &mut Ctx) -> R<Grads> {
    let (g, cond) = (c.dy_g(0)?, c.x(0));
    let da = c.when(1, |c| c.masked(&cond, &g, true, 1))?;
    let db = c.when(2, |c| c.masked(&cond, &g, false, 2))?;
    Ok(vec![None, da, db])
}

/// dXᵢ = dY where Xᵢ = Y (ties: every input that attains the extremum gets the gradient)
fn max_min(c: &mut Ctx) -> R<Grads> {
    let (g, y) = (c.dy_g(0)?, c.y(0));
    let n = c.node.input.len();
    if n == 1 {
        return Ok(vec![c.pass(0, &g)?]);
    }
    (0..n)
        .map(|i| {
            c.when(i, |c| {
                let x = c.x(i);
                let mask = c.op("Equal", &[&x, &y], vec![])?;
                c.masked(&mask, &g, true, i)
            })
        })
        .collect()
}

/// dXᵢ = dY
fn sum(c: &mut Ctx) -> R<Grads> {
    let g = c.dy_g(0)?;
    (0..c.node.input.len()).map(|i| c.pass(i, &g)).collect()
}

/// dXᵢ = dY / n
fn mean(c: &mut Ctx) -> R<Grads> {
    let n = c.node.input.len();
    let g = c.dy_g(0)?.scaled(1.0 / n as f64);
    (0..n).map(|i| c.pass(i, &g)).collect()
}

/// dX = dY where min ≤ X ≤ max; dmin = dY where X < min; dmax = dY where X > max
fn clip(c: &mut Ctx) -> R<Grads> {
    let (g, x) = (c.dy_g(0)?, c.x(0));
    let (lo, hi) = (c.x(1), c.x(2));
    let mut inside: Option<String> = None;
    for (bound, op) in [(&lo, "GreaterOrEqual"), (&hi, "LessOrEqual")] {
        if !bound.is_empty() {
            let m = c.op(op, &[&x, bound], vec![])?;
            inside = Some(match inside {
                Some(prev) => c.op("And", &[&prev, &m], vec![])?,
                None => m,
            });
        }
    }
    let dx = match &inside {
        Some(mask) => c.when(0, |c| c.masked(mask, &g, true, 0))?,
        None => c.pass(0, &g)?,
    };
    let dlo = c.when(1, |c| {
        let m = c.op("Less", &[&x, &lo], vec![])?;
        c.masked(&m, &g, true, 1)
    })?;
    let dhi = c.when(2, |c| {
        let m = c.op("Greater", &[&x, &hi], vec![])?;
        c.masked(&m, &g, true, 2)
    })?;
    Ok(vec![dx, dlo, dhi])
}

/// dA = Cast(dY) back to A's type
fn cast(c: &mut Ctx) -> R<Grads> {
    let (g, x, y) = (c.dy_g(0)?, c.x(0), c.y(0));
    let (tx, ty) = (c.dtype(&x)?, c.dtype(&y)?);
    Ok(vec![c.when(0, |c| {
        if tx == ty {
            return Ok(g.clone());
        }
        let name = c.cast(&g.name, tx)?;
        let shape = c.g_shape(&g, &y);
        c.facts.set(&name, Some(tx), shape);
        Ok(G { name, ..g.clone() })
    })?])
}

/// dA = dY
fn identity(c: &mut Ctx) -> R<Grads> {
    let g = c.dy_g(0)?;
    Ok(vec![c.pass(0, &g)?])
}

/// Inference-mode dropout is the identity; training mode would need the mask's randomness.
fn dropout(c: &mut Ctx) -> R<Grads> {
    let training = c.x(2);
    if !training.is_empty() && c.const_scalar(&training) != Some(0.0) {
        return Err(c.unsupported("training_mode that is not a constant false"));
    }
    let g = c.dy_g(0)?;
    Ok(vec![c.pass(0, &g)?])
}
