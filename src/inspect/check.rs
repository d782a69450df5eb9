//! `neft inspect --check`: does ONNX Runtime accept and run the model on this
//! execution provider? Runs once on synthetic inputs.

use crate::onnx::make::{declared, DimSpec};
use crate::onnx::{dtype_name, DataType, Model};
use crate::runtime::ort::{Ep, HostTensor, Session, SessionOptions};
use ndarray::{ArrayD, IxDyn};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct RuntimeCheck {
    pub ep: String,
    pub library: String,
    pub session_ms: f64,
    pub run_ms: f64,
    pub outputs: Vec<(String, Vec<usize>)>,
}

const MAX_SYNTHETIC_ELEMENTS: usize = 1 << 28;

/// Inputs for one run: every graph input that is not an initializer, symbolic
/// dimensions set to `dim`, values small and deterministic (token ids 1).
pub fn synthetic_inputs(model: &Model, dim: usize) -> Result<Vec<(String, HostTensor)>, String> {
    let g = model.graph();
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let mut out = vec![];
    for input in g.input.iter().filter(|i| !inits.contains(&i.name())) {
        let (dt, dims) = declared(input).ok_or_else(|| format!("input '{}' is not a tensor", input.name()))?;
        let dims = dims.ok_or_else(|| format!("input '{}' has no declared shape", input.name()))?;
        let shape: Vec<usize> = dims
            .iter()
            .map(|d| match d {
                DimSpec::Fixed(n) => {
                    usize::try_from(*n).map_err(|_| format!("input '{}' declares dimension {n}", input.name()))
                }
                DimSpec::Named(_) => Ok(dim),
            })
            .collect::<Result<_, _>>()?;
        let n = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= MAX_SYNTHETIC_ELEMENTS)
            .ok_or_else(|| format!("input '{}' of shape {shape:?} is too large to synthesize", input.name()))?;
        let t = match DataType::try_from(dt) {
            Ok(DataType::Float) => HostTensor::f32(&shape, (0..n).map(|k| (k % 7) as f32 * 0.1).collect()),
            Ok(DataType::Double) => HostTensor::F64(
                ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|k| (k % 7) as f64 * 0.1).collect()).unwrap(),
            ),
            Ok(DataType::Int64) => HostTensor::i64(&shape, vec![1; n]),
            Ok(DataType::Int32) => HostTensor::I32(ArrayD::from_elem(IxDyn(&shape), 1)),
            Ok(DataType::Bool) => HostTensor::Bool(ArrayD::from_elem(IxDyn(&shape), true)),
            _ => {
                return Err(format!(
                    "input '{}' has type {}, which --check cannot synthesize",
                    input.name(),
                    dtype_name(dt)
                ))
            }
        };
        out.push((input.name().to_string(), t));
    }
    Ok(out)
}

/// Creates a session for the model file on `ep` and runs it once.
pub fn check_runtime(model: &Model, ep: Ep) -> anyhow::Result<RuntimeCheck> {
    let inputs = synthetic_inputs(model, 1).map_err(|e| anyhow::anyhow!("{}: {e}", model.display_path()))?;
    let t0 = Instant::now();
    let mut session = Session::from_file(&model.path, &SessionOptions { ep, ..Default::default() })?;
    let session_ms = t0.elapsed().as_secs_f64() * 1e3;
    let feed: Vec<(&str, HostTensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let t1 = Instant::now();
    let outputs = session.run(&feed)?;
    let run_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(RuntimeCheck {
        ep: ep.to_string(),
        library: crate::runtime::ort::loaded_library().map(|p| p.display().to_string()).unwrap_or_default(),
        session_ms,
        run_ms,
        outputs: outputs.into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect(),
    })
}

impl std::fmt::Display for RuntimeCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        writeln!(
            f,
            "\nONNX Runtime ({}) on {}: session {:.0} ms, one run {:.1} ms",
            self.library, self.ep, self.session_ms, self.run_ms
        )?;
        for (name, shape) in &self.outputs {
            writeln!(f, "  {name:<24} {shape:?}")?;
        }
        Ok(())
    }
}
