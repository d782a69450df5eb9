//! `neft inspect OUT/`: what `neft-compile` did, in words: the plan, the trainable
//! neurons per layer, sizes before and after, and what each pass added.
//!
//! In: an artifact folder. Out: an [`ArtifactSummary`] (JSON fields in README.md) and
//! its text rendering.

use super::human_bytes;
use super::table::{facts_text, Facts, Table};
use crate::artifact::Plan;
use crate::ir::PASS_KEY;
use crate::onnx;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct ArtifactSummary {
    pub dir: String,
    pub source: crate::artifact::SourceInfo,
    pub mode: String,
    pub loss: String,
    pub optimizer: String,
    pub lr: f32,
    pub clip: Option<f32>,
    pub layers: Vec<LayerPlan>,
    pub sizes: Sizes,
    /// Pass label → op type → nodes that pass added to the train step.
    pub passes: BTreeMap<String, BTreeMap<String, usize>>,
    pub nodes: NodeCounts,
    /// From metrics.jsonl, when training ran.
    pub training: Option<TrainingSummary>,
    /// The selection per trained weight (what the heat map draws).
    pub shares: Vec<crate::select::LayerShare>,
    /// The heat map of the selection (drawn if the folder had none).
    pub heatmap: String,
}

#[derive(Debug, Serialize)]
pub struct LayerPlan {
    pub role: String,
    pub weight: String,
    pub tensor: String,
    pub axis: usize,
    pub selected: usize,
    pub total: usize,
    pub trainable_params: u64,
    /// `A` or `B` for a LoRA factor (whose shape is `shape`; `selected` is then 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::types::LoraPart>,
    pub shape: Vec<i64>,
}

#[derive(Debug, Serialize)]
pub struct Sizes {
    pub model_params: u64,
    pub trainable_params: u64,
    pub optimizer_state_bytes: u64,
    /// Weights, gradients and optimizer state (activations excluded) for full
    /// fine-tuning with this optimizer, and for these artifacts.
    pub train_memory_full_bytes: u64,
    pub train_memory_bytes: u64,
    pub neurons_selected: u64,
    pub neurons_total: u64,
}

#[derive(Debug, Serialize)]
pub struct NodeCounts {
    /// Ops of the model and the passes before autodiff (loss, split rows, masks).
    pub forward: usize,
    pub backward: usize,
    pub optimizer: usize,
    pub train_step: usize,
    pub eval: usize,
}

#[derive(Debug, Serialize)]
pub struct TrainingSummary {
    pub steps: u64,
    pub first_loss: f64,
    pub last_loss: f64,
    pub last_eval_loss: Option<f64>,
}

pub fn summarize_artifacts(dir: &Path) -> anyhow::Result<ArtifactSummary> {
    if !dir.join("plan.json").exists() {
        anyhow::bail!(
            "{}: not a neft artifact folder (no plan.json); `neft inspect` expects an .onnx model \
             or a folder written by `neft compile`",
            dir.display()
        );
    }
    let plan = Plan::load_dir(dir)?;
    let train = onnx::load(dir.join("train_step.onnx"))?;
    let eval = onnx::load(dir.join("eval.onnx"))?;
    let mut passes: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut nodes = NodeCounts { forward: 0, backward: 0, optimizer: 0, train_step: 0, eval: eval.graph().node.len() };
    for n in &train.graph().node {
        let label = n.metadata_props.iter().find(|m| m.key() == PASS_KEY).map(|m| m.value().to_string());
        match label.as_deref() {
            Some("autodiff") => nodes.backward += 1,
            Some("optimizer") => nodes.optimizer += 1,
            _ => nodes.forward += 1,
        }
        nodes.train_step += 1;
        if let Some(l) = label {
            *passes.entry(l).or_default().entry(n.op_type().to_string()).or_default() += 1;
        }
    }
    let mut layers: Vec<LayerPlan> = plan
        .params
        .iter()
        .map(|p| LayerPlan {
            role: p.role.clone(),
            weight: p.source.clone(),
            tensor: p.name.clone(),
            axis: p.axis,
            selected: p.rows.len(),
            total: p.source_rows,
            trainable_params: crate::onnx::element_count(&p.shape),
            lora: p.lora.map(|f| f.part),
            shape: p.shape.clone(),
        })
        .collect();
    // Block 2 before block 10 (the plan lists tensors by name).
    layers.sort_by_key(|l| crate::select::split_role(&l.role).0.unwrap_or(usize::MAX));
    let c = &plan.counts;
    // Per trainable element: the value and its gradient (4 + 4 bytes) plus the state.
    let state_per_param = plan.optimizer.state_suffixes().len() as u64 * 4;
    let frozen = c.model_params.saturating_sub(c.trainable_params) * 4;
    let sizes = Sizes {
        model_params: c.model_params,
        trainable_params: c.trainable_params,
        optimizer_state_bytes: c.optimizer_state_bytes,
        train_memory_full_bytes: c.model_params * (8 + state_per_param),
        train_memory_bytes: frozen + c.trainable_params * (8 + state_per_param),
        neurons_selected: c.neurons_selected,
        neurons_total: c.neurons_total,
    };
    let heatmap = dir.join("neurons.svg");
    if !heatmap.is_file() {
        crate::cli::write_plan_heatmap(&plan, dir)?;
    }
    Ok(ArtifactSummary {
        shares: plan.layer_shares(),
        heatmap: heatmap.display().to_string(),
        dir: dir.display().to_string(),
        source: plan.source.clone(),
        mode: plan.mode.clone(),
        loss: format!("{} ({})", plan.loss.loss, plan.loss.kind),
        optimizer: plan.optimizer.to_string(),
        lr: plan.lr,
        clip: plan.clip,
        layers,
        sizes,
        passes,
        nodes,
        training: training_summary(&dir.join("metrics.jsonl")),
    })
}

/// First and last loss from metrics.jsonl, if training wrote one.
fn training_summary(path: &Path) -> Option<TrainingSummary> {
    let text = std::fs::read_to_string(path).ok()?;
    let rows: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let losses: Vec<(u64, f64)> =
        rows.iter().filter_map(|r| Some((r.get("step")?.as_u64()?, r.get("loss")?.as_f64()?))).collect();
    let (first, last) = (losses.first()?, losses.last()?);
    let last_eval_loss = rows.iter().rev().find_map(|r| r.get("eval_loss")?.as_f64());
    Some(TrainingSummary { steps: last.0, first_loss: first.1, last_loss: last.1, last_eval_loss })
}

/// What was compiled and from what: the header of the report.
pub(super) fn plan_facts(s: &ArtifactSummary) -> Facts {
    let sha = &s.source.sha256[..12.min(s.source.sha256.len())];
    let clip = s.clip.map(|c| format!(", clip {c}")).unwrap_or_default();
    vec![
        ("artifacts", s.dir.clone()),
        ("source", format!("{} (sha256 {sha}…, {})", s.source.path, human_bytes(s.source.bytes))),
        ("mode", format!("{}; loss {}; {} at lr {}{clip}", s.mode, s.loss, s.optimizer, s.lr)),
    ]
}

/// How much trains, and what that costs in memory.
pub(super) fn size_facts(s: &ArtifactSummary) -> Facts {
    let z = &s.sizes;
    let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
    // A LoRA artifact adapts whole layers: two factors each, no neurons.
    let lora_layers = s.layers.iter().filter(|l| l.lora == Some(crate::types::LoraPart::A)).count();
    vec![
        match lora_layers {
            0 => (
                "neurons",
                format!(
                    "{} of {} ({:.2}%)",
                    z.neurons_selected,
                    z.neurons_total,
                    pct(z.neurons_selected, z.neurons_total)
                ),
            ),
            n => ("layers", format!("{n} adapted by LoRA")),
        },
        (
            "parameters",
            format!(
                "{} trainable of {} ({:.2}%)",
                z.trainable_params,
                z.model_params,
                pct(z.trainable_params, z.model_params)
            ),
        ),
        ("optimizer", format!("{} of state", human_bytes(z.optimizer_state_bytes))),
        (
            "memory",
            format!(
                "about {} for weights, gradients and optimizer state (full fine-tuning: {}; activations not counted)",
                human_bytes(z.train_memory_bytes),
                human_bytes(z.train_memory_full_bytes)
            ),
        ),
    ]
}

/// One row per trainable tensor: which rows of which weight.
pub(super) fn tensor_table(s: &ArtifactSummary) -> Table {
    let mut t = Table::new(&["role", "weight", ">axis", ">rows", ">params"]);
    for l in &s.layers {
        let (weight, axis, rows) = match l.lora {
            // A LoRA factor is no rows of its weight: show its own name and shape.
            Some(_) => (l.tensor.clone(), "-".into(), format!("{}×{}", l.shape[0], l.shape[1])),
            None => (l.weight.clone(), l.axis.to_string(), format!("{}/{}", l.selected, l.total)),
        };
        t.row(vec![l.role.clone(), weight, axis, rows, l.trainable_params.to_string()]);
    }
    t
}

/// The train step's node counts: forward, backward, optimizer; and eval.
pub(super) fn nodes_text(n: &NodeCounts) -> String {
    format!(
        "train step {} = forward {} + backward {} ({:.2}x forward) + optimizer {}; eval {}",
        n.train_step,
        n.forward,
        n.backward,
        n.backward as f64 / n.forward.max(1) as f64,
        n.optimizer,
        n.eval
    )
}

/// Per pass label: how many nodes it added, most frequent op types first.
pub(super) fn pass_table(s: &ArtifactSummary) -> Table {
    let mut t = Table::new(&["pass", ">nodes", "ops"]);
    for (label, ops) in &s.passes {
        let total: usize = ops.values().sum();
        let mut list: Vec<(&String, &usize)> = ops.iter().collect();
        list.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = list.iter().take(8).map(|(k, v)| format!("{k} {v}")).collect();
        let more = if list.len() > 8 { ", ..." } else { "" };
        t.row(vec![label.clone(), total.to_string(), format!("{}{more}", top.join(", "))]);
    }
    t
}

pub(super) fn training_text(t: &TrainingSummary) -> String {
    let eval = t.last_eval_loss.map(|e| format!(", eval loss {e:.4}")).unwrap_or_default();
    format!("{} steps, loss {:.4} -> {:.4}{eval}", t.steps, t.first_loss, t.last_loss)
}

pub fn render_artifacts(s: &ArtifactSummary) -> String {
    let mut o = facts_text(&plan_facts(s));
    let _ = write!(o, "\n{}", facts_text(&size_facts(s)));
    let _ = write!(o, "\ntrainable tensors\n{}", tensor_table(s).text());
    let _ = write!(o, "\nselection by module (heat map: {})\n{}", s.heatmap, crate::select::summary_text(&s.shares));
    let _ = write!(o, "\nnodes      {}\npasses\n{}", nodes_text(&s.nodes), pass_table(s).text());
    if let Some(t) = &s.training {
        let _ = writeln!(o, "\ntraining   {}", training_text(t));
    }
    o
}
