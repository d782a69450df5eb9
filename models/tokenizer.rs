//! The tokenizer a GGUF file carries in its metadata, as a Hugging Face tokenizer.
//!
//! In: a [`Gguf`] whose `tokenizer.ggml.model` is `gpt2` (GPT-2-style byte-level BPE:
//! `tokenizer.ggml.tokens`, `.merges`, `.token_type`, `.bos_token_id`, ...).
//! Out: the equivalent `tokenizer.json` ([`tokenizer_json_from_gguf`]), which the
//! `tokenizers` crate or Python's `tokenizers` load as is, and a [`GgufTokenizer`] that
//! encodes and decodes text and keeps the special ids and `tokenizer.chat_template`.
//!
//! The pre-tokenizer follows `tokenizer.ggml.pre` the way llama.cpp does; only the
//! GPT-2 split and the StarCoder/SmolLM family (single digits, then GPT-2) are known.

use super::gguf::{Gguf, GgufError, Value};
use serde_json::{json, Map};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: tokenizer: {why}")]
    Unsupported { path: PathBuf, why: String },
    #[error("{path}: the tokenizers crate refused the tokenizer.json built from the metadata: {why}")]
    Load { path: PathBuf, why: String },
    #[error("tokenizer: {0}")]
    Run(String),
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Builds a `tokenizer.json` equivalent to the GGUF's byte-level BPE tokenizer.
pub fn tokenizer_json_from_gguf(g: &Gguf) -> Result<serde_json::Value, TokenizerError> {
    let unsupported = |why: String| TokenizerError::Unsupported { path: g.path.clone(), why };
    let model = g.require("tokenizer.ggml.model", Value::as_str)?;
    if model != "gpt2" {
        return Err(unsupported(format!(
            "tokenizer.ggml.model '{model}' is not supported (only 'gpt2' byte-level BPE)"
        )));
    }
    let tokens = string_array(g, "tokenizer.ggml.tokens")?;
    let merges = match g.get("tokenizer.ggml.merges") {
        Some(_) => string_array(g, "tokenizer.ggml.merges")?,
        None => vec![],
    };

    let mut vocab = Map::new();
    for (id, tok) in tokens.iter().enumerate() {
        if vocab.insert(tok.to_string(), id.into()).is_some() {
            return Err(unsupported(format!(
                "token {tok:?} appears twice in tokenizer.ggml.tokens (again at id {id})"
            )));
        }
    }
    // GGUF stores a merge as "left right"; the first space after the first character
    // separates them (llama.cpp splits the same way).
    let merges: Vec<_> = merges
        .iter()
        .map(|m| match m.char_indices().skip(1).find(|&(_, c)| c == ' ') {
            Some((i, _)) => Ok(json!([&m[..i], &m[i + 1..]])),
            None => Err(unsupported(format!("merge {m:?} has no space separating its two halves"))),
        })
        .collect::<Result<_, _>>()?;

    // Control tokens become special added tokens (matched whole in text, skippable when
    // decoding); user-defined ones become plain added tokens.
    let mut added: BTreeMap<usize, bool> = BTreeMap::new();
    if let Some(types) = g.get("tokenizer.ggml.token_type") {
        let types = types.as_array().filter(|t| t.len() == tokens.len()).ok_or_else(|| {
            unsupported(format!("tokenizer.ggml.token_type is not an array of {} integers", tokens.len()))
        })?;
        for (id, t) in types.iter().enumerate() {
            match int(t) {
                Some(CONTROL) => _ = added.insert(id, true),
                Some(USER_DEFINED) => _ = added.insert(id, false),
                _ => {}
            }
        }
    }
    let specials = Specials::from_gguf(g, tokens.len())?;
    for id in [specials.bos, specials.eos, specials.pad, specials.unk].into_iter().flatten() {
        added.insert(id as usize, true);
    }
    let added_tokens: Vec<_> = added
        .iter()
        .map(|(&id, &special)| {
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        })
        .collect();

    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match g.get("tokenizer.ggml.pre").and_then(Value::as_str) {
        // Files older than the key meant GPT-2's split.
        None | Some("gpt-2") => byte_level,
        Some("smollm" | "starcoder") => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        Some(other) => {
            return Err(unsupported(format!(
                "tokenizer.ggml.pre '{other}' is not supported (known: gpt-2, smollm, starcoder)"
            )))
        }
    };
    let post_processor = specials.post_processor(&tokens).unwrap_or_else(
        || json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
    );
    let unk = specials.unk.map(|id| tokens[id as usize]);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}

/// Special token ids and whether encoding adds bos/eos.
#[derive(Debug, Clone, Default)]
struct Specials {
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl Specials {
    fn from_gguf(g: &Gguf, n_vocab: usize) -> Result<Specials, GgufError> {
        let id = |key: &str| -> Result<Option<u32>, GgufError> {
            if g.get(key).is_none() {
                return Ok(None);
            }
            let v = g.require(key, |v| v.as_u64().filter(|&id| id < n_vocab as u64))?;
            Ok(Some(v as u32))
        };
        // Absent add_* keys mean no (Hugging Face's GPT-2 default).
        let flag = |key: &str| g.get(key).and_then(Value::as_bool).unwrap_or(false);
        Ok(Specials {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token"),
            add_eos: flag("tokenizer.ggml.add_eos_token"),
        })
    }

    /// A template adding bos/eos around each sequence, if the file asks for either.
    fn post_processor(&self, tokens: &[&str]) -> Option<serde_json::Value> {
        let bos = self.bos.filter(|_| self.add_bos);
        let eos = self.eos.filter(|_| self.add_eos);
        if bos.is_none() && eos.is_none() {
            return None;
        }
        let special = |id: u32| json!({"SpecialToken": {"id": tokens[id as usize], "type_id": 0}});
        let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
        let wrap = |inner: serde_json::Value| [bos.map(special), Some(inner), eos.map(special)].into_iter().flatten();
        let single: Vec<_> = wrap(seq("A", 0)).collect();
        let pair: Vec<_> = wrap(seq("A", 0)).chain(wrap(seq("B", 1))).collect();
        let special_tokens: Map<_, _> = [bos, eos]
            .into_iter()
            .flatten()
            .map(|id| {
                let tok = tokens[id as usize];
                (tok.to_string(), json!({"id": tok, "ids": [id], "tokens": [tok]}))
            })
            .collect();
        Some(json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens}))
    }
}

fn int(v: &Value) -> Option<i64> {
    match *v {
        Value::I32(x) => Some(x.into()),
        Value::I64(x) => Some(x),
        _ => v.as_u64().and_then(|x| i64::try_from(x).ok()),
    }
}

fn string_array<'a>(g: &'a Gguf, key: &str) -> Result<Vec<&'a str>, GgufError> {
    g.require(key, |v| v.as_array()?.iter().map(Value::as_str).collect())
}

/// A GGUF's tokenizer, ready to encode and decode.
pub struct GgufTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    /// `tokenizer.chat_template` (a Jinja template), kept verbatim.
    pub chat_template: Option<String>,
}

impl GgufTokenizer {
    pub fn from_gguf(g: &Gguf) -> Result<GgufTokenizer, TokenizerError> {
        let json = tokenizer_json_from_gguf(g)?;
        let specials = Specials::from_gguf(g, usize::MAX)?;
        Ok(GgufTokenizer {
            inner: load_tokenizer_json(&json).map_err(|why| TokenizerError::Load { path: g.path.clone(), why })?,
            bos: specials.bos,
            eos: specials.eos,
            pad: specials.pad,
            chat_template: g.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// Token ids of `text`; `add_special_tokens` adds bos/eos where the file asks for them.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| TokenizerError::Run(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| TokenizerError::Run(e.to_string()))
    }
}

/// Loads a `tokenizer.json` value into the `tokenizers` crate.
pub fn load_tokenizer_json(json: &serde_json::Value) -> Result<tokenizers::Tokenizer, String> {
    tokenizers::Tokenizer::from_bytes(json.to_string()).map_err(|e| e.to_string())
}
