//! Training data for `neft train`: JSONL files read and tokenized up front (a bad line
//! stops everything before a session opens), and batches turned into the named inputs
//! the artifacts take.
//!
//! In: a JSONL path (see [`crate::data`]), an optional `tokenizer.json`, the plan.
//! Out: a [`Dataset`] of tokenized examples and a [`Feeder`] naming each batch tensor
//! after the graph input it fills. Text is encoded by [`crate::data::TextTokenizer`],
//! which also decides the end-of-sequence token (shared with profiling and scoring).

use crate::artifact::Plan;
use crate::data::{data_inputs, read_jsonl, tokenize, Batch, DataInput, Encode, TokenFeed, Tokenized};
use crate::runtime::ort::HostTensor;
use anyhow::{anyhow, bail, Context};
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
    pub fn in_order(&self, batch: usize, pad: i64) -> anyhow::Result<Vec<Batch>> {
        let batches = self.examples.chunks(batch.max(1)).map(|c| Batch::new(&c.iter().collect::<Vec<_>>(), pad));
        batches.collect::<Result<_, _>>().map_err(|e| anyhow!("{}: {e}", self.file.display()))
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
}

impl Feeder {
    /// Checks that JSONL batches can feed every data input of the artifacts in `dir`
    /// (names from the plan, element types and ranks as `train_step.onnx` declares
    /// them). The labels go to the input neft's loss added, or, for a model's own loss
    /// output, to its `labels` input: per token (Hugging Face's convention: the ids,
    /// -100 on padding and prompts; the model shifts them), or one class per row when
    /// that input is 1-D.
    pub fn new(plan: &Plan, dir: &Path) -> anyhow::Result<Feeder> {
        let labels = match plan.loss.kind.as_str() {
            "output" => plan.data_inputs.iter().find(|n| *n == "labels").cloned(),
            _ => plan.loss.labels.clone(),
        };
        let path = dir.join("train_step.onnx");
        let model = crate::onnx::load(&path)?;
        let declared = data_inputs(model.graph());
        let inputs: Vec<DataInput> = plan
            .data_inputs
            .iter()
            .map(|n| {
                declared.iter().find(|d| d.name == *n).cloned().unwrap_or(DataInput {
                    name: n.clone(),
                    dtype: None,
                    rank: None,
                })
            })
            .collect();
        let feed = TokenFeed::new(&inputs, labels.as_deref()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Feeder { feed })
    }

    /// Checks that `data` hold what the model takes: the named tensors of its inputs,
    /// and what the loss needs: a "label" on every example where the labels are one
    /// class per row, none elsewhere.
    pub fn check(&self, data: &Dataset) -> anyhow::Result<()> {
        let file = data.file.display();
        let fields = data.examples.first().map(|e| e.fields.keys().map(String::as_str).collect::<Vec<_>>());
        self.feed.check_fields(fields.unwrap_or_default()).map_err(|e| anyhow!("{file}: {e}"))?;
        if !self.feed.takes_tokens() {
            if let Some(i) = data.examples.iter().position(|e| !e.input_ids.is_empty()) {
                bail!("{file}: example {}: the model takes no input_ids, but this line has tokens", i + 1);
            }
        }
        let (want, line) = match self.feed.needs_classes() {
            true => ("these artifacts need a \"label\" (a class) on every line", {
                data.examples.iter().position(|e| e.class.is_none())
            }),
            false => ("these artifacts take token labels, not a \"label\" per line", {
                data.examples.iter().position(|e| e.class.is_some())
            }),
        };
        match line {
            Some(i) => bail!("{file}: example {}: {want}", i + 1),
            None => Ok(()),
        }
    }

    pub fn feed<'a>(&'a self, batch: &Batch) -> anyhow::Result<Vec<(&'a str, HostTensor)>> {
        self.feed
            .fill(&batch.input_ids, Some(&batch.labels), batch.classes.as_ref(), &batch.lengths, &batch.fields)
            .map_err(|e| anyhow!(e))
    }
}
