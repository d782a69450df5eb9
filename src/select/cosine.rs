//! The paper's rule: how far each neuron moved in a short full fine-tuning run,
//! measured as the cosine similarity between its weights in the base model and in
//! the tuned reference (lowest similarity = most sensitive).
//!
//! In: the base model, a reference (`.onnx`, or `.safetensors` whose tensor names are
//! the base model's initializer names), the members to score. Out: per member and row,
//! `1 - cos(base row, reference row)` (higher = moved more).

use super::units::Member;
use crate::onnx::Model;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::Path;

/// The tuned model's tensors, by initializer name.
pub enum Reference {
    Onnx(Box<Model>),
    Safetensors { path: String, map: memmap2::Mmap },
}

impl Reference {
    pub fn open(path: &Path) -> anyhow::Result<Reference> {
        let file = path.display().to_string();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let f = std::fs::File::open(path).with_context(|| format!("{file}: cannot open the reference"))?;
            // SAFETY: read-only map; the same contract as the model loader's (onnx::load).
            let map = unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("{file}: cannot map the reference"))?;
            safetensors::SafeTensors::deserialize(&map)
                .map_err(|e| anyhow::anyhow!("{file}: not a valid safetensors file: {e}"))?;
            return Ok(Reference::Safetensors { path: file, map });
        }
        Ok(Reference::Onnx(Box::new(crate::onnx::load(path)?)))
    }

    fn label(&self) -> String {
        match self {
            Reference::Onnx(m) => m.display_path(),
            Reference::Safetensors { path, .. } => path.clone(),
        }
    }

    /// The tensor `name` as f32, checked to have shape `dims`.
    pub fn tensor(&self, name: &str, dims: &[i64], what: &str) -> anyhow::Result<Vec<f32>> {
        let label = self.label();
        let missing = || {
            anyhow::anyhow!(
                "reference {label} has no tensor '{name}' ({what}); tensors are matched to the model's by initializer name"
            )
        };
        let shape_err = |got: &[i64]| {
            anyhow::anyhow!(
                "reference {label}: tensor '{name}' ({what}) has shape {got:?}, but the model's is {dims:?}"
            )
        };
        match self {
            Reference::Onnx(m) => {
                let t = m.graph().initializer.iter().find(|t| t.name() == name).ok_or_else(missing)?;
                if t.dims != dims {
                    return Err(shape_err(&t.dims));
                }
                Ok(m.tensor_f32(t)?)
            }
            Reference::Safetensors { map, .. } => {
                let st = safetensors::SafeTensors::deserialize(map).expect("checked at open");
                let t = st.tensor(name).map_err(|_| missing())?;
                let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
                if shape != dims {
                    return Err(shape_err(&shape));
                }
                to_f32(t.dtype(), t.data()).with_context(|| format!("reference {label}: tensor '{name}'"))
            }
        }
    }
}

fn to_f32(dtype: safetensors::Dtype, data: &[u8]) -> anyhow::Result<Vec<f32>> {
    match crate::precision::FloatFormat::try_from(dtype) {
        Ok(format) => Ok(format.decode(data)),
        Err(other) => bail!("element type {other:?} is not a float type"),
    }
}

/// `1 - cos` per row of every member, keyed by (weight, axis).
pub fn cosine_scores(
    model: &Model,
    reference: &Reference,
    members: &[(&Member, &str)],
) -> anyhow::Result<HashMap<(String, usize), Vec<f64>>> {
    let mut out = HashMap::new();
    for (m, role) in members {
        let init = model
            .graph()
            .initializer
            .iter()
            .find(|t| t.name() == m.weight)
            .with_context(|| format!("{}: initializer '{}' not found", model.display_path(), m.weight))?;
        let base = model.tensor_f32(init)?;
        let tuned = reference.tensor(&m.weight, &init.dims, role)?;
        out.insert((m.weight.clone(), m.axis), row_distance(&base, &tuned, &init.dims, m.axis));
    }
    Ok(out)
}

/// `1 - cos(a_r, b_r)` for every slice `r` along `axis`. Two zero rows are identical
/// (0); a zero row against a non-zero one is orthogonal (1).
pub fn row_distance(a: &[f32], b: &[f32], dims: &[i64], axis: usize) -> Vec<f64> {
    let n = dims[axis] as usize;
    let inner: usize = dims[axis + 1..].iter().product::<i64>() as usize;
    let (mut dot, mut na, mut nb) = (vec![0f64; n], vec![0f64; n], vec![0f64; n]);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let r = (i / inner) % n;
        let (x, y) = (x as f64, y as f64);
        dot[r] += x * y;
        na[r] += x * x;
        nb[r] += y * y;
    }
    (0..n)
        .map(|r| match (na[r] > 0.0, nb[r] > 0.0) {
            (true, true) => 1.0 - dot[r] / (na[r].sqrt() * nb[r].sqrt()),
            (false, false) => 0.0,
            _ => 1.0,
        })
        .collect()
}
