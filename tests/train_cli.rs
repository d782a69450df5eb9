//! `neft train` as users run it, on the tiny PyTorch Llama and ORT's CPU provider:
//! exact resume, refused checkpoints, the divergence guard, bad data, Ctrl-C, and a
//! loss that falls when 6% of the neurons train.

mod train_support;

use std::path::Path;
use train_support::*;

/// A few rows of attention and MLP layers of both blocks (plain SGD-friendly sizes).
fn some_neurons() -> Vec<(&'static str, usize, Vec<usize>)> {
    vec![("val_109", 1, vec![0, 5, 9]), ("val_244", 1, vec![3, 10, 40]), ("val_381", 1, vec![1, 2])]
}

fn data(dir: &Path) {
    write_lines(&dir.join("train.jsonl"), &pattern_lines(24, 16, 8, 1));
    write_lines(&dir.join("eval.jsonl"), &pattern_lines(6, 16, 8, 2));
}

fn train(dir: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["train", out, "--data", "train.jsonl", "--batch", "4", "--threads", "1"];
    args.extend_from_slice(extra);
    neft(&args, dir)
}

#[test]
fn ten_steps_equal_five_steps_then_a_resume_of_five_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    data(dir);
    let out = compile_llama(dir, "art", &some_neurons(), &["--lr", "1e-2"]);
    let eval = ["--eval", "eval.jsonl", "--checkpoint-every", "3"];

    let straight = train(dir, "art", &[&["--steps", "10"][..], &eval].concat());
    assert!(straight.status.success(), "{}", stderr(&straight));
    let ten = load_state(&out.join("checkpoint.safetensors"));
    let straight_metrics = metrics(&out);

    // A fresh run starts over from the compiled state (state.safetensors is untouched).
    let first = train(dir, "art", &[&["--steps", "5"][..], &eval].concat());
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(step_of(&load_state(&out.join("checkpoint.safetensors"))), 5);
    let second = train(dir, "art", &[&["--steps", "10", "--resume", "--json"][..], &eval].concat());
    assert!(second.status.success(), "{}", stderr(&second));
    let resumed = load_state(&out.join("checkpoint.safetensors"));
    assert_same_bits(&ten, &resumed, "10 steps vs 5 + resume + 5");
    assert_eq!(step_of(&resumed), 10);

    // The log continues where the checkpoint stopped, with the same losses.
    let log = metrics(&out);
    let steps: Vec<u64> = log.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>());
    for (a, b) in log.iter().zip(&straight_metrics) {
        assert_eq!(a["loss"], b["loss"], "step {}", a["step"]);
        if a.get("eval_loss").is_some() && b.get("eval_loss").is_some() {
            assert_eq!(a["eval_loss"], b["eval_loss"], "step {}", a["step"]);
        }
    }
    let evaluated: Vec<u64> =
        log.iter().filter(|r| r.get("eval_loss").is_some()).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(evaluated, [3, 5, 6, 9, 10], "eval at every checkpoint and at the end of each run");
    let summary: serde_json::Value = serde_json::from_str(&stdout(&second)).unwrap();
    assert_eq!(
        (summary["status"].as_str(), summary["start_step"].as_u64(), summary["step"].as_u64()),
        (Some("completed"), Some(5), Some(10))
    );
    let ppl = summary["eval_perplexity"].as_f64().unwrap();
    assert!((ppl - summary["eval_loss"].as_f64().unwrap().exp()).abs() < 1e-9 * ppl);
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{svg}");
    assert!(stderr(&second).is_empty(), "--json prints no progress: {}", stderr(&second));

    // Resuming at the target does nothing.
    let again = train(dir, "art", &["--steps", "10", "--resume"]);
    assert!(again.status.success() && stdout(&again).contains("nothing to do"), "{}", stdout(&again));
    assert_same_bits(&resumed, &load_state(&out.join("checkpoint.safetensors")), "after a no-op resume");
}

/// `--schedule linear --warmup 2` over 6 steps at 1e-2, by the `transformers` formula
/// λ(s) = s/2 for s < 2, else (6 − s)/4, s = steps done before: 0, 0.5, 1, 0.75, 0.5,
/// 0.25. Logged per step, and a resume mid-schedule gives the same bits.
#[test]
fn a_linear_schedule_with_warmup_is_logged_per_step_and_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    data(dir);
    let out = compile_llama(dir, "art", &some_neurons(), &["--lr", "1e-2"]);
    let sched = ["--schedule", "linear", "--warmup", "2"];
    let straight = train(dir, "art", &[&["--steps", "6", "--json"][..], &sched].concat());
    assert!(straight.status.success(), "{}", stderr(&straight));
    let whole = load_state(&out.join("checkpoint.safetensors"));
    let lrs: Vec<f64> = metrics(&out).iter().map(|r| r["lr"].as_f64().unwrap()).collect();
    let want = [0.0, 5e-3, 1e-2, 7.5e-3, 5e-3, 2.5e-3];
    assert_eq!(lrs.len(), want.len());
    for (got, want) in lrs.iter().zip(want) {
        assert!((got - want).abs() <= 1e-9, "lr per step {lrs:?}, want {want:?}");
    }
    let summary: serde_json::Value = serde_json::from_str(&stdout(&straight)).unwrap();
    assert_eq!((summary["schedule"].as_str(), summary["warmup"].as_u64()), (Some("linear"), Some(2)));
    assert_eq!(summary["lr"].as_f64().unwrap() as f32, 1e-2);

    // Interrupted after 3 steps (the checkpoint records the schedule), then resumed
    // without repeating the flags.
    let first = train(dir, "art", &[&["--steps", "6", "--checkpoint-every", "3"][..], &sched].concat());
    assert!(first.status.success(), "{}", stderr(&first));
    let log = metrics(&out);
    std::fs::copy(out.join("checkpoint.prev.safetensors"), out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(step_of(&load_state(&out.join("checkpoint.safetensors"))), 3);
    let second = train(dir, "art", &["--steps", "6", "--resume"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_same_bits(&whole, &load_state(&out.join("checkpoint.safetensors")), "6 steps vs 3 + resume + 3");
    let resumed: Vec<f64> = metrics(&out).iter().map(|r| r["lr"].as_f64().unwrap()).collect();
    assert_eq!(resumed, lrs);
    assert_eq!(log.len(), 6);

    // Another schedule or another total would not continue the same curve.
    let o = train(dir, "art", &["--steps", "6", "--resume", "--schedule", "cosine"]);
    assert!(!o.status.success() && stderr(&o).contains("--schedule cosine"), "{}", stderr(&o));
    std::fs::copy(out.join("checkpoint.prev.safetensors"), out.join("checkpoint.safetensors")).unwrap();
    let o = train(dir, "art", &["--steps", "9", "--resume"]);
    assert!(!o.status.success() && stderr(&o).contains("spans 6 steps"), "{}", stderr(&o));
}

#[test]
fn corrupted_and_foreign_checkpoints_and_changed_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    data(dir);
    let a = compile_llama(dir, "a", &some_neurons(), &[]);
    let b = compile_llama(dir, "b", &[("val_109", 1, vec![0, 5, 9])], &[]);
    assert!(train(dir, "a", &["--steps", "2"]).status.success());
    assert!(train(dir, "b", &["--steps", "2"]).status.success());
    let good = std::fs::read(a.join("checkpoint.safetensors")).unwrap();

    let refused = |args: &[&str], want: &[&str]| {
        let o = train(dir, "a", args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        for w in want {
            assert!(stderr(&o).contains(w), "{args:?}: {:?} should mention {w:?}", stderr(&o));
        }
    };
    refused(&["--steps", "4", "--resume", "--seed", "7"], &["--seed 7", "checkpoint's 0"]);
    refused(&["--steps", "4", "--resume", "--seq-len", "8"], &["--seq-len 8", "checkpoint's 512"]);

    std::fs::copy(b.join("checkpoint.safetensors"), a.join("checkpoint.safetensors")).unwrap();
    refused(&["--steps", "4", "--resume"], &["checkpoint.safetensors", "plan"]);

    std::fs::write(a.join("checkpoint.safetensors"), &good[..good.len() / 2]).unwrap();
    refused(&["--steps", "4", "--resume"], &["checkpoint.safetensors", "corrupted"]);

    std::fs::remove_file(a.join("checkpoint.safetensors")).unwrap();
    refused(&["--steps", "4", "--resume"], &["no checkpoint to resume from"]);
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    data(dir);
    // SGD on ten columns of the output head: a huge learning rate overflows the logits.
    let out = compile_llama(dir, "art", &[("val_386", 1, (0..10).collect())], &["--optimizer", "sgd", "--lr", "1e-2"]);
    let ok = train(dir, "art", &["--steps", "3", "--checkpoint-every", "1"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let good = load_state(&out.join("checkpoint.safetensors"));

    // Step 4 moves the rows by ~1e38 (still finite, so it is checkpointed); step 5's
    // loss on that state is NaN: the checkpoint of step 4 is the diverged state and
    // step 3's comes back.
    let bad = train(dir, "art", &["--steps", "10", "--checkpoint-every", "1", "--resume", "--lr", "1e38"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    let err = stderr(&bad);
    for want in ["diverged at step 5", "NaN", "still holds step 3", "--lr"] {
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
    let kept = load_state(&out.join("checkpoint.safetensors"));
    assert_same_bits(&good, &kept, "the checkpoint after divergence");
    assert!(!out.join("checkpoint.prev.safetensors").exists());
    let log = metrics(&out);
    assert_eq!(log.len(), 5);
    assert!(log[4]["loss"].is_null(), "the diverged step is logged with a null loss: {}", log[4]);

    // Resuming from the kept checkpoint at a sane rate works.
    let again = train(dir, "art", &["--steps", "5", "--resume"]);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn a_bad_data_line_names_file_and_line_and_nothing_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    data(dir);
    let out = compile_llama(dir, "art", &some_neurons(), &[]);
    let before = std::fs::read_dir(&out).unwrap().count();
    let mut lines = pattern_lines(4, 8, 8, 3);
    lines.insert(2, r#"{"input_ids": [1, 2, "three"]}"#.into());
    write_lines(&dir.join("bad.jsonl"), &lines);
    let cases: [(&[&str], &str); 4] = [
        (&["--data", "bad.jsonl"], "bad.jsonl:3"),
        (&["--data", "train.jsonl", "--eval", "bad.jsonl"], "bad.jsonl:3"),
        (&["--data", "missing.jsonl"], "missing.jsonl"),
        (&["--data", "text.jsonl"], "--tokenizer"),
    ];
    std::fs::write(dir.join("text.jsonl"), "{\"text\": \"hello\"}\n").unwrap();
    for (args, want) in cases {
        let o = neft(&[&["train", "art", "--steps", "2"][..], args].concat(), dir);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {:?} should mention {want:?}", stderr(&o));
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), before, "{args:?}: a file was written");
    }
}

#[test]
fn the_loss_falls_when_six_percent_of_the_neurons_train() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_lines(&dir.join("train.jsonl"), &pattern_lines(32, 24, 8, 4));
    // 38 of the tiny Llama's 640 neurons (5.9%): MLP rows of both blocks, attention
    // output rows, down-projection outputs, and the head columns of tokens 0..9 (the
    // frozen head's logits are too small to express the pattern on their own).
    let spread = |n: usize, k: usize| (0..k).map(|i| i * n / k).collect::<Vec<_>>();
    let neurons = vec![
        ("val_244", 1, spread(64, 8)),
        ("val_380", 1, spread(64, 8)),
        ("val_237", 1, spread(32, 4)),
        ("val_373", 1, spread(32, 4)),
        ("val_381", 1, spread(32, 4)),
        ("val_386", 1, (0..10).collect()),
    ];
    let out = compile_llama(dir, "art", &neurons, &["--lr", "2e-2"]);
    let plan = neft::artifact::Plan::load(&out.join("plan.json")).unwrap();
    assert_eq!((plan.counts.neurons_selected, plan.counts.neurons_total), (38, 640));
    let o = train(dir, "art", &["--steps", "40", "--checkpoint-every", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let losses: Vec<f64> = metrics(&out).iter().map(|r| r["loss"].as_f64().unwrap()).collect();
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[35..].iter().sum::<f64>() / 5.0;
    assert!(head > 2.5 && tail < 0.5, "the loss should fall clearly: first steps {head:.3}, last steps {tail:.3}");
    assert!(stdout(&o).contains("completed: steps 0..40 of 40"), "{}", stdout(&o));
}

#[test]
fn ctrl_c_writes_a_checkpoint_that_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    data(dir);
    let out = compile_llama(dir, "art", &some_neurons(), &[]);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_neft"))
        .args(["train", "art", "--data", "train.jsonl", "--batch", "4", "--threads", "1", "--steps", "1000000"])
        .args(["--checkpoint-every", "0"])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |m| m.lines().count()) < 3 {
        assert!(std::time::Instant::now() < deadline, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    let state = load_state(&out.join("checkpoint.safetensors"));
    let logged = metrics(&out).len() as i64;
    assert_eq!(step_of(&state), logged, "the checkpoint holds the last logged step");
    let more = train(dir, "art", &["--steps", &(logged + 2).to_string(), "--resume"]);
    assert!(more.status.success(), "{}", stderr(&more));
    assert_eq!(step_of(&load_state(&out.join("checkpoint.safetensors"))), logged + 2);
}

/// A word-level `tokenizer.json`: `</s>` is 1, the words follow.
fn word_tokenizer(path: &Path, words: &[&str]) {
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), 0.into());
    vocab.insert("</s>".into(), 1.into());
    for (i, w) in words.iter().enumerate() {
        vocab.insert(w.to_string(), (i + 2).into());
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(path, json.to_string()).unwrap();
}

#[test]
fn text_and_prompt_completion_lines_train_through_a_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    word_tokenizer(&dir.join("tokenizer.json"), &["one", "two", "three", "four"]);
    compile_llama(dir, "art", &some_neurons(), &[]);
    // Prompts count nothing; a completion counts its words and the end-of-sequence token.
    std::fs::write(dir.join("pc.jsonl"), "{\"prompt\": \"one two\", \"completion\": \"three four\"}\n".repeat(4))
        .unwrap();
    std::fs::write(dir.join("text.jsonl"), "{\"text\": \"one two three\"}\n".repeat(4)).unwrap();
    for (file, tokens) in [("pc.jsonl", 4 * 3), ("text.jsonl", 4 * 3)] {
        let o = neft(&["train", "art", "--data", file, "--tokenizer", "tokenizer.json", "--steps", "1", "--json"], dir);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(summary["tokens"].as_u64(), Some(tokens), "{file}: {summary}");
    }
    let bad = neft(&["train", "art", "--data", "text.jsonl", "--tokenizer", "pc.jsonl"], dir);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("pc.jsonl"), "{}", stderr(&bad));
}

#[test]
fn neft_ort_log_prints_the_runtime_s_node_placements_and_a_bad_level_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    data(dir);
    compile_llama(dir, "art", &some_neurons(), &[]);
    let run = |level: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_neft"))
            .args(["train", "art", "--data", "train.jsonl", "--batch", "4", "--threads", "1", "--steps", "1"])
            .env("NEFT_ORT_LOG", level)
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let verbose = run("verbose");
    assert!(verbose.status.success(), "{}", stderr(&verbose));
    assert!(stderr(&verbose).contains("All nodes placed on [CPUExecutionProvider]"), "{}", stderr(&verbose));
    let bad = run("loud");
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("NEFT_ORT_LOG=loud: use verbose, info, warning or error"), "{}", stderr(&bad));
}
