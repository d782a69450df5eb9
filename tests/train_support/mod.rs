//! Shared pieces of the `train_*` tests: the `neft` binary, the tiny PyTorch Llama
//! (vocab 128) compiled from a hand-written neuron file, and pre-tokenized data.
#![allow(dead_code)]

use neft::artifact::{State, StateTensor};
use neft::runtime::ort::HostTensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn llama_path() -> PathBuf {
    repo("models/fixtures/tiny_llama.onnx")
}

/// Runs `neft ARGS` in `dir`.
pub fn neft(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neft")).args(args).current_dir(dir).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Runs `neft ARGS` and fails the test with its stderr unless it succeeds.
pub fn neft_ok(args: &[&str], dir: &Path) -> Output {
    let out = neft(args, dir);
    assert!(out.status.success(), "neft {}: {}", args.join(" "), stderr(&out));
    out
}

/// Writes a neurons file of `(weight, axis, rows)` entries.
pub fn write_neurons(path: &Path, entries: &[(&str, usize, Vec<usize>)]) {
    let layers: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(w, axis, rows)| (w.to_string(), serde_json::json!({"axis": axis, "rows": rows})))
        .collect();
    std::fs::write(path, serde_json::json!({"format": "neft.neurons/1", "layers": layers}).to_string()).unwrap();
}

/// Compiles the tiny Llama into `dir/out` with `neurons` and extra `neft compile` flags.
pub fn compile_llama(dir: &Path, out: &str, neurons: &[(&str, usize, Vec<usize>)], flags: &[&str]) -> PathBuf {
    let file = dir.join(format!("{out}.neurons.json"));
    write_neurons(&file, neurons);
    let model = llama_path();
    let mut args = vec!["compile", model.to_str().unwrap(), "-o", out, "--neurons", file.to_str().unwrap()];
    args.extend_from_slice(flags);
    neft_ok(&args, dir);
    dir.join(out)
}

/// A batch of `rows` × `len` seeded pseudo-random token ids (vocab 128), its own labels.
pub fn random_lm_batch(seed: u64, rows: usize, len: usize) -> Vec<(&'static str, HostTensor)> {
    let mut s = seed;
    let ids: Vec<i64> = (0..rows * len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % 128) as i64
        })
        .collect();
    vec![("input_ids", HostTensor::i64(&[rows, len], ids.clone())), ("labels", HostTensor::i64(&[rows, len], ids))]
}

/// Sequences that repeat `1..=period` from a seeded offset: a pattern a tiny decoder
/// can learn from a few percent of its neurons.
pub fn pattern_lines(n: usize, len: usize, period: i64, seed: u64) -> Vec<String> {
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let offset = ((s >> 33) % period as u64) as i64;
            let ids: Vec<i64> = (0..len as i64).map(|j| 1 + (offset + j) % period).collect();
            serde_json::json!({ "input_ids": ids }).to_string()
        })
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

pub fn load_state(path: &Path) -> State {
    State::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every tensor of `a` equals `b`'s bit for bit.
pub fn assert_same_bits(a: &State, b: &State, what: &str) {
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>(), "{what}: names");
    for (name, x) in &a.tensors {
        match (x, &b.tensors[name]) {
            (StateTensor::F32 { data: p, .. }, StateTensor::F32 { data: q, .. }) => {
                let diff = p.iter().zip(q).position(|(u, v)| u.to_bits() != v.to_bits());
                assert!(
                    diff.is_none(),
                    "{what}: '{name}'[{}] differs: {:?}",
                    diff.unwrap(),
                    diff.map(|i| (p[i], q[i]))
                );
            }
            (x, y) => assert_eq!(x, y, "{what}: '{name}'"),
        }
    }
}

/// The `metrics.jsonl` lines of an artifact folder, parsed.
pub fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn step_of(state: &State) -> i64 {
    match &state.tensors["step"] {
        StateTensor::I64 { data, .. } => data[0],
        _ => panic!("step is not INT64"),
    }
}

/// One value the train step computed, from [`every_value_of_a_step`].
pub struct Probed {
    pub name: String,
    /// The op that made it.
    pub op: String,
    /// The neft pass that added that op (`None`: it comes from the source model).
    pub pass: Option<String>,
    pub value: HostTensor,
}

/// Runs one step of `dir/train_step.onnx` on `batch` with every node output made a
/// graph output, and returns them all: what a step really computes, at real shapes.
pub fn every_value_of_a_step(dir: &Path, batch: &[(&str, HostTensor)]) -> Vec<Probed> {
    use neft::runtime::ort::{Session, SessionOptions};
    let mut model = neft::onnx::load(dir.join("train_step.onnx")).unwrap();
    let graph = model.proto.graph.as_mut().unwrap();
    let declared: std::collections::HashSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let mut op_of = std::collections::HashMap::new();
    for n in &graph.node {
        let pass = n.metadata_props.iter().find(|m| m.key() == neft::ir::PASS_KEY).map(|m| m.value().to_string());
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            op_of.insert(o.clone(), (n.op_type().to_string(), pass.clone()));
        }
    }
    let extra: Vec<String> = op_of.keys().filter(|o| !declared.contains(*o)).cloned().collect();
    for o in &extra {
        // A name alone: ONNX Runtime infers the type of an output it computes.
        graph.output.push(neft::onnx::proto::ValueInfoProto { name: Some(o.clone()), ..Default::default() });
    }
    let probe = dir.join("probe_every_value.onnx");
    neft::onnx::save(&model, &probe).unwrap();
    let plan = neft::artifact::Plan::load(&dir.join("plan.json")).unwrap();
    let state = load_state(&dir.join("state.safetensors"));
    let mut feed: Vec<(&str, HostTensor)> = batch.to_vec();
    for (name, t) in &state.tensors {
        feed.push((name.as_str(), host(t)));
    }
    feed.push((plan.io.lr.as_str(), HostTensor::f32(&[], vec![1e-2])));
    let mut session = Session::from_file(&probe, &SessionOptions { threads: Some(1), ..Default::default() }).unwrap();
    let out = session.run(&feed).unwrap_or_else(|e| panic!("{e}"));
    std::fs::remove_file(&probe).unwrap();
    out.into_iter()
        .filter_map(|(name, value)| {
            let (op, pass) = op_of.get(&name)?.clone();
            Some(Probed { op, pass, name, value })
        })
        .collect()
}

/// A state tensor as a host tensor.
pub fn host(t: &StateTensor) -> HostTensor {
    match t {
        StateTensor::F32 { shape, data } => HostTensor::f32(shape, data.clone()),
        StateTensor::I64 { shape, data } => HostTensor::i64(shape, data.clone()),
    }
}

/// `output` of `model` fed `inputs`, flattened (one thread).
pub fn run(model: &Path, inputs: &[(&str, HostTensor)], output: &str) -> Vec<f32> {
    use neft::runtime::ort::{Session, SessionOptions};
    let mut s = Session::from_file(model, &SessionOptions { threads: Some(1), ..Default::default() }).unwrap();
    let outs = s.run(inputs).unwrap();
    let (_, v) = outs.into_iter().find(|(n, _)| n == output).unwrap();
    v.as_f32().unwrap().iter().copied().collect()
}

/// The eval graph's `output` with the parameters of `state`.
pub fn eval_output(art: &Path, state: &State, data: &[(&str, HostTensor)], output: &str) -> Vec<f32> {
    let plan = neft::artifact::Plan::load(&art.join("plan.json")).unwrap();
    let mut feed = data.to_vec();
    for p in &plan.params {
        feed.push((p.name.as_str(), host(&state.tensors[&p.name])));
    }
    run(&art.join("eval.onnx"), &feed, output)
}
