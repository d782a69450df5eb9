//! `neft select` and the selection options of `neft compile`: command-line front ends
//! of [`select`](super::select) that also write `neurons.json`, the heat map beside it
//! (`neurons.svg`) and a summary per module on stdout.

use super::{
    heatmap_svg, select, summary_text, Budget, DataSource, Evidence, Scope, SelectOptions, Selection, Strategy, Targets,
};
use crate::onnx::Model;
use crate::profile::cli::DataArgs;
use crate::profile::{Profile, ProfileOptions, Statistic};
use crate::types::LossSpec;
use crate::types::Unit;
use clap::Args;
use std::path::{Path, PathBuf};

/// How to choose neurons (shared by `neft select` and `neft compile`).
#[derive(Debug, Clone, Args)]
pub struct SelectionArgs {
    /// activation: a profile statistic; gradient: Σ|w·∂L/∂w| on --data; cosine: lowest
    /// similarity to --reference (the paper's rule); random: seeded; reversed: the
    /// other end of --reversed-of's ranking.
    #[arg(long, default_value = "activation")]
    pub strategy: Strategy,
    /// The strategy `reversed` reverses: activation, gradient or cosine.
    #[arg(long, default_value = "cosine")]
    pub reversed_of: Strategy,
    /// A percentage of the targeted layers' parameters (6%) or a number of units (120).
    #[arg(long, default_value = "6%")]
    pub budget: Budget,
    /// The tuned model for cosine: .onnx or .safetensors with the same initializer names.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// mlp, attn, all, or a regular expression over weight names and roles (`block [0-3] / mlp`).
    #[arg(long, default_value = "mlp")]
    pub targets: Targets,
    /// global: one threshold over all layers (the paper's); per-layer: each layer its
    /// share; normalized: one threshold over scores divided by their layer's mean.
    #[arg(long, default_value = "global")]
    pub scope: Scope,
    /// The activation statistic: mean (as |mean|), mean-abs, mean-sq, frac-pos or max-abs.
    #[arg(long, default_value = "mean-abs")]
    pub statistic: Statistic,
    /// Seed of the random strategy, and of the A matrices of `neft compile --mode lora`.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub data: DataArgs,
}

/// Options of `neft select`.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// The model to select neurons of (.onnx).
    pub model: PathBuf,
    /// The activation profile from `neft profile` (for --strategy activation).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// neuron: rows of single layers; mlp-unit: gated-MLP units (gate and up columns and
    /// the down row), scored as the sum over the three and written out in all three.
    #[arg(long, default_value = "neuron")]
    pub unit: Unit,
    /// The neurons file to write; the heat map goes beside it (.svg).
    #[arg(short, long, default_value = "neurons.json")]
    pub out: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_select(args: &SelectArgs) -> anyhow::Result<()> {
    let model = crate::onnx::load(&args.model)?;
    let profile = args.profile.as_deref().map(Profile::load).transpose()?;
    let sel = choose(&model, &args.selection, args.unit, &LossSpec::Auto, profile)?;
    let svg = write_selection(&args.out, &sel)?;
    if args.json {
        let out = serde_json::json!({ "summary": sel.summary, "layers": sel.shares, "neurons": args.out, "svg": svg });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_summary(&sel);
        println!("wrote {} and {}", args.out.display(), svg.display());
    }
    Ok(())
}

/// Selects for `neft compile` (which has no --profile: activation profiles --data first).
pub fn select_for_compile(
    model: &Model,
    args: &SelectionArgs,
    unit: Unit,
    loss: &LossSpec,
) -> anyhow::Result<Selection> {
    choose(model, args, unit, loss, None)
}

/// Runs the selection, profiling the data first when activation needs a profile and none was given.
fn choose(
    model: &Model,
    args: &SelectionArgs,
    unit: Unit,
    loss: &LossSpec,
    profile: Option<Profile>,
) -> anyhow::Result<Selection> {
    let opts = SelectOptions {
        strategy: args.strategy,
        reversed_of: args.reversed_of,
        budget: args.budget,
        scope: args.scope,
        targets: args.targets.clone(),
        unit,
    };
    let tokenizer = args.data.tokenizer()?;
    let encoder = tokenizer.as_ref().map(|t| t as &dyn crate::data::Encode);
    let data = match &args.data.data {
        Some(path) => Some(DataSource {
            path: path.clone(),
            encoder,
            stream: args.data.stream()?,
            session: args.data.session(),
            progress: true,
        }),
        None => None,
    };
    let profile = match (profile, &data) {
        (Some(p), _) => Some(p),
        (None, Some(d)) if opts.needs_profile() => {
            let only = Some(super::activation_sites(model, &opts.targets, unit)?);
            // Only the statistic the selection reads: on CUDA each costs passes over every activation.
            let statistics = vec![args.statistic];
            let popts = ProfileOptions {
                stream: d.stream,
                session: d.session.clone(),
                progress: true,
                only,
                statistics,
                form: None,
            };
            Some(crate::profile::profile(model, &d.path, d.encoder, &popts)?)
        }
        _ => None,
    };
    let ev = Evidence {
        profile: profile.as_ref(),
        statistic: args.statistic,
        data,
        loss: loss.clone(),
        reference: args.reference.clone(),
        seed: args.seed,
    };
    select(model, &opts, &ev)
}

/// Writes `neurons.json` at `out` and the heat map beside it; returns the map's path.
pub fn write_selection(out: &Path, sel: &Selection) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    sel.neurons.save(out).with_context(|| format!("writing {}", out.display()))?;
    let svg = out.with_extension("svg");
    let s = &sel.summary;
    let title = format!(
        "{} selection, budget {}, {} scope: {} of {} targeted parameters",
        s.strategy, s.budget, s.scope, s.params_selected, s.params_targeted
    );
    crate::fsutil::write_bytes_atomic(&svg, heatmap_svg(&sel.shares, &title).as_bytes())
        .with_context(|| format!("writing {}", svg.display()))?;
    Ok(svg)
}

/// The text summary: totals, then per module.
pub fn print_summary(sel: &Selection) {
    let s = &sel.summary;
    // With mlp-unit, layers outside MLPs still count single neurons.
    let unit = if s.unit == "mlp-unit" { "units" } else { "neurons" };
    let budget = if s.limit_in_units { format!("{} {unit}", s.limit) } else { format!("{} parameters", s.limit) };
    println!(
        "selected {} of {} {unit}: {} of {} targeted parameters ({:.2}%; budget {} = {budget})",
        s.units_selected,
        s.units_targeted,
        s.params_selected,
        s.params_targeted,
        100.0 * s.params_selected as f64 / s.params_targeted.max(1) as f64,
        s.budget
    );
    println!("  strategy {}, targets {}, scope {}", s.strategy, s.targets, s.scope);
    print!("{}", summary_text(&sel.shares));
}
