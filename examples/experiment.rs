//! The comparison the paper makes, run honestly on the English→Chichewa task with
//! SmolLM2-135M: NeFT (MLP units chosen by activation, gradient, cosine, random or
//! reversed selection, with a global or per-layer budget) against LoRA at the same
//! parameter count and full fine-tuning of the MLP matrices, at equal steps and batch.
//!
//! Each method gets its own learning rate: every rate of its grid trains once (seed 0)
//! and is scored on a validation set carved out of the training side; the best one then
//! trains with every seed and is scored on the held-out test verses (loss per
//! completion token, and chrF of greedy translations). The table gives mean ± half the
//! range over seeds, with each method's step time (training seconds of metrics.jsonl
//! over the steps) and peak memory (through GNU time, /usr/bin/time). Finished runs are
//! reused, so a stopped sweep resumes where it was. Writes `DIR/results.json` and
//! `DIR/results.md`.
//!
//! ```text
//! bash .ci/setup --demo && cargo build --release --bin neft
//! cargo run --release --example experiment -- [-o DIR] [--methods lora,activation,full]
//!     [--lrs activation=1e-3:2e-3,lora=1e-3] [--seeds 0,1] [--steps 120] [--batch 8]
//!     [--budget 6%] [--rank 25] [--eval 256] [--translate 64] [--validation 128]
//! ```
//! Methods: full, lora, activation, gradient, cosine, random, reversed,
//! `activation-per-layer` (activation with each layer its share of the budget) and
//! `activation-normalized` (one threshold over scores divided by their layer's mean).
//! cosine and reversed need the full run's model as their reference (run full first).
//! Each run is the `neft` commands a user would type (compile, train, export), from the
//! `neft` binary built beside this example; test scores are computed on merged models.

use clap::Parser;
use neft::demo::translation::{score, Scores, Sources, Task, TaskSize};
use neft::runtime::ort::SessionOptions;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser, Debug, Serialize)]
struct Args {
    /// Working folder (models, artifacts, results).
    #[arg(short, long, default_value = "neft-experiment")]
    out: PathBuf,
    /// Where `bash .ci/setup --demo` put SmolLM2 and the verses.
    #[arg(long, default_value = ".cache")]
    cache: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "lora,activation,activation-per-layer,full")]
    methods: Vec<String>,
    /// Learning-rate grids, METHOD=LR:LR:...; methods not named keep their default grid.
    #[arg(long, value_delimiter = ',')]
    lrs: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    seeds: Vec<u64>,
    #[arg(long, default_value_t = 120)]
    steps: u64,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Share of the MLP parameters NeFT trains.
    #[arg(long, default_value = "6%")]
    budget: String,
    /// LoRA rank (25 on gate/up/down of SmolLM2 is 6% of the MLP parameters) and alpha.
    #[arg(long, default_value_t = 25)]
    rank: usize,
    #[arg(long, default_value_t = 50.0)]
    alpha: f32,
    /// Held-out verses scored for the loss.
    #[arg(long, default_value_t = 256)]
    eval: usize,
    /// Held-out verses translated for chrF.
    #[arg(long, default_value_t = 64)]
    translate: usize,
    /// Training verses set aside to choose learning rates on.
    #[arg(long, default_value_t = 128)]
    validation: usize,
}

/// The rates tried when `--lrs` names none for a method.
fn default_grid(method: &str) -> Vec<f32> {
    match method {
        "full" => vec![5e-5, 1e-4],
        _ => vec![2e-3, 4e-3],
    }
}

#[derive(Serialize, Clone)]
struct Run {
    lr: f32,
    seed: u64,
    validation_loss: Option<f64>,
    step_seconds: f64,
    /// Peak resident memory of `neft train` (GNU time's %M).
    peak_rss_mb: f64,
    test: Option<Scores>,
}

#[derive(Serialize)]
struct MethodResult {
    method: String,
    trainable_params: u64,
    chosen_lr: f32,
    runs: Vec<Run>,
}

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
    let size = TaskSize {
        eval: args.eval,
        translate: args.translate,
        validation: args.validation,
        test_per_mille: 40,
        ..TaskSize::default()
    };
    let task = Task::prepare(&Sources::in_cache(&args.cache)?, &size, &args.out.join("data"))?;
    let tokenizer = neft::profile::load_tokenizer(&tokenizer_path)?;
    let opts = SessionOptions::default();
    let grids = grids(&args)?;

    let base = scored(&args.out.join("base.scores.json"), || score(&model, &tokenizer, &task, &opts))?;
    println!("base: test loss {:.3}, chrF {:.1}", base.loss, base.chrf);
    let mut results = vec![];
    for method in &args.methods {
        let mut runs = vec![];
        let mut params = 0;
        for &lr in &grids[method] {
            let (r, p) = train(&neft, &args, &task, &tokenizer_path, &model, method, lr, args.seeds[0], true)?;
            println!("{method} lr {lr:e}: validation loss {:.4}", r.validation_loss.unwrap_or(f64::NAN));
            params = p;
            runs.push(r);
        }
        let best = runs
            .iter()
            .min_by(|a, b| {
                a.validation_loss.unwrap_or(f64::INFINITY).total_cmp(&b.validation_loss.unwrap_or(f64::INFINITY))
            })
            .map(|r| r.lr)
            .expect("a grid has rates");
        if method == "full" {
            let artifacts = run_dir(&args, method, best, args.seeds[0]).join("artifacts");
            run(&neft, &["export", &s(&artifacts), "--merged", &s(&reference_model(&args))])?;
        }
        for &seed in &args.seeds {
            let dir = run_dir(&args, method, best, seed);
            if seed != args.seeds[0] {
                let (r, _) = train(&neft, &args, &task, &tokenizer_path, &model, method, best, seed, false)?;
                runs.push(r);
            }
            let merged = dir.join("merged.onnx");
            let scores = scored(&dir.join("test.scores.json"), || {
                run(&neft, &["export", &s(&dir.join("artifacts")), "--merged", &s(&merged)])?;
                score(&merged, &tokenizer, &task, &opts)
            })?;
            println!("{method} lr {best:e} seed {seed}: test loss {:.3}, chrF {:.1}", scores.loss, scores.chrf);
            let r = runs.iter_mut().find(|r| r.lr == best && r.seed == seed).expect("trained above");
            r.test = Some(scores);
            std::fs::remove_file(&merged).ok();
            std::fs::remove_file(dir.join("merged.onnx.data")).ok();
        }
        results.push(MethodResult { method: method.clone(), trainable_params: params, chosen_lr: best, runs });
        write_results(&args, &base, &results)?;
    }
    println!("\n{}", markdown(&base, &results));
    Ok(())
}

/// Scores kept in `file`, computed by `compute` the first time.
fn scored(file: &Path, compute: impl FnOnce() -> anyhow::Result<Scores>) -> anyhow::Result<Scores> {
    if let Ok(text) = std::fs::read_to_string(file) {
        return Ok(serde_json::from_str(&text)?);
    }
    let scores = compute()?;
    neft::fsutil::write_bytes_atomic(file, serde_json::to_string_pretty(&scores)?.as_bytes())?;
    Ok(scores)
}

/// The grid of every method, `--lrs` over the defaults.
fn grids(args: &Args) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
    let mut grids: BTreeMap<String, Vec<f32>> = args.methods.iter().map(|m| (m.clone(), default_grid(m))).collect();
    for entry in &args.lrs {
        let (method, rates) =
            entry.split_once('=').ok_or_else(|| anyhow::anyhow!("--lrs {entry}: write METHOD=LR:LR"))?;
        let rates: Vec<f32> = rates.split(':').map(str::parse).collect::<Result<_, _>>()?;
        anyhow::ensure!(!rates.is_empty(), "--lrs {entry}: no rates");
        grids.insert(method.to_string(), rates);
    }
    anyhow::ensure!(!args.seeds.is_empty(), "--seeds: give at least one");
    Ok(grids)
}

fn run_dir(args: &Args, method: &str, lr: f32, seed: u64) -> PathBuf {
    args.out.join(format!("{method}-lr{lr:e}-seed{seed}"))
}

/// Compiles and trains one run; `validate`: score the validation set at the end.
/// Returns the run and its trainable parameter count.
#[allow(clippy::too_many_arguments)]
fn train(
    neft: &Path,
    args: &Args,
    task: &Task,
    tokenizer: &Path,
    model: &Path,
    method: &str,
    lr: f32,
    seed: u64,
    validate: bool,
) -> anyhow::Result<(Run, u64)> {
    let dir = run_dir(args, method, lr, seed);
    let artifacts = dir.join("artifacts");
    let rss_file = dir.join("train.maxrss");
    // A finished run of the same settings is reused: the sweep can be stopped and resumed.
    if finished(&artifacts, args.steps, validate).is_none() || !rss_file.is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        let mut compile =
            vec!["compile".to_string(), s(model), "-o".into(), s(&artifacts), "--lr".into(), lr.to_string()];
        compile.extend(selection(method, args, task, tokenizer, seed)?);
        run(neft, &compile.iter().map(String::as_str).collect::<Vec<_>>())?;
        let mut train = task.train_args(&artifacts, tokenizer, args.steps, args.batch, 1);
        // The test verses are never scored while choosing: validation runs score the
        // validation set, the others nothing.
        let at = train.iter().position(|a| a == "--eval").expect("train_args evaluates");
        if validate {
            train[at + 1] = s(&task.validation);
        } else {
            train.drain(at..at + 2);
        }
        train.extend(["--seed".to_string(), seed.to_string()]);
        println!("$ neft {}", train.join(" "));
        let out = Command::new("/usr/bin/time")
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&rss_file)
            .arg(neft)
            .args(&train)
            .output()?;
        anyhow::ensure!(out.status.success(), "neft train failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let last = finished(&artifacts, args.steps, validate)
        .ok_or_else(|| anyhow::anyhow!("{}: training did not reach step {}", artifacts.display(), args.steps))?;
    let plan = neft::artifact::Plan::load(&artifacts.join("plan.json"))?;
    let run = Run {
        lr,
        seed,
        validation_loss: last["eval_loss"].as_f64(),
        step_seconds: last["seconds"].as_f64().unwrap_or(f64::NAN) / args.steps as f64,
        peak_rss_mb: std::fs::read_to_string(&rss_file)?.trim().parse::<f64>()? / 1024.0,
        test: None,
    };
    Ok((run, plan.counts.trainable_params))
}

/// The last line of a run's metrics.jsonl, if the run reached `steps` (and scored the
/// validation set there when `validate`).
fn finished(artifacts: &Path, steps: u64, validate: bool) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(artifacts.join("metrics.jsonl")).ok()?;
    let last: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    let done = last["step"].as_u64() == Some(steps) && (!validate || last["eval_loss"].is_f64());
    done.then_some(last)
}

/// The full fine-tuning run's merged model (at its chosen rate, first seed): the
/// reference of the cosine and reversed selections.
fn reference_model(a: &Args) -> PathBuf {
    a.out.join("full-reference.onnx")
}

/// The compile options that choose each method's trainable weights.
fn selection(method: &str, a: &Args, task: &Task, tokenizer: &Path, seed: u64) -> anyhow::Result<Vec<String>> {
    let mut v = task.compile_args(tokenizer);
    let neft_run = |strategy: &str| ["--budget", &a.budget, "--strategy", strategy].map(String::from).to_vec();
    let reference = || -> anyhow::Result<Vec<String>> {
        let merged = reference_model(a);
        anyhow::ensure!(merged.is_file(), "{method} needs the full fine-tuning run first (its model is the reference)");
        Ok(vec!["--reference".into(), s(&merged)])
    };
    v.extend(match method {
        "full" => ["--mode", "full", "--budget", "100%"].map(String::from).to_vec(),
        "lora" => {
            let (r, alpha) = (a.rank.to_string(), a.alpha.to_string());
            ["--mode", "lora", "--rank", &r, "--alpha", &alpha, "--seed", &seed.to_string()].map(String::from).to_vec()
        }
        "activation" | "gradient" | "random" => neft_run(method),
        "activation-per-layer" => [neft_run("activation"), vec!["--scope".into(), "per-layer".into()]].concat(),
        "activation-normalized" => [neft_run("activation"), vec!["--scope".into(), "normalized".into()]].concat(),
        "cosine" => [neft_run("cosine"), reference()?].concat(),
        "reversed" => [neft_run("reversed"), vec!["--reversed-of".into(), "cosine".into()], reference()?].concat(),
        other => anyhow::bail!("unknown method {other}"),
    });
    Ok(v)
}

/// Mean and half the range of `xs`.
fn spread(xs: &[f64]) -> (f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
    (mean, (hi - lo) / 2.0)
}

fn markdown(base: &Scores, results: &[MethodResult]) -> String {
    let mut t = String::from(
        "| method | trainable params | lr (validation loss of each rate) | test loss | chrF | s/step | peak RSS (MB) |\n\
         |---|---:|---|---:|---:|---:|---:|\n",
    );
    t += &format!("| base (no training) | 0 | – | {:.3} | {:.1} | – | – |\n", base.loss, base.chrf);
    for m in results {
        let grid: Vec<String> = m
            .runs
            .iter()
            .filter(|r| r.validation_loss.is_some())
            .map(|r| {
                let mark = if r.lr == m.chosen_lr { "**" } else { "" };
                format!("{mark}{:e}{mark}: {:.3}", r.lr, r.validation_loss.unwrap_or(f64::NAN))
            })
            .collect();
        let tested: Vec<&Run> = m.runs.iter().filter(|r| r.test.is_some()).collect();
        let losses: Vec<f64> = tested.iter().map(|r| r.test.as_ref().unwrap().loss).collect();
        let chrfs: Vec<f64> = tested.iter().map(|r| r.test.as_ref().unwrap().chrf).collect();
        let steps: Vec<f64> = m.runs.iter().map(|r| r.step_seconds).collect();
        let rss: Vec<f64> = m.runs.iter().map(|r| r.peak_rss_mb).collect();
        let ((l, dl), (c, dc), (st, _), (mb, _)) = (spread(&losses), spread(&chrfs), spread(&steps), spread(&rss));
        t += &format!(
            "| {} | {} | {} | {l:.3} ± {dl:.3} | {c:.1} ± {dc:.1} | {st:.2} | {mb:.0} |\n",
            m.method,
            m.trainable_params,
            grid.join(", ")
        );
    }
    t
}

fn write_results(args: &Args, base: &Scores, results: &[MethodResult]) -> anyhow::Result<()> {
    let json = serde_json::json!({ "settings": args, "base": base, "methods": results });
    neft::fsutil::write_bytes_atomic(&args.out.join("results.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    neft::fsutil::write_bytes_atomic(&args.out.join("results.md"), markdown(base, results).as_bytes())?;
    Ok(())
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
