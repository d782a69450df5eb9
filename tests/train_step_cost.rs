//! What one training step computes, read off every value of a real step: a split
//! layer costs k/out of its weight per step, not a copy or a full gradient of it, and
//! no index tensor grows with the activations.

mod train_support;

use neft::runtime::ort::HostTensor;
use train_support::*;

/// Batch 3 × 7: 21 tokens, a count no weight dimension of the tiny Llama (16, 32, 64,
/// 128) shares, so a weight-shaped value cannot be a flattened activation.
const ROWS: usize = 3;
const LEN: usize = 7;

fn compiled(dir: &std::path::Path, unit: &str) -> std::path::PathBuf {
    // Up and gate of block 0 (out = 64), q of block 1 (a Gemm-free MatMul, out = 32).
    let neurons = [("val_244", 1, vec![3, 10, 40]), ("val_242", 1, vec![1, 2]), ("val_109", 1, vec![0, 5, 9])];
    compile_llama(dir, unit, &neurons, &["--unit", unit])
}

fn shape(t: &HostTensor) -> Vec<usize> {
    t.shape().to_vec()
}

#[test]
fn no_value_of_a_step_has_a_split_weight_s_shape_and_no_index_grows_with_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    for unit in ["neuron", "mlp-unit"] {
        let dir = compiled(tmp.path(), unit);
        let plan = neft::artifact::Plan::load(&dir.join("plan.json")).unwrap();
        let weight_shapes: Vec<Vec<usize>> = plan
            .params
            .iter()
            .filter(|p| p.shape.len() == 2)
            .map(|p| {
                let mut s: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
                s[p.axis] = p.source_rows;
                s
            })
            .collect();
        assert!(weight_shapes.len() >= 3, "{unit}: {weight_shapes:?}");
        let values = every_value_of_a_step(&dir, &random_lm_batch(5, ROWS, LEN));
        let added = values.iter().filter(|v| v.pass.is_some()).count();
        assert!(values.len() > 500 && added > 200, "{unit}: only {} values, {added} added by neft", values.len());
        let tokens = ROWS * LEN;
        for v in &values {
            // Neither a per-step copy of a frozen weight nor its full gradient.
            let s = shape(&v.value);
            assert!(!weight_shapes.contains(&s), "{unit}: {} ({}) has a split weight's shape {s:?}", v.name, v.op);
            // What neft adds (the model's own forward pass may build index tensors).
            let Some(pass) = &v.pass else { continue };
            if let HostTensor::I64(a) = &v.value {
                let what = format!("{unit}: INT64 {} ({}, pass {pass})", v.name, v.op);
                assert!(a.len() <= tokens, "{what} has {} elements, more than {tokens} tokens", a.len());
            }
            assert_ne!(v.op, "CumSum", "{unit}: {} (pass {pass}) is a CumSum", v.name);
        }
    }
}

/// Prompt and padding positions cost nothing in the LM head: with 6 of 21 positions
/// counted, no value of the step holds vocabulary scores for more rows than that, and
/// the loss is still the mean over the counted positions of the full logits.
#[test]
fn the_lm_head_and_its_gradient_run_on_the_counted_positions_only() {
    const VOCAB: usize = 128;
    let tmp = tempfile::tempdir().unwrap();
    let dir = compiled(tmp.path(), "mlp-unit");
    let mut batch = random_lm_batch(7, ROWS, LEN);
    let HostTensor::I64(ids) = batch[0].1.clone() else { panic!("input_ids are INT64") };
    // A prompt of 5 tokens per row: labels 5 and 6 count (predicted at positions 4, 5).
    let labels: Vec<i64> = ids.iter().enumerate().map(|(i, &t)| if i % LEN < 5 { -100 } else { t }).collect();
    let counted = ROWS * 2;
    batch[1] = ("labels", HostTensor::i64(&[ROWS, LEN], labels.clone()));

    let values = every_value_of_a_step(&dir, &batch);
    let scores: Vec<&Probed> = values
        .iter()
        .filter(|v| matches!(v.value, HostTensor::F32(_)) && v.value.shape().len() >= 2)
        .filter(|v| v.value.shape().last() == Some(&VOCAB))
        .collect();
    assert!(!scores.is_empty(), "no value of the step has the vocabulary's width");
    for v in &scores {
        let rows: usize = v.value.shape().iter().rev().skip(1).product();
        assert!(rows <= counted, "{} ({}, pass {:?}) has {rows} rows of vocabulary scores", v.name, v.op, v.pass);
    }
    assert!(scores.iter().any(|v| v.op == "MatMul" && v.value.shape() == [counted, VOCAB]));

    // The loss against the mean negative log-likelihood of the full logits.
    let plan = neft::artifact::Plan::load(&dir.join("plan.json")).unwrap();
    let state = load_state(&dir.join("state.safetensors"));
    let logits = eval_output(&dir, &state, &batch, "logits");
    let mut nll = 0.0f64;
    for r in 0..ROWS {
        for t in 0..LEN - 1 {
            let label = labels[r * LEN + t + 1];
            if label == -100 {
                continue;
            }
            let row = &logits[(r * LEN + t) * VOCAB..(r * LEN + t + 1) * VOCAB];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            nll += lse - row[label as usize] as f64;
        }
    }
    let expected = nll / counted as f64;
    let eval_loss = eval_output(&dir, &state, &batch, &plan.loss.loss)[0] as f64;
    let step_loss = scalar(&values, &plan.loss.loss) as f64;
    for (what, got) in [("eval graph", eval_loss), ("train step", step_loss)] {
        assert!((got - expected).abs() <= 1e-5 * expected, "{what}: loss {got} against {expected} from the logits");
    }
}

/// A batch whose every label is ignored trains nothing and says so with a zero loss,
/// not an error: the head's product then has no rows.
#[test]
fn a_batch_without_counted_positions_gives_a_zero_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = compiled(tmp.path(), "mlp-unit");
    let mut batch = random_lm_batch(3, ROWS, LEN);
    batch[1] = ("labels", HostTensor::i64(&[ROWS, LEN], vec![-100; ROWS * LEN]));
    let values = every_value_of_a_step(&dir, &batch);
    let plan = neft::artifact::Plan::load(&dir.join("plan.json")).unwrap();
    let loss = scalar(&values, &plan.loss.loss);
    assert_eq!(loss, 0.0);
    let norm = scalar(&values, &plan.io.grad_norm);
    assert_eq!(norm, 0.0);
}

/// The scalar value `name` among the values of a step.
fn scalar(values: &[Probed], name: &str) -> f32 {
    let v = values.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no value {name}"));
    v.value.as_f32().and_then(|a| a.iter().next().copied()).unwrap_or_else(|| panic!("{name} is not a float"))
}
