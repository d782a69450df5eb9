//! `neft-compile` end to end on a PyTorch-exported Llama: the artifacts load in ONNX
//! Runtime, split and mask modes follow the same trajectory, frozen values never
//! change, selecting every row is full fine-tuning, MLP units couple three weights.

mod train_support;

use neft::artifact::{State, StateTensor};
use neft::compile::{compile, CompileOptions, Mode, Unit};
use neft::onnx;
use neft::optim::Optimizer;
use neft::passes::append_loss::LossSpec;
use neft::runtime::ort::{HostTensor, SessionOptions};
use neft::select::{LayerNeurons, NeuronSet};
use neft::train::TrainSession;
use std::path::Path;
use train_support::{random_lm_batch, repo};

fn llama() -> onnx::Model {
    onnx::load(repo("models/fixtures/tiny_llama.onnx")).unwrap()
}

fn neurons(entries: &[(&str, usize, Vec<usize>)]) -> NeuronSet {
    let mut set = NeuronSet::new();
    for (w, axis, rows) in entries {
        set.layers.insert(w.to_string(), LayerNeurons { axis: *axis, rows: rows.clone() });
    }
    set
}

/// q, gate, down and head of the tiny Llama, a quarter of each layer's neurons.
fn quarter() -> NeuronSet {
    neurons(&[
        ("val_109", 1, (0..32).step_by(4).collect()),
        ("val_242", 1, (0..64).step_by(4).collect()),
        ("val_245", 1, (1..32).step_by(4).collect()),
        ("val_386", 1, (0..128).step_by(4).collect()),
    ])
}

fn options(mode: Mode, unit: Unit) -> CompileOptions {
    CompileOptions {
        mode,
        unit,
        loss: LossSpec::Auto,
        optimizer: Optimizer::adamw(0.1),
        lr: 1e-2,
        clip: Some(1.0),
        targets: None,
        lora: None,
    }
}

fn batch(seed: u64) -> Vec<(&'static str, HostTensor)> {
    random_lm_batch(seed, 2, 12)
}

fn opts() -> SessionOptions {
    SessionOptions { threads: Some(1), ..Default::default() }
}

/// Trains `steps` steps on a fixed cycle of batches; returns the losses.
fn train(session: &mut TrainSession, steps: usize) -> Vec<f32> {
    (0..steps).map(|k| session.step(&batch(k as u64 % 4), 1e-2).unwrap().loss).collect()
}

fn f32s(t: &StateTensor) -> &[f32] {
    match t {
        StateTensor::F32 { data, .. } => data,
        _ => panic!("not a FLOAT state tensor"),
    }
}

/// Rows `rows` along `axis` of a row-major tensor.
fn rows_of(data: &[f32], dims: &[i64], axis: usize, rows: &[usize]) -> Vec<f32> {
    neft::compile::take_rows(data, dims, axis, rows)
}

fn file_hashes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ["train_step.onnx", "eval.onnx", "weights.bin"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

#[test]
fn split_and_mask_follow_the_same_trajectory_and_frozen_values_stay_exact() {
    let model = llama();
    let set = quarter();
    let root = tempfile::tempdir().unwrap();
    let (split_dir, mask_dir) = (root.path().join("split"), root.path().join("mask"));
    let split_plan = compile(&model, &set, &options(Mode::Split, Unit::Neuron), &split_dir).unwrap();
    compile(&model, &set, &options(Mode::Mask, Unit::Neuron), &mask_dir).unwrap();
    let before = (file_hashes(&split_dir), file_hashes(&mask_dir));

    let mut split = TrainSession::open(&split_dir, &opts()).unwrap();
    let mut mask = TrainSession::open(&mask_dir, &opts()).unwrap();
    let (a, b) = (train(&mut split, 20), train(&mut mask, 20));
    // Float32 sums in a different order (the selected neurons' own product versus one
    // full matmul) explain differences of a few ulps per step, compounding over 20 steps.
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 2e-4 * (1.0 + x.abs()), "step {k}: split loss {x}, mask loss {y}");
    }
    assert!(a[19] < a[0] - 0.05, "the loss should fall: {} -> {}", a[0], a[19]);

    let g = model.graph();
    for (w, sel) in &set.layers {
        let init = g.initializer.iter().find(|t| t.name() == w).unwrap();
        let original = model.tensor_f32(init).unwrap();
        let trained_split = f32s(&split.state.tensors[&format!("{w}.rows")]);
        let trained_mask = f32s(&mask.state.tensors[w.as_str()]);
        let mask_rows = rows_of(trained_mask, &init.dims, sel.axis, &sel.rows);
        for (i, (x, y)) in trained_split.iter().zip(&mask_rows).enumerate() {
            assert!((x - y).abs() <= 2e-4 * (1.0 + x.abs()), "{w}[{i}]: split {x}, mask {y}");
        }
        assert_ne!(
            trained_split,
            rows_of(&original, &init.dims, sel.axis, &sel.rows).as_slice(),
            "{w}: rows did not train"
        );
        // Mask mode keeps the full weight as a parameter: frozen rows bit for bit.
        let frozen: Vec<usize> = (0..init.dims[sel.axis] as usize).filter(|r| !sel.rows.contains(r)).collect();
        let after = rows_of(trained_mask, &init.dims, sel.axis, &frozen);
        let want = rows_of(&original, &init.dims, sel.axis, &frozen);
        assert!(
            after.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{w}: a frozen row changed in mask mode"
        );
    }
    // (That a split layer's step computes no weight-sized value: tests/train_step_cost.rs.)
    // Split mode: frozen weights are initializers in files nothing writes.
    assert_eq!((file_hashes(&split_dir), file_hashes(&mask_dir)), before);
    assert_eq!(split_plan.counts.trainable_params, 32 * 8 + 32 * 16 + 64 * 8 + 32 * 32);
}

#[test]
fn selecting_every_row_is_full_fine_tuning() {
    let model = llama();
    let set = neurons(&[("val_244", 1, (0..64).collect()), ("val_373", 1, (0..32).collect())]);
    let root = tempfile::tempdir().unwrap();
    compile(&model, &set, &options(Mode::Split, Unit::Neuron), &root.path().join("split")).unwrap();
    // Full mode needs no rows: whole matrices train, without masks.
    let whole = neurons(&[("val_244", 1, vec![0]), ("val_373", 1, vec![0])]);
    let plan = compile(&model, &whole, &options(Mode::Full, Unit::Neuron), &root.path().join("full")).unwrap();
    assert!(plan.params.iter().all(|p| p.mask.is_none()));
    let mut split = TrainSession::open(&root.path().join("split"), &opts()).unwrap();
    let mut full = TrainSession::open(&root.path().join("full"), &opts()).unwrap();
    let (a, b) = (train(&mut split, 10), train(&mut full, 10));
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 2e-4 * (1.0 + x.abs()), "step {k}: split-100% loss {x}, full loss {y}");
    }
    let (s, f) = (f32s(&split.state.tensors["val_244.rows"]), f32s(&full.state.tensors["val_244"]));
    for (i, (x, y)) in s.iter().zip(f).enumerate() {
        assert!((x - y).abs() <= 2e-4 * (1.0 + x.abs()), "val_244[{i}]: {x} vs {y}");
    }
}

#[test]
fn mlp_units_train_gate_up_and_down_together() {
    let model = llama();
    // Units 3 and 10 of block 0 named through its up projection only.
    let set = neurons(&[("val_244", 1, vec![3, 10])]);
    let root = tempfile::tempdir().unwrap();
    let plan = compile(&model, &set, &options(Mode::Split, Unit::MlpUnit), &root.path().join("split")).unwrap();
    let shapes: Vec<(&str, Vec<i64>, usize)> =
        plan.params.iter().map(|p| (p.source.as_str(), p.shape.clone(), p.axis)).collect();
    assert_eq!(shapes, [("val_242", vec![32, 2], 1), ("val_244", vec![32, 2], 1), ("val_245", vec![2, 32], 0)]);
    compile(&model, &set, &options(Mode::Mask, Unit::MlpUnit), &root.path().join("mask")).unwrap();
    let mut split = TrainSession::open(&root.path().join("split"), &opts()).unwrap();
    let mut mask = TrainSession::open(&root.path().join("mask"), &opts()).unwrap();
    let (a, b) = (train(&mut split, 10), train(&mut mask, 10));
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 2e-4 * (1.0 + x.abs()), "step {k}: split {x}, mask {y}");
    }
    let down = f32s(&split.state.tensors["val_245.rows"]);
    let init = model.graph().initializer.iter().find(|t| t.name() == "val_245").unwrap();
    assert_ne!(
        down,
        rows_of(&model.tensor_f32(init).unwrap(), &init.dims, 0, &[3, 10]).as_slice(),
        "down rows did not train"
    );
}

/// MLP units selected whole: the block stays as exported and gains a trained and a
/// frozen copy of the selected units, so nothing is placed along the FFN axis, the
/// model is reproduced exactly before training, and mask mode is followed closely.
#[test]
fn whole_mlp_units_add_narrow_copies_and_reproduce_the_model_exactly() {
    let model = llama();
    let set = neurons(&[("val_244", 1, vec![3, 10, 17, 40, 63])]);
    let root = tempfile::tempdir().unwrap();
    let (split_dir, mask_dir) = (root.path().join("split"), root.path().join("mask"));
    compile(&model, &set, &options(Mode::Split, Unit::MlpUnit), &split_dir).unwrap();
    compile(&model, &set, &options(Mode::Mask, Unit::MlpUnit), &mask_dir).unwrap();
    let step = onnx::load(split_dir.join("train_step.onnx")).unwrap();
    // The per-layer form would add one-hot [k, ffn] placements and [ffn, k] picks.
    let ffn_wide: Vec<&str> = step
        .graph()
        .initializer
        .iter()
        .filter(|t| t.data_type() == onnx::DataType::Float as i32 && t.dims.len() == 2 && t.dims.contains(&5))
        .map(|t| t.name())
        .collect();
    assert!(ffn_wide.is_empty(), "one-hot constants in a whole-unit block: {ffn_wide:?}");

    let mut split = TrainSession::open(&split_dir, &opts()).unwrap();
    let mut mask = TrainSession::open(&mask_dir, &opts()).unwrap();
    // Untrained rows: the correction is a difference of two equal products, zero exactly.
    let (a, b) = (split.eval(&batch(5)).unwrap(), mask.eval(&batch(5)).unwrap());
    assert_eq!(a.to_bits(), b.to_bits(), "split {a}, mask {b}");
    let (a, b) = (train(&mut split, 12), train(&mut mask, 12));
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "step {k}: split {x}, mask {y}");
    }
    assert!(a[11] < a[0] - 0.01, "the loss should fall: {} -> {}", a[0], a[11]);
}

#[test]
fn the_eval_graph_with_untrained_rows_reproduces_the_model() {
    let model = llama();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("out");
    compile(&model, &quarter(), &options(Mode::Split, Unit::Neuron), &dir).unwrap();
    let mut session = TrainSession::open(&dir, &opts()).unwrap();
    let before = session.eval(&batch(7)).unwrap();
    // The train step's loss is computed before its update, on the same rows.
    let step = session.step(&batch(7), 1e-2).unwrap();
    assert_eq!(before.to_bits(), step.loss.to_bits());
    assert!(step.grad_norm > 0.0 && step.tokens == 22.0, "{step:?}");
    let after = session.eval(&batch(7)).unwrap();
    assert!(after < before, "one step on the batch should lower its loss: {before} -> {after}");
}

#[test]
fn state_from_other_artifacts_is_refused() {
    let model = llama();
    let root = tempfile::tempdir().unwrap();
    compile(&model, &quarter(), &options(Mode::Split, Unit::Neuron), &root.path().join("a")).unwrap();
    let other = neurons(&[("val_109", 1, vec![1, 2])]);
    compile(&model, &other, &options(Mode::Split, Unit::Neuron), &root.path().join("b")).unwrap();
    let plan = neft::artifact::Plan::load(&root.path().join("a/plan.json")).unwrap();
    let state = State::load(&root.path().join("b/state.safetensors")).unwrap();
    let err = TrainSession::with_state(&root.path().join("a"), plan, state, &opts()).err().unwrap().to_string();
    assert!(err.contains("state"), "{err}");
}
