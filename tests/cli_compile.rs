//! `neft compile` as users run it: bad neuron files, atomic output, and mask mode on a
//! graph that already computes gradients.

mod train_support;

use neft::artifact::Plan;
use neft::runtime::ort::{HostTensor, SessionOptions};
use neft::train::TrainSession;
use std::path::Path;
use std::process::Command;
use train_support::*;

#[test]
fn bad_neuron_files_get_clear_errors_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let llama = repo("models/fixtures/tiny_llama.onnx");
    let mlp = repo("models/fixtures/mlp_loss.onnx");
    let cases: &[(&Path, &str, &[&str])] = &[
        (
            &llama,
            r#"{"format":"neft.neurons/1","layers":{"nope":{"axis":1,"rows":[0]}}}"#,
            &["n.json", "'nope'", "no trainable layer", "val_109"],
        ),
        (
            &llama,
            r#"{"format":"neft.neurons/1","layers":{"val_242":{"axis":1,"rows":[0,64]}}}"#,
            &["n.json", "'val_242'", "row 64 is out of range", "64 rows"],
        ),
        (
            &llama,
            r#"{"format":"neft.neurons/1","layers":{"val_242":{"axis":1,"rows":[3,3]}}}"#,
            &["n.json", "'val_242'", "row 3 is listed twice"],
        ),
        (&llama, r#"{"format":"neft.neurons/1","layers":{"val_242":{"axis":1,"rows":[5,3]}}}"#, &["n.json", "sorted"]),
        (
            &mlp,
            r#"{"format":"neft.neurons/1","layers":{"fc1.weight":{"axis":1,"rows":[3]}}}"#,
            &["n.json", "'fc1.weight'", "axis 1 given", "along axis 0"],
        ),
        (&mlp, r#"{"format":"neft.neurons/2","layers":{}}"#, &["n.json", "neft.neurons/1"]),
        (&mlp, r#"{"layers":{}}"#, &["n.json", "format"]),
        (&mlp, r#"{"format":"neft.neurons/1","layers":{}}"#, &["selects no neuron"]),
        (&mlp, "not json", &["n.json", "not a neurons file"]),
    ];
    for (model, text, want) in cases {
        std::fs::write(dir.path().join("n.json"), text).unwrap();
        let out = neft(&["compile", model.to_str().unwrap(), "-o", "out", "--neurons", "n.json"], dir.path());
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = stderr(&out);
        for w in *want {
            assert!(err.contains(w), "for {text}: {err:?} should mention {w:?}");
        }
        assert!(!dir.path().join("out").exists(), "a failed compile left an output folder");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["n.json"], "temporary files left behind");
    }
}

#[test]
fn a_folder_that_is_not_an_artifact_folder_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    std::fs::write(dir.path().join("out/precious.txt"), "keep me").unwrap();
    std::fs::write(
        dir.path().join("n.json"),
        r#"{"format":"neft.neurons/1","layers":{"fc1.weight":{"axis":0,"rows":[1,2]}}}"#,
    )
    .unwrap();
    let model = repo("models/fixtures/mlp_loss.onnx");
    let out = neft(&["compile", model.to_str().unwrap(), "-o", "out", "--neurons", "n.json"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("refusing to overwrite"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(dir.path().join("out/precious.txt")).unwrap(), "keep me");
    // An earlier artifact folder is replaced whole.
    let ok = neft(&["compile", model.to_str().unwrap(), "-o", "art", "--neurons", "n.json"], dir.path());
    assert!(ok.status.success(), "{}", stderr(&ok));
    let again =
        neft(&["compile", model.to_str().unwrap(), "-o", "art", "--neurons", "n.json", "--mode", "mask"], dir.path());
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(Plan::load(&dir.path().join("art/plan.json")).unwrap().mode, "mask");
}

#[test]
fn mask_mode_on_a_graph_with_gradient_outputs_inserts_masks_without_autodiff() {
    // A training graph that already computes weight gradients: the MLP with its
    // PyTorch-exported loss, differentiated and saved.
    let dir = tempfile::tempdir().unwrap();
    let model = neft::onnx::load(repo("models/fixtures/mlp_loss.onnx")).unwrap();
    let weights = ["fc1.weight".to_string(), "fc2.weight".to_string()];
    let (with_grads, _) = neft::autodiff::grad_model(&model, "loss", &weights).unwrap();
    let train_graph = dir.path().join("training.onnx");
    neft::onnx::save(&with_grads, &train_graph).unwrap();
    std::fs::write(
        dir.path().join("n.json"),
        r#"{"format":"neft.neurons/1","layers":{"fc1.weight":{"axis":0,"rows":[0,5,9]},"fc2.weight":{"axis":0,"rows":[2]}}}"#,
    )
    .unwrap();
    let split = neft(&["compile", "training.onnx", "-o", "out", "--neurons", "n.json"], dir.path());
    assert_eq!(split.status.code(), Some(1));
    assert!(stderr(&split).contains("--mode mask"), "{}", stderr(&split));
    let out = neft(
        &["compile", "training.onnx", "-o", "out", "--neurons", "n.json", "--mode", "mask", "--weight-decay", "0.5"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = Plan::load(&dir.path().join("out/plan.json")).unwrap();
    assert_eq!(plan.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), weights);
    // No second backward pass: the train step holds as many Gemm nodes as the
    // training graph it came from.
    let count = |path: &Path, op: &str| {
        neft::onnx::load(path).unwrap().graph().node.iter().filter(|n| n.op_type() == op).count()
    };
    assert_eq!(count(&dir.path().join("out/train_step.onnx"), "Gemm"), count(&train_graph, "Gemm"));

    let mut session =
        TrainSession::open(&dir.path().join("out"), &SessionOptions { threads: Some(1), ..Default::default() })
            .unwrap();
    let original = session.state.clone();
    let x: Vec<f32> = (0..4 * 16).map(|k| ((k * 7) % 11) as f32 * 0.1 - 0.5).collect();
    let batch = [("x", HostTensor::f32(&[4, 16], x)), ("target", HostTensor::i64(&[4], vec![1, 3, 5, 7]))];
    let first = session.step(&batch, 0.05).unwrap().loss;
    for _ in 0..9 {
        session.step(&batch, 0.05).unwrap();
    }
    let last = session.eval(&batch).unwrap();
    assert!(last < first, "loss should fall: {first} -> {last}");
    let f32s = |s: &neft::artifact::State, n: &str| match &s.tensors[n] {
        neft::artifact::StateTensor::F32 { data, .. } => data.clone(),
        _ => unreachable!(),
    };
    let (before, after) = (f32s(&original, "fc1.weight"), f32s(&session.state, "fc1.weight"));
    for row in 0..32 {
        let same = (0..16).all(|c| before[row * 16 + c].to_bits() == after[row * 16 + c].to_bits());
        assert_eq!(same, ![0, 5, 9].contains(&row), "fc1.weight row {row}");
    }
}

#[test]
fn the_demo_runs_end_to_end_and_the_loss_falls() {
    let dir = tempfile::tempdir().unwrap();
    let out = neft(&["demo", "--tiny", "-o", "d"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let d = dir.path().join("d");
    for f in
        ["out/plan.json", "out/neurons.json", "out/neurons.svg", "out/loss.svg", "adapter.safetensors", "merged.onnx"]
    {
        assert!(d.join(f).is_file(), "the demo did not write {f}");
    }
    let losses: Vec<f64> = std::fs::read_to_string(d.join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("loss")?.as_f64())
        .collect();
    assert_eq!(losses.len(), 600);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    assert!(
        mean(&losses[550..]) < mean(&losses[..50]) - 0.3,
        "loss did not fall: {} -> {}",
        mean(&losses[..50]),
        mean(&losses[550..])
    );
}

#[test]
fn inspect_diff_is_empty_for_a_model_and_names_what_compile_changed() {
    let dir = tempfile::tempdir().unwrap();
    let llama = repo("models/fixtures/tiny_llama.onnx");
    let same = neft(&["inspect", llama.to_str().unwrap(), "--diff", llama.to_str().unwrap(), "--json"], dir.path());
    let d: serde_json::Value = serde_json::from_slice(&same.stdout).unwrap();
    assert_eq!(d["nodes_added"], 0);
    assert!(
        d.as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "nodes_added")
            .all(|(_, v)| v.as_array().is_some_and(|a| a.is_empty()) || v.as_object().is_some_and(|o| o.is_empty())),
        "{d}"
    );

    std::fs::write(
        dir.path().join("n.json"),
        r#"{"format":"neft.neurons/1","layers":{"val_242":{"axis":1,"rows":[1,2]},"val_386":{"axis":1,"rows":[7]}}}"#,
    )
    .unwrap();
    assert!(neft(&["compile", llama.to_str().unwrap(), "-o", "out", "--neurons", "n.json"], dir.path())
        .status
        .success());
    let out = neft(&["inspect", llama.to_str().unwrap(), "--diff", "out/train_step.onnx", "--json"], dir.path());
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let strings =
        |k: &str| -> Vec<String> { d[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect() };
    // Exactly the two split layers' MatMuls now read a merged weight.
    assert_eq!(strings("nodes_changed"), ["node_linear_14", "node_linear_4"]);
    let inputs = strings("inputs_added");
    for want in [
        "labels",
        "lr",
        "step",
        "val_242.rows",
        "val_242.rows.m",
        "val_242.rows.v",
        "val_386.rows",
        "val_386.rows.m",
        "val_386.rows.v",
    ] {
        assert!(inputs.contains(&want.to_string()), "missing input {want}: {inputs:?}");
    }
    assert_eq!(inputs.len(), 9);
    assert!(strings("outputs_added").contains(&"val_242.rows.new".to_string()));
    assert_eq!(strings("nodes_removed"), Vec::<String>::new(), "compile removes no model node");
    for pass in ["autodiff", "loss", "optimizer", "split_rows"] {
        assert!(d["added_by_pass"][pass].is_object(), "no nodes labelled {pass}");
    }
}

#[test]
fn dot_output_of_a_compiled_layer_is_well_formed() {
    let dir = tempfile::tempdir().unwrap();
    compile_llama(dir.path(), "out", &[("val_242", 1, vec![1, 2])], &[]);
    let out = neft(
        &["inspect", "out/train_step.onnx", "--dot", "g.dot", "--around", "val_242.rows", "--depth", "5"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let dot = std::fs::read_to_string(dir.path().join("g.dot")).unwrap();
    // Every edge joins declared nodes; the trainable rows are a green input, the frozen
    // weight a grey box, and split-rows nodes carry their pass colour.
    let declared: std::collections::HashSet<&str> =
        dot.lines().filter(|l| l.contains(" [shape=")).map(|l| l.trim().split(' ').next().unwrap()).collect();
    let edges: Vec<(&str, &str)> = dot
        .lines()
        .filter(|l| l.contains(" -> "))
        .map(|l| {
            let mut p = l.trim().split(' ');
            (p.next().unwrap(), p.nth(1).unwrap())
        })
        .collect();
    assert!(dot.starts_with("digraph neft {") && dot.trim_end().ends_with('}'));
    assert!(!edges.is_empty() && edges.iter().all(|(a, b)| declared.contains(a) && declared.contains(b)));
    assert!(dot.contains(r##"fillcolor="#b8e0b8", label="val_242.rows""##));
    assert!(dot.contains(r##"fillcolor="#dddddd", label="val_242 [32, 64]""##));
    assert!(dot.contains("val_242.place"), "the one-hot placement of the selected columns");
    // Graphviz itself, where it is installed, must accept it.
    if let Ok(run) = Command::new("dot").arg("-Tsvg").arg(dir.path().join("g.dot")).output() {
        assert!(run.status.success(), "dot rejected the file: {}", String::from_utf8_lossy(&run.stderr));
        assert!(String::from_utf8_lossy(&run.stdout).contains("<svg"));
    }
}

#[test]
fn every_artifact_folder_records_its_neurons_and_inspect_shows_where_they_are() {
    let dir = tempfile::tempdir().unwrap();
    compile_llama(dir.path(), "out", &[("val_244", 1, vec![3, 10])], &["--unit", "mlp-unit"]);
    // The neurons actually trained: the unit expanded to gate, up and down.
    let written = neft::select::NeuronSet::load(&dir.path().join("out/neurons.json")).unwrap();
    assert_eq!(written.layers.keys().collect::<Vec<_>>(), ["val_242", "val_244", "val_245"]);
    let svg = std::fs::read_to_string(dir.path().join("out/neurons.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("mlp.down") && svg.contains("3.1%"), "{svg}");
    // Block 1's MLP is of the kind the set trains but got nothing: shown at 0%, not left
    // out; attention and the head were not targeted (grey).
    assert!(svg.contains("block 1") && svg.contains(">0.0%<"), "{svg}");
    assert!(svg.contains("attn.q") && svg.contains("#eeeeee"), "{svg}");
    let plan = Plan::load(&dir.path().join("out/plan.json")).unwrap();
    let shares = plan.layer_shares();
    assert_eq!(shares.len(), 15, "every layer of the model");
    let untrained: Vec<(Option<usize>, &str)> =
        shares.iter().filter(|s| s.targeted && s.rows_selected == 0).map(|s| (s.block, s.module.as_str())).collect();
    assert_eq!(untrained, [(Some(1), "mlp.gate"), (Some(1), "mlp.up"), (Some(1), "mlp.down")]);
    let shown = neft(&["inspect", "out"], dir.path());
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("selection by module") && text.contains("out/neurons.svg"), "{text}");
    let down = text.lines().find(|l| l.trim_start().starts_with("mlp.down")).unwrap_or_default();
    assert_eq!(down.split_whitespace().take(3).collect::<Vec<_>>(), ["mlp.down", "2", "2/128"], "{text}");
}
