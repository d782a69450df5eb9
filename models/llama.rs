//! A Llama-family decoder written as an ONNX graph the way PyTorch's exporter writes
//! one: plain `MatMul`s with `[in, out]` weights, RMSNorm as Pow/ReduceMean/Sqrt/
//! Reciprocal/Mul, rotary embeddings from Cos/Sin tables, grouped-query attention
//! widened with Expand, a causal mask, SiLU-gated MLPs, tied embeddings stored as a
//! transposed copy for the output projection.
//!
//! In: a [`LlamaConfig`] and a [`WeightSource`] giving each weight in PyTorch layout
//! (`[out, in]`, HF names). Out: `DIR/model.onnx` with input `input_ids [batch, seq]`
//! and output `logits [batch, seq, vocab]`, weights in `DIR/model.onnx.data`, and
//! `DIR/config.json`.

use crate::ir::attr;
use crate::onnx::make::{self, DimSpec};
use crate::onnx::proto::{AttributeProto, GraphProto, NodeProto, TensorProto};
use crate::onnx::{DataType, ExternalWriter, Model};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The architecture numbers, named as in a HuggingFace `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no grouped-query attention).
    #[serde(default)]
    pub num_key_value_heads: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Kept as given (HF writes a number or a list).
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<serde_json::Value>,
    /// The context the model was trained for (written for transformers; the graph
    /// itself takes any length).
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
}

fn default_rope_theta() -> f32 {
    10000.0
}

fn default_rms_eps() -> f32 {
    1e-6
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Reads a HuggingFace `config.json`.
    pub fn from_file(path: &Path) -> anyhow::Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut cfg: LlamaConfig =
            serde_json::from_str(&text).with_context(|| format!("{}: not a Llama config", path.display()))?;
        if cfg.num_key_value_heads == 0 {
            cfg.num_key_value_heads = cfg.num_attention_heads;
        }
        cfg.check().with_context(|| format!("{}", path.display()))?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.num_attention_heads > 0 && self.hidden_size % self.num_attention_heads == 0,
            "hidden_size must be a multiple of num_attention_heads"
        );
        anyhow::ensure!(
            self.num_key_value_heads > 0 && self.num_attention_heads % self.num_key_value_heads == 0,
            "num_attention_heads must be a multiple of num_key_value_heads"
        );
        anyhow::ensure!(self.head_dim() % 2 == 0, "the head dimension must be even for rotary embeddings");
        Ok(())
    }
}

/// Where weights come from: values for a HF weight name in PyTorch layout.
pub trait WeightSource {
    fn weight(&mut self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>>;

    /// True for a source with no values: the builder then writes every weight as a
    /// hole in a sparse data file (zeros that take no disk), to measure the compiler
    /// on model shapes too large to hold.
    fn placeholder(&self) -> bool {
        false
    }
}

/// No values at all: every weight is zeros in a sparse file (see [`WeightSource::placeholder`]).
pub struct PlaceholderWeights;

impl WeightSource for PlaceholderWeights {
    fn weight(&mut self, name: &str, _shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        anyhow::bail!("placeholder weights have no values (asked for '{name}')")
    }

    fn placeholder(&self) -> bool {
        true
    }
}

/// The weight's values, or `None` for a placeholder source.
fn fetch(weights: &mut dyn WeightSource, name: &str, shape: &[usize]) -> anyhow::Result<Option<Vec<f32>>> {
    if weights.placeholder() {
        Ok(None)
    } else {
        weights.weight(name, shape).map(Some)
    }
}

/// Seeded random weights (normal, std 0.02; norms start at 1): for tests and benchmarks.
pub struct RandomWeights {
    state: u64,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        RandomWeights { state: seed ^ 0x9e37_79b9_7f4a_7c15 }
    }

    fn uniform(&mut self) -> f64 {
        // xorshift64*: fast, deterministic across platforms.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        ((self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

impl WeightSource for RandomWeights {
    fn weight(&mut self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        if name.ends_with("norm.weight") {
            return Ok(vec![1.0; n]);
        }
        Ok((0..n)
            .map(|_| {
                let (u1, u2) = (self.uniform(), self.uniform());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * 0.02) as f32
            })
            .collect())
    }
}

/// Builds the graph, writing weights as they come so a large model is never held whole.
pub fn build_llama(cfg: &LlamaConfig, weights: &mut dyn WeightSource, dir: &Path) -> anyhow::Result<PathBuf> {
    cfg.check()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut b =
        Builder { nodes: vec![], inits: vec![], writer: ExternalWriter::create(dir, "model.onnx.data")?, count: 0 };
    let (h, f, v) = (cfg.hidden_size as i64, cfg.intermediate_size as i64, cfg.vocab_size as i64);
    let (nh, nkv, hd) = (cfg.num_attention_heads as i64, cfg.num_key_value_heads as i64, cfg.head_dim() as i64);

    let embed = fetch(weights, "model.embed_tokens.weight", &[cfg.vocab_size, cfg.hidden_size])?;
    b.weight("model.embed_tokens.weight", &[v, h], embed.as_deref())?;
    let mut x = b.node("Gather", &["model.embed_tokens.weight", "input_ids"], vec![attr::int("axis", 0)]);

    // Positions 0..seq, rotary tables [seq, head_dim] and the causal mask [seq, seq].
    let shape = b.node("Shape", &["input_ids"], vec![]);
    let one = b.ints("one", &[1]);
    let two = b.ints("two", &[2]);
    let seq_1d = b.node("Slice", &[&shape, &one, &two], vec![]);
    let seq = b.node("Squeeze", &[&seq_1d], vec![]);
    let (start, step) = (b.scalar_i64("zero_i", 0), b.scalar_i64("one_i", 1));
    let pos = b.node("Range", &[&start, &seq, &step], vec![]);
    let pos_f = b.node("Cast", &[&pos], vec![attr::int("to", DataType::Float as i64)]);
    let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / hd as f32)).collect();
    let inv = b.constant("inv_freq", &[1, hd / 2], &inv_freq)?;
    let last = b.ints("last_axis", &[-1]);
    let pos_col = b.node("Unsqueeze", &[&pos_f, &last], vec![]);
    let freqs = b.node("Mul", &[&pos_col, &inv], vec![]);
    let emb = b.node("Concat", &[&freqs, &freqs], vec![attr::int("axis", -1)]);
    let (cos, sin) = (b.node("Cos", &[&emb], vec![]), b.node("Sin", &[&emb], vec![]));
    let rows = b.node("Unsqueeze", &[&pos, &last], vec![]);
    let first = b.ints("first_axis", &[0]);
    let cols = b.node("Unsqueeze", &[&pos, &first], vec![]);
    let future = b.node("Greater", &[&cols, &rows], vec![]);
    let (neg, zero) = (b.constant("mask_min", &[], &[f32::MIN])?, b.constant("mask_zero", &[], &[0.0])?);
    let mask = b.node("Where", &[&future, &neg, &zero], vec![]);

    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let hn = rms_norm(&mut b, weights, &x, &format!("{p}.input_layernorm.weight"), h, cfg.rms_norm_eps)?;
        let q = linear(&mut b, weights, &hn, &format!("{p}.self_attn.q_proj.weight"), h, nh * hd)?;
        let k = linear(&mut b, weights, &hn, &format!("{p}.self_attn.k_proj.weight"), h, nkv * hd)?;
        let vv = linear(&mut b, weights, &hn, &format!("{p}.self_attn.v_proj.weight"), h, nkv * hd)?;
        let q = heads(&mut b, &q, nh, hd);
        let k = heads(&mut b, &k, nkv, hd);
        let vv = heads(&mut b, &vv, nkv, hd);
        let q = rope(&mut b, &q, &cos, &sin, hd)?;
        let k = rope(&mut b, &k, &cos, &sin, hd)?;
        let (k, vv) = (repeat_kv(&mut b, &k, nh, nkv, hd), repeat_kv(&mut b, &vv, nh, nkv, hd));
        let kt = b.node("Transpose", &[&k], vec![attr::ints("perm", &[0, 1, 3, 2])]);
        let scores = b.node("MatMul", &[&q, &kt], vec![]);
        let scale = b.constant(&format!("{p}.attn_scale"), &[], &[1.0 / (hd as f32).sqrt()])?;
        let scores = b.node("Mul", &[&scores, &scale], vec![]);
        let scores = b.node("Add", &[&scores, &mask], vec![]);
        let probs = b.node("Softmax", &[&scores], vec![attr::int("axis", -1)]);
        let ctx = b.node("MatMul", &[&probs, &vv], vec![]);
        let ctx = b.node("Transpose", &[&ctx], vec![attr::ints("perm", &[0, 2, 1, 3])]);
        let merged = b.ints(&format!("{p}.merge_shape"), &[0, 0, h]);
        let ctx = b.node("Reshape", &[&ctx, &merged], vec![]);
        let o = linear(&mut b, weights, &ctx, &format!("{p}.self_attn.o_proj.weight"), nh * hd, h)?;
        x = b.node("Add", &[&x, &o], vec![]);

        let hn = rms_norm(&mut b, weights, &x, &format!("{p}.post_attention_layernorm.weight"), h, cfg.rms_norm_eps)?;
        let gate = linear(&mut b, weights, &hn, &format!("{p}.mlp.gate_proj.weight"), h, f)?;
        let up = linear(&mut b, weights, &hn, &format!("{p}.mlp.up_proj.weight"), h, f)?;
        let sig = b.node("Sigmoid", &[&gate], vec![]);
        let act = b.node("Mul", &[&gate, &sig], vec![]);
        let prod = b.node("Mul", &[&act, &up], vec![]);
        let down = linear(&mut b, weights, &prod, &format!("{p}.mlp.down_proj.weight"), f, h)?;
        x = b.node("Add", &[&x, &down], vec![]);
    }
    let xn = rms_norm(&mut b, weights, &x, "model.norm.weight", h, cfg.rms_norm_eps)?;
    // The output projection: the embedding transposed (tied), or lm_head.
    let head = if cfg.tie_word_embeddings {
        embed
    } else {
        fetch(weights, "lm_head.weight", &[cfg.vocab_size, cfg.hidden_size])?
    };
    let head_t = head.map(|w| transpose(&w, v as usize, h as usize));
    b.weight("lm_head.weight.T", &[h, v], head_t.as_deref())?;
    let logits = b.node("MatMul", &[&xn, "lm_head.weight.T"], vec![]);
    b.nodes.push(make::node("Identity", &[&logits], &["logits"], vec![]));

    let Builder { nodes, inits, writer, .. } = b;
    writer.finish()?;
    let dims: Vec<DimSpec> = vec!["batch".into(), "seq".into()];
    let graph = GraphProto {
        name: Some("llama".into()),
        node: nodes,
        initializer: inits,
        input: vec![make::value_info("input_ids", DataType::Int64, &dims)],
        output: vec![make::value_info("logits", DataType::Float, &["batch".into(), "seq".into(), v.into()])],
        ..Default::default()
    };
    let path = dir.join("model.onnx");
    crate::onnx::save(&Model::new(make::model(graph, 18), dir), &path)?;
    super::hf::write_configs(dir, cfg, None, None)?;
    Ok(path)
}

struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    writer: ExternalWriter,
    count: usize,
}

impl Builder {
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.count += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.count);
        let mut n = make::node(op, inputs, &[&out], attrs);
        n.name = Some(format!("node_{out}"));
        self.nodes.push(n);
        out
    }

    /// A weight, written to the external data file right away (`None`: a hole of zeros).
    fn weight(&mut self, name: &str, dims: &[i64], data: Option<&[f32]>) -> anyhow::Result<()> {
        let mut t = make::tensor_f32(name, dims, &[]);
        match data {
            Some(data) => {
                let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.writer.write(&mut t, &bytes)?;
            }
            None => self.writer.write_zeros(&mut t, dims.iter().product::<i64>() as u64 * 4)?,
        }
        self.inits.push(t);
        Ok(())
    }

    fn constant(&mut self, name: &str, dims: &[i64], data: &[f32]) -> anyhow::Result<String> {
        self.inits.push(make::tensor_f32(name, dims, data));
        Ok(name.to_string())
    }

    fn ints(&mut self, name: &str, values: &[i64]) -> String {
        if !self.inits.iter().any(|t| t.name() == name) {
            self.inits.push(make::tensor_i64(name, &[values.len() as i64], values));
        }
        name.to_string()
    }

    fn scalar_i64(&mut self, name: &str, value: i64) -> String {
        self.inits.push(make::tensor_i64(name, &[], &[value]));
        name.to_string()
    }
}

/// `x · Wᵀ` with the weight stored transposed, `[in, out]`, as exporters fold it.
fn linear(
    b: &mut Builder,
    weights: &mut dyn WeightSource,
    x: &str,
    name: &str,
    inp: i64,
    out: i64,
) -> anyhow::Result<String> {
    let w = fetch(weights, name, &[out as usize, inp as usize])?;
    let stored = format!("{name}.T");
    b.weight(&stored, &[inp, out], w.map(|w| transpose(&w, out as usize, inp as usize)).as_deref())?;
    Ok(b.node("MatMul", &[x, &stored], vec![]))
}

/// `[rows, cols]` row-major → `[cols, rows]`.
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// x / sqrt(mean(x²) + eps) · w
fn rms_norm(
    b: &mut Builder,
    weights: &mut dyn WeightSource,
    x: &str,
    name: &str,
    h: i64,
    eps: f32,
) -> anyhow::Result<String> {
    let w = fetch(weights, name, &[h as usize])?;
    b.weight(name, &[h], w.as_deref())?;
    let two = b.constant(&format!("{name}.two"), &[], &[2.0])?;
    let eps = b.constant(&format!("{name}.eps"), &[], &[eps])?;
    let last = b.ints("last_axis", &[-1]);
    let sq = b.node("Pow", &[x, &two], vec![]);
    let mean = b.node("ReduceMean", &[&sq, &last], vec![attr::int("keepdims", 1)]);
    let shifted = b.node("Add", &[&mean, &eps], vec![]);
    let root = b.node("Sqrt", &[&shifted], vec![]);
    let inv = b.node("Reciprocal", &[&root], vec![]);
    let normed = b.node("Mul", &[x, &inv], vec![]);
    Ok(b.node("Mul", &[&normed, name], vec![]))
}

/// [batch, seq, n·hd] → [batch, n, seq, hd]
fn heads(b: &mut Builder, x: &str, n: i64, hd: i64) -> String {
    let shape = b.ints(&format!("heads_{n}_{hd}"), &[0, 0, n, hd]);
    let r = b.node("Reshape", &[x, &shape], vec![]);
    b.node("Transpose", &[&r], vec![attr::ints("perm", &[0, 2, 1, 3])])
}

/// x·cos + rotate_half(x)·sin, rotate_half(x) = [-x₂, x₁]
fn rope(b: &mut Builder, x: &str, cos: &str, sin: &str, hd: i64) -> anyhow::Result<String> {
    let (zero, half, full) = (b.ints("rope_start", &[0]), b.ints("rope_half", &[hd / 2]), b.ints("rope_end", &[hd]));
    let last = b.ints("last_axis", &[-1]);
    let x1 = b.node("Slice", &[x, &zero, &half, &last], vec![]);
    let x2 = b.node("Slice", &[x, &half, &full, &last], vec![]);
    let nx2 = b.node("Neg", &[&x2], vec![]);
    let rot = b.node("Concat", &[&nx2, &x1], vec![attr::int("axis", -1)]);
    let a = b.node("Mul", &[x, cos], vec![]);
    let c = b.node("Mul", &[&rot, sin], vec![]);
    Ok(b.node("Add", &[&a, &c], vec![]))
}

/// [batch, kv, seq, hd] → [batch, heads, seq, hd], each kv head shared by heads/kv heads.
fn repeat_kv(b: &mut Builder, x: &str, nh: i64, nkv: i64, hd: i64) -> String {
    if nh == nkv {
        return x.to_string();
    }
    let axis = b.ints("kv_axis", &[2]);
    let u = b.node("Unsqueeze", &[x, &axis], vec![]);
    let reps = b.ints(&format!("kv_repeat_{}", nh / nkv), &[1, 1, nh / nkv, 1, 1]);
    let e = b.node("Expand", &[&u, &reps], vec![]);
    let shape = b.ints(&format!("kv_merge_{nh}_{hd}"), &[0, nh, -1, hd]);
    b.node("Reshape", &[&e, &shape], vec![])
}
