//! `state.safetensors`: named tensors (FLOAT or INT64) with string metadata, written
//! atomically, read back with every name and shape checked.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub enum StateTensor {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I64 { shape: Vec<usize>, data: Vec<i64> },
}

impl StateTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            StateTensor::F32 { shape, .. } | StateTensor::I64 { shape, .. } => shape,
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            StateTensor::F32 { data, .. } => data.len() * 4,
            StateTensor::I64 { data, .. } => data.len() * 8,
        }
    }
}

/// Where a tensor's bytes come from when a state is written.
enum Source<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
    Zeros,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub tensors: BTreeMap<String, StateTensor>,
    pub metadata: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: not a valid safetensors file: {why}")]
    Format { file: String, why: String },
}

impl State {
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        self.save_with_zeros(path, &[])
    }

    /// Saves the tensors plus FLOAT tensors of zeros named in `zeros` (optimizer moments
    /// at the start), streamed to the file: nothing is copied or allocated for them, so
    /// a multi-gigabyte state costs no more memory than its non-zero tensors.
    pub fn save_with_zeros(&self, path: &Path, zeros: &[(String, Vec<usize>)]) -> Result<(), StateError> {
        let file = path.display().to_string();
        let mut entries: Vec<(&str, &str, &[usize], Source)> = self
            .tensors
            .iter()
            .map(|(n, t)| match t {
                StateTensor::F32 { shape, data } => (n.as_str(), "F32", shape.as_slice(), Source::F32(data)),
                StateTensor::I64 { shape, data } => (n.as_str(), "I64", shape.as_slice(), Source::I64(data)),
            })
            .collect();
        entries.extend(zeros.iter().map(|(n, shape)| (n.as_str(), "F32", shape.as_slice(), Source::Zeros)));
        entries.sort_by(|a, b| a.0.cmp(b.0));
        if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(StateError::Format { file, why: format!("tensor '{}' is given twice", w[0].0) });
        }
        // The safetensors layout: header length (u64 LE), JSON header padded with
        // spaces to a multiple of 8, then every tensor's bytes back to back.
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for (name, dtype, shape, _) in &entries {
            let bytes = shape.iter().product::<usize>() * if *dtype == "I64" { 8 } else { 4 };
            header.insert(
                name.to_string(),
                serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes] }),
            );
            offset += bytes;
        }
        if !self.metadata.is_empty() {
            header.insert("__metadata__".into(), serde_json::to_value(&self.metadata).expect("strings"));
        }
        let mut text = serde_json::to_string(&header).expect("serializable");
        while text.len() % 8 != 0 {
            text.push(' ');
        }
        crate::fsutil::write_atomic(path, |w| {
            w.write_all(&(text.len() as u64).to_le_bytes())?;
            w.write_all(text.as_bytes())?;
            for (_, _, shape, source) in &entries {
                match source {
                    Source::F32(d) => d.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))?,
                    Source::I64(d) => d.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))?,
                    Source::Zeros => {
                        let zeros = [0u8; 1 << 16];
                        let mut left = shape.iter().product::<usize>() * 4;
                        while left > 0 {
                            let n = left.min(zeros.len());
                            w.write_all(&zeros[..n])?;
                            left -= n;
                        }
                    }
                }
            }
            Ok(())
        })
        .map_err(|source| StateError::Io { file, source })
    }

    /// A metadata value; the error names the file, the key and what the file should be.
    pub fn meta(&self, file: &str, what: &str, key: &str) -> anyhow::Result<String> {
        self.metadata
            .get(key)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{file}: not a {what}: metadata '{key}' is missing"))
    }

    pub fn load(path: &Path) -> Result<State, StateError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| StateError::Io { file: file.clone(), source })?;
        let format = |why: String| StateError::Format { file: file.clone(), why };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            let t = match view.dtype() {
                safetensors::Dtype::F32 => StateTensor::F32 {
                    shape,
                    data: data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                },
                safetensors::Dtype::I64 => StateTensor::I64 {
                    shape,
                    data: data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
                },
                other => {
                    return Err(format(format!("tensor '{name}' has type {other:?}; state tensors are F32 or I64")))
                }
            };
            tensors.insert(name, t);
        }
        Ok(State { tensors, metadata: meta.metadata().clone().unwrap_or_default() })
    }
}
