//! In-graph reductions of one site's activation (neuron axis last) to per-neuron sums.
//!
//! In: the rows, how they count ([`Weights`]: the real-token mask, or every row) and
//! the [`Statistic`]s wanted. Out: a `[k, neurons]` FLOAT tensor, one row per
//! statistic in [`Statistic::ALL`] order: Σx, Σ|x|, Σx², #(x>0), max|x|.
//!
//! Two forms, the same numbers (tests/profile_stats.rs checks both against statistics
//! computed directly from the activations):
//! - **CPU**: one node of neft's own operator, [`NeuronStats`](crate::runtime::neuron_stats),
//!   which reads the activation once and skips padded rows;
//! - **standard ops**, for the CUDA provider (the operator runs on the host, and a GPU
//!   does these passes cheaply). Each op is a memory-bound pass over the activation, so
//!   the form minimizes passes (costs measured on one CPU thread):
//!   - token sums are one `MatMul` of the `[1, rows]` mask with the rows, a GEMV that
//!     reads them once and does the masking (twice as fast as `ReduceSum`, and no
//!     masked copy to write first);
//!   - one `Abs` serves Σ|x| and max|x|; the max needs padded rows zeroed (`Mul` by the
//!     `[rows, 1]` mask; |x| ≥ 0, so a zero never raises it);
//!   - #(x>0) casts the comparison to FLOAT and sums it like the rest (the CUDA
//!     provider has `MatMulInteger` for INT8 alone); run on a CPU, the form casts to
//!     UINT8 and counts with `MatMulInteger`, in half the time;
//!   - `ReduceL1`, `ReduceSumSquare`, `Sign`, `Einsum`, `Where` and `Pow` with a tensor
//!     exponent were each several times slower than the forms used here.

use super::file::Statistic;
use crate::ir::{attr, Graph, IrError};
use crate::onnx::proto::NodeProto;
use crate::onnx::DataType;
use crate::runtime::{neuron_stats, Ep};

/// The real-token mask in the forms the reductions read.
pub struct TokenMask {
    /// `[batch, seq]` FLOAT as fed: the mask of the fused operator.
    fed: String,
    /// `[1, rows]` FLOAT: the left operand of the token sums.
    row: String,
    /// `[1, rows]` UINT8: the left operand of the positive count.
    row_u8: String,
    /// `[rows, 1]` FLOAT: zeroes padded rows before the max.
    column: String,
}

/// How a site's rows count.
pub enum Weights<'a> {
    /// Token rows: only where the mask is 1.
    Tokens(&'a TokenMask),
    /// Every row (tensors without a token axis).
    Every,
}

/// Emits reductions over axis 0 in the form the model's opset takes (axes as an input
/// from opset 18, and for ReduceSum from 13; as an attribute before).
pub struct Reducer {
    form: Form,
    opset: i64,
    axes: String,
    /// Count positives with `MatMulInteger` (opset 10 on, CPU).
    integer_counts: bool,
}

/// A site's reduction between [`Reducer::start`] and [`Reducer::finish`].
pub enum Partial {
    Fused {
        x: String,
        mask: String,
    },
    /// The `[1, n]` rows, one per wanted statistic.
    Standard {
        rows: Vec<String>,
    },
}

/// Which ops the reductions are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// One [`neuron_stats`] node per site.
    Fused,
    /// Default-domain ops only.
    Standard,
}

impl Form {
    /// The faster form on `ep`.
    pub fn for_ep(ep: Ep) -> Form {
        match ep {
            Ep::Cpu => Form::Fused,
            Ep::Cuda { .. } => Form::Standard,
        }
    }
}

impl Reducer {
    pub fn new(g: &mut Graph, opset: i64, ep: Ep, form: Form) -> Reducer {
        let integer_counts = opset >= 10 && ep == Ep::Cpu;
        Reducer { form, opset, axes: g.const_i64s("axis0", &[0]), integer_counts }
    }

    /// The mask input `[batch, seq]` (FLOAT) reshaped for [`Weights::Tokens`].
    pub fn token_mask(&self, g: &mut Graph, mask: &str) -> Result<TokenMask, IrError> {
        let (row_shape, column_shape) = (g.const_i64s("mask_row", &[1, -1]), g.const_i64s("mask_column", &[-1, 1]));
        let row = g.add1("Reshape", &[mask, &row_shape], vec![], "token_mask_row")?;
        let row_u8 = cast(g, &row, DataType::Uint8, "token_mask_row_u8")?;
        let column = g.add1("Reshape", &[mask, &column_shape], vec![], "token_mask_column")?;
        Ok(TokenMask { fed: mask.to_string(), row, row_u8, column })
    }

    /// The first half of a site's reduction: in the standard form, every op that reads
    /// the activation `x` (neuron axis last; `[rows, n]` for this form), one `[1, n]`
    /// row per wanted statistic of Σx, Σ|x|, Σx², #(x>0), max|x|; in the fused form,
    /// nothing yet.
    pub fn start(&self, g: &mut Graph, x: &str, w: &Weights, wanted: &[Statistic]) -> Result<Partial, IrError> {
        if self.form == Form::Fused {
            let mask = match w {
                Weights::Tokens(m) => m.fed.clone(),
                Weights::Every => String::new(),
            };
            return Ok(Partial::Fused { x: x.to_string(), mask });
        }
        let mut abs = None;
        let mut rows = vec![];
        for stat in wanted {
            let row = match stat {
                Statistic::Mean => self.sum(g, x, w, "sum")?,
                Statistic::MeanAbs | Statistic::MaxAbs => {
                    let a = match &abs {
                        Some(a) => a,
                        None => abs.insert(g.add1("Abs", &[x], vec![], "abs")?),
                    }
                    .clone();
                    match stat {
                        Statistic::MeanAbs => self.sum(g, &a, w, "sum_abs")?,
                        _ => self.max(g, &a, w)?,
                    }
                }
                Statistic::MeanSq => {
                    let sq = g.add1("Mul", &[x, x], vec![], "square")?;
                    self.sum(g, &sq, w, "sum_sq")?
                }
                Statistic::FracPos => self.count_positive(g, x, w)?,
            };
            rows.push(row);
        }
        Ok(Partial::Standard { rows })
    }

    /// The second half: the site's `[k, n]` output. `after` is the previous site's
    /// output, which this one reads without changing a value (the fused node ignores
    /// it; the standard form concatenates zero rows of it), so that the sites form one
    /// chain in forward order.
    ///
    /// Why: ONNX Runtime orders a graph by a depth-first walk up from its last node
    /// without consumers, taking the input made last first. With unlinked reductions
    /// that walk ran the whole forward pass first and every reduction at the end, so
    /// every activation stayed alive (and went cold in cache) until then. Made after
    /// every site's [`start`](Self::start), the chain's links are the inputs made last,
    /// and the walk runs each reduction right after its activation.
    pub fn finish(
        &self,
        g: &mut Graph,
        partial: Partial,
        site: &str,
        neurons: usize,
        wanted: &[Statistic],
        after: Option<&str>,
    ) -> Result<String, IrError> {
        match partial {
            Partial::Fused { x, mask } => fused(g, &[&x, &mask, after.unwrap_or("")], site, wanted),
            Partial::Standard { mut rows } => {
                if let Some(a) = after.filter(|_| self.opset >= 10) {
                    rows.push(self.no_rows_of(g, a, neurons)?);
                }
                let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
                g.add1("Concat", &refs, vec![attr::int("axis", 0)], &format!("{site}.stats"))
            }
        }
    }

    /// `[0, n]`: none of the rows of `a` (`[k, m]`), for a data dependency that adds no
    /// value (a `0` in a Reshape shape copies the input's dimension, here 0).
    fn no_rows_of(&self, g: &mut Graph, a: &str, n: usize) -> Result<String, IrError> {
        // `axes` is `[0]`: start 0, end 0, along axis 0.
        let zero = self.axes.as_str();
        let none = g.add1("Slice", &[a, zero, zero, zero], vec![], "no_rows")?;
        let shape = g.const_i64s("no_rows_shape", &[0, n as i64]);
        g.add1("Reshape", &[&none, &shape], vec![], "no_rows")
    }

    /// `[1, n]`: the weighted sum of `y`'s rows.
    fn sum(&self, g: &mut Graph, y: &str, w: &Weights, hint: &str) -> Result<String, IrError> {
        match w {
            Weights::Tokens(m) => g.add1("MatMul", &[&m.row, y], vec![], hint),
            Weights::Every => self.reduce(g, "ReduceSum", y, hint),
        }
    }

    /// `[1, n]`: the largest of the counted rows of `a` (which is ≥ 0).
    fn max(&self, g: &mut Graph, a: &str, w: &Weights) -> Result<String, IrError> {
        let counted = match w {
            Weights::Tokens(m) => g.add1("Mul", &[a, &m.column], vec![], "masked_abs")?,
            Weights::Every => a.to_string(),
        };
        self.reduce(g, "ReduceMax", &counted, "max_abs")
    }

    /// `[1, n]` FLOAT: how many counted rows of `x` are > 0.
    fn count_positive(&self, g: &mut Graph, x: &str, w: &Weights) -> Result<String, IrError> {
        let zero = g.const_f32("zero", 0.0);
        let pos = g.add1("Greater", &[x, &zero], vec![], "positive")?;
        match w {
            Weights::Tokens(m) if self.integer_counts => {
                let pos = cast(g, &pos, DataType::Uint8, "positive")?;
                let count = g.add1("MatMulInteger", &[&m.row_u8, &pos], vec![], "positive")?;
                cast(g, &count, DataType::Float, "positive")
            }
            _ => {
                let pos = cast(g, &pos, DataType::Float, "positive")?;
                self.sum(g, &pos, w, "positive")
            }
        }
    }

    fn reduce(&self, g: &mut Graph, op: &str, x: &str, hint: &str) -> Result<String, IrError> {
        let keep = attr::int("keepdims", 1);
        if self.opset >= 18 || (op == "ReduceSum" && self.opset >= 13) {
            g.add1(op, &[x, &self.axes], vec![keep], hint)
        } else {
            g.add1(op, &[x], vec![keep, attr::ints("axes", &[0])], hint)
        }
    }
}

/// One [`neuron_stats`] node computing every wanted statistic; `inputs` are x, mask and
/// after, "" where absent.
fn fused(g: &mut Graph, inputs: &[&str], site: &str, wanted: &[Statistic]) -> Result<String, IrError> {
    let index = |s: &Statistic| Statistic::ALL.iter().position(|a| a == s).expect("a statistic") as i64;
    let stats: Vec<i64> = wanted.iter().map(index).collect();
    let mut inputs = inputs.to_vec();
    while inputs.last() == Some(&"") {
        inputs.pop();
    }
    let out = g.fresh_name(&format!("{site}.stats"));
    let name = g.fresh_name(&format!("{site}.{}", neuron_stats::OP));
    g.add_op(NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.clone()],
        name: Some(name),
        op_type: Some(neuron_stats::OP.into()),
        domain: Some(neuron_stats::DOMAIN.into()),
        attribute: vec![attr::ints("stats", &stats)],
        ..Default::default()
    })?;
    Ok(out)
}

fn cast(g: &mut Graph, x: &str, to: DataType, hint: &str) -> Result<String, IrError> {
    g.add1("Cast", &[x], vec![attr::int("to", to as i64)], hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::make::value_info;
    use crate::onnx::proto::GraphProto;

    /// The ops that reduce one token site to `wanted`, after dead ops are removed.
    fn ops_in(ep: Ep, form: Form, wanted: &[Statistic]) -> Vec<NodeProto> {
        let mut g = Graph::from_proto(&GraphProto::default()).unwrap();
        g.add_input(value_info("x", DataType::Float, &["rows".into(), 8.into()])).unwrap();
        g.add_input(value_info("mask", DataType::Float, &["batch".into(), "seq".into()])).unwrap();
        let r = Reducer::new(&mut g, 18, ep, form);
        let mask = r.token_mask(&mut g, "mask").unwrap();
        let partial = r.start(&mut g, "x", &Weights::Tokens(&mask), wanted).unwrap();
        let out = r.finish(&mut g, partial, "site", 8, wanted, None).unwrap();
        g.set_outputs(vec![crate::onnx::make::value_info_unshaped(&out, DataType::Float)]).unwrap();
        g.eliminate_dead();
        g.op_indices().filter_map(|n| g.op(n).cloned()).collect()
    }

    fn ops_for(ep: Ep) -> Vec<NodeProto> {
        ops_in(ep, Form::Standard, &Statistic::ALL)
    }

    #[test]
    fn the_fused_form_is_one_node_of_neft_s_operator_fed_the_mask_as_given() {
        let ops = ops_in(Ep::Cpu, Form::Fused, &[Statistic::MeanAbs, Statistic::MaxAbs]);
        assert_eq!(ops.len(), 1, "{ops:?}");
        let op = &ops[0];
        assert_eq!((op.domain(), op.op_type()), (neuron_stats::DOMAIN, neuron_stats::OP));
        assert_eq!(op.input, ["x", "mask"]);
        assert_eq!(op.attribute[0].ints, [1, 4]);
        assert_eq!(Form::for_ep(Ep::Cpu), Form::Fused);
        assert_eq!(Form::for_ep(Ep::Cuda { device: 0 }), Form::Standard);
    }

    fn count(ops: &[NodeProto], op: &str) -> usize {
        ops.iter().filter(|o| o.op_type() == op).count()
    }

    #[test]
    fn token_sums_are_mask_products_and_no_activation_is_cast_to_float() {
        let ops = ops_for(Ep::Cpu);
        // Σx, Σ|x|, Σx² as GEMVs of the mask; one Abs for Σ|x| and max|x|; no ReduceSum.
        let counts = ["MatMul", "MatMulInteger", "Abs", "ReduceSum", "ReduceMax"].map(|op| count(&ops, op));
        assert_eq!(counts, [3, 1, 1, 0, 1]);
        // The only cast to FLOAT is of the [1, n] count.
        let to_float: Vec<&NodeProto> =
            ops.iter().filter(|o| o.op_type() == "Cast" && o.attribute[0].i() == DataType::Float as i64).collect();
        let count_out = &ops.iter().find(|o| o.op_type() == "MatMulInteger").unwrap().output[0];
        assert!(to_float.len() == 1 && &to_float[0].input[0] == count_out, "{to_float:?}");
    }

    #[test]
    fn on_cuda_positives_are_counted_in_float_for_want_of_a_uint8_matmul_integer() {
        let ops = ops_for(Ep::Cuda { device: 0 });
        assert_eq!([count(&ops, "MatMul"), count(&ops, "MatMulInteger")], [4, 0]);
    }
}
