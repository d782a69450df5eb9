//! The device-resident trainer (on the CPU: state handed from run to run) against the
//! host-side `TrainSession`: on ORT's CPU provider every loss, gradient norm and state
//! tensor must agree bit for bit, step after step.

mod train_support;

use neft::artifact::{Plan, State};
use neft::compile::{compile, CompileOptions, Mode, Unit};
use neft::optim::Optimizer;
use neft::passes::append_loss::LossSpec;
use neft::runtime::ort::{HostTensor, SessionOptions};
use neft::runtime::shared_weights::SharedWeights;
use neft::select::{LayerNeurons, NeuronSet};
use neft::train::{DeviceTrainer, TrainSession};
use train_support::*;

fn neurons() -> NeuronSet {
    let mut set = NeuronSet::new();
    for (w, rows) in [("val_109", vec![0, 5, 9]), ("val_244", vec![3, 10, 40]), ("val_386", vec![1, 2, 3, 64])] {
        set.layers.insert(w.to_string(), LayerNeurons { axis: 1, rows });
    }
    set
}

fn batch(seed: u64) -> Vec<(&'static str, HostTensor)> {
    random_lm_batch(seed, 3, 10)
}

fn same_bits_over_steps(mode: Mode, optimizer: Optimizer) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("art");
    let model = neft::onnx::load(llama_path()).unwrap();
    let opts = CompileOptions {
        mode,
        unit: Unit::Neuron,
        loss: LossSpec::Auto,
        optimizer,
        lr: 1e-2,
        clip: Some(1.0),
        targets: None,
        lora: None,
    };
    compile(&model, &neurons(), &opts, &dir).unwrap();
    let session = SessionOptions { threads: Some(1), ..Default::default() };
    let plan = Plan::load(&dir.join("plan.json")).unwrap();
    let initial = State::load(&dir.join("state.safetensors")).unwrap();
    let mut host = TrainSession::open(&dir, &session).unwrap();
    let mut device = DeviceTrainer::new(&dir, plan, &initial, &session).unwrap();
    assert_same_bits(&host.state, &device.state().unwrap(), "uploaded state");
    for k in 0..5 {
        let b = batch(k);
        let (h, d) = (host.step(&b, 2e-2).unwrap(), device.step(&b, 2e-2).unwrap());
        assert_eq!(
            (h.loss.to_bits(), h.grad_norm.to_bits(), h.tokens.to_bits()),
            (d.loss.to_bits(), d.grad_norm.to_bits(), d.tokens.to_bits()),
            "{mode:?} step {k}: host {h:?}, device {d:?}"
        );
    }
    let after = device.state().unwrap();
    assert_same_bits(&host.state, &after, &format!("{mode:?}: state after 5 steps"));
    assert_eq!(device.steps_done().unwrap(), 5);
    assert_ne!(after, initial, "the state moved");
    let probe = batch(99);
    assert_eq!(host.eval(&probe).unwrap().to_bits(), device.eval(&probe).unwrap().0.to_bits(), "{mode:?}: eval");
}

#[test]
fn split_rows_with_adamw_match_the_host_path_bit_for_bit() {
    same_bits_over_steps(Mode::Split, Optimizer::adamw(0.1));
}

#[test]
fn masks_with_sgd_momentum_match_the_host_path_bit_for_bit() {
    same_bits_over_steps(Mode::Mask, Optimizer::Sgd { momentum: 0.9, weight_decay: 0.01 });
}

/// The train step and the eval graph share every frozen weight they both hold (handed
/// to ONNX Runtime once, packed once), and the eval graph's loss is the one a session
/// opened on it alone computes.
#[test]
fn train_and_eval_share_their_frozen_weights() {
    use neft::onnx::proto::tensor_proto::{DataLocation, DataType};
    use std::collections::BTreeSet;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("art");
    let model = neft::onnx::load(llama_path()).unwrap();
    let opts = CompileOptions {
        mode: Mode::Split,
        unit: Unit::Neuron,
        loss: LossSpec::Auto,
        optimizer: Optimizer::adamw(0.0),
        lr: 1e-2,
        clip: None,
        targets: None,
        lora: None,
    };
    compile(&model, &neurons(), &opts, &dir).unwrap();
    let (train, eval) = (dir.join("train_step.onnx"), dir.join("eval.onnx"));
    let stored_outside = |path: &std::path::Path| -> BTreeSet<String> {
        let g = neft::onnx::load(path).unwrap();
        g.graph()
            .initializer
            .iter()
            .filter(|t| t.data_location() == DataLocation::External && t.data_type() == DataType::Float as i32)
            .map(|t| t.name().to_string())
            .collect()
    };
    let both: BTreeSet<String> = stored_outside(&train).intersection(&stored_outside(&eval)).cloned().collect();
    for frozen in ["val_109", "val_244", "val_386"] {
        assert!(both.contains(frozen), "split weight {frozen} is frozen in both graphs: {both:?}");
    }
    let (train_model, eval_model) = (neft::onnx::load(&train).unwrap(), neft::onnx::load(&eval).unwrap());
    let shared = SharedWeights::between(&[&train_model, &eval_model]).unwrap();
    assert_eq!(shared.names().map(str::to_string).collect::<BTreeSet<_>>(), both);

    let session = SessionOptions { threads: Some(1), ..Default::default() };
    let plan = Plan::load(&dir.join("plan.json")).unwrap();
    let initial = State::load(&dir.join("state.safetensors")).unwrap();
    let mut device = DeviceTrainer::new(&dir, plan.clone(), &initial, &session).unwrap();
    for k in 0..2 {
        device.step(&batch(k), 2e-2).unwrap();
    }
    let probe = batch(7);
    let (loss, _, _) = device.eval(&probe).unwrap();
    let alone = eval_output(&dir, &device.state().unwrap(), &probe, &plan.loss.loss);
    assert_eq!(loss.to_bits(), alone[0].to_bits(), "eval loss {loss} shared, {} alone", alone[0]);
}
