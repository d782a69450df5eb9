//! Training data for `neft train`: JSONL files read and tokenized up front (a bad line
//! stops everything before a session opens), and batches turned into the named inputs
//! the artifacts take.
//!
//! In: a JSONL path (see [`crate::data`]), an optional `tokenizer.json`, the plan.
//! Out: a [`Dataset`] of tokenized examples and a [`Feeder`] naming each batch tensor
//! after the graph input it fills. Text is encoded by `tokenizers::Tokenizer`'s
//! [`Encode`] implementation (in [`crate::profile`], shared with profiling).

use crate::artifact::Plan;
use crate::data::{read_jsonl, tokenize, Batch, Encode, Tokenized};
use crate::runtime::ort::HostTensor;
use anyhow::{bail, Context};
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

/// What one graph input gets from a batch.
#[derive(Debug, Clone)]
enum Source {
    Ids,
    Labels,
    /// All ones: with right padding and causal attention, padded positions never
    /// influence real ones, and their labels are ignored.
    Ones,
    Positions,
}

/// Maps batches onto the artifacts' data inputs.
#[derive(Debug, Clone)]
pub struct Feeder {
    inputs: Vec<(String, Source)>,
}

impl Feeder {
    /// Checks that JSONL batches can feed every data input of the plan.
    pub fn new(plan: &Plan) -> anyhow::Result<Feeder> {
        if plan.loss.kind != "causal-lm" {
            bail!(
                "these artifacts train on the model's own loss output '{}' (inputs: {}); JSONL data feed only \
                 causal-LM artifacts (compiled with a 'logits' output and --loss auto or causal-lm)",
                plan.loss.loss,
                plan.data_inputs.join(", ")
            );
        }
        let inputs = plan
            .data_inputs
            .iter()
            .map(|name| {
                let source = match name.as_str() {
                    "input_ids" => Source::Ids,
                    n if Some(n) == plan.loss.labels.as_deref() => Source::Labels,
                    "attention_mask" => Source::Ones,
                    "position_ids" => Source::Positions,
                    other => bail!(
                        "the artifacts need an input '{other}' that JSONL examples cannot provide \
                         (known: input_ids, labels, attention_mask, position_ids)"
                    ),
                };
                Ok((name.clone(), source))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Feeder { inputs })
    }

    pub fn feed<'a>(&'a self, batch: &Batch) -> Vec<(&'a str, HostTensor)> {
        let shape = batch.input_ids.shape().to_vec();
        let (rows, len) = (shape[0], shape[1]);
        self.inputs
            .iter()
            .map(|(name, source)| {
                let t = match source {
                    Source::Ids => batch.input_ids.clone(),
                    Source::Labels => batch.labels.clone(),
                    Source::Ones => HostTensor::i64(&shape, vec![1; rows * len]),
                    Source::Positions => HostTensor::i64(&shape, (0..rows).flat_map(|_| 0..len as i64).collect()),
                };
                (name.as_str(), t)
            })
            .collect()
    }
}
