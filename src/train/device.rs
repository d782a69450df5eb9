//! Device-resident training: the train-step graph run through an ONNX Runtime
//! `IoBinding`, every state tensor (trainable rows, optimizer moments, step counter)
//! kept in two buffers on the execution provider's device.
//!
//! Stock ONNX Runtime cannot update an input in place, so each state tensor is
//! double-buffered: a step reads one buffer and writes the other, then the roles swap.
//! Nothing crosses to the host per step except three scalars (loss, token count,
//! gradient norm). On the CPU execution provider the "device" is host memory, but the
//! code path is the same: buffers are allocated, filled and read back through ONNX
//! Runtime, never touched directly.
//!
//! In: an artifact folder, a starting [`State`], batches of host tensors. Out: one
//! [`StepOutput`] per step, eval losses, and the [`State`] copied back on request
//! (checkpoints). Results are bit-identical to [`super::TrainSession::step`] on CPU.

use super::session::{check_state, StepOutput};
use crate::artifact::{Plan, State, StateTensor};
use crate::runtime::ort::{Ep, HostTensor, Session, SessionOptions};
use anyhow::{anyhow, bail, Context};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::IoBinding;
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};
use std::path::Path;

/// Both graphs of an artifact folder, with the state on the device.
pub struct DeviceTrainer {
    // Fields drop in this order: the buffers and bindings before the sessions whose
    // allocators own their memory.
    slots: Vec<Slot>,
    binding: IoBinding,
    eval_binding: IoBinding,
    train: Session,
    eval: Session,
    pub plan: Plan,
    /// Which buffer of every slot holds the current state (0 or 1).
    current: usize,
}

/// One state tensor: the graph input that reads it, the output that updates it, and
/// its two device buffers.
struct Slot {
    input: String,
    output: String,
    kind: Kind,
    shape: Vec<usize>,
    bufs: [DynTensor; 2],
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
        let train = Session::from_file(&dir.join("train_step.onnx"), &opts.for_train_step())?;
        let eval = Session::from_file(&dir.join("eval.onnx"), &opts.for_eval())?;
        let allocator = device_allocator(&train, opts.ep)?;
        let mut slots = Vec::with_capacity(plan.io.updates.len());
        for (input, output) in &plan.io.updates {
            let t = state.tensors.get(input).with_context(|| format!("state has no tensor '{input}'"))?;
            slots.push(Slot::upload(input, output, t, &allocator)?);
        }
        let binding = train.inner.create_binding().map_err(ort_err("train_step.onnx: IoBinding"))?;
        let eval_binding = eval.inner.create_binding().map_err(ort_err("eval.onnx: IoBinding"))?;
        let mut trainer = DeviceTrainer { slots, binding, eval_binding, train, eval, plan, current: 0 };
        trainer.bind_scalar_outputs()?;
        Ok(trainer)
    }

    /// The loss, token count and gradient norm come back to host memory; nothing else.
    fn bind_scalar_outputs(&mut self) -> anyhow::Result<()> {
        let host = host_memory()?;
        let mut train_out = vec![self.plan.loss.loss.clone(), self.plan.io.grad_norm.clone()];
        let mut eval_out = vec![self.plan.loss.loss.clone()];
        if let Some(t) = &self.plan.loss.tokens {
            train_out.push(t.clone());
            eval_out.push(t.clone());
        }
        eval_out.extend(self.plan.loss.correct.clone());
        for name in train_out {
            self.binding.bind_output_to_device(name.as_str(), &host).map_err(ort_err(&format!("output '{name}'")))?;
        }
        for name in eval_out {
            self.eval_binding
                .bind_output_to_device(name.as_str(), &host)
                .map_err(ort_err(&format!("eval output '{name}'")))?;
        }
        Ok(())
    }

    /// One optimizer step on `batch` (the plan's data inputs) at learning rate `lr`.
    pub fn step(&mut self, batch: &[(&str, HostTensor)], lr: f32) -> anyhow::Result<StepOutput> {
        for (name, t) in batch {
            self.binding.bind_input(*name, &host_value(t)?).map_err(ort_err(&format!("input '{name}'")))?;
        }
        let lr_value = Tensor::from_array((Vec::<usize>::new(), vec![lr])).map_err(ort_err("lr"))?;
        self.binding.bind_input(self.plan.io.lr.as_str(), &lr_value).map_err(ort_err("input 'lr'"))?;
        let read = self.current;
        for slot in &mut self.slots {
            let [a, b] = &mut slot.bufs;
            let (src, dst) = if read == 0 { (a, b) } else { (b, a) };
            self.binding.bind_input(slot.input.as_str(), &*src).map_err(ort_err(&slot.input))?;
            self.binding.bind_output(slot.output.as_str(), dst).map_err(ort_err(&slot.output))?;
        }
        let outputs = self.train.inner.run_binding(&self.binding).map_err(ort_err("train_step.onnx: run failed"))?;
        let get = |name: &str| -> anyhow::Result<f32> {
            let v = outputs.get(name).with_context(|| format!("train_step.onnx: output '{name}' missing"))?;
            v.try_extract_scalar::<f32>().map_err(ort_err(&format!("train_step.onnx: output '{name}'")))
        };
        let out = StepOutput {
            loss: get(&self.plan.loss.loss)?,
            grad_norm: get(&self.plan.io.grad_norm)?,
            tokens: match &self.plan.loss.tokens {
                Some(t) => get(t)?,
                None => 0.0,
            },
        };
        drop(outputs);
        self.current = 1 - read;
        Ok(out)
    }

    /// The loss, its token count and (for classification) the rows predicted right on
    /// `batch` with the current state, no update.
    pub fn eval(&mut self, batch: &[(&str, HostTensor)]) -> anyhow::Result<(f32, f32, Option<f32>)> {
        for (name, t) in batch {
            self.eval_binding.bind_input(*name, &host_value(t)?).map_err(ort_err(&format!("input '{name}'")))?;
        }
        for slot in &self.slots {
            if self.plan.params.iter().any(|p| p.name == slot.input) {
                self.eval_binding
                    .bind_input(slot.input.as_str(), &slot.bufs[self.current])
                    .map_err(ort_err(&slot.input))?;
            }
        }
        let outputs = self.eval.inner.run_binding(&self.eval_binding).map_err(ort_err("eval.onnx: run failed"))?;
        let get = |name: &str| -> anyhow::Result<f32> {
            let v = outputs.get(name).with_context(|| format!("eval.onnx: output '{name}' missing"))?;
            v.try_extract_scalar::<f32>().map_err(ort_err(&format!("eval.onnx: output '{name}'")))
        };
        let loss = get(&self.plan.loss.loss)?;
        let tokens = match &self.plan.loss.tokens {
            Some(t) => get(t)?,
            None => 1.0,
        };
        let correct = self.plan.loss.correct.as_deref().map(get).transpose()?;
        Ok((loss, tokens, correct))
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

impl Slot {
    fn upload(input: &str, output: &str, t: &StateTensor, allocator: &Allocator) -> anyhow::Result<Slot> {
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
        let host = host.map_err(ort_err(&what))?;
        let ty = match kind {
            Kind::F32 => TensorElementType::Float32,
            Kind::I64 => TensorElementType::Int64,
        };
        let alloc = || DynTensor::new(allocator, ty, shape.clone()).map_err(ort_err(&format!("{what}: device buffer")));
        let mut bufs = [alloc()?, alloc()?];
        host.copy_into(&mut bufs[0]).map_err(ort_err(&format!("{what}: copy to the device")))?;
        Ok(Slot { input: input.into(), output: output.into(), kind, shape, bufs })
    }

    fn download(&self, which: usize) -> anyhow::Result<StateTensor> {
        let what = format!("state tensor '{}'", self.input);
        let host =
            self.bufs[which].to(AllocationDevice::CPU, 0).map_err(ort_err(&format!("{what}: copy to the host")))?;
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

/// Buffers live where the execution provider computes: host memory for the CPU EP,
/// device memory for CUDA.
fn device_allocator(session: &Session, ep: Ep) -> anyhow::Result<Allocator> {
    match ep {
        Ep::Cpu => Ok(Allocator::default()),
        Ep::Cuda { device } => {
            let info = MemoryInfo::new(AllocationDevice::CUDA, device, AllocatorType::Device, MemoryType::Default)
                .map_err(ort_err("CUDA memory info"))?;
            Allocator::new(&session.inner, info).map_err(ort_err(&format!("CUDA allocator on device {device}")))
        }
    }
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
