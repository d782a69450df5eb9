//! The instrumented copy of a model: each site is reduced inside the graph to
//! per-neuron sums for the batch, so only small vectors leave ONNX Runtime.
//!
//! In: the model's graph, its [`Site`]s, opset, and the [`Statistic`]s wanted. Out: a
//! graph with one more input, `neft.token_mask [batch, seq]` (FLOAT, 1 on real
//! tokens), and only these outputs: `neft.tokens` (the mask's sum) and per site a
//! `[k, neurons]` FLOAT tensor, one row per wanted statistic in [`Statistic::ALL`]
//! order (Σx, Σ|x|, Σx², #(x>0), max|x|) over its rows; for sites counted over rows,
//! also the row count. Padding never counts: token sums weigh rows by the mask, and
//! the max is taken after the mask zeroes padded rows (see [`reduce`](super::reduce)).
//! The model's own outputs are dropped, and with them every op no site needs.
//!
//! Every shape in the graph follows from the input shapes (padding is masked, not
//! gathered away): ONNX Runtime keeps memory for every shape it meets, so
//! data-dependent shapes would make memory grow with the data.

use super::file::Statistic;
use super::reduce::{Reducer, Weights};
use super::sites::Site;
use crate::ir::{attr, Graph, IrError};
use crate::onnx::make::{value_info, value_info_unshaped};
use crate::onnx::DataType;
use crate::runtime::Ep;

pub const MASK_INPUT: &str = "neft.token_mask";
pub const TOKENS_OUTPUT: &str = "neft.tokens";

/// The outputs that carry one site's sums.
#[derive(Debug, Clone)]
pub struct SiteOutputs {
    /// `[k, neurons]`: one row per wanted statistic.
    pub stats: String,
    /// The row count, for sites not counted over tokens.
    pub rows: Option<String>,
}

/// Builds the instrumented graph, in the ops that run fast on `ep`; returns it and each
/// site's outputs (same order). `stats` must be non-empty and in [`Statistic::ALL`] order.
pub fn instrument(
    graph: &Graph,
    sites: &[Site],
    opset: i64,
    stats: &[Statistic],
    ep: Ep,
) -> Result<(Graph, Vec<SiteOutputs>), IrError> {
    let mut g = graph.clone();
    g.set_pass(Some("profile"));
    g.add_input(value_info(MASK_INPUT, DataType::Float, &["batch".into(), "seq".into()]))?;
    let tokens = g.add1("ReduceSum", &[MASK_INPUT], vec![attr::int("keepdims", 0)], TOKENS_OUTPUT)?;
    if tokens != TOKENS_OUTPUT {
        // The caller finds the count by this exact name.
        return Err(IrError::Misuse(format!("the model already has a value named '{TOKENS_OUTPUT}'")));
    }
    let mut outputs = vec![value_info(&tokens, DataType::Float, &[])];
    let mut found = vec![];
    let r = Reducer::new(&mut g, opset, ep);
    let mask = r.token_mask(&mut g, MASK_INPUT)?;
    for site in sites {
        let rows = site_rows(&mut g, site, graph)?;
        let weights = if site.tokens { Weights::Tokens(&mask) } else { Weights::Every };
        let out = r.stats(&mut g, &rows, &weights, &site.name, stats)?;
        outputs.push(value_info_unshaped(&out, DataType::Float));
        let count = if site.tokens { None } else { Some(row_count(&mut g, &rows, &site.name)?) };
        if let Some(c) = &count {
            outputs.push(value_info_unshaped(c, DataType::Float));
        }
        found.push(SiteOutputs { stats: out, rows: count });
    }
    g.set_outputs(outputs)?;
    g.eliminate_dead();
    g.set_pass(None);
    Ok((g, found))
}

/// The site's tensor as FLOAT `[rows, neurons]`: neuron axis moved last, the rest flattened.
fn site_rows(g: &mut Graph, site: &Site, source: &Graph) -> Result<String, IrError> {
    let mut x = site.tensor.clone();
    if let (Some(axis), Some(rank)) = (site.axis, site.rank) {
        if axis + 1 != rank {
            let perm: Vec<i64> = (0..rank as i64).filter(|&a| a != axis as i64).chain([axis as i64]).collect();
            x = g.add1("Transpose", &[&x], vec![attr::ints("perm", &perm)], &format!("{}.neurons_last", site.name))?;
        }
    }
    let float = source.initializer(&site.weight).is_none_or(|w| w.data_type() == DataType::Float as i32);
    if !float {
        x = g.add1("Cast", &[&x], vec![attr::int("to", DataType::Float as i64)], &format!("{}.f32", site.name))?;
    }
    let shape = g.const_i64s("rows_shape", &[-1, site.neurons as i64]);
    g.add1("Reshape", &[&x, &shape], vec![], &format!("{}.rows", site.name))
}

/// The number of rows of a `[rows, n]` tensor, as a FLOAT scalar.
fn row_count(g: &mut Graph, rows: &str, site: &str) -> Result<String, IrError> {
    let shape = g.add1("Shape", &[rows], vec![], "shape")?;
    let zero = g.const_i64("dim0", 0);
    let n = g.add1("Gather", &[&shape, &zero], vec![attr::int("axis", 0)], "rows")?;
    g.add1("Cast", &[&n], vec![attr::int("to", DataType::Float as i64)], &format!("{site}.row_count"))
}
