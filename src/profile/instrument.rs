//! The instrumented copy of a model: each site is reduced inside the graph to
//! per-neuron sums for the batch, so only small vectors leave ONNX Runtime.
//!
//! In: the model's graph, its [`Site`]s, opset, and the [`Statistic`]s wanted. Out: a
//! graph with one more input, `neft.token_mask [batch, seq]` (FLOAT, 1 on real
//! tokens), and only these outputs: `neft.tokens` (the mask's sum) and per site a
//! `[k, neurons]` FLOAT tensor, one row per wanted statistic in [`Statistic::ALL`]
//! order (Σx, Σ|x|, Σx², #(x>0), max|x|) over its rows; for sites counted over rows,
//! also the row count. Padding never counts (see [`reduce`](super::reduce) for how).
//! The model's own outputs are dropped, and with them every op no site needs.
//!
//! Every shape in the graph follows from the input shapes (padding is masked, not
//! gathered away): ONNX Runtime keeps memory for every shape it meets, so
//! data-dependent shapes would make memory grow with the data.

use super::file::Statistic;
use super::reduce::{Form, Reducer, Weights};
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

/// Builds the instrumented graph, its reductions in `form` (in ops that run fast on
/// `ep`); returns it and each site's outputs (same order). `stats` must be non-empty and
/// in [`Statistic::ALL`] order.
pub fn instrument(
    graph: &Graph,
    sites: &[Site],
    opset: i64,
    stats: &[Statistic],
    ep: Ep,
    form: Form,
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
    let r = Reducer::new(&mut g, opset, ep, form);
    let mask = r.token_mask(&mut g, MASK_INPUT)?;
    // Every op that reads an activation first, then the chain that links the sites'
    // outputs in forward order: the chain must come after every op that feeds it (see
    // `Reducer::finish`).
    let flatten = form == Form::Standard;
    let mut started = vec![];
    for site in sites {
        let rows = site_rows(&mut g, site, graph, flatten)?;
        let weights = if site.tokens { Weights::Tokens(&mask) } else { Weights::Every };
        let count = if site.tokens { None } else { Some(row_count(&mut g, &rows, site)?) };
        started.push(Some((r.start(&mut g, &rows, &weights, stats)?, count)));
    }
    let mut found: Vec<Option<SiteOutputs>> = vec![None; sites.len()];
    let mut previous: Option<String> = None;
    for k in forward_order(graph, sites) {
        let (partial, count) = started[k].take().expect("each site once");
        let site = &sites[k];
        let out = r.finish(&mut g, partial, &site.name, site.neurons, stats, previous.as_deref())?;
        found[k] = Some(SiteOutputs { stats: out.clone(), rows: count });
        previous = Some(out);
    }
    let found: Vec<SiteOutputs> = found.into_iter().map(|f| f.expect("every site reduced")).collect();
    for f in &found {
        outputs.push(value_info_unshaped(&f.stats, DataType::Float));
        if let Some(c) = &f.rows {
            outputs.push(value_info_unshaped(c, DataType::Float));
        }
    }
    g.set_outputs(outputs)?;
    g.eliminate_dead();
    g.set_pass(None);
    Ok((g, found))
}

/// The sites' indices in the order the forward pass makes their tensors.
fn forward_order(graph: &Graph, sites: &[Site]) -> Vec<usize> {
    let position: std::collections::HashMap<_, usize> =
        graph.ops_in_order().into_iter().enumerate().map(|(k, n)| (n, k)).collect();
    let made_at = |s: &Site| graph.producer(&s.tensor).and_then(|(n, _)| position.get(&n).copied()).unwrap_or(0);
    let mut order: Vec<usize> = (0..sites.len()).collect();
    order.sort_by_key(|&k| made_at(&sites[k]));
    order
}

/// The site's tensor as FLOAT with the neuron axis last; with `flatten`, `[rows, neurons]`.
fn site_rows(g: &mut Graph, site: &Site, source: &Graph, flatten: bool) -> Result<String, IrError> {
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
    if !flatten {
        return Ok(x);
    }
    let shape = g.const_i64s("rows_shape", &[-1, site.neurons as i64]);
    g.add1("Reshape", &[&x, &shape], vec![], &format!("{}.rows", site.name))
}

/// The number of rows of a tensor whose last axis is the site's neurons, as a FLOAT scalar.
fn row_count(g: &mut Graph, rows: &str, site: &Site) -> Result<String, IrError> {
    let size = g.add1("Size", &[rows], vec![], "size")?;
    let size = g.add1("Cast", &[&size], vec![attr::int("to", DataType::Float as i64)], "size")?;
    let neurons = g.const_f32("neurons", site.neurons as f32);
    g.add1("Div", &[&size, &neurons], vec![], &format!("{}.row_count", site.name))
}
