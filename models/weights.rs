//! Weights from a HuggingFace checkpoint folder (`*.safetensors`, memory-mapped),
//! converted to f32 on request.

use super::llama::WeightSource;
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
            let d = view.data();
            return Ok(match view.dtype() {
                safetensors::Dtype::F32 => {
                    d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
                }
                safetensors::Dtype::F16 => {
                    d.chunks_exact(2).map(|c| crate::onnx::f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect()
                }
                safetensors::Dtype::BF16 => {
                    d.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect()
                }
                other => {
                    bail!("{}: tensor '{name}' has type {other:?}; F32, F16 and BF16 are supported", path.display())
                }
            });
        }
        bail!("no safetensors file has the tensor '{name}'")
    }
}
