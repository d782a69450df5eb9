//! How long `autodiff::grad` takes, and how many nodes it adds, on decoder graphs.
//!
//!     cargo run --release --example autodiff_timing [-- --layers 30]
//!
//! Two graphs per run, gradients for every weight:
//! - the decoder block of `tests/autodiff_graphs.rs` (embedding Gather, RMSNorm as
//!   Pow/ReduceMean/Sqrt/Div, causal attention with Where, SiLU-gated MLP, tied output
//!   projection, cross-entropy), stacked to 1 and to `--layers` layers;
//! - `models::llama` at TinyLlama-1.1B sizes (rotary embeddings, grouped-query
//!   attention, the exporter's Reshape/Expand patterns) with `--layers` layers and
//!   placeholder weights (a sparse file: nothing is read), plus cross-entropy.

#[path = "../tests/autodiff_support/mod.rs"]
mod support;

use neft::autodiff::{grad, GradOptions, GradReport};
use neft::ir::{attr, Graph};
use neft::onnx::proto::tensor_proto::DataType;
use neft::onnx::proto::ModelProto;
use std::time::Instant;
use support::build::{self, Decoder};

fn weights(model: &ModelProto) -> Vec<String> {
    model
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .filter(|t| t.data_type() == DataType::Float as i32 && !t.dims.is_empty() && t.dims.iter().product::<i64>() > 4)
        .map(|t| t.name().to_string())
        .filter(|n| !n.contains("inv_freq"))
        .collect()
}

/// Runs `grad` `reps` times; prints the median time and the report's totals.
fn measure(label: &str, model: &ModelProto, dir: &std::path::Path, reps: usize) -> GradReport {
    let wrt = weights(model);
    let opts = GradOptions { opset: 18, model_dir: dir.to_path_buf() };
    let t = Instant::now();
    let graph = Graph::from_proto(model.graph.as_ref().unwrap()).unwrap();
    let import = t.elapsed();
    let t = Instant::now();
    let facts = neft::runtime::tract::infer(&neft::onnx::Model::new(model.clone(), dir)).unwrap();
    let infer = t.elapsed();
    let mut times = vec![];
    let mut report = None;
    for _ in 0..reps {
        let t = Instant::now();
        let out = grad(&graph, "loss", &wrt, &opts).unwrap();
        times.push(t.elapsed());
        report = Some(out.report);
    }
    times.sort();
    let r = report.unwrap();
    println!(
        "{label}: {} weights, {} forward ops, {} backward ops ({:.2}x); grad {:.1?} (median of {reps}); tract shape inference alone {:.1?} ({} values), graph import {:.1?}",
        wrt.len(),
        r.forward_ops(),
        r.backward_ops(),
        r.backward_ops() as f64 / r.forward_ops() as f64,
        times[reps / 2],
        infer,
        facts.len(),
        import
    );
    r
}

/// Appends mean token cross-entropy on `logits` against a new `labels [batch, seq]` input.
fn with_cross_entropy(model: &ModelProto) -> ModelProto {
    let mut graph = Graph::from_proto(model.graph.as_ref().unwrap()).unwrap();
    let lp = graph.add1("LogSoftmax", &["logits"], vec![attr::int("axis", -1)], "ce").unwrap();
    let labels = neft::onnx::make::value_info("labels", DataType::Int64, &["batch".into(), "seq".into()]);
    graph.add_input(labels).unwrap();
    let axes = graph.fresh_name("ce.axes");
    graph.add_initializer(neft::onnx::make::tensor_i64(&axes, &[1], &[-1])).unwrap();
    let lab = graph.add1("Unsqueeze", &["labels", &axes], vec![], "ce").unwrap();
    let picked = graph.add1("GatherElements", &[&lp, &lab], vec![attr::int("axis", -1)], "ce").unwrap();
    let nll = graph.add1("Neg", &[&picked], vec![], "ce").unwrap();
    let proto = neft::onnx::make::node("ReduceMean", &[&nll], &["loss"], vec![attr::int("keepdims", 0)]);
    graph.add_op(proto).unwrap();
    graph.set_outputs(vec![neft::onnx::make::value_info("loss", DataType::Float, &[])]).unwrap();
    let mut m = model.clone();
    m.graph = Some(graph.to_proto());
    m
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let layers: usize = argv.iter().position(|a| a == "--layers").map(|i| argv[i + 1].parse().unwrap()).unwrap_or(30);
    let here = std::path::Path::new(".");

    let mut rng = support::Rng(1);
    let block = Decoder { vocab: 256, hidden: 64, heads: 4, ffn: 172, layers: 1, tied: true };
    let one = build::decoder(block, DataType::Float, &mut rng);
    let report = measure("test decoder, 1 block", &one, here, 21);
    println!("{report}");
    let deep = build::decoder(Decoder { layers, ..block }, DataType::Float, &mut rng);
    measure(&format!("test decoder, {layers} blocks"), &deep, here, 5);

    let root = tempfile::tempdir().unwrap();
    let cfg: neft::models::llama::LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
        "num_hidden_layers": layers, "num_attention_heads": 32, "num_key_value_heads": 4,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": false
    }))
    .unwrap();
    let t = Instant::now();
    let path =
        neft::models::llama::build_llama(&cfg, &mut neft::models::llama::PlaceholderWeights, &root.path().join("m"))
            .unwrap();
    let model = neft::onnx::load(&path).unwrap();
    println!(
        "built and loaded models::llama ({layers} layers, hidden 2048, placeholder weights) in {:.1?}",
        t.elapsed()
    );
    let model = with_cross_entropy(&model.proto);
    measure(&format!("models::llama, {layers} layers"), &model, path.parent().unwrap(), 5);
}
