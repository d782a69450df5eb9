//! Every gradient rule against central finite differences on ONNX Runtime (CPU),
//! from one table of cases. Each case is one op with random inputs (symbolic
//! dimensions where marked); the loss is Σ yᵢ² over its float outputs, so the
//! upstream gradient (2y) differs from element to element. Float64 models where ORT
//! has the kernels (errors must stay below 1e-6 of the gradient's scale), float32
//! otherwise (below 2e-2 with steps of 1e-2): either catches a wrong sign, a missing
//! term or a wrong broadcast reduction.

#[path = "autodiff_support/mod.rs"]
mod support;

use neft::autodiff::{grad, AutodiffError, GradOptions};
use neft::ir::{attr, Graph};
use neft::onnx::make::{self, DimSpec};
use neft::onnx::proto::tensor_proto::DataType;
use neft::onnx::proto::{AttributeProto, ModelProto, NodeProto};
use neft::runtime::ort::HostTensor;
use std::collections::HashMap;
use support::{assert_default_domain, finite_differences, float_tensor, run, try_session, values, Rng};

/// One input of the op under test.
#[derive(Clone)]
enum In {
    /// Differentiated: a graph input with random values in `lo..hi`; `sym` names
    /// axes declared symbolic (`(axis, name)`).
    Var {
        dims: Vec<usize>,
        lo: f64,
        hi: f64,
        sym: Vec<(usize, &'static str)>,
    },
    /// A random float initializer (not differentiated).
    Const {
        dims: Vec<usize>,
        lo: f64,
        hi: f64,
    },
    /// A fixed float initializer.
    Floats(Vec<usize>, Vec<f64>),
    Ints(Vec<usize>, Vec<i64>),
    Bools(Vec<usize>, Vec<bool>),
    Absent,
}

fn var(dims: &[usize]) -> In {
    In::Var { dims: dims.to_vec(), lo: -2.0, hi: 2.0, sym: vec![] }
}
/// A positive input (for Log, Sqrt, denominators).
fn pos(dims: &[usize]) -> In {
    In::Var { dims: dims.to_vec(), lo: 0.5, hi: 2.0, sym: vec![] }
}
fn cst(dims: &[usize]) -> In {
    In::Const { dims: dims.to_vec(), lo: -2.0, hi: 2.0 }
}
fn scalar(v: f64) -> In {
    In::Floats(vec![], vec![v])
}
fn ints(v: &[i64]) -> In {
    In::Ints(vec![v.len()], v.to_vec())
}
fn int_scalar(v: i64) -> In {
    In::Ints(vec![], vec![v])
}

impl In {
    /// Declares `axis` symbolic, named `name`.
    fn sym(self, axis: usize, name: &'static str) -> In {
        match self {
            In::Var { dims, lo, hi, mut sym } => {
                sym.push((axis, name));
                In::Var { dims, lo, hi, sym }
            }
            other => other,
        }
    }
}

struct Case {
    name: String,
    op: &'static str,
    attrs: Vec<AttributeProto>,
    inputs: Vec<In>,
    outputs: usize,
    /// Outputs the loss uses (default: all).
    loss_outputs: Option<Vec<usize>>,
    dtype: DataType,
    opset: i64,
    /// Whether tract can infer the gradient graph's shapes (it has no kernels for the
    /// loss ops, so their outputs, which the test's Σ y² reads, stay unknown to it;
    /// it cannot follow a ReduceSum over computed axes).
    tract: bool,
    /// Whether symbolic dimensions may take other sizes (not when a constant input
    /// fixes them).
    resizable: bool,
    /// Inputs declared without a shape, so not even their rank is known.
    unranked: Vec<usize>,
}

fn case(name: &str, op: &'static str, inputs: Vec<In>) -> Case {
    Case {
        name: name.into(),
        op,
        attrs: vec![],
        inputs,
        outputs: 1,
        loss_outputs: None,
        dtype: DataType::Double,
        opset: 18,
        tract: true,
        resizable: true,
        unranked: vec![],
    }
}

impl Case {
    fn attr(mut self, a: AttributeProto) -> Case {
        self.attrs.push(a);
        self
    }
    fn outputs(mut self, n: usize) -> Case {
        self.outputs = n;
        self
    }
    fn loss_on(mut self, outs: &[usize]) -> Case {
        self.loss_outputs = Some(outs.to_vec());
        self
    }
    fn f32(mut self) -> Case {
        self.dtype = DataType::Float;
        self
    }
    fn fixed_shapes(mut self) -> Case {
        self.resizable = false;
        self
    }
    fn no_tract(mut self) -> Case {
        self.tract = false;
        self
    }
    /// Declares input `k` without a shape (rules must work from `Shape` at run time).
    fn unranked(mut self, k: usize) -> Case {
        self.unranked.push(k);
        self.tract = false;
        self
    }
    fn opset(mut self, v: i64) -> Case {
        self.opset = v;
        self
    }
}

fn i(name: &str, v: i64) -> AttributeProto {
    attr::int(name, v)
}
fn is(name: &str, v: &[i64]) -> AttributeProto {
    attr::ints(name, v)
}

/// The table: every rule, with broadcasting on both sides, keepdims variants,
/// negative axes and symbolic batch dimensions.
fn cases() -> Vec<Case> {
    vec![
        // elementwise, broadcasting on both sides
        case("add_bcast_both", "Add", vec![var(&[3, 1, 4]), var(&[2, 1])]),
        case("add_sym_batch", "Add", vec![var(&[3, 4]).sym(0, "batch"), var(&[4])]),
        case("add_sym_both", "Add", vec![var(&[3, 1, 4]).sym(0, "batch"), var(&[3, 5, 1]).sym(0, "batch")]),
        // 'r' against 4: shape inference cannot tell whether r broadcasts, so the sum runs on shapes read at
        // run time (tract cannot follow a ReduceSum whose axes are computed, hence no_tract)
        case("add_runtime_broadcast", "Add", vec![var(&[1, 3]).sym(0, "r"), var(&[4, 3])]).no_tract(),
        case("mul_runtime_broadcast", "Mul", vec![var(&[2, 1, 3]).sym(1, "r"), var(&[4, 3])]).no_tract(),
        case("sub_bcast", "Sub", vec![var(&[2, 3]), var(&[3, 1, 1])]),
        case("mul_bcast_both", "Mul", vec![var(&[3, 1, 4]), var(&[1, 2, 1])]),
        case("mul_const_scalar", "Mul", vec![var(&[2, 3]), scalar(1.7)]),
        case("mul_same_input", "Mul", vec![var(&[2, 3]), In::Absent]),
        case(
            "mul_sym",
            "Mul",
            vec![var(&[2, 3, 4]).sym(0, "batch").sym(1, "seq"), var(&[2, 3, 1]).sym(0, "batch").sym(1, "seq")],
        ),
        case("div_bcast", "Div", vec![var(&[2, 3]), pos(&[3, 1, 1])]),
        case("div_const_scalar", "Div", vec![var(&[2, 3]), scalar(-0.8)]),
        case("div_denominator_only", "Div", vec![cst(&[2, 3]), pos(&[2, 1])]),
        case("neg", "Neg", vec![var(&[2, 3])]),
        case("pow_2", "Pow", vec![var(&[2, 3]), scalar(2.0)]),
        case("pow_3", "Pow", vec![var(&[2, 3]), scalar(3.0)]),
        case("pow_half", "Pow", vec![pos(&[2, 3]), scalar(0.5)]),
        case("pow_neg", "Pow", vec![pos(&[2, 3]), scalar(-1.5)]),
        case("pow_variable", "Pow", vec![pos(&[2, 3]), var(&[3])]),
        case("sqrt", "Sqrt", vec![pos(&[2, 3])]),
        case("reciprocal", "Reciprocal", vec![pos(&[2, 3])]),
        case("exp", "Exp", vec![var(&[2, 3])]),
        case("log", "Log", vec![pos(&[2, 3])]),
        case("tanh", "Tanh", vec![var(&[2, 3])]),
        case("sigmoid", "Sigmoid", vec![var(&[2, 3]).sym(0, "batch")]),
        case("relu", "Relu", vec![var(&[3, 4])]),
        case("leaky_relu", "LeakyRelu", vec![var(&[3, 4])]).attr(attr::float("alpha", 0.2)),
        case("softplus", "Softplus", vec![var(&[3, 4])]),
        case("erf", "Erf", vec![var(&[3, 4])]).f32(),
        case("gelu_exact", "Gelu", vec![var(&[3, 4])]).f32().opset(20),
        case("gelu_tanh", "Gelu", vec![var(&[3, 4])]).attr(attr::string("approximate", "tanh")).opset(20),
        case("abs", "Abs", vec![var(&[3, 4])]),
        case("sin", "Sin", vec![var(&[3, 4])]),
        case("cos", "Cos", vec![var(&[3, 4])]),
        case(
            "where_bcast",
            "Where",
            vec![In::Bools(vec![2, 1, 3], vec![true, false, true, false, false, true]), var(&[1, 4, 3]), var(&[3])],
        ),
        case(
            "where_guard",
            "Where",
            vec![In::Bools(vec![2, 3], vec![true, false, false, true, false, false]), scalar(0.0), var(&[2, 3])],
        ),
        case("max_bcast", "Max", vec![var(&[3, 1]), var(&[1, 4])]),
        case("max_three", "Max", vec![var(&[2, 3]), var(&[3]), var(&[2, 1])]),
        case("min_bcast", "Min", vec![var(&[3, 1]), var(&[4])]),
        case("sum_three", "Sum", vec![var(&[2, 3]), var(&[3]), var(&[2, 1])]),
        case("mean_two", "Mean", vec![var(&[2, 3]), var(&[3])]).f32(),
        case("clip_const", "Clip", vec![var(&[3, 4]), scalar(-0.5), scalar(0.7)]),
        case(
            "clip_variable_bounds",
            "Clip",
            vec![
                var(&[3, 4]),
                In::Var { dims: vec![], lo: -1.0, hi: -0.3, sym: vec![] },
                In::Var { dims: vec![], lo: 0.3, hi: 1.0, sym: vec![] },
            ],
        ),
        case("cast_f32_to_f64", "Cast", vec![var(&[2, 3])]).attr(i("to", DataType::Double as i64)).f32(),
        case("identity", "Identity", vec![var(&[2, 3])]),
        case("dropout_inference", "Dropout", vec![var(&[2, 3]), scalar(0.3)]),
        // linear algebra
        case("matmul_2d", "MatMul", vec![var(&[3, 4]), var(&[4, 5])]),
        case("matmul_3d_2d", "MatMul", vec![var(&[2, 3, 4]).sym(0, "batch").sym(1, "seq"), var(&[4, 5])]),
        case("matmul_2d_3d", "MatMul", vec![var(&[3, 4]), var(&[2, 4, 5])]),
        case("matmul_4d", "MatMul", vec![var(&[2, 3, 4, 5]).sym(0, "batch"), var(&[2, 3, 5, 2]).sym(0, "batch")]),
        case("matmul_batch_bcast", "MatMul", vec![var(&[2, 1, 3, 4]), var(&[1, 3, 4, 2])]),
        case("matmul_1d_2d", "MatMul", vec![var(&[4]), var(&[4, 3])]),
        case("matmul_3d_1d", "MatMul", vec![var(&[2, 3, 4]), var(&[4])]),
        case("matmul_1d_1d", "MatMul", vec![var(&[4]), var(&[4])]),
        // An activation of unknown rank times a 2-D weight (what a real export leaves
        // where shape inference stops): 3-D and 1-D at run time.
        case("matmul_unranked_3d_2d", "MatMul", vec![var(&[2, 3, 4]), cst(&[4, 5])]).unranked(0),
        case("matmul_unranked_1d_2d", "MatMul", vec![var(&[4]), var(&[4, 3])]).unranked(0),
        case("gemm", "Gemm", vec![var(&[3, 4]), var(&[4, 5]), var(&[5])]),
        case("gemm_transb", "Gemm", vec![var(&[3, 4]).sym(0, "batch"), var(&[5, 4]), var(&[5])]).attr(i("transB", 1)),
        case("gemm_transa", "Gemm", vec![var(&[4, 3]), var(&[4, 5]), var(&[3, 1])]).attr(i("transA", 1)),
        case("gemm_both_alpha_beta", "Gemm", vec![var(&[4, 3]), var(&[5, 4]), var(&[])])
            .attr(i("transA", 1))
            .attr(i("transB", 1))
            .attr(attr::float("alpha", 0.7))
            .attr(attr::float("beta", -1.3)),
        case("einsum_batched", "Einsum", vec![var(&[2, 3, 4]), var(&[2, 4, 5])])
            .attr(attr::string("equation", "bij,bjk->bik")),
        case("einsum_implicit", "Einsum", vec![var(&[3, 4]), var(&[4, 5])]).attr(attr::string("equation", "ij,jk")),
        // shapes
        case("reshape", "Reshape", vec![var(&[2, 3, 4]), ints(&[4, -1])]),
        case("reshape_sym", "Reshape", vec![var(&[2, 6]).sym(0, "batch"), ints(&[0, 2, 3])]),
        case("flatten", "Flatten", vec![var(&[2, 3, 2, 2])]).attr(i("axis", 2)),
        case("squeeze", "Squeeze", vec![var(&[3, 1, 4]), ints(&[1])]),
        case("squeeze_neg_axis", "Squeeze", vec![var(&[3, 4, 1]).sym(0, "batch"), ints(&[-1])]),
        case("squeeze_all", "Squeeze", vec![var(&[1, 3, 1])]),
        case("unsqueeze", "Unsqueeze", vec![var(&[3, 4]), ints(&[0, -1])]),
        case("transpose", "Transpose", vec![var(&[2, 3, 4])]).attr(is("perm", &[2, 0, 1])),
        case("transpose_default", "Transpose", vec![var(&[2, 3, 4])]),
        case("concat", "Concat", vec![var(&[2, 1, 3]), cst(&[2, 2, 3]), var(&[2, 3, 3])]).attr(i("axis", 1)),
        case("concat_neg_axis_sym", "Concat", vec![var(&[2, 3]).sym(1, "a"), var(&[2, 2]).sym(1, "b")])
            .attr(i("axis", -1)),
        case("split", "Split", vec![var(&[2, 5, 3]), ints(&[2, 3])]).attr(i("axis", 1)).outputs(2),
        case("split_num_outputs", "Split", vec![var(&[6, 2])]).attr(i("num_outputs", 3)).outputs(3),
        case("split_unused_output", "Split", vec![var(&[6, 2]).sym(1, "batch")])
            .attr(i("num_outputs", 3))
            .outputs(3)
            .loss_on(&[0, 2]),
        case("slice", "Slice", vec![var(&[4, 5, 6]), ints(&[1, -4]), ints(&[3, 100]), ints(&[0, 2])]),
        case("slice_neg_axis_sym", "Slice", vec![var(&[3, 5]).sym(0, "batch"), ints(&[1]), ints(&[-1]), ints(&[-1])]),
        case("slice_step", "Slice", vec![var(&[6, 4]), ints(&[0]), ints(&[6]), ints(&[0]), ints(&[2])]),
        case("slice_reverse", "Slice", vec![var(&[5, 2]), ints(&[-1]), ints(&[-100]), ints(&[0]), ints(&[-1])]),
        case("slice_sym_axis", "Slice", vec![var(&[5, 3]).sym(0, "seq"), ints(&[1]), ints(&[4]), ints(&[0])]),
        // symbolic dimensions: Pad amounts computed from Shape(X) at run time
        case(
            "slice_sym_neg_start",
            "Slice",
            vec![var(&[5, 4]).sym(0, "seq"), ints(&[-3]), ints(&[i64::MAX]), ints(&[0])],
        ),
        case(
            "slice_sym_two_axes",
            "Slice",
            vec![var(&[4, 6]).sym(0, "a").sym(1, "b"), ints(&[1, 0]), ints(&[-1, 2]), ints(&[0, -1])],
        ),
        case("slice_sym_clamped", "Slice", vec![var(&[3, 5]).sym(1, "seq"), ints(&[-100]), ints(&[100]), ints(&[1])]),
        case("slice_sym_step", "Slice", vec![var(&[6, 4]).sym(0, "n"), ints(&[0]), ints(&[6]), ints(&[0]), ints(&[2])]),
        case("expand", "Expand", vec![var(&[3, 1]), ints(&[2, 3, 4])]),
        case("pad", "Pad", vec![var(&[2, 3]), ints(&[1, 0, 0, 2])]),
        case("tile", "Tile", vec![var(&[2, 3]), ints(&[2, 3])]),
        // gathers (repeated indices test the accumulation of scatter-add)
        case("gather_rows", "Gather", vec![var(&[4, 3]), In::Ints(vec![2, 2], vec![0, 2, 2, -1])]),
        case("gather_axis1", "Gather", vec![var(&[3, 5, 2]), ints(&[4, 1, 4, 0])]).attr(i("axis", 1)),
        case("gather_neg_axis", "Gather", vec![var(&[3, 4]).sym(0, "batch"), In::Ints(vec![2, 2], vec![3, 3, 0, 1])])
            .attr(i("axis", -1)),
        // constant distinct indices: the gradient gathers back by position
        case("gather_distinct_columns", "Gather", vec![var(&[3, 5, 2]), ints(&[4, 1, 0])]).attr(i("axis", 1)),
        case("gather_permutation", "Gather", vec![var(&[2, 4]), ints(&[3, 0, 2, 1])]).attr(i("axis", -1)),
        case("gather_distinct_sym", "Gather", vec![var(&[3, 5]).sym(0, "batch"), ints(&[-1, 2])]).attr(i("axis", 1)),
        case("gather_scalar_index", "Gather", vec![var(&[3, 4, 2]), int_scalar(2)]).attr(i("axis", 1)),
        case("gather_elements", "GatherElements", vec![var(&[3, 4]), In::Ints(vec![3, 2], vec![0, 0, 3, 1, 2, 2])])
            .attr(i("axis", 1)),
        case(
            "gather_elements_axis0",
            "GatherElements",
            vec![var(&[3, 2]), In::Ints(vec![4, 2], vec![0, 2, 1, 1, 2, 0, 0, 0])],
        ),
        case(
            "scatter_elements",
            "ScatterElements",
            vec![var(&[3, 4]), In::Ints(vec![3, 2], vec![0, 2, 3, 1, 1, -4]), var(&[3, 2])],
        )
        .attr(i("axis", 1)),
        case("scatter_nd_rows", "ScatterND", vec![var(&[4, 3]), In::Ints(vec![2, 1], vec![2, 0]), var(&[2, 3])]),
        case("gather_nd", "GatherND", vec![var(&[4, 3, 2]), In::Ints(vec![3, 2], vec![0, 1, 2, 2, 0, 1])]),
        // reductions
        case("reduce_sum_keep", "ReduceSum", vec![var(&[2, 3, 4]), ints(&[1])]),
        case("reduce_sum_drop_neg", "ReduceSum", vec![var(&[2, 3, 4]).sym(0, "batch"), ints(&[-1, 0])])
            .attr(i("keepdims", 0)),
        case("reduce_sum_all", "ReduceSum", vec![var(&[2, 3])]).attr(i("keepdims", 0)),
        case("reduce_sum_noop", "ReduceSum", vec![var(&[2, 3])]).attr(i("noop_with_empty_axes", 1)),
        case("reduce_mean_keep", "ReduceMean", vec![var(&[2, 3, 4]).sym(0, "batch"), ints(&[-1])]),
        case("reduce_mean_drop", "ReduceMean", vec![var(&[2, 3, 4]), ints(&[0, 2])]).attr(i("keepdims", 0)),
        case("reduce_mean_sym_axis", "ReduceMean", vec![var(&[2, 3]).sym(1, "seq"), ints(&[1])]).attr(i("keepdims", 0)),
        case("reduce_max", "ReduceMax", vec![var(&[3, 4]), ints(&[1])]).attr(i("keepdims", 0)),
        case("reduce_min_keep", "ReduceMin", vec![var(&[3, 4]), ints(&[0])]),
        case("reduce_sum_square", "ReduceSumSquare", vec![var(&[3, 4]), ints(&[1])]),
        case("reduce_l1", "ReduceL1", vec![var(&[3, 4]), ints(&[-1])]).attr(i("keepdims", 0)),
        case("reduce_l2", "ReduceL2", vec![var(&[3, 4]), ints(&[1])]),
        case("reduce_log_sum_exp", "ReduceLogSumExp", vec![var(&[3, 4]), ints(&[0])]).attr(i("keepdims", 0)),
        case("cumsum", "CumSum", vec![var(&[3, 4]), int_scalar(1)]),
        case("cumsum_exclusive_reverse", "CumSum", vec![var(&[3, 4]), int_scalar(-2)])
            .attr(i("exclusive", 1))
            .attr(i("reverse", 1)),
        // neural-network ops
        case("softmax", "Softmax", vec![var(&[2, 3, 4]).sym(0, "batch")]),
        case("softmax_axis1", "Softmax", vec![var(&[2, 3, 4])]).attr(i("axis", 1)),
        case("log_softmax", "LogSoftmax", vec![var(&[3, 5])]),
        case("log_softmax_axis0", "LogSoftmax", vec![var(&[3, 5])]).attr(i("axis", 0)),
        case("layer_norm", "LayerNormalization", vec![var(&[2, 3, 4]).sym(0, "batch"), var(&[4]), var(&[4])]),
        case("layer_norm_two_axes", "LayerNormalization", vec![var(&[2, 3, 4]), var(&[3, 4])]).attr(i("axis", 1)),
        case(
            "batch_norm",
            "BatchNormalization",
            vec![var(&[2, 3, 2, 2]), var(&[3]), var(&[3]), cst(&[3]), In::Const { dims: vec![3], lo: 0.5, hi: 2.0 }],
        ),
        case("conv", "Conv", vec![var(&[2, 3, 5, 5]).sym(0, "batch"), var(&[4, 3, 3, 3]), var(&[4])])
            .attr(is("pads", &[1, 1, 1, 1]))
            .f32(),
        case("conv_stride_dilation", "Conv", vec![var(&[1, 2, 7, 6]), var(&[3, 2, 2, 3])])
            .attr(is("strides", &[2, 2]))
            .attr(is("dilations", &[2, 1]))
            .attr(is("pads", &[0, 1, 1, 0]))
            .f32(),
        case("conv_groups", "Conv", vec![var(&[2, 4, 5, 5]), var(&[6, 2, 3, 3])]).attr(i("group", 2)).f32(),
        case("conv_same_upper_1d", "Conv", vec![var(&[2, 2, 7]), var(&[3, 2, 4]), var(&[3])])
            .attr(attr::string("auto_pad", "SAME_UPPER"))
            .attr(is("strides", &[2]))
            .f32(),
        case("max_pool", "MaxPool", vec![var(&[2, 2, 4, 4]).sym(0, "batch")])
            .attr(is("kernel_shape", &[2, 2]))
            .attr(is("strides", &[2, 2])),
        case("max_pool_overlap", "MaxPool", vec![var(&[1, 2, 5, 5])])
            .attr(is("kernel_shape", &[3, 3]))
            .attr(is("pads", &[1, 1, 1, 1])),
        case("global_average_pool", "GlobalAveragePool", vec![var(&[2, 3, 3, 2])]).f32(),
        case(
            "softmax_cross_entropy",
            "SoftmaxCrossEntropyLoss",
            vec![var(&[4, 5]), In::Ints(vec![4], vec![1, 4, -100, 0])],
        )
        .attr(i("ignore_index", -100))
        .no_tract(),
        case(
            "softmax_cross_entropy_weights",
            "SoftmaxCrossEntropyLoss",
            vec![
                var(&[4, 5]).sym(0, "batch"),
                In::Ints(vec![4], vec![1, 4, 3, 0]),
                In::Const { dims: vec![5], lo: 0.5, hi: 2.0 },
            ],
        )
        .no_tract()
        .fixed_shapes(),
        case(
            "softmax_cross_entropy_sum_3d",
            "SoftmaxCrossEntropyLoss",
            vec![var(&[2, 4, 3]), In::Ints(vec![2, 3], vec![0, 3, 1, 2, 2, 0])],
        )
        .attr(attr::string("reduction", "sum"))
        .no_tract(),
        case(
            "softmax_cross_entropy_none",
            "SoftmaxCrossEntropyLoss",
            vec![var(&[3, 4]), In::Ints(vec![3], vec![2, 0, 3])],
        )
        .attr(attr::string("reduction", "none"))
        .no_tract(),
        case(
            "nll_loss",
            "NegativeLogLikelihoodLoss",
            vec![var(&[4, 5]), In::Ints(vec![4], vec![1, 4, 2, 0]), In::Const { dims: vec![5], lo: 0.5, hi: 2.0 }],
        )
        .no_tract(),
    ]
}

fn dims_of(dims: &[usize], sym: &[(usize, &'static str)]) -> Vec<DimSpec> {
    dims.iter()
        .enumerate()
        .map(|(a, &d)| match sym.iter().find(|(ax, _)| *ax == a) {
            Some((_, name)) => DimSpec::Named(name.to_string()),
            None => DimSpec::Fixed(d as i64),
        })
        .collect()
}

/// The forward model of a case (op, then loss = Σ Σ yᵢ²), the feeds, and the names
/// of the differentiated inputs.
/// Sizes symbolic dimensions take in the second run of a case (the first uses the
/// dimensions written in the table).
const RESIZED: &[(&str, usize)] = &[("batch", 1), ("seq", 1), ("a", 1), ("b", 4), ("r", 4)];

fn build(c: &Case, rng: &mut Rng, resized: bool) -> (ModelProto, Vec<(String, HostTensor)>, Vec<String>) {
    let dt = c.dtype;
    let mut inputs = vec![];
    let mut inits = vec![];
    let mut feeds = vec![];
    let mut wrt = vec![];
    let mut names = vec![];
    for (k, input) in c.inputs.iter().enumerate() {
        let name = format!("x{k}");
        match input {
            In::Var { dims, lo, hi, sym } => {
                inputs.push(match c.unranked.contains(&k) {
                    true => make::value_info_unshaped(&name, dt),
                    false => make::value_info(&name, dt, &dims_of(dims, sym)),
                });
                let mut dims = dims.clone();
                for (axis, s) in sym.iter().filter(|_| resized) {
                    dims[*axis] = RESIZED.iter().find(|(n, _)| n == s).map(|(_, v)| *v).unwrap_or(dims[*axis]);
                }
                let n = dims.iter().product();
                feeds.push((name.clone(), float_tensor(dt, &dims, &rng.vec(n, *lo, *hi))));
                wrt.push(name.clone());
            }
            In::Const { dims, lo, hi } => {
                let v = rng.vec(dims.iter().product(), *lo, *hi);
                inits.push(float_init(&name, dt, dims, &v));
            }
            In::Floats(dims, v) => inits.push(float_init(&name, dt, dims, v)),
            In::Ints(dims, v) => {
                inits.push(make::tensor_i64(&name, &dims.iter().map(|&d| d as i64).collect::<Vec<_>>(), v))
            }
            In::Bools(dims, v) => inits.push(make::tensor_raw(
                &name,
                DataType::Bool,
                &dims.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                v.iter().map(|&b| b as u8).collect(),
            )),
            In::Absent => {}
        }
        names.push(if matches!(input, In::Absent) { String::new() } else { name });
    }
    if c.name == "mul_same_input" {
        names[1] = names[0].clone();
    }
    while names.last().is_some_and(String::is_empty) {
        names.pop();
    }
    let outs: Vec<String> = (0..c.outputs).map(|k| format!("y{k}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let out_refs: Vec<&str> = outs.iter().map(String::as_str).collect();
    let mut nodes: Vec<NodeProto> = vec![make::node(c.op, &refs, &out_refs, c.attrs.clone())];
    let used = c.loss_outputs.clone().unwrap_or_else(|| (0..c.outputs).collect());
    let mut terms = vec![];
    for k in used {
        let (sq, s) = (format!("sq{k}"), format!("s{k}"));
        nodes.push(make::node("Mul", &[&outs[k], &outs[k]], &[&sq], vec![]));
        nodes.push(make::node("ReduceSum", &[&sq], &[&s], vec![attr::int("keepdims", 0)]));
        terms.push(s);
    }
    let term_refs: Vec<&str> = terms.iter().map(String::as_str).collect();
    nodes.push(make::node("Sum", &term_refs, &["loss"], vec![]));
    let loss_type = if c.op == "Cast" { DataType::Double } else { dt };
    let graph = neft::onnx::proto::GraphProto {
        name: Some(c.name.clone()),
        node: nodes,
        initializer: inits,
        input: inputs,
        output: vec![make::value_info("loss", loss_type, &[])],
        ..Default::default()
    };
    (make::model(graph, c.opset), feeds, wrt)
}

fn float_init(name: &str, dt: DataType, dims: &[usize], v: &[f64]) -> neft::onnx::proto::TensorProto {
    let d: Vec<i64> = dims.iter().map(|&x| x as i64).collect();
    match dt {
        DataType::Double => make::tensor_f64(name, &d, v),
        _ => make::tensor_f32(name, &d, &v.iter().map(|&x| x as f32).collect::<Vec<_>>()),
    }
}

/// Runs one case; returns (entries checked, backward nodes) or what went wrong.
fn check(c: &Case, seed: u64) -> Result<(usize, usize), String> {
    let mut rng = Rng(seed);
    let (model, feeds, wrt) = build(c, &mut rng, false);
    let graph = Graph::from_proto(model.graph.as_ref().unwrap()).map_err(|e| e.to_string())?;
    let opts = GradOptions { opset: c.opset, ..Default::default() };
    let out = grad(&graph, "loss", &wrt, &opts).map_err(|e| format!("grad: {e}"))?;
    let grad_model = make::model(out.graph.to_proto(), out.opset);
    assert_default_domain(&grad_model);
    if out.opset < 18 {
        return Err(format!("opset {} < 18", out.opset));
    }
    // Shape inference with the symbolic dimensions still symbolic.
    let facts = match c.tract {
        true => neft::runtime::tract::infer(&neft::onnx::Model::new(grad_model.clone(), "."))
            .map_err(|e| format!("tract shape inference of the gradient graph: {e:#}"))?,
        false => HashMap::new(),
    };
    for (x, gname) in out.report.grads.iter().filter(|_| c.tract) {
        let rank = facts.get(gname).and_then(|f| f.shape.as_ref()).map(Vec::len);
        let want = c.inputs[x[1..].parse::<usize>().unwrap()].clone();
        if let In::Var { dims, .. } = want {
            if rank != Some(dims.len()) {
                if std::env::var_os("NEFT_AD_VERBOSE").is_some() {
                    for n in &grad_model.graph.as_ref().unwrap().node {
                        let f: Vec<String> = n.output.iter().map(|o| format!("{o}: {:?}", facts.get(o))).collect();
                        eprintln!("  {} {:?} -> {}", n.op_type(), n.input, f.join("; "));
                    }
                }
                return Err(format!("{gname}: inferred rank {rank:?}, expected {}", dims.len()));
            }
        }
    }
    let mut gsess = try_session(&grad_model, &c.name)?;
    let mut fsess = try_session(&model, &c.name)?;
    let (eps, rtol) = if c.dtype == DataType::Double { (1e-6, 1e-6) } else { (1e-2, 2e-2) };
    let all = |_: &str, a: &[f64]| (0..a.len()).collect::<Vec<_>>();
    let symbolic = c.resizable && c.inputs.iter().any(|i| matches!(i, In::Var { sym, .. } if !sym.is_empty()));
    let mut checked = 0;
    // Symbolic dimensions: the same two graphs again at other sizes (1 included).
    for resized in [false, true].into_iter().filter(|&r| !r || symbolic) {
        let feeds = if resized { build(c, &mut rng, true).1 } else { feeds.clone() };
        let results = run(&mut gsess, &feeds);
        let analytic: HashMap<String, Vec<f64>> =
            wrt.iter().map(|x| (x.clone(), values(&results[&format!("{x}.grad")]))).collect();
        let (n, bad) = finite_differences(&mut fsess, &feeds, "loss", &wrt, &analytic, &all, eps, rtol, 1e-3);
        checked += n;
        if let Some(m) = bad.first() {
            return Err(format!(
                "{}{} of {n} entries differ, first: d loss/d {}[{}] analytic {:.6e} numeric {:.6e}",
                if resized { "resized: " } else { "" },
                bad.len(),
                m.tensor,
                m.index,
                m.analytic,
                m.numeric
            ));
        }
    }
    if std::env::var_os("NEFT_AD_VERBOSE").is_some() {
        eprintln!("{}", out.report);
    }
    Ok((checked, out.report.backward_ops()))
}

#[test]
fn every_rule_matches_finite_differences() {
    let start = std::time::Instant::now();
    let table = cases();
    let mut failures = vec![];
    let mut covered = std::collections::BTreeSet::new();
    let mut total = 0;
    for (k, c) in table.iter().enumerate() {
        match check(c, 1000 + k as u64) {
            Ok((n, nodes)) => {
                total += n;
                covered.insert(c.op);
                eprintln!("ok   {:<32} {n:>4} entries, {nodes:>3} backward nodes", c.name);
            }
            Err(e) => failures.push(format!("{}: {e}", c.name)),
        }
    }
    eprintln!("{} cases, {total} gradient entries, {:.1?}", table.len(), start.elapsed());
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), table.len(), failures.join("\n"));
    let missing: Vec<&str> = neft::autodiff::known_ops().into_iter().filter(|op| !covered.contains(op)).collect();
    assert!(missing.is_empty(), "rules without a finite-difference case: {missing:?}");
}

/// An op on the path without a rule is an error naming the node, the op and the rules.
#[test]
fn missing_rule_names_node_op_and_known_rules() {
    let mut rng = Rng(7);
    let c = case("hardmax", "Hardmax", vec![var(&[2, 3])]);
    let (model, _, wrt) = build(&c, &mut rng, false);
    let mut model = model;
    let g = model.graph.as_mut().unwrap();
    g.node[0].name = Some("the_hardmax".into());
    let graph = Graph::from_proto(g).unwrap();
    let err = grad(&graph, "loss", &wrt, &GradOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AutodiffError::NoRule { .. }), "{msg}");
    assert!(msg.contains("the_hardmax") && msg.contains("Hardmax") && msg.contains("MatMul"), "{msg}");
}

/// An attribute a rule does not handle is an error naming it.
#[test]
fn unsupported_attribute_is_an_error() {
    let mut rng = Rng(8);
    let c = case("gather_nd_batch", "GatherND", vec![var(&[2, 3, 2]), In::Ints(vec![2, 1], vec![0, 2])])
        .attr(i("batch_dims", 1));
    let (model, _, wrt) = build(&c, &mut rng, false);
    let graph = Graph::from_proto(model.graph.as_ref().unwrap()).unwrap();
    let err = grad(&graph, "loss", &wrt, &GradOptions::default()).unwrap_err();
    assert!(matches!(err, AutodiffError::Unsupported { .. }) && err.to_string().contains("batch_dims=1"), "{err}");
}

/// Integer paths are left alone: Shape → Cast → Range feeding a Reshape needs no rule.
#[test]
fn integer_paths_need_no_rules() {
    let mut rng = Rng(9);
    let c = case("argmax_path", "ArgMax", vec![var(&[3, 4])]);
    let (mut model, _, wrt) = build(&c, &mut rng, false);
    let g = model.graph.as_mut().unwrap();
    // loss = Σ x·Cast(ArgMax(x)): ArgMax and Cast lie on an integer path.
    g.node.truncate(1);
    g.node.push(make::node("Cast", &["y0"], &["yf"], vec![attr::int("to", DataType::Double as i64)]));
    g.node.push(make::node("Mul", &["x0", "yf"], &["p"], vec![]));
    g.node.push(make::node("ReduceSum", &["p"], &["loss"], vec![attr::int("keepdims", 0)]));
    let graph = Graph::from_proto(g).unwrap();
    let out = grad(&graph, "loss", &wrt, &GradOptions::default()).unwrap();
    assert_eq!(out.report.differentiated, 2, "{}", out.report);
}
