//! Weights from a HuggingFace checkpoint folder (`*.safetensors`, memory-mapped),
//! converted to f32 on request.

use super::llama::WeightSource;
use crate::precision::FloatFormat;
use anyhow::{bail, Context};
use memmap2::Mmap;
use std::path::{Path, PathBuf};

pub struct SafetensorsWeights {
    files: Vec<(PathBuf, Mmap)>,
}

impl SafetensorsWeights {
    /// Every `*.safetensors` file in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            bail!("{}: no .safetensors files", dir.display());
        }
        let mut files = vec![];
        for p in paths {
            let f = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            // SAFETY: read-only map of a file nothing else writes while we read it.
            let map = unsafe { Mmap::map(&f) }.with_context(|| format!("mapping {}", p.display()))?;
            safetensors::SafeTensors::deserialize(&map)
                .with_context(|| format!("{}: not a safetensors file", p.display()))?;
            files.push((p, map));
        }
        Ok(SafetensorsWeights { files })
    }
}

impl WeightSource for SafetensorsWeights {
    fn weight(&mut self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        for (path, map) in &self.files {
            let st = safetensors::SafeTensors::deserialize(map)?;
            let Ok(view) = st.tensor(name) else { continue };
            if view.shape() != shape {
                bail!("{}: tensor '{name}' has shape {:?}, the config needs {shape:?}", path.display(), view.shape());
            }
            return match FloatFormat::try_from(view.dtype()) {
                Ok(format) => Ok(format.decode(view.data())),
                Err(other) => {
                    bail!(
                        "{}: tensor '{name}' has type {other:?}; F32, F64, F16 and BF16 are supported",
                        path.display()
                    )
                }
            };
        }
        bail!("no safetensors file has the tensor '{name}'")
    }
}

/// Weights from a llama.cpp GGUF file, dequantized to f32, under their HF names.
pub struct GgufWeights<'a> {
    pub gguf: &'a super::gguf::Gguf,
}

impl GgufWeights<'_> {
    /// The architecture numbers from the GGUF metadata (`llama.*` keys).
    pub fn config(&self) -> anyhow::Result<super::llama::LlamaConfig> {
        let g = self.gguf;
        let int = |k: &str| g.require(k, super::gguf::Value::as_u64).map(|v| v as usize);
        let float = |k: &str| g.require(k, super::gguf::Value::as_f64);
        let vocab = g.require("tokenizer.ggml.tokens", super::gguf::Value::as_array)?.len();
        let id = |k: &str| g.get(k).and_then(super::gguf::Value::as_u64).map(serde_json::Value::from);
        Ok(super::llama::LlamaConfig {
            vocab_size: vocab,
            hidden_size: int("llama.embedding_length")?,
            intermediate_size: int("llama.feed_forward_length")?,
            num_hidden_layers: int("llama.block_count")?,
            num_attention_heads: int("llama.attention.head_count")?,
            num_key_value_heads: int("llama.attention.head_count_kv")?,
            rope_theta: float("llama.rope.freq_base").unwrap_or(10000.0) as f32,
            rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon")? as f32,
            tie_word_embeddings: g.tensor("output.weight").is_err(),
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_id: id("tokenizer.ggml.eos_token_id"),
            pad_token_id: id("tokenizer.ggml.padding_token_id"),
            max_position_embeddings: g
                .get("llama.context_length")
                .and_then(super::gguf::Value::as_u64)
                .map(|n| n as usize),
        })
    }
}

/// The llama.cpp name of a HF Llama weight.
pub fn gguf_name(hf: &str) -> anyhow::Result<String> {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return Ok(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.").ok_or_else(|| anyhow::anyhow!("no GGUF name for '{hf}'"))?;
    let (layer, part) = rest.split_once('.').ok_or_else(|| anyhow::anyhow!("no GGUF name for '{hf}'"))?;
    let part = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => anyhow::bail!("no GGUF name for '{hf}'"),
    };
    Ok(format!("blk.{layer}.{part}"))
}

impl WeightSource for GgufWeights<'_> {
    fn weight(&mut self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        let g = gguf_name(name)?;
        let info = self.gguf.tensor(&g)?;
        if info.shape() != shape {
            bail!("GGUF tensor '{g}' ({name}) has shape {:?}, the config needs {shape:?}", info.shape());
        }
        // llama_weight undoes llama.cpp's Q/K row permutation for rotary embeddings.
        Ok(self.gguf.llama_weight(&g)?)
    }
}
