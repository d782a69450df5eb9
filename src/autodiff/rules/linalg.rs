//! Matrix products. `Y = A·B` gives `dA = dY·Bᵀ`, `dB = Aᵀ·dY`: `Gemm`s with transpose
//! flags for 2-D operands and for batched linear layers (batch dimensions flattened into
//! rows), `MatMul` against a transposed operand for batched products. (`Einsum` wrote
//! the same with fewer nodes, but ONNX Runtime runs it far slower, on CUDA above all.)

use super::{Ctx, Grads, Rule, R};
use crate::autodiff::emit::G;
use crate::autodiff::facts::dims_equal;
use crate::ir::attr;
use crate::runtime::tract::Dim;

pub(super) const RULES: &[(&str, Rule)] = &[("MatMul", matmul), ("Gemm", gemm), ("Einsum", einsum)];

const BATCH_LETTERS: &str = "abcdefghijopqrstuvw";

/// Einsum subscripts of A, B and Y for `MatMul(A, B)`, when no batch dimension is
/// broadcast (size 1 against a larger one), which Einsum cannot express.
fn subscripts(a: &[Dim], b: &[Dim]) -> Option<(String, String, String)> {
    let (ba, bb) = (a.len().saturating_sub(2), b.len().saturating_sub(2));
    let nb = ba.max(bb);
    let letters: Vec<char> = BATCH_LETTERS.chars().take(nb).collect();
    if letters.len() < nb {
        return None;
    }
    for i in 0..nb {
        let da = (i >= nb - ba).then(|| &a[i - (nb - ba)]);
        let db = (i >= nb - bb).then(|| &b[i - (nb - bb)]);
        if let (Some(x), Some(y)) = (da, db) {
            if dims_equal(x, y) != Some(true) {
                return None;
            }
        }
    }
    let batch = |n: usize| letters[nb - n..].iter().collect::<String>();
    let m = if a.len() >= 2 { "m" } else { "" };
    let n = if b.len() >= 2 { "n" } else { "" };
    Some((format!("{}{m}k", batch(ba)), format!("{}k{n}", batch(bb)), format!("{}{m}{n}", batch(nb))))
}

/// dA = dY·Bᵀ, dB = Aᵀ·dY
fn matmul(c: &mut Ctx) -> R<Grads> {
    let (a, b, y) = (c.x(0), c.x(1), c.y(0));
    let (sha, shb) = (c.shape(&a), c.shape(&b));
    let g = c.dy_exact(0)?;
    let with = |name: String| G { name, scale: g.scale, bshape: None };
    // An activation of any rank (>= 1, unknown here) times a 2-D weight [k, n]: the
    // flattened form below holds for every rank, its reshapes read `Shape(a)`.
    if let (None, Some([Dim::Known(k), Dim::Known(n)])) = (&sha, shb.as_deref()) {
        return linear(c, &g, (*k, *n));
    }
    let (Some(sha), Some(shb)) = (sha, shb) else {
        return Err(c.unsupported("operands of unknown rank (other than an activation times a 2-D weight)"));
    };
    if sha.len() == 1 && shb.len() == 1 {
        let da = c.when(0, |c| c.combine("Mul", &g, &b, 0))?;
        let db = c.when(1, |c| c.combine("Mul", &g, &a, 1))?;
        return Ok(vec![da, db]);
    }
    if sha.len() == 2 && shb.len() == 2 {
        let gemm = |c: &mut Ctx, p: &str, q: &str, ta: i64, tb: i64| {
            c.op("Gemm", &[p, q], vec![attr::int("transA", ta), attr::int("transB", tb)])
        };
        let da = c.when(0, |c| Ok(with(gemm(c, &g.name, &b, 0, 1)?)))?;
        let db = c.when(1, |c| Ok(with(gemm(c, &a, &g.name, 1, 0)?)))?;
        return Ok(vec![da, db]);
    }
    // A batched activation times a 2-D weight (every linear layer of a transformer):
    // batch dimensions flattened into rows, both gradients are one Gemm each. ONNX
    // Runtime runs these as single matrix products on CPU and CUDA, where the
    // equivalent Einsums were 2x (CPU) to 20x (CUDA) slower.
    if sha.len() >= 3 && shb.len() == 2 {
        if let (Dim::Known(k), Dim::Known(n)) = (&shb[0], &shb[1]) {
            return linear(c, &g, (*k, *n));
        }
    }
    // A vector operand (rank 1): one Einsum each, which spells the implied axes.
    if sha.len() == 1 || shb.len() == 1 {
        if let Some((sa, sb, sy)) = subscripts(&sha, &shb) {
            let einsum = |c: &mut Ctx, p: &str, q: &str, eq: String| {
                c.op("Einsum", &[p, q], vec![attr::string("equation", &eq)])
            };
            let da = c.when(0, |c| Ok(with(einsum(c, &g.name, &b, format!("{sy},{sb}->{sa}"))?)))?;
            let db = c.when(1, |c| Ok(with(einsum(c, &a, &g.name, format!("{sa},{sy}->{sb}"))?)))?;
            return Ok(vec![da, db]);
        }
        return Err(c.unsupported("a vector operand with broadcast batch dimensions"));
    }
    // Batched products (attention): MatMul against the transposed operand, then a sum
    // over broadcast batch axes where there are any.
    let swap = |r: usize| -> Vec<i64> {
        let mut p: Vec<i64> = (0..r as i64).collect();
        p.swap(r - 1, r - 2);
        p
    };
    let batch_y = c.shape(&y).map(|s| s[..s.len() - 2].to_vec());
    let da = c.when(0, |c| {
        let p = match grouped_product(c, &g.name, &b, &swap(shb.len()))? {
            Some(p) => p,
            None => {
                let bt = c.transpose(&b, &swap(shb.len()))?;
                c.op("MatMul", &[&g.name, &bt], vec![])?
            }
        };
        let dims = batch_y.clone().map(|mut d| {
            d.extend_from_slice(&sha[sha.len() - 2..]);
            d
        });
        c.note_shape(&p, &y, dims.clone());
        c.fit(&p, dims, g.scale, &a)
    })?;
    let db = c.when(1, |c| {
        let at = c.transpose(&a, &swap(sha.len()))?;
        let p = c.op("MatMul", &[&at, &g.name], vec![])?;
        let dims = batch_y.clone().map(|mut d| {
            d.extend_from_slice(&shb[shb.len() - 2..]);
            d
        });
        c.note_shape(&p, &y, dims.clone());
        c.fit(&p, dims, g.scale, &b)
    })?;
    Ok(vec![da, db])
}

/// dY·Bᵀ when B (or the tensor B transposes) repeats each of `h` heads `r` times, as
/// grouped-query attention does with K and V: dY's heads are grouped `[h, r]` and
/// multiplied by the `h` unrepeated heads, broadcast over the copies. Same products,
/// but the backward pass reads the unrepeated tensor, `r` times smaller, so the
/// repeated one is freed after the forward pass.
fn grouped_product(c: &mut Ctx, g: &str, b: &str, swap: &[i64]) -> R<Option<String>> {
    // B itself, or the tensor it transposes (K for Q·Kᵀ): then Bᵀ is that tensor.
    let transposed_from = c.graph.producer(b).and_then(|(n, _)| c.graph.op(n)).and_then(|t| {
        let perm = t.attribute.iter().find(|a| a.name() == "perm").map(|a| a.ints.clone());
        (t.op_type() == "Transpose" && perm.as_deref() == Some(swap)).then(|| t.input[0].clone())
    });
    let repeated = transposed_from.as_deref().unwrap_or(b);
    let Some((heads, copies, unrepeated)) = repeated_heads(c, repeated) else { return Ok(None) };
    let bt = match &transposed_from {
        Some(_) => unrepeated,
        None => c.transpose(&unrepeated, swap)?,
    };
    let axis = c.ints(&[2])?;
    let bt = c.op("Unsqueeze", &[&bt, &axis], vec![])?;
    let lead = c.op("Shape", &[g], vec![attr::int("end", 1)])?;
    let grouping = c.ints(&[heads, copies])?;
    let tail = c.op("Shape", &[g], vec![attr::int("start", 2)])?;
    let grouped = c.op("Concat", &[&lead, &grouping, &tail], vec![attr::int("axis", 0)])?;
    let g5 = c.reshape(g, &grouped)?;
    let p5 = c.op("MatMul", &[&g5, &bt], vec![])?;
    let front = c.op("Shape", &[g], vec![attr::int("end", 2)])?;
    let back = c.op("Shape", &[&p5], vec![attr::int("start", 3)])?;
    let merged = c.op("Concat", &[&front, &back], vec![attr::int("axis", 0)])?;
    Ok(Some(c.reshape(&p5, &merged)?))
}

/// `(h, r, x)` when `t = Reshape(Expand(Unsqueeze(x, 2)))` turns `x [b, h, s, d]` into
/// `[b, h·r, s, d]`, every head repeated `r` times in place (checked on the shapes).
fn repeated_heads(c: &Ctx, t: &str) -> Option<(i64, i64, String)> {
    let input_of = |name: &str, op: &str| {
        let node = c.graph.op(c.graph.producer(name)?.0)?;
        (node.op_type() == op).then(|| node.input[0].clone())
    };
    let expanded = input_of(t, "Reshape")?;
    let unsqueezed = input_of(&expanded, "Expand")?;
    let x = input_of(&unsqueezed, "Unsqueeze")?;
    let (sx, su, se, st) = (c.shape(&x)?, c.shape(&unsqueezed)?, c.shape(&expanded)?, c.shape(t)?);
    let (Dim::Known(h), Dim::Known(r), Dim::Known(hr)) = (&sx.get(1)?, &se.get(2)?, &st.get(1)?) else {
        return None;
    };
    let same = |a: &Dim, b: &Dim| dims_equal(a, b) == Some(true);
    let ok = sx.len() == 4
        && su.len() == 5
        && se.len() == 5
        && st.len() == 4
        && su[2] == Dim::Known(1)
        && *r > 1
        && h * r == *hr
        && [0, 1, 3, 4].iter().zip([0, 1, 2, 3]).all(|(&i, j)| same(&su[i], &sx[j]) && same(&se[i], &sx[j]))
        && [0, 2, 3].iter().all(|&i| same(&st[i], &sx[i]));
    ok.then(|| (*h, *r, x))
}

/// `MatMul(A, B)` for a 2-D `B [k, n]`, A's batch dimensions flattened into rows:
/// dA = reshape(dY[-1, n]·Bᵀ), dB = A[-1, k]ᵀ·dY[-1, n], one Gemm each.
fn linear(c: &mut Ctx, g: &G, (k, n): (i64, i64)) -> R<Grads> {
    let (a, b) = (c.x(0), c.x(1));
    let with = |name: String| G { name, scale: g.scale, bshape: None };
    let rows_n = c.ints(&[-1, n])?;
    let flat_g = c.reshape(&g.name, &rows_n)?;
    let da = c.when(0, |c| {
        let p = c.op("Gemm", &[&flat_g, &b], vec![attr::int("transB", 1)])?;
        // Unless dB reads A anyway, the target shape comes from dY: reading Shape(A)
        // here would keep A alive until the backward pass reaches this layer.
        if c.need(1) {
            Ok(with(c.reshape_like(&p, &a)?))
        } else {
            Ok(with(c.reshape_with_lead(&p, &a, &g.name, k)?))
        }
    })?;
    let db = c.when(1, |c| {
        let rows_k = c.ints(&[-1, k])?;
        let flat_a = c.reshape(&a, &rows_k)?;
        Ok(with(c.op("Gemm", &[&flat_a, &flat_g], vec![attr::int("transA", 1)])?))
    })?;
    Ok(vec![da, db])
}

/// Y = alpha·A'·B' + beta·C with A' = A or Aᵀ (transA), B' = B or Bᵀ (transB):
/// dA' = dY·B'ᵀ, dB' = A'ᵀ·dY, dC = beta·dY summed to C's shape.
fn gemm(c: &mut Ctx) -> R<Grads> {
    let (a, b) = (c.x(0), c.x(1));
    let (alpha, beta) = (c.attr_float("alpha", 1.0), c.attr_float("beta", 1.0));
    let (ta, tb) = (c.attr_int("transA", 0), c.attr_int("transB", 0));
    let g = c.dy_exact(0)?;
    let gemm = |c: &mut Ctx, p: &str, q: &str, ta: i64, tb: i64| -> R<G> {
        let name = c.op("Gemm", &[p, q], vec![attr::int("transA", ta), attr::int("transB", tb)])?;
        Ok(G { name, scale: g.scale * alpha, bshape: None })
    };
    let da = c.when(0, |c| if ta == 0 { gemm(c, &g.name, &b, 0, 1 - tb) } else { gemm(c, &b, &g.name, tb, 1) })?;
    let db = c.when(1, |c| if tb == 0 { gemm(c, &a, &g.name, 1 - ta, 0) } else { gemm(c, &g.name, &a, 1, ta) })?;
    let dc = c.pass(2, &g.clone().scaled(beta))?;
    Ok(vec![da, db, dc])
}

/// dXᵢ = Einsum(dY and the other operands → Xᵢ's subscripts). Needs explicit
/// letters (no `...`), no letter repeated within an operand, and every letter of
/// Xᵢ present in the output or another operand.
fn einsum(c: &mut Ctx) -> R<Grads> {
    let eq: String = c.attr_str("equation", "").chars().filter(|ch| !ch.is_whitespace()).collect();
    let (lhs, out) = match eq.split_once("->") {
        Some((l, o)) => (l.to_string(), o.to_string()),
        None => {
            let mut once: Vec<char> = eq.chars().filter(|ch| ch.is_alphabetic()).collect();
            once.sort_unstable();
            let implicit = once.iter().filter(|ch| eq.matches(**ch).count() == 1).collect();
            (eq.clone(), implicit)
        }
    };
    let subs: Vec<String> = lhs.split(',').map(str::to_string).collect();
    if eq.contains('.') || subs.iter().chain([&out]).any(|s| has_repeat(s)) {
        return Err(c.unsupported(format!("equation '{eq}' (ellipsis or a repeated index)")));
    }
    let g = c.dy_exact(0)?;
    (0..subs.len())
        .map(|i| {
            c.when(i, |c| {
                let others: Vec<usize> = (0..subs.len()).filter(|&j| j != i).collect();
                let available: String = others.iter().map(|&j| subs[j].as_str()).chain([out.as_str()]).collect();
                if let Some(ch) = subs[i].chars().find(|ch| !available.contains(*ch)) {
                    return Err(
                        c.unsupported(format!("equation '{eq}': index '{ch}' of operand {i} appears nowhere else"))
                    );
                }
                let mut ins = vec![g.name.clone()];
                ins.extend(others.iter().map(|&j| c.x(j)));
                let terms: Vec<&str> =
                    [out.as_str()].into_iter().chain(others.iter().map(|&j| subs[j].as_str())).collect();
                let equation = format!("{}->{}", terms.join(","), subs[i]);
                let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
                let name = c.op("Einsum", &refs, vec![attr::string("equation", &equation)])?;
                Ok(G { name, scale: g.scale, bshape: None })
            })
        })
        .collect()
}

fn has_repeat(s: &str) -> bool {
    s.chars().enumerate().any(|(i, ch)| s[i + 1..].contains(ch))
}
