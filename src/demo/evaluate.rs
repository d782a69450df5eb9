//! Evaluating a causal language model (an ONNX file with `input_ids` in and `logits`
//! out) on prompt/completion pairs: the mean loss over completion tokens, computed as
//! training computes it, and greedy continuations of the prompts.
//!
//! Greedy decoding runs a small wrapper of the model, `<model>.greedy.onnx` beside it
//! (same weights file): the logits at each row's last real position are gathered and
//! reduced to the argmax inside the graph, so one token per row comes back per step
//! instead of the whole `[batch, len, vocab]` tensor.

use crate::data::{tokenize, Batch, Encode, Example, Fields, Record, TokenFeed};
use crate::ir::attr;
use crate::onnx::make::{self, DimSpec};
use crate::onnx::{DataType, Model};
use crate::runtime::ort::{HostTensor, Session, SessionOptions};
use crate::types::IGNORE_INDEX;
use anyhow::{bail, Context};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Mean negative log-likelihood per completion token (labels as `neft train` builds
/// them: prompt masked, end-of-sequence appended), and the number of tokens counted.
pub fn completion_loss(
    model: &Path,
    tokenizer: &dyn Encode,
    examples: &[Example],
    batch: usize,
    seq_len: usize,
    opts: &SessionOptions,
) -> anyhow::Result<(f64, usize)> {
    let mut session = Session::from_file(model, opts)?;
    let feeds = token_feed(model)?;
    let records: Vec<Record> = examples.iter().cloned().map(Record::from).collect();
    let tokenized = tokenize(&records, Some(tokenizer), seq_len)?;
    let (mut nll, mut count) = (0.0f64, 0usize);
    for chunk in tokenized.chunks(batch.max(1)) {
        let refs: Vec<_> = chunk.iter().collect();
        let b = Batch::new(&refs, tokenizer.pad()).map_err(anyhow::Error::msg)?;
        let feed = feeds.fill(&b.input_ids, None, None, &b.lengths, &b.fields).map_err(anyhow::Error::msg)?;
        let out = session.run(&feed)?;
        let logits = logits_of(&out, model)?;
        let labels = b.labels.clone().into_i64();
        let (rows, len, vocab) = (logits.shape()[0], logits.shape()[1], logits.shape()[2]);
        let flat = logits.as_slice().context("logits are not contiguous")?;
        for r in 0..rows {
            for t in 0..len.saturating_sub(1) {
                let label = labels[r * len + t + 1];
                if label == IGNORE_INDEX {
                    continue;
                }
                let row = &flat[(r * len + t) * vocab..(r * len + t + 1) * vocab];
                nll += log_sum_exp(row) - row[label as usize] as f64;
                count += 1;
            }
        }
    }
    if count == 0 {
        bail!("no completion tokens to evaluate");
    }
    Ok((nll / count as f64, count))
}

fn logits_of<'a>(out: &'a [(String, HostTensor)], model: &Path) -> anyhow::Result<&'a ndarray::ArrayD<f32>> {
    out.iter()
        .find(|(n, _)| n == "logits")
        .and_then(|(_, t)| t.as_f32())
        .filter(|a| a.ndim() == 3)
        .with_context(|| format!("{}: no float output 'logits' of rank 3", model.display()))
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// How token batches fill the inputs `model` declares.
fn token_feed(model: &Path) -> anyhow::Result<TokenFeed> {
    let m = crate::onnx::load(model)?;
    TokenFeed::of_graph(m.graph(), None).map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))
}

/// Greedy decoding through the model's greedy wrapper.
pub struct Greedy {
    session: Session,
    /// The model's own inputs (the wrapper adds `last_index`).
    feed: TokenFeed,
}

impl Greedy {
    /// Writes `<model>.greedy.onnx` beside `model` (replacing an earlier one) and opens it.
    pub fn open(model: &Path, opts: &SessionOptions) -> anyhow::Result<Greedy> {
        let wrapper = write_greedy_wrapper(model)?;
        let session = Session::from_file(&wrapper, opts)?;
        Ok(Greedy { session, feed: token_feed(model)? })
    }

    /// Continues each prompt with the most likely token until a token of `stop` (not
    /// kept) or `max_new` tokens; rows are padded on the right with `pad`, so causal
    /// attention never sees padding, and finished rows leave the batch.
    pub fn generate(
        &mut self,
        prompts: &[Vec<i64>],
        max_new: usize,
        stop: &HashSet<i64>,
        pad: i64,
    ) -> anyhow::Result<Vec<Vec<i64>>> {
        let mut seqs: Vec<Vec<i64>> = prompts.to_vec();
        let mut out: Vec<Vec<i64>> = vec![vec![]; prompts.len()];
        let mut active: Vec<usize> = (0..prompts.len()).filter(|&i| !prompts[i].is_empty()).collect();
        for _ in 0..max_new {
            if active.is_empty() {
                break;
            }
            let next = self.step(&active.iter().map(|&i| seqs[i].as_slice()).collect::<Vec<_>>(), pad)?;
            for (&i, &tok) in active.iter().zip(&next) {
                if !stop.contains(&tok) {
                    seqs[i].push(tok);
                    out[i].push(tok);
                }
            }
            active = active.into_iter().zip(next).filter(|(_, t)| !stop.contains(t)).map(|(i, _)| i).collect();
        }
        Ok(out)
    }

    fn step(&mut self, rows: &[&[i64]], pad: i64) -> anyhow::Result<Vec<i64>> {
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(1);
        let shape = [rows.len(), len];
        let ids = rows.iter().flat_map(|r| r.iter().copied().chain(std::iter::repeat(pad).take(len - r.len())));
        let last = rows.iter().map(|r| r.len() as i64 - 1).collect();
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let ids = HostTensor::i64(&shape, ids.collect());
        let mut feed = self.feed.fill(&ids, None, None, &lengths, &Fields::new()).map_err(anyhow::Error::msg)?;
        feed.push(("last_index", HostTensor::i64(&[rows.len(), 1], last)));
        let out = self.session.run(&feed)?;
        let (_, next) = out.into_iter().find(|(n, _)| n == "next_token").context("greedy wrapper: no next_token")?;
        Ok(next.into_i64())
    }
}

/// `<model>.greedy.onnx`: the model with `last_index` [batch, 1] in and only
/// `next_token` [batch] out. Written atomically beside the model, sharing its weights.
fn write_greedy_wrapper(model_path: &Path) -> anyhow::Result<PathBuf> {
    let model = crate::onnx::load(model_path)?;
    let mut proto = model.proto.clone();
    let graph = proto.graph.as_mut().context("model has no graph")?;
    if !graph.output.iter().any(|o| o.name.as_deref() == Some("logits")) {
        bail!("{}: no output named 'logits'", model_path.display());
    }
    let batch = DimSpec::from("batch");
    graph.input.push(make::value_info("last_index", DataType::Int64, &[batch.clone(), 1.into()]));
    let gather =
        make::node("GatherND", &["logits", "last_index"], &["neft.last_logits"], vec![attr::int("batch_dims", 1)]);
    let argmax = make::node(
        "ArgMax",
        &["neft.last_logits"],
        &["next_token"],
        vec![attr::int("axis", -1), attr::int("keepdims", 0)],
    );
    graph.node.extend([gather, argmax]);
    graph.output = vec![make::value_info("next_token", DataType::Int64, &[batch])];
    let name = format!("{}.greedy.onnx", model_path.file_stem().and_then(|s| s.to_str()).unwrap_or("model"));
    let path = model_path.with_file_name(name);
    crate::onnx::save(&Model::new(proto, model.dir.clone()), &path)?;
    Ok(path)
}
