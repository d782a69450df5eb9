//! The `neft train`, `neft export` and `neft merge` command lines: clap arguments and
//! the functions the binary calls. Results go to stdout (`--json` for scripts),
//! progress and notes to stderr.

use super::checkpoint;
use super::run::{train, Length, Summary, TrainOptions};
use crate::adapter::{merge, Adapter, MergeReport};
use crate::artifact::{Plan, State};
use crate::runtime::ort::Ep;
use anyhow::{bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};

/// Options of `neft train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The artifact folder written by `neft compile`; checkpoints, metrics.jsonl and
    /// loss.svg are written into it.
    pub dir: PathBuf,
    /// Training data, JSONL: {"text"}, {"prompt","completion"} (loss on the completion
    /// only) or pre-tokenized {"input_ids"[,"labels"]}; for a sequence classifier
    /// {"text" or "input_ids", "label": CLASS}; any other field (nested lists of
    /// numbers) feeds the model input of its name, e.g. {"x": [...], "target": 3}.
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluation data (same formats): loss and perplexity (accuracy for a classifier)
    /// at every checkpoint.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Train until this many optimizer steps are done in total (a resumed run counts the
    /// steps before it). Default: one epoch.
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Train for this many passes over the data (in total, like --steps).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Examples per step [default: 8, or the checkpoint's with --resume].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Longer examples are cut to this many tokens [default: 512, or the checkpoint's].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Execution provider: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub ep: Ep,
    /// Intra-op threads of ONNX Runtime [default: ONNX Runtime's choice].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the data order [default: 0, or the checkpoint's].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from OUT/checkpoint.safetensors (same data order, same settings).
    #[arg(long)]
    pub resume: bool,
    /// Learning rate [default: the checkpoint's, else the one given to neft compile].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Learning-rate schedule, as the Hugging Face Trainer's: constant, linear (decays to
    /// 0 at the run's last step, --steps or --epochs) or cosine (half a cosine to 0 at the
    /// last step) [default: constant, or the checkpoint's]. metrics.jsonl logs each
    /// step's rate.
    #[arg(long)]
    pub schedule: Option<crate::train::schedule::ScheduleKind>,
    /// Raise the learning rate linearly from 0 over the first N steps (the first step
    /// runs at 0, as in transformers) [default: 0, or the checkpoint's].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// A Hugging Face tokenizer.json, for {"text"} and {"prompt","completion"} data.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Write a checkpoint (and evaluate) every N steps; 0: only at the end.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Print the summary as JSON on stdout, and no progress.
    #[arg(long)]
    pub json: bool,
}

pub fn run_train(args: &TrainArgs) -> anyhow::Result<()> {
    let opts = TrainOptions {
        dir: args.dir.clone(),
        data: args.data.clone(),
        eval: args.eval.clone(),
        length: match (args.steps, args.epochs) {
            (Some(n), _) => Length::Steps(n),
            (None, Some(e)) => Length::Epochs(e),
            (None, None) => Length::Epochs(1),
        },
        batch: args.batch,
        seq_len: args.seq_len,
        seed: args.seed,
        lr: args.lr,
        schedule: args.schedule,
        warmup: args.warmup,
        ep: args.ep,
        threads: args.threads,
        resume: args.resume,
        tokenizer: args.tokenizer.clone(),
        checkpoint_every: args.checkpoint_every,
        quiet: args.json,
    };
    let summary = train(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if summary.status == "interrupted" {
        return Err(super::run::Interrupted { step: summary.step }.into());
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let loss = |l: Option<f32>| l.map_or("-".to_string(), |l| format!("{l:.4}"));
    match s.status.as_str() {
        "up-to-date" => println!("already at step {} of {}: nothing to do", s.step, s.target_steps),
        status => println!(
            "{status}: steps {}..{} of {} on {} ({} examples, batch {}, lr {:e}{})",
            s.start_step,
            s.step,
            s.target_steps,
            s.ep,
            s.examples,
            s.batch,
            s.lr,
            schedule_note(s)
        ),
    }
    if s.step > s.start_step {
        println!(
            "  loss {} -> {}, {} tokens in {:.1} s ({:.0} tokens/s)",
            loss(s.first_loss),
            loss(s.last_loss),
            s.tokens,
            s.seconds,
            s.tokens_per_second
        );
    }
    match (s.eval_loss_start, s.eval_loss, s.eval_perplexity, s.eval_accuracy_start, s.eval_accuracy) {
        (Some(start), Some(end), _, Some(a0), Some(a1)) => {
            println!("  eval loss {start:.4} -> {end:.4}, accuracy {:.1}% -> {:.1}%", a0 * 100.0, a1 * 100.0)
        }
        (Some(start), Some(end), Some(ppl), ..) => println!("  eval loss {start:.4} -> {end:.4} (perplexity {ppl:.2})"),
        _ => {}
    }
    if let Some(c) = &s.checkpoint {
        println!("  checkpoint {}", c.display());
    }
    println!("  metrics {}, plot {}", s.metrics.display(), s.plot.display());
}

/// `, cosine schedule, warmup 10` unless the schedule is constant without warmup.
fn schedule_note(s: &Summary) -> String {
    match (s.schedule, s.warmup) {
        (crate::train::schedule::ScheduleKind::Constant, 0) => String::new(),
        (kind, 0) => format!(", {kind} schedule"),
        (kind, w) => format!(", {kind} schedule, warmup {w}"),
    }
}

/// Options of `neft export`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("outputs").args(["adapter", "merged", "hf", "gguf", "peft"]).multiple(true).required(true))]
pub struct ExportArgs {
    /// The artifact folder (after `neft train`).
    pub dir: PathBuf,
    /// Write the trained rows (and bias elements) as an adapter (not for LoRA artifacts).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Write the base model with the trained rows merged in (weights in <MERGED>.data);
    /// for a LoRA artifact, with A·B·(alpha/rank) added to each adapted weight.
    #[arg(long)]
    pub merged: Option<PathBuf>,
    /// Write the merged model as a Hugging Face checkpoint folder (model.safetensors with
    /// Hugging Face names, config.json, tokenizer files) that transformers loads; for
    /// models written by `neft build-model llama`.
    #[arg(long, value_name = "DIR")]
    pub hf: Option<PathBuf>,
    /// Write the merged model as a GGUF file for llama.cpp, with the metadata, tokenizer
    /// and tensor names of the GGUF the base model was built from.
    #[arg(long, value_name = "FILE")]
    pub gguf: Option<PathBuf>,
    /// The type of the GGUF's matrices (vectors stay F32).
    #[arg(long, value_enum, default_value = "f16", requires = "gguf")]
    pub gguf_type: crate::models::gguf_write::GgufFloat,
    /// Write a LoRA artifact's factors as a PEFT adapter folder (adapter_config.json,
    /// adapter_model.safetensors) for `PeftModel.from_pretrained` on the base model's
    /// Hugging Face checkpoint.
    #[arg(long, value_name = "DIR")]
    pub peft: Option<PathBuf>,
    /// The base model [default: the model the artifacts were compiled from, as plan.json
    /// records it].
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// The state to export [default: OUT/checkpoint.safetensors].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_export(args: &ExportArgs) -> anyhow::Result<()> {
    let plan = Plan::load_dir(&args.dir)?;
    let state_path = args.state.clone().unwrap_or_else(|| checkpoint::checkpoint_path(&args.dir));
    let state = trained_state(&plan, &state_path)?;
    let merges = args.merged.is_some() || args.hf.is_some() || args.gguf.is_some();
    let base = match merges {
        true => Some(crate::onnx::load(base_path(args, &plan)?)?),
        false => None,
    };
    let adapter = match (&plan.lora, &base) {
        _ if args.adapter.is_none() && !merges => None,
        // LoRA factors fold into whole weights: only merged models can be written.
        (Some(_), Some(base)) if args.adapter.is_none() => Some(Adapter::merged_lora(&plan, &state, base)?),
        _ => Some(Adapter::from_state(&plan, &state)?),
    };
    let mut report = serde_json::json!({});
    if let Some(a) = &adapter {
        report = serde_json::json!({ "step": a.step, "tensors": a.tensors.len() });
    }
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    let adapter = adapter.as_ref();
    if let (Some(path), Some(adapter)) = (&args.adapter, adapter) {
        adapter.save(path)?;
        report["adapter"] = serde_json::json!(path);
        say(format!("wrote {} (step {}, {} tensors)", path.display(), adapter.step, adapter.tensors.len()));
    }
    let base = base.as_ref();
    if let (Some(out), Some(base), Some(adapter)) = (&args.merged, base, adapter) {
        let merged = merge(base, adapter, out)?;
        report["merged"] = serde_json::to_value(&merged)?;
        if !args.json {
            print_merge(&merged);
        }
    }
    let checkpoint = match (base, adapter) {
        (Some(base), Some(adapter)) if args.hf.is_some() || args.gguf.is_some() => {
            let what = if args.hf.is_some() { "--hf" } else { "--gguf" };
            Some(crate::adapter::HfCheckpoint::of(base, adapter, what)?)
        }
        _ => None,
    };
    if let (Some(out), Some(checkpoint)) = (&args.hf, &checkpoint) {
        let r = crate::adapter::write_hf(checkpoint, out)?;
        say(format!("wrote {} (Hugging Face checkpoint, {} tensors{})", out.display(), r.tensors, untied_note(&r)));
        report["hf"] = serde_json::to_value(&r)?;
    }
    if let (Some(out), Some(checkpoint)) = (&args.gguf, &checkpoint) {
        let r = crate::adapter::write_gguf(checkpoint, out, args.gguf_type)?;
        say(format!("wrote {} (GGUF, {} tensors, {:?}{})", out.display(), r.tensors, args.gguf_type, untied_note(&r)));
        report["gguf"] = serde_json::to_value(&r)?;
    }
    if let Some(out) = &args.peft {
        let r = crate::adapter::write_peft(&plan, &state, &base_path(args, &plan)?, out)?;
        say(format!("wrote {} (PEFT LoRA adapter, {} tensors)", out.display(), r.tensors));
        report["peft"] = serde_json::to_value(&r)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn untied_note(r: &crate::adapter::FormatReport) -> &'static str {
    match r.head_untied {
        true => "; training changed the tied output projection, so it is written apart from the embedding",
        false => "",
    }
}

/// The base model of `neft export --merged`: --base, else the one plan.json records.
fn base_path(args: &ExportArgs, plan: &Plan) -> anyhow::Result<PathBuf> {
    let path = args.base.clone().unwrap_or_else(|| PathBuf::from(&plan.source.path));
    if !path.is_file() {
        bail!("{}: the base model recorded in plan.json is not there; pass it with --base BASE.onnx", path.display());
    }
    Ok(path)
}

/// A state belonging to `plan`: the checkpoint by default.
fn trained_state(plan: &Plan, path: &Path) -> anyhow::Result<State> {
    if !path.is_file() {
        bail!("{}: not found; train first (neft train OUT --data ...) or name a state with --state", path.display());
    }
    let state = State::load(path)?;
    match state.metadata.get("plan") {
        Some(h) if *h == plan.hash() => {}
        Some(h) => bail!("{}: made for plan {h}, but the artifacts are plan {}", path.display(), plan.hash()),
        None => bail!("{}: metadata 'plan' is missing; not a neft state", path.display()),
    }
    super::session::check_state(plan, &state).with_context(|| path.display().to_string())?;
    Ok(state)
}

/// Options of `neft merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The model the adapter was trained from (checked by SHA-256).
    pub base: PathBuf,
    /// The adapter written by `neft export --adapter`.
    pub adapter: PathBuf,
    /// The merged model; its weights go to <OUT>.data beside it.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_merge(args: &MergeArgs) -> anyhow::Result<()> {
    let adapter = Adapter::load(&args.adapter)?;
    let base = crate::onnx::load(&args.base)?;
    let merged = merge(&base, &adapter, &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&merged)?);
    } else {
        print_merge(&merged);
    }
    Ok(())
}

fn print_merge(m: &MergeReport) {
    let rows: usize = m.tensors.iter().map(|t| t.1).sum();
    match &m.data {
        Some(d) => println!("wrote {} and {}", m.model.display(), d.display()),
        None => println!("wrote {}", m.model.display()),
    }
    println!("  {} rows replaced in {} tensors", rows, m.tensors.len());
}
