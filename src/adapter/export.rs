//! From a trained state to an [`Adapter`]: the selected rows of every trainable tensor.

use super::{Adapter, AdapterTensor};
use crate::artifact::{Plan, State, StateTensor};
use crate::compile::take_rows;
use anyhow::{bail, Context};

impl Adapter {
    /// The adapter of `state` (trained under `plan`). Split-mode parameters are the rows
    /// already; whole tensors (mask and full modes) are cut to the plan's rows.
    pub fn from_state(plan: &Plan, state: &State) -> anyhow::Result<Adapter> {
        if plan.lora.is_some() {
            bail!(
                "a LoRA artifact trains low-rank factors, not rows: it has no neft adapter; \
                 write the merged model with `neft export OUT --merged MERGED.onnx`"
            );
        }
        let mut tensors: Vec<AdapterTensor> = vec![];
        for p in &plan.params {
            if tensors.iter().any(|t| t.source == p.source) {
                bail!("the plan trains '{}' twice; an adapter holds one set of rows per tensor", p.source);
            }
            let data = match state.tensors.get(&p.name) {
                Some(StateTensor::F32 { data, .. }) => data,
                Some(_) => bail!("state tensor '{}' is not FLOAT", p.name),
                None => bail!("the state has no tensor '{}'", p.name),
            };
            let mut shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let whole = p.name == p.source;
            let values = if whole {
                shape[p.axis] = p.rows.len();
                take_rows(data, &p.shape, p.axis, &p.rows)
            } else {
                data.clone()
            };
            if shape.get(p.axis) != Some(&p.rows.len()) {
                bail!(
                    "parameter '{}' of shape {:?} does not hold {} rows on axis {}",
                    p.name,
                    p.shape,
                    p.rows.len(),
                    p.axis
                );
            }
            tensors.push(AdapterTensor { source: p.source.clone(), axis: p.axis, rows: p.rows.clone(), shape, values });
        }
        Adapter::of_plan(plan, state, tensors)
    }

    /// The adapter of `plan`'s artifacts holding `tensors`, at the step `state` reached.
    pub(super) fn of_plan(plan: &Plan, state: &State, mut tensors: Vec<AdapterTensor>) -> anyhow::Result<Adapter> {
        // The order a loaded adapter has too (its tensors are listed by name).
        tensors.sort_by(|a, b| a.source.cmp(&b.source));
        let step = match state.tensors.get(&plan.io.step) {
            Some(StateTensor::I64 { data, .. }) => *data.first().context("the step counter is empty")?,
            _ => 0,
        };
        Ok(Adapter {
            base_sha256: plan.source.sha256.clone(),
            base_path: plan.source.path.clone(),
            plan: plan.hash(),
            mode: plan.mode.clone(),
            step,
            tensors,
        })
    }
}
