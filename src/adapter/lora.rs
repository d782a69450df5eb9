//! Folding a trained LoRA state into its base weights: `W' = W + scale·A·B` (`(A·B)ᵀ`
//! for a weight stored `[out, in]`), for `neft export --merged`.
//!
//! In: a `lora` plan, a trained state, the base model. Out: an [`Adapter`] holding every
//! row of each adapted weight (the merged values), which [`merge`](super::merge) writes
//! over the base like any other adapter.

use super::{Adapter, AdapterTensor};
use crate::artifact::{Plan, State, StateTensor};
use crate::onnx::Model;
use crate::types::LoraPart;
use anyhow::{bail, Context};

impl Adapter {
    /// The merged weights of a LoRA `state`, every row of each adapted weight.
    pub fn merged_lora(plan: &Plan, state: &State, base: &Model) -> anyhow::Result<Adapter> {
        let inits: std::collections::HashMap<&str, &crate::onnx::proto::TensorProto> =
            base.graph().initializer.iter().map(|t| (t.name(), t)).collect();
        let mut tensors = vec![];
        for a in plan.params.iter().filter(|p| p.lora.is_some_and(|f| f.part == LoraPart::A)) {
            let factor = a.lora.expect("filtered");
            let b = plan
                .params
                .iter()
                .find(|p| p.source == a.source && p.lora.is_some_and(|f| f.part == LoraPart::B))
                .with_context(|| format!("the plan has LoRA factor A of '{}' but no B", a.source))?;
            let w = inits
                .get(a.source.as_str())
                .with_context(|| format!("{}: has no initializer '{}' to merge into", base.display_path(), a.source))?;
            let (a_data, b_data) = (values(state, &a.name)?, values(state, &b.name)?);
            let (n_in, rank, n_out) = (a.shape[0] as usize, a.shape[1] as usize, b.shape[1] as usize);
            let shape: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
            let want = if factor.transposed { [n_out, n_in] } else { [n_in, n_out] };
            if shape != want {
                bail!("'{}' has shape {shape:?}, but its LoRA factors make a {want:?} update", a.source);
            }
            let mut merged = base.tensor_f32(w)?;
            for i in 0..n_in {
                for o in 0..n_out {
                    let dot: f64 = (0..rank).map(|k| a_data[i * rank + k] as f64 * b_data[k * n_out + o] as f64).sum();
                    let at = if factor.transposed { o * n_in + i } else { i * n_out + o };
                    merged[at] = (merged[at] as f64 + factor.scale as f64 * dot) as f32;
                }
            }
            tensors.push(AdapterTensor {
                source: a.source.clone(),
                axis: 0,
                rows: (0..shape[0]).collect(),
                shape,
                values: merged,
            });
        }
        Adapter::of_plan(plan, state, tensors)
    }
}

fn values<'a>(state: &'a State, name: &str) -> anyhow::Result<&'a [f32]> {
    match state.tensors.get(name) {
        Some(StateTensor::F32 { data, .. }) => Ok(data),
        Some(_) => bail!("state tensor '{name}' is not FLOAT"),
        None => bail!("the state has no tensor '{name}'"),
    }
}
