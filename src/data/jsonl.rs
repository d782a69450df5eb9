use super::fields::{self, Field, Fields};
use super::Encode;
use crate::types::IGNORE_INDEX;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

/// One line of a data file.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    Text(String),
    PromptCompletion {
        prompt: String,
        completion: String,
    },
    Tokens {
        input_ids: Vec<i64>,
        labels: Option<Vec<i64>>,
    },
    /// A text or token ids with one class (sequence classification).
    Classified {
        text: Option<String>,
        input_ids: Option<Vec<i64>>,
        label: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}:{line}: {why}")]
    Line { file: String, line: usize, why: String },
    #[error("{file}: no examples (the file is empty)")]
    Empty { file: String },
}

/// One line of a data file: its tokens (if any) and its named tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// `None`: a line of named tensors only (a model that takes no tokens).
    pub example: Option<Example>,
    pub fields: Fields,
}

impl From<Example> for Record {
    fn from(example: Example) -> Record {
        Record { example: Some(example), fields: Fields::new() }
    }
}

#[derive(Deserialize)]
struct Raw {
    text: Option<String>,
    prompt: Option<String>,
    completion: Option<String>,
    input_ids: Option<Vec<i64>>,
    labels: Option<Vec<i64>>,
    label: Option<i64>,
    /// Any other field: a named tensor.
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// Reads every line; the first bad line stops everything, naming file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>, DataError> {
    let file = path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| DataError::Io { file: file.clone(), source })?;
    let mut out = vec![];
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| DataError::Io { file: file.clone(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_line(&line).map_err(|why| DataError::Line { file: file.clone(), line: i + 1, why })?);
    }
    if out.is_empty() {
        return Err(DataError::Empty { file });
    }
    Ok(out)
}

const SHAPES: &str = "expected {\"text\"}, {\"prompt\",\"completion\"}, {\"input_ids\"[,\"labels\"]}, or for \
                      sequence classification {\"text\" or \"input_ids\", \"label\": class}; any other field is a \
                      named tensor (a number or nested lists of numbers) for the model input of that name";

/// One non-empty JSONL line as a [`Record`]; the error says what is wrong with it.
pub fn parse_line(line: &str) -> Result<Record, String> {
    let raw: Raw = serde_json::from_str(line).map_err(|e| format!("not a JSON object of a known shape: {e}"))?;
    // A misspelt known field lands here too, so the error lists the known shapes.
    let field = |(name, v): (&String, &serde_json::Value)| {
        Field::parse(name, v).map(|f| (name.clone(), f)).map_err(|e| format!("{e}; {SHAPES}"))
    };
    let fields = raw.other.iter().map(field).collect::<Result<Fields, String>>()?;
    if raw.input_ids.as_ref().is_some_and(|i| i.is_empty()) {
        return Err("\"input_ids\" is empty".into());
    }
    let example = match raw {
        Raw { text: Some(t), prompt: None, completion: None, input_ids: None, labels: None, label: None, .. } => {
            Example::Text(t)
        }
        Raw {
            text: None,
            prompt: Some(prompt),
            completion: Some(completion),
            input_ids: None,
            labels: None,
            label: None,
            ..
        } => Example::PromptCompletion { prompt, completion },
        // A class for a text, token ids, or (an image model) named tensors alone.
        Raw { text, prompt: None, completion: None, input_ids, labels: None, label: Some(label), .. }
            if !(text.is_some() && input_ids.is_some())
                && (text.is_some() || input_ids.is_some() || !fields.is_empty()) =>
        {
            Example::Classified { text, input_ids, label }
        }
        Raw { text: None, prompt: None, completion: None, input_ids: Some(ids), labels, label: None, .. } => {
            if let Some(l) = labels.as_ref().filter(|l| l.len() != ids.len()) {
                return Err(format!("\"labels\" has {} entries, \"input_ids\" {}", l.len(), ids.len()));
            }
            Example::Tokens { input_ids: ids, labels }
        }
        Raw { text: None, prompt: None, completion: None, input_ids: None, labels: None, label: None, .. }
            if !fields.is_empty() =>
        {
            return Ok(Record { example: None, fields });
        }
        _ => return Err(SHAPES.into()),
    };
    Ok(Record { example: Some(example), fields })
}

/// Token ids and the labels the loss sees (-100: not counted), and the line's named
/// tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    /// The example's class, for sequence classification (its token labels are all -100).
    pub class: Option<i64>,
    pub fields: Fields,
}

/// Encodes examples, truncating to `seq_len` tokens (fields along the tokens with
/// them). Prompts get label -100; texts and completions are followed by the encoder's
/// end-of-sequence token. The named tensors are checked to stack into batches.
pub fn tokenize(records: &[Record], enc: Option<&dyn Encode>, seq_len: usize) -> anyhow::Result<Vec<Tokenized>> {
    let need = || enc.ok_or_else(|| anyhow::anyhow!("text examples need a tokenizer (--tokenizer tokenizer.json)"));
    let out: Vec<Tokenized> = records
        .iter()
        .map(|Record { example, fields }| {
            let mut class = None;
            let (mut ids, mut labels) = match example {
                None => (vec![], vec![]),
                Some(Example::Text(t)) => {
                    let e = need()?;
                    let mut ids = e.encode(t)?;
                    ids.extend(e.eos());
                    (ids.clone(), ids)
                }
                Some(Example::PromptCompletion { prompt, completion }) => {
                    let e = need()?;
                    let p = e.encode(prompt)?;
                    let mut c = e.encode(completion)?;
                    c.extend(e.eos());
                    let labels = std::iter::repeat_n(IGNORE_INDEX, p.len()).chain(c.iter().copied()).collect();
                    (p.into_iter().chain(c).collect(), labels)
                }
                Some(Example::Tokens { input_ids, labels }) => {
                    (input_ids.clone(), labels.clone().unwrap_or_else(|| input_ids.clone()))
                }
                // The tokenizer's own special tokens ([CLS] ... [SEP]), no end-of-sequence.
                Some(Example::Classified { text, input_ids, label }) => {
                    class = Some(*label);
                    let ids = match (text, input_ids) {
                        (Some(t), _) => need()?.encode(t)?,
                        (None, ids) => ids.clone().unwrap_or_default(),
                    };
                    let labels = vec![IGNORE_INDEX; ids.len()];
                    (ids, labels)
                }
            };
            let mut fields = fields.clone();
            fields::truncate_per_token(&mut fields, ids.len(), seq_len);
            ids.truncate(seq_len);
            labels.truncate(seq_len);
            Ok(Tokenized { input_ids: ids, labels, class, fields })
        })
        .collect::<anyhow::Result<_>>()?;
    fields::check(out.iter().map(|t| (&t.fields, t.input_ids.len()))).map_err(anyhow::Error::msg)?;
    Ok(out)
}
