//! A `tokenizer.json` as an [`Encode`]r, with its model's end-of-sequence token.
//!
//! One rule decides the end token everywhere (training data, evaluation, greedy
//! decoding, exported configs): the model's own metadata. In order:
//! 1. `eos_token_id` of the `config.json` beside the tokenizer (the first, if a list):
//!    what `neft build-model` copies from a GGUF's `tokenizer.ggml.eos_token_id` or a
//!    checkpoint's config, and what transformers and llama.cpp stop on;
//! 2. `eos_token` of `tokenizer_config.json` beside it;
//! 3. for a bare `tokenizer.json`, the first of the usual end tokens it knows
//!    (`</s>`, `<|endoftext|>`, `<eos>`, `<|end_of_text|>`, `<|im_end|>`).

use super::Encode;
use anyhow::Context;
use std::path::Path;

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    eos: Option<i64>,
}

impl std::ops::Deref for TextTokenizer {
    type Target = tokenizers::Tokenizer;
    fn deref(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Special tokens are added as the tokenizer's post-processor says.
impl Encode for TextTokenizer {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<i64>> {
        let enc = self.inner.encode(text, true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    fn eos(&self) -> Option<i64> {
        self.eos
    }
}

const USUAL_ENDS: [&str; 5] = ["</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>", "<|im_end|>"];

/// Loads a `tokenizer.json` and finds its end token (see the module's rule).
pub fn load_tokenizer(path: &Path) -> anyhow::Result<TextTokenizer> {
    let inner = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow::anyhow!("{}: not a tokenizer.json the tokenizers crate can read: {e}", path.display()))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let eos = match config_eos(&dir.join("config.json"), &inner)? {
        Some(id) => Some(id),
        None => match tokenizer_config_eos(&dir.join("tokenizer_config.json"), &inner)? {
            Some(id) => Some(id),
            None => USUAL_ENDS.iter().find_map(|t| inner.token_to_id(t)).map(i64::from),
        },
    };
    Ok(TextTokenizer { inner, eos })
}

fn read_json(path: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn config_eos(path: &Path, tok: &tokenizers::Tokenizer) -> anyhow::Result<Option<i64>> {
    let Some(config) = read_json(path)? else { return Ok(None) };
    let Some(id) = crate::models::hf::first_id(config.get("eos_token_id")) else { return Ok(None) };
    anyhow::ensure!(
        id >= 0 && (id as u64) < tok.get_vocab_size(true) as u64,
        "{}: eos_token_id {id} is not in the tokenizer's vocabulary",
        path.display()
    );
    Ok(Some(id))
}

fn tokenizer_config_eos(path: &Path, tok: &tokenizers::Tokenizer) -> anyhow::Result<Option<i64>> {
    let Some(config) = read_json(path)? else { return Ok(None) };
    // A string, or an added-token object with its text in "content".
    let text = match config.get("eos_token") {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(v) => match v.get("content").and_then(|c| c.as_str()) {
            Some(s) => s,
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    let id = tok
        .token_to_id(text)
        .with_context(|| format!("{}: eos_token {text:?} is not in the tokenizer's vocabulary", path.display()))?;
    Ok(Some(id.into()))
}
