//! The in-graph optimizers against hand-written references, step by step, and the
//! appended causal-LM loss against a cross-entropy computed here.

use neft::ir::Graph;
use neft::onnx::make;
use neft::onnx::proto::GraphProto;
use neft::onnx::DataType;
use neft::optim::{self, Optimizer, Param};
use neft::passes::append_loss::{append_loss, LossSpec};
use neft::runtime::ort::{HostTensor, Session, SessionOptions};
use std::collections::HashMap;

/// Deterministic pseudo-random numbers in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn session(graph: &Graph) -> Session {
    let bytes = prost::Message::encode_to_vec(&make::model(graph.to_proto(), 18));
    Session::from_bytes(&bytes, "test", &SessionOptions { threads: Some(1), ..Default::default() }).unwrap()
}

fn run(s: &mut Session, feed: &[(&str, HostTensor)]) -> HashMap<String, HostTensor> {
    s.run(feed).unwrap().into_iter().collect()
}

fn vec_of(t: &HostTensor) -> Vec<f32> {
    t.as_f32().unwrap().iter().copied().collect()
}

/// A graph whose "gradient" is a graph input, so the optimizer alone is tested.
fn optimizer_graph(opt: Optimizer, clip: Option<f32>, masked: bool) -> (Graph, optim::OptimizerIo) {
    let shape = [3i64, 4];
    let dims: Vec<make::DimSpec> = shape.iter().map(|&d| d.into()).collect();
    let proto = GraphProto {
        name: Some("opt".into()),
        node: vec![make::node("Identity", &["g_in"], &["g"], vec![])],
        input: vec![make::value_info("p", DataType::Float, &dims), make::value_info("g_in", DataType::Float, &dims)],
        output: vec![make::value_info("g", DataType::Float, &dims)],
        ..Default::default()
    };
    let mut graph = Graph::from_proto(&proto).unwrap();
    let mask = masked.then(|| {
        // Rows 0 and 2 train, row 1 is frozen.
        let t = make::tensor_raw("mask", DataType::Bool, &[3, 1], vec![1, 0, 1]);
        graph.add_initializer(t).unwrap();
        "mask".to_string()
    });
    let params = [Param { name: "p".into(), grad: "g".into(), shape: shape.to_vec(), mask }];
    let io = optim::append(&mut graph, &params, opt, clip).unwrap();
    (graph, io)
}

/// PyTorch's AdamW and SGD, in f64.
struct Reference {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Reference {
    fn adamw(&mut self, g: &[f64], lr: f64, wd: f64) {
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        self.t += 1;
        for i in 0..self.p.len() {
            self.p[i] *= 1.0 - lr * wd;
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            let mhat = self.m[i] / (1.0 - b1.powi(self.t));
            let vhat = self.v[i] / (1.0 - b2.powi(self.t));
            self.p[i] -= lr * mhat / (vhat.sqrt() + eps);
        }
    }

    fn sgd(&mut self, g: &[f64], lr: f64, momentum: f64, wd: f64) {
        for i in 0..self.p.len() {
            let d = g[i] + wd * self.p[i];
            self.m[i] = if self.t == 0 { d } else { momentum * self.m[i] + d };
            self.p[i] -= lr * self.m[i];
        }
        self.t += 1;
    }
}

fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn adamw_matches_pytorch_step_by_step() {
    let (lr, wd) = (0.05f32, 0.1f32);
    let (graph, io) = optimizer_graph(Optimizer::adamw(wd), None, false);
    let mut s = session(&graph);
    let mut p = noise(1, 12);
    let (mut m, mut v) = (vec![0f32; 12], vec![0f32; 12]);
    let mut step = 0i64;
    let mut r = Reference { p: p.iter().map(|&x| x as f64).collect(), m: vec![0.0; 12], v: vec![0.0; 12], t: 0 };
    for k in 0..6 {
        let g = noise(100 + k, 12);
        let out = run(
            &mut s,
            &[
                ("p", HostTensor::f32(&[3, 4], p.clone())),
                ("g_in", HostTensor::f32(&[3, 4], g.clone())),
                ("p.m", HostTensor::f32(&[3, 4], m.clone())),
                ("p.v", HostTensor::f32(&[3, 4], v.clone())),
                ("lr", HostTensor::f32(&[], vec![lr])),
                ("step", HostTensor::i64(&[], vec![step])),
            ],
        );
        r.adamw(&g.iter().map(|&x| x as f64).collect::<Vec<_>>(), lr as f64, wd as f64);
        p = vec_of(&out["p.new"]);
        m = vec_of(&out["p.m.new"]);
        v = vec_of(&out["p.v.new"]);
        step = out[&io.step_out].clone().into_i64()[0];
        close(&p, &r.p, 1e-5, &format!("AdamW step {k} p"));
        close(&m, &r.m, 1e-6, &format!("AdamW step {k} m"));
        assert_eq!(step, k as i64 + 1);
    }
}

#[test]
fn sgd_with_momentum_matches_pytorch_step_by_step() {
    let (lr, mu, wd) = (0.1f32, 0.9f32, 0.01f32);
    let (graph, _) = optimizer_graph(Optimizer::Sgd { momentum: mu, weight_decay: wd }, None, false);
    let mut s = session(&graph);
    let mut p = noise(2, 12);
    let mut buf = vec![0f32; 12];
    let mut r = Reference { p: p.iter().map(|&x| x as f64).collect(), m: vec![0.0; 12], v: vec![], t: 0 };
    for k in 0..6 {
        let g = noise(200 + k, 12);
        let out = run(
            &mut s,
            &[
                ("p", HostTensor::f32(&[3, 4], p.clone())),
                ("g_in", HostTensor::f32(&[3, 4], g.clone())),
                ("p.momentum", HostTensor::f32(&[3, 4], buf.clone())),
                ("lr", HostTensor::f32(&[], vec![lr])),
                ("step", HostTensor::i64(&[], vec![k as i64])),
            ],
        );
        r.sgd(&g.iter().map(|&x| x as f64).collect::<Vec<_>>(), lr as f64, mu as f64, wd as f64);
        p = vec_of(&out["p.new"]);
        buf = vec_of(&out["p.momentum.new"]);
        close(&p, &r.p, 1e-5, &format!("SGD step {k} p"));
    }
}

#[test]
fn masked_rows_stay_bit_identical_and_clipping_uses_the_masked_norm() {
    let (graph, io) = optimizer_graph(Optimizer::adamw(0.5), Some(0.25), true);
    let mut s = session(&graph);
    let p0 = noise(3, 12);
    let g = noise(300, 12);
    let out = run(
        &mut s,
        &[
            ("p", HostTensor::f32(&[3, 4], p0.clone())),
            ("g_in", HostTensor::f32(&[3, 4], g.clone())),
            ("p.m", HostTensor::f32(&[3, 4], vec![0.0; 12])),
            ("p.v", HostTensor::f32(&[3, 4], vec![0.0; 12])),
            ("lr", HostTensor::f32(&[], vec![0.01])),
            ("step", HostTensor::i64(&[], vec![0])),
        ],
    );
    let p1 = vec_of(&out["p.new"]);
    for j in 4..8 {
        assert_eq!(p1[j].to_bits(), p0[j].to_bits(), "frozen row 1 changed at {j}");
    }
    assert!(p1[0] != p0[0] && p1[8] != p0[8], "trainable rows must move");
    let m = vec_of(&out["p.m.new"]);
    assert!(m[4..8].iter().all(|&x| x == 0.0), "frozen moments stay zero");
    let norm: f32 = g.iter().enumerate().filter(|(i, _)| !(4..8).contains(i)).map(|(_, x)| x * x).sum::<f32>().sqrt();
    let got = vec_of(&out[&io.grad_norm])[0];
    assert!((got - norm).abs() < 1e-5, "grad_norm {got} should be the masked norm {norm}");
    // Clipped first moment: (1 - b1) * g * clip / norm on trainable elements.
    let want = 0.1 * g[0] * 0.25 / norm;
    assert!((m[0] - want).abs() < 1e-6, "clipped m[0] = {}, want {want}", m[0]);
}

#[test]
fn causal_lm_loss_matches_a_reference_cross_entropy() {
    let (b, t, vocab) = (2usize, 5usize, 7usize);
    let proto = GraphProto {
        name: Some("lm".into()),
        node: vec![make::node("Identity", &["x"], &["logits"], vec![])],
        input: vec![make::value_info("x", DataType::Float, &["batch".into(), "seq".into(), (vocab as i64).into()])],
        output: vec![make::value_info(
            "logits",
            DataType::Float,
            &["batch".into(), "seq".into(), (vocab as i64).into()],
        )],
        ..Default::default()
    };
    let mut graph = Graph::from_proto(&proto).unwrap();
    let info = append_loss(&mut graph, &LossSpec::Auto).unwrap();
    assert_eq!(info.kind, "causal-lm");
    let x: Vec<f32> = noise(4, b * t * vocab).iter().map(|v| v * 3.0).collect();
    let labels: Vec<i64> = vec![3, 1, -100, 6, 0, 2, 2, 5, -100, -100];
    let mut s = session(&graph);
    let out = run(
        &mut s,
        &[("x", HostTensor::f32(&[b, t, vocab], x.clone())), ("labels", HostTensor::i64(&[b, t], labels.clone()))],
    );
    // Reference: logits at t predict labels at t+1, -100 ignored, mean over the rest.
    let (mut sum, mut count) = (0f64, 0f64);
    for bi in 0..b {
        for ti in 0..t - 1 {
            let y = labels[bi * t + ti + 1];
            if y == -100 {
                continue;
            }
            let row: Vec<f64> = (0..vocab).map(|v| x[(bi * t + ti) * vocab + v] as f64).collect();
            let mx = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = mx + row.iter().map(|r| (r - mx).exp()).sum::<f64>().ln();
            sum += lse - row[y as usize];
            count += 1.0;
        }
    }
    let want = sum / count;
    let got = vec_of(&out[&info.loss])[0] as f64;
    assert!((got - want).abs() < 1e-5, "loss {got}, reference {want}");
    assert_eq!(vec_of(&out[info.tokens.as_ref().unwrap()])[0] as f64, count);
}
