//! Sessions created from many threads at once (issue: the `ai.neft` domain was
//! registered by whichever session came first, and two at once both tried).
//!
//! The race is on the first registration in a process, so each round is a fresh
//! process: this test binary runs its own `sixteen_sessions_at_once` test as a child,
//! 20 times with `ORT_DYLIB_PATH` unset (neft finds the library itself) and 20 times
//! with it set to the same file.

use neft::onnx::make::{model, node, value_info};
use neft::onnx::proto::tensor_proto::DataType;
use neft::onnx::proto::{AttributeProto, GraphProto, ModelProto, OperatorSetIdProto};
use neft::runtime::neuron_stats::{DOMAIN, DOMAIN_VERSION, OP};
use neft::runtime::ort::{HostTensor, Session, SessionOptions};
use prost::Message;
use std::process::Command;

const THREADS: usize = 16;
const ROUNDS: usize = 20;

/// `y = x + x` in standard ops.
fn standard_model() -> ModelProto {
    let graph = GraphProto {
        name: Some("add".into()),
        node: vec![node("Add", &["x", "x"], &["y"], vec![])],
        input: vec![value_info("x", DataType::Float, &[4.into(), 3.into()])],
        output: vec![value_info("y", DataType::Float, &[4.into(), 3.into()])],
        ..Default::default()
    };
    model(graph, 18)
}

/// `y = NeuronStats(x)`: Σx and Σ|x| per column, neft's own operator.
fn neft_op_model() -> ModelProto {
    let stats = AttributeProto {
        name: Some("stats".into()),
        r#type: Some(neft::onnx::proto::attribute_proto::AttributeType::Ints as i32),
        ints: vec![0, 1],
        ..Default::default()
    };
    let mut n = node(OP, &["x"], &["y"], vec![stats]);
    n.domain = Some(DOMAIN.into());
    let graph = GraphProto {
        name: Some("stats".into()),
        node: vec![n],
        input: vec![value_info("x", DataType::Float, &[4.into(), 3.into()])],
        output: vec![value_info("y", DataType::Float, &[2.into(), 3.into()])],
        ..Default::default()
    };
    let mut m = model(graph, 18);
    m.opset_import.push(OperatorSetIdProto { domain: Some(DOMAIN.into()), version: Some(DOMAIN_VERSION) });
    m
}

/// Opens and runs one session; even threads use neft's operator, odd ones do not.
fn open_and_run(i: usize) -> Result<(), String> {
    let neft_ops = i % 2 == 0;
    let m = if neft_ops { neft_op_model() } else { standard_model() };
    let opts = SessionOptions { threads: Some(1), neft_ops, ..Default::default() };
    let mut s = Session::from_bytes(&m.encode_to_vec(), &format!("session {i}"), &opts).map_err(|e| e.to_string())?;
    let x: Vec<f32> = (0..12).map(|v| v as f32 - 5.0).collect();
    let out = s.run(&[("x", HostTensor::f32(&[4, 3], x.clone()))]).map_err(|e| e.to_string())?;
    let y: Vec<f32> = out[0].1.as_f32().ok_or("output is not FLOAT")?.iter().copied().collect();
    let want: Vec<f32> = if neft_ops {
        let col = |c: usize, f: fn(f32) -> f32| (0..4).map(|r| f(x[r * 3 + c])).sum::<f32>();
        let sums: Vec<f32> = (0..3).map(|c| col(c, |v| v)).collect();
        let abs: Vec<f32> = (0..3).map(|c| col(c, f32::abs)).collect();
        sums.into_iter().chain(abs).collect()
    } else {
        x.iter().map(|v| v + v).collect()
    };
    if y != want {
        return Err(format!("session {i}: got {y:?}, want {want:?}"));
    }
    Ok(())
}

/// 16 threads each open and run a session at the same moment (a barrier releases
/// them together), the first sessions this process makes.
#[test]
fn sixteen_sessions_at_once() {
    let barrier = std::sync::Barrier::new(THREADS);
    let errors: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    open_and_run(i)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().expect("no thread panics").err()).collect()
    });
    assert!(errors.is_empty(), "{} of {THREADS} sessions failed:\n{}", errors.len(), errors.join("\n"));
}

/// Runs `sixteen_sessions_at_once` in `ROUNDS` fresh processes; `dylib` sets
/// `ORT_DYLIB_PATH`, else it is removed from the child's environment.
fn rounds_in_fresh_processes(dylib: Option<&std::path::Path>) {
    let exe = std::env::current_exe().expect("the test binary's path");
    for round in 0..ROUNDS {
        let mut cmd = Command::new(&exe);
        cmd.args(["--exact", "sixteen_sessions_at_once", "--test-threads", "1", "--nocapture"]);
        match dylib {
            Some(p) => cmd.env("ORT_DYLIB_PATH", p),
            None => cmd.env_remove("ORT_DYLIB_PATH"),
        };
        let out = cmd.output().expect("the test binary runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "round {round} (ORT_DYLIB_PATH {dylib:?}) failed:\n{text}");
        assert!(text.contains("1 passed"), "round {round}: the child ran no test:\n{text}");
    }
}

#[test]
fn fresh_processes_find_the_library_themselves() {
    rounds_in_fresh_processes(None);
}

#[test]
fn fresh_processes_given_the_library_path() {
    let lib = neft::runtime::ort::library_path().expect("bash .ci/setup fetched ONNX Runtime");
    rounds_in_fresh_processes(Some(&lib));
}
