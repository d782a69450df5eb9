//! `neft profile` statistics against the same statistics computed in Rust from the
//! full activations, padding ignored; the instrumented model with external data; bad
//! data and models get clear errors.

use neft::ir::Graph;
use neft::models::llama::{build_llama, LlamaConfig, RandomWeights};
use neft::onnx::make::value_info_unshaped;
use neft::onnx::{self, DataType};
use neft::profile::{find_sites, open_derived, profile, Form, Profile, ProfileOptions, Site, Statistic, StreamOptions};
use neft::runtime::ort::{HostTensor, SessionOptions};
use std::path::{Path, PathBuf};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A random Llama with its weights in an external data file.
fn small_llama(dir: &Path) -> PathBuf {
    let cfg: LlamaConfig = serde_json::from_str(
        r#"{"vocab_size":96,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"tie_word_embeddings":false}"#,
    )
    .unwrap();
    build_llama(&cfg, &mut RandomWeights::new(3), dir).unwrap()
}

/// Examples of 1 to 11 tokens, so every batch of 4 is padded.
fn token_examples(n: usize, vocab: i64) -> Vec<Vec<i64>> {
    (0..n).map(|i| (0..(1 + (i * 7) % 11)).map(|k| ((i * 31 + k * 17) as i64) % vocab).collect()).collect()
}

fn write_jsonl(path: &Path, examples: &[Vec<i64>]) {
    let lines: Vec<String> = examples.iter().map(|e| serde_json::json!({ "input_ids": e }).to_string()).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn options(batch: usize) -> ProfileOptions {
    options_in(batch, None)
}

fn options_in(batch: usize, form: Option<Form>) -> ProfileOptions {
    ProfileOptions {
        stream: StreamOptions { batch, seq_len: 64, max_examples: None },
        session: SessionOptions { threads: Some(1), ..Default::default() },
        progress: false,
        only: None,
        statistics: Statistic::ALL.to_vec(),
        form,
    }
}

/// Per site, every activation row of every example run alone (no padding at all).
fn direct_rows(model: &onnx::Model, sites: &[Site], examples: &[Vec<i64>]) -> Vec<Vec<Vec<f32>>> {
    let mut graph = Graph::from_proto(model.graph()).unwrap();
    for s in sites {
        graph.add_output(value_info_unshaped(&s.tensor, DataType::Float)).unwrap();
    }
    let mut proto = model.proto.clone();
    proto.graph = Some(graph.to_proto());
    let opts = SessionOptions { threads: Some(1), ..Default::default() };
    let mut session = open_derived(model, &proto, "exposed", &opts).unwrap().session;
    let mut rows: Vec<Vec<Vec<f32>>> = vec![vec![]; sites.len()];
    let takes_mask = model.graph().input.iter().any(|i| i.name() == "attention_mask");
    for e in examples {
        let mut feeds = vec![("input_ids", HostTensor::i64(&[1, e.len()], e.clone()))];
        if takes_mask {
            feeds.push(("attention_mask", HostTensor::i64(&[1, e.len()], vec![1; e.len()])));
        }
        let out = session.run(&feeds).unwrap();
        for (k, s) in sites.iter().enumerate() {
            let t = out.iter().find(|(n, _)| *n == s.tensor).unwrap().1.as_f32().unwrap();
            let flat: Vec<f32> = t.iter().copied().collect();
            rows[k].extend(flat.chunks(s.neurons).map(|c| c.to_vec()));
        }
    }
    rows
}

/// (mean, mean |x|, mean x², fraction > 0, max |x|) per neuron, in f64.
fn stats_of(rows: &[Vec<f32>], neurons: usize) -> [Vec<f64>; 5] {
    let mut s: [Vec<f64>; 5] = std::array::from_fn(|_| vec![0.0; neurons]);
    for r in rows {
        for (j, &x) in r.iter().enumerate() {
            let x = x as f64;
            s[0][j] += x;
            s[1][j] += x.abs();
            s[2][j] += x * x;
            s[3][j] += (x > 0.0) as u8 as f64;
            s[4][j] = s[4][j].max(x.abs());
        }
    }
    for v in &mut s[..4] {
        v.iter_mut().for_each(|x| *x /= rows.len() as f64);
    }
    s
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * (1.0 + w.abs());
        assert!((*g as f64 - w).abs() <= tol, "{what}[{j}]: profile {g}, direct {w}");
    }
}

#[test]
fn profile_statistics_equal_statistics_of_the_full_activations_without_padding() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_llama(&dir.path().join("m"));
    let model = onnx::load(&path).unwrap();
    let examples = token_examples(10, 96);
    let data = dir.path().join("calib.jsonl");
    write_jsonl(&data, &examples);
    // The CPU's fused operator, and the standard ops the CUDA provider gets (run here on the CPU).
    let fused = profile(&model, &data, None, &options_in(4, Some(Form::Fused))).unwrap();
    let standard = profile(&model, &data, None, &options_in(4, Some(Form::Standard))).unwrap();
    for p in [&fused, &standard] {
        let tokens: usize = examples.iter().map(Vec::len).sum();
        assert_eq!((p.tokens, p.examples, p.batches), (tokens as u64, 10, 3));
        // 15 layer outputs and the 2 MLPs' intermediate units, all counted over tokens.
        assert_eq!(p.sites.len(), 17);
        assert!(p.sites.iter().all(|s| s.site.tokens && s.count == tokens as u64));
        assert_matches_direct(&model, p, &examples);
    }
    let p = fused;
    // The padded positions would have changed the numbers: the test can see padding.
    let padded = padded_mean_abs(&model, &p.sites[0].site, &examples);
    let differs =
        padded.iter().zip(p.sites[0].get(Statistic::MeanAbs).unwrap()).any(|(a, b)| (a - *b as f64).abs() > 1e-3);
    assert!(differs, "counting padded positions should change mean |x|");
    // The temporary folder with the instrumented model and linked weights is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("m")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with(".neft")), "{left:?}");
}

/// Checks every statistic of every site of `p` against the activations of the examples
/// run one by one.
fn assert_matches_direct(model: &onnx::Model, p: &Profile, examples: &[Vec<i64>]) {
    let graph = Graph::from_proto(model.graph()).unwrap();
    let layers = neft::analyze::find_layers(&graph);
    let sites = find_sites(&graph, &layers, None);
    let rows = direct_rows(model, &sites, examples);
    for (site, rows) in sites.iter().zip(&rows) {
        let got = p.site(&site.name).unwrap();
        let want = stats_of(rows, site.neurons);
        for (k, stat) in Statistic::ALL.iter().enumerate() {
            assert_close(got.get(*stat).unwrap(), &want[k], &format!("{} {}", site.name, stat.key()));
        }
    }
}

#[test]
fn padding_is_masked_in_a_bidirectional_model_fed_an_attention_mask() {
    // BERT attends both ways: right padding would change real tokens' activations
    // unless the attention mask hides it.
    let dir = tempfile::tempdir().unwrap();
    let model = onnx::load(repo("models/fixtures/tiny_bert.onnx")).unwrap();
    let examples = token_examples(9, 100);
    let data = dir.path().join("calib.jsonl");
    write_jsonl(&data, &examples);
    let p = profile(&model, &data, None, &options(4)).unwrap();
    assert_matches_direct(&model, &p, &examples);
}

/// input_ids → embedding → mean over the sequence → Gemm: one row per example.
fn pooled_classifier(dir: &Path) -> onnx::Model {
    use neft::ir::attr;
    use onnx::make::{self, node, tensor_f32, value_info};
    let emb: Vec<f32> = (0..50 * 8).map(|k| ((k * 37) % 23) as f32 * 0.1 - 1.1).collect();
    let w: Vec<f32> = (0..6 * 8).map(|k| ((k * 11) % 13) as f32 * 0.2 - 1.2).collect();
    let b: Vec<f32> = (0..6).map(|k| k as f32 * 0.1 - 0.2).collect();
    let graph = onnx::proto::GraphProto {
        name: Some("pooled".into()),
        node: vec![
            node("Gather", &["emb", "input_ids"], &["x"], vec![attr::int("axis", 0)]),
            node("ReduceMean", &["x", "axis1"], &["pooled"], vec![attr::int("keepdims", 0)]),
            node("Gemm", &["pooled", "w", "b"], &["logits"], vec![attr::int("transB", 1)]),
        ],
        initializer: vec![
            tensor_f32("emb", &[50, 8], &emb),
            tensor_f32("w", &[6, 8], &w),
            tensor_f32("b", &[6], &b),
            make::tensor_i64("axis1", &[1], &[1]),
        ],
        input: vec![value_info("input_ids", DataType::Int64, &["batch".into(), "seq".into()])],
        output: vec![value_info("logits", DataType::Float, &["batch".into(), 6.into()])],
        ..Default::default()
    };
    let path = dir.join("pooled.onnx");
    onnx::save(&onnx::Model::new(make::model(graph, 18), dir), &path).unwrap();
    onnx::load(&path).unwrap()
}

#[test]
fn layers_whose_output_has_no_token_axis_are_counted_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let model = pooled_classifier(dir.path());
    // Equal lengths: the mean over the sequence is then the same padded or not.
    let examples: Vec<Vec<i64>> = (0..5).map(|i| (0..4).map(|k| (i * 7 + k * 3) % 50).collect()).collect();
    let data = dir.path().join("calib.jsonl");
    write_jsonl(&data, &examples);
    for form in [Form::Fused, Form::Standard] {
        let p = profile(&model, &data, None, &options_in(2, Some(form))).unwrap();
        let site = p.site("w").unwrap();
        assert!(!site.site.tokens, "[batch, 6] has no token axis");
        assert_eq!((site.count, p.tokens), (5, 20));
        assert_matches_direct(&model, &p, &examples);
    }
}

/// Mean |x| of one site over every position of padded batches of 4, padding included.
fn padded_mean_abs(model: &onnx::Model, site: &Site, examples: &[Vec<i64>]) -> Vec<f64> {
    let padded: Vec<Vec<i64>> = examples
        .chunks(4)
        .flat_map(|c| {
            let len = c.iter().map(Vec::len).max().unwrap();
            c.iter().map(move |e| e.iter().copied().chain(std::iter::repeat_n(0, len - e.len())).collect())
        })
        .collect();
    let rows = &direct_rows(model, std::slice::from_ref(site), &padded)[0];
    stats_of(rows, site.neurons)[1].clone()
}

#[test]
fn the_profile_file_round_trips_and_records_the_model_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let model = onnx::load(repo("models/fixtures/tiny_llama.onnx")).unwrap();
    let data = dir.path().join("calib.jsonl");
    write_jsonl(&data, &token_examples(5, 128));
    let p = profile(&model, &data, None, &options(2)).unwrap();
    let file = dir.path().join("profile.safetensors");
    p.save(&file).unwrap();
    let back = Profile::load(&file).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.source.sha256.len(), 64);
    assert_eq!(back.data, data.display().to_string());
    // Sites: every layer's output and each MLP's intermediate units (val_245.input).
    let down_in = back.site("val_245.input").expect("intermediate units of block 0");
    assert_eq!((down_in.site.neurons, down_in.site.weight.as_str()), (64, "val_245"));
    // SiLU(gate)·up takes both signs; the fraction > 0 is a fraction.
    assert!(down_in.get(Statistic::FracPos).unwrap().iter().all(|f| (0.0..=1.0).contains(f)));
}

#[test]
fn bad_data_and_models_that_do_not_take_tokens_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let llama = onnx::load(repo("models/fixtures/tiny_llama.onnx")).unwrap();
    let run = |model: &onnx::Model, text: &str| {
        let data = dir.path().join("d.jsonl");
        std::fs::write(&data, text).unwrap();
        profile(model, &data, None, &options(2)).err().map(|e| format!("{e:#}")).unwrap_or_default()
    };
    let cases: &[(&str, &[&str])] = &[
        ("", &["d.jsonl", "no tokens"]),
        ("\n\n", &["d.jsonl", "no tokens"]),
        ("{\"input_ids\":[1,2]}\n{\"input_ids\":[1,500]}\n", &["d.jsonl:2", "token id 500", "128 rows"]),
        ("{\"input_ids\":[1,2]}\n{\"nope\":[1]}\n", &["d.jsonl:2", "field \"nope\" that feeds no input"]),
        (
            "{\"input_ids\":[1,2]}\n{\"nope\":\"x\"}\n",
            &["d.jsonl:2", "\"nope\" is not a number", "expected {\"text\"}"],
        ),
        ("{\"text\":\"hello\"}\n", &["d.jsonl:1", "tokenizer"]),
    ];
    for (text, want) in cases {
        let err = run(&llama, text);
        for w in *want {
            assert!(err.contains(w), "for {text:?}: {err:?} should mention {w:?}");
        }
    }
    let mlp = onnx::load(repo("models/fixtures/mlp_loss.onnx")).unwrap();
    let err = run(&mlp, "{\"input_ids\":[1,2]}\n");
    assert!(err.contains("mlp_loss.onnx") && err.contains("input_ids"), "{err}");
    assert!(!dir.path().join("profile.safetensors").exists());
}

/// For each wanted output, how many of the other wanted outputs it depends on.
fn outputs_upstream(proto: &onnx::proto::GraphProto, wanted: &[String]) -> Vec<usize> {
    use std::collections::{HashMap, HashSet};
    let producer: HashMap<&str, &onnx::proto::NodeProto> =
        proto.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    wanted
        .iter()
        .map(|w| {
            let (mut seen, mut todo) = (HashSet::new(), vec![w.as_str()]);
            while let Some(t) = todo.pop() {
                if let Some(n) = producer.get(t) {
                    todo.extend(n.input.iter().map(String::as_str).filter(|i| seen.insert(*i)));
                }
            }
            wanted.iter().filter(|o| *o != w && seen.contains(o.as_str())).count()
        })
        .collect()
}

#[test]
fn each_form_chains_the_site_outputs_in_forward_order_so_each_reduction_runs_after_its_activation() {
    use neft::runtime::neuron_stats::{DOMAIN, OP};
    let dir = tempfile::tempdir().unwrap();
    let model = onnx::load(small_llama(&dir.path().join("m"))).unwrap();
    let graph = Graph::from_proto(model.graph()).unwrap();
    let sites = find_sites(&graph, &neft::analyze::find_layers(&graph), None);
    // Where each site's tensor is made in the source graph.
    let made_at = |tensor: &str| model.graph().node.iter().position(|n| n.output.iter().any(|o| o == tensor)).unwrap();
    let ep = neft::runtime::Ep::Cpu;
    for form in [Form::Fused, Form::Standard] {
        let (g, outs) = neft::profile::instrument(&graph, &sites, 18, &Statistic::ALL, ep, form).unwrap();
        let proto = g.to_proto();
        let stats: Vec<String> = outs.iter().map(|o| o.stats.clone()).collect();
        // A chain: the k-th site of the chain depends on exactly the k before it.
        let upstream = outputs_upstream(&proto, &stats);
        let mut chain: Vec<usize> = (0..sites.len()).collect();
        chain.sort_by_key(|&k| upstream[k]);
        assert!(chain.iter().enumerate().all(|(pos, &k)| upstream[k] == pos), "{form:?}: not one chain: {upstream:?}");
        let made: Vec<usize> = chain.iter().map(|&k| made_at(&sites[k].tensor)).collect();
        assert!(made.windows(2).all(|w| w[0] <= w[1]), "{form:?}: chain out of forward order: {made:?}");
        let fused: Vec<_> = proto.node.iter().filter(|n| n.op_type() == OP && n.domain() == DOMAIN).collect();
        if form == Form::Fused {
            // One node a site, reading the site's tensor itself (no reshape) and the token mask.
            assert_eq!(fused.len(), sites.len());
            for (site, out) in sites.iter().zip(&stats) {
                let n = fused.iter().find(|n| &n.output[0] == out).unwrap();
                assert_eq!(n.input[..2], [site.tensor.clone(), neft::profile::MASK_INPUT.to_string()]);
            }
        } else {
            assert!(fused.is_empty() && proto.node.iter().all(|n| n.domain().is_empty()), "standard ops only");
        }
    }
}
