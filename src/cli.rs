//! Command-line pieces shared by the `neft` and `neft-compile` binaries.

use crate::compile::{compile, CompileOptions};
use crate::optim::Optimizer;
use crate::types::{LoraOptions, LossSpec, Mode, NeuronSet, Unit};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Lets a closed standard output (`neft inspect --json | head`) end the process the
/// way it ends `cat`, instead of a panic in `println!` (Rust ignores SIGPIPE).
pub fn exit_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; restores the
    // default disposition of one signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An error and its causes on one line, as `{:#}` prints them, but without a cause
/// whose text the message before it already quotes (many errors here name their
/// source in their own message: `FILE: No such file or directory`).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Options of `neft compile` / `neft-compile`.
#[derive(Debug, Args)]
pub struct CompileArgs {
    /// The model to rewrite (.onnx; external data are read from its folder).
    pub model: PathBuf,
    /// Output folder for the artifacts (replaced if it holds earlier artifacts).
    #[arg(short, long)]
    pub out: PathBuf,
    /// The neurons to train, as written by `neft select` (format in README.md). Without
    /// it, neurons are selected first (--strategy, --budget, --data, ...), and
    /// OUT/neurons.json and OUT/neurons.svg record the selection.
    #[arg(long)]
    pub neurons: Option<PathBuf>,
    #[command(flatten)]
    pub selection: crate::select::cli::SelectionArgs,
    /// split: only selected rows are parameters; mask: whole weights with 0/1 masks (the
    /// paper's way); full: whole weights of the listed layers, rows ignored (baseline);
    /// lora: the --targets layers (or those --neurons names) stay frozen and each gains
    /// a low-rank update X·A·B·(alpha/rank), needing --rank and no data (baseline).
    #[arg(long, default_value = "split")]
    pub mode: Mode,
    /// LoRA rank r (--mode lora): A is [in, r], B is [r, out]; r·(in+out) parameters
    /// per layer. A starts as PEFT's (uniform on ±1/√in, seeded by --seed), B at zero.
    #[arg(long)]
    pub rank: Option<usize>,
    /// LoRA alpha: the update is scaled by alpha/rank [default: the rank, a scale of 1].
    #[arg(long, requires = "rank")]
    pub alpha: Option<f32>,
    /// neuron: each row on its own; mlp-unit: a gated-MLP unit selects its gate and up
    /// columns and its down row together (the paper's choice).
    #[arg(long, default_value = "neuron")]
    pub unit: Unit,
    /// auto: a scalar output named like a loss, else causal-LM cross-entropy on `logits`;
    /// causal-lm; or the name of a scalar output.
    #[arg(long, default_value = "auto")]
    pub loss: LossSpec,
    /// adamw or sgd.
    #[arg(long, default_value = "adamw", value_parser = ["adamw", "sgd"])]
    pub optimizer: String,
    /// Learning rate recorded as the default for `neft train`.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    /// Weight decay (decoupled for AdamW, added to the gradient for SGD).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f32,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip: Option<f32>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run_compile(args: &CompileArgs) -> anyhow::Result<()> {
    let model = crate::onnx::load(&args.model)?;
    let lora = match (args.mode, args.rank) {
        (Mode::Lora, None) => anyhow::bail!("--mode lora needs --rank R (PEFT's r, e.g. 8)"),
        (Mode::Lora, Some(rank)) => {
            Some(LoraOptions { rank, alpha: args.alpha.unwrap_or(rank as f32), seed: args.selection.seed })
        }
        (mode, Some(_)) => anyhow::bail!("--rank is for --mode lora, not --mode {}", mode.name()),
        (_, None) => None,
    };
    let (neurons, selection) = match &args.neurons {
        Some(path) => (NeuronSet::load(path)?, None),
        // LoRA adapts whole layers: no data to profile, nothing to select.
        None if lora.is_some() => (whole_layers(&model, &args.selection.targets)?, None),
        None => {
            let sel = crate::select::cli::select_for_compile(&model, &args.selection, args.unit, &args.loss)?;
            (sel.neurons.clone(), Some(sel))
        }
    };
    let optimizer = match args.optimizer.as_str() {
        "sgd" => Optimizer::Sgd { momentum: args.momentum, weight_decay: args.weight_decay },
        _ => Optimizer::adamw(args.weight_decay),
    };
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        anyhow::bail!("--lr must be a positive number, got {}", args.lr);
    }
    let opts = CompileOptions {
        mode: args.mode,
        unit: args.unit,
        loss: args.loss.clone(),
        optimizer,
        lr: args.lr,
        clip: args.clip,
        targets: selection.as_ref().map(|s| s.shares.iter().filter(|l| l.targeted).map(|l| l.weight.clone()).collect()),
        lora,
    };
    let t0 = std::time::Instant::now();
    let plan = compile(&model, &neurons, &opts, &args.out)?;
    if let Some(sel) = &selection {
        crate::select::cli::write_selection(&args.out.join("neurons.json"), sel)?;
        if !args.json {
            crate::select::cli::print_summary(sel);
        }
    } else {
        // A given neuron set gets the same record and picture as a selected one.
        plan.neurons.save(&args.out.join("neurons.json"))?;
        write_plan_heatmap(&plan, &args.out)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    let c = &plan.counts;
    println!("wrote {} in {:.1} s", args.out.display(), t0.elapsed().as_secs_f64());
    let rank = plan.lora.map_or(String::new(), |l| format!(" (rank {}, alpha {})", l.rank, l.alpha));
    println!(
        "  mode {}{rank}, loss '{}' ({}), optimizer {}",
        plan.mode, plan.loss.loss, plan.loss.kind, plan.optimizer
    );
    // LoRA adapts whole layers: their count says more than their neurons.
    let what = match plan.lora {
        Some(_) => format!("layers adapted {}", plan.neurons.layers.len()),
        None => format!(
            "neurons {} of {} ({:.2}%)",
            c.neurons_selected,
            c.neurons_total,
            100.0 * c.neurons_selected as f64 / c.neurons_total.max(1) as f64
        ),
    };
    println!(
        "  {what}, trainable parameters {} of {} ({:.2}%)",
        c.trainable_params,
        c.model_params,
        100.0 * c.trainable_params as f64 / c.model_params.max(1) as f64
    );
    println!("  optimizer state {}", crate::inspect::human_bytes(c.optimizer_state_bytes));
    println!("  nodes: train step {}, eval {}", c.train_nodes, c.eval_nodes);
    println!("  data inputs: {}", plan.data_inputs.join(", "));
    Ok(())
}

/// Every row of every layer `targets` picks: the layers `--mode lora` adapts when no
/// `--neurons` file names them.
fn whole_layers(model: &crate::onnx::Model, targets: &crate::select::Targets) -> anyhow::Result<NeuronSet> {
    let graph = crate::ir::Graph::from_proto(model.graph())?;
    let weights = crate::select::targeted_weights(model, targets, Unit::Neuron)?;
    let mut set = NeuronSet::new();
    for l in crate::analyze::find_layers(&graph).into_iter().filter(|l| weights.contains(&l.weight)) {
        set.layers.insert(l.weight, crate::types::LayerNeurons { axis: l.axis, rows: (0..l.neurons).collect() });
    }
    if set.layers.is_empty() {
        anyhow::bail!(
            "{}: --targets {targets} matches no trainable layer (see the roles in `neft inspect`)",
            model.display_path()
        );
    }
    Ok(set)
}

/// Options of `neft build-model`.
#[derive(Debug, Args)]
pub struct BuildModelArgs {
    /// The architecture; only `llama` (Llama, SmolLM2, Mistral-style decoders) for now.
    #[arg(value_parser = ["llama"])]
    pub arch: String,
    /// Output folder: model.onnx, model.onnx.data, config.json.
    #[arg(short, long)]
    pub out: PathBuf,
    /// A HuggingFace checkpoint folder: config.json and *.safetensors.
    #[arg(long, conflicts_with_all = ["config", "gguf"])]
    pub safetensors: Option<PathBuf>,
    /// A llama.cpp GGUF file (F32, F16, BF16, Q8_0, Q4_0, Q4_1 and K-quant Q2_K..Q8_K
    /// tensors, dequantized to f32); its tokenizer is written as tokenizer.json beside
    /// the model.
    #[arg(long, conflicts_with = "config")]
    pub gguf: Option<PathBuf>,
    /// A HuggingFace config.json alone: random weights (for tests and benchmarks).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seed of the random weights (with --config).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run_build_model(args: &BuildModelArgs) -> anyhow::Result<()> {
    use crate::models::llama::{build_llama, LlamaConfig, RandomWeights};
    let t0 = std::time::Instant::now();
    let path = match (&args.safetensors, &args.config) {
        _ if args.gguf.is_some() => {
            let file = args.gguf.as_ref().unwrap();
            let gguf = crate::models::gguf::Gguf::open(file)?;
            let mut weights = crate::models::weights::GgufWeights { gguf: &gguf };
            let cfg =
                weights.config().with_context(|| format!("{}: reading the Llama configuration", file.display()))?;
            let path = build_llama(&cfg, &mut weights, &args.out)?;
            let json = crate::models::tokenizer::tokenizer_json_from_gguf(&gguf)?;
            let tokenizer = crate::models::tokenizer::load_tokenizer_json(&json)
                .map_err(|why| anyhow::anyhow!("{}: the tokenizer built from its metadata: {why}", file.display()))?;
            let chat_template = gguf.get("tokenizer.chat_template").and_then(crate::models::gguf::Value::as_str);
            crate::fsutil::write_bytes_atomic(
                &args.out.join("tokenizer.json"),
                serde_json::to_string(&json)?.as_bytes(),
            )?;
            crate::models::hf::write_configs(&args.out, &cfg, Some(&tokenizer), chat_template)?;
            crate::models::folder::BuildSource::Gguf(absolute(file)?).save(&args.out)?;
            path
        }
        (Some(dir), _) => {
            let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
            let mut weights = crate::models::weights::SafetensorsWeights::open(dir)?;
            let path = build_llama(&cfg, &mut weights, &args.out)?;
            // The checkpoint's own tokenizer and generation settings, as they are.
            for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
            {
                let src = dir.join(name);
                if src.is_file() {
                    let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
                    crate::fsutil::write_bytes_atomic(&args.out.join(name), &bytes)?;
                }
            }
            crate::models::folder::BuildSource::Safetensors(absolute(dir)?).save(&args.out)?;
            path
        }
        (None, Some(config)) => {
            build_llama(&LlamaConfig::from_file(config)?, &mut RandomWeights::new(args.seed), &args.out)?
        }
        (None, None) => {
            anyhow::bail!("give the weights: --safetensors DIR, or --config CONFIG.json for random weights")
        }
    };
    println!("wrote {} in {:.1} s", path.display(), t0.elapsed().as_secs_f64());
    Ok(())
}

fn absolute(path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}: cannot make the path absolute", path.display()))
}

/// The selected share per block and module, drawn from the plan.
pub fn plan_heatmap_svg(plan: &crate::artifact::Plan) -> String {
    let title = format!("{} neurons, {} mode", plan.counts.neurons_selected, plan.mode);
    crate::select::heatmap_svg(&plan.layer_shares(), &title)
}

/// `OUT/neurons.svg`: [`plan_heatmap_svg`] as a file.
pub fn write_plan_heatmap(plan: &crate::artifact::Plan, out: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let path = out.join("neurons.svg");
    crate::fsutil::write_bytes_atomic(&path, plan_heatmap_svg(plan).as_bytes())?;
    Ok(path)
}

/// Options of `neft demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for everything the demo writes (an earlier demo's folder is replaced).
    #[arg(short, long, default_value = "neft-demo")]
    pub out: PathBuf,
    /// The small built-in Llama on a pattern task instead of SmolLM2 (seconds, no download).
    #[arg(long)]
    pub tiny: bool,
    /// Where `bash .ci/setup --demo` put SmolLM2 and the verses.
    #[arg(long, default_value = ".cache")]
    pub cache: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 120)]
    pub steps: u64,
    /// Verses per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f32,
    /// Share of the MLP parameters to train (or a number of MLP units).
    #[arg(long, default_value = "6%")]
    pub budget: crate::select::Budget,
}

pub fn run_demo(args: &DemoArgs) -> anyhow::Result<()> {
    if args.tiny {
        return crate::demo::run_tiny_demo(&args.out);
    }
    crate::demo::run_smollm_demo(&crate::demo::DemoSettings {
        out: args.out.clone(),
        cache: args.cache.clone(),
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        budget: args.budget.to_string(),
        size: Default::default(),
    })
}
