//! The English→Chichewa task as files and scores: verse pairs split into training,
//! calibration and held-out sets (JSONL for `neft compile` and `neft train`), and a
//! model's scores on the held-out verses (completion loss, chrF of greedy
//! translations, sample translations).

use super::bible::{self, Pair};
use super::evaluate::{completion_loss, Greedy};
use crate::data::{Encode, Example};
use crate::runtime::ort::SessionOptions;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the verses come from (filled by `bash .ci/setup --demo`).
pub struct Sources {
    pub kjv: PathBuf,
    pub chichewa: PathBuf,
}

impl Sources {
    pub fn in_cache(cache: &Path) -> anyhow::Result<Sources> {
        let s = Sources { kjv: cache.join("bible/kjv.jsonl"), chichewa: cache.join("bible/chichewa") };
        for p in [&s.kjv, &s.chichewa] {
            if !p.exists() {
                anyhow::bail!("{} is missing: run `bash .ci/setup --demo` first (it fetches the verses)", p.display());
            }
        }
        Ok(s)
    }
}

/// How much of the data a run uses.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSize {
    /// Only verses whose English has at most this many words (keeps CPU runs short).
    pub max_words: usize,
    /// Calibration verses for profiling and selection (taken from the training side).
    pub calibration: usize,
    /// Held-out verses for the loss.
    pub eval: usize,
    /// Held-out verses translated greedily for chrF (the first three are the samples).
    pub translate: usize,
    /// Per mille of all verses held out (by a hash of the citation).
    pub test_per_mille: u64,
    /// Training verses set aside (evenly spread) as a validation set for choosing
    /// learning rates; 0 for none.
    pub validation: usize,
}

impl Default for TaskSize {
    fn default() -> Self {
        TaskSize { max_words: 16, calibration: 64, eval: 64, translate: 16, test_per_mille: 10, validation: 0 }
    }
}

/// The prepared task: JSONL files and the held-out sets.
pub struct Task {
    pub train: PathBuf,
    pub calibration: PathBuf,
    pub eval: PathBuf,
    /// `validation.jsonl`, verses of the training side not trained on (empty with
    /// `TaskSize::validation` 0).
    pub validation: PathBuf,
    pub train_count: usize,
    pub eval_examples: Vec<Example>,
    pub translate: Vec<Pair>,
    pub all_pairs: usize,
}

impl Task {
    /// Loads the verses, splits them and writes train/calibration/eval JSONL into `dir`.
    pub fn prepare(src: &Sources, size: &TaskSize, dir: &Path) -> anyhow::Result<Task> {
        let pairs = bible::load_pairs(&src.kjv, &src.chichewa)?;
        let short = |p: &&Pair| p.en.split_whitespace().count() <= size.max_words;
        let (test, train): (Vec<&Pair>, Vec<&Pair>) =
            pairs.iter().filter(short).partition(|p| bible::is_test(p, size.test_per_mille));
        // Every `every`-th training verse, up to `validation` of them.
        let every = (train.len() / size.validation.max(1)).max(2);
        let picked = |i: usize| i % every == every - 1 && i / every < size.validation;
        let (validation, train): (Vec<(usize, &Pair)>, Vec<(usize, &Pair)>) =
            train.into_iter().enumerate().partition(|&(i, _)| picked(i));
        let (validation, train): (Vec<&Pair>, Vec<&Pair>) =
            (validation.into_iter().map(|x| x.1).collect(), train.into_iter().map(|x| x.1).collect());
        anyhow::ensure!(
            test.len() >= size.eval.max(size.translate) && !train.is_empty(),
            "only {} held-out and {} training verses have at most {} English words",
            test.len(),
            train.len(),
            size.max_words
        );
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let task = Task {
            train: dir.join("train.jsonl"),
            calibration: dir.join("calibration.jsonl"),
            eval: dir.join("eval.jsonl"),
            validation: dir.join("validation.jsonl"),
            train_count: train.len(),
            eval_examples: test[..size.eval].iter().map(|p| example(p)).collect(),
            translate: test[..size.translate].iter().map(|&p| p.clone()).collect(),
            all_pairs: pairs.len(),
        };
        bible::write_jsonl(&train, &task.train)?;
        // Spread over the whole Bible rather than its first book.
        let stride = (train.len() / size.calibration.max(1)).max(1);
        let calibration: Vec<&Pair> = train.iter().step_by(stride).take(size.calibration).copied().collect();
        bible::write_jsonl(&calibration, &task.calibration)?;
        bible::write_jsonl(&test[..size.eval], &task.eval)?;
        bible::write_jsonl(&validation, &task.validation)?;
        Ok(task)
    }
}

impl Task {
    /// The `neft compile` options every run on the task shares: gated-MLP units, with
    /// the calibration verses for profiling or gradient scores.
    pub fn compile_args(&self, tokenizer: &Path) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let args =
            ["--targets", "mlp", "--unit", "mlp-unit", "--data", &p(&self.calibration), "--tokenizer", &p(tokenizer)];
        args.map(String::from).to_vec()
    }

    /// `neft train ARTIFACTS` on the training verses, scoring the held-out loss `evals` times.
    pub fn train_args(&self, artifacts: &Path, tokenizer: &Path, steps: u64, batch: usize, evals: u64) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let every = (steps / evals.max(1)).max(1).to_string();
        let (steps, batch) = (steps.to_string(), batch.to_string());
        let args = [
            "train",
            &p(artifacts),
            "--data",
            &p(&self.train),
            "--eval",
            &p(&self.eval),
            "--tokenizer",
            &p(tokenizer),
            "--steps",
            &steps,
            "--batch",
            &batch,
            "--seq-len",
            "256",
            "--checkpoint-every",
            &every,
        ];
        args.map(String::from).to_vec()
    }
}

fn example(p: &Pair) -> Example {
    Example::PromptCompletion { prompt: bible::prompt(&p.en), completion: format!(" {}", p.ny) }
}

/// A model's scores on the held-out verses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scores {
    /// Mean loss per completion token (nats) and its exponential.
    pub loss: f64,
    pub perplexity: f64,
    pub loss_tokens: usize,
    /// Corpus chrF (0–100) of the greedy translations.
    pub chrf: f64,
    pub samples: Vec<Sample>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub citation: String,
    pub english: String,
    pub reference: String,
    pub translation: String,
}

/// A translation is one line: it ends at the end-of-sequence token or at any token
/// that writes a line break (a base model otherwise goes on to comment on its answer).
fn line_ends(tokenizer: &crate::data::TextTokenizer) -> anyhow::Result<HashSet<i64>> {
    let eos = tokenizer.eos().context("the tokenizer has no end-of-sequence token")?;
    let mut stop: HashSet<i64> = tokenizer
        .get_vocab(true)
        .into_values()
        .filter(|&id| tokenizer.decode(&[id], false).is_ok_and(|t| t.contains('\n')))
        .map(i64::from)
        .collect();
    stop.insert(eos);
    Ok(stop)
}

/// Longest translation generated, in tokens.
const MAX_NEW_TOKENS: usize = 64;
const EVAL_BATCH: usize = 8;
const SEQ_LEN: usize = 256;

/// Scores `model` (an ONNX causal LM with `input_ids` → `logits`) on the task.
pub fn score(
    model: &Path,
    tokenizer: &crate::data::TextTokenizer,
    task: &Task,
    opts: &SessionOptions,
) -> anyhow::Result<Scores> {
    let started = Instant::now();
    let (loss, loss_tokens) = completion_loss(model, tokenizer, &task.eval_examples, EVAL_BATCH, SEQ_LEN, opts)?;
    let prompts: Vec<Vec<i64>> =
        task.translate.iter().map(|p| tokenizer.encode(&bible::prompt(&p.en))).collect::<anyhow::Result<_>>()?;
    let stop = line_ends(tokenizer)?;
    let mut greedy = Greedy::open(model, opts)?;
    let mut outputs = vec![];
    for chunk in prompts.chunks(EVAL_BATCH) {
        outputs.extend(greedy.generate(chunk, MAX_NEW_TOKENS, &stop, tokenizer.pad())?);
    }
    let translations: Vec<String> = outputs
        .iter()
        .map(|ids| {
            let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
            tokenizer.decode(&ids, true).map(|s| s.trim().to_string()).map_err(|e| anyhow::anyhow!("decoding: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let references: Vec<String> = task.translate.iter().map(|p| p.ny.clone()).collect();
    let chrf = super::chrf::chrf(&translations, &references);
    let samples = task
        .translate
        .iter()
        .zip(&translations)
        .take(3)
        .map(|(p, t)| Sample {
            citation: p.citation.clone(),
            english: p.en.clone(),
            reference: p.ny.clone(),
            translation: t.clone(),
        })
        .collect();
    Ok(Scores { loss, perplexity: loss.exp(), loss_tokens, chrf, samples, seconds: started.elapsed().as_secs_f64() })
}
