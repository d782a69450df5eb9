//! `neft profile`, `neft select` and `neft compile` without `--neurons`, as users run
//! them: files written, summaries printed, errors with exit codes, nothing half-written.

use neft::artifact::Plan;
use neft::profile::Profile;
use neft::select::NeuronSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path).display().to_string()
}

fn neft(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_neft")).args(args).current_dir(dir).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string())
}

/// 40 examples of 4 to 30 token ids below 128 (the tiny Llama's vocabulary).
fn calibration(dir: &Path) -> PathBuf {
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let ids: Vec<usize> = (0..4 + (i * 7) % 27).map(|k| (i * 13 + k * 29) % 128).collect();
            format!("{{\"input_ids\":{ids:?}}}")
        })
        .collect();
    let path = dir.join("calib.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

#[test]
fn profile_then_select_writes_neurons_a_heat_map_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    calibration(dir.path());
    let llama = repo("models/fixtures/tiny_llama.onnx");
    let p = neft(&["profile", &llama, "--data", "calib.jsonl", "--batch", "4", "-o", "p.safetensors"], dir.path());
    let (out, err) = text(&p);
    assert!(p.status.success(), "{err}");
    assert!(out.contains("15 layer outputs and 2 MLP intermediates"), "{out}");
    let profile = Profile::load(&dir.path().join("p.safetensors")).unwrap();
    assert_eq!(profile.examples, 40);

    let s = neft(&["select", &llama, "--profile", "p.safetensors", "--budget", "6%", "-o", "n.json"], dir.path());
    let (out, err) = text(&s);
    assert!(s.status.success(), "{err}");
    for want in ["selected", "of 12288 targeted parameters", "mlp.gate", "mlp.up", "mlp.down", "wrote n.json and n.svg"]
    {
        assert!(out.contains(want), "{out} should mention {want}");
    }
    let set = NeuronSet::load(&dir.path().join("n.json")).unwrap();
    let model = neft::onnx::load(&llama).unwrap();
    let layers = neft::analyze::find_layers(&neft::ir::Graph::from_proto(model.graph()).unwrap());
    set.check(&llama, &layers).unwrap();
    assert!(set.count() > 0);
    let svg = std::fs::read_to_string(dir.path().join("n.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(">block 1<") && svg.contains(">mlp.down<") && svg.contains("val_244"), "{svg}");
    assert!(!svg.contains("http://") || svg.matches("http://").count() == 1, "only the SVG namespace");

    // --json: the same numbers for machines.
    let j =
        neft(&["select", &llama, "--profile", "p.safetensors", "--budget", "20", "-o", "n.json", "--json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["summary"]["units_selected"], 20);
    assert_eq!(v["layers"].as_array().unwrap().len(), 15);
}

#[test]
fn compile_without_neurons_selects_first_and_records_the_selection() {
    let dir = tempfile::tempdir().unwrap();
    calibration(dir.path());
    let llama = repo("models/fixtures/tiny_llama.onnx");
    let c = neft(
        &[
            "compile",
            &llama,
            "-o",
            "out",
            "--data",
            "calib.jsonl",
            "--budget",
            "10%",
            "--unit",
            "mlp-unit",
            "--batch",
            "4",
        ],
        dir.path(),
    );
    let (out, err) = text(&c);
    assert!(c.status.success(), "{err}");
    assert!(out.contains("strategy activation (mean_abs)") && out.contains("wrote out"), "{out}");
    let plan = Plan::load(&dir.path().join("out/plan.json")).unwrap();
    let written = NeuronSet::load(&dir.path().join("out/neurons.json")).unwrap();
    assert_eq!(plan.neurons.layers, written.layers);
    // Gate, up and down of every selected unit.
    assert_eq!(written.layers["val_245"].axis, 0);
    assert_eq!(written.layers["val_242"].rows, written.layers["val_245"].rows);
    assert!(dir.path().join("out/neurons.svg").is_file());
    // The plan lists every layer and marks the targeted ones (the MLPs by default), so a
    // heat map drawn from it shows targeted layers that got nothing.
    let targeted: Vec<&str> = plan.layers.iter().filter(|l| l.targeted).map(|l| l.role.as_str()).collect();
    assert_eq!(plan.layers.len(), 15);
    assert!(targeted.len() == 6 && targeted.iter().all(|r| r.contains(" / mlp.")), "{targeted:?}");
    assert_eq!(plan.layer_shares().iter().filter(|s| s.targeted).count(), 6);
    // The profile identifies the model by the same digest the plan records.
    let p = neft(&["profile", &llama, "--data", "calib.jsonl", "-o", "p.safetensors"], dir.path());
    assert!(p.status.success());
    assert_eq!(Profile::load(&dir.path().join("p.safetensors")).unwrap().source.sha256, plan.source.sha256);

    // Random and cosine need no data; the same seed gives the same file.
    for (out, seed) in [("r1", "5"), ("r2", "5"), ("r3", "6")] {
        let r = neft(
            &["compile", &llama, "-o", out, "--strategy", "random", "--seed", seed, "--targets", "all"],
            dir.path(),
        );
        assert!(r.status.success(), "{}", text(&r).1);
    }
    let all = Plan::load(&dir.path().join("r1/plan.json")).unwrap();
    assert!(all.layers.len() == 15 && all.layers.iter().all(|l| l.targeted), "--targets all");
    let read = |d: &str| std::fs::read(dir.path().join(d).join("neurons.json")).unwrap();
    assert_eq!(read("r1"), read("r2"));
    assert_ne!(read("r1"), read("r3"));
}

#[test]
fn bad_usage_and_bad_input_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    calibration(dir.path());
    let llama = repo("models/fixtures/tiny_llama.onnx");
    let mlp = repo("models/fixtures/mlp_loss.onnx");
    std::fs::write(dir.path().join("empty.jsonl"), "").unwrap();
    let p = neft(&["profile", &mlp, "--data", "calib.jsonl", "-o", "mlp.safetensors"], dir.path());
    assert_eq!(p.status.code(), Some(1));
    assert!(text(&p).1.contains("input_ids"), "{}", text(&p).1);
    let ok = neft(
        &["profile", &llama, "--data", "calib.jsonl", "-o", "p.safetensors", "--statistics", "mean-abs,frac-pos"],
        dir.path(),
    );
    assert!(ok.status.success(), "{}", text(&ok).1);
    let cases: &[(&[&str], i32, &[&str])] = &[
        (&["select", &llama, "--profile", "p.safetensors", "--budget", "0"], 2, &["nothing would be selected"]),
        (&["select", &llama, "--profile", "p.safetensors", "--budget", "150%"], 2, &["at most 100%"]),
        (&["select", &llama, "--profile", "p.safetensors", "--strategy", "best"], 2, &["unknown strategy"]),
        (
            &["select", &mlp, "--profile", "p.safetensors", "--targets", "all"],
            1,
            &["profile was made from", "tiny_llama"],
        ),
        (&["select", &llama, "--strategy", "activation"], 1, &["--data"]),
        (
            &["select", &llama, "--profile", "p.safetensors", "--statistic", "max-abs"],
            1,
            &["no 'max_abs'", "mean_abs, frac_pos"],
        ),
        (&["profile", &llama, "--data", "calib.jsonl", "--statistics", "median"], 2, &["unknown statistic"]),
        (&["select", &llama, "--strategy", "gradient", "--data", "empty.jsonl"], 1, &["empty.jsonl", "no tokens"]),
        (&["select", &llama, "--strategy", "cosine", "--reference", "missing.onnx"], 1, &["missing.onnx"]),
        (&["profile", &llama, "--data", "empty.jsonl", "-o", "e.safetensors"], 1, &["empty.jsonl", "no tokens"]),
        (&["compile", &llama, "-o", "out", "--data", "empty.jsonl"], 1, &["empty.jsonl"]),
    ];
    for (args, code, want) in cases {
        let o = neft(args, dir.path());
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {err}");
        for w in *want {
            assert!(err.contains(w), "{args:?}: {err:?} should mention {w:?}");
        }
    }
    let mut left: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    left.sort();
    assert_eq!(left, ["calib.jsonl", "empty.jsonl", "p.safetensors"], "failed commands left files behind");
}

#[test]
fn cuda_without_its_libraries_fails_loudly_wherever_the_model_runs_on_data() {
    // This machine has the CPU build of ONNX Runtime: every command that runs the model
    // on calibration data must refuse --ep cuda with the libraries named, as `neft train`
    // does, and write nothing (never profile on the CPU instead).
    let dir = tempfile::tempdir().unwrap();
    calibration(dir.path());
    let llama = repo("models/fixtures/tiny_llama.onnx");
    let data = ["--data", "calib.jsonl", "--ep", "cuda"];
    let runs: &[&[&str]] = &[
        &["profile", &llama, "-o", "p.safetensors"],
        &["select", &llama, "--strategy", "activation", "-o", "a.json"],
        &["select", &llama, "--strategy", "gradient", "-o", "g.json"],
        &["compile", &llama, "-o", "out", "--threads", "1"],
    ];
    for args in runs {
        let o = neft(&[*args, &data[..]].concat(), dir.path());
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        for want in ["CUDA execution provider could not be registered", "libonnxruntime_providers_cuda.so"] {
            assert!(err.contains(want), "{args:?}: {err:?} should mention {want:?}");
        }
    }
    let left: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert_eq!(left, ["calib.jsonl"], "failed commands left files behind");
    let bad = neft(&["profile", &llama, "--data", "calib.jsonl", "--ep", "gpu"], dir.path());
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).1.contains("use cpu, cuda or cuda:N"), "{}", text(&bad).1);
}
