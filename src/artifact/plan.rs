//! `plan.json`: everything needed to rebuild the artifacts and to check that a state,
//! a checkpoint or an adapter belongs to them.

use crate::analyze::Layer;
use crate::optim::{Optimizer, OptimizerIo};
use crate::passes::append_loss::LossInfo;
use crate::select::{split_role, LayerShare};
use crate::types::{NeuronSet, Trainable};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub const PLAN_FORMAT: &str = "neft.plan/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub path: String,
    /// SHA-256 of the model file (the graph; external data are identified by size).
    pub sha256: String,
    pub bytes: u64,
}

impl SourceInfo {
    /// A file's path, SHA-256 and size; the file is streamed through the hash, never
    /// read whole. The one digest plans, profiles and adapters identify a model by.
    pub fn of_file(path: &Path) -> anyhow::Result<SourceInfo> {
        use sha2::Digest;
        let label = path.display().to_string();
        let mut file =
            std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{label}: cannot read for hashing: {e}"))?;
        let mut hasher = sha2::Sha256::new();
        let bytes = std::io::copy(&mut file, &mut hasher)
            .map_err(|e| anyhow::anyhow!("{label}: cannot read for hashing: {e}"))?;
        Ok(SourceInfo { path: label, sha256: hex_digest(&hasher.finalize()), bytes })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Parameters of the source model (all float initializers).
    pub model_params: u64,
    /// Elements of the trainable tensors.
    pub trainable_params: u64,
    /// Bytes of optimizer state (moments), excluding the parameters themselves.
    pub optimizer_state_bytes: u64,
    pub neurons_selected: u64,
    /// Neurons over all trainable layers of the model.
    pub neurons_total: u64,
    pub train_nodes: usize,
    pub eval_nodes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format: String,
    pub tool_version: String,
    pub source: SourceInfo,
    /// `split`, `mask`, `full` or `lora`.
    pub mode: String,
    /// Rank, alpha and seed of a `lora` plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::types::LoraOptions>,
    pub loss: LossInfo,
    pub optimizer: Optimizer,
    pub lr: f32,
    pub clip: Option<f32>,
    /// Inputs a training batch must provide (model inputs and labels).
    pub data_inputs: Vec<String>,
    pub params: Vec<Trainable>,
    pub io: OptimizerIo,
    pub neurons: NeuronSet,
    pub counts: Counts,
    /// Every trainable layer of the source model, so that the heat map can show the
    /// targeted layers that got no neuron (empty in plans written before it).
    #[serde(default)]
    pub layers: Vec<ModelLayer>,
}

/// A trainable layer of the source model, as the heat map draws it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelLayer {
    pub weight: String,
    /// Structural label (`block 3 / mlp.up`).
    pub role: String,
    /// Rows along the axis the selection indexes in this module: the neuron axis, or
    /// axis 0 of a down projection selected by MLP unit.
    pub rows: usize,
    /// Weight and bias elements.
    pub params: u64,
    /// Whether the selection could pick neurons of this layer.
    pub targeted: bool,
}

impl ModelLayer {
    /// Every layer, marked targeted when `targets` names its weight; without `targets`
    /// (a neuron set read from a file does not say what it was chosen from), when the
    /// set trains a layer of the same module (`mlp.up` in any block).
    pub fn list(layers: &[Layer], neurons: &NeuronSet, targets: Option<&BTreeSet<String>>) -> Vec<ModelLayer> {
        let module = |l: &Layer| split_role(&l.role).1.to_string();
        // The axis the set selects along, per module it trains.
        let axes: BTreeMap<String, usize> =
            layers.iter().filter_map(|l| Some((module(l), neurons.layers.get(&l.weight)?.axis))).collect();
        layers
            .iter()
            .map(|l| {
                let axis = axes.get(&module(l)).copied().unwrap_or(l.axis);
                ModelLayer {
                    weight: l.weight.clone(),
                    role: l.role.clone(),
                    rows: l.shape.get(axis).map_or(l.neurons, |&d| d.max(0) as usize),
                    params: l.params,
                    targeted: match targets {
                        Some(t) => t.contains(&l.weight),
                        None => axes.contains_key(&module(l)),
                    },
                }
            })
            .collect()
    }

    /// The layer with nothing selected.
    fn untrained_share(&self) -> LayerShare {
        let (block, module) = split_role(&self.role);
        LayerShare {
            weight: self.weight.clone(),
            block,
            module: module_name(module),
            targeted: self.targeted,
            rows_selected: 0,
            rows: self.rows,
            params_selected: 0,
            params: self.params,
        }
    }
}

/// A role without its block; `layer` when the role is empty.
fn module_name(module: &str) -> String {
    if module.is_empty() {
        "layer".into()
    } else {
        module.to_string()
    }
}

impl Plan {
    /// A short hash identifying this plan, stored in checkpoints and adapters.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let text = serde_json::to_string(self).expect("serializable");
        hex_digest(&sha2::Sha256::digest(text.as_bytes()))[..16].to_string()
    }

    /// The selection per layer (biases left out): every layer of the model, targeted or
    /// not, in model order; plans without the layer list give the trained layers only.
    /// For the heat map and the per-module summary of `select`.
    pub fn layer_shares(&self) -> Vec<LayerShare> {
        let mut trained: Vec<LayerShare> = self
            .params
            .iter()
            .filter(|p| !p.role.ends_with("(bias)") && !p.rows.is_empty())
            .map(trained_share)
            .collect();
        let mut shares: Vec<LayerShare> = self
            .layers
            .iter()
            .map(|l| match trained.iter().position(|s| s.weight == l.weight) {
                Some(k) => trained.remove(k),
                None => l.untrained_share(),
            })
            .collect();
        // Trained weights the layer list lacks (an imported training graph's) still show.
        shares.append(&mut trained);
        shares
    }

    pub fn load(path: &Path) -> anyhow::Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let plan: Plan =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a neft plan: {e}", path.display()))?;
        if plan.format != PLAN_FORMAT {
            anyhow::bail!("{}: format '{}' is not '{PLAN_FORMAT}'", path.display(), plan.format);
        }
        Ok(plan)
    }

    /// The plan of the artifact folder `dir`, with an error that says what a folder
    /// without `plan.json` is missing rather than only that a file is absent.
    pub fn load_dir(dir: &Path) -> anyhow::Result<Plan> {
        let path = dir.join("plan.json");
        if dir.is_dir() && !path.exists() {
            anyhow::bail!(
                "{}: not a neft artifact folder (no plan.json); expected a folder written by `neft compile`",
                dir.display()
            );
        }
        Plan::load(&path)
    }
}

/// The selection in one trained weight.
fn trained_share(p: &Trainable) -> LayerShare {
    let (block, module) = split_role(&p.role);
    let held = if p.mask.is_some() { p.source_rows } else { p.rows.len() };
    let per_row = crate::onnx::element_count(&p.shape) / held.max(1) as u64;
    LayerShare {
        weight: p.source.clone(),
        block,
        module: module_name(module),
        targeted: true,
        rows_selected: p.rows.len(),
        rows: p.source_rows,
        params_selected: per_row * p.rows.len() as u64,
        params: per_row * p.source_rows as u64,
    }
}

pub fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
