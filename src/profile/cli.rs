//! `neft profile`: the command-line front end of [`profile`](super::profile), and the
//! calibration-data options every command that runs the model on data shares.

use super::{profile, ProfileOptions, StreamOptions};
use crate::runtime::ort::{Ep, SessionOptions};
use clap::Args;
use std::path::PathBuf;

/// Calibration data and how to run it (`neft profile`, `neft select`, `neft compile`).
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Calibration data: JSONL with {"text"}, {"prompt","completion"} or {"input_ids"} per line
    /// (and a "label" per line for gradient selection on a sequence classifier; other
    /// fields feed the model inputs of their names, as for `neft train`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// tokenizer.json for text data (pre-tokenized {"input_ids"} data need none).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Examples per calibration batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per example at most (longer examples are cut).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Use only the first N examples of the data.
    #[arg(long)]
    pub max_examples: Option<usize>,
    /// Execution provider for calibration runs: cpu, cuda or cuda:N (as for `neft train`;
    /// cuda fails with the missing libraries named, never falls back to the CPU).
    #[arg(long, default_value = "cpu")]
    pub ep: Ep,
    /// Intra-op threads of ONNX Runtime [default: ONNX Runtime's choice].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl DataArgs {
    pub fn stream(&self) -> anyhow::Result<StreamOptions> {
        anyhow::ensure!(self.batch > 0, "--batch must be at least 1");
        anyhow::ensure!(self.seq_len > 0, "--seq-len must be at least 1");
        Ok(StreamOptions { batch: self.batch, seq_len: self.seq_len, max_examples: self.max_examples })
    }

    pub fn session(&self) -> SessionOptions {
        SessionOptions { ep: self.ep, threads: self.threads, ..Default::default() }
    }

    /// The tokenizer, if one was given.
    pub fn tokenizer(&self) -> anyhow::Result<Option<crate::data::TextTokenizer>> {
        self.tokenizer.as_deref().map(super::load_tokenizer).transpose()
    }
}

/// Options of `neft profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The model to profile (.onnx; external data are read from its folder).
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Which layers to profile: mlp, attn, all, or a regular expression over weight
    /// names and roles (each layer profiled costs time).
    #[arg(long, default_value = "all")]
    pub targets: crate::select::Targets,
    /// The statistics to compute, comma-separated (on the CPU all come from one read of
    /// each activation; on CUDA each costs passes over it; `neft select --strategy
    /// activation` reads one).
    #[arg(long, value_delimiter = ',', default_value = "mean,mean-abs,mean-sq,frac-pos,max-abs")]
    pub statistics: Vec<super::Statistic>,
    /// Where to write the statistics (safetensors).
    #[arg(short, long, default_value = "profile.safetensors")]
    pub out: PathBuf,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run_profile(args: &ProfileArgs) -> anyhow::Result<()> {
    let Some(data) = &args.data.data else { anyhow::bail!("neft profile needs --data CALIB.jsonl") };
    let model = crate::onnx::load(&args.model)?;
    let tokenizer = args.data.tokenizer()?;
    let enc = tokenizer.as_ref().map(|t| t as &dyn crate::data::Encode);
    let only = match args.targets {
        crate::select::Targets::All => None,
        // Both kinds of site of every targeted layer: a later selection may score by
        // neuron or by MLP unit.
        ref t => Some(
            crate::select::targeted_weights(&model, t, crate::compile::Unit::Neuron)?
                .into_iter()
                .flat_map(|w| [super::input_site(&w), w])
                .collect(),
        ),
    };
    let opts = ProfileOptions {
        stream: args.data.stream()?,
        session: args.data.session(),
        progress: true,
        only,
        statistics: args.statistics.clone(),
        form: None,
    };
    let t0 = std::time::Instant::now();
    let p = profile(&model, data, enc, &opts)?;
    let secs = t0.elapsed().as_secs_f64();
    p.save(&args.out)?;
    if args.json {
        let summary = serde_json::json!({
            "out": args.out, "model": p.source.path, "data": p.data, "tokens": p.tokens,
            "examples": p.examples, "batches": p.batches, "sites": p.sites.len(), "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "profiled {} tokens ({} examples, {} batches) in {secs:.1} s ({:.0} tokens/s) on {}",
        p.tokens,
        p.examples,
        p.batches,
        p.tokens as f64 / secs.max(1e-9),
        opts.session.ep
    );
    let inputs = p.sites.iter().filter(|s| s.site.kind == super::SiteKind::Input).count();
    println!("  {} layer outputs and {inputs} MLP intermediates → {}", p.sites.len() - inputs, args.out.display());
    Ok(())
}
