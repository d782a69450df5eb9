//! Where the time goes: sums an ONNX Runtime profile (written when NEFT_ORT_PROFILE is
//! set) by op type, and by the neft pass that added each node when `--graph` names the
//! model the profile ran.
//!
//! ```text
//! NEFT_ORT_PROFILE=/tmp/p cargo run --release --example bench_train -- ...
//! cargo run --release --example ort_profile -- /tmp/p_<date>.json [--graph OUT/train_step.onnx] [--skip-runs 1]
//! ```

use std::collections::HashMap;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().expect("usage: ort_profile PROFILE.json [--graph MODEL.onnx] [--skip-runs N]");
    let opt = |k: &str| args.iter().position(|a| a == k).map(|i| args[i + 1].clone());
    let skip: usize = opt("--skip-runs").map(|v| v.parse().unwrap()).unwrap_or(1);
    let labels: HashMap<String, String> = match opt("--graph") {
        Some(g) => neft::onnx::load(&g)
            .unwrap()
            .graph()
            .node
            .iter()
            .map(|n| {
                let label =
                    n.metadata_props.iter().find(|m| m.key() == neft::ir::PASS_KEY).map(|m| m.value().to_string());
                (n.name().to_string(), label.unwrap_or_else(|| "model".into()))
            })
            .collect(),
        None => HashMap::new(),
    };
    let events: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut runs = 0usize;
    let (mut by_op, mut by_pass): (HashMap<String, f64>, HashMap<String, f64>) = (HashMap::new(), HashMap::new());
    let mut total = 0.0;
    for e in &events {
        let name = e["name"].as_str().unwrap_or_default();
        if e["cat"] == "Session" && name == "model_run" {
            runs += 1;
        }
        if e["cat"] != "Node" || !name.ends_with("_kernel_time") || runs < skip {
            continue;
        }
        let dur = e["dur"].as_f64().unwrap_or(0.0) / 1e3;
        let op = e["args"]["op_name"].as_str().unwrap_or("?").to_string();
        let node = name.trim_end_matches("_kernel_time");
        *by_op.entry(op).or_default() += dur;
        *by_pass.entry(labels.get(node).cloned().unwrap_or_else(|| "?".into())).or_default() += dur;
        total += dur;
    }
    let measured = runs.saturating_sub(skip).max(1) as f64;
    println!(
        "{} runs after skipping {skip}; kernel time per run {:.1} ms",
        runs.saturating_sub(skip),
        total / measured
    );
    for (title, table) in [("op type", by_op), ("pass", by_pass)] {
        if table.len() <= 1 && title == "pass" {
            continue;
        }
        let mut rows: Vec<(String, f64)> = table.into_iter().collect();
        rows.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        println!("\n| {title} | ms per run | share |\n|---|---:|---:|");
        for (k, v) in rows.iter().take(15) {
            println!("| {k} | {:.2} | {:.1}% |", v / measured, 100.0 * v / total);
        }
    }
}
