//! `neft export` and `neft merge`: an adapter holds only the trained rows (and bias
//! elements), and the base model with those rows merged in computes what the eval
//! graph computes with the trained state. A merge onto another model is refused.

mod train_support;

use neft::adapter::Adapter;
use neft::artifact::Plan;
use neft::runtime::ort::{HostTensor, SessionOptions};
use train_support::*;

fn opts() -> SessionOptions {
    SessionOptions { threads: Some(1), ..Default::default() }
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        // Split rows compute the selected columns in a separate product: float sums in
        // another order.
        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

fn ids(b: usize, t: usize) -> Vec<(&'static str, HostTensor)> {
    let data: Vec<i64> = (0..b * t).map(|k| 1 + (k as i64 * 5) % 8).collect();
    vec![("input_ids", HostTensor::i64(&[b, t], data))]
}

/// Cross-entropy of next-token prediction from `logits` `[b, t, vocab]`, averaged
/// over the `b * (t - 1)` predicted positions (the causal-LM loss neft compiles).
fn causal_lm_loss(logits: &[f32], ids: &[i64], b: usize, t: usize, vocab: usize) -> f64 {
    let mut sum = 0.0;
    for row in 0..b {
        for pos in 0..t - 1 {
            let l = &logits[(row * t + pos) * vocab..][..vocab];
            let max = l.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let lse = max + l.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            sum += lse - l[ids[row * t + pos + 1] as usize] as f64;
        }
    }
    sum / (b * (t - 1)) as f64
}

/// Trains the tiny Llama compiled with `flags`, exports adapter and merged model, and
/// checks that the merged model computes the eval graph's loss (and, unless a trained
/// layer writes the model output itself, its logits).
fn export_and_merge(neurons: &[(&str, usize, Vec<usize>)], flags: &[&str], compare_logits: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_lines(&dir.join("train.jsonl"), &pattern_lines(16, 12, 8, 5));
    let art = compile_llama(dir, "art", neurons, &[&["--lr", "5e-2"][..], flags].concat());
    neft_ok(&["train", "art", "--data", "train.jsonl", "--steps", "6", "--batch", "4", "--threads", "1"], dir);
    neft_ok(&["export", "art", "--adapter", "a.safetensors", "--merged", "merged.onnx"], dir);
    let base = llama_path();
    neft_ok(&["merge", base.to_str().unwrap(), "a.safetensors", "-o", "again.onnx"], dir);

    let plan = Plan::load(&art.join("plan.json")).unwrap();
    let adapter = Adapter::load(&dir.join("a.safetensors")).unwrap();
    assert_eq!(
        (adapter.base_sha256.as_str(), adapter.plan.clone(), adapter.step),
        (plan.source.sha256.as_str(), plan.hash(), 6)
    );
    assert_eq!(adapter.tensors.len(), plan.params.len());
    for p in &plan.params {
        let t = adapter.tensors.iter().find(|t| t.source == p.source).unwrap();
        assert_eq!((t.axis, &t.rows), (p.axis, &p.rows), "{}", p.source);
        assert_eq!(t.shape[t.axis], p.rows.len(), "{}: only the selected rows are exported", t.source);
    }

    let state = load_state(&art.join("checkpoint.safetensors"));
    let (b, t) = (2, 9);
    let mut data = ids(b, t);
    let merged = run(&dir.join("merged.onnx"), &data, "logits");
    let original = run(&base, &data, "logits");
    assert!(original.iter().zip(&merged).any(|(x, y)| (x - y).abs() > 1e-3), "the merge changed nothing");
    assert!(merged == run(&dir.join("again.onnx"), &data, "logits"), "neft merge and neft export --merged agree");
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    assert!(read("again.onnx.data") == read("merged.onnx.data"), "the two merges wrote different weights");

    let ids_flat = data[0].1.clone().into_i64();
    data.push(("labels", data[0].1.clone()));
    let eval_loss = eval_output(&art, &state, &data, "loss")[0] as f64;
    let merged_loss = causal_lm_loss(&merged, &ids_flat, b, t, 128);
    assert!((eval_loss - merged_loss).abs() < 1e-5, "eval loss {eval_loss}, merged model's loss {merged_loss}");
    if compare_logits {
        assert_close(&merged, &eval_output(&art, &state, &data, "logits"), "merged vs eval logits");
    }
}

#[test]
fn split_mlp_units_export_rows_along_both_axes_and_merge_into_the_eval_output() {
    // Units of block 0's MLP (gate and up columns, down rows along axis 0) and q columns.
    let neurons = [("val_244", 1, vec![3, 10, 33]), ("val_109", 1, vec![2, 7])];
    export_and_merge(&neurons, &["--unit", "mlp-unit"], true);
}

#[test]
fn mask_mode_exports_only_the_selected_rows() {
    export_and_merge(&[("val_380", 1, vec![0, 9, 17]), ("val_381", 1, vec![4])], &["--mode", "mask"], true);
}

#[test]
fn trained_head_columns_merge_into_the_eval_loss() {
    // The head writes the model's `logits` output itself. eval.onnx currently lists
    // the head's frozen product under that name (the split-rows rewrite renames the
    // graph output, and the eval graph keeps the name from before the passes), so
    // only the loss, which reads the merged logits, is compared here.
    export_and_merge(&[("val_386", 1, vec![1, 2, 5]), ("val_244", 1, vec![3])], &[], false);
}

#[test]
fn gemm_biases_travel_with_their_rows() {
    // The PyTorch MLP: Gemm layers with biases, trained through the library.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Only the first layer: the second writes the model's output itself (see above).
    write_neurons(&dir.join("n.json"), &[("fc1.weight", 0, vec![1, 4, 7])]);
    let model = repo("models/fixtures/mlp_loss.onnx");
    neft_ok(&["compile", model.to_str().unwrap(), "-o", "art", "--neurons", "n.json", "--lr", "0.1"], dir);
    let art = dir.join("art");
    let mut session = neft::train::TrainSession::open(&art, &opts()).unwrap();
    let x: Vec<f32> = (0..4 * 16).map(|k| ((k * 7) % 11) as f32 * 0.1 - 0.5).collect();
    let batch = [("x", HostTensor::f32(&[4, 16], x)), ("target", HostTensor::i64(&[4], vec![1, 3, 5, 7]))];
    for _ in 0..5 {
        session.step(&batch, 0.1).unwrap();
    }
    session.state.save(&dir.join("trained.safetensors")).unwrap();
    neft_ok(
        &["export", "art", "--state", "trained.safetensors", "--adapter", "a.safetensors", "--merged", "m.onnx"],
        dir,
    );

    let adapter = Adapter::load(&dir.join("a.safetensors")).unwrap();
    let sources: Vec<(&str, &[usize])> = adapter.tensors.iter().map(|t| (t.source.as_str(), &t.rows[..])).collect();
    let fc1: &[usize] = &[1, 4, 7];
    assert_eq!(sources, [("fc1.bias", fc1), ("fc1.weight", fc1)]);
    let merged = run(&dir.join("m.onnx"), &batch, "logits");
    let eval = eval_output(&art, &session.state, &batch, "logits");
    assert_close(&merged, &eval, "merged vs eval logits");
    let (merged_loss, eval_loss) =
        (run(&dir.join("m.onnx"), &batch, "loss"), eval_output(&art, &session.state, &batch, "loss"));
    assert_close(&merged_loss, &eval_loss, "merged vs eval loss");
    assert!(dir.join("m.onnx.data").is_file(), "weights of 1 KiB or more go beside the model");
}

#[test]
fn merging_onto_another_model_or_over_the_base_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_lines(&dir.join("train.jsonl"), &pattern_lines(8, 8, 8, 6));
    compile_llama(dir, "art", &[("val_109", 1, vec![1, 2])], &[]);
    let missing = neft(&["export", "art", "--adapter", "a.safetensors"], dir);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("checkpoint.safetensors") && stderr(&missing).contains("train first"));
    neft_ok(&["train", "art", "--data", "train.jsonl", "--steps", "2", "--batch", "4"], dir);
    neft_ok(&["export", "art", "--adapter", "a.safetensors"], dir);

    let bert = repo("models/fixtures/tiny_bert.onnx");
    let wrong = neft(&["merge", bert.to_str().unwrap(), "a.safetensors", "-o", "m.onnx"], dir);
    assert_eq!(wrong.status.code(), Some(1));
    let err = stderr(&wrong);
    assert!(err.contains("tiny_bert.onnx") && err.contains("SHA-256") && err.contains("tiny_llama.onnx"), "{err}");
    assert!(!dir.join("m.onnx").exists() && !dir.join("m.onnx.data").exists(), "a refused merge wrote files");

    // A copy of the base elsewhere is the same model; writing over it is refused.
    std::fs::copy(llama_path(), dir.join("base.onnx")).unwrap();
    let over = neft(&["merge", "base.onnx", "a.safetensors", "-o", "base.onnx"], dir);
    assert_eq!(over.status.code(), Some(1));
    assert!(stderr(&over).contains("overwrite the base"), "{}", stderr(&over));
    neft_ok(&["merge", "base.onnx", "a.safetensors", "-o", "m.onnx"], dir);

    std::fs::write(dir.join("junk.safetensors"), b"not an adapter").unwrap();
    let junk = neft(&["merge", "base.onnx", "junk.safetensors", "-o", "j.onnx"], dir);
    assert_eq!(junk.status.code(), Some(1));
    assert!(stderr(&junk).contains("junk.safetensors"), "{}", stderr(&junk));
}

#[test]
fn export_and_merge_create_missing_output_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_lines(&dir.join("train.jsonl"), &pattern_lines(8, 8, 8, 7));
    compile_llama(dir, "art", &[("val_109", 1, vec![1, 2])], &[]);
    neft_ok(&["train", "art", "--data", "train.jsonl", "--steps", "1", "--batch", "4"], dir);
    neft_ok(&["export", "art", "--adapter", "ad/apt/a.safetensors", "--merged", "new/dir/model.onnx"], dir);
    for f in ["ad/apt/a.safetensors", "new/dir/model.onnx", "new/dir/model.onnx.data"] {
        assert!(dir.join(f).is_file(), "{f} was not written");
    }
    let base = llama_path();
    neft_ok(&["merge", base.to_str().unwrap(), "ad/apt/a.safetensors", "-o", "other/m.onnx"], dir);
    assert!(dir.join("other/m.onnx").is_file() && dir.join("other/m.onnx.data").is_file());
}
