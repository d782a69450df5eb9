//! Which neurons train: the [`NeuronSet`] (`neurons.json`) and its checks against the
//! model's layers, and the selection that makes one.
//!
//! Selection flows: targets and unit → [`Group`]s of candidate units ([`units`]) →
//! one score per unit from a [`Strategy`] ([`strategy`]) → the budget allocated
//! globally or per layer ([`budget`]) → a [`NeuronSet`] and the selected share of
//! every layer ([`heatmap`]). Entry point: [`select`].

mod budget;
pub mod cli;
mod cosine;
mod gradient;
pub mod heatmap;
mod neurons;
mod strategy;
mod units;

pub use budget::{allocate, Budget, Limit, Scope};
pub use cosine::{row_distance, Reference};
pub use gradient::GradientScorer;
pub use heatmap::{heatmap_svg, layer_shares, summary_text, LayerShare};
pub use neurons::{LayerNeurons, NeuronError, NeuronSet, NEURONS_FORMAT};
pub use strategy::{score_groups, DataSource, Evidence, Strategy};
pub use units::{build_groups, split_role, Group, Member, Targets};

use crate::analyze::{analyze_structure, find_layers, Layer};
use crate::ir::Graph;
use crate::onnx::Model;
use crate::types::Unit;
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::BTreeSet;

/// How to select.
#[derive(Debug, Clone)]
pub struct SelectOptions {
    pub strategy: Strategy,
    /// What `Strategy::Reversed` reverses.
    pub reversed_of: Strategy,
    pub budget: Budget,
    pub scope: Scope,
    pub targets: Targets,
    pub unit: Unit,
}

impl SelectOptions {
    /// Whether the strategy reads an activation profile.
    pub fn needs_profile(&self) -> bool {
        self.strategy == Strategy::Activation
            || (self.strategy == Strategy::Reversed && self.reversed_of == Strategy::Activation)
    }
}

/// What was selected, in numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelectionSummary {
    pub strategy: String,
    pub budget: String,
    pub scope: String,
    pub targets: String,
    pub unit: String,
    /// The budget in parameters (or units, for a count budget).
    pub limit: u64,
    pub limit_in_units: bool,
    pub units_selected: u64,
    pub units_targeted: u64,
    pub params_selected: u64,
    pub params_targeted: u64,
}

/// A selection: the neurons, the share of every layer, and the numbers.
#[derive(Debug, Clone)]
pub struct Selection {
    pub neurons: NeuronSet,
    pub shares: Vec<LayerShare>,
    pub summary: SelectionSummary,
}

/// The weights whose layers the targets select from.
pub fn targeted_weights(model: &Model, targets: &Targets, unit: Unit) -> anyhow::Result<BTreeSet<String>> {
    let (_, groups) = targeted_groups(model, targets, unit)?;
    Ok(groups.iter().flat_map(|g| g.members.iter().map(|m| m.weight.clone())).collect())
}

/// The profile sites `--strategy activation` reads for these targets and unit: each
/// member's output neurons, or the units entering a down projection selected along its
/// input axis. Profiling only these saves a pass over every unread activation.
pub fn activation_sites(model: &Model, targets: &Targets, unit: Unit) -> anyhow::Result<BTreeSet<String>> {
    let (layers, groups) = targeted_groups(model, targets, unit)?;
    Ok(groups.iter().flat_map(|g| &g.members).map(|m| strategy::activation_site(m, &layers)).collect())
}

fn targeted_groups(model: &Model, targets: &Targets, unit: Unit) -> anyhow::Result<(Vec<Layer>, Vec<Group>)> {
    let graph = Graph::from_proto(model.graph()).with_context(|| format!("{}: invalid graph", model.display_path()))?;
    let layers = find_layers(&graph);
    let mlps = analyze_structure(&graph, &layers).mlps;
    let groups = build_groups(&layers, &mlps, targets, unit);
    Ok((layers, groups))
}

/// Selects neurons of `model`. Units of a gated MLP are written out in all three
/// weights (gate and up columns, down rows along axis 0).
pub fn select(model: &Model, opts: &SelectOptions, ev: &Evidence) -> anyhow::Result<Selection> {
    let label = model.display_path();
    let graph = Graph::from_proto(model.graph()).with_context(|| format!("{label}: invalid graph"))?;
    let layers = find_layers(&graph);
    let mlps = analyze_structure(&graph, &layers).mlps;
    let groups = build_groups(&layers, &mlps, &opts.targets, opts.unit);
    if groups.is_empty() {
        let roles: Vec<&str> = layers.iter().map(|l| l.role.as_str()).collect();
        bail!("{label}: --targets {} matches no trainable layer (roles: {})", opts.targets, roles.join(", "));
    }
    if opts.needs_profile() {
        check_profile(model, ev)?;
    }
    let limit = Limit::of(opts.budget, &groups)?;
    let scores = score_groups(opts.strategy, opts.reversed_of, model, &layers, &groups, ev)?;
    let picked = allocate(&groups, &scores, limit, opts.scope);
    let mut neurons = NeuronSet::new();
    for (g, rows) in groups.iter().zip(&picked).filter(|(_, r)| !r.is_empty()) {
        for m in &g.members {
            neurons.layers.insert(m.weight.clone(), LayerNeurons { axis: m.axis, rows: rows.clone() });
        }
    }
    let summary = SelectionSummary {
        strategy: strategy_label(opts, ev),
        budget: opts.budget.to_string(),
        scope: opts.scope.to_string(),
        targets: opts.targets.to_string(),
        unit: match opts.unit {
            Unit::Neuron => "neuron".into(),
            Unit::MlpUnit => "mlp-unit".into(),
        },
        limit: limit.amount,
        limit_in_units: limit.in_units,
        units_selected: picked.iter().map(|r| r.len() as u64).sum(),
        units_targeted: groups.iter().map(|g| g.units as u64).sum(),
        params_selected: groups.iter().zip(&picked).map(|(g, r)| g.unit_params() * r.len() as u64).sum(),
        params_targeted: groups.iter().map(Group::params).sum(),
    };
    Ok(Selection { shares: layer_shares(&layers, &groups, &picked), neurons, summary })
}

/// `activation (mean_abs)`, `reversed cosine`, `random (seed 3)`.
fn strategy_label(opts: &SelectOptions, ev: &Evidence) -> String {
    let one = |s: Strategy| match s {
        Strategy::Activation => format!("activation ({})", ev.statistic.key()),
        Strategy::Random => format!("random (seed {})", ev.seed),
        s => s.to_string(),
    };
    match opts.strategy {
        Strategy::Reversed => format!("reversed {}", one(opts.reversed_of)),
        s => one(s),
    }
}

/// A profile must come from this very model file.
fn check_profile(model: &Model, ev: &Evidence) -> anyhow::Result<()> {
    let Some(p) = ev.profile else { return Ok(()) };
    if model.path.as_os_str().is_empty() {
        return Ok(());
    }
    let here = crate::profile::source_info(model)?;
    if here.sha256 != p.source.sha256 {
        bail!(
            "the profile was made from {} (sha256 {}), not from {} (sha256 {}); profile this model first",
            p.source.path,
            &p.source.sha256[..12.min(p.source.sha256.len())],
            here.path,
            &here.sha256[..12]
        );
    }
    Ok(())
}
