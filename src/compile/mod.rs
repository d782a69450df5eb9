//! `neft-compile`: from a model and a neuron set to the artifact directory.
//!
//! In: a loaded model, the selected neurons, options. Out: `OUT/` (see
//! [`crate::artifact`]) and the [`Plan`] describing it. The passes run in this order:
//! loss → split rows (or masks) → [eval graph taken here] → autodiff → optimizer →
//! dead-node elimination.

use crate::analyze::{find_layers, Layer};
use crate::artifact::{write_artifacts, Counts, Graphs, ModelLayer, Plan, SourceInfo, State, StateTensor, PLAN_FORMAT};
use crate::ir::Graph;
use crate::onnx::make::value_info_unshaped;
use crate::onnx::{DataType, Model};
use crate::optim::{self, Optimizer, OptimizerIo, Param};
use crate::passes::append_loss::{append_loss, append_loss_training};
use crate::passes::lora::lora;
use crate::passes::mask_params::{self, mask_params};
use crate::passes::split_rows::split_rows;
use crate::types::{LoraOptions, LossInfo, LossSpec, NeuronSet, Trainable};
pub use crate::types::{Mode, Unit};
use anyhow::{bail, Context};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct CompileOptions {
    pub mode: Mode,
    pub unit: Unit,
    pub loss: LossSpec,
    pub optimizer: Optimizer,
    /// Default learning rate recorded in the plan (the trainer may override it).
    pub lr: f32,
    pub clip: Option<f32>,
    /// The weights the neurons were selected from, recorded in the plan for the heat
    /// map; `None`: the layers of every module the neuron set trains.
    pub targets: Option<std::collections::BTreeSet<String>>,
    /// Rank, alpha and seed of `--mode lora` (required there, ignored otherwise).
    pub lora: Option<LoraOptions>,
}

/// Compiles `model` for training `neurons` and writes the artifacts to `out`.
pub fn compile(model: &Model, neurons: &NeuronSet, opts: &CompileOptions, out: &Path) -> anyhow::Result<Plan> {
    let label = model.display_path();
    let opset = default_opset(model);
    if opset < 13 {
        bail!("{label}: default-domain opset {opset} is too old to train; neft needs opset 13 or newer (re-export the model)");
    }
    let graph = Graph::from_proto(model.graph()).with_context(|| format!("{label}: invalid graph"))?;
    let layers = find_layers(&graph);
    let existing = existing_gradients(&graph, neurons)?;
    if existing.is_none() {
        neurons.check(&label, &layers)?;
    }
    let expanded;
    let neurons = match opts.unit {
        Unit::Neuron => neurons,
        Unit::MlpUnit => {
            let structure = crate::analyze::analyze_structure(&graph, &layers);
            if structure.mlps.is_empty() {
                bail!("{label}: --unit mlp-unit: no MLP blocks were recognized in this model (see the roles in `neft inspect`)");
            }
            expanded = neurons.expand_mlp_units(&structure.mlps);
            &expanded
        }
    };
    let full_rows;
    let neurons = match opts.mode {
        // LoRA adapts whole layers: the set only names them.
        Mode::Full | Mode::Lora => {
            full_rows = all_rows(neurons, &layers);
            &full_rows
        }
        _ => neurons,
    };
    if neurons.count() == 0 {
        bail!("the neuron set selects no neuron: nothing would train");
    }
    let data_inputs: Vec<String> =
        graph.inputs().filter(|i| graph.initializer(i.name()).is_none()).map(|i| i.name().to_string()).collect();
    if existing.is_some() && opts.mode != Mode::Mask {
        bail!("{label}: the graph already computes the gradients of the selected weights; compile it with --mode mask");
    }
    let Built { train, eval, mut params, loss, io, train_opset } = match existing {
        Some(grads) => masks_on_gradients(&graph, neurons, &grads, opts, opset)?,
        None => build(model, graph, &layers, neurons, opts)?,
    };
    let inits = graph_initializers(model);
    for p in &mut params {
        p.source_rows =
            inits.get(p.source.as_str()).and_then(|t| t.dims.get(p.axis)).copied().unwrap_or(0).max(0) as usize;
        p.role = match layers.iter().find(|l| l.weight == p.source || l.bias.as_deref() == Some(p.source.as_str())) {
            Some(l) if l.weight == p.source => l.role.clone(),
            Some(l) => format!("{} (bias)", l.role),
            None => String::new(),
        };
    }
    let seed = opts.lora.map_or(0, |l| l.seed);
    let (mut state, zeros) = initial_state(model, &inits, &params, &opts.optimizer, seed)?;
    let counts = counts(model, &layers, &params, &zeros, neurons, &train, &eval);
    let mut full_inputs = data_inputs.clone();
    full_inputs.extend(loss.labels.iter().cloned());
    let plan = Plan {
        format: PLAN_FORMAT.into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        source: source_info(model)?,
        mode: opts.mode.name().into(),
        lora: opts.lora.filter(|_| opts.mode == Mode::Lora),
        loss,
        optimizer: opts.optimizer,
        lr: opts.lr,
        clip: opts.clip,
        data_inputs: full_inputs,
        params,
        io,
        neurons: neurons.clone(),
        counts,
        layers: ModelLayer::list(&layers, neurons, opts.targets.as_ref()),
    };
    state.metadata.insert("plan".into(), plan.hash());
    let header = |g: &Graph, opset: i64| {
        let mut p = model.proto.clone();
        p.graph = Some(g.to_proto());
        crate::autodiff::set_default_opset(&mut p.opset_import, opset);
        p
    };
    let graphs = Graphs { train: header(&train, train_opset), eval: header(&eval, opset) };
    write_artifacts(out, model, graphs, &state, &zeros, &plan)?;
    Ok(plan)
}

/// Every row of every layer the set names, along the layer's neuron axis.
fn all_rows(neurons: &NeuronSet, layers: &[Layer]) -> NeuronSet {
    let mut out = neurons.clone();
    for (w, sel) in out.layers.iter_mut() {
        if let Some(l) = layers.iter().find(|l| &l.weight == w) {
            sel.axis = l.axis;
            sel.rows = (0..l.neurons).collect();
        }
    }
    out
}

/// The graphs and names a compile produces, before they are written.
struct Built {
    train: Graph,
    eval: Graph,
    params: Vec<Trainable>,
    loss: LossInfo,
    io: OptimizerIo,
    train_opset: i64,
}

/// The usual path: loss, split rows or masks, eval graph, autodiff, optimizer.
fn build(
    model: &Model,
    mut graph: Graph,
    layers: &[Layer],
    neurons: &NeuronSet,
    opts: &CompileOptions,
) -> anyhow::Result<Built> {
    let model_outputs = graph.outputs().to_vec();
    let loss = append_loss_training(&mut graph, &opts.loss, &|w| neurons.layers.contains_key(w))?;
    let params = match opts.mode {
        Mode::Split => split_rows(&mut graph, layers, neurons)?,
        Mode::Mask => mask_params(&mut graph, layers, neurons)?,
        Mode::Full => {
            let mut p = mask_params(&mut graph, layers, neurons)?;
            // Every row trains: the masks would be all true, so drop them.
            for t in &mut p {
                t.mask = None;
            }
            graph.eliminate_dead_initializers();
            p
        }
        Mode::Lora => {
            let options = opts.lora.context("--mode lora needs --rank")?;
            lora(&mut graph, layers, neurons, &options)?
        }
    };
    let eval = eval_graph(&graph, &loss, &model_outputs)?;
    let wrt: Vec<String> = params.iter().map(|p| p.name.clone()).collect();
    let grads = crate::autodiff::grad(&graph, &loss.loss, &wrt, &crate::autodiff::GradOptions::for_model(model))?;
    let mut train = grads.graph;
    let opt_params: Vec<Param> = params
        .iter()
        .map(|p| Param {
            name: p.name.clone(),
            grad: format!("{}.grad", p.name),
            shape: p.shape.clone(),
            mask: p.mask.clone(),
        })
        .collect();
    let io = finish_train_graph(&mut train, &opt_params, &loss, opts)?;
    Ok(Built { train, eval, params, loss, io, train_opset: grads.opset })
}

/// The eval graph: forward and loss, parameters as inputs, nothing else.
fn eval_graph(
    graph: &Graph,
    loss: &LossInfo,
    model_outputs: &[crate::onnx::proto::ValueInfoProto],
) -> anyhow::Result<Graph> {
    let mut eval = graph.clone();
    let mut outputs = vec![value_info_unshaped(&loss.loss, DataType::Float)];
    for count in loss.tokens.iter().chain(&loss.correct) {
        outputs.push(value_info_unshaped(count, DataType::Float));
    }
    outputs.extend(model_outputs.iter().filter(|o| o.name() != loss.loss && !is_gradient_name(o.name())).cloned());
    eval.set_outputs(outputs)?;
    eval.eliminate_dead();
    Ok(eval)
}

/// Appends the optimizer and keeps only the outputs a train step returns: loss, token
/// count, gradient norm, then every updated tensor.
fn finish_train_graph(
    train: &mut Graph,
    params: &[Param],
    loss: &LossInfo,
    opts: &CompileOptions,
) -> anyhow::Result<OptimizerIo> {
    let io = optim::append(train, params, opts.optimizer, opts.clip)?;
    let mut outputs = vec![value_info_unshaped(&loss.loss, DataType::Float)];
    if let Some(t) = &loss.tokens {
        outputs.push(value_info_unshaped(t, DataType::Float));
    }
    outputs.extend(train.outputs().iter().filter(|o| o.name() == io.grad_norm || o.name().ends_with(".new")).cloned());
    train.set_outputs(outputs)?;
    train.eliminate_dead();
    Ok(io)
}

fn is_gradient_name(name: &str) -> bool {
    name.ends_with(".grad") || name.ends_with("_grad")
}

/// For a graph that already computes gradients (an imported training graph): the
/// gradient output of every selected weight, named `<w>.grad` or `<w>_grad`.
fn existing_gradients(graph: &Graph, neurons: &NeuronSet) -> anyhow::Result<Option<Vec<(String, String)>>> {
    let outputs: Vec<&str> = graph.outputs().iter().map(|o| o.name()).collect();
    let found: Vec<(String, Option<String>)> = neurons
        .layers
        .keys()
        .map(|w| {
            (w.clone(), [format!("{w}.grad"), format!("{w}_grad")].into_iter().find(|g| outputs.contains(&g.as_str())))
        })
        .collect();
    let have = found.iter().filter(|(_, g)| g.is_some()).count();
    if have == 0 {
        return Ok(None);
    }
    if let Some((w, _)) = found.iter().find(|(_, g)| g.is_none()) {
        bail!("the graph has gradient outputs for some selected weights but not for '{w}' (expected '{w}.grad' or '{w}_grad')");
    }
    Ok(Some(found.into_iter().map(|(w, g)| (w, g.unwrap())).collect()))
}

/// Mask mode on an imported training graph: no autodiff; the existing gradients are
/// masked and the optimizer appended.
fn masks_on_gradients(
    graph: &Graph,
    neurons: &NeuronSet,
    grads: &[(String, String)],
    opts: &CompileOptions,
    opset: i64,
) -> anyhow::Result<Built> {
    let mut graph = graph.clone();
    let loss = match &opts.loss {
        LossSpec::CausalLm => bail!("--loss causal-lm cannot be appended to a graph that already computes gradients"),
        spec => append_loss(&mut graph, spec)?,
    };
    let model_outputs = graph.outputs().to_vec();
    let mut params = vec![];
    let mut opt_params = vec![];
    for (w, g) in grads {
        let sel = &neurons.layers[w];
        let t = mask_params::promote_with_mask(&mut graph, w, sel.axis, &sel.rows)?;
        opt_params.push(Param { name: t.name.clone(), grad: g.clone(), shape: t.shape.clone(), mask: t.mask.clone() });
        params.push(t);
    }
    let eval = eval_graph(&graph, &loss, &model_outputs)?;
    let mut train = graph;
    let io = finish_train_graph(&mut train, &opt_params, &loss, opts)?;
    Ok(Built { train, eval, params, loss, io, train_opset: opset })
}

fn default_opset(model: &Model) -> i64 {
    model
        .proto
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .unwrap_or(0)
}

fn graph_initializers(model: &Model) -> std::collections::HashMap<&str, &crate::onnx::proto::TensorProto> {
    model.graph().initializer.iter().map(|t| (t.name(), t)).collect()
}

/// Optimizer moments, all zero at the start: written straight to the file, never held.
type ZeroTensors = Vec<(String, Vec<usize>)>;

/// Trainable tensors start from the source weights (the selected rows in split mode;
/// LoRA factors from their own initialisation);
/// optimizer moments start at zero; `step` counts updates made.
fn initial_state(
    model: &Model,
    inits: &std::collections::HashMap<&str, &crate::onnx::proto::TensorProto>,
    params: &[Trainable],
    opt: &Optimizer,
    lora_seed: u64,
) -> anyhow::Result<(State, ZeroTensors)> {
    let mut state = State::default();
    let mut zeros = vec![];
    for p in params {
        let src = inits.get(p.source.as_str()).with_context(|| format!("initializer '{}' not found", p.source))?;
        // Only the selected rows are decoded: the rest of a frozen weight is never held
        // in memory.
        let data = match crate::passes::lora::initial_value(p, lora_seed) {
            Some(v) => v,
            None if p.name == p.source => model.tensor_f32(src)?,
            None => model.tensor_rows_f32(src, p.axis, &p.rows)?,
        };
        let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
        zeros.extend(opt.state_suffixes().iter().map(|suffix| (format!("{}{suffix}", p.name), shape.clone())));
        state.tensors.insert(p.name.clone(), StateTensor::F32 { shape, data });
    }
    state.tensors.insert("step".into(), StateTensor::I64 { shape: vec![], data: vec![0] });
    Ok((state, zeros))
}

/// The slices `rows` of `data` (shape `dims`) along `axis`, in order.
pub fn take_rows(data: &[f32], dims: &[i64], axis: usize, rows: &[usize]) -> Vec<f32> {
    let outer: usize = dims[..axis].iter().product::<i64>() as usize;
    let n = dims[axis] as usize;
    let inner: usize = dims[axis + 1..].iter().product::<i64>() as usize;
    let mut out = Vec::with_capacity(outer * rows.len() * inner);
    for o in 0..outer {
        for &r in rows {
            let start = (o * n + r) * inner;
            out.extend_from_slice(&data[start..start + inner]);
        }
    }
    out
}

fn counts(
    model: &Model,
    layers: &[Layer],
    params: &[Trainable],
    zeros: &ZeroTensors,
    neurons: &NeuronSet,
    train: &Graph,
    eval: &Graph,
) -> Counts {
    let model_params = model
        .graph()
        .initializer
        .iter()
        .filter(|t| {
            matches!(
                DataType::try_from(t.data_type()),
                Ok(DataType::Float | DataType::Float16 | DataType::Bfloat16 | DataType::Double)
            )
        })
        .map(|t| crate::onnx::element_count(&t.dims))
        .sum();
    let trainable_params = params.iter().map(|p| crate::onnx::element_count(&p.shape)).sum();
    let optimizer_state_bytes = zeros.iter().map(|(_, shape)| shape.iter().product::<usize>() as u64 * 4).sum();
    Counts {
        model_params,
        trainable_params,
        optimizer_state_bytes,
        neurons_selected: neurons.count() as u64,
        neurons_total: layers.iter().map(|l| l.neurons as u64).sum(),
        train_nodes: train.op_count(),
        eval_nodes: eval.op_count(),
    }
}

fn source_info(model: &Model) -> anyhow::Result<SourceInfo> {
    SourceInfo::of_file(&model.path)
}
