//! Training data for `neft train`: JSONL files read and tokenized up front (a bad line
//! stops everything before a session opens), and batches turned into the named inputs
//! the artifacts take.
//!
//! In: a JSONL path (see [`crate::data`]), an optional `tokenizer.json`, the plan.
//! Out: a [`Dataset`] of tokenized examples and a [`Feeder`] naming each batch tensor
//! after the graph input it fills. Text is encoded by `tokenizers::Tokenizer`'s
//! [`Encode`] implementation (in [`crate::profile`], shared with profiling).

use crate::artifact::Plan;
use crate::data::{read_jsonl, tokenize, Batch, Encode, TokenFeed, Tokenized};
use crate::onnx::make::declared;
use crate::passes::append_loss::SEQUENCE_CLASSIFICATION;
use crate::runtime::ort::HostTensor;
use anyhow::{anyhow, bail, Context};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The examples of one data file, tokenized and truncated.
pub struct Dataset {
    pub file: PathBuf,
    pub examples: Vec<Tokenized>,
    /// Short SHA-256 of the file, stored in checkpoints to notice a changed data set.
    pub sha256: String,
}

impl Dataset {
    pub fn load(path: &Path, tokenizer: Option<&dyn Encode>, seq_len: usize) -> anyhow::Result<Dataset> {
        let lines = read_jsonl(path)?;
        let examples = tokenize(&lines, tokenizer, seq_len).with_context(|| path.display().to_string())?;
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        Ok(Dataset { file: path.to_path_buf(), examples, sha256: short_sha256(&bytes) })
    }

    /// Batches per epoch (the last one may be smaller).
    pub fn batches_per_epoch(&self, batch: usize) -> usize {
        self.examples.len().div_ceil(batch.max(1))
    }

    /// The examples in file order, `batch` at a time (for evaluation).
    pub fn in_order(&self, batch: usize, pad: i64) -> Vec<Batch> {
        self.examples.chunks(batch.max(1)).map(|c| Batch::new(&c.iter().collect::<Vec<_>>(), pad)).collect()
    }
}

pub fn short_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::artifact::hex_digest(&sha2::Sha256::digest(bytes))[..16].to_string()
}

/// Maps batches onto the artifacts' data inputs (see [`TokenFeed`]).
#[derive(Debug, Clone)]
pub struct Feeder {
    feed: TokenFeed,
    /// The labels are one class per example (sequence classification), not per token.
    classify: bool,
}

impl Feeder {
    /// Checks that JSONL batches can feed every data input of the artifacts in `dir`
    /// (names from the plan, element types as `train_step.onnx` declares them).
    pub fn new(plan: &Plan, dir: &Path) -> anyhow::Result<Feeder> {
        let classify = plan.loss.kind == SEQUENCE_CLASSIFICATION;
        if plan.loss.kind != "causal-lm" && !classify {
            bail!(
                "these artifacts train on the model's own loss output '{}' (inputs: {}); JSONL data feed only \
                 causal-LM and sequence-classification artifacts (compiled with a 'logits' output and --loss \
                 auto or causal-lm)",
                plan.loss.loss,
                plan.data_inputs.join(", ")
            );
        }
        let path = dir.join("train_step.onnx");
        let model = crate::onnx::load(&path)?;
        let types: HashMap<&str, i32> =
            model.graph().input.iter().filter_map(|i| declared(i).map(|d| (i.name(), d.0))).collect();
        let inputs: Vec<(String, Option<i32>)> =
            plan.data_inputs.iter().map(|n| (n.clone(), types.get(n.as_str()).copied())).collect();
        let feed =
            TokenFeed::new(&inputs, plan.loss.labels.as_deref()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Feeder { feed, classify })
    }

    /// Checks that `data` hold what the loss needs: a "label" on every example for
    /// sequence classification, none for a causal LM.
    pub fn check(&self, data: &Dataset) -> anyhow::Result<()> {
        let file = data.file.display();
        let (want, line) = match self.classify {
            true => ("sequence-classification artifacts need a \"label\" (a class) on every line", {
                data.examples.iter().position(|e| e.class.is_none())
            }),
            false => ("causal-LM artifacts take token labels, not a \"label\" per line", {
                data.examples.iter().position(|e| e.class.is_some())
            }),
        };
        match line {
            Some(i) => bail!("{file}: example {}: {want}", i + 1),
            None => Ok(()),
        }
    }

    pub fn feed<'a>(&'a self, batch: &Batch) -> Vec<(&'a str, HostTensor)> {
        let labels = if self.classify { batch.classes.as_ref() } else { Some(&batch.labels) };
        self.feed.fill(&batch.input_ids, labels, &batch.lengths)
    }
}
