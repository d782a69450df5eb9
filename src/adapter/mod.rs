//! Adapters: the trained rows of a run, kept apart from the model, and merged back.
//!
//! In: a plan and a trained state ([`Adapter::from_state`]), or a base model and an
//! adapter ([`merge`]). Out: `ADAPTER.safetensors`, or a merged `.onnx` whose weights
//! lie in `<name>.data` beside it.
//!
//! The file holds, for every trained source tensor `S` (a weight or a bias of the base
//! model), `S.index` (INT64 `[k]`: the row numbers along the neuron axis) and
//! `S.values` (FLOAT: those rows, the source's shape with `k` on that axis). Metadata:
//! `format` (`neft.adapter/1`), `base_sha256` and `base_path` (the model trained
//! from), `plan` (the plan hash), `mode`, `step`, and `axes` (JSON: source → axis).
//! Whole trainable tensors (mask and full modes) are cut down to the selected rows. A
//! LoRA state has no rows of its own: it is folded into whole weights ([`lora`]) and
//! only merges (`neft export --merged`).

mod export;
mod formats;
mod lora;
mod merge;

pub use formats::{write_gguf, write_hf, write_peft, FormatReport, HfCheckpoint};
pub use merge::{merge, MergeReport};

use crate::artifact::{State, StateTensor};
use anyhow::bail;
use std::collections::BTreeMap;
use std::path::Path;

pub const ADAPTER_FORMAT: &str = "neft.adapter/1";

/// The trained rows of one source tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterTensor {
    /// The initializer of the base model the rows belong to.
    pub source: String,
    pub axis: usize,
    pub rows: Vec<usize>,
    /// Shape of `values`: the source's, with `rows.len()` on `axis`.
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// An adapter; `tensors` are sorted by source name.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    pub base_sha256: String,
    pub base_path: String,
    pub plan: String,
    pub mode: String,
    pub step: i64,
    pub tensors: Vec<AdapterTensor>,
}

impl Adapter {
    /// Writes the adapter atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut state = State::default();
        let mut axes = BTreeMap::new();
        for t in &self.tensors {
            let rows = t.rows.iter().map(|&r| r as i64).collect();
            state
                .tensors
                .insert(format!("{}.index", t.source), StateTensor::I64 { shape: vec![t.rows.len()], data: rows });
            state.tensors.insert(
                format!("{}.values", t.source),
                StateTensor::F32 { shape: t.shape.clone(), data: t.values.clone() },
            );
            axes.insert(t.source.clone(), t.axis);
        }
        let meta = [
            ("format", ADAPTER_FORMAT.to_string()),
            ("base_sha256", self.base_sha256.clone()),
            ("base_path", self.base_path.clone()),
            ("plan", self.plan.clone()),
            ("mode", self.mode.clone()),
            ("step", self.step.to_string()),
            ("axes", serde_json::to_string(&axes).expect("serializable")),
        ];
        state.metadata = meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        state.save(path)?;
        Ok(())
    }

    /// Reads an adapter, checking that every tensor has its index and values and that
    /// their shapes agree.
    pub fn load(path: &Path) -> anyhow::Result<Adapter> {
        let file = path.display().to_string();
        let state = State::load(path)?;
        let meta = |key: &str| state.meta(&file, "neft adapter", key);
        if meta("format")? != ADAPTER_FORMAT {
            bail!("{file}: metadata 'format' is '{}', expected '{ADAPTER_FORMAT}'", meta("format")?);
        }
        let axes: BTreeMap<String, usize> = serde_json::from_str(&meta("axes")?)
            .map_err(|e| anyhow::anyhow!("{file}: metadata 'axes' is not a JSON object of axes: {e}"))?;
        let tensors = axes
            .iter()
            .map(|(source, &axis)| read_tensor(&state, source, axis, &file))
            .collect::<anyhow::Result<_>>()?;
        if let Some(extra) = state
            .tensors
            .keys()
            .find(|k| !axes.keys().any(|s| **k == format!("{s}.index") || **k == format!("{s}.values")))
        {
            bail!("{file}: tensor '{extra}' is not listed in metadata 'axes'");
        }
        Ok(Adapter {
            base_sha256: meta("base_sha256")?,
            base_path: meta("base_path")?,
            plan: meta("plan")?,
            mode: meta("mode")?,
            step: meta("step")?.parse().map_err(|_| anyhow::anyhow!("{file}: metadata 'step' is not a number"))?,
            tensors,
        })
    }
}

fn read_tensor(state: &State, source: &str, axis: usize, file: &str) -> anyhow::Result<AdapterTensor> {
    let (index, values) = (format!("{source}.index"), format!("{source}.values"));
    let rows: Vec<usize> = match state.tensors.get(&index) {
        Some(StateTensor::I64 { shape, data }) if shape.len() == 1 => data
            .iter()
            .map(|&r| usize::try_from(r).map_err(|_| anyhow::anyhow!("{file}: '{index}' holds the negative row {r}")))
            .collect::<anyhow::Result<_>>()?,
        Some(_) => bail!("{file}: '{index}' must be a 1-D INT64 tensor"),
        None => bail!("{file}: tensor '{index}' is missing"),
    };
    let (shape, data) = match state.tensors.get(&values) {
        Some(StateTensor::F32 { shape, data }) => (shape.clone(), data.clone()),
        Some(_) => bail!("{file}: '{values}' must be a FLOAT tensor"),
        None => bail!("{file}: tensor '{values}' is missing"),
    };
    if shape.get(axis) != Some(&rows.len()) {
        bail!("{file}: '{values}' has shape {shape:?}, but '{index}' lists {} rows along axis {axis}", rows.len());
    }
    Ok(AdapterTensor { source: source.to_string(), axis, rows, shape, values: data })
}

/// SHA-256 of a file, as hex: how plans and adapters identify the base model.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    Ok(crate::artifact::SourceInfo::of_file(path)?.sha256)
}
