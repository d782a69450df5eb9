use super::Encode;
use crate::types::IGNORE_INDEX;
use serde::Deserialize;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    text: Option<String>,
    prompt: Option<String>,
    completion: Option<String>,
    input_ids: Option<Vec<i64>>,
    labels: Option<Vec<i64>>,
    label: Option<i64>,
}

/// Reads every line; the first bad line stops everything, naming file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Example>, DataError> {
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

/// One non-empty JSONL line as an [`Example`]; the error says what is wrong with it.
pub fn parse_line(line: &str) -> Result<Example, String> {
    let raw: Raw = serde_json::from_str(line).map_err(|e| format!("not a JSON object of a known shape: {e}"))?;
    if raw.input_ids.as_ref().is_some_and(|i| i.is_empty()) {
        return Err("\"input_ids\" is empty".into());
    }
    Ok(match raw {
        Raw { text: Some(t), prompt: None, completion: None, input_ids: None, labels: None, label: None } => {
            Example::Text(t)
        }
        Raw {
            text: None,
            prompt: Some(prompt),
            completion: Some(completion),
            input_ids: None,
            labels: None,
            label: None,
        } => Example::PromptCompletion { prompt, completion },
        Raw { text, prompt: None, completion: None, input_ids, labels: None, label: Some(label) }
            if text.is_some() != input_ids.is_some() =>
        {
            Example::Classified { text, input_ids, label }
        }
        Raw { text: None, prompt: None, completion: None, input_ids: Some(ids), labels, label: None } => {
            if ids.is_empty() {
                return Err("\"input_ids\" is empty".into());
            }
            if let Some(l) = labels.as_ref().filter(|l| l.len() != ids.len()) {
                return Err(format!("\"labels\" has {} entries, \"input_ids\" {}", l.len(), ids.len()));
            }
            Example::Tokens { input_ids: ids, labels }
        }
        _ => {
            return Err("expected {\"text\"}, {\"prompt\",\"completion\"}, {\"input_ids\"[,\"labels\"]}, or for \
                        sequence classification {\"text\" or \"input_ids\", \"label\": class}"
                .into())
        }
    })
}

/// Token ids and the labels the loss sees (-100: not counted).
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    /// The example's class, for sequence classification (its token labels are all -100).
    pub class: Option<i64>,
}

/// Encodes examples, truncating to `seq_len` tokens. Prompts get label -100; texts and
/// completions are followed by the encoder's end-of-sequence token.
pub fn tokenize(examples: &[Example], enc: Option<&dyn Encode>, seq_len: usize) -> anyhow::Result<Vec<Tokenized>> {
    let need = || enc.ok_or_else(|| anyhow::anyhow!("text examples need a tokenizer (--tokenizer tokenizer.json)"));
    examples
        .iter()
        .map(|ex| {
            let mut class = None;
            let (mut ids, mut labels) = match ex {
                Example::Text(t) => {
                    let e = need()?;
                    let mut ids = e.encode(t)?;
                    ids.extend(e.eos());
                    (ids.clone(), ids)
                }
                Example::PromptCompletion { prompt, completion } => {
                    let e = need()?;
                    let p = e.encode(prompt)?;
                    let mut c = e.encode(completion)?;
                    c.extend(e.eos());
                    let labels = std::iter::repeat(IGNORE_INDEX).take(p.len()).chain(c.iter().copied()).collect();
                    (p.into_iter().chain(c).collect(), labels)
                }
                Example::Tokens { input_ids, labels } => {
                    (input_ids.clone(), labels.clone().unwrap_or_else(|| input_ids.clone()))
                }
                // The tokenizer's own special tokens ([CLS] ... [SEP]), no end-of-sequence.
                Example::Classified { text, input_ids, label } => {
                    class = Some(*label);
                    let ids = match (text, input_ids) {
                        (Some(t), _) => need()?.encode(t)?,
                        (None, ids) => ids.clone().unwrap_or_default(),
                    };
                    let labels = vec![IGNORE_INDEX; ids.len()];
                    (ids, labels)
                }
            };
            ids.truncate(seq_len);
            labels.truncate(seq_len);
            Ok(Tokenized { input_ids: ids, labels, class })
        })
        .collect()
}
