//! Graphs written by Hugging Face's exporter (optimum-onnx: `text-generation` without
//! past, `text-classification`; `models/fixtures/export_optimum.py`), and one Llama
//! whose graph computes its own loss, run end to end from the command line:
//! `neft compile` (a neurons file, or `--data` for selection), `neft train` feeding
//! `input_ids`, `attention_mask`, `position_ids`, `token_type_ids` and labels; one SGD step
//! moves the selected rows by exactly -lr times PyTorch's gradient; frozen values stay
//! bit for bit; eight steps lower the loss.

mod train_support;

use neft::artifact::{State, StateTensor};
use neft::onnx;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use train_support::*;

const LR: f32 = 0.5;

fn reference(name: &str) -> Value {
    let path = repo(&format!("models/fixtures/optimum_{name}.ref.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The reference batch as pre-tokenized JSONL lines (one per row, unpadded), with its
/// class as "label" for sequence classification.
fn jsonl(r: &Value) -> Vec<String> {
    let ids = &r["inputs"]["input_ids"];
    let seq = ids["shape"][1].as_u64().unwrap() as usize;
    let data: Vec<i64> = ids["data"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    let lengths = r["lengths"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize);
    lengths
        .enumerate()
        .map(|(i, n)| {
            let mut line = serde_json::json!({ "input_ids": &data[i * seq..i * seq + n] });
            if let Some(classes) = r.get("labels") {
                line["label"] = classes[i].clone();
            }
            line.to_string()
        })
        .collect()
}

fn f32s<'a>(state: &'a State, name: &str) -> &'a [f32] {
    match state.tensors.get(name) {
        Some(StateTensor::F32 { data, .. }) => data,
        other => panic!("state tensor '{name}': {other:?}"),
    }
}

/// `neft compile` with the reference's rows and SGD, in `dir/art`.
fn compile(dir: &Path, name: &str, r: &Value) -> std::path::PathBuf {
    let entries: Vec<(&str, usize, Vec<usize>)> = r["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let rows = w["rows"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            (w["onnx"].as_str().unwrap(), w["axis"].as_u64().unwrap() as usize, rows)
        })
        .collect();
    write_neurons(&dir.join("neurons.json"), &entries);
    let model = repo(&format!("models/fixtures/optimum_{name}.onnx"));
    let lr = LR.to_string();
    let args = [
        "compile",
        model.to_str().unwrap(),
        "-o",
        "art",
        "--neurons",
        "neurons.json",
        "--optimizer",
        "sgd",
        "--lr",
        &lr,
    ];
    neft_ok(&args, dir);
    dir.join("art")
}

/// The largest difference from `want`, relative to the largest magnitude of `want`.
fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &w| m.max((w as f64).abs()));
    assert!(scale > 0.0, "a zero reference gradient proves nothing");
    got.iter().zip(want).fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs())) / scale
}

/// Every initializer of an ONNX file, as raw little-endian bytes.
fn initializers(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let m = onnx::load(path).unwrap();
    m.graph().initializer.iter().map(|t| (t.name().to_string(), m.tensor_bytes(t).unwrap().to_vec())).collect()
}

/// One SGD step on the reference batch: the selected rows (and bias elements) move by
/// -lr x PyTorch's gradient; the merged model differs from the source only there.
fn one_step_matches_pytorch(name: &str) -> f64 {
    let r = reference(name);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_lines(&dir.join("ref.jsonl"), &jsonl(&r));
    let art = compile(dir, name, &r);
    let before = load_state(&art.join("state.safetensors"));
    let rows = r["lengths"].as_array().unwrap().len().to_string();
    // A step large enough that the smallest weight's update dwarfs the rounding of
    // `after - before` in FLOAT (weights near 0.02 round at 2e-9; some gradients are 1e-6).
    let smallest = r["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| floats(&w["grad"]["data"]).iter().fold(0f32, |m, g| m.max(g.abs())))
        .fold(f32::INFINITY, f32::min);
    let lr = 1e-2 / smallest;
    let after = sgd_step(dir, name, &r, &rows, lr);

    let mut worst = 0f64;
    for w in r["weights"].as_array().unwrap() {
        let mut checks = vec![(format!("{}.rows", w["onnx"].as_str().unwrap()), floats(&w["grad"]["data"]))];
        if let Some(b) = w["bias"].as_str() {
            checks.push((format!("{b}.rows"), floats(&w["bias_grad"])));
        }
        for (param, grad) in checks {
            let (p0, p1) = (f32s(&before, &param), f32s(&after, &param));
            let moved: Vec<f32> = p0.iter().zip(p1).map(|(a, b)| b - a).collect();
            let want: Vec<f32> = grad.iter().map(|g| -lr * g).collect();
            let err = relative_error(&moved, &want);
            assert!(err < 1e-4, "{name}: '{param}' moved {moved:?}, want -lr x PyTorch's gradient {want:?} ({err:e})");
            worst = worst.max(err);
        }
    }

    // Frozen values: the merged model equals the source bit for bit except the
    // selected rows and bias elements.
    neft_ok(&["export", "art", "--merged", "merged.onnx"], dir);
    let source = initializers(&repo(&format!("models/fixtures/optimum_{name}.onnx")));
    let merged = initializers(&dir.join("merged.onnx"));
    let trained: Vec<String> = r["weights"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| [w["onnx"].as_str(), w["bias"].as_str()])
        .flatten()
        .map(str::to_string)
        .collect();
    for (tensor, bytes) in &source {
        let got = merged.get(tensor).unwrap_or_else(|| panic!("{name}: merged model lacks '{tensor}'"));
        if !trained.contains(tensor) {
            assert!(got == bytes, "{name}: frozen '{tensor}' changed");
        }
    }
    for w in r["weights"].as_array().unwrap() {
        let tensor = w["onnx"].as_str().unwrap();
        let dims: Vec<usize> =
            w["grad"]["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let axis = w["axis"].as_u64().unwrap() as usize;
        let rows: Vec<usize> = w["rows"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        // The full weight's shape: the selected slice's, with every row along `axis`.
        let other = dims[1 - axis];
        let units = source[tensor].len() / 4 / other;
        let (k, n) = if axis == 1 { (other, units) } else { (units, other) };
        let (a, b) = (&source[tensor], &merged[tensor]);
        for i in 0..k {
            for j in 0..n {
                if rows.contains(if axis == 1 { &j } else { &i }) {
                    continue;
                }
                let at = (i * n + j) * 4;
                assert_eq!(a[at..at + 4], b[at..at + 4], "{name}: '{tensor}'[{i}, {j}] is frozen but changed");
            }
        }
    }
    worst
}

/// `neft train art` for one SGD step at `lr` on the reference batch (`ref.jsonl` in `dir`,
/// all `rows` in one batch); checks the loss against PyTorch's and returns the checkpoint.
fn sgd_step(dir: &Path, name: &str, r: &Value, rows: &str, lr: f32) -> State {
    let lr_arg = lr.to_string();
    let out = neft_ok(
        &[
            "train",
            "art",
            "--data",
            "ref.jsonl",
            "--steps",
            "1",
            "--batch",
            rows,
            "--threads",
            "1",
            "--lr",
            &lr_arg,
            "--json",
        ],
        dir,
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let loss = summary["first_loss"].as_f64().unwrap();
    let want_loss = r["loss"].as_f64().unwrap();
    // 2e-6: tight enough to see padding the attention mask failed to hide (BERT: 1e-5).
    assert!((loss - want_loss).abs() < 2e-6 * want_loss, "{name}: loss {loss}, PyTorch {want_loss}");
    load_state(&dir.join("art/checkpoint.safetensors"))
}

/// Eight steps from the command line lower the loss.
fn eight_steps_lower_the_loss(dir: &Path, art: &str) {
    let out = neft_ok(
        &["train", art, "--data", "ref.jsonl", "--steps", "8", "--batch", "3", "--threads", "1", "--json"],
        dir,
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (first, last) = (summary["first_loss"].as_f64().unwrap(), summary["last_loss"].as_f64().unwrap());
    assert!(last < first - 1e-3, "{art}: loss {first} -> {last}");
}

fn compile_and_train(name: &str) {
    let r = reference(name);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_lines(&dir.join("ref.jsonl"), &jsonl(&r));
    compile(dir, name, &r);
    eight_steps_lower_the_loss(dir, "art");
}

#[test]
fn llama_one_sgd_step_equals_pytorch_and_frozen_values_stay() {
    let err = one_step_matches_pytorch("llama");
    eprintln!("llama: largest relative error vs PyTorch {err:e}");
}

#[test]
fn qwen2_one_sgd_step_equals_pytorch_with_biases_and_untied_head() {
    let err = one_step_matches_pytorch("qwen2");
    eprintln!("qwen2: largest relative error vs PyTorch {err:e}");
}

#[test]
fn gpt2_one_sgd_step_equals_pytorch_through_fused_qkv_gemms() {
    let err = one_step_matches_pytorch("gpt2");
    eprintln!("gpt2: largest relative error vs PyTorch {err:e}");
}

#[test]
fn phi_one_sgd_step_equals_pytorch_through_partial_rotary_and_parallel_blocks() {
    // Half of each head's dims rotate; attention and the fc1-GELU-fc2 MLP read one
    // LayerNorm and add to the residual together; every linear layer, the head too, has a bias.
    let err = one_step_matches_pytorch("phi");
    eprintln!("phi: largest relative error vs PyTorch {err:e}");
}

#[test]
fn bert_classifier_one_sgd_step_equals_pytorch_with_its_padding_masked() {
    // Bidirectional attention: padding that attention_mask did not hide would change
    // every row's loss.
    let err = one_step_matches_pytorch("bert");
    eprintln!("bert: largest relative error vs PyTorch {err:e}");
}

#[test]
fn a_graph_with_its_own_loss_trains_on_jsonl_labels_like_pytorch() {
    // `model(input_ids, attention_mask, labels=labels).loss` exported: the labels input
    // gets the ids with -100 on padding, and the model shifts them itself.
    let err = one_step_matches_pytorch("llama_loss");
    eprintln!("llama_loss: largest relative error vs PyTorch {err:e}");
}

#[test]
fn every_export_trains_eight_steps_from_a_neurons_file() {
    for name in ["llama", "qwen2", "gpt2", "phi", "bert", "llama_loss"] {
        compile_and_train(name);
    }
}

/// `neft compile --data` (activation selection over the MLP layers the structure
/// analysis finds: gated for Llama and Qwen2, GPT-2's Conv1D Gemms, Phi's and BERT's GELU MLPs),
/// per neuron and per MLP unit, then eight steps of AdamW.
#[test]
fn every_export_compiles_with_activation_selection_from_data_and_trains() {
    for name in ["llama", "qwen2", "gpt2", "phi", "bert"] {
        let r = reference(name);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_lines(&dir.join("ref.jsonl"), &jsonl(&r));
        let model = repo(&format!("models/fixtures/optimum_{name}.onnx"));
        for unit in ["neuron", "mlp-unit"] {
            let args = [
                "compile",
                model.to_str().unwrap(),
                "-o",
                unit,
                "--data",
                "ref.jsonl",
                "--strategy",
                "activation",
                "--budget",
                "10%",
                "--unit",
                unit,
                "--optimizer",
                "adamw",
                "--lr",
                "1e-2",
            ];
            neft_ok(&args, dir);
            let file = dir.join(unit).join("neurons.json");
            let neurons: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
            assert!(!neurons["layers"].as_object().unwrap().is_empty(), "{name} {unit}");
            eight_steps_lower_the_loss(dir, unit);
        }
    }
}

/// `--unit mlp-unit` on ungated MLPs, GPT-2's (Conv1D `Gemm`s: c_fc, GELU, c_proj) and
/// Phi's (`MatMul`s: fc1, GELU, fc2): selected from data, every unit trains the up
/// projection's column, its bias element and the down projection's input row (axis 0)
/// with the same index, and the down projection's output neurons are not trained.
#[test]
fn mlp_units_of_plain_mlps_couple_the_down_projection_input_rows() {
    for name in ["gpt2", "phi"] {
        let r = reference(name);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_lines(&dir.join("ref.jsonl"), &jsonl(&r));
        let model = repo(&format!("models/fixtures/optimum_{name}.onnx"));
        let m = model.to_str().unwrap();
        neft_ok(&["compile", m, "-o", "mu", "--data", "ref.jsonl", "--unit", "mlp-unit", "--budget", "10%"], dir);
        let plan: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("mu/plan.json")).unwrap()).unwrap();
        let params = plan["params"].as_array().unwrap();
        let with_role = |role: &str| params.iter().find(|p| p["role"] == role);
        let rows = |p: &Value| p["rows"].clone();
        let mut units = 0;
        for up in params.iter().filter(|p| p["role"].as_str().unwrap().ends_with("/ mlp.up")) {
            let block = up["role"].as_str().unwrap().trim_end_matches("mlp.up");
            let down = with_role(&format!("{block}mlp.down")).unwrap_or_else(|| panic!("{name}: {block}: no mlp.down"));
            let bias =
                with_role(&format!("{block}mlp.up (bias)")).unwrap_or_else(|| panic!("{name}: {block}: no bias"));
            assert_eq!((up["axis"].as_u64(), down["axis"].as_u64()), (Some(1), Some(0)), "{name}: {block}");
            assert_eq!(rows(down), rows(up), "{name}: {block}: down rows are not the up columns");
            assert_eq!(rows(bias), rows(up), "{name}: {block}");
            // [k, hidden]: whole input rows of the down projection.
            let k = up["rows"].as_array().unwrap().len() as u64;
            assert_eq!(down["shape"], serde_json::json!([k, 32]), "{name}: {block}");
            units += k;
        }
        assert!(units > 0, "{name}: no MLP unit was selected");
        // Selection itself budgets whole units: the neurons file gives each down
        // projection the up projection's rows, along its input axis.
        let neurons: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("mu/neurons.json")).unwrap()).unwrap();
        let by_source = |p: &Value| neurons["layers"][p["source"].as_str().unwrap()].clone();
        for down in params.iter().filter(|p| p["role"].as_str().unwrap().ends_with("/ mlp.down")) {
            let entry = by_source(down);
            assert_eq!((entry["axis"].as_u64(), &entry["rows"]), (Some(0), &down["rows"]), "{name}: neurons.json");
        }
        let downs = params.iter().filter(|p| p["role"].as_str().unwrap().contains("mlp.down"));
        assert!(downs.clone().all(|p| p["axis"] == 0), "{name}: a down projection trains its own neurons");
        // `neft inspect` on the artifacts lists the same tensors.
        let out = neft_ok(&["inspect", "mu", "--json"], dir);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let layers = report["layers"].as_array().unwrap();
        let listed: Vec<(&str, u64, u64)> = layers
            .iter()
            .filter(|l| l["role"].as_str().unwrap().ends_with("mlp.down"))
            .map(|l| (l["weight"].as_str().unwrap(), l["axis"].as_u64().unwrap(), l["selected"].as_u64().unwrap()))
            .collect();
        let want: Vec<(&str, u64, u64)> =
            downs.map(|p| (p["source"].as_str().unwrap(), 0, p["rows"].as_array().unwrap().len() as u64)).collect();
        assert_eq!(listed, want, "{name}");
    }
}

/// An MLP unit of Phi's block 1 from a neurons file naming fc1 columns: one SGD step moves
/// fc1's columns, their bias elements and fc2's input rows by -lr x PyTorch's gradient
/// (the reference holds fc2's gradient for all 64 input rows of 4 of its columns).
#[test]
fn phi_mlp_unit_step_moves_fc2_input_rows_like_pytorch() {
    mlp_unit_step_matches_pytorch("phi", "model.layers.1.mlp.fc1.weight", "model.layers.1.mlp.fc2.weight");
}

/// A gated MLP with no biases runs its selected units as narrow copies beside the
/// frozen block (src/passes/unit_blocks.rs); its step still moves like PyTorch's.
#[test]
fn llama_mlp_unit_step_moves_up_and_down_rows_like_pytorch() {
    mlp_unit_step_matches_pytorch("llama", "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight");
}

/// One SGD step with `--unit mlp-unit` on the units the reference recorded for `fc1`:
/// fc1's columns (and its bias, where it has one) and fc2's input rows move by
/// `-lr * grad` of PyTorch's (fc2's reference gradient covers all its input rows for a
/// few output columns).
fn mlp_unit_step_matches_pytorch(name: &str, fc1_torch: &str, fc2_torch: &str) {
    let r = reference(name);
    let weight = |torch: &str| {
        r["weights"].as_array().unwrap().iter().find(|w| w["torch"] == torch).unwrap_or_else(|| panic!("{torch}"))
    };
    let usizes = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect::<Vec<_>>();
    let (fc1, fc2) = (weight(fc1_torch), weight(fc2_torch));
    assert_eq!((fc1["axis"].as_u64(), fc2["axis"].as_u64()), (Some(1), Some(1)));
    let (units, columns) = (usizes(&fc1["rows"]), usizes(&fc2["rows"]));
    let (fc1_name, fc2_name) = (fc1["onnx"].as_str().unwrap(), fc2["onnx"].as_str().unwrap());
    let bias = fc1["bias"].as_str();
    // fc2's reference gradient: [every input row, the recorded columns].
    let fc2_grad = floats(&fc2["grad"]["data"]);
    let n = columns.len();
    assert_eq!(fc2["grad"]["shape"][1], serde_json::json!(n));
    let want_fc2: Vec<f32> = units.iter().flat_map(|&u| (0..n).map(move |j| u * n + j)).map(|i| fc2_grad[i]).collect();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_lines(&dir.join("ref.jsonl"), &jsonl(&r));
    write_neurons(&dir.join("neurons.json"), &[(fc1_name, 1, units.clone())]);
    let model = repo(&format!("models/fixtures/optimum_{name}.onnx"));
    let args = ["compile", model.to_str().unwrap(), "-o", "art", "--neurons", "neurons.json", "--unit", "mlp-unit"];
    neft_ok(&[&args[..], &["--optimizer", "sgd"]].concat(), dir);
    let plan: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("art/plan.json")).unwrap()).unwrap();
    let trained: Vec<(&str, u64, Vec<usize>)> = plan["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["source"].as_str().unwrap(), p["axis"].as_u64().unwrap(), usizes(&p["rows"])))
        .collect();
    for want in [(fc1_name, 1, units.clone()), (fc2_name, 0, units.clone())] {
        assert!(trained.contains(&want), "{want:?} not among {trained:?}");
    }
    if let Some(b) = bias {
        assert!(trained.contains(&(b, 0, units.clone())), "{b} not among {trained:?}");
    }

    let before = load_state(&dir.join("art/state.safetensors"));
    let smallest = [floats(&fc1["grad"]["data"]), want_fc2.clone()]
        .iter()
        .map(|g| g.iter().fold(0f32, |m, x| m.max(x.abs())))
        .fold(f32::INFINITY, f32::min);
    let lr = 1e-2 / smallest;
    let after = sgd_step(dir, name, &r, "3", lr);
    let moved = |param: &str| -> Vec<f32> {
        f32s(&after, param).iter().zip(f32s(&before, param)).map(|(b, a)| b - a).collect()
    };
    let step = |g: &[f32]| g.iter().map(|g| -lr * g).collect::<Vec<f32>>();
    let mut checks = vec![(format!("{fc1_name}.rows"), step(&floats(&fc1["grad"]["data"])))];
    if let Some(b) = bias {
        checks.push((format!("{b}.rows"), step(&floats(&fc1["bias_grad"]))));
    }
    let mut worst = 0f64;
    for (param, want) in checks {
        let err = relative_error(&moved(&param), &want);
        assert!(err < 1e-4, "'{param}': {err:e}");
        worst = worst.max(err);
    }
    // fc2.rows is [units, hidden]: its reference columns.
    let all = moved(&format!("{fc2_name}.rows"));
    let hidden = all.len() / units.len();
    let got: Vec<f32> =
        (0..units.len()).flat_map(|i| columns.iter().map(|&c| all[i * hidden + c]).collect::<Vec<_>>()).collect();
    let err = relative_error(&got, &step(&want_fc2));
    assert!(err < 1e-4, "fc2 input rows moved {got:?}, want {:?} ({err:e})", step(&want_fc2));
    worst = worst.max(err);
    eprintln!("{name} mlp-unit: largest relative error vs PyTorch {worst:e}");
}

/// `--strategy gradient`: the loss the artifacts will train (per token, or one class
/// per row for BERT) scores the rows on the calibration data.
#[test]
fn every_export_compiles_with_gradient_selection() {
    for name in ["llama", "qwen2", "gpt2", "phi", "bert"] {
        let r = reference(name);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_lines(&dir.join("ref.jsonl"), &jsonl(&r));
        let model = repo(&format!("models/fixtures/optimum_{name}.onnx"));
        let m = model.to_str().unwrap();
        neft_ok(&["compile", m, "-o", "g", "--data", "ref.jsonl", "--strategy", "gradient", "--budget", "10%"], dir);
        let file = dir.join("g/neurons.json");
        let neurons: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert!(!neurons["layers"].as_object().unwrap().is_empty(), "{name}");
    }
}

#[test]
fn gpt2_conv1d_blocks_get_structural_roles() {
    let model = repo("models/fixtures/optimum_gpt2.onnx");
    let out = neft_ok(&["inspect", model.to_str().unwrap(), "--json"], Path::new("."));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let role = |weight: &str| {
        let layers = report["layers"].as_array().unwrap();
        let layer = layers.iter().find(|l| l["weight"] == weight).unwrap_or_else(|| panic!("{weight}: no layer"));
        layer["role"].as_str().unwrap().to_string()
    };
    assert_eq!(role("transformer.h.0.attn.c_attn.weight"), "block 0 / attn.qkv");
    assert_eq!(role("transformer.h.0.attn.c_proj.weight"), "block 0 / attn.o");
    assert_eq!(role("transformer.h.1.mlp.c_fc.weight"), "block 1 / mlp.up");
    assert_eq!(role("transformer.h.1.mlp.c_proj.weight"), "block 1 / mlp.down");
    assert_eq!(role("onnx::MatMul_658"), "head");
}

#[test]
fn labels_must_fit_the_loss_the_artifacts_were_compiled_with() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bert = reference("bert");
    write_lines(&dir.join("classes.jsonl"), &jsonl(&bert));
    write_lines(&dir.join("tokens.jsonl"), &jsonl(&reference("llama")));
    compile(dir, "bert", &bert);
    let out = neft(&["train", "art", "--data", "tokens.jsonl", "--steps", "1"], dir);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tokens.jsonl: example 1: these artifacts need a \"label\""), "{}", stderr(&out));
    compile(dir, "llama", &reference("llama"));
    let out = neft(&["train", "art", "--data", "classes.jsonl", "--steps", "1"], dir);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("these artifacts take token labels, not a \"label\""), "{}", stderr(&out));
}
