//! Small models written for the autodiff tests: a 2-layer MLP with cross-entropy and
//! a Llama-style decoder (embedding Gather, RMSNorm as Pow/ReduceMean/Sqrt/Div,
//! causal attention masked with Where, SiLU-gated MLP, tied output projection).

use super::Rng;
use neft::ir::attr;
use neft::onnx::make::{self, DimSpec};
use neft::onnx::proto::tensor_proto::DataType;
use neft::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

/// Nodes and initializers under construction, with fresh names.
pub struct B {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    pub dtype: DataType,
    /// Prefix of every name made here (to add nodes to a graph without clashes).
    pub prefix: String,
    n: usize,
}

impl B {
    pub fn new(dtype: DataType) -> B {
        B { nodes: vec![], inits: vec![], dtype, prefix: String::new(), n: 0 }
    }

    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.n += 1;
        let out = format!("{}{}_{}", self.prefix, op.to_lowercase(), self.n);
        self.nodes.push(make::node(op, inputs, &[&out], attrs));
        out
    }

    /// A float initializer of the builder's type.
    pub fn floats(&mut self, name: &str, dims: &[i64], v: &[f64]) -> String {
        self.inits.push(match self.dtype {
            DataType::Double => make::tensor_f64(name, dims, v),
            _ => make::tensor_f32(name, dims, &v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
        });
        name.to_string()
    }

    pub fn weight(&mut self, name: &str, dims: &[i64], rng: &mut Rng, std: f64) -> String {
        let n = dims.iter().product::<i64>() as usize;
        let v = rng.vec(n, -std * 1.732, std * 1.732);
        self.floats(name, dims, &v)
    }

    /// A norm weight near 1.
    pub fn gain(&mut self, name: &str, dim: i64, rng: &mut Rng) -> String {
        let v = rng.vec(dim as usize, 0.8, 1.2);
        self.floats(name, &[dim], &v)
    }

    pub fn scalar(&mut self, v: f64) -> String {
        self.n += 1;
        let name = format!("{}c{}", self.prefix, self.n);
        self.floats(&name, &[], &[v])
    }

    pub fn ints(&mut self, v: &[i64]) -> String {
        self.n += 1;
        let name = format!("{}i{}", self.prefix, self.n);
        self.inits.push(make::tensor_i64(&name, &[v.len() as i64], v));
        name
    }

    pub fn int_scalar(&mut self, v: i64) -> String {
        self.n += 1;
        let name = format!("{}i{}", self.prefix, self.n);
        self.inits.push(make::tensor_i64(&name, &[], &[v]));
        name
    }

    pub fn model(self, inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>, opset: i64) -> ModelProto {
        let graph = GraphProto {
            name: Some("test".into()),
            node: self.nodes,
            initializer: self.inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        };
        make::model(graph, opset)
    }

    /// Mean token cross-entropy: -mean(GatherElements(LogSoftmax(logits), labels)).
    pub fn cross_entropy(&mut self, logits: &str, labels: &str) -> String {
        let lp = self.node("LogSoftmax", &[logits], vec![attr::int("axis", -1)]);
        let last = self.ints(&[-1]);
        let lab = self.node("Unsqueeze", &[labels, &last], vec![]);
        let picked = self.node("GatherElements", &[&lp, &lab], vec![attr::int("axis", -1)]);
        let nll = self.node("Neg", &[&picked], vec![]);
        self.node("ReduceMean", &[&nll], vec![attr::int("keepdims", 0)]);
        self.nodes.last_mut().unwrap().output[0] = "loss".into();
        "loss".into()
    }
}

fn dims(d: &[&str]) -> Vec<DimSpec> {
    d.iter().map(|&s| s.parse::<i64>().map(DimSpec::Fixed).unwrap_or_else(|_| DimSpec::Named(s.into()))).collect()
}

/// x [batch, 6] → Gemm(transB) + bias → Tanh → MatMul + bias → cross-entropy with labels [batch].
pub fn mlp(dtype: DataType, rng: &mut Rng) -> ModelProto {
    let mut b = B::new(dtype);
    let (w1, b1) = (b.weight("w1", &[8, 6], rng, 0.5), b.weight("b1", &[8], rng, 0.5));
    let (w2, b2) = (b.weight("w2", &[8, 4], rng, 0.5), b.weight("b2", &[4], rng, 0.5));
    let h = b.node("Gemm", &["x", &w1, &b1], vec![attr::int("transB", 1)]);
    let h = b.node("Tanh", &[&h], vec![]);
    let o = b.node("MatMul", &[&h, &w2], vec![]);
    let logits = b.node("Add", &[&o, &b2], vec![]);
    b.cross_entropy(&logits, "labels");
    let inputs = vec![
        make::value_info("x", dtype, &dims(&["batch", "6"])),
        make::value_info("labels", DataType::Int64, &dims(&["batch"])),
    ];
    b.model(inputs, vec![make::value_info("loss", dtype, &[])], 18)
}

/// Decoder sizes.
#[derive(Clone, Copy)]
pub struct Decoder {
    pub vocab: i64,
    pub hidden: i64,
    pub heads: i64,
    pub ffn: i64,
    pub layers: usize,
    /// One embedding for input and output (read by Gather and by the output MatMul).
    pub tied: bool,
}

/// x / sqrt(mean(x²) + eps) · w
fn rms_norm(b: &mut B, x: &str, w: &str) -> String {
    let two = b.scalar(2.0);
    let eps = b.scalar(1e-5);
    let last = b.ints(&[-1]);
    let p = b.node("Pow", &[x, &two], vec![]);
    let m = b.node("ReduceMean", &[&p, &last], vec![attr::int("keepdims", 1)]);
    let a = b.node("Add", &[&m, &eps], vec![]);
    let r = b.node("Sqrt", &[&a], vec![]);
    let n = b.node("Div", &[x, &r], vec![]);
    b.node("Mul", &[&n, w], vec![])
}

/// A Llama-style decoder over `input_ids [batch, seq]` with the mean cross-entropy
/// against `labels [batch, seq]` as output `loss` (and `logits`).
pub fn decoder(spec: Decoder, dtype: DataType, rng: &mut Rng) -> ModelProto {
    let mut b = B::new(dtype);
    let (v, d, nh, f) = (spec.vocab, spec.hidden, spec.heads, spec.ffn);
    let hd = d / nh;
    let emb = b.weight("embed", &[v, d], rng, 0.5);
    let mut h = b.node("Gather", &[&emb, "input_ids"], vec![attr::int("axis", 0)]);
    // Causal mask [seq, seq]: key position ≤ query position.
    let seq = b.node("Shape", &["input_ids"], vec![attr::int("start", 1), attr::int("end", 2)]);
    let seq = b.node("Squeeze", &[&seq], vec![]);
    let (zero, one) = (b.int_scalar(0), b.int_scalar(1));
    let pos = b.node("Range", &[&zero, &seq, &one], vec![]);
    let (a1, a0) = (b.ints(&[1]), b.ints(&[0]));
    let rows = b.node("Unsqueeze", &[&pos, &a1], vec![]);
    let cols = b.node("Unsqueeze", &[&pos, &a0], vec![]);
    let causal = b.node("LessOrEqual", &[&cols, &rows], vec![]);
    let heads_shape = b.ints(&[0, 0, nh, hd]);
    let merged_shape = b.ints(&[0, 0, d]);
    let scale = b.scalar(1.0 / (hd as f64).sqrt());
    let masked_value = b.scalar(-1e4);
    for l in 0..spec.layers {
        let w = |n: &str| format!("l{l}.{n}");
        let n1 = b.gain(&w("attn_norm"), d, rng);
        let x = rms_norm(&mut b, &h, &n1);
        let mut proj = vec![];
        for name in ["wq", "wk", "wv"] {
            let wt = b.weight(&w(name), &[d, d], rng, 0.4);
            let p = b.node("MatMul", &[&x, &wt], vec![]);
            proj.push(b.node("Reshape", &[&p, &heads_shape], vec![]));
        }
        let q = b.node("Transpose", &[&proj[0]], vec![attr::ints("perm", &[0, 2, 1, 3])]);
        let kt = b.node("Transpose", &[&proj[1]], vec![attr::ints("perm", &[0, 2, 3, 1])]);
        let vh = b.node("Transpose", &[&proj[2]], vec![attr::ints("perm", &[0, 2, 1, 3])]);
        let s = b.node("MatMul", &[&q, &kt], vec![]);
        let s = b.node("Mul", &[&s, &scale], vec![]);
        let s = b.node("Where", &[&causal, &s, &masked_value], vec![]);
        let p = b.node("Softmax", &[&s], vec![attr::int("axis", -1)]);
        let ctx = b.node("MatMul", &[&p, &vh], vec![]);
        let ctx = b.node("Transpose", &[&ctx], vec![attr::ints("perm", &[0, 2, 1, 3])]);
        let ctx = b.node("Reshape", &[&ctx, &merged_shape], vec![]);
        let wo = b.weight(&w("wo"), &[d, d], rng, 0.4);
        let o = b.node("MatMul", &[&ctx, &wo], vec![]);
        h = b.node("Add", &[&h, &o], vec![]);
        let n2 = b.gain(&w("mlp_norm"), d, rng);
        let x = rms_norm(&mut b, &h, &n2);
        let (wg, wu, wd) = (
            b.weight(&w("gate"), &[d, f], rng, 0.4),
            b.weight(&w("up"), &[d, f], rng, 0.4),
            b.weight(&w("down"), &[f, d], rng, 0.3),
        );
        let g = b.node("MatMul", &[&x, &wg], vec![]);
        let sg = b.node("Sigmoid", &[&g], vec![]);
        let silu = b.node("Mul", &[&g, &sg], vec![]);
        let u = b.node("MatMul", &[&x, &wu], vec![]);
        let m = b.node("Mul", &[&silu, &u], vec![]);
        let dn = b.node("MatMul", &[&m, &wd], vec![]);
        h = b.node("Add", &[&h, &dn], vec![]);
    }
    let nf = b.gain("final_norm", d, rng);
    let x = rms_norm(&mut b, &h, &nf);
    let out_emb = if spec.tied { emb } else { b.weight("embed_out", &[v, d], rng, 0.5) };
    let et = b.node("Transpose", &[&out_emb], vec![attr::ints("perm", &[1, 0])]);
    b.node("MatMul", &[&x, &et], vec![]);
    b.nodes.last_mut().unwrap().output[0] = "logits".into();
    b.cross_entropy("logits", "labels");
    let ids = dims(&["batch", "seq"]);
    let inputs =
        vec![make::value_info("input_ids", DataType::Int64, &ids), make::value_info("labels", DataType::Int64, &ids)];
    let outputs = vec![make::value_info("loss", dtype, &[])];
    b.model(inputs, outputs, 18)
}

/// Appends mean token cross-entropy on `logits [.., vocab]` against a new input
/// `labels` (int64, shaped like logits without the last axis); the output becomes `loss`.
pub fn append_cross_entropy(model: &ModelProto, logits: &str, label_dims: &[&str]) -> ModelProto {
    let mut m = model.clone();
    let g = m.graph.as_mut().unwrap();
    let dtype = DataType::try_from(neft::onnx::make::declared(&g.output[0]).unwrap().0).unwrap();
    let mut b = B::new(dtype);
    b.prefix = "ce.".into();
    b.cross_entropy(logits, "labels");
    g.node.extend(b.nodes);
    g.initializer.extend(b.inits);
    g.input.push(make::value_info("labels", DataType::Int64, &dims(label_dims)));
    g.output = vec![make::value_info("loss", dtype, &[])];
    m
}
