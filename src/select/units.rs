//! What selection chooses between: groups of candidate units. A group is one layer
//! (each unit one neuron) or one gated MLP (each unit an intermediate unit: its gate
//! and up columns and its down row). Every unit of a group costs the same number of
//! parameters.
//!
//! In: the model's layers, its MLPs, `--targets` and `--unit`. Out: [`Group`]s in
//! graph order.

use crate::analyze::{Layer, MlpUnits};
use crate::types::Unit;
use std::collections::HashSet;

/// Which layers to select from (`--targets`).
#[derive(Debug, Clone)]
pub enum Targets {
    /// Roles `mlp.*` (gate, up, down).
    Mlp,
    /// Roles `attn.*` (q, k, v, o).
    Attn,
    All,
    /// A regular expression over the weight name or the role (`block 3 / mlp.up`).
    Regex(regex::Regex),
}

impl std::str::FromStr for Targets {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "mlp" => Targets::Mlp,
            "attn" => Targets::Attn,
            "all" => Targets::All,
            _ => Targets::Regex(
                regex::Regex::new(s)
                    .map_err(|e| format!("--targets '{s}' is not mlp, attn, all or a valid regular expression: {e}"))?,
            ),
        })
    }
}

impl std::fmt::Display for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Targets::Mlp => f.write_str("mlp"),
            Targets::Attn => f.write_str("attn"),
            Targets::All => f.write_str("all"),
            Targets::Regex(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

impl Targets {
    pub fn matches(&self, layer: &Layer) -> bool {
        let role = split_role(&layer.role).1;
        match self {
            Targets::Mlp => role.starts_with("mlp."),
            Targets::Attn => role.starts_with("attn."),
            Targets::All => true,
            Targets::Regex(r) => r.is_match(&layer.weight) || r.is_match(&layer.role),
        }
    }
}

/// `block 3 / mlp.up` → (Some(3), "mlp.up"); `head` → (None, "head").
pub fn split_role(role: &str) -> (Option<usize>, &str) {
    match role.split_once(" / ") {
        Some((b, r)) => (b.strip_prefix("block ").and_then(|n| n.parse().ok()), r),
        None => (None, role),
    }
}

/// One weight's share of a group's units: row `n` of the weight along `axis` belongs
/// to unit `n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub weight: String,
    pub axis: usize,
    /// Index of the layer in the model's layer list.
    pub layer: usize,
    /// Parameters one row holds (with its bias element, for the neuron axis).
    pub row_params: u64,
}

impl Member {
    /// Whether the rows are the layer's own neurons (not a MatMul's input units).
    pub fn is_neuron_axis(&self, layers: &[Layer]) -> bool {
        layers[self.layer].axis == self.axis
    }
}

/// Units selected and budgeted together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The structural label (`block 0 / mlp.up`, or `block 0 / mlp` for a unit group).
    pub label: String,
    pub members: Vec<Member>,
    pub units: usize,
}

impl Group {
    /// Parameters of one unit.
    pub fn unit_params(&self) -> u64 {
        self.members.iter().map(|m| m.row_params).sum()
    }

    pub fn params(&self) -> u64 {
        self.unit_params() * self.units as u64
    }
}

/// The groups the targets select from, in layer order; with `Unit::MlpUnit` every MLP
/// with a targeted weight is one group of intermediate units.
pub fn build_groups(layers: &[Layer], mlps: &[MlpUnits], targets: &Targets, unit: Unit) -> Vec<Group> {
    let index = |w: &str| layers.iter().position(|l| l.weight == w);
    let mut used: HashSet<usize> = HashSet::new();
    let mut groups = vec![];
    if unit == Unit::MlpUnit {
        for m in mlps {
            let weights: Vec<(&String, bool)> =
                m.gate.iter().map(|g| (g, true)).chain([(&m.up, true), (&m.down, false)]).collect();
            let Some(found) = weights.iter().map(|(w, own)| Some((index(w)?, *own))).collect::<Option<Vec<_>>>() else {
                continue;
            };
            if !found.iter().any(|(i, _)| targets.matches(&layers[*i])) {
                continue;
            }
            // Input units are rows of a down weight stored [in, out] (a MatMul, or a Gemm
            // without transB such as GPT-2's Conv1D); a down weight stored [out, in]
            // leaves its MLP's layers as separate groups.
            if found.iter().any(|&(i, own)| !own && !layers[i].input_units_are_rows()) {
                continue;
            }
            let members = found.iter().map(|&(i, own)| member(layers, i, own)).collect();
            used.extend(found.iter().map(|(i, _)| *i));
            groups.push(Group { label: format!("block {} / mlp", m.block), members, units: m.units });
        }
    }
    for (i, l) in layers.iter().enumerate() {
        if used.contains(&i) || !targets.matches(l) || l.neurons == 0 {
            continue;
        }
        groups.push(Group { label: l.role.clone(), members: vec![member(layers, i, true)], units: l.neurons });
    }
    groups.sort_by_key(|g| g.members.iter().map(|m| m.layer).min());
    groups
}

/// Layer `i` as a member: its neurons (`own`), or its input units (rows, axis 0).
fn member(layers: &[Layer], i: usize, own: bool) -> Member {
    let l = &layers[i];
    let elements = crate::onnx::element_count(&l.shape);
    let (axis, row_params) = if own {
        (l.axis, l.params / l.neurons.max(1) as u64)
    } else {
        debug_assert!(l.input_units_are_rows(), "{}: input units are not rows", l.weight);
        (0, elements / (l.shape[0].max(1) as u64))
    };
    Member { weight: l.weight.clone(), axis, layer: i, row_params }
}
