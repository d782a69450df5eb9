//! Scores per unit, one strategy each. Higher always means "select first":
//! activation (a profile statistic), gradient (`Σ|w·∂L/∂w|`), cosine (`1 - cos`
//! between base and tuned weights), random (seeded), and reversed (the negated score
//! of another strategy: the opposite end of its ranking).
//!
//! In: the groups, and what the strategy reads (a [`Profile`], calibration data, a
//! reference model). Out: one score per unit of every group; a unit's score is the sum
//! over its members (gate, up and down of an MLP unit).

use super::cosine::{cosine_scores, Reference};
use super::gradient::{accumulate, GradientScorer};
use super::units::{Group, Member};
use crate::analyze::Layer;
use crate::data::Encode;
use crate::onnx::Model;
use crate::profile::{input_site, Profile, Statistic, StreamOptions, TokenInputs, TokenStream};
use crate::runtime::ort::SessionOptions;
use crate::types::LossSpec;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::PathBuf;

/// `--strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Activation,
    Gradient,
    Cosine,
    Random,
    Reversed,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "activation" => Strategy::Activation,
            "gradient" => Strategy::Gradient,
            "cosine" => Strategy::Cosine,
            "random" => Strategy::Random,
            "reversed" => Strategy::Reversed,
            _ => return Err(format!("unknown strategy '{s}': use activation, gradient, cosine, random or reversed")),
        })
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Activation => "activation",
            Strategy::Gradient => "gradient",
            Strategy::Cosine => "cosine",
            Strategy::Random => "random",
            Strategy::Reversed => "reversed",
        })
    }
}

/// Calibration data for strategies that run the model.
pub struct DataSource<'a> {
    pub path: PathBuf,
    pub encoder: Option<&'a dyn Encode>,
    pub stream: StreamOptions,
    pub session: SessionOptions,
    pub progress: bool,
}

/// What the strategies read; each needs only its own.
pub struct Evidence<'a> {
    pub profile: Option<&'a Profile>,
    pub statistic: Statistic,
    pub data: Option<DataSource<'a>>,
    pub loss: LossSpec,
    pub reference: Option<PathBuf>,
    pub seed: u64,
}

/// One score vector per group.
pub fn score_groups(
    strategy: Strategy,
    reversed_of: Strategy,
    model: &Model,
    layers: &[Layer],
    groups: &[Group],
    ev: &Evidence,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let members: Vec<(&Member, &str)> =
        groups.iter().flat_map(|g| g.members.iter().map(move |m| (m, g.label.as_str()))).collect();
    let per_member = match strategy {
        Strategy::Random => return Ok(groups.iter().map(|g| random_scores(g, ev.seed)).collect()),
        Strategy::Reversed if reversed_of == Strategy::Reversed || reversed_of == Strategy::Random => {
            bail!("--reversed-of {reversed_of}: reverse activation, gradient or cosine")
        }
        Strategy::Reversed => {
            let s = score_groups(reversed_of, reversed_of, model, layers, groups, ev)
                .with_context(|| format!("--strategy reversed ranks by {reversed_of} (--reversed-of)"))?;
            return Ok(s.into_iter().map(|v| v.into_iter().map(|x| -x).collect()).collect());
        }
        Strategy::Activation => activation_scores(layers, &members, ev)?,
        Strategy::Gradient => gradient_scores(model, &members, ev)?,
        Strategy::Cosine => {
            let path =
                ev.reference.as_ref().context("--strategy cosine needs --reference TUNED.onnx|TUNED.safetensors")?;
            cosine_scores(model, &Reference::open(path)?, &members)?
        }
    };
    Ok(groups
        .iter()
        .map(|g| {
            let mut total = vec![0.0; g.units];
            for m in &g.members {
                for (t, s) in total.iter_mut().zip(&per_member[&(m.weight.clone(), m.axis)]) {
                    *t += s;
                }
            }
            total
        })
        .collect())
}

/// The profile site that scores `m`: the layer's output neurons, or the units entering
/// it when `m` selects along the input axis (a down projection's share of an MLP unit).
pub fn activation_site(m: &Member, layers: &[Layer]) -> String {
    if m.is_neuron_axis(layers) {
        m.weight.clone()
    } else {
        input_site(&m.weight)
    }
}

/// The profile statistic of each member: a layer's output neurons, or for a down
/// projection's input units the profiled units entering it. `mean` is taken as |mean|.
fn activation_scores(
    layers: &[Layer],
    members: &[(&Member, &str)],
    ev: &Evidence,
) -> anyhow::Result<HashMap<(String, usize), Vec<f64>>> {
    let profile = ev.profile.context(
        "--strategy activation needs activation statistics: --data CALIB.jsonl (or, for neft select, --profile P)",
    )?;
    let mut out = HashMap::new();
    for (m, role) in members {
        let site = activation_site(m, layers);
        let stats = profile.site(&site).with_context(|| {
            format!(
                "the profile of {} has no statistics for '{site}' ({role}); was it made from this model?",
                profile.source.path
            )
        })?;
        let values = stats.get(ev.statistic).with_context(|| {
            let held: Vec<&str> = profile.statistics().iter().map(|s| s.key()).collect();
            format!(
                "the profile of {} has no '{}' statistic (it holds {}); profile again with --statistics",
                profile.source.path,
                ev.statistic.key(),
                held.join(", ")
            )
        })?;
        let v = values.iter().map(|&x| if ev.statistic == Statistic::Mean { x.abs() } else { x } as f64);
        out.insert((m.weight.clone(), m.axis), v.collect());
    }
    Ok(out)
}

/// `Σ|w·∂L/∂w|` per row, summed over the batches of the calibration data.
fn gradient_scores(
    model: &Model,
    members: &[(&Member, &str)],
    ev: &Evidence,
) -> anyhow::Result<HashMap<(String, usize), Vec<f64>>> {
    let data = ev.data.as_ref().context("--strategy gradient needs calibration data (--data CALIB.jsonl)")?;
    let label = model.display_path();
    let graph = crate::ir::Graph::from_proto(model.graph()).with_context(|| format!("{label}: invalid graph"))?;
    let inputs = TokenInputs::of(&graph, &label)?;
    let wanted: Vec<(String, usize)> = members.iter().map(|(m, _)| (m.weight.clone(), m.axis)).collect();
    let mut scorer = GradientScorer::new(model, &wanted, &ev.loss, &data.session)?;
    let mut stream = TokenStream::open(&data.path, data.encoder, inputs.clone(), data.stream)?;
    let size = std::fs::metadata(&data.path).map(|m| m.len()).unwrap_or(0);
    let bar = crate::profile::progress_bar(size, data.progress, "gradients");
    let labels = scorer.labels.clone();
    let mut total: Vec<Vec<f64>> = vec![];
    let mut tokens = 0;
    while let Some(batch) = stream.next() {
        let batch = batch?;
        let mut feeds = batch.feeds(&inputs)?;
        if let Some(l) = &labels {
            let values = match (scorer.per_row, &batch.classes) {
                (false, _) => batch.labels.clone(),
                (true, Some(classes)) => classes.clone(),
                (true, None) => bail!(
                    "{}: the model classifies whole sequences: --strategy gradient needs a \"label\" (a class) on \
                     every line of the calibration data",
                    data.path.display()
                ),
            };
            feeds.push((l.as_str(), values));
        }
        let scores = scorer.run(&feeds)?;
        if total.is_empty() {
            total = scores;
        } else {
            accumulate(&mut total, scores);
        }
        tokens += batch.tokens;
        bar.set_position(stream.bytes_read());
        bar.set_message(format!("{tokens} tokens"));
    }
    bar.finish_and_clear();
    if tokens == 0 {
        bail!(
            "{}: no tokens to score gradients on (the file has no examples, or every example is empty)",
            data.path.display()
        );
    }
    Ok(wanted.into_iter().zip(total).collect())
}

/// A seeded score per unit, from (seed, first weight, row) alone: the same seed gives
/// the same selection whatever else changes.
fn random_scores(g: &Group, seed: u64) -> Vec<f64> {
    let key =
        g.members[0].weight.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let base = mix(mix(seed) ^ key);
    (0..g.units).map(|row| (mix(base ^ row as u64) >> 11) as f64 / (1u64 << 53) as f64).collect()
}

/// splitmix64's finalizer.
fn mix(z: u64) -> u64 {
    let z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
