//! The Hugging Face side of a Llama model: the `config.json`, `generation_config.json`
//! and `tokenizer_config.json` transformers reads, and the checkpoint's tensors under
//! their Hugging Face names and `[out, in]` layouts.
//!
//! In: a [`LlamaConfig`], the special tokens, and for a checkpoint a model written by
//! [`build_llama`](super::llama::build_llama) (weights named `<hf name>.T`, stored
//! `[in, out]`, and `lm_head.weight.T`) with any weights replaced by training.
//! Out: JSON values and [`HfTensor`]s; [`write_checkpoint`] puts them in a folder that
//! `AutoModelForCausalLM.from_pretrained` loads.

use super::llama::{transpose, LlamaConfig};
use crate::artifact::{State, StateTensor};
use crate::onnx::Model;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// The context length written when the source does not say (Llama 2's).
const DEFAULT_CONTEXT: usize = 2048;

/// `config.json` as transformers' `LlamaConfig` reads it.
pub fn config_json(cfg: &LlamaConfig) -> Value {
    let mut v = serde_json::to_value(cfg).expect("a config serializes");
    let extra = json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "head_dim": cfg.head_dim(),
        "max_position_embeddings": cfg.max_position_embeddings.unwrap_or(DEFAULT_CONTEXT),
        "attention_bias": false,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    let obj = v.as_object_mut().expect("a struct serializes to an object");
    for (k, x) in extra.as_object().expect("an object") {
        obj.insert(k.clone(), x.clone());
    }
    // Absent ids are left out rather than written as null.
    obj.retain(|_, x| !x.is_null());
    v
}

/// `generation_config.json`: the ids generation starts with, stops on and pads with.
pub fn generation_config_json(cfg: &LlamaConfig) -> Value {
    let mut v = json!({
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    });
    v.as_object_mut().expect("an object").retain(|_, x| !x.is_null());
    v
}

/// `tokenizer_config.json` for a `tokenizer.json`: the special tokens by text, the chat
/// template, and the fast tokenizer class that reads `tokenizer.json` as it is.
pub fn tokenizer_config_json(
    tokenizer: &tokenizers::Tokenizer,
    cfg: &LlamaConfig,
    chat_template: Option<&str>,
) -> anyhow::Result<Value> {
    let mut v = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_position_embeddings.unwrap_or(DEFAULT_CONTEXT),
        "clean_up_tokenization_spaces": false,
    });
    let obj = v.as_object_mut().expect("an object");
    for (key, id) in
        [("bos_token", &cfg.bos_token_id), ("eos_token", &cfg.eos_token_id), ("pad_token", &cfg.pad_token_id)]
    {
        let Some(id) = first_id(id.as_ref()) else { continue };
        let text = tokenizer
            .id_to_token(id as u32)
            .with_context(|| format!("the {key} id {id} is not in the tokenizer's vocabulary"))?;
        obj.insert(key.into(), text.into());
    }
    if let Some(t) = chat_template {
        obj.insert("chat_template".into(), t.into());
    }
    Ok(v)
}

/// The first id of a `config.json` id field (HF writes a number or a list).
pub fn first_id(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Array(items) => items.first()?.as_i64(),
        x => x.as_i64(),
    }
}

/// Writes `config.json`, `generation_config.json` and (given a tokenizer)
/// `tokenizer_config.json` into `dir`, each atomically.
pub fn write_configs(
    dir: &Path,
    cfg: &LlamaConfig,
    tokenizer: Option<&tokenizers::Tokenizer>,
    chat_template: Option<&str>,
) -> anyhow::Result<()> {
    let mut files = vec![("config.json", config_json(cfg)), ("generation_config.json", generation_config_json(cfg))];
    if let Some(t) = tokenizer {
        files.push(("tokenizer_config.json", tokenizer_config_json(t, cfg, chat_template)?));
    }
    for (name, value) in files {
        let path = dir.join(name);
        crate::fsutil::write_bytes_atomic(&path, serde_json::to_string_pretty(&value)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One checkpoint tensor: its Hugging Face name, `[out, in]`-style shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The Hugging Face names and shapes of a Llama checkpoint's weights, in file order,
/// and whether each is stored transposed (`<name>.T`, `[in, out]`) in neft's graph.
pub fn llama_weights(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>, bool)> {
    let (h, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (cfg.num_attention_heads * cfg.head_dim(), cfg.num_key_value_heads * cfg.head_dim());
    let mut w = vec![("model.embed_tokens.weight".to_string(), vec![v, h], false)];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        w.push((format!("{p}.input_layernorm.weight"), vec![h], false));
        for (name, out, inp) in [
            ("self_attn.q_proj", q, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, q),
        ] {
            w.push((format!("{p}.{name}.weight"), vec![out, inp], true));
        }
        w.push((format!("{p}.post_attention_layernorm.weight"), vec![h], false));
        for (name, out, inp) in [("mlp.gate_proj", f, h), ("mlp.up_proj", f, h), ("mlp.down_proj", h, f)] {
            w.push((format!("{p}.{name}.weight"), vec![out, inp], true));
        }
    }
    w.push(("model.norm.weight".to_string(), vec![h], false));
    w.push(("lm_head.weight".to_string(), vec![v, h], true));
    w
}

/// The checkpoint of `model` (built by `build_llama` from `cfg`) with the initializers
/// named in `replaced` taking those values. The output projection is left out when
/// `cfg` ties it to the embedding and it still equals the embedding; the returned flag
/// says whether the checkpoint is tied.
pub fn llama_tensors(
    model: &Model,
    cfg: &LlamaConfig,
    replaced: &HashMap<String, Vec<f32>>,
) -> anyhow::Result<(Vec<HfTensor>, bool)> {
    let label = model.display_path();
    let inits: HashMap<&str, &crate::onnx::proto::TensorProto> =
        model.graph().initializer.iter().map(|t| (t.name(), t)).collect();
    let mut tensors = vec![];
    for (name, shape, transposed) in llama_weights(cfg) {
        let stored = if transposed { format!("{name}.T") } else { name.clone() };
        let init = inits.get(stored.as_str()).with_context(|| {
            format!(
                "{label}: has no initializer '{stored}'; Hugging Face names are known only for models written by \
                 `neft build-model llama`"
            )
        })?;
        let mut want: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        if transposed {
            want.reverse();
        }
        if init.dims != want {
            bail!("{label}: initializer '{stored}' has shape {:?}; config.json makes it {want:?}", init.dims);
        }
        let data = match replaced.get(&stored) {
            Some(d) => d.clone(),
            None => model.tensor_f32(init)?,
        };
        let data = if transposed { transpose(&data, shape[1], shape[0]) } else { data };
        tensors.push(HfTensor { name, shape, data });
    }
    let tied = cfg.tie_word_embeddings && tensors.first().map(|t| &t.data) == tensors.last().map(|t| &t.data);
    if tied {
        tensors.pop();
    }
    Ok((tensors, tied))
}

/// Writes `tensors` as `dir/model.safetensors` (F32, metadata `format: pt` as
/// transformers expects).
pub fn save_safetensors(path: &Path, tensors: Vec<HfTensor>) -> anyhow::Result<()> {
    let mut state = State::default();
    state.metadata.insert("format".into(), "pt".into());
    for t in tensors {
        state.tensors.insert(t.name, StateTensor::F32 { shape: t.shape, data: t.data });
    }
    state.save(path)?;
    Ok(())
}
