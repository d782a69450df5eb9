//! `neft demo`: the whole flow on the small PyTorch-exported Llama embedded in the
//! binary, in seconds: profile activations and select neurons worth 6% of the layers'
//! parameters, compile, train on a pattern task, inspect, export an adapter and a
//! merged model. Each step runs the real `neft` command, printed first, so the output
//! doubles as a tutorial.

use super::{run_neft, words};
use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// models/fixtures/tiny_llama.onnx: `LlamaForCausalLM` (vocab 128, hidden 32, 2 layers)
/// exported by `torch.onnx.export(dynamo=True)`, random weights.
const TINY_LLAMA: &[u8] = include_bytes!("../../models/fixtures/tiny_llama.onnx");

pub fn run_tiny_demo(dir: &Path) -> anyhow::Result<()> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let model = dir.join("tiny_llama.onnx");
    crate::fsutil::write_bytes_atomic(&model, TINY_LLAMA)?;
    // The task: continue arithmetic progressions mod 128 (step 1 to 7), which the
    // random-weight model cannot do.
    write_progressions(&data.join("train.jsonl"), 0..192)?;
    write_progressions(&data.join("eval.jsonl"), 1000..1032)?;
    let out = dir.join("out");
    let p = |p: &Path| p.display().to_string();
    let steps: [(&str, Vec<String>); 5] = [
        ("look at the model", vec!["inspect".into(), p(&model)]),
        (
            "profile activations, select neurons worth 6% of the parameters, rewrite the graph",
            words(&[
                "compile",
                &p(&model),
                "-o",
                &p(&out),
                "--data",
                &p(&data.join("train.jsonl")),
                "--budget",
                "6%",
                "--targets",
                "all",
                "--lr",
                "0.05",
            ]),
        ),
        (
            "train the selected rows on ONNX Runtime",
            words(&[
                "train",
                &p(&out),
                "--data",
                &p(&data.join("train.jsonl")),
                "--eval",
                &p(&data.join("eval.jsonl")),
                "--steps",
                "600",
                "--batch",
                "16",
                "--checkpoint-every",
                "200",
            ]),
        ),
        ("see what was compiled and how training went", vec!["inspect".into(), p(&out)]),
        (
            "export the trained rows as an adapter and as a merged model",
            words(&[
                "export",
                &p(&out),
                "--adapter",
                &p(&dir.join("adapter.safetensors")),
                "--merged",
                &p(&dir.join("merged.onnx")),
            ]),
        ),
    ];
    for (i, (what, args)) in steps.iter().enumerate() {
        run_neft(i + 1, steps.len(), what, args)?;
    }
    println!("\ndone: everything is in {}", dir.display());
    Ok(())
}

fn write_progressions(path: &Path, seeds: std::ops::Range<u64>) -> anyhow::Result<()> {
    crate::fsutil::write_atomic(path, |w| {
        for s in seeds {
            let start = (s * 37 + 11) % 128;
            let step = 1 + s % 7;
            let ids: Vec<u64> = (0..24).map(|i| (start + step * i) % 128).collect();
            writeln!(w, "{}", serde_json::json!({ "input_ids": ids }))?;
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))
}
