//! A training session over an artifact directory: the train-step and eval graphs in
//! ONNX Runtime, and the state (trainable tensors, moments, step) fed back after
//! every step.
//!
//! In: `OUT/` from `neft-compile`, batches of named tensors. Out: losses, gradient
//! norms, and the updated [`State`].

use crate::artifact::{Plan, State, StateTensor};
use crate::runtime::ort::{HostTensor, Session, SessionOptions};
use crate::runtime::train_pair::open_train_and_eval;
use anyhow::{bail, Context};
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};

pub struct TrainSession {
    pub dir: PathBuf,
    pub plan: Plan,
    pub state: State,
    train: Session,
    eval: Session,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepOutput {
    pub loss: f32,
    pub grad_norm: f32,
    /// Tokens the loss averaged over (causal LM), else 0.
    pub tokens: f32,
}

impl TrainSession {
    /// Opens `dir` with its own `state.safetensors`.
    pub fn open(dir: &Path, opts: &SessionOptions) -> anyhow::Result<TrainSession> {
        let plan = Plan::load_dir(&dir)?;
        let state = State::load(&dir.join("state.safetensors"))?;
        Self::with_state(dir, plan, state, opts)
    }

    /// Opens `dir` with a given state (a checkpoint), checked against the plan.
    pub fn with_state(dir: &Path, plan: Plan, state: State, opts: &SessionOptions) -> anyhow::Result<TrainSession> {
        check_state(&plan, &state)?;
        let (train, eval) =
            open_train_and_eval(&dir.join("train_step.onnx"), &dir.join("eval.onnx"), &plan.loss.scalars(), opts)?;
        Ok(TrainSession { dir: dir.to_path_buf(), plan, state, train, eval })
    }

    /// One optimizer step on `batch` (the plan's data inputs) at learning rate `lr`.
    pub fn step(&mut self, batch: &[(&str, HostTensor)], lr: f32) -> anyhow::Result<StepOutput> {
        let mut feed: Vec<(&str, HostTensor)> = batch.to_vec();
        let state_inputs: Vec<(String, HostTensor)> =
            self.state.tensors.iter().map(|(n, t)| (n.clone(), to_host(t))).collect();
        feed.extend(state_inputs.iter().map(|(n, t)| (n.as_str(), t.clone())));
        feed.push((&self.plan.io.lr, HostTensor::f32(&[], vec![lr])));
        let outputs = self.train.run(&feed)?;
        let mut out = StepOutput { loss: f32::NAN, grad_norm: f32::NAN, tokens: 0.0 };
        for (name, value) in outputs {
            if name == self.plan.loss.loss {
                out.loss = scalar(&value)?;
            } else if name == self.plan.io.grad_norm {
                out.grad_norm = scalar(&value)?;
            } else if Some(&name) == self.plan.loss.tokens.as_ref() {
                out.tokens = scalar(&value)?;
            } else if let Some(input) = name.strip_suffix(".new") {
                let slot = self
                    .state
                    .tensors
                    .get_mut(input)
                    .with_context(|| format!("output '{name}' has no state tensor '{input}'"))?;
                *slot = from_host(&value).with_context(|| format!("output '{name}'"))?;
            }
        }
        Ok(out)
    }

    /// The loss on `batch` with the current state, no update.
    pub fn eval(&mut self, batch: &[(&str, HostTensor)]) -> anyhow::Result<f32> {
        let mut feed: Vec<(&str, HostTensor)> = batch.to_vec();
        let params: Vec<(String, HostTensor)> = self
            .plan
            .params
            .iter()
            .map(|p| Ok((p.name.clone(), to_host(self.state.tensors.get(&p.name).context("state lacks a parameter")?))))
            .collect::<anyhow::Result<_>>()?;
        feed.extend(params.iter().map(|(n, t)| (n.as_str(), t.clone())));
        let outputs = self.eval.run(&feed)?;
        let (_, loss) =
            outputs.iter().find(|(n, _)| n == &self.plan.loss.loss).context("eval graph has no loss output")?;
        scalar(loss)
    }
}

/// Every tensor the train step expects, with the right shape, and nothing else.
pub(crate) fn check_state(plan: &Plan, state: &State) -> anyhow::Result<()> {
    for (input, _) in &plan.io.updates {
        let Some(t) = state.tensors.get(input) else { bail!("state has no tensor '{input}'") };
        if let Some(p) = plan.params.iter().find(|p| p.name == *input || input.starts_with(&format!("{}.", p.name))) {
            let want: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            if t.shape() != want.as_slice() {
                bail!("state tensor '{input}' has shape {:?}, the plan needs {want:?}", t.shape());
            }
        }
    }
    if let Some(extra) = state.tensors.keys().find(|k| !plan.io.updates.iter().any(|(i, _)| i == *k)) {
        bail!("state has a tensor '{extra}' that the plan does not use");
    }
    if let Some(h) = state.metadata.get("plan") {
        if *h != plan.hash() {
            bail!("state was made for plan {h}, these artifacts are plan {}", plan.hash());
        }
    }
    Ok(())
}

fn to_host(t: &StateTensor) -> HostTensor {
    match t {
        StateTensor::F32 { shape, data } => {
            HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data.clone()).expect("state shape"))
        }
        StateTensor::I64 { shape, data } => {
            HostTensor::I64(ArrayD::from_shape_vec(IxDyn(shape), data.clone()).expect("state shape"))
        }
    }
}

fn from_host(t: &HostTensor) -> anyhow::Result<StateTensor> {
    Ok(match t {
        HostTensor::F32(a) => StateTensor::F32 { shape: a.shape().to_vec(), data: a.iter().copied().collect() },
        HostTensor::I64(a) => StateTensor::I64 { shape: a.shape().to_vec(), data: a.iter().copied().collect() },
        other => bail!("unexpected output type with shape {:?}", other.shape()),
    })
}

fn scalar(t: &HostTensor) -> anyhow::Result<f32> {
    match t {
        HostTensor::F32(a) if a.len() == 1 => Ok(a.iter().next().copied().unwrap()),
        other => bail!("expected a FLOAT scalar, got shape {:?}", other.shape()),
    }
}
