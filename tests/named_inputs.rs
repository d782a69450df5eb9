//! JSONL lines that carry a model's inputs by name as nested lists: a model that takes
//! no tokens (`x`, `target`, its own loss) and an image classifier (`x`, and a "label"
//! per line), both exported by PyTorch, run from the command line. The JSONL feed gives
//! exactly PyTorch's loss on the reference rows; training lowers the eval loss;
//! classification reports its accuracy.

mod train_support;

use neft::artifact::Plan;
use neft::runtime::ort::SessionOptions;
use neft::train::data::{Dataset, Feeder};
use neft::train::TrainSession;
use serde_json::{json, Value};
use std::path::Path;
use train_support::*;

fn reference(name: &str) -> Value {
    let path = repo(&format!("models/fixtures/{name}.ref.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The rows of `t` (a `{"shape", "data"}` tensor) as nested lists, one value per row.
fn rows(t: &Value) -> Vec<Value> {
    fn nest(values: &[Value], dims: &[usize]) -> Value {
        match dims.split_first() {
            None => values[0].clone(),
            Some((&n, rest)) => {
                let size = values.len() / n.max(1);
                Value::Array((0..n).map(|i| nest(&values[i * size..(i + 1) * size], rest)).collect())
            }
        }
    }
    let shape: Vec<usize> = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    match nest(t["data"].as_array().unwrap(), &shape) {
        Value::Array(rows) => rows,
        scalar => vec![scalar],
    }
}

/// Seeded pseudo-random numbers in (-1, 1).
fn noise(seed: &mut u64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed % 2001) as f64 / 1000.0 - 1.0
}

/// `neft train ... --json`: the summary.
fn train(args: &[&str], dir: &Path) -> Value {
    let out = neft_ok(&[&["train"], args, &["--json"]].concat(), dir);
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

fn eval_losses(summary: &Value) -> (f64, f64) {
    (summary["eval_loss_start"].as_f64().unwrap(), summary["eval_loss"].as_f64().unwrap())
}

#[test]
fn a_model_without_tokens_trains_from_fields_named_after_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference("mlp_loss");
    let (xs, targets) = (rows(&r["inputs"]["x"]), rows(&r["inputs"]["target"]));
    let reference_lines: Vec<String> =
        xs.iter().zip(&targets).map(|(x, t)| json!({ "x": x, "target": t }).to_string()).collect();
    let ref_file = dir.path().join("ref.jsonl");
    write_lines(&ref_file, &reference_lines);
    // A learnable task: the class is the sign pattern of two sums.
    let mut seed = 7u64;
    let lines: Vec<String> = (0..48)
        .map(|_| {
            let x: Vec<f64> = (0..16).map(|_| noise(&mut seed)).collect();
            let class = usize::from(x[..8].iter().sum::<f64>() > 0.0) + 2 * usize::from(x[8] > 0.0);
            json!({ "x": x, "target": class }).to_string()
        })
        .collect();
    let data = dir.path().join("d.jsonl");
    write_lines(&data, &lines);

    let art = dir.path().join("art");
    let model = repo("models/fixtures/mlp_loss.onnx");
    let out = neft_ok(
        &[
            "compile",
            model.to_str().unwrap(),
            "-o",
            art.to_str().unwrap(),
            "--loss",
            "loss",
            "--targets",
            "all",
            "--strategy",
            "random",
            "--budget",
            "30%",
        ],
        dir.path(),
    );
    assert!(stdout(&out).contains("data inputs: x, target"), "{}", stdout(&out));

    // The fields feed exactly what PyTorch saw: the same loss on the reference rows.
    let plan = Plan::load(&art.join("plan.json")).unwrap();
    let feeder = Feeder::new(&plan, &art).unwrap();
    let set = Dataset::load(&ref_file, None, 64).unwrap();
    feeder.check(&set).unwrap();
    let batch = set.in_order(8, 0).unwrap().remove(0);
    let mut session = TrainSession::open(&art, &SessionOptions::default()).unwrap();
    let loss = session.eval(&feeder.feed(&batch).unwrap()).unwrap();
    let torch = r["outputs"]["loss"]["data"][0].as_f64().unwrap() as f32;
    assert!((loss - torch).abs() <= 1e-5 * torch.abs().max(1.0), "neft {loss} vs PyTorch {torch}");

    let d = data.to_str().unwrap();
    let summary = train(
        &[art.to_str().unwrap(), "--data", d, "--eval", d, "--steps", "40", "--batch", "8", "--lr", "0.05"],
        dir.path(),
    );
    let (start, end) = eval_losses(&summary);
    assert!(end < 0.8 * start, "eval loss {start} -> {end}");

    // A line without the field, or with one the model does not take, is refused by name.
    let bad = dir.path().join("bad.jsonl");
    write_lines(&bad, &[json!({ "x": xs[0], "targets": 1 }).to_string()]);
    let err =
        stderr(&neft(&["train", art.to_str().unwrap(), "--data", bad.to_str().unwrap(), "--steps", "1"], dir.path()));
    assert!(err.contains("bad.jsonl") && err.contains("field \"targets\" that feeds no input"), "{err}");
}

#[test]
fn an_image_classifier_trains_from_nested_lists_and_reports_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    // Four classes, each brightening one channel (or none): easy to learn in a few steps.
    let mut seed = 11u64;
    let lines: Vec<String> = (0..32)
        .map(|i| {
            let class = i % 4;
            let x: Vec<Vec<Vec<f64>>> = (0..3)
                .map(|c| {
                    let shift = if class < 3 && c == class { 1.5 } else { 0.0 };
                    (0..16).map(|_| (0..16).map(|_| noise(&mut seed) + shift).collect()).collect()
                })
                .collect();
            json!({ "x": x, "label": class }).to_string()
        })
        .collect();
    let data = dir.path().join("images.jsonl");
    write_lines(&data, &lines);
    let art = dir.path().join("art");
    let model = repo("models/fixtures/convnet.onnx");
    let m = model.to_str().unwrap();
    let a = art.to_str().unwrap();
    let out =
        neft_ok(&["compile", m, "-o", a, "--targets", "all", "--strategy", "random", "--budget", "25%"], dir.path());
    assert!(stdout(&out).contains("sequence-classification"), "{}", stdout(&out));
    let d = data.to_str().unwrap();
    let summary = train(&[a, "--data", d, "--eval", d, "--steps", "30", "--batch", "8", "--lr", "0.01"], dir.path());
    let (start, end) = eval_losses(&summary);
    assert!(end < 0.7 * start, "eval loss {start} -> {end}");
    assert_eq!(metrics(&art).last().unwrap()["eval_accuracy"], summary["eval_accuracy"]);
    let (a0, a1) = (summary["eval_accuracy_start"].as_f64().unwrap(), summary["eval_accuracy"].as_f64().unwrap());
    assert!(a1 >= 0.75 && a1 > a0, "accuracy {a0} -> {a1} (chance: 0.25)");
}

/// The BERT classifier exported by optimum, with `token_type_ids` given per token in
/// the JSONL: activation selection (profiling pads the field like the ids) and eval
/// take it; all-zero segments give exactly the loss of the zeros neft fills in itself,
/// a second segment changes it.
#[test]
fn a_jsonl_field_overrides_the_token_type_ids_neft_would_fill() {
    let dir = tempfile::tempdir().unwrap();
    let r = reference("optimum_bert");
    let ids = &r["inputs"]["input_ids"];
    let seq = ids["shape"][1].as_u64().unwrap() as usize;
    let data: Vec<i64> = ids["data"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    let lengths: Vec<usize> = r["lengths"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let lines = |segments: Option<fn(usize, usize) -> i64>| -> Vec<String> {
        lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut line = json!({ "input_ids": &data[i * seq..i * seq + n], "label": r["labels"][i] });
                if let Some(seg) = segments {
                    line["token_type_ids"] = json!((0..n).map(|t| seg(t, n)).collect::<Vec<_>>());
                }
                line.to_string()
            })
            .collect()
    };
    let files = [
        ("plain", lines(None)),
        ("zeros", lines(Some(|_, _| 0))),
        ("pairs", lines(Some(|t, n| i64::from(t >= n / 2)))),
    ];
    for (name, l) in &files {
        write_lines(&dir.path().join(format!("{name}.jsonl")), l);
    }
    let model = repo("models/fixtures/optimum_bert.onnx");
    let args = ["compile", model.to_str().unwrap(), "-o", "art", "--data", "pairs.jsonl", "--budget", "10%"];
    neft_ok(&args, dir.path());
    let art = dir.path().join("art");
    let plan = Plan::load(&art.join("plan.json")).unwrap();
    let feeder = Feeder::new(&plan, &art).unwrap();
    let mut session = TrainSession::open(&art, &SessionOptions::default()).unwrap();
    let mut loss = |name: &str| {
        let set = Dataset::load(&dir.path().join(format!("{name}.jsonl")), None, 64).unwrap();
        feeder.check(&set).unwrap();
        let batch = set.in_order(8, 0).unwrap().remove(0);
        session.eval(&feeder.feed(&batch).unwrap()).unwrap()
    };
    let (plain, zeros, pairs) = (loss("plain"), loss("zeros"), loss("pairs"));
    let torch = r["loss"].as_f64().unwrap() as f32;
    assert!((plain - torch).abs() <= 1e-5 * torch.abs(), "neft {plain} vs PyTorch {torch}");
    assert_eq!(plain.to_bits(), zeros.to_bits(), "zeros from the JSONL are the zeros neft fills");
    assert!((pairs - plain).abs() > 1e-6, "a second segment must change the loss ({pairs} vs {plain})");
    let summary = train(&["art", "--data", "pairs.jsonl", "--steps", "4", "--batch", "3"], dir.path());
    assert_eq!(summary["step"], 4);
}
