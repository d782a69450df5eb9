//! LoRA: every selected weight stays frozen and gains a trainable low-rank update,
//! `Y = X·W + (X·A)·B·(alpha/rank)` (Hu et al. 2021, as PEFT's `LoraLayer` computes it,
//! without dropout).
//!
//! In: a graph, its layers, the layers to adapt (the neuron set names them; its rows are
//! ignored), and [`LoraOptions`]. Each adapted weight must be a FLOAT initializer read
//! only as the weight of MatMul (2-D `[in, out]`) or Gemm (`transA=0`, `alpha=1`; `W`
//! `[out, in]` with `transB=1`) nodes.
//!
//! Out: per weight `W` two new graph inputs, `<W>.lora_A` `[in, rank]` and
//! `<W>.lora_B` `[rank, out]`, both in the `X·W` orientation whatever the weight's
//! layout, returned as [`Trainable`]s tagged with their [`LoraFactor`]. Every use
//! `Y = op(X, W, ..)` becomes `Y = Y_frozen + (X·A·scale)·B` under the old name `Y`;
//! the frozen weight stays an initializer and is never a graph output. The scale is
//! applied on the `[.., rank]` side, the smallest tensor of the branch.
//!
//! Initial values ([`initial_value`]): `A` as PEFT's `kaiming_uniform_(a=√5)` over the
//! fan-in, i.e. uniform on `±1/√in`, seeded by the seed and the weight's name; `B`
//! zero, so before the first step the output is the base model's, bit for bit
//! (`Y_frozen + 0`).

use super::{refuse, PassError};
use crate::analyze::{Layer, LayerKind};
use crate::ir::Graph;
use crate::onnx::make::{self, DimSpec};
use crate::onnx::DataType;
use crate::types::{LoraFactor, LoraOptions, LoraPart, NeuronSet, Trainable};

const PASS: &str = "lora";

/// Adds an adapter to every layer `neurons` names; returns `A` and `B` of each.
pub fn lora(
    graph: &mut Graph,
    layers: &[Layer],
    neurons: &NeuronSet,
    opts: &LoraOptions,
) -> Result<Vec<Trainable>, PassError> {
    if opts.rank == 0 {
        return Err(refuse(PASS, "--rank must be at least 1"));
    }
    if !opts.alpha.is_finite() {
        return Err(refuse(PASS, format!("--alpha must be a finite number, got {}", opts.alpha)));
    }
    graph.set_pass(Some(PASS));
    let mut out = vec![];
    for (layer, _) in super::selected_layers(PASS, layers, neurons)? {
        out.extend(adapt(graph, layer, opts)?);
    }
    graph.set_pass(None);
    Ok(out)
}

/// `in`, `out` of a weight and whether it is stored `[out, in]`, from its uses.
fn orientation(graph: &Graph, layer: &Layer, uses: &[crate::ir::NodeIndex]) -> Result<(i64, i64, bool), PassError> {
    let w = &layer.weight;
    if layer.shape.len() != 2 {
        return Err(refuse(PASS, format!("weight '{w}' has shape {:?}; LoRA adapts 2-D weights", layer.shape)));
    }
    let mut transposed = None;
    for &node in uses {
        let op = graph.op(node).expect("a use is an op");
        let attr = |name: &str| op.attribute.iter().find(|a| a.name() == name);
        let t = match layer.kind {
            LayerKind::MatMul => false,
            LayerKind::Gemm => {
                if attr("transA").is_some_and(|a| a.i() != 0) {
                    return Err(refuse(PASS, format!("{}: Gemm with transA=1 is not supported", graph.describe(node))));
                }
                if attr("alpha").is_some_and(|a| a.f() != 1.0) {
                    return Err(refuse(
                        PASS,
                        format!(
                            "{}: Gemm with alpha≠1 is not supported (the merged weight would differ)",
                            graph.describe(node)
                        ),
                    ));
                }
                attr("transB").is_some_and(|a| a.i() != 0)
            }
            LayerKind::Conv => {
                return Err(refuse(PASS, format!("weight '{w}' is a Conv kernel; LoRA adapts MatMul and Gemm weights")))
            }
        };
        if transposed.is_some_and(|prev| prev != t) {
            return Err(refuse(PASS, format!("weight '{w}' is read both with and without transB")));
        }
        transposed = Some(t);
    }
    let t = transposed.unwrap_or(false);
    let (rows, cols) = (layer.shape[0], layer.shape[1]);
    Ok(if t { (cols, rows, true) } else { (rows, cols, false) })
}

fn adapt(graph: &mut Graph, layer: &Layer, opts: &LoraOptions) -> Result<Vec<Trainable>, PassError> {
    let w = &layer.weight;
    let uses = super::weight_uses(PASS, graph, layer, &["MatMul", "Gemm"])?;
    let (n_in, n_out, transposed) = orientation(graph, layer, &uses)?;
    let r = opts.rank as i64;
    let scale = opts.scale();
    let factor = |part, name: String, shape: Vec<i64>| Trainable {
        name,
        shape,
        source: w.clone(),
        axis: 0,
        rows: vec![],
        mask: None,
        role: String::new(),
        source_rows: 0,
        lora: Some(LoraFactor { part, scale, transposed }),
    };
    let a = factor(LoraPart::A, format!("{w}.lora_A"), vec![n_in, r]);
    let b = factor(LoraPart::B, format!("{w}.lora_B"), vec![r, n_out]);
    for p in [&a, &b] {
        let dims: Vec<DimSpec> = p.shape.iter().map(|&d| d.into()).collect();
        graph.add_input(make::value_info(&p.name, DataType::Float, &dims))?;
    }
    let scale_const = (scale != 1.0).then(|| graph.const_f32(&format!("{w}.lora_scale"), scale));
    for node in uses {
        let proto = graph.op(node).cloned().expect("a use is an op");
        let (x, y) = (proto.input[0].clone(), proto.output[0].clone());
        let mut down = graph.add1("MatMul", &[&x, &a.name], vec![], &format!("{y}.lora_down"))?;
        if let Some(s) = &scale_const {
            down = graph.add1("Mul", &[&down, s], vec![], &format!("{y}.lora_scaled"))?;
        }
        let change = graph.add1("MatMul", &[&down, &b.name], vec![], &format!("{y}.lora_change"))?;
        let frozen = graph.fresh_name(&format!("{y}.frozen"));
        graph.rename_value(&y, &frozen)?;
        let sum = graph.add_op(make::node("Add", &[&frozen, &change], &[&y], vec![]))?;
        graph.replace_uses(&frozen, &y, &[sum])?;
    }
    Ok(vec![a, b])
}

/// The starting value of a LoRA parameter (`None` for any other): `A` uniform on
/// `±1/√in` (PEFT's Kaiming-uniform with `a=√5`), `B` zero.
pub fn initial_value(p: &Trainable, seed: u64) -> Option<Vec<f32>> {
    let n = crate::onnx::element_count(&p.shape) as usize;
    match p.lora?.part {
        LoraPart::B => Some(vec![0.0; n]),
        LoraPart::A => {
            let bound = 1.0 / (p.shape[0] as f64).sqrt();
            let mut rng = SplitMix(seed ^ fnv1a(p.name.as_bytes()));
            Some((0..n).map(|_| ((2.0 * rng.unit() - 1.0) * bound) as f32).collect())
        }
    }
}

/// SplitMix64: a seeded stream of uniform numbers, the same on every platform.
struct SplitMix(u64);

impl SplitMix {
    /// Uniform on [0, 1) with 53 bits.
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(part: LoraPart, shape: Vec<i64>) -> Trainable {
        Trainable {
            name: "w.lora_A".into(),
            shape,
            source: "w".into(),
            axis: 0,
            rows: vec![],
            mask: None,
            role: String::new(),
            source_rows: 0,
            lora: Some(LoraFactor { part, scale: 2.0, transposed: false }),
        }
    }

    #[test]
    fn a_is_seeded_uniform_within_one_over_root_fan_in_and_b_is_zero() {
        let a = initial_value(&param(LoraPart::A, vec![64, 8]), 3).unwrap();
        assert_eq!(a.len(), 512);
        let bound = 1.0 / 8.0; // 1/√64
        assert!(a.iter().all(|v| v.abs() <= bound));
        // Spread over the whole interval: a uniform sample's max is close to the bound.
        assert!(a.iter().fold(0f32, |m, v| m.max(v.abs())) > 0.95 * bound);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert_eq!(a, initial_value(&param(LoraPart::A, vec![64, 8]), 3).unwrap());
        assert_ne!(a, initial_value(&param(LoraPart::A, vec![64, 8]), 4).unwrap());
        assert!(initial_value(&param(LoraPart::B, vec![8, 32]), 3).unwrap().iter().all(|&v| v == 0.0));
    }
}
