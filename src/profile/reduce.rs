//! In-graph reductions of one site's rows `[rows, neurons]` to per-neuron sums.
//!
//! In: the rows, how they count ([`Weights`]: the real-token mask, or every row) and
//! the [`Statistic`]s wanted. Out: a `[k, neurons]` FLOAT tensor, one row per
//! statistic in [`Statistic::ALL`] order: Σx, Σ|x|, Σx², #(x>0), max|x|.
//!
//! Built for ONNX Runtime's CPU provider, where each op is a memory-bound pass over the
//! activation, so the cost is the number and kind of passes (costs measured on one
//! thread, in BENCHMARKS.md, profiling section):
//! - token sums are one `MatMul` of the `[1, rows]` mask with the rows, a GEMV that
//!   reads them once and does the masking (twice as fast as `ReduceSum` on one thread,
//!   more on two, and no masked copy to write first);
//! - one `Abs` serves Σ|x| and max|x|; the max needs padded rows zeroed (`Mul` by the
//!   `[rows, 1]` mask; |x| ≥ 0, so a zero never raises it);
//! - #(x>0) casts the comparison to UINT8 and counts with `MatMulInteger`: the BOOL to
//!   FLOAT cast took 2.3x as long as the comparison, the UINT8 cast a quarter of that.
//!   CPU only: the CUDA provider has `MatMulInteger` for INT8 alone, and on a GPU the
//!   FLOAT cast is cheap;
//! - `ReduceL1`, `ReduceSumSquare`, `Sign`, `Einsum`, `Where` and `Pow` with a tensor
//!   exponent were each several times slower than the forms used here.

use super::file::Statistic;
use crate::ir::{attr, Graph, IrError};
use crate::onnx::DataType;
use crate::runtime::Ep;

/// The real-token mask in the forms the reductions read.
pub struct TokenMask {
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
    opset: i64,
    axes: String,
    /// Count positives with `MatMulInteger` (opset 10 on, CPU).
    integer_counts: bool,
}

impl Reducer {
    pub fn new(g: &mut Graph, opset: i64, ep: Ep) -> Reducer {
        let integer_counts = opset >= 10 && ep == Ep::Cpu;
        Reducer { opset, axes: g.const_i64s("axis0", &[0]), integer_counts }
    }

    /// The mask input `[batch, seq]` (FLOAT) reshaped for [`Weights::Tokens`].
    pub fn token_mask(&self, g: &mut Graph, mask: &str) -> Result<TokenMask, IrError> {
        let (row_shape, column_shape) = (g.const_i64s("mask_row", &[1, -1]), g.const_i64s("mask_column", &[-1, 1]));
        let row = g.add1("Reshape", &[mask, &row_shape], vec![], "token_mask_row")?;
        let row_u8 = cast(g, &row, DataType::Uint8, "token_mask_row_u8")?;
        let column = g.add1("Reshape", &[mask, &column_shape], vec![], "token_mask_column")?;
        Ok(TokenMask { row, row_u8, column })
    }

    /// `[k, n]`: the wanted rows of Σx, Σ|x|, Σx², #(x>0), max|x| of `x` `[rows, n]`.
    pub fn stats(
        &self,
        g: &mut Graph,
        x: &str,
        w: &Weights,
        site: &str,
        wanted: &[Statistic],
    ) -> Result<String, IrError> {
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
        let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
        g.add1("Concat", &refs, vec![attr::int("axis", 0)], &format!("{site}.stats"))
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

fn cast(g: &mut Graph, x: &str, to: DataType, hint: &str) -> Result<String, IrError> {
    g.add1("Cast", &[x], vec![attr::int("to", to as i64)], hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::make::value_info;
    use crate::onnx::proto::{GraphProto, NodeProto};

    /// The ops that reduce one token site to all five statistics.
    fn ops_for(ep: Ep) -> Vec<NodeProto> {
        let mut g = Graph::from_proto(&GraphProto::default()).unwrap();
        g.add_input(value_info("x", DataType::Float, &["rows".into(), 8.into()])).unwrap();
        g.add_input(value_info("mask", DataType::Float, &["batch".into(), "seq".into()])).unwrap();
        let r = Reducer::new(&mut g, 18, ep);
        let mask = r.token_mask(&mut g, "mask").unwrap();
        r.stats(&mut g, "x", &Weights::Tokens(&mask), "site", &Statistic::ALL).unwrap();
        g.op_indices().filter_map(|n| g.op(n).cloned()).collect()
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
