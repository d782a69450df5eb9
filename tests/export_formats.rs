//! The tuned model out of neft: `neft export --hf` (a Hugging Face checkpoint),
//! `--gguf` (llama.cpp) and `--peft` (a PEFT LoRA adapter), on a tiny Llama built from
//! a GGUF written here. Each export is read back (rebuilt by `neft build-model`, or by
//! the reader) and must equal the merged ONNX model; the end-of-sequence token comes
//! from the model's own metadata.

mod gguf_support;
mod train_support;

use neft::artifact::StateTensor;
use neft::data::{load_tokenizer, Encode};
use neft::models::gguf::{GgmlType, Gguf, Value};
use neft::onnx::{self, Model};
use std::collections::BTreeMap;
use std::path::Path;
use train_support::{load_state, neft, neft_ok, pattern_lines, stderr, write_lines, write_neurons};

/// Writes the tiny GGUF, builds it into `dir/m` and writes training data.
fn setup(dir: &Path) {
    std::fs::write(dir.join("tiny.gguf"), gguf_support::tiny_llama_gguf(7)).unwrap();
    neft_ok(&["build-model", "llama", "--gguf", "tiny.gguf", "-o", "m"], dir);
    write_lines(&dir.join("train.jsonl"), &pattern_lines(16, 12, 8, 5));
}

/// Compiles `m/model.onnx` on `neurons` and trains it 4 steps.
fn tune(dir: &Path, neurons: &[(&str, usize, Vec<usize>)], flags: &[&str]) {
    write_neurons(&dir.join("n.json"), neurons);
    let compile =
        [&["compile", "m/model.onnx", "-o", "art", "--neurons", "n.json", "--lr", "5e-2"][..], flags].concat();
    neft_ok(&compile, dir);
    neft_ok(&["train", "art", "--data", "train.jsonl", "--steps", "4", "--batch", "4", "--threads", "1"], dir);
}

/// Every FLOAT initializer of a model, by name.
fn weights(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let m: Model = onnx::load(path).unwrap();
    m.graph()
        .initializer
        .iter()
        .filter(|t| t.data_type() == onnx::DataType::Float as i32)
        .map(|t| (t.name().to_string(), m.tensor_f32(t).unwrap()))
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const MLP_UNITS: [(&str, usize, [usize; 3]); 2] =
    [("model.layers.0.mlp.up_proj.weight.T", 1, [3, 10, 33]), ("model.layers.1.mlp.up_proj.weight.T", 1, [0, 5, 63])];

fn mlp_units() -> Vec<(&'static str, usize, Vec<usize>)> {
    MLP_UNITS.iter().map(|(w, a, r)| (*w, *a, r.to_vec())).collect()
}

#[test]
fn a_hugging_face_export_rebuilds_into_the_merged_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    tune(dir, &mlp_units(), &["--unit", "mlp-unit"]);
    let out = neft_ok(&["export", "art", "--merged", "merged.onnx", "--hf", "hf"], dir);
    assert!(train_support::stdout(&out).contains("Hugging Face checkpoint"), "{}", train_support::stdout(&out));

    // The checkpoint has Hugging Face names and layouts; the tied head is left out.
    let st = load_state(&dir.join("hf/model.safetensors"));
    assert_eq!(st.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(st.tensors.len(), 1 + 2 * 9 + 1, "embedding, 9 tensors a block, final norm");
    assert_eq!(st.tensors["model.layers.0.mlp.down_proj.weight"].shape(), [32, 64]);
    assert!(!st.tensors.contains_key("lm_head.weight"));

    // Rebuilt from the checkpoint, every weight equals the merged model's, bit for bit,
    // and training did change some.
    neft_ok(&["build-model", "llama", "--safetensors", "hf", "-o", "rebuilt"], dir);
    let (merged, rebuilt, base) = (
        weights(&dir.join("merged.onnx")),
        weights(&dir.join("rebuilt/model.onnx")),
        weights(&dir.join("m/model.onnx")),
    );
    assert!(merged == rebuilt, "the checkpoint does not rebuild into the merged model");
    assert!(merged != base, "training changed nothing");

    let config = json(&dir.join("hf/config.json"));
    for (key, want) in [
        ("model_type", serde_json::json!("llama")),
        ("architectures", serde_json::json!(["LlamaForCausalLM"])),
        ("hidden_size", serde_json::json!(32)),
        ("num_key_value_heads", serde_json::json!(2)),
        ("tie_word_embeddings", serde_json::json!(true)),
        ("max_position_embeddings", serde_json::json!(256)),
        ("bos_token_id", serde_json::json!(1)),
        ("eos_token_id", serde_json::json!(2)),
        ("torch_dtype", serde_json::json!("float32")),
    ] {
        assert_eq!(config[key], want, "config.json {key}");
    }
    assert_eq!(json(&dir.join("hf/generation_config.json"))["eos_token_id"], 2);
    let tc = json(&dir.join("hf/tokenizer_config.json"));
    assert_eq!(
        (&tc["bos_token"], &tc["eos_token"], &tc["pad_token"], &tc["chat_template"]),
        (&"<|im_start|>".into(), &"<|im_end|>".into(), &"<|endoftext|>".into(), &"{{ messages }}".into())
    );
    assert!(dir.join("hf/tokenizer.json").is_file());
}

#[test]
fn a_trained_tied_head_is_exported_apart_from_the_embedding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    tune(dir, &[("lm_head.weight.T", 1, vec![4, 9, 20])], &[]);
    let out = neft_ok(
        &["export", "art", "--merged", "merged.onnx", "--hf", "hf", "--gguf", "t.gguf", "--gguf-type", "f32"],
        dir,
    );
    assert!(train_support::stdout(&out).contains("written apart"), "{}", train_support::stdout(&out));
    assert_eq!(json(&dir.join("hf/config.json"))["tie_word_embeddings"], false);
    assert!(load_state(&dir.join("hf/model.safetensors")).tensors.contains_key("lm_head.weight"));
    assert!(Gguf::open(dir.join("t.gguf")).unwrap().tensor("output.weight").is_ok());
    let merged = weights(&dir.join("merged.onnx"));
    for (name, from) in [("hf", "--safetensors"), ("gg", "--gguf")] {
        let src = if name == "hf" { "hf" } else { "t.gguf" };
        neft_ok(&["build-model", "llama", from, src, "-o", name], dir);
        assert!(
            weights(&dir.join(name).join("model.onnx")) == merged,
            "{from} export does not rebuild the merged model"
        );
    }
}

#[test]
fn a_gguf_export_keeps_the_source_metadata_and_rebuilds_into_the_merged_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    tune(dir, &mlp_units(), &["--unit", "mlp-unit"]);
    neft_ok(&["export", "art", "--merged", "merged.onnx", "--gguf", "f32.gguf", "--gguf-type", "f32"], dir);
    neft_ok(&["export", "art", "--gguf", "f16.gguf"], dir);

    let (source, f32_file, f16_file) = (
        Gguf::open(dir.join("tiny.gguf")).unwrap(),
        Gguf::open(dir.join("f32.gguf")).unwrap(),
        Gguf::open(dir.join("f16.gguf")).unwrap(),
    );
    let names = |g: &Gguf| g.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&f32_file), names(&source));
    assert_eq!(names(&f16_file), names(&source));
    let meta_without_type = |g: &Gguf| {
        g.metadata.iter().filter(|(k, _)| k != "general.file_type").cloned().collect::<Vec<(String, Value)>>()
    };
    assert_eq!(
        meta_without_type(&f32_file),
        meta_without_type(&source),
        "the tokenizer and settings travel as they are"
    );
    assert_eq!(f16_file.get("general.file_type"), Some(&Value::U32(1)));

    // F32: rebuilt, bit for bit the merged model.
    neft_ok(&["build-model", "llama", "--gguf", "f32.gguf", "-o", "rebuilt"], dir);
    assert!(weights(&dir.join("rebuilt/model.onnx")) == weights(&dir.join("merged.onnx")));
    // F16: matrices are the F32 values rounded to half precision; vectors stay F32.
    for (a, b) in f32_file.tensors.iter().zip(&f16_file.tensors) {
        let exact = f32_file.dequantize(a).unwrap();
        let half = f16_file.dequantize(b).unwrap();
        if a.dims.len() == 1 {
            assert_eq!((b.ggml_type, &half), (GgmlType::F32, &exact), "{}", a.name);
        } else {
            assert_eq!(b.ggml_type, GgmlType::F16, "{}", a.name);
            let rounded: Vec<f32> = exact.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            assert!(half == rounded, "{}: not the F32 values rounded to F16", a.name);
        }
    }
}

#[test]
fn the_gguf_package_reads_the_export() {
    // The Python `gguf` package (installed by .ci/setup) reads the file back: same
    // tensor names, types, shapes and values as neft's reader sees.
    let python = train_support::repo(".cache/py-gguf/bin/python3");
    assert!(python.is_file(), "{} is missing: run `bash .ci/setup`", python.display());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    tune(dir, &mlp_units(), &["--unit", "mlp-unit"]);
    neft_ok(&["export", "art", "--gguf", "out.gguf"], dir);
    let script = train_support::repo("examples/gguf_dump.py");
    let out = std::process::Command::new(&python).arg(&script).arg(dir.join("out.gguf")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = Gguf::open(dir.join("out.gguf")).unwrap();
    assert_eq!(dump["metadata"]["tokenizer.ggml.eos_token_id"], 2);
    assert_eq!(dump["tensors"].as_array().unwrap().len(), g.tensors.len());
    for (t, theirs) in g.tensors.iter().zip(dump["tensors"].as_array().unwrap()) {
        assert_eq!(theirs["name"], t.name.as_str());
        assert_eq!(theirs["type"], t.ggml_type.name().unwrap());
        assert_eq!(theirs["shape"], serde_json::json!(t.shape()), "{}: outermost-first shape", t.name);
        let values: Vec<f32> = serde_json::from_value(theirs["values"].clone()).unwrap();
        assert!(values == g.dequantize(t).unwrap(), "{}: values differ", t.name);
    }
}

#[test]
fn a_peft_export_holds_the_lora_factors_under_peft_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    let compile = [
        "compile",
        "m/model.onnx",
        "-o",
        "art",
        "--mode",
        "lora",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--targets",
        "mlp",
        "--lr",
        "5e-2",
    ];
    neft_ok(&compile, dir);
    neft_ok(&["train", "art", "--data", "train.jsonl", "--steps", "3", "--batch", "4", "--threads", "1"], dir);
    neft_ok(&["export", "art", "--peft", "peft", "--merged", "merged.onnx"], dir);

    let config = json(&dir.join("peft/adapter_config.json"));
    assert_eq!((&config["peft_type"], &config["r"], &config["lora_alpha"]), (&"LORA".into(), &4.into(), &8.0.into()));
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 6, "gate, up and down of 2 blocks");
    let peft = load_state(&dir.join("peft/adapter_model.safetensors"));
    assert_eq!(peft.tensors.len(), 12);
    // PEFT's update of a Linear weight [out, in] is scale·B·A; neft stores W as [in, out],
    // so the merged model must hold W + scale·(B·A)ᵀ.
    let (base, merged) = (weights(&dir.join("m/model.onnx")), weights(&dir.join("merged.onnx")));
    for module in ["model.layers.0.mlp.gate_proj", "model.layers.1.mlp.down_proj"] {
        let get = |part: &str| match &peft.tensors[&format!("base_model.model.{module}.{part}.weight")] {
            StateTensor::F32 { shape, data } => (shape.clone(), data.clone()),
            _ => panic!("not FLOAT"),
        };
        let ((a_shape, a), (b_shape, b)) = (get("lora_A"), get("lora_B"));
        let (rank, n_in, n_out) = (a_shape[0], a_shape[1], b_shape[0]);
        assert_eq!((rank, b_shape[1]), (4, 4));
        let name = format!("{module}.weight.T");
        let (w0, w1) = (&base[&name], &merged[&name]);
        assert_eq!(w0.len(), n_in * n_out);
        let mut worst = 0f32;
        for i in 0..n_in {
            for o in 0..n_out {
                let ba: f32 = (0..rank).map(|k| b[o * rank + k] * a[k * n_in + i]).sum();
                worst = worst.max((w0[i * n_out + o] + 2.0 * ba - w1[i * n_out + o]).abs());
            }
        }
        assert!(worst < 1e-5, "{module}: merged weight differs from W + scale·(B·A)ᵀ by {worst}");
        assert!(b.iter().any(|&x| x != 0.0), "{module}: B never moved");
    }
}

#[test]
fn exports_that_cannot_be_written_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    tune(dir, &mlp_units(), &["--unit", "mlp-unit"]);
    let o = neft(&["export", "art", "--peft", "p"], dir);
    assert!(!o.status.success() && stderr(&o).contains("--peft writes LoRA factors"), "{}", stderr(&o));
    let o = neft(&["export", "art", "--hf", "m"], dir);
    assert!(!o.status.success() && stderr(&o).contains("base model's folder"), "{}", stderr(&o));

    // A model built from random weights has no GGUF to take metadata from.
    std::fs::write(dir.join("cfg.json"), std::fs::read_to_string(dir.join("m/config.json")).unwrap()).unwrap();
    neft_ok(&["build-model", "llama", "--config", "cfg.json", "-o", "r"], dir);
    write_neurons(&dir.join("n2.json"), &mlp_units());
    neft_ok(&["compile", "r/model.onnx", "-o", "art2", "--neurons", "n2.json"], dir);
    neft_ok(&["train", "art2", "--data", "train.jsonl", "--steps", "1", "--batch", "2", "--threads", "1"], dir);
    let o = neft(&["export", "art2", "--gguf", "x.gguf"], dir);
    assert!(!o.status.success() && stderr(&o).contains("no GGUF"), "{}", stderr(&o));
    assert!(!dir.join("x.gguf").exists());

    // A graph that neft did not build has no Hugging Face names.
    let fixture = train_support::llama_path();
    write_neurons(&dir.join("n3.json"), &[("val_244", 1, vec![3])]);
    neft_ok(&["compile", fixture.to_str().unwrap(), "-o", "art3", "--neurons", "n3.json"], dir);
    neft_ok(&["train", "art3", "--data", "train.jsonl", "--steps", "1", "--batch", "2", "--threads", "1"], dir);
    let o = neft(&["export", "art3", "--hf", "h"], dir);
    assert!(!o.status.success() && stderr(&o).contains("neft build-model llama"), "{}", stderr(&o));
}

#[test]
fn the_end_of_sequence_token_comes_from_the_models_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir);
    // config.json says 2 (<|im_end|>), though <|endoftext|> (0) is a usual end name too.
    let tok = load_tokenizer(&dir.join("m/tokenizer.json")).unwrap();
    assert_eq!(tok.eos(), Some(2));
    let line = neft::data::parse_line(r#"{"prompt": "hello", "completion": " world"}"#).unwrap();
    let ids = neft::data::tokenize(&[line], Some(&tok as &dyn Encode), 64).unwrap();
    assert_eq!(ids[0].input_ids.last(), Some(&2), "a completion ends with the model's end token");

    // Without config.json, tokenizer_config.json decides; with neither, the usual names.
    let bare = dir.join("bare");
    std::fs::create_dir(&bare).unwrap();
    std::fs::copy(dir.join("m/tokenizer.json"), bare.join("tokenizer.json")).unwrap();
    assert_eq!(load_tokenizer(&bare.join("tokenizer.json")).unwrap().eos(), Some(0));
    std::fs::write(bare.join("tokenizer_config.json"), r#"{"eos_token": {"content": "<|im_end|>"}}"#).unwrap();
    assert_eq!(load_tokenizer(&bare.join("tokenizer.json")).unwrap().eos(), Some(2));
    std::fs::write(bare.join("config.json"), r#"{"eos_token_id": [1, 2]}"#).unwrap();
    assert_eq!(load_tokenizer(&bare.join("tokenizer.json")).unwrap().eos(), Some(1));
    std::fs::write(bare.join("config.json"), r#"{"eos_token_id": 9999}"#).unwrap();
    let err = load_tokenizer(&bare.join("tokenizer.json")).err().unwrap().to_string();
    assert!(err.contains("config.json") && err.contains("9999"), "{err}");
}
