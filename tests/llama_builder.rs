//! The Llama builder against PyTorch: the tiny Llama exported by torch, rebuilt by neft
//! from the same weights, gives the same logits; the graph is causal and compiles.

use neft::models::llama::{build_llama, LlamaConfig, RandomWeights, WeightSource};
use neft::onnx::{self, Model};
use neft::runtime::ort::{HostTensor, Session, SessionOptions};
use std::path::Path;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 128,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
        pad_token_id: None,
        max_position_embeddings: None,
    }
}

/// The PyTorch export's weights under their HF names, back in `[out, in]` layout.
struct FromTorchExport(Model);

impl WeightSource for FromTorchExport {
    fn weight(&mut self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        // Anonymous names the exporter gave each projection (see models/fixtures/README.md).
        let projections = [
            ["val_109", "val_116", "val_123", "val_237", "val_242", "val_244", "val_245"],
            ["val_250", "val_257", "val_264", "val_373", "val_378", "val_380", "val_381"],
        ];
        let roles = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
        let find = |n: &str| self.0.graph().initializer.iter().find(|t| t.name() == n).cloned().unwrap();
        if name == "model.embed_tokens.weight" {
            return Ok(self.0.tensor_f32(&find("m.lm_head.weight"))?);
        }
        if name.ends_with("norm.weight") {
            return Ok(self.0.tensor_f32(&find(&format!("m.{name}")))?);
        }
        let layer: usize = name.split('.').nth(2).unwrap().parse()?;
        let role = roles.iter().position(|r| name.contains(r)).unwrap();
        let stored = self.0.tensor_f32(&find(projections[layer][role]))?; // [in, out]
        let (out, inp) = (shape[0], shape[1]);
        Ok((0..out * inp).map(|k| stored[(k % inp) * out + k / inp]).collect())
    }
}

fn logits(path: &Path, ids: &[i64], shape: [usize; 2]) -> Vec<f32> {
    let mut s = Session::from_file(path, &SessionOptions { threads: Some(1), ..Default::default() }).unwrap();
    let out = s.run(&[("input_ids", HostTensor::i64(&shape, ids.to_vec()))]).unwrap();
    out.into_iter().find(|(n, _)| n == "logits").unwrap().1.as_f32().unwrap().iter().copied().collect()
}

#[test]
fn rebuilt_from_the_torch_weights_it_matches_pytorchs_logits() {
    let dir = tempfile::tempdir().unwrap();
    let torch = onnx::load(repo("models/fixtures/tiny_llama.onnx")).unwrap();
    let path = build_llama(&tiny_config(), &mut FromTorchExport(torch), dir.path()).unwrap();
    let ids: Vec<i64> = (0..2 * 9).map(|k| (k * 37 % 128) as i64).collect();
    let ours = logits(&path, &ids, [2, 9]);
    let theirs = logits(&repo("models/fixtures/tiny_llama.onnx"), &ids, [2, 9]);
    let max_diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-4, "max |neft - torch| = {max_diff}");
}

#[test]
fn a_random_llama_is_causal_and_its_layers_are_recognized() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.num_hidden_layers = 3;
    let path = build_llama(&cfg, &mut RandomWeights::new(7), dir.path()).unwrap();
    let a: Vec<i64> = vec![5, 9, 17, 33, 2, 80];
    let mut b = a.clone();
    b[4] = 100; // change a late token: earlier positions must not notice
    let (la, lb) = (logits(&path, &a, [1, 6]), logits(&path, &b, [1, 6]));
    assert_eq!(&la[..4 * 128], &lb[..4 * 128]);
    assert_ne!(&la[4 * 128..], &lb[4 * 128..]);

    let m = onnx::load(&path).unwrap();
    assert!(m
        .graph()
        .initializer
        .iter()
        .any(|t| t.data_location() == onnx::proto::tensor_proto::DataLocation::External));
    let graph = neft::ir::Graph::from_proto(m.graph()).unwrap();
    let layers = neft::analyze::find_layers(&graph);
    let roles: Vec<&str> = layers.iter().map(|l| l.role.as_str()).collect();
    assert_eq!(roles.len(), 3 * 7 + 1);
    assert_eq!(
        &roles[7..14],
        [
            "block 1 / attn.q",
            "block 1 / attn.k",
            "block 1 / attn.v",
            "block 1 / attn.o",
            "block 1 / mlp.gate",
            "block 1 / mlp.up",
            "block 1 / mlp.down"
        ]
    );
    assert_eq!(roles[21], "head");
}

#[test]
fn a_huggingface_checkpoint_folder_builds_through_the_cli() {
    // Write the torch weights as a HF checkpoint (config.json + model.safetensors),
    // then `neft build-model llama --safetensors` must reproduce the torch logits.
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    let cfg = tiny_config();
    std::fs::write(ckpt.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let mut src = FromTorchExport(onnx::load(repo("models/fixtures/tiny_llama.onnx")).unwrap());
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    let mut add = |name: String, shape: Vec<usize>| {
        let data = src.weight(&name, &shape).unwrap();
        tensors.push((name, shape, data.iter().flat_map(|v| v.to_le_bytes()).collect()));
    };
    add("model.embed_tokens.weight".into(), vec![128, 32]);
    add("model.norm.weight".into(), vec![32]);
    for l in 0..2 {
        for (n, shape) in [
            ("self_attn.q_proj", vec![32, 32]),
            ("self_attn.k_proj", vec![16, 32]),
            ("self_attn.v_proj", vec![16, 32]),
            ("self_attn.o_proj", vec![32, 32]),
            ("mlp.gate_proj", vec![64, 32]),
            ("mlp.up_proj", vec![64, 32]),
            ("mlp.down_proj", vec![32, 64]),
        ] {
            add(format!("model.layers.{l}.{n}.weight"), shape);
        }
        add(format!("model.layers.{l}.input_layernorm.weight"), vec![32]);
        add(format!("model.layers.{l}.post_attention_layernorm.weight"), vec![32]);
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::write(ckpt.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_neft"))
        .args(["build-model", "llama", "--safetensors"])
        .arg(&ckpt)
        .arg("-o")
        .arg(dir.path().join("built"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<i64> = (0..7).map(|k| (k * 19 % 128) as i64).collect();
    let ours = logits(&dir.path().join("built/model.onnx"), &ids, [1, 7]);
    let theirs = logits(&repo("models/fixtures/tiny_llama.onnx"), &ids, [1, 7]);
    let max_diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-4, "max |neft - torch| = {max_diff}");
}
