//! Training cost side by side: full fine-tuning, the paper's dense masks, and split
//! rows at several fractions of MLP units, on one model and batch, ONNX Runtime CPU.
//!
//! ```text
//! cargo run --release --example bench_train -- [--layers 4] [--hidden 256] [--ffn 688]
//!     [--vocab 2048] [--kv-heads 2] [--batch 4] [--seq 128] [--steps 10] [--warmup 3] [--json OUT.json]
//!     [--threads N] [--only NAME,NAME] [--units UNITS.json] [--prompt N] [--keep DIR] [--eval N]
//! ```
//! `--keep DIR` writes the model and each configuration's artifacts (`DIR/c0`, ...)
//! there instead of a temporary folder, and leaves them.
//! `--prompt N` labels the first N positions of every row -100, as instruction data
//! masks its prompts (the loss then counts `seq - N` positions a row).
//! `--eval N` runs the eval graph on the step's batch after every N-th step, as
//! `neft train --eval` does at its checkpoints, so the peak counts both sessions (0: no evals).
//! `--units` names the MLP units the split and mask rows train (a JSON list, per block,
//! of unit indices: what `examples/bench_vs_pytorch.py` hands PyTorch too); `--only`
//! keeps the configurations whose names start with one of the given names.
//! The model is a random-weight Llama built by `neft::models::llama`. Each
//! configuration trains in its own child process, so its peak resident memory
//! (VmHWM) is its own; step times are medians after warm-up.

use neft::artifact::{Plan, State};
use neft::compile::{compile, CompileOptions, Mode, Unit};
use neft::models::llama::{build_llama, LlamaConfig, RandomWeights};
use neft::optim::Optimizer;
use neft::passes::append_loss::LossSpec;
use neft::runtime::ort::{HostTensor, SessionOptions};
use neft::select::{LayerNeurons, NeuronSet};
use neft::train::DeviceTrainer;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Args {
    layers: usize,
    hidden: usize,
    ffn: usize,
    vocab: usize,
    kv: usize,
    batch: usize,
    seq: usize,
    steps: usize,
    warmup: usize,
    json: Option<PathBuf>,
    threads: Option<usize>,
    only: Vec<String>,
    units: Option<Vec<Vec<usize>>>,
    /// Positions of every row whose label is ignored (a prompt).
    prompt: usize,
    keep: Option<PathBuf>,
    /// An eval after every this many steps; 0: none.
    eval: usize,
}

fn parse() -> Args {
    let mut a = Args {
        layers: 4,
        hidden: 256,
        ffn: 688,
        vocab: 2048,
        kv: 2,
        batch: 4,
        seq: 128,
        steps: 10,
        warmup: 3,
        json: None,
        threads: None,
        only: vec![],
        units: None,
        prompt: 0,
        keep: None,
        eval: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        let n = || v.parse::<usize>().unwrap_or_else(|_| panic!("{} needs a number", argv[i]));
        match argv[i].as_str() {
            "--layers" => a.layers = n(),
            "--hidden" => a.hidden = n(),
            "--ffn" => a.ffn = n(),
            "--vocab" => a.vocab = n(),
            "--kv-heads" => a.kv = n(),
            "--batch" => a.batch = n(),
            "--seq" => a.seq = n(),
            "--steps" => a.steps = n(),
            "--warmup" => a.warmup = n(),
            "--json" => a.json = Some(PathBuf::from(v)),
            "--keep" => a.keep = Some(PathBuf::from(v)),
            "--threads" => a.threads = Some(n()),
            "--prompt" => a.prompt = n(),
            "--eval" => a.eval = n(),
            "--only" => a.only = v.split(',').map(str::to_string).collect(),
            "--units" => {
                let text = std::fs::read_to_string(v).unwrap_or_else(|e| panic!("--units {v}: {e}"));
                a.units = Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("--units {v}: {e}")));
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    a
}

/// One row of the table.
struct Config {
    name: String,
    mode: Mode,
    unit: Unit,
    neurons: NeuronSet,
}

fn configs(model: &neft::onnx::Model, given: Option<&[Vec<usize>]>) -> Vec<Config> {
    let graph = neft::ir::Graph::from_proto(model.graph()).unwrap();
    let layers = neft::analyze::find_layers(&graph);
    let structure = neft::analyze::analyze_structure(&graph, &layers);
    let whole = |pred: &dyn Fn(&neft::analyze::Layer) -> bool| {
        let mut s = NeuronSet::new();
        for l in layers.iter().filter(|l| pred(l)) {
            s.layers.insert(l.weight.clone(), LayerNeurons { axis: l.axis, rows: vec![0] });
        }
        s
    };
    let units = |fraction: f64| {
        let mut s = NeuronSet::new();
        for m in &structure.mlps {
            let k = ((m.units as f64 * fraction).round() as usize).max(1);
            // Evenly spread units: selection strategy is not what this measures.
            let rows: Vec<usize> = (0..k).map(|i| i * m.units / k).collect();
            s.layers.insert(m.up.clone(), LayerNeurons { axis: 1, rows });
        }
        s
    };
    let mlp = |l: &neft::analyze::Layer| l.role.contains("mlp.");
    if let Some(given) = given {
        assert_eq!(given.len(), structure.mlps.len(), "--units: one list per MLP block");
        let mut s = NeuronSet::new();
        for (m, rows) in structure.mlps.iter().zip(given) {
            s.layers.insert(m.up.clone(), LayerNeurons { axis: 1, rows: rows.clone() });
        }
        let total: usize = given.iter().map(Vec::len).sum();
        let units: usize = structure.mlps.iter().map(|m| m.units).sum();
        let pct = 100.0 * total as f64 / units as f64;
        return vec![
            Config { name: "full (MLP)".into(), mode: Mode::Full, unit: Unit::Neuron, neurons: whole(&mlp) },
            Config { name: format!("mask {pct:.0}%"), mode: Mode::Mask, unit: Unit::MlpUnit, neurons: s.clone() },
            Config { name: format!("split {pct:.0}%"), mode: Mode::Split, unit: Unit::MlpUnit, neurons: s },
        ];
    }
    let mut out = vec![
        Config { name: "full (all layers)".into(), mode: Mode::Full, unit: Unit::Neuron, neurons: whole(&|_| true) },
        Config { name: "full (MLP)".into(), mode: Mode::Full, unit: Unit::Neuron, neurons: whole(&mlp) },
        Config { name: "mask 6% (paper)".into(), mode: Mode::Mask, unit: Unit::MlpUnit, neurons: units(0.06) },
    ];
    for f in [0.01, 0.03, 0.06, 0.12, 0.25] {
        out.push(Config {
            name: format!("split {}%", (f * 100.0) as usize),
            mode: Mode::Split,
            unit: Unit::MlpUnit,
            neurons: units(f),
        });
    }
    out
}

fn batch(a: &Args, seed: u64) -> Vec<(&'static str, HostTensor)> {
    let mut s = seed.wrapping_add(1);
    let ids: Vec<i64> = (0..a.batch * a.seq)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % a.vocab as u64) as i64
        })
        .collect();
    let labels = ids.iter().enumerate().map(|(i, &t)| if i % a.seq < a.prompt { -100 } else { t }).collect();
    vec![("input_ids", HostTensor::i64(&[a.batch, a.seq], ids)), ("labels", HostTensor::i64(&[a.batch, a.seq], labels))]
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// A memory figure of this process from /proc/self/status, in MB.
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Child: train the artifacts in `dir` as `neft train` does (state kept in ONNX
/// Runtime's buffers), print `step_ms...;peak_mb;open_mb;first_step_mb` (resident
/// memory with both sessions open, and after the first step).
fn child(dir: &Path, a: &Args) {
    let plan = Plan::load_dir(dir).unwrap();
    let state = State::load(&dir.join("state.safetensors")).unwrap();
    let opts = SessionOptions { threads: a.threads, ..Default::default() };
    let mut s = DeviceTrainer::new(dir, plan, &state, &opts).unwrap();
    drop(state);
    let open_mb = status_mb("VmRSS:");
    let mut first_step_mb = 0.0;
    let (mut times, mut eval_times) = (vec![], vec![]);
    for k in 0..a.warmup + a.steps {
        let b = batch(a, k as u64);
        let t = Instant::now();
        let out = s.step(&b, 1e-4).unwrap();
        assert!(out.loss.is_finite());
        if k >= a.warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        if k == 0 {
            first_step_mb = status_mb("VmRSS:");
        }
        if a.eval > 0 && (k + 1) % a.eval == 0 {
            let t = Instant::now();
            let (loss, _, _) = s.eval(&b).unwrap();
            assert!(loss.is_finite());
            eval_times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let list = |v: &[f64]| v.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>().join(",");
    println!("{};{:.1};{open_mb:.1};{first_step_mb:.1};{}", list(&times), peak_rss_mb(), list(&eval_times));
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child") {
        let a = parse_child(&argv[3..]);
        return child(Path::new(&argv[2]), &a);
    }
    let a = parse();
    let tmp = tempfile::tempdir().unwrap();
    // --keep DIR: the model and each configuration's artifacts stay there (c0, c1, ...),
    // e.g. for `ort_profile --graph DIR/c0/train_step.onnx`.
    let root = a.keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("--keep {}: {e}", root.display()));
    let cfg = LlamaConfig {
        vocab_size: a.vocab,
        hidden_size: a.hidden,
        intermediate_size: a.ffn,
        num_hidden_layers: a.layers,
        num_attention_heads: (a.hidden / 64).max(1),
        num_key_value_heads: a.kv,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
        pad_token_id: None,
        max_position_embeddings: None,
    };
    let model_path = build_llama(&cfg, &mut RandomWeights::new(1), &root.join("model")).unwrap();
    let model = neft::onnx::load(&model_path).unwrap();
    let params: u64 = model.graph().initializer.iter().map(|t| neft::onnx::element_count(&t.dims)).sum();
    eprintln!(
        "model: Llama {} layers, hidden {}, ffn {}, vocab {} ({:.1}M parameters); batch {} x seq {}; {} steps after {} warm-up",
        a.layers, a.hidden, a.ffn, a.vocab, params as f64 / 1e6, a.batch, a.seq, a.steps, a.warmup
    );
    let mut rows = vec![];
    let wanted = |c: &Config| a.only.is_empty() || a.only.iter().any(|o| c.name.starts_with(o.as_str()));
    for (i, c) in configs(&model, a.units.as_deref()).into_iter().filter(wanted).enumerate() {
        let dir = root.join(format!("c{i}"));
        let opts = CompileOptions {
            mode: c.mode,
            unit: c.unit,
            loss: LossSpec::Auto,
            optimizer: Optimizer::adamw(0.0),
            lr: 1e-4,
            clip: None,
            targets: None,
            lora: None,
        };
        let t = Instant::now();
        let plan = compile(&model, &c.neurons, &opts, &dir).unwrap();
        let compile_s = t.elapsed().as_secs_f64();
        let out = std::process::Command::new(&argv[0])
            .args(["--child", dir.to_str().unwrap()])
            .args(child_args(&a))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", c.name, String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.trim().split(';').collect();
        let (times, peak, open_mb, first_mb) = (fields[0], fields[1], fields[2], fields[3]);
        let mut times: Vec<f64> = times.split(',').map(|t| t.parse().unwrap()).collect();
        let mut evals: Vec<f64> = fields[4].split(',').filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
        let eval_ms = (!evals.is_empty()).then(|| median(&mut evals));
        let row = serde_json::json!({
            "config": c.name,
            "trainable_params": plan.counts.trainable_params,
            "optimizer_state_bytes": plan.counts.optimizer_state_bytes,
            "train_nodes": plan.counts.train_nodes,
            "compile_s": compile_s,
            "step_ms_median": median(&mut times),
            "step_ms_min": times[0],
            "peak_rss_mb": peak.parse::<f64>().unwrap(),
            "rss_sessions_open_mb": open_mb.parse::<f64>().unwrap(),
            "rss_after_first_step_mb": first_mb.parse::<f64>().unwrap(),
            "eval_ms_median": eval_ms,
            "evals": evals.len(),
        });
        eprintln!(
            "  {}: {:.1} ms/step; resident {:.0} MB with the sessions open, {:.0} MB after one step, peak {:.0} MB",
            c.name,
            row["step_ms_median"].as_f64().unwrap(),
            row["rss_sessions_open_mb"].as_f64().unwrap(),
            row["rss_after_first_step_mb"].as_f64().unwrap(),
            row["peak_rss_mb"].as_f64().unwrap()
        );
        if let Some(ms) = eval_ms {
            eprintln!("  {}: {} evals, {ms:.1} ms each (median); the peak includes them", c.name, evals.len());
        }
        rows.push(row);
    }
    if rows.is_empty() {
        eprintln!("--only {}: no configuration's name starts with that", a.only.join(","));
        std::process::exit(2);
    }
    let full = rows[0]["step_ms_median"].as_f64().unwrap();
    let full_state = rows[0]["optimizer_state_bytes"].as_f64().unwrap();
    let full_mem = rows[0]["peak_rss_mb"].as_f64().unwrap();
    println!("| configuration | trainable params | optimizer state | step (ms, median) | vs first row | peak RSS (MB) | vs first row | train-step nodes |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let (step, state, mem) = (
            r["step_ms_median"].as_f64().unwrap(),
            r["optimizer_state_bytes"].as_f64().unwrap(),
            r["peak_rss_mb"].as_f64().unwrap(),
        );
        println!(
            "| {} | {} | {} ({:.1}%) | {:.1} | {:.2}x | {:.0} | {:.2}x | {} |",
            r["config"].as_str().unwrap(),
            r["trainable_params"],
            neft::inspect::human_bytes(state as u64),
            100.0 * state / full_state,
            step,
            step / full,
            mem,
            mem / full_mem,
            r["train_nodes"]
        );
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    }
}

fn child_args(a: &Args) -> Vec<String> {
    let threads = a.threads.unwrap_or(0);
    [
        ("--batch", a.batch),
        ("--seq", a.seq),
        ("--steps", a.steps),
        ("--warmup", a.warmup),
        ("--vocab", a.vocab),
        ("--threads", threads),
        ("--prompt", a.prompt),
        ("--eval", a.eval),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect()
}

fn parse_child(rest: &[String]) -> Args {
    let mut a = Args {
        layers: 0,
        hidden: 0,
        ffn: 0,
        vocab: 0,
        kv: 0,
        batch: 0,
        seq: 0,
        steps: 0,
        warmup: 0,
        json: None,
        threads: None,
        only: vec![],
        units: None,
        prompt: 0,
        keep: None,
        eval: 0,
    };
    for pair in rest.chunks(2) {
        let v: usize = pair[1].parse().unwrap();
        match pair[0].as_str() {
            "--batch" => a.batch = v,
            "--seq" => a.seq = v,
            "--prompt" => a.prompt = v,
            "--eval" => a.eval = v,
            "--steps" => a.steps = v,
            "--warmup" => a.warmup = v,
            "--vocab" => a.vocab = v,
            "--threads" => a.threads = (v > 0).then_some(v),
            _ => {}
        }
    }
    a
}
