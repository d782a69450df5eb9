//! Activation profiling: per-neuron statistics of every trainable layer on
//! calibration data, computed inside the graph by ONNX Runtime.
//!
//! In: a model, a JSONL data file (and a tokenizer for text), batch options, an
//! execution provider. Out: a [`Profile`] (saved as `profile.safetensors`, see
//! [`file`]): for each [`Site`] (a layer's output, or the units entering a down
//! projection) the mean, mean |x|, mean x², fraction > 0 and max |x| of every neuron
//! (or the subset asked for) over the real tokens of the data (padding masked out).
//! Memory stays flat however long the data: one window of examples is read at a time,
//! and every tensor shape follows from a few padded batch lengths.
//!
//! The flow: [`find_sites`] → [`instrument`] (a copy of the graph whose only outputs
//! are per-batch sums) → a session ([`open_derived`]) → batches streamed from the file
//! ([`TokenStream`]) → sums accumulated on the host → means.

pub mod cli;
pub mod file;
mod instrument;
mod reduce;
mod session;
mod sites;
mod stream;

pub use crate::data::load_tokenizer;
pub use file::{source_info, Profile, SiteStats, Statistic, PROFILE_FORMAT};
pub use instrument::{instrument, SiteOutputs, MASK_INPUT, TOKENS_OUTPUT};
pub use reduce::Form;
pub use session::{open_derived, DerivedSession};
pub use sites::{find_sites, input_site, Site, SiteKind};
pub use stream::{StreamOptions, TokenBatch, TokenInputs, TokenStream};

use crate::analyze::find_layers;
use crate::data::Encode;
use crate::ir::Graph;
use crate::onnx::Model;
use crate::runtime::ort::{HostTensor, SessionOptions};
use anyhow::{bail, Context};
use file::Accumulator;
use std::collections::BTreeSet;
use std::path::Path;

/// How to profile.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    pub stream: StreamOptions,
    pub session: SessionOptions,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Profile only the sites of these names (all when `None`; a weight's name for its
    /// output, [`input_site`] for its input units): selection reads only the sites of
    /// the layers it targets, and every site costs time.
    pub only: Option<BTreeSet<String>>,
    /// The statistics to compute (on CUDA each costs passes over every activation).
    pub statistics: Vec<Statistic>,
    /// The ops the reductions are made of; `None`: the faster form for the provider.
    pub form: Option<Form>,
}

/// The instrumented model, ready to run batches.
pub struct Profiler {
    pub sites: Vec<Site>,
    /// The statistics computed, in [`Statistic::ALL`] order.
    pub statistics: Vec<Statistic>,
    outputs: Vec<SiteOutputs>,
    pub inputs: TokenInputs,
    session: DerivedSession,
}

impl Profiler {
    /// Finds the sites of `model`, instruments it (reductions in `form`, or the faster
    /// form for the provider) and opens the session.
    pub fn new(
        model: &Model,
        session: &SessionOptions,
        only: Option<&BTreeSet<String>>,
        statistics: &[Statistic],
        form: Option<Form>,
    ) -> anyhow::Result<Profiler> {
        let statistics: Vec<Statistic> = Statistic::ALL.into_iter().filter(|s| statistics.contains(s)).collect();
        if statistics.is_empty() {
            bail!("no statistic to profile: name at least one (mean, mean-abs, mean-sq, frac-pos, max-abs)");
        }
        let label = model.display_path();
        let graph = Graph::from_proto(model.graph()).with_context(|| format!("{label}: invalid graph"))?;
        let inputs = TokenInputs::of(&graph, &label)?;
        let layers = find_layers(&graph);
        // Without shape inference every MatMul output counts as a [batch, seq, n] tensor.
        let facts = crate::runtime::tract::infer_partial(model).ok().map(|(f, _)| f);
        let mut sites = find_sites(&graph, &layers, facts.as_ref());
        if let Some(only) = only {
            sites.retain(|s| only.contains(&s.name));
        }
        if sites.is_empty() {
            bail!("{label}: no trainable layers (MatMul, Gemm or Conv with a constant weight) to profile");
        }
        let opset = crate::autodiff::default_opset(&model.proto.opset_import).unwrap_or(1);
        let form = form.unwrap_or(Form::for_ep(session.ep));
        let (instrumented, outputs) = instrument(&graph, &sites, opset, &statistics, session.ep, form)
            .with_context(|| format!("{label}: cannot instrument the graph"))?;
        let mut proto = model.proto.clone();
        proto.graph = Some(instrumented.to_proto());
        if form == Form::Fused {
            proto.opset_import.push(crate::onnx::proto::OperatorSetIdProto {
                domain: Some(crate::runtime::neuron_stats::DOMAIN.into()),
                version: Some(crate::runtime::neuron_stats::DOMAIN_VERSION),
            });
        }
        let opts = SessionOptions { neft_ops: form == Form::Fused, ..session.clone() };
        let session = open_derived(model, &proto, &format!("{label} (instrumented)"), &opts)?;
        Ok(Profiler { sites, statistics, outputs, inputs, session })
    }

    /// Runs one batch; returns per site its `[k, n]` sums and the count they cover.
    pub fn run(&mut self, batch: &TokenBatch) -> anyhow::Result<Vec<(Vec<f32>, u64)>> {
        let mut feeds = batch.feeds(&self.inputs)?;
        feeds.push((MASK_INPUT, batch.mask.clone()));
        let out: std::collections::HashMap<String, HostTensor> =
            self.session.session.run(&feeds)?.into_iter().collect();
        let scalar = |name: &str| -> anyhow::Result<f32> {
            out.get(name)
                .and_then(|t| t.as_f32())
                .and_then(|a| a.iter().next().copied())
                .with_context(|| format!("output '{name}' missing"))
        };
        let tokens = scalar(TOKENS_OUTPUT)? as u64;
        self.outputs
            .iter()
            .map(|o| {
                let stats = out
                    .get(&o.stats)
                    .and_then(|t| t.as_f32())
                    .with_context(|| format!("output '{}' missing", o.stats))?;
                let count = match &o.rows {
                    Some(r) => scalar(r)? as u64,
                    None => tokens,
                };
                Ok((stats.iter().copied().collect(), count))
            })
            .collect()
    }
}

/// Profiles `model` on the JSONL file `data`.
pub fn profile(model: &Model, data: &Path, enc: Option<&dyn Encode>, opts: &ProfileOptions) -> anyhow::Result<Profile> {
    let mut profiler = Profiler::new(model, &opts.session, opts.only.as_ref(), &opts.statistics, opts.form)?;
    let mut stream = TokenStream::open(data, enc, profiler.inputs.clone(), opts.stream)?;
    let mut acc: Vec<Accumulator> =
        profiler.sites.iter().map(|s| Accumulator::new(s.neurons, &profiler.statistics)).collect();
    let size = std::fs::metadata(data).map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(size, opts.progress, "profiling");
    let (mut tokens, mut batches) = (0u64, 0u64);
    while let Some(batch) = stream.next() {
        let batch = batch?;
        for (a, (stats, count)) in acc.iter_mut().zip(profiler.run(&batch)?) {
            a.add(&stats, count);
        }
        tokens += batch.tokens as u64;
        batches += 1;
        bar.set_position(stream.bytes_read());
        bar.set_message(format!("{tokens} tokens"));
    }
    bar.finish_and_clear();
    if tokens == 0 {
        bail!("{}: no tokens to profile (the file has no examples, or every example is empty)", data.display());
    }
    Ok(Profile {
        source: source_info(model)?,
        data: data.display().to_string(),
        tokens,
        examples: stream.examples() as u64,
        batches,
        sites: profiler.sites.iter().cloned().zip(acc).map(|(s, a)| a.finish(s)).collect(),
    })
}

/// A byte-based progress bar on stderr; hidden when `show` is false or stderr is not a terminal.
pub fn progress_bar(bytes: u64, show: bool, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(bytes), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ({elapsed}, eta {eta})",
    )
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}
