//! The paper's comparison on the English→Chichewa task with SmolLM2-135M: full
//! fine-tuning of the MLP matrices against NeFT at one budget with neurons chosen by
//! activation, gradient and cosine (the paper's rule, against the full fine-tuning
//! run), random and reversed (the most similar units), all with the same steps, batch
//! and data. Prints a table and writes `DIR/results.json` and `DIR/results.md`.
//!
//! ```text
//! bash .ci/setup --demo && cargo build --release --bin neft
//! cargo run --release --example experiment -- [-o DIR] [--steps 60] [--batch 8] [--budget 6%]
//!     [--lr 1e-3] [--full-lr 1e-4] [--translate 32] [--only activation,random]
//! ```
//! Each run is the `neft` commands a user would type (compile, train, export), from the
//! `neft` binary built beside this example; scores are computed on the merged models.

use clap::Parser;
use neft::demo::translation::{score, Scores, Sources, Task, TaskSize};
use neft::runtime::ort::SessionOptions;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Parser, Debug, Serialize)]
struct Args {
    /// Working folder (models, artifacts, results).
    #[arg(short, long, default_value = "neft-experiment")]
    out: PathBuf,
    /// Where `bash .ci/setup --demo` put SmolLM2 and the verses.
    #[arg(long, default_value = ".cache")]
    cache: PathBuf,
    #[arg(long, default_value_t = 60)]
    steps: u64,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Share of the MLP parameters NeFT trains.
    #[arg(long, default_value = "6%")]
    budget: String,
    /// Learning rate of the NeFT runs.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Learning rate of full fine-tuning.
    #[arg(long, default_value_t = 1e-4)]
    full_lr: f32,
    /// Held-out verses translated for chrF.
    #[arg(long, default_value_t = 32)]
    translate: usize,
    /// Run only these methods (comma-separated: full, activation, gradient, cosine, random, reversed).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Serialize)]
struct Row {
    method: String,
    trainable_params: u64,
    train_seconds: f64,
    scores: Scores,
}

const METHODS: [&str; 6] = ["full", "activation", "gradient", "cosine", "random", "reversed"];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let neft = neft_binary()?;
    std::fs::create_dir_all(&args.out)?;
    let model_dir = args.out.join("smollm2");
    let model = model_dir.join("model.onnx");
    let tokenizer_path = model_dir.join("tokenizer.json");
    if !model.is_file() {
        let gguf = args.cache.join(neft::demo::GGUF_FILE);
        run(&neft, &["build-model", "llama", "--gguf", &s(&gguf), "-o", &s(&model_dir)])?;
    }
    let size = TaskSize { translate: args.translate, ..TaskSize::default() };
    let task = Task::prepare(&Sources::in_cache(&args.cache)?, &size, &args.out.join("data"))?;
    let tokenizer = neft::profile::load_tokenizer(&tokenizer_path)?;
    let opts = SessionOptions::default();

    let base = score(&model, &tokenizer, &task, &opts)?;
    println!("base: loss {:.3}, chrF {:.1}", base.loss, base.chrf);
    let mut rows =
        vec![Row { method: "base (no training)".into(), trainable_params: 0, train_seconds: 0.0, scores: base }];
    let wanted = |m: &str| args.only.is_empty() || args.only.iter().any(|o| o == m);
    for method in METHODS.into_iter().filter(|m| wanted(m)) {
        let dir = args.out.join(method);
        let started = Instant::now();
        let mut compile = vec!["compile".to_string(), s(&model), "-o".into(), s(&dir.join("artifacts"))];
        compile.extend(selection(method, &args, &task, &tokenizer_path)?);
        let _ = std::fs::remove_dir_all(&dir);
        run(&neft, &compile.iter().map(String::as_str).collect::<Vec<_>>())?;
        let artifacts = dir.join("artifacts");
        let train = task.train_args(&artifacts, &tokenizer_path, args.steps, args.batch, 3);
        run(&neft, &train.iter().map(String::as_str).collect::<Vec<_>>())?;
        let train_seconds = started.elapsed().as_secs_f64();
        let merged = dir.join("merged.onnx");
        run(&neft, &["export", &s(&artifacts), "--merged", &s(&merged)])?;
        let plan = neft::artifact::Plan::load(&artifacts.join("plan.json"))?;
        let scores = score(&merged, &tokenizer, &task, &opts)?;
        println!("{method}: loss {:.3}, chrF {:.1}", scores.loss, scores.chrf);
        rows.push(Row { method: method.into(), trainable_params: plan.counts.trainable_params, train_seconds, scores });
    }
    let table = markdown(&rows);
    println!("\n{table}");
    let json = serde_json::json!({ "settings": args, "rows": rows });
    neft::fsutil::write_bytes_atomic(&args.out.join("results.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    neft::fsutil::write_bytes_atomic(&args.out.join("results.md"), table.as_bytes())?;
    Ok(())
}

/// The compile options that choose each method's trainable weights.
fn selection(method: &str, a: &Args, task: &Task, tokenizer: &Path) -> anyhow::Result<Vec<String>> {
    let mut v = task.compile_args(tokenizer);
    let reference = || s(&a.out.join("full/merged.onnx"));
    let neft_run = |strategy: &str| {
        ["--budget", &a.budget, "--strategy", strategy, "--lr", &a.lr.to_string()].map(String::from).to_vec()
    };
    v.extend(match method {
        "full" => ["--mode", "full", "--budget", "100%", "--lr", &a.full_lr.to_string()].map(String::from).to_vec(),
        "activation" | "gradient" | "random" => neft_run(method),
        "cosine" => [neft_run("cosine"), vec!["--reference".into(), reference()]].concat(),
        "reversed" => {
            [neft_run("reversed"), vec!["--reversed-of".into(), "cosine".into(), "--reference".into(), reference()]]
                .concat()
        }
        other => anyhow::bail!("unknown method {other}"),
    });
    if matches!(method, "cosine" | "reversed") && !a.out.join("full/merged.onnx").is_file() {
        anyhow::bail!("{method} needs the full fine-tuning run first (its merged model is the reference)");
    }
    Ok(v)
}

fn markdown(rows: &[Row]) -> String {
    let mut t = String::from(
        "| method | trainable params | eval loss | perplexity | chrF | train time (s) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        t += &format!(
            "| {} | {} | {:.3} | {:.1} | {:.1} | {:.0} |\n",
            r.method, r.trainable_params, r.scores.loss, r.scores.perplexity, r.scores.chrf, r.train_seconds
        );
    }
    t
}

fn neft_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("neft")).filter(|p| p.is_file());
    bin.ok_or_else(|| anyhow::anyhow!("build the neft binary first: cargo build --release --bin neft"))
}

fn run(neft: &Path, args: &[&str]) -> anyhow::Result<()> {
    println!("$ neft {}", args.join(" "));
    let status = Command::new(neft).args(args).status()?;
    anyhow::ensure!(status.success(), "neft {} failed", args[0]);
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}
