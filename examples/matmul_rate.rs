//! The rate ONNX Runtime's CPU matrix products reach on this machine for the shapes of
//! a SmolLM2-sized training step (256 rows, 2 threads by default): the floor under a
//! step's forward and input gradients. `examples/bench_vs_pytorch.py --matmuls` prints
//! PyTorch's rate for the same shapes beside it.
//!
//! ```text
//! cargo run --release --example matmul_rate -- [--rows 256] [--threads 2] [--reps 30]
//! ```

use neft::onnx::make;
use neft::onnx::proto::GraphProto;
use neft::onnx::DataType;
use neft::runtime::ort::{Session, SessionOptions};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |k: &str, d: usize| {
        args.iter().position(|a| a == k).map(|i| args[i + 1].parse().expect("a number")).unwrap_or(d)
    };
    let (rows, threads, reps) = (opt("--rows", 256), opt("--threads", 2), opt("--reps", 30));
    println!("| product | X·W (GFLOP/s) | X·Wᵀ, Gemm transB (GFLOP/s) |");
    println!("|---|---:|---:|");
    for (k, n) in [(576, 1536), (1536, 576), (576, 576), (576, 49152)] {
        let a = rate(rows, k, n, false, threads, reps);
        let b = rate(rows, k, n, true, threads, reps);
        println!("| [{rows}, {k}] · [{k}, {n}] | {a:.0} | {b:.0} |");
    }
}

/// GFLOP/s of one product with a constant weight, the median of `reps` runs.
fn rate(m: usize, k: usize, n: usize, transposed: bool, threads: usize, reps: usize) -> f64 {
    let dims = if transposed { [n as i64, k as i64] } else { [k as i64, n as i64] };
    let values: Vec<f32> = (0..k * n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
    let node = match transposed {
        true => make::node("Gemm", &["x", "w"], &["y"], vec![neft::ir::attr::int("transB", 1)]),
        false => make::node("MatMul", &["x", "w"], &["y"], vec![]),
    };
    let graph = GraphProto {
        node: vec![node],
        initializer: vec![make::tensor_f32("w", &dims, &values)],
        input: vec![make::value_info("x", DataType::Float, &[(m as i64).into(), (k as i64).into()])],
        output: vec![make::value_info_unshaped("y", DataType::Float)],
        ..Default::default()
    };
    let bytes = neft::onnx::encode(&make::model(graph, 17), std::path::Path::new("matmul")).unwrap();
    let opts = SessionOptions { threads: Some(threads), ..Default::default() };
    let mut session = Session::from_bytes(&bytes, "matmul", &opts).unwrap();
    let x = ort::value::Tensor::from_array((vec![m, k], (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect::<Vec<_>>()))
        .unwrap();
    let mut times = vec![];
    for i in 0..reps + 3 {
        // The product alone: the input is ONNX Runtime's already, the output is not copied out.
        let t = Instant::now();
        drop(session.inner.run(ort::inputs!["x" => x.view()]).unwrap());
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    2.0 * (m * k * n) as f64 / times[times.len() / 2] / 1e9
}
