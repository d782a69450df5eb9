//! Whole graphs through `autodiff::grad`, every weight gradient checked against
//! central finite differences on ONNX Runtime: a 2-layer MLP with cross-entropy, a
//! Llama-style decoder block (all in float64, every entry, relative error ≤ 1e-6 of
//! the gradient's scale), and PyTorch exports (float32, a handful of entries per
//! weight: the largest gradients plus an even spread, error ≤ 3e-2 of the scale plus
//! the resolution of a float32 difference quotient; Llama also converted to float64
//! and checked at 1e-6).

#[path = "autodiff_support/mod.rs"]
mod support;

use ndarray::{ArrayD, IxDyn};
use neft::autodiff::{grad, grad_with_seeds, AutodiffError, GradOptions};
use neft::ir::{attr, Graph};
use neft::onnx::make;
use neft::onnx::proto::tensor_proto::DataType;
use neft::onnx::proto::{GraphProto, ModelProto};
use neft::runtime::ort::HostTensor;
use neft::runtime::tract::Dim;
use support::build::{self, Decoder};
use support::{float_tensor, grad_and_check, pick, run, session, values, Checked, Rng};

fn ids(rng: &mut Rng, shape: &[usize], vocab: u64) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::I64(ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|_| rng.below(vocab) as i64).collect()).unwrap())
}

fn initializer_names(model: &ModelProto, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let g = model.graph.as_ref().unwrap();
    g.initializer
        .iter()
        .filter(|t| {
            matches!(DataType::try_from(t.data_type()), Ok(DataType::Float | DataType::Double))
                && t.dims.iter().product::<i64>() > 1
        })
        .map(|t| t.name().to_string())
        .filter(|n| keep(n))
        .collect()
}

fn assert_close(c: &Checked, what: &str) {
    assert!(
        c.mismatches.is_empty(),
        "{what}: {} of {} entries differ from finite differences, e.g. {:?}",
        c.mismatches.len(),
        c.entries,
        &c.mismatches[..c.mismatches.len().min(5)]
    );
}

const SMALL: Decoder = Decoder { vocab: 11, hidden: 8, heads: 2, ffn: 12, layers: 1, tied: true };

#[test]
fn mlp_with_cross_entropy_every_weight() {
    let mut rng = Rng(1);
    let model = build::mlp(DataType::Double, &mut rng);
    let feeds = vec![
        ("x".to_string(), float_tensor(DataType::Double, &[5, 6], &rng.vec(30, -1.0, 1.0))),
        ("labels".to_string(), ids(&mut rng, &[5], 4)),
    ];
    let wrt: Vec<String> = ["w1", "b1", "w2", "b2", "x"].map(String::from).to_vec();
    let c = grad_and_check(&model, &feeds, "loss", &wrt, &pick(usize::MAX, 0), 1e-6, 1e-6);
    assert_close(&c, "mlp");
    assert_eq!(c.entries, 48 + 8 + 32 + 4 + 30);
    eprintln!("{}", c.report);
}

#[test]
fn decoder_block_every_weight_and_backward_under_2_2x() {
    let mut rng = Rng(2);
    let model = build::decoder(SMALL, DataType::Double, &mut rng);
    let feeds =
        vec![("input_ids".to_string(), ids(&mut rng, &[2, 5], 11)), ("labels".to_string(), ids(&mut rng, &[2, 5], 11))];
    let wrt = initializer_names(&model, |_| true);
    assert_eq!(wrt.len(), 11, "{wrt:?}");
    let c = grad_and_check(&model, &feeds, "loss", &wrt, &pick(usize::MAX, 0), 1e-6, 1e-6);
    assert_close(&c, "decoder");
    let (fw, bw) = (c.report.forward_ops(), c.report.backward_ops());
    eprintln!("{}", c.report);
    // Lean, not minimal: each linear layer's gradients are two Gemms on flattened rows
    // plus two Reshapes (free: no copy), because ONNX Runtime runs one-node Einsums
    // 2x (CPU) to 20x (CUDA) slower; that costs the 2x node-count aim ~10%.
    assert!(bw * 10 < 22 * fw, "backward {bw} ops, forward {fw}: not under 2.2x");
    if std::env::var_os("NEFT_AD_VERBOSE").is_some() {
        for n in c
            .grad_model
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.metadata_props.iter().any(|p| p.value() == "autodiff"))
        {
            eprintln!("  {:<10} {:?} -> {:?}", n.op_type(), n.input, n.output);
        }
    }
    // Gradients of the initializers leave them initializers.
    let g = c.grad_model.graph.as_ref().unwrap();
    assert!(wrt.iter().all(|w| g.initializer.iter().any(|t| t.name() == w)));
    assert!(g.node.iter().filter(|n| n.metadata_props.iter().any(|p| p.value() == "autodiff")).count() == bw);
}

/// Gradients flowing through frozen linear layers (only an early weight is wanted):
/// still exact, and no backward `Shape` reads a frozen layer's input, which would keep
/// that activation alive until the backward pass reaches the layer.
#[test]
fn frozen_linears_pass_gradients_without_holding_their_inputs() {
    let mut rng = Rng(7);
    let model = build::decoder(Decoder { layers: 2, ..SMALL }, DataType::Double, &mut rng);
    let feeds =
        vec![("input_ids".to_string(), ids(&mut rng, &[2, 5], 11)), ("labels".to_string(), ids(&mut rng, &[2, 5], 11))];
    let wrt = vec!["l0.wq".to_string()];
    let c = grad_and_check(&model, &feeds, "loss", &wrt, &pick(usize::MAX, 0), 1e-6, 1e-6);
    assert_close(&c, "l0.wq through frozen layers");
    let g = c.grad_model.graph.as_ref().unwrap();
    let autodiff = |n: &neft::onnx::proto::NodeProto| n.metadata_props.iter().any(|p| p.value() == "autodiff");
    let frozen_inputs: Vec<&str> = g
        .node
        .iter()
        .filter(|n| !autodiff(n) && n.op_type() == "MatMul")
        .filter(|n| g.initializer.iter().any(|t| t.name() == n.input[1] && !wrt.contains(&n.input[1])))
        .map(|n| n.input[0].as_str())
        .collect();
    assert!(frozen_inputs.len() >= 7, "{frozen_inputs:?}");
    let held: Vec<&str> = g
        .node
        .iter()
        .filter(|n| autodiff(n) && n.op_type() == "Shape" && frozen_inputs.contains(&n.input[0].as_str()))
        .map(|n| n.input[0].as_str())
        .collect();
    assert!(held.is_empty(), "backward Shape nodes read the inputs of frozen linears: {held:?}");
}

/// The decoder reads its embedding twice (input Gather, output projection): its
/// gradient is the sum of what an untied copy gets from each use.
#[test]
fn tied_embedding_gradients_are_summed() {
    let mut rng = Rng(3);
    let tied = build::decoder(SMALL, DataType::Double, &mut rng);
    let mut rng = Rng(3);
    let mut untied = build::decoder(Decoder { tied: false, ..SMALL }, DataType::Double, &mut rng);
    // The untied model draws `embed_out` last; give it the embedding's values.
    let g = untied.graph.as_mut().unwrap();
    let emb = g.initializer.iter().find(|t| t.name() == "embed").unwrap().clone();
    let out = g.initializer.iter_mut().find(|t| t.name() == "embed_out").unwrap();
    out.raw_data = emb.raw_data.clone();
    let mut rng = Rng(4);
    let feeds =
        vec![("input_ids".to_string(), ids(&mut rng, &[2, 4], 11)), ("labels".to_string(), ids(&mut rng, &[2, 4], 11))];
    let run_grad = |m: &ModelProto, wrt: &[&str]| {
        let graph = Graph::from_proto(m.graph.as_ref().unwrap()).unwrap();
        let wrt: Vec<String> = wrt.iter().map(|s| s.to_string()).collect();
        let out = grad(&graph, "loss", &wrt, &GradOptions::default()).unwrap();
        let mut sess = session(&make::model(out.graph.to_proto(), out.opset), "tied");
        let r = run(&mut sess, &feeds);
        wrt.iter().map(|w| values(&r[&format!("{w}.grad")])).collect::<Vec<_>>()
    };
    let t = run_grad(&tied, &["embed"]);
    let u = run_grad(&untied, &["embed", "embed_out"]);
    let (input_part, output_part) = (&u[0], &u[1]);
    assert!(input_part.iter().any(|v| v.abs() > 1e-3) && output_part.iter().any(|v| v.abs() > 1e-3));
    for j in 0..t[0].len() {
        let sum = input_part[j] + output_part[j];
        assert!(
            (t[0][j] - sum).abs() <= 1e-12 * (1.0 + sum.abs()),
            "entry {j}: tied {} vs {} + {}",
            t[0][j],
            input_part[j],
            output_part[j]
        );
    }
}

/// The gradient graph keeps batch and sequence symbolic: ORT runs it at several
/// sizes, and tract infers the gradients' shapes with `batch`/`seq` left symbolic.
#[test]
fn decoder_gradient_graph_has_dynamic_batch_and_seq() {
    let mut rng = Rng(5);
    let model = build::decoder(Decoder { layers: 2, ..SMALL }, DataType::Float, &mut rng);
    let graph = Graph::from_proto(model.graph.as_ref().unwrap()).unwrap();
    let wrt = initializer_names(&model, |_| true);
    let out = grad(&graph, "loss", &wrt, &GradOptions::default()).unwrap();
    assert!(out.report.inference_warning.is_none(), "{:?}", out.report.inference_warning);
    let gm = make::model(out.graph.to_proto(), out.opset);
    let facts = neft::runtime::tract::infer(&neft::onnx::Model::new(gm.clone(), ".")).unwrap();
    for w in &wrt {
        let want: Vec<Dim> = model
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .find(|t| t.name() == w)
            .unwrap()
            .dims
            .iter()
            .map(|&d| Dim::Known(d))
            .collect();
        assert_eq!(facts[&format!("{w}.grad")].shape.as_ref(), Some(&want), "{w}.grad");
    }
    let symbolic =
        gm.graph.as_ref().unwrap().node.iter().flat_map(|n| &n.output).filter_map(|o| facts.get(o)?.shape.as_ref());
    let with_seq = symbolic
        .filter(|s| s.contains(&Dim::Symbolic("seq".into())) && s.contains(&Dim::Symbolic("batch".into())))
        .count();
    assert!(with_seq > 20, "only {with_seq} values keep [batch, seq] symbolic");
    let mut sess = session(&gm, "decoder gradient graph");
    for (b, s) in [(1, 1), (2, 5), (3, 7)] {
        let feeds = vec![
            ("input_ids".to_string(), ids(&mut rng, &[b, s], 11)),
            ("labels".to_string(), ids(&mut rng, &[b, s], 11)),
        ];
        let r = run(&mut sess, &feeds);
        assert!(values(&r["loss"])[0].is_finite());
        assert!(wrt.iter().all(|w| values(&r[&format!("{w}.grad")]).iter().all(|v| v.is_finite())));
    }
}

fn fixture(name: &str) -> ModelProto {
    neft::onnx::load(format!("{}/models/fixtures/{name}.onnx", env!("CARGO_MANIFEST_DIR"))).unwrap().proto
}

/// PyTorch's Llama export with a cross-entropy appended: gradients of embedding, norm,
/// attention and MLP weights of both layers.
#[test]
fn tiny_llama_export_weights() {
    let model = build::append_cross_entropy(&fixture("tiny_llama"), "logits", &["batch", "seq"]);
    let mut rng = Rng(6);
    let feeds = vec![
        ("input_ids".to_string(), ids(&mut rng, &[2, 6], 128)),
        ("labels".to_string(), ids(&mut rng, &[2, 6], 128)),
    ];
    let wrt: Vec<String> = [
        "m.lm_head.weight",
        "m.model.layers.0.input_layernorm.weight",
        "val_109",
        "val_116",
        "val_123",
        "val_237",
        "val_242",
        "val_244",
        "val_245",
        "m.model.layers.1.post_attention_layernorm.weight",
        "val_264",
        "val_381",
        "m.model.norm.weight",
        "val_386",
    ]
    .map(String::from)
    .to_vec();
    let c = grad_and_check(&model, &feeds, "loss", &wrt, &pick(0, 4), 1e-2, 3e-2);
    eprintln!("{}", c.report);
    assert_close(&c, "tiny_llama");
    let gm = &c.grad_model;
    let facts = neft::runtime::tract::infer(&neft::onnx::Model::new(gm.clone(), ".")).unwrap();
    assert_eq!(facts["val_109.grad"].shape, Some(vec![Dim::Known(32), Dim::Known(32)]));
}

/// The same export widened to float64: every entry of the norms and a spread of the
/// large matrices, at full precision.
#[test]
fn tiny_llama_export_in_float64() {
    let model = support::to_f64(&build::append_cross_entropy(&fixture("tiny_llama"), "logits", &["batch", "seq"]));
    let mut rng = Rng(16);
    let feeds = vec![
        ("input_ids".to_string(), ids(&mut rng, &[2, 5], 128)),
        ("labels".to_string(), ids(&mut rng, &[2, 5], 128)),
    ];
    let wrt = initializer_names(&model, |n| n != "m.model.rotary_emb.inv_freq");
    assert_eq!(wrt.len(), 21, "{wrt:?}");
    let c = grad_and_check(&model, &feeds, "loss", &wrt, &pick(32, 12), 1e-6, 1e-6);
    assert_close(&c, "tiny_llama (float64)");
    // Grouped-query attention repeats K and V heads (Expand, then Reshape); the
    // backward products read the unrepeated heads, never the repeated tensors. (This
    // export reshapes repeated K once more before its product; that Reshape's own
    // gradient still reads `Shape` of it.)
    let g = c.grad_model.graph.as_ref().unwrap();
    let op_of = |name: &str| g.node.iter().find(|n| n.output.iter().any(|o| o == name)).map(|n| n.op_type());
    let repeated: Vec<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type() == "Reshape" && op_of(&n.input[0]) == Some("Expand"))
        .map(|n| n.output[0].as_str())
        .collect();
    assert_eq!(repeated.len(), 4, "K and V of two layers: {repeated:?}");
    let autodiff = |n: &neft::onnx::proto::NodeProto| n.metadata_props.iter().any(|p| p.value() == "autodiff");
    let readers: Vec<(&str, &str)> = g
        .node
        .iter()
        .filter(|n| autodiff(n) && n.op_type() != "Shape")
        .flat_map(|n| n.input.iter().filter(|i| repeated.contains(&i.as_str())).map(move |i| (n.op_type(), i.as_str())))
        .collect();
    assert!(readers.is_empty(), "the backward reads repeated heads: {readers:?}");
}

/// PyTorch's convnet export (Conv, Relu, MaxPool, Reshape, Gemm) with a cross-entropy.
#[test]
fn convnet_export_weights() {
    let model = build::append_cross_entropy(&fixture("convnet"), "logits", &["batch"]);
    let mut rng = Rng(7);
    let feeds = vec![
        ("x".to_string(), float_tensor(DataType::Float, &[2, 3, 16, 16], &rng.vec(2 * 3 * 256, -1.0, 1.0))),
        ("labels".to_string(), ids(&mut rng, &[2], 10)),
    ];
    let wrt: Vec<String> =
        ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"].map(String::from).to_vec();
    // Small steps: ReLU and max-pool kinks make larger ones unreliable.
    let c = grad_and_check(&model, &feeds, "loss", &wrt, &pick(16, 5), 1e-3, 3e-2);
    eprintln!("{}", c.report);
    assert_close(&c, "convnet");
}

/// PyTorch's MLP export ends in SoftmaxCrossEntropyLoss (mean, ignore_index -100).
#[test]
fn mlp_loss_export_softmax_cross_entropy() {
    let model = fixture("mlp_loss");
    let mut rng = Rng(8);
    let mut target = ids(&mut rng, &[4], 8);
    if let HostTensor::I64(t) = &mut target {
        t[[1]] = -100;
    }
    let feeds = vec![
        ("x".to_string(), float_tensor(DataType::Float, &[4, 16], &rng.vec(64, -1.0, 1.0))),
        ("target".to_string(), target),
    ];
    let wrt: Vec<String> = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"].map(String::from).to_vec();
    let c = grad_and_check(&model, &feeds, "loss", &wrt, &pick(8, 5), 1e-2, 3e-2);
    eprintln!("{}", c.report);
    assert_close(&c, "mlp_loss");
}

/// PyTorch's Bert export (LayerNormalization, exact GELU via Erf, masks): gradients
/// of a query projection and a LayerNorm for loss = mean(hidden²).
#[test]
fn tiny_bert_export_weights() {
    let mut model = fixture("tiny_bert");
    let mut rng = Rng(9);
    let g = model.graph.as_mut().unwrap();
    // loss = mean(hidden · r) for a fixed random r (mean(hidden²) is nearly constant after LayerNorm).
    let r: Vec<f32> = rng.vec(32, -1.0, 1.0).iter().map(|&v| v as f32).collect();
    g.initializer.push(make::tensor_f32("loss.r", &[32], &r));
    g.node.push(make::node("Mul", &["last_hidden_state", "loss.r"], &["loss.p"], vec![]));
    g.node.push(make::node("ReduceMean", &["loss.p"], &["loss"], vec![attr::int("keepdims", 0)]));
    g.output = vec![make::value_info("loss", DataType::Float, &[])];
    let mut mask = vec![1i64; 10];
    mask[8..].fill(0);
    let feeds = vec![
        ("input_ids".to_string(), ids(&mut rng, &[2, 5], 128)),
        ("attention_mask".to_string(), HostTensor::I64(ArrayD::from_shape_vec(IxDyn(&[2, 5]), mask).unwrap())),
    ];
    let wrt: Vec<String> = [
        "val_57",
        "val_123",
        "m.encoder.layer.0.attention.output.LayerNorm.weight",
        "m.encoder.layer.1.output.LayerNorm.bias",
        "m.embeddings.word_embeddings.weight",
    ]
    .map(String::from)
    .to_vec();
    let c = grad_and_check(&model, &feeds, "loss", &wrt, &pick(0, 4), 1e-2, 3e-2);
    eprintln!("{}", c.report);
    assert_close(&c, "tiny_bert");
}

/// Seeds instead of a scalar loss: d(Σ y·s)/dx computed both ways agrees.
#[test]
fn seeded_gradients_match_the_loss_gradient() {
    let mut rng = Rng(10);
    let model = build::mlp(DataType::Double, &mut rng);
    let mut graph = Graph::from_proto(model.graph.as_ref().unwrap()).unwrap();
    // Seed on the logits: dL/dlogits fed as a new input.
    let logits = graph
        .ops_in_order()
        .iter()
        .map(|&i| graph.op(i).unwrap().clone())
        .find(|n| n.op_type() == "Add")
        .unwrap()
        .output[0]
        .clone();
    graph.add_input(make::value_info("dlogits", DataType::Double, &["batch".into(), 4.into()])).unwrap();
    let wrt = vec!["w1".to_string(), "b2".to_string()];
    let seeded =
        grad_with_seeds(&graph, &[(logits.clone(), "dlogits".to_string())], &wrt, &GradOptions::default()).unwrap();
    // The same as the gradient of Σ logits·dlogits.
    let mut g2 = graph.clone();
    let p = g2.add1("Mul", &[&logits, "dlogits"], vec![], "p").unwrap();
    let l = g2.add1("ReduceSum", &[&p], vec![attr::int("keepdims", 0)], "l").unwrap();
    let direct = grad(&g2, &l, &wrt, &GradOptions::default()).unwrap();
    let feeds = vec![
        ("x".to_string(), float_tensor(DataType::Double, &[3, 6], &rng.vec(18, -1.0, 1.0))),
        ("labels".to_string(), ids(&mut rng, &[3], 4)),
        ("dlogits".to_string(), float_tensor(DataType::Double, &[3, 4], &rng.vec(12, -1.0, 1.0))),
    ];
    let a = run(&mut session(&make::model(seeded.graph.to_proto(), seeded.opset), "seeded"), &feeds);
    let b = run(&mut session(&make::model(direct.graph.to_proto(), direct.opset), "direct"), &feeds);
    for w in &wrt {
        let (x, y) = (values(&a[&format!("{w}.grad")]), values(&b[&format!("{w}.grad")]));
        assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() < 1e-12), "{w}: {x:?} vs {y:?}");
    }
}

/// A model at opset 13 with `ReduceMean(axes=[..])` as an attribute is raised to 18
/// (the attribute becomes an input); opset 11 is refused with a clear error.
#[test]
fn opset_is_raised_when_safe() {
    let mut b = build::B::new(DataType::Double);
    let w = b.floats("w", &[3], &[0.5, -1.0, 2.0]);
    let y = b.node("Mul", &["x", &w], vec![]);
    b.node("ReduceMean", &[&y], vec![attr::ints("axes", &[1]), attr::int("keepdims", 0)]);
    b.nodes.last_mut().unwrap().output[0] = "m".into();
    b.node("ReduceSum", &["m"], vec![attr::int("keepdims", 0)]);
    b.nodes.last_mut().unwrap().output[0] = "loss".into();
    let inputs = vec![make::value_info("x", DataType::Double, &["batch".into(), 3.into()])];
    let model = b.model(inputs, vec![make::value_info("loss", DataType::Double, &[])], 13);
    let graph = Graph::from_proto(model.graph.as_ref().unwrap()).unwrap();
    let out = grad(&graph, "loss", &["w".to_string()], &GradOptions { opset: 13, ..Default::default() }).unwrap();
    assert_eq!(out.opset, 18);
    let gm = make::model(out.graph.to_proto(), out.opset);
    let r = run(
        &mut session(&gm, "raised"),
        &[("x".to_string(), float_tensor(DataType::Double, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))],
    );
    // loss = Σ_b mean_j x_bj w_j → d/dw_j = Σ_b x_bj / 3
    let got = values(&r["w.grad"]);
    assert!(got.iter().zip([5.0 / 3.0, 7.0 / 3.0, 3.0]).all(|(a, b)| (a - b).abs() < 1e-12), "{got:?}");
    let err = grad(&graph, "loss", &["w".to_string()], &GradOptions { opset: 11, ..Default::default() }).unwrap_err();
    assert!(matches!(err, AutodiffError::Opset { .. }) && err.to_string().contains("11"), "{err}");
}

/// The NLL shape, `GatherElements(LogSoftmax(x), idx)`, takes the sparse LogSoftmax
/// gradient (a scatter onto −exp(y)·ΣdY, no zero tensor of x's size): every entry
/// against finite differences, along either axis, with the gathered indices covering
/// only part of x's other axis, repeated indices, and a weighted sum as the loss.
#[test]
fn gathered_log_softmax_gradient_matches_finite_differences() {
    for (axis, idx_dims, idx) in [(1i64, [2usize, 2], vec![4i64, 0, 1, 1]), (0, [2, 3], vec![2, 0, 1, 0, 0, 2])] {
        let mut rng = Rng(20 + axis as u64);
        let n = idx_dims[0] * idx_dims[1];
        let dims = [idx_dims[0] as i64, idx_dims[1] as i64];
        let graph = GraphProto {
            node: vec![
                make::node("LogSoftmax", &["x"], &["lp"], vec![attr::int("axis", axis)]),
                make::node("GatherElements", &["lp", "idx"], &["picked"], vec![attr::int("axis", axis)]),
                make::node("Mul", &["picked", "w"], &["weighted"], vec![]),
                make::node("ReduceSum", &["weighted"], &["loss"], vec![attr::int("keepdims", 0)]),
            ],
            initializer: vec![
                make::tensor_i64("idx", &dims, &idx),
                make::tensor_f64("w", &dims, &rng.vec(n, -1.0, 1.0)),
            ],
            input: vec![make::value_info("x", DataType::Double, &[3.into(), 5.into()])],
            output: vec![make::value_info("loss", DataType::Double, &[])],
            ..Default::default()
        };
        let model = make::model(graph, 18);
        let loss = "loss";
        let feeds = vec![("x".to_string(), float_tensor(DataType::Double, &[3, 5], &rng.vec(15, -2.0, 2.0)))];
        let c = grad_and_check(&model, &feeds, &loss, &["x".to_string()], &pick(usize::MAX, 0), 1e-6, 1e-6);
        assert_close(&c, &format!("axis {axis}"));
        assert_eq!(c.entries, 15);
        let grad_graph = c.grad_model.graph.as_ref().unwrap();
        let subs = grad_graph.node.iter().filter(|n| n.op_type() == "Sub").count();
        assert_eq!(subs, 0, "axis {axis}: the dense LogSoftmax gradient was emitted");
    }
}

/// SiLU, `X·Sigmoid(X)`, either operand order, the sigmoid also read elsewhere: its
/// gradient matches finite differences and reads the sigmoid and the product, never
/// `X` (which the backward pass then need not hold).
#[test]
fn silu_gradient_matches_finite_differences_without_reading_its_input() {
    for swap in [false, true] {
        let mut rng = Rng(30 + swap as u64);
        let silu_inputs = if swap { ["s", "x"] } else { ["x", "s"] };
        let graph = GraphProto {
            node: vec![
                make::node("Mul", &["a", "w"], &["x"], vec![]),
                make::node("Sigmoid", &["x"], &["s"], vec![]),
                make::node("Mul", &silu_inputs, &["y"], vec![]),
                make::node("Mul", &["y", "u"], &["m"], vec![]),
                make::node("Add", &["m", "s"], &["z"], vec![]),
                make::node("ReduceSum", &["z"], &["loss"], vec![attr::int("keepdims", 0)]),
            ],
            initializer: vec![
                make::tensor_f64("w", &[3, 4], &rng.vec(12, -2.0, 2.0)),
                make::tensor_f64("u", &[3, 4], &rng.vec(12, -1.0, 1.0)),
            ],
            input: vec![make::value_info("a", DataType::Double, &[3.into(), 4.into()])],
            output: vec![make::value_info("loss", DataType::Double, &[])],
            ..Default::default()
        };
        let model = make::model(graph, 18);
        let feeds = vec![("a".to_string(), float_tensor(DataType::Double, &[3, 4], &rng.vec(12, -2.0, 2.0)))];
        let c = grad_and_check(&model, &feeds, "loss", &["w".to_string()], &pick(usize::MAX, 0), 1e-6, 1e-6);
        assert_close(&c, &format!("silu (swapped: {swap})"));
        assert_eq!(c.entries, 12);
        let g = c.grad_model.graph.as_ref().unwrap();
        let readers: Vec<&str> = g
            .node
            .iter()
            .filter(|n| n.metadata_props.iter().any(|p| p.value() == "autodiff") && n.input.iter().any(|i| i == "x"))
            .map(|n| n.op_type())
            .collect();
        assert!(readers.is_empty(), "swapped: {swap}: the backward reads X in {readers:?}");
    }
}
