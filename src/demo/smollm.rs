//! `neft demo`: SmolLM2-135M-Instruct (from its GGUF) learns to translate English
//! into Chichewa by training 6% of its MLP units, on the CPU, in minutes.
//!
//! The steps are the real `neft` commands, printed before they run: build the ONNX
//! model, compile (profile activations on calibration verses, select MLP units worth
//! 6% of the MLP parameters, rewrite the graph), train, export. Before and after, the
//! demo scores the model on held-out verses (completion loss, chrF of greedy
//! translations, three samples) and writes a report folder.

use super::translation::{score, Scores, Sources, Task, TaskSize};
use super::{run_neft, words};
use crate::runtime::ort::SessionOptions;
use anyhow::{bail, Context};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const GGUF_FILE: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Marks a folder as written by the demo, so a re-run may replace it.
const MARKER: &str = ".neft-demo";

/// What `neft demo` runs; the defaults take about 7 minutes on 2 cores.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSettings {
    pub out: PathBuf,
    pub cache: PathBuf,
    pub steps: u64,
    pub batch: usize,
    pub lr: f32,
    pub budget: String,
    pub size: TaskSize,
}

#[derive(Serialize)]
struct Report<'a> {
    settings: &'a DemoSettings,
    train_verses: usize,
    before: &'a Scores,
    after: &'a Scores,
    seconds: f64,
}

pub fn run_smollm_demo(s: &DemoSettings) -> anyhow::Result<()> {
    let started = Instant::now();
    let gguf = s.cache.join(GGUF_FILE);
    if !gguf.is_file() {
        bail!("{} is missing: run `bash .ci/setup --demo` first (it fetches SmolLM2 and the verses)", gguf.display());
    }
    let sources = Sources::in_cache(&s.cache)?;
    claim_folder(&s.out)?;
    let p = |p: &Path| p.display().to_string();
    let (model_dir, out, data) = (s.out.join("smollm2"), s.out.join("out"), s.out.join("data"));
    let model = model_dir.join("model.onnx");
    let steps = 8;

    run_neft(
        1,
        steps,
        "build SmolLM2-135M as ONNX from its GGUF",
        &words(&["build-model", "llama", "--gguf", &p(&gguf), "-o", &p(&model_dir)]),
    )?;

    println!("\n[2/{steps}] English→Chichewa verse pairs (held out by a hash of the citation)");
    let task = Task::prepare(&sources, &s.size, &data)?;
    println!(
        "{} aligned verses; English of at most {} words: {} for training, {} held out for the loss, {} translated for chrF; \
         calibration: {} training verses",
        task.all_pairs, s.size.max_words, task.train_count, s.size.eval, s.size.translate, s.size.calibration
    );

    let tokenizer_path = model_dir.join("tokenizer.json");
    let tokenizer = crate::profile::load_tokenizer(&tokenizer_path)?;
    let opts = SessionOptions::default();
    println!("\n[3/{steps}] the base model on the held-out verses");
    let before = score(&model, &tokenizer, &task, &opts)?;
    print_scores("before", &before);

    let mut compile =
        words(&["compile", &p(&model), "-o", &p(&out), "--budget", &s.budget, "--strategy", "activation"]);
    compile.extend(task.compile_args(&tokenizer_path));
    compile.extend(words(&["--lr", &s.lr.to_string()]));
    run_neft(4, steps, "profile activations, select MLP units, rewrite the graph for training", &compile)?;

    let train = task.train_args(&out, &tokenizer_path, s.steps, s.batch, 4);
    run_neft(5, steps, "train the selected units on ONNX Runtime (CPU)", &train)?;

    let merged = s.out.join("merged/model.onnx");
    std::fs::create_dir_all(s.out.join("merged"))?;
    let export = ["export", &p(&out), "--adapter", &p(&s.out.join("adapter.safetensors")), "--merged", &p(&merged)];
    run_neft(6, steps, "export the trained units as an adapter and as a merged model", &words(&export))?;

    println!("\n[7/{steps}] the tuned model on the same held-out verses");
    let after = score(&merged, &tokenizer, &task, &opts)?;
    print_scores("after", &after);

    let seconds = started.elapsed().as_secs_f64();
    let report = Report { settings: s, train_verses: task.train_count, before: &before, after: &after, seconds };
    let dir = write_report(&s.out, &out, &report)?;
    let page = dir.join("index.html");
    run_neft(
        8,
        steps,
        "see what was compiled and how training went",
        &words(&["inspect", &p(&out), "--html", &p(&page)]),
    )?;
    print_comparison(&before, &after);
    println!("\ndone in {:.1} min: report in {}, artifacts in {}", seconds / 60.0, dir.display(), s.out.display());
    Ok(())
}

/// Uses `dir` if it is new, empty, or an earlier demo's folder (which is replaced).
fn claim_folder(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!("{} exists and was not written by `neft demo`; choose another folder with -o", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the earlier demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "written by neft demo; a new run replaces this folder\n")?;
    Ok(())
}

fn print_scores(when: &str, s: &Scores) {
    println!(
        "{when}: loss {:.3} (perplexity {:.1}) over {} completion tokens, chrF {:.1}  [{:.0} s]",
        s.loss, s.perplexity, s.loss_tokens, s.chrf, s.seconds
    );
    for x in &s.samples {
        println!("  {}  {}\n    → {}", x.citation, x.english, x.translation);
    }
}

fn print_comparison(before: &Scores, after: &Scores) {
    println!("\n                 before   after");
    println!("eval loss        {:>6.3}  {:>6.3}", before.loss, after.loss);
    println!("perplexity       {:>6.1}  {:>6.1}", before.perplexity, after.perplexity);
    println!("chrF             {:>6.1}  {:>6.1}", before.chrf, after.chrf);
    for (b, a) in before.samples.iter().zip(&after.samples) {
        println!(
            "\n{}  {}\n  reference: {}\n  before:    {}\n  after:     {}",
            b.citation, b.english, b.reference, b.translation, a.translation
        );
    }
}

/// `OUT/report/`: results.json, README.md (the numbers and samples in words), and the
/// loss curve, neuron heat map and metrics copied from the artifact folder (the
/// caller adds index.html, `neft inspect --html`).
fn write_report(root: &Path, artifacts: &Path, r: &Report) -> anyhow::Result<PathBuf> {
    let dir = root.join("report");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::fsutil::write_bytes_atomic(&dir.join("results.json"), serde_json::to_string_pretty(r)?.as_bytes())?;
    crate::fsutil::write_bytes_atomic(&dir.join("README.md"), report_text(r).as_bytes())?;
    for f in ["loss.svg", "neurons.svg", "metrics.jsonl", "neurons.json"] {
        let src = artifacts.join(f);
        if src.is_file() {
            std::fs::copy(&src, dir.join(f)).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(dir)
}

fn report_text(r: &Report) -> String {
    let s = r.settings;
    let mut t = format!(
        "# neft demo: SmolLM2-135M-Instruct, English→Chichewa\n\n\
         Trained {} of the MLP units (selected by mean |activation| on {} calibration verses), \
         {} AdamW steps of {} verses at learning rate {}, on {} training verses; \
         scored on held-out verses. Total time {:.1} min.\n\n\
         | | before | after |\n|---|---:|---:|\n\
         | eval loss ({} tokens) | {:.3} | {:.3} |\n| perplexity | {:.1} | {:.1} |\n| chrF ({} verses) | {:.1} | {:.1} |\n\n\
         Loss curve: loss.svg. Where the trained units are: neurons.svg. \
         What was compiled, and one rewritten layer before and after: index.html.\n",
        s.budget,
        s.size.calibration,
        s.steps,
        s.batch,
        s.lr,
        r.train_verses,
        r.seconds / 60.0,
        r.before.loss_tokens,
        r.before.loss,
        r.after.loss,
        r.before.perplexity,
        r.after.perplexity,
        s.size.translate,
        r.before.chrf,
        r.after.chrf
    );
    for (b, a) in r.before.samples.iter().zip(&r.after.samples) {
        t += &format!(
            "\n## {}\n\n- English: {}\n- reference: {}\n- before: {}\n- after: {}\n",
            b.citation, b.english, b.reference, b.translation, a.translation
        );
    }
    t
}
