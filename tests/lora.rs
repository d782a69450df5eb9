//! `neft compile --mode lora` on the tiny PyTorch Llama: PEFT's parameter count, the
//! base model at step 0, a loss that falls, frozen weights that stay frozen, and the
//! first SGD step on `B` moving the loss as its gradient says.

mod train_support;

use neft::artifact::{Plan, State, StateTensor};
use neft::runtime::ort::{HostTensor, SessionOptions};
use std::path::{Path, PathBuf};
use train_support::*;

fn opts() -> SessionOptions {
    SessionOptions { threads: Some(1), ..Default::default() }
}

/// Compiles the tiny Llama in LoRA mode into `dir/out`: no --data, no --neurons.
fn compile_lora(dir: &Path, out: &str, flags: &[&str]) -> PathBuf {
    let model = llama_path();
    let mut args = vec!["compile", model.to_str().unwrap(), "-o", out, "--mode", "lora"];
    args.extend_from_slice(flags);
    neft_ok(&args, dir);
    dir.join(out)
}

fn f32s<'a>(state: &'a State, name: &str) -> &'a [f32] {
    match &state.tensors[name] {
        StateTensor::F32 { data, .. } => data,
        _ => panic!("{name} is not FLOAT"),
    }
}

/// PEFT's count: r·(in + out) per adapted layer, `in`/`out` read off the model's own
/// MatMul weights `[in, out]`. The tiny Llama's gated MLP is 32 → 64 → 32 in 2 blocks:
/// 2 × 3 × r × (32 + 64) = 576·r.
#[test]
fn the_trainable_parameter_count_is_rank_times_in_plus_out_per_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = neft::onnx::load(llama_path()).unwrap();
    let graph = neft::ir::Graph::from_proto(model.graph()).unwrap();
    let layers = neft::analyze::find_layers(&graph);
    for (targets, rank) in [("mlp", 3usize), ("attn", 2), ("all", 5)] {
        let art = compile_lora(dir, targets, &["--rank", &rank.to_string(), "--targets", targets]);
        let plan = Plan::load(&art.join("plan.json")).unwrap();
        let adapted: Vec<&neft::analyze::Layer> =
            layers.iter().filter(|l| plan.params.iter().any(|p| p.source == l.weight)).collect();
        let want: u64 = adapted.iter().map(|l| rank as u64 * (l.shape[0] + l.shape[1]) as u64).sum();
        assert_eq!(plan.counts.trainable_params, want, "--targets {targets} --rank {rank}");
        assert_eq!(plan.params.len(), 2 * adapted.len());
        assert_eq!(plan.mode, "lora");
        assert_eq!(plan.lora.map(|l| (l.rank, l.alpha)), Some((rank, rank as f32)), "alpha defaults to the rank");
        if targets == "mlp" {
            assert_eq!(want, 576 * rank as u64);
            assert!(adapted.iter().all(|l| l.role.contains("mlp.")));
        }
    }
}

/// A neurons file names the layers to adapt (its rows are ignored); a Conv kernel is
/// refused by name, and --rank outside --mode lora or --mode lora without it too.
#[test]
fn a_neurons_file_names_the_layers_and_conv_kernels_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_neurons(&dir.join("n.json"), &[("val_244", 1, vec![3]), ("val_381", 0, vec![1, 2])]);
    let art = compile_lora(dir, "art", &["--rank", "2", "--neurons", "n.json"]);
    let plan = Plan::load(&art.join("plan.json")).unwrap();
    let names: Vec<&str> = plan.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["val_244.lora_A", "val_244.lora_B", "val_381.lora_A", "val_381.lora_B"]);
    assert_eq!(plan.counts.trainable_params, 2 * 2 * (32 + 64));

    let conv = repo("models/fixtures/convnet.onnx");
    let conv = conv.to_str().unwrap();
    let o = neft(&["compile", conv, "-o", "c", "--mode", "lora", "--rank", "2", "--targets", "all"], dir);
    assert!(
        !o.status.success() && stderr(&o).contains("conv1.weight") && stderr(&o).contains("Conv"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.join("c").exists(), "a refused compile leaves nothing");
    let model = llama_path();
    let model = model.to_str().unwrap();
    let o = neft(&["compile", model, "-o", "c", "--mode", "lora"], dir);
    assert!(!o.status.success() && stderr(&o).contains("--rank"), "{}", stderr(&o));
    let o = neft(&["compile", model, "-o", "c", "--rank", "4", "--neurons", "n.json"], dir);
    assert!(!o.status.success() && stderr(&o).contains("--mode lora"), "{}", stderr(&o));
}

/// PEFT's r = 25 on SmolLM2-135M's gate/up/down: 30 × 25 × (576 + 1536) × 3 = 4,752,000.
/// Built here at SmolLM2's widths (hidden 576, MLP 1536, 9 heads, 3 KV heads) with two
/// of its 30 blocks and a small vocabulary: 25 × 2112 × 3 = 158,400 per block.
#[test]
fn rank_25_on_smollm2_s_mlp_widths_gives_peft_s_count_per_block() {
    use neft::models::llama::{build_llama, LlamaConfig, RandomWeights};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = LlamaConfig {
        vocab_size: 64,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 2,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        rope_theta: 100000.0,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
        pad_token_id: None,
        max_position_embeddings: None,
    };
    let model = build_llama(&cfg, &mut RandomWeights::new(1), &dir.join("smol")).unwrap();
    let model = model.to_str().unwrap();
    neft_ok(&["compile", model, "-o", "art", "--mode", "lora", "--rank", "25", "--targets", "mlp"], dir);
    let plan = Plan::load(&dir.join("art/plan.json")).unwrap();
    let per_block = 25 * (576 + 1536) * 3;
    assert_eq!(per_block, 158_400);
    assert_eq!(plan.counts.trainable_params, 2 * per_block);
    assert_eq!(30 * per_block, 4_752_000);
}

/// Before the first step B is zero: the eval graph computes the base model's logits.
/// Eight AdamW steps lower the loss; only A, B and their moments change.
#[test]
fn lora_starts_at_the_base_model_and_eight_steps_lower_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_lines(&dir.join("train.jsonl"), &pattern_lines(32, 16, 8, 1));
    write_lines(&dir.join("eval.jsonl"), &pattern_lines(8, 16, 8, 2));
    let art = compile_lora(dir, "art", &["--rank", "4", "--alpha", "8", "--targets", "mlp", "--lr", "1e-2"]);
    let plan = Plan::load(&art.join("plan.json")).unwrap();
    assert_eq!(plan.counts.trainable_params, 4 * 576);
    // `neft inspect` shows the adapters as a pass and each factor with its shape.
    let shown = stdout(&neft_ok(&["inspect", "art"], dir));
    for want in ["6 adapted by LoRA", "val_244.lora_A", "32×4", "lora "] {
        assert!(shown.contains(want), "inspect should show {want:?}:\n{shown}");
    }
    let json: serde_json::Value = serde_json::from_str(&stdout(&neft_ok(&["inspect", "art", "--json"], dir))).unwrap();
    let added = &json["passes"]["lora"];
    assert_eq!((added["MatMul"].as_u64(), added["Mul"].as_u64(), added["Add"].as_u64()), (Some(12), Some(6), Some(6)));

    let initial = load_state(&art.join("state.safetensors"));
    let data = random_lm_batch(7, 2, 12);
    let base = run(&llama_path(), &data[..1], "logits");
    let step0 = eval_output(&art, &initial, &data, "logits");
    let worst = base.iter().zip(&step0).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-6, "step-0 logits differ from the base model's by {worst}");
    assert!(base == step0, "X·W + (X·A)·0 is X·W bit for bit");

    let o = neft_ok(
        &["train", "art", "--data", "train.jsonl", "--eval", "eval.jsonl", "--steps", "8", "--batch", "4", "--json"],
        dir,
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let log = metrics(&art);
    let first = log[0]["loss"].as_f64().unwrap();
    let last = log[7]["loss"].as_f64().unwrap();
    assert!(last < first - 0.05, "training loss {first} -> {last}");
    let eval_start = summary["eval_loss_start"].as_f64().unwrap();
    let eval_end = summary["eval_loss"].as_f64().unwrap();
    eprintln!("LoRA r=4 on the MLP: train loss {first:.4} -> {last:.4}, eval loss {eval_start:.4} -> {eval_end:.4}");
    let trained = load_state(&art.join("checkpoint.safetensors"));
    assert!(eval_end < eval_start - 0.05, "eval loss {eval_start} -> {eval_end}");

    // Only the factors (and their moments) are state; every B moved off zero, and the
    // frozen weights stay initializers of both graphs, never outputs.
    for p in &plan.params {
        assert!(p.name.ends_with(".lora_A") || p.name.ends_with(".lora_B"), "{}", p.name);
        let (before, after) = (f32s(&initial, &p.name), f32s(&trained, &p.name));
        assert!(before != after, "{} did not train", p.name);
    }
    assert!(trained.tensors.keys().all(|k| k == "step" || k.contains(".lora_")), "{:?}", trained.tensors.keys());
    let train_step = neft::onnx::load(art.join("train_step.onnx")).unwrap();
    let g = train_step.graph();
    for p in &plan.params {
        assert!(g.initializer.iter().any(|t| t.name() == p.source), "'{}' is a frozen initializer", p.source);
        assert!(g.output.iter().all(|o| !o.name().starts_with(&format!("{}.new", p.source))));
    }
}

/// With B = 0 the gradient of A is exactly zero, so one SGD step moves only B, by
/// −η·∂L/∂B; to first order the loss then falls by η‖∂L/∂B‖², the step's squared
/// gradient norm. Checked with η chosen so that the fall is about 1e-3.
#[test]
fn one_sgd_step_on_b_from_zero_lowers_the_loss_by_eta_times_the_squared_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let art = compile_lora(dir, "art", &["--rank", "4", "--alpha", "16", "--optimizer", "sgd", "--targets", "all"]);
    let batch = random_lm_batch(11, 2, 12);
    let probe = neft::train::TrainSession::open(&art, &opts()).unwrap().step(&batch, 1.0).unwrap();
    let g2 = (probe.grad_norm as f64).powi(2);
    assert!(g2 > 0.0);
    let eta = 1e-3 / g2;

    let mut s = neft::train::TrainSession::open(&art, &opts()).unwrap();
    let a_before: Vec<(String, Vec<f32>)> = s
        .plan
        .params
        .iter()
        .filter(|p| p.name.ends_with("lora_A"))
        .map(|p| (p.name.clone(), f32s(&s.state, &p.name).to_vec()))
        .collect();
    let out = s.step(&batch, eta as f32).unwrap();
    let after = s.eval(&batch).unwrap() as f64;
    for (name, before) in &a_before {
        assert!(f32s(&s.state, name) == before.as_slice(), "{name} moved although ∂L/∂A = 0 at B = 0");
    }
    let fall = out.loss as f64 - after;
    let predicted = eta * g2;
    eprintln!("one SGD step on B: loss fell by {fall:.6e}, η‖g‖² = {predicted:.6e}, ratio {:.4}", fall / predicted);
    assert!((fall / predicted - 1.0).abs() < 0.01, "loss fell by {fall}, first order predicts {predicted}");
}

/// Once B is off zero, A has a gradient too. The train step's gradients of A and of B
/// (read off an SGD step: ΔP = −lr·∂L/∂P) each predict, to first order, how far the
/// eval loss falls when only that factor moves by −ε·∂L/∂P: by ε‖∂L/∂P‖². A finite
/// difference per factor, independent of the other.
#[test]
fn after_b_moves_the_gradients_of_a_and_b_match_finite_differences_of_the_loss() {
    use neft::train::TrainSession;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let art = compile_lora(dir, "art", &["--rank", "4", "--alpha", "16", "--optimizer", "sgd", "--targets", "all"]);
    let batch = random_lm_batch(11, 2, 12);
    let mut s = TrainSession::open(&art, &opts()).unwrap();
    for _ in 0..3 {
        // Steps that lower the loss by about 0.1 each move B well off zero.
        let g = s.step(&batch, 0.0).unwrap().grad_norm as f64;
        s.step(&batch, (0.1 / (g * g)) as f32).unwrap();
    }
    let (plan, moved) = (s.plan.clone(), s.state.clone());
    let reopen = |state: &State| TrainSession::with_state(&art, plan.clone(), state.clone(), &opts()).unwrap();
    let mut probe = reopen(&moved);
    let base_loss = probe.eval(&batch).unwrap() as f64;
    let g = probe.step(&batch, 0.0).unwrap().grad_norm as f64;
    // lr = 1/‖g‖: every parameter moves by at most 1, far above f32 rounding.
    let lr = 1.0 / g;
    let mut stepped = reopen(&moved);
    stepped.step(&batch, lr as f32).unwrap();
    let mut total = 0.0;
    for suffix in ["lora_A", "lora_B"] {
        let params: Vec<&str> =
            plan.params.iter().filter(|p| p.name.ends_with(suffix)).map(|p| p.name.as_str()).collect();
        let grads: Vec<Vec<f64>> = params
            .iter()
            .map(|n| {
                f32s(&moved, n).iter().zip(f32s(&stepped.state, n)).map(|(x, y)| (*x as f64 - *y as f64) / lr).collect()
            })
            .collect();
        let norm2: f64 = grads.iter().flatten().map(|v| v * v).sum();
        let eps = 1e-3 / norm2;
        let mut shifted = moved.clone();
        for (n, grad) in params.iter().zip(&grads) {
            let Some(StateTensor::F32 { data, .. }) = shifted.tensors.get_mut(*n) else { panic!("{n}") };
            for (v, g) in data.iter_mut().zip(grad) {
                *v = (*v as f64 - eps * g) as f32;
            }
        }
        total += norm2;
        let fall = base_loss - reopen(&shifted).eval(&batch).unwrap() as f64;
        let predicted = eps * norm2;
        eprintln!(
            "{suffix}: ‖g‖² = {norm2:.4e} ({:.1}% of the step's), loss fell by {fall:.5e} for a predicted {predicted:.5e}, ratio {:.4}",
            100.0 * norm2 / (g * g),
            fall / predicted
        );
        assert!(
            (fall / predicted - 1.0).abs() < 0.02,
            "{suffix}: loss fell by {fall}, first order predicts {predicted}"
        );
    }
    assert!((total / (g * g) - 1.0).abs() < 1e-3, "the step's gradient norm is A's and B's together");
}

/// Largest |a − b| / (1 + |a|) over two outputs of the same shape.
fn worst_relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / (1.0 + x.abs())).fold(0f32, f32::max)
}

/// `neft export --merged` folds A·B·(alpha/r) into each MatMul weight `[in, out]`: the
/// merged model's logits are the eval graph's with the trained factors. A neft adapter
/// (rows) of a LoRA artifact is refused with what to do instead.
#[test]
fn a_merged_lora_llama_computes_the_eval_graph_s_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_lines(&dir.join("train.jsonl"), &pattern_lines(16, 12, 8, 5));
    let art = compile_lora(dir, "art", &["--rank", "4", "--alpha", "8", "--targets", "all", "--lr", "5e-2"]);
    neft_ok(&["train", "art", "--data", "train.jsonl", "--steps", "6", "--batch", "4", "--threads", "1"], dir);
    neft_ok(&["export", "art", "--merged", "merged.onnx"], dir);
    let o = neft(&["export", "art", "--adapter", "a.safetensors"], dir);
    assert!(!o.status.success() && stderr(&o).contains("--merged"), "{}", stderr(&o));

    let state = load_state(&art.join("checkpoint.safetensors"));
    let data = random_lm_batch(5, 2, 9);
    let merged = run(&dir.join("merged.onnx"), &data[..1], "logits");
    let base = run(&llama_path(), &data[..1], "logits");
    assert!(worst_relative(&base, &merged) > 1e-3, "the merge changed nothing");
    let worst = worst_relative(&eval_output(&art, &state, &data, "logits"), &merged);
    eprintln!("merged LoRA llama vs eval graph: worst |Δlogit|/(1+|logit|) = {worst:.2e}");
    assert!(worst <= 1e-5, "merged vs eval logits differ by {worst}");
}

/// The same for Gemm weights stored `[out, in]` (`transB=1`, PyTorch's Linear): the
/// merge adds the update transposed.
#[test]
fn a_merged_lora_gemm_model_computes_the_eval_graph_s_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = repo("models/fixtures/mlp_loss.onnx");
    let art = dir.join("art");
    neft_ok(
        &["compile", model.to_str().unwrap(), "-o", "art", "--mode", "lora", "--rank", "3", "--targets", "all"],
        dir,
    );
    let plan = Plan::load(&art.join("plan.json")).unwrap();
    assert!(plan.params.iter().all(|p| p.lora.is_some_and(|f| f.transposed)), "PyTorch Linear: Gemm transB=1");
    let mut session = neft::train::TrainSession::open(&art, &opts()).unwrap();
    let x: Vec<f32> = (0..4 * 16).map(|k| ((k * 7) % 11) as f32 * 0.1 - 0.5).collect();
    let batch = [("x", HostTensor::f32(&[4, 16], x)), ("target", HostTensor::i64(&[4], vec![1, 3, 5, 7]))];
    let first = session.step(&batch, 0.1).unwrap().loss;
    for _ in 0..4 {
        session.step(&batch, 0.1).unwrap();
    }
    assert!(session.eval(&batch).unwrap() < first);
    session.state.save(&dir.join("trained.safetensors")).unwrap();
    neft_ok(&["export", "art", "--state", "trained.safetensors", "--merged", "m.onnx"], dir);
    let merged = run(&dir.join("m.onnx"), &batch, "logits");
    let worst = worst_relative(&eval_output(&art, &session.state, &batch, "logits"), &merged);
    eprintln!("merged LoRA Gemm MLP vs eval graph: worst |Δlogit|/(1+|logit|) = {worst:.2e}");
    assert!(worst <= 1e-5, "merged vs eval logits differ by {worst}");
    assert!(worst_relative(&run(&model, &batch, "logits"), &merged) > 1e-4, "the merge changed nothing");
}
