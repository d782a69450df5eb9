//! The tuned model in the formats other tools load: a Hugging Face checkpoint
//! (`neft export --hf`), a GGUF for llama.cpp (`--gguf`) and a PEFT LoRA adapter
//! (`--peft`).
//!
//! In: the base model (written by `neft build-model llama`, whose folder says what it
//! was built from), the merged tensors of a trained state, or for `--peft` the LoRA
//! factors of the state. Out: folders and files written atomically, file by file.

use super::Adapter;
use crate::artifact::{Plan, State, StateTensor};
use crate::models::folder::{BuildSource, ModelFolder};
use crate::models::gguf_write::GgufFloat;
use crate::models::hf::{self, HfTensor};
use crate::onnx::Model;
use crate::types::LoraPart;
use anyhow::{bail, Context};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What an export to another format wrote.
#[derive(Debug, Clone, Serialize)]
pub struct FormatReport {
    pub path: PathBuf,
    pub tensors: usize,
    /// True when training changed the output projection of a model that ties it to its
    /// embedding: the export then carries it separately.
    pub head_untied: bool,
}

/// Files of a model folder a Hugging Face checkpoint carries over unchanged.
const TOKENIZER_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"];

/// The merged model under Hugging Face names and layouts: what `--hf` and `--gguf`
/// both write, computed once.
pub struct HfCheckpoint {
    folder: ModelFolder,
    tensors: Vec<HfTensor>,
    /// Whether the output projection still equals the tied embedding.
    tied: bool,
}

impl HfCheckpoint {
    /// `base` (written by `neft build-model llama`) with `adapter` merged in; `what`
    /// names the export that needs it, for the error when `base` is something else.
    pub fn of(base: &Model, adapter: &Adapter, what: &str) -> anyhow::Result<HfCheckpoint> {
        let folder = ModelFolder::of_model(&base.path, what)?;
        let replaced = super::merge::merged_tensors(base, adapter)?;
        let (tensors, tied) = hf::llama_tensors(base, &folder.config, &replaced)?;
        Ok(HfCheckpoint { folder, tensors, tied })
    }

    fn report(&self, path: &Path, tensors: usize) -> FormatReport {
        FormatReport {
            path: path.to_path_buf(),
            tensors,
            head_untied: self.folder.config.tie_word_embeddings && !self.tied,
        }
    }
}

/// Writes the checkpoint as a Hugging Face checkpoint folder `out`: `model.safetensors`
/// (F32, Hugging Face names and layouts), `config.json`, and the tokenizer and
/// generation files of the base model's folder.
pub fn write_hf(ckpt: &HfCheckpoint, out: &Path) -> anyhow::Result<FormatReport> {
    let folder = &ckpt.folder;
    refuse_model_folder(folder, out)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    hf::save_safetensors(&out.join("model.safetensors"), ckpt.tensors.clone())?;
    let mut config = folder.config.clone();
    config.tie_word_embeddings = ckpt.tied;
    write_json(&out.join("config.json"), &hf::config_json(&config))?;
    for name in TOKENIZER_FILES {
        if let Some(src) = folder.file(name) {
            let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            crate::fsutil::write_bytes_atomic(&out.join(name), &bytes)
                .with_context(|| format!("writing {}", out.join(name).display()))?;
        }
    }
    if folder.file("generation_config.json").is_none() {
        write_json(&out.join("generation_config.json"), &hf::generation_config_json(&config))?;
    }
    Ok(ckpt.report(out, ckpt.tensors.len()))
}

/// Writes the checkpoint as a GGUF file: the metadata, tokenizer and tensor names of
/// the GGUF the base model was built from, matrices in `float`.
pub fn write_gguf(ckpt: &HfCheckpoint, out: &Path, float: GgufFloat) -> anyhow::Result<FormatReport> {
    let dir = &ckpt.folder.dir;
    let source = match &ckpt.folder.source {
        Some(BuildSource::Gguf(path)) => path,
        other => bail!(
            "{}: --gguf writes the tuned model under the metadata of the GGUF it was built from, but this model was \
             built from {}; write a Hugging Face checkpoint with --hf instead",
            dir.display(),
            match other {
                Some(BuildSource::Safetensors(dir)) => format!("the checkpoint {}", dir.display()),
                _ => "no GGUF (its folder has no source.json)".to_string(),
            }
        ),
    };
    let gguf = crate::models::gguf::Gguf::open(source)
        .with_context(|| format!("opening the GGUF {} was built from", dir.display()))?;
    let count = crate::models::gguf_write::save_llama_gguf(out, &gguf, &ckpt.tensors, float)?;
    Ok(ckpt.report(out, count))
}

/// Writes a LoRA state as a PEFT adapter folder `out`: `adapter_config.json` and
/// `adapter_model.safetensors` with PEFT's key names
/// (`base_model.model.<module>.lora_A.weight`, `[rank, in]`; `lora_B`, `[out, rank]`),
/// which `PeftModel.from_pretrained` loads onto the Hugging Face checkpoint of the
/// base model.
pub fn write_peft(plan: &Plan, state: &State, base_model: &Path, out: &Path) -> anyhow::Result<FormatReport> {
    let Some(lora) = &plan.lora else {
        bail!("--peft writes LoRA factors, but these artifacts train {} rows; use --adapter or --hf", plan.mode);
    };
    let folder = ModelFolder::of_model(base_model, "--peft")?;
    refuse_model_folder(&folder, out)?;
    let mut tensors = State::default();
    tensors.metadata.insert("format".into(), "pt".into());
    let mut modules = vec![];
    for p in &plan.params {
        let Some(factor) = p.lora else { continue };
        let module = hf_module(&p.source)
            .with_context(|| format!("--peft: the adapted weight '{}' has no Hugging Face module name", p.source))?;
        if factor.transposed {
            bail!("--peft: '{}' is stored [out, in], which `neft build-model` never writes", p.source);
        }
        let data = match state.tensors.get(&p.name) {
            Some(StateTensor::F32 { data, .. }) => data,
            _ => bail!("the state has no FLOAT tensor '{}'", p.name),
        };
        // A is [in, rank] and B [rank, out] in the X·W orientation; PEFT keeps both
        // as Linear weights, [rank, in] and [out, rank]: each transposed.
        let (rows, cols) = (p.shape[0] as usize, p.shape[1] as usize);
        let part = match factor.part {
            LoraPart::A => "lora_A",
            LoraPart::B => "lora_B",
        };
        tensors.tensors.insert(
            format!("base_model.model.{module}.{part}.weight"),
            StateTensor::F32 { shape: vec![cols, rows], data: crate::models::llama::transpose(data, rows, cols) },
        );
        if factor.part == LoraPart::A {
            modules.push(module);
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let count = tensors.tensors.len();
    tensors.save(&out.join("adapter_model.safetensors"))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "base_model_name_or_path": null,
    });
    write_json(&out.join("adapter_config.json"), &config)?;
    Ok(FormatReport { path: out.to_path_buf(), tensors: count, head_untied: false })
}

/// `model.layers.3.mlp.up_proj` for neft's `model.layers.3.mlp.up_proj.weight.T`.
fn hf_module(source: &str) -> Option<String> {
    source.strip_suffix(".weight.T").filter(|m| m.starts_with("model.layers.")).map(str::to_string)
}

fn refuse_model_folder(folder: &ModelFolder, out: &Path) -> anyhow::Result<()> {
    let same = out.canonicalize().ok().is_some_and(|o| folder.dir.canonicalize().ok() == Some(o));
    if same {
        bail!("{}: this is the base model's folder; write the export somewhere else", out.display());
    }
    Ok(())
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    crate::fsutil::write_bytes_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
