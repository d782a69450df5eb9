//! Device-resident training: the train-step graph run with every state tensor
//! (trainable rows, optimizer moments, step counter) kept where the execution provider
//! computes, never copied to the host per step.
//!
//! Stock ONNX Runtime cannot update an input in place, so a step reads the state and
//! writes its successor:
//! - on CUDA each state tensor has two device buffers, bound through an `IoBinding`:
//!   a step reads one and writes the other, then the roles swap;
//! - on the CPU a plain run reads the state values and the outputs it returns become
//!   the next state (no copies either way, no second set of buffers). A CPU
//!   `IoBinding` would do the same work, but ONNX Runtime's CPU arena grew further
//!   with it: on SmolLM2's shape the peak was 0.04-0.26 GB higher (batch 4 x 64 and
//!   8 x 256), and 0.8 GB higher at 8 x 128 before the backward pass held fewer
//!   activations.
//!
//! Nothing crosses to the host per step except three scalars (loss, token count,
//! gradient norm).
//!
//! In: an artifact folder, a starting [`State`], batches of host tensors. Out: one
//! [`StepOutput`] per step, eval losses, and the [`State`] copied back on request
//! (checkpoints). Results are bit-identical to [`super::TrainSession::step`] on CPU.

use super::session::{check_state, StepOutput};
use crate::artifact::{Plan, State, StateTensor};
use crate::runtime::ort::{Ep, HostTensor, Session, SessionOptions};
use crate::runtime::train_pair::open_train_and_eval;
use anyhow::{anyhow, bail, Context};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{HasSelectedOutputs, IoBinding, OutputSelector, RunOptions, SessionInputValue, SessionOutputs};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};
use std::path::Path;

/// Both graphs of an artifact folder, with the state on the device.
pub struct DeviceTrainer {
    // Fields drop in this order: the buffers and bindings before the sessions whose
    // allocators own their memory.
    slots: Vec<Slot>,
    runs: Runs,
    train: Session,
    eval: Session,
    pub plan: Plan,
    /// With bindings: which buffer of every slot holds the current state (0 or 1).
    current: usize,
}

/// How the graphs run: through bindings to device buffers (CUDA), or plainly, each
/// fetching only what it needs (CPU).
enum Runs {
    Bound { train: IoBinding, eval: IoBinding },
    Plain { train: RunOptions<HasSelectedOutputs>, eval: RunOptions<HasSelectedOutputs> },
}

/// One state tensor: the graph input that reads it, the output that updates it, and
/// where its value lives.
struct Slot {
    input: String,
    output: String,
    kind: Kind,
    shape: Vec<usize>,
    value: Residence,
}

enum Residence {
    /// Two device buffers (CUDA): a step reads one and writes the other.
    Pair([DynTensor; 2]),
    /// The current value in host memory (CPU): a step's output replaces it.
    Chained(DynValue),
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    F32,
    I64,
}

fn ort_err(what: &str) -> impl Fn(ort::Error) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

impl DeviceTrainer {
    /// Opens the train-step and eval graphs of `dir` and uploads `state` (checked
    /// against the plan first).
    pub fn new(dir: &Path, plan: Plan, state: &State, opts: &SessionOptions) -> anyhow::Result<DeviceTrainer> {
        check_state(&plan, state)?;
        let (train, eval) =
            open_train_and_eval(&dir.join("train_step.onnx"), &dir.join("eval.onnx"), &plan.loss.scalars(), opts)?;
        let allocator = match opts.ep {
            Ep::Cpu => None,
            Ep::Cuda { device } => Some(cuda_allocator(&train, device)?),
        };
        let mut slots = Vec::with_capacity(plan.io.updates.len());
        for (input, output) in &plan.io.updates {
            let t = state.tensors.get(input).with_context(|| format!("state has no tensor '{input}'"))?;
            slots.push(Slot::upload(input, output, t, allocator.as_ref())?);
        }
        let runs = match opts.ep {
            Ep::Cpu => {
                let mut train_outputs = train_scalars(&plan);
                train_outputs.extend(slots.iter().map(|s| s.output.clone()));
                Runs::Plain { train: run_options(&train_outputs)?, eval: run_options(&plan.loss.scalars())? }
            }
            Ep::Cuda { .. } => Runs::Bound {
                train: train.inner.create_binding().map_err(ort_err("train_step.onnx: IoBinding"))?,
                eval: eval.inner.create_binding().map_err(ort_err("eval.onnx: IoBinding"))?,
            },
        };
        let mut trainer = DeviceTrainer { slots, runs, train, eval, plan, current: 0 };
        trainer.bind_scalar_outputs()?;
        Ok(trainer)
    }

    /// With bindings, the scalars come back to host memory; nothing else does.
    fn bind_scalar_outputs(&mut self) -> anyhow::Result<()> {
        let Runs::Bound { train, eval } = &mut self.runs else { return Ok(()) };
        let host = host_memory()?;
        for name in train_scalars(&self.plan) {
            train.bind_output_to_device(name.as_str(), &host).map_err(ort_err(&format!("output '{name}'")))?;
        }
        for name in self.plan.loss.scalars() {
            eval.bind_output_to_device(name.as_str(), &host).map_err(ort_err(&format!("eval output '{name}'")))?;
        }
        Ok(())
    }

    /// One optimizer step on `batch` (the plan's data inputs) at learning rate `lr`.
    pub fn step(&mut self, batch: &[(&str, HostTensor)], lr: f32) -> anyhow::Result<StepOutput> {
        let lr_value = Tensor::from_array((Vec::<usize>::new(), vec![lr])).map_err(ort_err("lr"))?.into_dyn();
        let mut inputs = batch_values(batch)?;
        inputs.push((self.plan.io.lr.clone(), lr_value));
        let names = train_scalars(&self.plan);
        let what = "train_step.onnx";
        let scalars = match &mut self.runs {
            Runs::Bound { train: binding, .. } => {
                for (name, v) in &inputs {
                    binding.bind_input(name.as_str(), v).map_err(ort_err(&format!("input '{name}'")))?;
                }
                let read = self.current;
                for slot in &mut self.slots {
                    let Residence::Pair([a, b]) = &mut slot.value else {
                        bail!("{what}: state '{}' is not bound", slot.input)
                    };
                    let (src, dst) = if read == 0 { (a, b) } else { (b, a) };
                    binding.bind_input(slot.input.as_str(), &*src).map_err(ort_err(&slot.input))?;
                    binding.bind_output(slot.output.as_str(), dst).map_err(ort_err(&slot.output))?;
                }
                let outputs = self.train.inner.run_binding(binding).map_err(ort_err("train_step.onnx: run failed"))?;
                let scalars = read_scalars(&outputs, &names, what)?;
                drop(outputs);
                self.current = 1 - read;
                scalars
            }
            Runs::Plain { train: options, .. } => {
                let mut results = run_plain(&mut self.train, options, &inputs, &self.slots, what)?;
                let scalars = read_scalars(&results, &names, what)?;
                for slot in &mut self.slots {
                    let next = results
                        .remove(&slot.output)
                        .with_context(|| format!("{what}: output '{}' missing", slot.output))?;
                    slot.value = Residence::Chained(next);
                }
                scalars
            }
        };
        Ok(StepOutput { loss: scalars[0], grad_norm: scalars[1], tokens: scalars.get(2).copied().unwrap_or(0.0) })
    }

    /// The loss, its token count and (for classification) the rows predicted right on
    /// `batch` with the current state, no update.
    pub fn eval(&mut self, batch: &[(&str, HostTensor)]) -> anyhow::Result<(f32, f32, Option<f32>)> {
        let inputs = batch_values(batch)?;
        let names = self.plan.loss.scalars();
        let what = "eval.onnx";
        let params: Vec<&Slot> =
            self.slots.iter().filter(|slot| self.plan.params.iter().any(|p| p.name == slot.input)).collect();
        let scalars = match &mut self.runs {
            Runs::Bound { eval: binding, .. } => {
                for (name, v) in &inputs {
                    binding.bind_input(name.as_str(), v).map_err(ort_err(&format!("input '{name}'")))?;
                }
                for slot in params {
                    let Residence::Pair(bufs) = &slot.value else {
                        bail!("{what}: state '{}' is not bound", slot.input)
                    };
                    binding.bind_input(slot.input.as_str(), &bufs[self.current]).map_err(ort_err(&slot.input))?;
                }
                let outputs = self.eval.inner.run_binding(binding).map_err(ort_err("eval.onnx: run failed"))?;
                read_scalars(&outputs, &names, what)?
            }
            Runs::Plain { eval: options, .. } => {
                let results = run_plain(&mut self.eval, options, &inputs, &params, what)?;
                read_scalars(&results, &names, what)?
            }
        };
        let tokens = if self.plan.loss.tokens.is_some() { scalars[1] } else { 1.0 };
        let correct = self.plan.loss.correct.as_ref().map(|_| scalars[scalars.len() - 1]);
        Ok((scalars[0], tokens, correct))
    }

    /// The current state, copied back to the host (for checkpoints and exports).
    pub fn state(&self) -> anyhow::Result<State> {
        let mut state = State::default();
        for slot in &self.slots {
            state.tensors.insert(slot.input.clone(), slot.download(self.current)?);
        }
        state.metadata.insert("plan".into(), self.plan.hash());
        Ok(state)
    }

    /// Updates made so far: the state's `step` counter.
    pub fn steps_done(&self) -> anyhow::Result<i64> {
        let slot = self.slots.iter().find(|s| s.input == self.plan.io.step).context("the plan has no step counter")?;
        match slot.download(self.current)? {
            StateTensor::I64 { data, .. } if data.len() == 1 => Ok(data[0]),
            _ => bail!("state tensor '{}' is not an INT64 scalar", slot.input),
        }
    }
}

/// The outputs a train step hands back to the host: the loss, the gradient norm and
/// the token count.
fn train_scalars(plan: &Plan) -> Vec<String> {
    let mut names = vec![plan.loss.loss.clone(), plan.io.grad_norm.clone()];
    names.extend(plan.loss.tokens.clone());
    names
}

/// Run options that fetch `outputs` and nothing else.
fn run_options(outputs: &[String]) -> anyhow::Result<RunOptions<HasSelectedOutputs>> {
    let selector = outputs.iter().fold(OutputSelector::no_default(), |s, name| s.with(name.as_str()));
    Ok(RunOptions::new().map_err(ort_err("run options"))?.with_outputs(selector))
}

/// A plain run of `session` on `inputs` plus the state `slots` (borrowed, not
/// copied), fetching the outputs `options` select.
fn run_plain<'s, S: std::borrow::Borrow<Slot>>(
    session: &'s mut Session,
    options: &'s RunOptions<HasSelectedOutputs>,
    inputs: &[(String, DynValue)],
    slots: &[S],
    what: &str,
) -> anyhow::Result<SessionOutputs<'s>> {
    let mut values: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> = Vec::new();
    for (name, v) in inputs {
        values.push((name.as_str().into(), v.into()));
    }
    for slot in slots {
        let slot = slot.borrow();
        let Residence::Chained(v) = &slot.value else { bail!("{what}: state '{}' is on a device", slot.input) };
        values.push((slot.input.as_str().into(), v.into()));
    }
    session.inner.run_with_options(values, options).map_err(ort_err(&format!("{what}: run failed")))
}

/// The named FLOAT scalars among a run's outputs, in order.
fn read_scalars(outputs: &SessionOutputs<'_>, names: &[String], what: &str) -> anyhow::Result<Vec<f32>> {
    names
        .iter()
        .map(|name| {
            let v = outputs.get(name).with_context(|| format!("{what}: output '{name}' missing"))?;
            v.try_extract_scalar::<f32>().map_err(ort_err(&format!("{what}: output '{name}'")))
        })
        .collect()
}

/// The batch tensors as ONNX Runtime values (host memory; ORT copies them to the
/// device when it binds them).
fn batch_values(batch: &[(&str, HostTensor)]) -> anyhow::Result<Vec<(String, DynValue)>> {
    batch.iter().map(|(name, t)| Ok((name.to_string(), host_value(t)?))).collect()
}

impl Slot {
    fn upload(input: &str, output: &str, t: &StateTensor, allocator: Option<&Allocator>) -> anyhow::Result<Slot> {
        let what = format!("state tensor '{input}'");
        let shape = t.shape().to_vec();
        let (kind, host) = match t {
            StateTensor::F32 { data, .. } => {
                (Kind::F32, Tensor::from_array((shape.clone(), data.clone())).map(|t| t.upcast()))
            }
            StateTensor::I64 { data, .. } => {
                (Kind::I64, Tensor::from_array((shape.clone(), data.clone())).map(|t| t.upcast()))
            }
        };
        let host: DynTensor = host.map_err(ort_err(&what))?;
        let value = match allocator {
            None => Residence::Chained(host.into_dyn()),
            Some(allocator) => {
                let ty = match kind {
                    Kind::F32 => TensorElementType::Float32,
                    Kind::I64 => TensorElementType::Int64,
                };
                let alloc =
                    || DynTensor::new(allocator, ty, shape.clone()).map_err(ort_err(&format!("{what}: device buffer")));
                let mut bufs = [alloc()?, alloc()?];
                host.copy_into(&mut bufs[0]).map_err(ort_err(&format!("{what}: copy to the device")))?;
                Residence::Pair(bufs)
            }
        };
        Ok(Slot { input: input.into(), output: output.into(), kind, shape, value })
    }

    fn download(&self, current: usize) -> anyhow::Result<StateTensor> {
        let what = format!("state tensor '{}'", self.input);
        let copied;
        let host: &DynValue = match &self.value {
            Residence::Chained(v) => v,
            Residence::Pair(bufs) => {
                copied = bufs[current]
                    .to(AllocationDevice::CPU, 0)
                    .map_err(ort_err(&format!("{what}: copy to the host")))?
                    .into_dyn();
                &copied
            }
        };
        let shape = self.shape.clone();
        Ok(match self.kind {
            Kind::F32 => StateTensor::F32 {
                shape,
                data: host.try_extract_array::<f32>().map_err(ort_err(&what))?.iter().copied().collect(),
            },
            Kind::I64 => StateTensor::I64 {
                shape,
                data: host.try_extract_array::<i64>().map_err(ort_err(&what))?.iter().copied().collect(),
            },
        })
    }
}

/// State buffers on CUDA live in the device's memory.
fn cuda_allocator(session: &Session, device: i32) -> anyhow::Result<Allocator> {
    let info = MemoryInfo::new(AllocationDevice::CUDA, device, AllocatorType::Device, MemoryType::Default)
        .map_err(ort_err("CUDA memory info"))?;
    Allocator::new(&session.inner, info).map_err(ort_err(&format!("CUDA allocator on device {device}")))
}

fn host_memory() -> anyhow::Result<MemoryInfo<'static>> {
    MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::CPUOutput)
        .map_err(ort_err("host memory info"))
}

/// A batch tensor as an ONNX Runtime value (host memory; ORT copies it to the device
/// when it binds it).
fn host_value(t: &HostTensor) -> anyhow::Result<DynValue> {
    let v = match t {
        HostTensor::F32(a) => Tensor::from_array(a.clone()).map(|t| t.into_dyn()),
        HostTensor::I64(a) => Tensor::from_array(a.clone()).map(|t| t.into_dyn()),
        other => bail!("batch tensors must be FLOAT or INT64, got another type with shape {:?}", other.shape()),
    };
    v.map_err(ort_err("batch tensor"))
}
