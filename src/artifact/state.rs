//! `state.safetensors`: named tensors (FLOAT or INT64) with string metadata, written
//! atomically, read back with every name and shape checked.

use std::collections::{BTreeMap, HashMap};
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
        let file = path.display().to_string();
        let raw: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, t)| match t {
                StateTensor::F32 { shape, data } => (
                    name.clone(),
                    safetensors::Dtype::F32,
                    shape.clone(),
                    data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
                StateTensor::I64 { shape, data } => (
                    name.clone(),
                    safetensors::Dtype::I64,
                    shape.clone(),
                    data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
            })
            .collect();
        let views = raw
            .iter()
            .map(|(n, dt, shape, bytes)| {
                Ok((n.clone(), safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)?))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| StateError::Format { file: file.clone(), why: e.to_string() })?;
        let bytes = safetensors::serialize(views, Some(self.metadata.clone()))
            .map_err(|e| StateError::Format { file: file.clone(), why: e.to_string() })?;
        crate::fsutil::write_bytes_atomic(path, &bytes).map_err(|source| StateError::Io { file, source })
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
