//! `neft`: the command line. Results go to stdout (`--json` for machines), progress
//! and errors to stderr. Exit codes: 0 success, 1 error, 2 bad usage.

use anyhow::Context;
use clap::{Parser, Subcommand};
use neft::{inspect, ir, onnx};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "neft", version, about = "Neuron-level fine-tuning for ONNX models, on stock ONNX Runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rewrite a model for neuron-level training: loss, split rows (or masks), backward
    /// pass and optimizer, written as an artifact folder for `neft train` (same as `neft-compile`).
    Compile(neft::cli::CompileArgs),
    /// Tune SmolLM2-135M to translate English into Chichewa on 6% of its MLP units and
    /// score it before and after (needs `bash .ci/setup --demo`); with --tiny, the whole
    /// flow in seconds on the small Llama built into neft. Each step is printed as the
    /// `neft` command it runs.
    Demo(neft::cli::DemoArgs),
    /// Write an ONNX model from a checkpoint (or a config and random weights).
    BuildModel(neft::cli::BuildModelArgs),
    /// Show what a model is: format, inputs and outputs, op mix, parameters, and the
    /// trainable layers (MatMul, Gemm, Conv with an initializer weight) with their neurons.
    /// Given an artifact folder from `neft compile`: what was compiled, the trainable
    /// neurons per layer, sizes before and after, and what each pass added.
    #[command(group = clap::ArgGroup::new("view").args(["dot", "html"]).multiple(true))]
    Inspect {
        /// The .onnx file (external data are read from its folder), or an artifact folder.
        model: PathBuf,
        /// Print JSON instead of text (fields documented in README.md).
        #[arg(long)]
        json: bool,
        /// Also create an ONNX Runtime session and run the model once on synthetic
        /// inputs (symbolic dimensions set to 1), reporting the time and output shapes.
        #[arg(long)]
        check: bool,
        /// Compare with another model: what the second adds, removes or changes (nodes
        /// grouped by the neft pass that added them).
        #[arg(long, value_name = "OTHER.onnx", conflicts_with = "check")]
        diff: Option<PathBuf>,
        /// Write the graph as Graphviz DOT (SVG when FILE ends in .svg, through `dot`).
        #[arg(long, value_name = "FILE")]
        dot: Option<PathBuf>,
        /// Write a self-contained HTML report (tables, heat map, loss curve, and one
        /// layer drawn before and after the rewrite; no network needed to view it).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["diff", "check", "dot", "json"])]
        html: Option<PathBuf>,
        /// With --dot: only the values and nodes within --depth edges of this value or
        /// node. With --html: the layer to draw (weight name or role, e.g. val_244 or
        /// "block 0 / mlp.up"); by default the one with the most selected neurons, or
        /// a model's first trainable layer.
        #[arg(long, requires = "view")]
        around: Option<String>,
        /// With --around or --html: how many edges away to draw [default: 2 for --dot,
        /// 3 for --html].
        #[arg(long, requires = "view")]
        depth: Option<usize>,
        /// Execution provider for --check: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu", requires = "check")]
        ep: neft::runtime::Ep,
    },
    /// Train compiled artifacts on JSONL data through ONNX Runtime (CPU or CUDA), with
    /// checkpoints, metrics.jsonl and a loss plot in the artifact folder.
    Train(neft::train::cli::TrainArgs),
    /// Write the trained rows as an adapter, or the base model with them merged in: as
    /// ONNX, a Hugging Face checkpoint, a GGUF for llama.cpp, or (LoRA) a PEFT adapter.
    Export(neft::train::cli::ExportArgs),
    /// Merge an adapter into the base model it was trained from.
    Merge(neft::train::cli::MergeArgs),
    /// Run calibration data through the model and record per-neuron activation
    /// statistics of every layer (mean, mean |x|, mean x², fraction > 0, max |x|).
    Profile(neft::profile::cli::ProfileArgs),
    /// Choose the neurons to train (activation, gradient, cosine, random or reversed,
    /// within a budget) and write neurons.json with a heat map beside it.
    Select(neft::select::cli::SelectArgs),
}

fn main() -> ExitCode {
    neft::cli::exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<neft::train::Interrupted>() => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", neft::cli::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Compile(args) => neft::cli::run_compile(&args),
        Command::Demo(args) => neft::cli::run_demo(&args),
        Command::BuildModel(args) => neft::cli::run_build_model(&args),
        Command::Train(args) => neft::train::cli::run_train(&args),
        Command::Export(args) => neft::train::cli::run_export(&args),
        Command::Merge(args) => neft::train::cli::run_merge(&args),
        Command::Profile(args) => neft::profile::cli::run_profile(&args),
        Command::Select(args) => neft::select::cli::run_select(&args),
        Command::Inspect { model, json, diff: Some(other), .. } => {
            let (a, b) = (onnx::load(&model)?, onnx::load(&other)?);
            let d = inspect::diff(a.graph(), b.graph());
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", inspect::render_diff(&d));
            }
            Ok(())
        }
        Command::Inspect { model, html: Some(file), around, depth, .. } => {
            let focus = inspect::Focus { around: around.as_deref(), depth: depth.unwrap_or(3) };
            let page = if model.is_dir() {
                inspect::artifact_html(&model, &focus)?
            } else {
                let m = onnx::load(&model)?;
                let graph =
                    ir::Graph::from_proto(m.graph()).with_context(|| format!("{}: invalid graph", model.display()))?;
                inspect::model_html(&m, &graph, &focus)?
            };
            inspect::write_html(&file, &page)?;
            println!("wrote {}", file.display());
            Ok(())
        }
        Command::Inspect { model, dot: Some(file), around, depth, .. } if !model.is_dir() => {
            let m = onnx::load(&model)?;
            let graph = ir::Graph::from_proto(m.graph())?;
            let text = inspect::to_dot(&graph, around.as_deref(), depth.unwrap_or(2))?;
            inspect::write_dot(&text, &file)?;
            println!("wrote {}", file.display());
            Ok(())
        }
        Command::Inspect { model, json, .. } if model.is_dir() => {
            let summary = inspect::summarize_artifacts(&model)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", inspect::render_artifacts(&summary));
            }
            Ok(())
        }
        Command::Inspect { model, json, check, ep, .. } => {
            let m = onnx::load(&model)?;
            let graph =
                ir::Graph::from_proto(m.graph()).with_context(|| format!("{}: invalid graph", model.display()))?;
            let summary = inspect::summarize(&m, &graph);
            let runtime = if check { Some(inspect::check_runtime(&m, ep)?) } else { None };
            if json {
                let mut value = serde_json::to_value(&summary)?;
                if let Some(r) = &runtime {
                    value["runtime"] = serde_json::to_value(r)?;
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", inspect::render_text(&summary));
                if let Some(r) = &runtime {
                    print!("{r}");
                }
            }
            Ok(())
        }
    }
}
