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
