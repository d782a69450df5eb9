//! Compile cost at scale: wall time and peak memory of `neft-compile` on decoders of
//! real sizes whose weights are placeholders (a sparse data file: zeros that take no
//! disk), so what is measured is the compiler itself, which must not read frozen
//! weights it does not need.
//!
//! ```text
//! cargo run --release --example bench_compile -- [--fraction 0.06] [--only 7b|smollm2]
//! ```
//! Each compile runs in its own child process (`neft compile`), so its peak resident
//! memory (VmHWM, read by the child) is its own.

use neft::models::llama::{build_llama, LlamaConfig, PlaceholderWeights};
use neft::select::{LayerNeurons, NeuronSet};
use std::path::Path;
use std::time::Instant;

fn config(name: &str) -> LlamaConfig {
    let (vocab, hidden, ffn, layers, heads, kv, theta) = match name {
        "7b" => (32000, 4096, 11008, 32, 32, 32, 10000.0),
        _ => (49152, 576, 1536, 30, 9, 3, 100000.0),
    };
    LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        rope_theta: theta,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: name != "7b",
        bos_token_id: None,
        eos_token_id: None,
        pad_token_id: None,
        max_position_embeddings: None,
    }
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child") {
        // Child: compile, then report time and peak memory.
        let (model, neurons, out) = (Path::new(&argv[2]), Path::new(&argv[3]), Path::new(&argv[4]));
        let t = Instant::now();
        let m = neft::onnx::load(model).unwrap();
        let set = NeuronSet::load(neurons).unwrap();
        let opts = neft::compile::CompileOptions {
            mode: neft::compile::Mode::Split,
            unit: neft::compile::Unit::MlpUnit,
            loss: neft::passes::append_loss::LossSpec::Auto,
            optimizer: neft::optim::Optimizer::adamw(0.0),
            lr: 1e-4,
            clip: Some(1.0),
            targets: None,
            lora: None,
        };
        let plan = neft::compile::compile(&m, &set, &opts, out).unwrap();
        println!(
            "{:.2};{:.0};{};{}",
            t.elapsed().as_secs_f64(),
            peak_rss_mb(),
            plan.counts.trainable_params,
            plan.counts.train_nodes
        );
        return;
    }
    let fraction: f64 =
        argv.iter().position(|a| a == "--fraction").map(|i| argv[i + 1].parse().unwrap()).unwrap_or(0.06);
    let only = argv.iter().position(|a| a == "--only").map(|i| argv[i + 1].clone());
    println!("| model | parameters | weights on disk (sparse) | build (s) | compile (s) | compile peak RSS (MB) | trainable | train-step nodes |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for name in ["smollm2", "7b"] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let root = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let cfg = config(name);
        let t = Instant::now();
        let path = build_llama(&cfg, &mut PlaceholderWeights, &root.path().join("model")).unwrap();
        let build_s = t.elapsed().as_secs_f64();
        let model = neft::onnx::load(&path).unwrap();
        let params: u64 = model.graph().initializer.iter().map(|t| neft::onnx::element_count(&t.dims)).sum();
        let data = std::fs::metadata(root.path().join("model/model.onnx.data")).unwrap().len();
        // `fraction` of every MLP's units, evenly spread.
        let graph = neft::ir::Graph::from_proto(model.graph()).unwrap();
        let layers = neft::analyze::find_layers(&graph);
        let structure = neft::analyze::analyze_structure(&graph, &layers);
        let mut set = NeuronSet::new();
        for m in &structure.mlps {
            let k = ((m.units as f64 * fraction).round() as usize).max(1);
            set.layers.insert(m.up.clone(), LayerNeurons { axis: 1, rows: (0..k).map(|i| i * m.units / k).collect() });
        }
        drop((graph, model));
        let neurons = root.path().join("neurons.json");
        set.save(&neurons).unwrap();
        let out = std::process::Command::new(&argv[0])
            .args([
                "--child",
                path.to_str().unwrap(),
                neurons.to_str().unwrap(),
                root.path().join("out").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.trim().split(';').collect();
        println!(
            "| {name} ({} layers, hidden {}, ffn {}) | {:.2}B | {:.1} GB | {build_s:.1} | {} | {} | {} | {} |",
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.intermediate_size,
            params as f64 / 1e9,
            data as f64 / 1e9,
            f[0],
            f[1],
            f[2],
            f[3]
        );
    }
}
