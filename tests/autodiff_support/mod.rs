//! Shared helpers for the autodiff tests: a small PRNG, ONNX Runtime sessions from
//! protos, and central finite differences of a scalar loss.
#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use neft::onnx::proto::tensor_proto::DataType;
use neft::onnx::proto::{ModelProto, TensorProto};
use neft::runtime::ort::{HostTensor, Session, SessionOptions};
use prost::Message;
use std::collections::HashMap;

/// splitmix64: deterministic test data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// A float host tensor of element type `dtype` (FLOAT or DOUBLE).
pub fn float_tensor(dtype: DataType, shape: &[usize], data: &[f64]) -> HostTensor {
    match dtype {
        DataType::Double => HostTensor::F64(ArrayD::from_shape_vec(IxDyn(shape), data.to_vec()).unwrap()),
        _ => HostTensor::F32(ArrayD::from_shape_vec(IxDyn(shape), data.iter().map(|&v| v as f32).collect()).unwrap()),
    }
}

/// A host tensor's float values (f32 widened).
pub fn values(t: &HostTensor) -> Vec<f64> {
    match t {
        HostTensor::F32(a) => a.iter().map(|&v| v as f64).collect(),
        HostTensor::F64(a) => a.iter().copied().collect(),
        HostTensor::I64(a) => a.iter().map(|&v| v as f64).collect(),
        other => panic!("not a numeric tensor: {other:?}"),
    }
}

pub fn session(model: &ModelProto, label: &str) -> Session {
    try_session(model, label).unwrap_or_else(|e| panic!("{e}"))
}

pub fn try_session(model: &ModelProto, label: &str) -> Result<Session, String> {
    let bytes = model.encode_to_vec();
    Session::from_bytes(&bytes, label, &SessionOptions { threads: Some(1), ..Default::default() })
        .map_err(|e| e.to_string())
}

pub fn run(sess: &mut Session, feeds: &[(String, HostTensor)]) -> HashMap<String, HostTensor> {
    let refs: Vec<(&str, HostTensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    sess.run(&refs).unwrap_or_else(|e| panic!("run failed: {e}")).into_iter().collect()
}

/// The float values of an initializer (raw or typed storage).
pub fn initializer_values(t: &TensorProto) -> Vec<f64> {
    let raw = t.raw_data.clone().unwrap_or_default();
    match DataType::try_from(t.data_type()).unwrap() {
        DataType::Float if !raw.is_empty() => {
            raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
        }
        DataType::Float => t.float_data.iter().map(|&v| v as f64).collect(),
        DataType::Double if !raw.is_empty() => {
            raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
        }
        DataType::Double => t.double_data.clone(),
        other => panic!("initializer {} is {other:?}, not float", t.name()),
    }
}

/// Moves the named initializers to graph inputs, returning their current values as
/// feeds, so that one session serves every finite-difference run.
pub fn weights_as_inputs(model: &ModelProto, names: &[String]) -> (ModelProto, Vec<(String, HostTensor)>) {
    let mut m = model.clone();
    let g = m.graph.as_mut().unwrap();
    let mut feeds = vec![];
    let mut kept = vec![];
    for t in std::mem::take(&mut g.initializer) {
        if names.iter().any(|n| n == t.name()) {
            let dtype = DataType::try_from(t.data_type()).unwrap();
            let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            let dims: Vec<neft::onnx::make::DimSpec> = t.dims.iter().map(|&d| d.into()).collect();
            g.input.push(neft::onnx::make::value_info(t.name(), dtype, &dims));
            feeds.push((t.name().to_string(), float_tensor(dtype, &shape, &initializer_values(&t))));
        } else {
            kept.push(t);
        }
    }
    g.initializer = kept;
    (m, feeds)
}

/// One mismatch between the analytic and the numeric gradient.
#[derive(Debug)]
pub struct Mismatch {
    pub tensor: String,
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
}

/// Central differences of the scalar output `loss` of `sess` with respect to the
/// entries `which(tensor)` of each float feed named in `wrt`; each is compared to
/// `analytic[tensor][entry]`: |a - n| ≤ rtol·(s + |n|) + noise, where s is the
/// largest |n| of that tensor (at least `floor`) and noise = 16 ulp(loss) / 2·eps, the
/// resolution of a difference quotient of a loss computed in its float type.
#[allow(clippy::too_many_arguments)]
pub fn finite_differences(
    sess: &mut Session,
    feeds: &[(String, HostTensor)],
    loss: &str,
    wrt: &[String],
    analytic: &HashMap<String, Vec<f64>>,
    which: &dyn Fn(&str, &[f64]) -> Vec<usize>,
    eps: f64,
    rtol: f64,
    floor: f64,
) -> (usize, Vec<Mismatch>) {
    let mut checked = 0;
    let mut bad = vec![];
    let base_loss = &run(sess, feeds)[loss];
    let unit = if matches!(base_loss, HostTensor::F64(_)) { f64::EPSILON } else { f32::EPSILON as f64 };
    let noise = 16.0 * values(base_loss)[0].abs() * unit / (2.0 * eps);
    for name in wrt {
        let pos = feeds.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("no feed {name}"));
        let base = feeds[pos].1.clone();
        let (shape, data) = (base.shape().to_vec(), values(&base));
        let dtype = if matches!(base, HostTensor::F64(_)) { DataType::Double } else { DataType::Float };
        let a = &analytic[name];
        assert_eq!(a.len(), data.len(), "{name}: gradient has {} entries, the tensor {}", a.len(), data.len());
        let mut numeric = vec![];
        let entries = which(name, a);
        for &j in &entries {
            let mut eval = |delta: f64| -> (f64, f64) {
                let mut d = data.clone();
                d[j] += delta;
                let t = float_tensor(dtype, &shape, &d);
                let actual = values(&t)[j] - data[j];
                let mut f = feeds.to_vec();
                f[pos].1 = t;
                (values(&run(sess, &f)[loss])[0], actual)
            };
            let ((lp, hp), (lm, hm)) = (eval(eps), eval(-eps));
            numeric.push((j, (lp - lm) / (hp - hm)));
        }
        let scale = numeric.iter().map(|(_, n)| n.abs()).fold(floor, f64::max);
        for (j, n) in numeric {
            checked += 1;
            if (a[j] - n).abs() > rtol * (scale + n.abs()) + noise || !a[j].is_finite() {
                bad.push(Mismatch { tensor: name.clone(), index: j, analytic: a[j], numeric: n });
            }
        }
    }
    (checked, bad)
}

/// Every op of a model is in the default ONNX domain.
pub fn assert_default_domain(model: &ModelProto) {
    for n in &model.graph.as_ref().unwrap().node {
        assert!(
            n.domain().is_empty() || n.domain() == "ai.onnx",
            "node {} ({}) is in domain {}",
            n.name(),
            n.op_type(),
            n.domain()
        );
    }
    for o in &model.opset_import {
        assert!(o.domain().is_empty() || o.domain() == "ai.onnx", "opset import of domain {}", o.domain());
    }
}

pub mod build;

use neft::autodiff::{grad, GradOptions, GradReport};
use neft::ir::Graph;

/// What [`grad_and_check`] measured.
pub struct Checked {
    pub report: GradReport,
    /// The gradient model (for further checks).
    pub grad_model: ModelProto,
    /// Analytic gradients by tensor.
    pub analytic: HashMap<String, Vec<f64>>,
    pub entries: usize,
    pub mismatches: Vec<Mismatch>,
}

/// Differentiates `model`'s `loss` for the initializers or inputs `wrt`, runs the
/// gradient graph on ORT, and checks the entries `which` picks against central
/// differences of the forward model (weights fed as inputs).
pub fn grad_and_check(
    model: &ModelProto,
    feeds: &[(String, HostTensor)],
    loss: &str,
    wrt: &[String],
    which: &dyn Fn(&str, &[f64]) -> Vec<usize>,
    eps: f64,
    rtol: f64,
) -> Checked {
    let graph = Graph::from_proto(model.graph.as_ref().unwrap()).unwrap();
    let opset = neft::autodiff::default_opset(&model.opset_import).unwrap_or(18);
    let out =
        grad(&graph, loss, wrt, &GradOptions { opset, ..Default::default() }).unwrap_or_else(|e| panic!("grad: {e}"));
    let mut grad_model = model.clone();
    grad_model.graph = Some(out.graph.to_proto());
    neft::autodiff::set_default_opset(&mut grad_model.opset_import, out.opset);
    assert_default_domain(&grad_model);
    let mut sess = session(&grad_model, "gradient graph");
    let results = run(&mut sess, feeds);
    let analytic: HashMap<String, Vec<f64>> =
        wrt.iter().map(|w| (w.clone(), values(&results[&format!("{w}.grad")]))).collect();
    let inits: Vec<String> = wrt.iter().filter(|w| !feeds.iter().any(|(n, _)| n == *w)).cloned().collect();
    let (fwd, mut all_feeds) = weights_as_inputs(model, &inits);
    all_feeds.extend(feeds.iter().cloned());
    let mut fsess = session(&fwd, "forward graph");
    let (entries, mismatches) =
        finite_differences(&mut fsess, &all_feeds, loss, wrt, &analytic, which, eps, rtol, 1e-6);
    Checked { report: out.report, grad_model, analytic, entries, mismatches }
}

/// Entries to check: all of them up to `all_up_to`, else the `k` with the largest
/// analytic gradient and `k` spread evenly.
pub fn pick(all_up_to: usize, k: usize) -> impl Fn(&str, &[f64]) -> Vec<usize> {
    move |_: &str, a: &[f64]| {
        let n = a.len();
        if n <= all_up_to {
            return (0..n).collect();
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| a[j].abs().total_cmp(&a[i].abs()));
        let mut chosen: Vec<usize> = order[..k].to_vec();
        chosen.extend((0..k).map(|t| t * n / k + (n / k) / 2));
        chosen.sort_unstable();
        chosen.dedup();
        chosen
    }
}

/// The same model in float64: float initializers, constants, casts and declared types
/// widened (for finite differences at full precision on an exported float32 graph).
pub fn to_f64(model: &ModelProto) -> ModelProto {
    use neft::onnx::proto::type_proto;
    const F32: i32 = DataType::Float as i32;
    let widen = |t: &TensorProto| -> TensorProto {
        if t.data_type() != F32 {
            return t.clone();
        }
        let mut w = neft::onnx::make::tensor_f64(t.name(), &t.dims, &initializer_values(t));
        w.doc_string = t.doc_string.clone();
        w
    };
    let mut m = model.clone();
    let g = m.graph.as_mut().unwrap();
    g.initializer = g.initializer.iter().map(widen).collect();
    for n in &mut g.node {
        let cast = n.op_type() == "Cast";
        for a in &mut n.attribute {
            if let Some(t) = &a.t {
                a.t = Some(widen(t));
            }
            if cast && a.name() == "to" && a.i == Some(F32 as i64) {
                a.i = Some(DataType::Double as i64);
            }
        }
    }
    for v in g.input.iter_mut().chain(g.output.iter_mut()).chain(g.value_info.iter_mut()) {
        if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if t.elem_type == Some(F32) {
                t.elem_type = Some(DataType::Double as i32);
            }
        }
    }
    m
}
