//! Calibration data streamed from a JSONL file, one window of examples at a time, so
//! memory never grows with the size of the file.
//!
//! In: a JSONL file (the shapes `data::read_jsonl` accepts), an optional encoder, and
//! the model's token inputs ([`TokenInputs`]). Out: [`TokenBatch`]es: padded token ids,
//! labels (-100 on padding), a `[batch, seq]` mask of real tokens, the lines' named
//! tensors, and the feeds for the model's inputs (`input_ids`, and `attention_mask`,
//! `position_ids`, `token_type_ids` or any input from the JSONL field of its name).

use crate::data::{fields, tokenize, Encode, Fields, TokenFeed, Tokenized};
use crate::ir::Graph;
use crate::onnx::make::{declared, DimSpec};
use crate::runtime::ort::HostTensor;
use crate::types::IGNORE_INDEX;
use anyhow::{anyhow, bail, Context};
use std::io::BufRead;
use std::path::Path;

/// How the model takes token data: which inputs to feed, fixed dimensions, vocabulary.
#[derive(Debug, Clone)]
pub struct TokenInputs {
    /// Every data input and what fills it (`input_ids`, `attention_mask`, ...).
    pub feed: TokenFeed,
    /// A batch size the model's `input_ids` declares as fixed.
    pub fixed_batch: Option<usize>,
    /// A sequence length the model's `input_ids` declares as fixed (batches are padded to it).
    pub fixed_seq: Option<usize>,
    /// Rows of the embedding that `input_ids` index, when the model gathers from one.
    pub vocab: Option<(String, usize)>,
}

impl TokenInputs {
    /// Checks that token data can feed every input of `graph` (an error names the
    /// model and the input that cannot be fed).
    pub fn of(graph: &Graph, model: &str) -> anyhow::Result<TokenInputs> {
        // A model with its own loss takes `labels` too (Hugging Face's convention).
        let feed = TokenFeed::of_graph(&graph.to_proto(), Some("labels")).map_err(|e| anyhow!("{model}: {e}"))?;
        // Activations are weighed by the token mask, so calibration data are tokens.
        let Some(ids) = graph.inputs().find(|i| i.name() == "input_ids") else {
            bail!(
                "{model}: activation and gradient selection read token data, but the model has no 'input_ids' \
                 input; choose its neurons with --strategy random, --strategy cosine --reference, or --neurons"
            )
        };
        let dims = declared(ids).and_then(|d| d.1).unwrap_or_default();
        if dims.len() != 2 {
            bail!("{model}: input 'input_ids' must be [batch, seq], but it declares {} dimensions", dims.len());
        }
        let fixed = |d: &DimSpec| match d {
            DimSpec::Fixed(n) if *n > 0 => Some(*n as usize),
            _ => None,
        };
        Ok(TokenInputs { feed, fixed_batch: fixed(&dims[0]), fixed_seq: fixed(&dims[1]), vocab: vocabulary(graph) })
    }
}

/// The embedding table `input_ids` index: a `Gather` of an initializer by `input_ids`.
fn vocabulary(graph: &Graph) -> Option<(String, usize)> {
    graph.consumers("input_ids").into_iter().find_map(|(n, slot)| {
        let op = graph.op(n)?;
        let table = graph.initializer(op.input.first()?)?;
        let rows = *table.dims.first()?;
        (op.op_type() == "Gather" && slot == Some(1)).then(|| (table.name().to_string(), rows.max(0) as usize))
    })
}

/// One padded batch of calibration data.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[batch, seq]` INT64, padded on the right.
    pub input_ids: HostTensor,
    /// `[batch, seq]` INT64, -100 on padding (and where the data say so).
    pub labels: HostTensor,
    /// `[batch, seq]` FLOAT, 1 on real tokens, 0 on padding.
    pub mask: HostTensor,
    /// Real tokens in the batch.
    pub tokens: usize,
    /// Examples in the batch (rows that are not filler for a fixed batch size).
    pub examples: usize,
    /// `[batch]` INT64, one class per row (-100 on filler), when every example has one.
    pub classes: Option<HostTensor>,
    /// The lines' named tensors, `[batch, ...]` (zeros on filler rows).
    pub fields: Fields,
}

impl TokenBatch {
    /// The model inputs for this batch: `input_ids` and whatever else it declares.
    pub fn feeds<'a>(&self, inputs: &'a TokenInputs) -> anyhow::Result<Vec<(&'a str, HostTensor)>> {
        let mask = self.mask.as_f32().expect("FLOAT mask");
        let len = self.input_ids.shape()[1];
        let lengths: Vec<usize> = mask
            .as_slice()
            .expect("contiguous mask")
            .chunks(len.max(1))
            .map(|row| row.iter().filter(|&&m| m > 0.0).count())
            .collect();
        let (labels, classes) = (Some(&self.labels), self.classes.as_ref());
        inputs.feed.fill(&self.input_ids, labels, classes, &lengths, &self.fields).map_err(|e| anyhow!(e))
    }
}

/// How to cut the data into batches.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    pub batch: usize,
    pub seq_len: usize,
    pub max_examples: Option<usize>,
}

/// Batches per window of examples sorted by length (memory: one window of token ids).
const WINDOW_BATCHES: usize = 16;

/// Reads a JSONL file batch by batch, holding one window of examples at a time: memory
/// does not grow with the file. Within a window, examples are sorted by length.
pub struct TokenStream<'a> {
    lines: std::io::Lines<std::io::BufReader<CountingReader>>,
    file: String,
    line: usize,
    enc: Option<&'a dyn Encode>,
    inputs: TokenInputs,
    opts: StreamOptions,
    examples: usize,
    /// Examples that tokenized to nothing and were left out.
    pub skipped: usize,
    bytes: std::rc::Rc<std::cell::Cell<u64>>,
    /// Examples read and sorted, not yet batched.
    pending: std::collections::VecDeque<Tokenized>,
}

/// Counts the bytes read, for progress.
struct CountingReader {
    inner: std::fs::File,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl std::io::Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

impl<'a> TokenStream<'a> {
    pub fn open(
        path: &Path,
        enc: Option<&'a dyn Encode>,
        inputs: TokenInputs,
        opts: StreamOptions,
    ) -> anyhow::Result<TokenStream<'a>> {
        let file = path.display().to_string();
        let inner = std::fs::File::open(path).with_context(|| format!("{file}: cannot open the data file"))?;
        let bytes = std::rc::Rc::new(std::cell::Cell::new(0));
        let reader = CountingReader { inner, read: bytes.clone() };
        let mut opts = opts;
        opts.batch = inputs.fixed_batch.unwrap_or(opts.batch).max(1);
        opts.seq_len = inputs.fixed_seq.map_or(opts.seq_len, |s| s.min(opts.seq_len.max(1))).max(1);
        Ok(TokenStream {
            lines: std::io::BufReader::new(reader).lines(),
            file,
            line: 0,
            enc,
            inputs,
            opts,
            examples: 0,
            skipped: 0,
            pending: Default::default(),
            bytes,
        })
    }

    /// Bytes of the file read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes.get()
    }

    /// Examples read so far.
    pub fn examples(&self) -> usize {
        self.examples
    }

    /// The next example with at least one token, or `None` at the end (or the limit).
    fn next_example(&mut self) -> anyhow::Result<Option<Tokenized>> {
        loop {
            if self.opts.max_examples.is_some_and(|m| self.examples >= m) {
                return Ok(None);
            }
            let Some(line) = self.lines.next() else { return Ok(None) };
            self.line += 1;
            let line = line.with_context(|| format!("{}: cannot read line {}", self.file, self.line))?;
            if line.trim().is_empty() {
                continue;
            }
            let at = |why: String| anyhow::anyhow!("{}:{}: {why}", self.file, self.line);
            let example = crate::data::parse_line(&line).map_err(at)?;
            let mut t = tokenize(&[example], self.enc, self.opts.seq_len).map_err(|e| at(format!("{e:#}")))?;
            let t = t.remove(0);
            self.inputs.feed.check_fields(t.fields.keys().map(String::as_str)).map_err(at)?;
            self.examples += 1;
            if let Some((table, rows)) = &self.inputs.vocab {
                if let Some(bad) = t.input_ids.iter().find(|&&id| id < 0 || id as usize >= *rows) {
                    return Err(at(format!(
                        "token id {bad} does not fit the model: its embedding '{table}' has {rows} rows (ids 0..{rows})"
                    )));
                }
            }
            if t.input_ids.is_empty() {
                self.skipped += 1;
                continue;
            }
            return Ok(Some(t));
        }
    }

    /// Reads the next window of examples, sorted by length so that batches cut from it
    /// carry little padding.
    fn refill(&mut self) -> anyhow::Result<()> {
        let size = self.opts.batch * WINDOW_BATCHES;
        let mut window = Vec::with_capacity(size);
        while window.len() < size {
            match self.next_example()? {
                Some(t) => window.push(t),
                None => break,
            }
        }
        window.sort_by_key(|t| t.input_ids.len());
        self.pending = window.into();
        Ok(())
    }

    fn next_batch(&mut self) -> anyhow::Result<Option<TokenBatch>> {
        if self.pending.is_empty() {
            self.refill()?;
        }
        let take = self.opts.batch.min(self.pending.len());
        let picked: Vec<Tokenized> = self.pending.drain(..take).collect();
        if picked.is_empty() {
            return Ok(None);
        }
        let pad = self.enc.map(|e| e.pad()).unwrap_or(0);
        let rows = self.inputs.fixed_batch.unwrap_or(picked.len());
        let longest = picked.iter().map(|t| t.input_ids.len()).max().unwrap_or(1);
        let len = self.inputs.fixed_seq.unwrap_or_else(|| bucket(longest).min(self.opts.seq_len).max(longest));
        pad_batch(&picked, rows, len, pad).map(Some).map_err(|e| anyhow!("{}: {e}", self.file))
    }
}

impl Iterator for TokenStream<'_> {
    type Item = anyhow::Result<TokenBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

/// The padded length of a batch whose longest example has `n` tokens: the next power
/// of two up to 64, then the next multiple of 64. ONNX Runtime keeps memory for every
/// input shape it has seen, so a few lengths keep memory flat however long the data.
pub fn bucket(n: usize) -> usize {
    if n <= 64 {
        n.next_power_of_two()
    } else {
        n.div_ceil(64) * 64
    }
}

/// `rows x len` ids, labels and mask; rows past the examples are filler (mask 0).
fn pad_batch(examples: &[Tokenized], rows: usize, len: usize, pad: i64) -> Result<TokenBatch, String> {
    let mut ids = vec![pad; rows * len];
    let mut labels = vec![IGNORE_INDEX; rows * len];
    let mut mask = vec![0f32; rows * len];
    let mut tokens = 0;
    for (r, e) in examples.iter().enumerate() {
        let n = e.input_ids.len().min(len);
        ids[r * len..r * len + n].copy_from_slice(&e.input_ids[..n]);
        labels[r * len..r * len + n].copy_from_slice(&e.labels[..n]);
        mask[r * len..r * len + n].fill(1.0);
        tokens += n;
    }
    let shape = [rows, len];
    let classes: Option<Vec<i64>> = examples.iter().map(|e| e.class).collect();
    let classes = classes.map(|mut c| {
        c.resize(rows, IGNORE_INDEX);
        HostTensor::i64(&[rows], c)
    });
    let lines: Vec<_> = examples.iter().map(|e| (&e.fields, e.input_ids.len())).collect();
    Ok(TokenBatch {
        input_ids: HostTensor::i64(&shape, ids),
        labels: HostTensor::i64(&shape, labels),
        mask: HostTensor::f32(&shape, mask),
        tokens,
        examples: examples.len(),
        classes,
        fields: fields::stack(&lines, rows, len)?,
    })
}
