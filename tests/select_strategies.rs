//! The scoring strategies: cosine against a reference with known changed rows, gradient
//! attribution against finite differences, activation from a profile, reversed
//! rankings; bad references and evidence get clear errors.

use neft::analyze::{analyze_structure, find_layers};
use neft::compile::Unit;
use neft::ir::Graph;
use neft::onnx::{self, Model};
use neft::passes::append_loss::LossSpec;
use neft::profile::{Statistic, StreamOptions};
use neft::runtime::ort::{HostTensor, Session, SessionOptions};
use neft::select::{
    build_groups, score_groups, select, DataSource, Evidence, GradientScorer, Scope, SelectOptions, Strategy,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn llama() -> Model {
    onnx::load(repo("models/fixtures/tiny_llama.onnx")).unwrap()
}

fn opts1() -> SessionOptions {
    SessionOptions { threads: Some(1), ..Default::default() }
}

fn evidence<'a>() -> Evidence<'a> {
    Evidence {
        profile: None,
        statistic: Statistic::MeanAbs,
        data: None,
        loss: LossSpec::Auto,
        reference: None,
        seed: 0,
    }
}

fn options(strategy: Strategy, budget: &str, unit: Unit) -> SelectOptions {
    SelectOptions {
        strategy,
        reversed_of: Strategy::Cosine,
        budget: budget.parse().unwrap(),
        scope: Scope::Global,
        targets: "mlp".parse().unwrap(),
        unit,
    }
}

fn weights(model: &Model) -> HashMap<String, (Vec<i64>, Vec<f32>)> {
    model
        .graph()
        .initializer
        .iter()
        .filter(|t| t.data_type() == onnx::DataType::Float as i32)
        .map(|t| (t.name().to_string(), (t.dims.clone(), model.tensor_f32(t).unwrap())))
        .collect()
}

/// Writes `tensors` as a safetensors file of FLOAT tensors.
fn write_safetensors(path: &Path, tensors: &HashMap<String, (Vec<i64>, Vec<f32>)>) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, (d, v))| {
            (n.clone(), d.iter().map(|&x| x as usize).collect(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Nudges slice `row` along `axis` of a `[d0, d1]` tensor.
fn nudge(t: &mut (Vec<i64>, Vec<f32>), axis: usize, row: usize) {
    let (d0, d1) = (t.0[0] as usize, t.0[1] as usize);
    for i in 0..d0 {
        for j in 0..d1 {
            if (axis == 0 && i == row) || (axis == 1 && j == row) {
                t.1[i * d1 + j] += if (i + j) % 2 == 0 { 0.05 } else { -0.03 };
            }
        }
    }
}

#[test]
fn cosine_selects_exactly_the_rows_the_reference_changed() {
    let model = llama();
    let dir = tempfile::tempdir().unwrap();
    let mut tuned = weights(&model);
    // gate col 3 and 17, up col 5, down col 30 (neurons); block 1 up col 60.
    for (w, axis, row) in
        [("val_242", 1, 3), ("val_242", 1, 17), ("val_244", 1, 5), ("val_245", 1, 30), ("val_380", 1, 60)]
    {
        nudge(tuned.get_mut(w).unwrap(), axis, row);
    }
    let reference = dir.path().join("tuned.safetensors");
    write_safetensors(&reference, &tuned);
    let ev = Evidence { reference: Some(reference.clone()), ..evidence() };
    let sel = select(&model, &options(Strategy::Cosine, "5", Unit::Neuron), &ev).unwrap();
    let got: Vec<(&str, &Vec<usize>)> = sel.neurons.layers.iter().map(|(w, l)| (w.as_str(), &l.rows)).collect();
    assert_eq!(got, [("val_242", &vec![3, 17]), ("val_244", &vec![5]), ("val_245", &vec![30]), ("val_380", &vec![60])]);
    // Reversed: the most similar rows, never a changed one.
    let rev = select(&model, &options(Strategy::Reversed, "5", Unit::Neuron), &ev).unwrap();
    assert!(!rev.neurons.layers.get("val_242").is_some_and(|l| l.rows.contains(&3) || l.rows.contains(&17)));
    assert_eq!(rev.neurons.count(), 5);
}

#[test]
fn cosine_with_mlp_units_sums_gate_up_and_down_and_reads_onnx_references() {
    let model = llama();
    let dir = tempfile::tempdir().unwrap();
    // Unit 7 of block 0 through its down row (axis 0), unit 9 of block 1 through its gate.
    let mut proto = model.proto.clone();
    for t in &mut proto.graph.as_mut().unwrap().initializer {
        let (axis, row) = match t.name() {
            "val_245" => (0, 7),
            "val_378" => (1, 9),
            _ => continue,
        };
        let mut v = (t.dims.clone(), model.tensor_f32(t).unwrap());
        nudge(&mut v, axis, row);
        *t = onnx::make::tensor_f32(t.name(), &v.0, &v.1);
    }
    let reference = dir.path().join("tuned.onnx");
    onnx::save(&Model::new(proto, dir.path()), &reference).unwrap();
    let ev = Evidence { reference: Some(reference), ..evidence() };
    let sel = select(&model, &options(Strategy::Cosine, "2", Unit::MlpUnit), &ev).unwrap();
    let got: Vec<(&str, usize, &Vec<usize>)> =
        sel.neurons.layers.iter().map(|(w, l)| (w.as_str(), l.axis, &l.rows)).collect();
    assert_eq!(
        got,
        [
            ("val_242", 1, &vec![7]),
            ("val_244", 1, &vec![7]),
            ("val_245", 0, &vec![7]),
            ("val_378", 1, &vec![9]),
            ("val_380", 1, &vec![9]),
            ("val_381", 0, &vec![9]),
        ]
    );
}

#[test]
fn a_reference_with_a_mismatched_or_missing_tensor_is_an_error_naming_it() {
    let model = llama();
    let dir = tempfile::tempdir().unwrap();
    let mut tuned = weights(&model);
    let (dims, v) = tuned.remove("val_244").unwrap();
    tuned.insert("val_244".into(), (vec![dims[1], dims[0]], v));
    let reference = dir.path().join("t.safetensors");
    write_safetensors(&reference, &tuned);
    let ev = Evidence { reference: Some(reference.clone()), ..evidence() };
    let e = format!("{:#}", select(&model, &options(Strategy::Cosine, "6%", Unit::Neuron), &ev).unwrap_err());
    assert!(
        e.contains("t.safetensors") && e.contains("'val_244'") && e.contains("[64, 32]") && e.contains("[32, 64]"),
        "{e}"
    );
    tuned.remove("val_244");
    write_safetensors(&reference, &tuned);
    let e = format!("{:#}", select(&model, &options(Strategy::Cosine, "6%", Unit::Neuron), &ev).unwrap_err());
    assert!(e.contains("no tensor 'val_244'") && e.contains("mlp.up"), "{e}");
    let none =
        format!("{:#}", select(&model, &options(Strategy::Cosine, "6%", Unit::Neuron), &evidence()).unwrap_err());
    assert!(none.contains("--reference"), "{none}");
    let no_data =
        format!("{:#}", select(&model, &options(Strategy::Gradient, "6%", Unit::Neuron), &evidence()).unwrap_err());
    assert!(no_data.contains("--data"), "{no_data}");
    let no_profile =
        format!("{:#}", select(&model, &options(Strategy::Activation, "6%", Unit::Neuron), &evidence()).unwrap_err());
    assert!(no_profile.contains("profile"), "{no_profile}");
}

/// The loss of `base` with `weights` replaced, through a session taking them as inputs.
struct LossProbe {
    session: Session,
    names: Vec<String>,
}

impl LossProbe {
    fn new(model: &Model, names: &[&str], loss: &LossSpec) -> (LossProbe, Option<String>) {
        let mut g = Graph::from_proto(model.graph()).unwrap();
        let info = neft::passes::append_loss::append_loss(&mut g, loss).unwrap();
        for n in names {
            g.promote_to_input(n).unwrap();
        }
        let out = onnx::make::value_info_unshaped(&info.loss, onnx::DataType::Float);
        g.set_outputs(vec![out]).unwrap();
        let mut proto = model.proto.clone();
        proto.graph = Some(g.to_proto());
        let bytes = onnx::encode(&proto, Path::new("probe")).unwrap();
        let session = Session::from_bytes(&bytes, "probe", &opts1()).unwrap();
        (LossProbe { session, names: names.iter().map(|s| s.to_string()).collect() }, info.labels)
    }

    fn loss(&mut self, feeds: &[(&str, HostTensor)], w: &HashMap<String, (Vec<i64>, Vec<f32>)>) -> f64 {
        let mut all: Vec<(&str, HostTensor)> = feeds.to_vec();
        for n in &self.names {
            let (d, v) = &w[n];
            all.push((n, HostTensor::f32(&d.iter().map(|&x| x as usize).collect::<Vec<_>>(), v.clone())));
        }
        self.session.run(&all).unwrap()[0].1.as_f32().unwrap().iter().next().copied().unwrap() as f64
    }
}

/// `Σ_i |w_i · (L(w_i + h) - L(w_i - h)) / 2h|` over slice `row` along `axis`.
fn finite_difference_score(
    probe: &mut LossProbe,
    feeds: &[(&str, HostTensor)],
    w: &mut HashMap<String, (Vec<i64>, Vec<f32>)>,
    name: &str,
    axis: usize,
    row: usize,
) -> f64 {
    let (dims, _) = w[name].clone();
    let inner: usize = dims[axis + 1..].iter().product::<i64>() as usize;
    let n = dims[axis] as usize;
    let h = 1e-2f32;
    let mut score = 0.0;
    for i in 0..w[name].1.len() {
        if (i / inner) % n != row {
            continue;
        }
        let x = w[name].1[i];
        w.get_mut(name).unwrap().1[i] = x + h;
        let up = probe.loss(feeds, w);
        w.get_mut(name).unwrap().1[i] = x - h;
        let down = probe.loss(feeds, w);
        w.get_mut(name).unwrap().1[i] = x;
        score += (x as f64 * (up - down) / (2.0 * h as f64)).abs();
    }
    score
}

#[test]
fn gradient_scores_equal_finite_difference_scores_on_a_small_mlp() {
    let model = onnx::load(repo("models/fixtures/mlp_loss.onnx")).unwrap();
    let wanted = [("fc1.weight".to_string(), 0), ("fc2.weight".to_string(), 0), ("fc1.weight".to_string(), 1)];
    let mut scorer = GradientScorer::new(&model, &wanted, &LossSpec::Auto, &opts1()).unwrap();
    let (mut probe, _) = LossProbe::new(&model, &["fc1.weight", "fc2.weight"], &LossSpec::Auto);
    let mut w = weights(&model);
    let batches: Vec<Vec<(&str, HostTensor)>> = (0..2)
        .map(|b| {
            let x: Vec<f32> = (0..4 * 16).map(|k| (((k + 5 * b) * 7) % 11) as f32 * 0.2 - 1.0).collect();
            vec![("x", HostTensor::f32(&[4, 16], x)), ("target", HostTensor::i64(&[4], vec![1, 3, 5 + b as i64, 7]))]
        })
        .collect();
    let mut total: Vec<Vec<f64>> = vec![vec![0.0; 32], vec![0.0; 8], vec![0.0; 16]];
    for feeds in &batches {
        for (t, s) in total.iter_mut().zip(scorer.run(feeds).unwrap()) {
            t.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        }
    }
    for ((name, axis), scores) in wanted.iter().zip(&total) {
        assert!(scores.iter().all(|s| *s > 1e-4), "{name}: every row should matter: {scores:?}");
        for (row, &ad) in scores.iter().enumerate() {
            let fd: f64 =
                batches.iter().map(|f| finite_difference_score(&mut probe, f, &mut w, name, *axis, row)).sum();
            assert!(
                (fd - ad).abs() <= 2e-3 * ad.abs() + 1e-5,
                "{name} axis {axis} row {row}: autodiff {ad}, finite differences {fd}"
            );
        }
    }
}

#[test]
fn gradient_scores_of_mlp_units_from_jsonl_equal_finite_differences_on_a_llama() {
    let model = llama();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("calib.jsonl");
    // Equal lengths: no padding, so one batch here is one batch there.
    let lines: Vec<String> = (0..2)
        .map(|i| format!("{{\"input_ids\":{:?}}}", (0..6).map(|k| (i * 37 + k * 11) % 128).collect::<Vec<_>>()))
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let graph = Graph::from_proto(model.graph()).unwrap();
    let layers = find_layers(&graph);
    let mlps = analyze_structure(&graph, &layers).mlps;
    let groups = build_groups(&layers, &mlps, &"block 0 / mlp".parse().unwrap(), Unit::MlpUnit);
    assert_eq!(groups.len(), 1);
    let stream = StreamOptions { batch: 2, seq_len: 64, max_examples: None };
    let ev = Evidence {
        data: Some(DataSource { path: data.clone(), encoder: None, stream, session: opts1(), progress: false }),
        ..evidence()
    };
    let scores = score_groups(Strategy::Gradient, Strategy::Cosine, &model, &layers, &groups, &ev).unwrap();
    let (mut probe, labels) = LossProbe::new(&model, &["val_242", "val_244", "val_245"], &LossSpec::Auto);
    let ids: Vec<i64> = (0..2).flat_map(|i| (0..6).map(move |k| (i * 37 + k * 11) % 128)).collect();
    let feeds = vec![
        ("input_ids", HostTensor::i64(&[2, 6], ids.clone())),
        (labels.as_deref().unwrap(), HostTensor::i64(&[2, 6], ids)),
    ];
    let mut w = weights(&model);
    for unit in [0usize, 5, 33] {
        let fd: f64 = [("val_242", 1), ("val_244", 1), ("val_245", 0)]
            .iter()
            .map(|(n, axis)| finite_difference_score(&mut probe, &feeds, &mut w, n, *axis, unit))
            .sum();
        let ad = scores[0][unit];
        assert!(ad > 1e-5, "unit {unit}: score {ad}");
        assert!((fd - ad).abs() <= 2e-2 * ad.abs() + 1e-6, "unit {unit}: autodiff {ad}, finite differences {fd}");
    }
}

#[test]
fn selection_profiles_only_the_sites_the_activation_scores_read() {
    let model = llama();
    let layers = find_layers(&Graph::from_proto(model.graph()).unwrap());
    let mlp: Vec<(&str, &str)> =
        layers.iter().filter_map(|l| Some((l.weight.as_str(), l.role.split_once(" / mlp.")?.1))).collect();
    assert_eq!(mlp.len(), 6, "gate, up and down of two blocks");
    let targets = "mlp".parse().unwrap();
    // By neuron: every layer's own outputs; the units entering each down are not read.
    let by_neuron = neft::select::activation_sites(&model, &targets, Unit::Neuron).unwrap();
    let want: std::collections::BTreeSet<String> = mlp.iter().map(|(w, _)| w.to_string()).collect();
    assert_eq!(by_neuron, want);
    // By MLP unit: a down projection is scored by the units entering it, not its outputs.
    let by_unit = neft::select::activation_sites(&model, &targets, Unit::MlpUnit).unwrap();
    let want: std::collections::BTreeSet<String> = mlp
        .iter()
        .map(|(w, role)| if *role == "down" { neft::profile::input_site(w) } else { w.to_string() })
        .collect();
    assert_eq!(by_unit, want);
}
