//! Gradient attribution: a neuron's score is `Σ |w · ∂L/∂w|` over its row, summed over
//! the calibration batches (Leng & Xiong's rule).
//!
//! In: a model, the (weight, axis) pairs to score, the loss to use, and batches of
//! named inputs. Out: one score vector per pair. The graph is the model with its loss
//! ([`append_loss`]) and the weight gradients ([`autodiff::grad`]); `|W ⊙ G|` is
//! reduced to the per-row vector inside the graph, so only those vectors leave ONNX
//! Runtime.

use crate::autodiff::{self, GradOptions};
use crate::ir::{attr, Graph};
use crate::onnx::make::value_info_unshaped;
use crate::onnx::{DataType, Model};
use crate::passes::append_loss::append_loss;
use crate::profile::{open_derived, DerivedSession};
use crate::runtime::ort::{HostTensor, SessionOptions};
use crate::types::LossSpec;
use anyhow::Context;

/// The weight gradients reduced to per-row scores, ready to run batches.
pub struct GradientScorer {
    session: DerivedSession,
    /// Per requested (weight, axis), the output holding its scores.
    outputs: Vec<String>,
    /// The labels input the appended loss reads, if any.
    pub labels: Option<String>,
    /// Whether those labels are one class per row (sequence classification).
    pub per_row: bool,
}

impl GradientScorer {
    pub fn new(
        model: &Model,
        wanted: &[(String, usize)],
        loss: &LossSpec,
        opts: &SessionOptions,
    ) -> anyhow::Result<GradientScorer> {
        let label = model.display_path();
        let mut graph = Graph::from_proto(model.graph()).with_context(|| format!("{label}: invalid graph"))?;
        let info = append_loss(&mut graph, loss).with_context(|| format!("{label}: gradient scores need a loss"))?;
        let mut weights: Vec<String> = wanted.iter().map(|(w, _)| w.clone()).collect();
        weights.sort();
        weights.dedup();
        let grads = autodiff::grad(&graph, &info.loss, &weights, &GradOptions::for_model(model))
            .with_context(|| format!("{label}: cannot differentiate the loss"))?;
        let mut g = grads.graph;
        g.set_pass(Some("gradient-scores"));
        let mut outputs = vec![];
        for (w, axis) in wanted {
            let rank =
                graph.initializer(w).with_context(|| format!("{label}: '{w}' is not an initializer"))?.dims.len();
            let product = g.add1("Mul", &[w, &format!("{w}.grad")], vec![], &format!("{w}.attribution"))?;
            let abs = g.add1("Abs", &[&product], vec![], &format!("{w}.attribution_abs"))?;
            let others: Vec<i64> = (0..rank as i64).filter(|&a| a != *axis as i64).collect();
            let axes = g.const_i64s("score_axes", &others);
            let score =
                g.add1("ReduceSum", &[&abs, &axes], vec![attr::int("keepdims", 0)], &format!("{w}.score_axis{axis}"))?;
            outputs.push(score);
        }
        let infos = outputs.iter().map(|o| value_info_unshaped(o, DataType::Float)).collect();
        g.set_outputs(infos)?;
        g.eliminate_dead();
        g.set_pass(None);
        let mut proto = model.proto.clone();
        proto.graph = Some(g.to_proto());
        autodiff::set_default_opset(&mut proto.opset_import, grads.opset);
        let session = open_derived(model, &proto, &format!("{label} (gradient scores)"), opts)?;
        let per_row = info.kind == crate::passes::append_loss::SEQUENCE_CLASSIFICATION;
        Ok(GradientScorer { session, outputs, labels: info.labels, per_row })
    }

    /// One batch's scores, per requested (weight, axis).
    pub fn run(&mut self, feeds: &[(&str, HostTensor)]) -> anyhow::Result<Vec<Vec<f64>>> {
        let mut out: std::collections::HashMap<String, HostTensor> =
            self.session.session.run(feeds)?.into_iter().collect();
        self.outputs
            .iter()
            .map(|o| {
                let t = out.remove(o).with_context(|| format!("output '{o}' missing"))?;
                let a = t.as_f32().with_context(|| format!("output '{o}' is not FLOAT"))?;
                Ok(a.iter().map(|&v| v as f64).collect())
            })
            .collect()
    }
}

/// Adds `batch` into `total` element by element.
pub fn accumulate(total: &mut [Vec<f64>], batch: Vec<Vec<f64>>) {
    for (t, b) in total.iter_mut().zip(batch) {
        for (x, y) in t.iter_mut().zip(b) {
            *x += y;
        }
    }
}
