//! `neft inspect` as users run it, shape inference on real exports, and the errors a
//! machine without CUDA gets.

use neft::onnx;
use neft::runtime::ort::{Ep, RuntimeError, Session, SessionOptions};
use neft::runtime::tract::{infer, Dim};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn inspect_json(path: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_neft")).arg("inspect").arg(path).arg("--json").output().unwrap();
    assert!(out.status.success(), "inspect failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn inspect_json_counts_the_layers_of_a_small_mlp() {
    let j = inspect_json(&repo("models/fixtures/mlp_loss.onnx"));
    assert_eq!(j["opsets"][0]["version"], 18);
    assert_eq!(j["op_histogram"]["Gemm"], 2);
    assert_eq!(j["parameters"]["count"], 811, "16*32+32 + 32*8+8 + 3 scalar constants");
    let layers = j["layers"].as_array().unwrap();
    let got: Vec<(&str, &str, u64, u64, u64)> = layers
        .iter()
        .map(|l| {
            (
                l["weight"].as_str().unwrap(),
                l["kind"].as_str().unwrap(),
                l["axis"].as_u64().unwrap(),
                l["neurons"].as_u64().unwrap(),
                l["params"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("fc1.weight", "gemm", 0, 32, 16 * 32 + 32), ("fc2.weight", "gemm", 0, 8, 32 * 8 + 8)]);
}

#[test]
fn inspect_json_counts_the_layers_of_resnet50() {
    let j = inspect_json(&repo(".cache/onnx-light/light_resnet50.onnx"));
    let layers = j["layers"].as_array().unwrap();
    let convs = layers.iter().filter(|l| l["kind"] == "conv").count();
    let gemms = layers.iter().filter(|l| l["kind"] == "gemm").count();
    assert_eq!((convs, gemms), (53, 1));
    // Output channels of every conv plus the 1000 classes.
    assert_eq!(j["trainable"]["neurons"], 27560);
    assert_eq!(j["trainable"]["params"], 25_503_912, "conv weights + fc weight and bias");
    assert_eq!(layers[0]["shape"], serde_json::json!([64, 3, 7, 7]));
    assert_eq!(layers[0]["source"], "ConstantOfShape");
}

#[test]
fn inspect_json_finds_every_linear_layer_of_a_pytorch_llama() {
    let j = inspect_json(&repo("models/fixtures/tiny_llama.onnx"));
    // 2 blocks x (q, k, v, o, gate, up, down) + the tied output projection.
    assert_eq!(j["trainable"]["layers"], 15);
    assert_eq!(j["inputs"][0]["shape"], serde_json::json!(["batch", "seq"]));
    let layers = j["layers"].as_array().unwrap();
    assert!(layers.iter().all(|l| l["kind"] == "matmul" && l["axis"] == 1));
    // Roles found by pattern; the weight names are what the exporter wrote (checked
    // against the torch weights when the fixture was made, see models/fixtures/README.md).
    let roles: Vec<(&str, &str)> =
        layers.iter().map(|l| (l["weight"].as_str().unwrap(), l["role"].as_str().unwrap())).collect();
    let want = [
        ("val_109", "block 0 / attn.q"),
        ("val_116", "block 0 / attn.k"),
        ("val_123", "block 0 / attn.v"),
        ("val_237", "block 0 / attn.o"),
        ("val_242", "block 0 / mlp.gate"),
        ("val_244", "block 0 / mlp.up"),
        ("val_245", "block 0 / mlp.down"),
        ("val_250", "block 1 / attn.q"),
        ("val_257", "block 1 / attn.k"),
        ("val_264", "block 1 / attn.v"),
        ("val_373", "block 1 / attn.o"),
        ("val_378", "block 1 / mlp.gate"),
        ("val_380", "block 1 / mlp.up"),
        ("val_381", "block 1 / mlp.down"),
        ("val_386", "head"),
    ];
    assert_eq!(roles, want);
}

#[test]
fn inspect_labels_the_layers_of_a_pytorch_bert() {
    let j = inspect_json(&repo("models/fixtures/tiny_bert.onnx"));
    let layers = j["layers"].as_array().unwrap();
    let roles: Vec<&str> = layers.iter().map(|l| l["role"].as_str().unwrap()).collect();
    let block =
        |b: usize| ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"].map(|r| format!("block {b} / {r}"));
    let want: Vec<String> = block(0).into_iter().chain(block(1)).collect();
    assert_eq!(roles, want);
    // Every BERT linear layer has its bias.
    assert!(layers.iter().all(|l| l["bias"].as_str().is_some_and(|b| b.ends_with(".bias"))));
}

#[test]
fn inspect_reports_bad_files_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"\x08\x07garbage that is not a model").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_neft")).arg("inspect").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.onnx") && err.contains("not a valid ONNX model"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_neft")).arg("inspect").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "missing argument is a usage error");
}

#[test]
fn tract_infers_symbolic_shapes_of_a_pytorch_llama() {
    let m = onnx::load(repo("models/fixtures/tiny_llama.onnx")).unwrap();
    let facts = infer(&m).unwrap();
    let logits = &facts["logits"];
    assert_eq!(logits.dtype, Some(onnx::DataType::Float as i32));
    let shape = logits.shape.as_ref().unwrap();
    assert_eq!(shape[0], Dim::Symbolic("batch".into()));
    assert_eq!(shape[1], Dim::Symbolic("seq".into()));
    assert_eq!(shape[2], Dim::Known(128));
    // A weight's own fact is known without tract reading its data.
    assert_eq!(facts["val_245"].shape, Some(vec![Dim::Known(64), Dim::Known(32)]));
}

#[test]
fn cuda_on_a_machine_without_it_fails_loudly_and_says_what_is_missing() {
    let opts = SessionOptions { ep: Ep::Cuda { device: 0 }, threads: Some(1), ..Default::default() };
    match Session::from_file(&repo("models/fixtures/mlp_loss.onnx"), &opts) {
        Err(RuntimeError::Cuda { hint, .. }) => {
            assert!(hint.contains("libonnxruntime_providers_cuda.so"), "{hint}");
            assert!(hint.contains("README.md"), "{hint}");
        }
        Err(other) => panic!("expected a CUDA registration error, got: {other}"),
        Ok(_) => panic!("a CUDA session was created on a machine without the CUDA provider"),
    }
}

#[test]
fn hostile_dimensions_are_reported_not_overflowed() {
    // A weight declaring 2^62 x 4 elements (found by fuzzing: the parameter count overflowed).
    use neft::onnx::make;
    use neft::onnx::proto::GraphProto;
    let mut w = make::tensor_f32("w", &[1 << 62, 4], &[]);
    w.raw_data = None;
    let graph = GraphProto {
        node: vec![make::node("MatMul", &["x", "w"], &["y"], vec![])],
        initializer: vec![w],
        input: vec![make::value_info("x", onnx::DataType::Float, &[1.into(), (1i64 << 62).into()])],
        output: vec![make::value_info("y", onnx::DataType::Float, &[1.into(), 4.into()])],
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.onnx");
    std::fs::write(&path, prost::Message::encode_to_vec(&make::model(graph, 18))).unwrap();
    let j = inspect_json(&path);
    assert_eq!(j["layers"][0]["params"], u64::MAX, "saturated, not wrapped");
    let out = Command::new(env!("CARGO_BIN_EXE_neft")).arg("inspect").arg(&path).arg("--check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too large to synthesize"));
}

#[test]
fn a_closed_output_pipe_ends_inspect_quietly() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_neft"))
        .arg("inspect")
        .arg(repo("models/fixtures/tiny_llama.onnx"))
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Like `| head -c 0`: the reader goes away before anything is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "a panic's exit code");
}

#[test]
fn an_error_names_its_cause_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_neft")).args(["inspect", "no-such-model.onnx"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no-such-model.onnx"), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}

#[test]
fn inspect_of_a_folder_without_a_plan_says_what_it_expected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not an artifact").unwrap();
    for extra in [&[][..], &["--json"], &["--html", "page.html"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_neft")).arg("inspect").arg(dir.path()).args(extra).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("not a neft artifact folder (no plan.json)"), "{err}");
        assert!(err.contains(".onnx model") && err.contains("neft compile"), "{err}");
        assert!(!err.contains("No such file"), "{err}");
    }
}
