//! The translation demo's pieces on data made here: the completion loss it reports
//! equals the loss of the compiled training graph, batched greedy decoding equals
//! decoding each prompt alone (and the argmax of the full logits), the task's split is
//! deterministic and disjoint, and `neft demo` without its downloads says what to run.

mod train_support;

use neft::data::{tokenize, Batch, Encode, Example, Record};
use neft::demo::evaluate::{completion_loss, Greedy};
use neft::demo::translation::{Sources, Task, TaskSize};
use neft::runtime::ort::{HostTensor, Session, SessionOptions};
use std::collections::HashSet;
use std::path::Path;
use train_support::*;

/// Text as bytes folded into the tiny Llama's 128-token vocabulary.
struct Bytes;
impl Encode for Bytes {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<i64>> {
        Ok(text.bytes().map(|b| (b % 126) as i64 + 2).collect())
    }
    fn eos(&self) -> Option<i64> {
        Some(1)
    }
}

fn examples() -> Vec<Example> {
    [("Translate: good morning\nOut:", " mwadzuka bwanji"), ("Translate: water\nOut:", " madzi"), ("Hi", " moni")]
        .iter()
        .map(|(p, c)| Example::PromptCompletion { prompt: p.to_string(), completion: c.to_string() })
        .collect()
}

#[test]
fn completion_loss_equals_the_compiled_graphs_loss() {
    let dir = tempfile::tempdir().unwrap();
    let out = compile_llama(dir.path(), "out", &[("val_244", 1, vec![3, 10, 40])], &[]);
    let ex = examples();
    let (loss, tokens) = completion_loss(&llama_path(), &Bytes, &ex, 2, 64, &SessionOptions::default()).unwrap();

    let records: Vec<Record> = ex.iter().cloned().map(Record::from).collect();
    let tokenized = tokenize(&records, Some(&Bytes), 64).unwrap();
    let batch = Batch::new(&tokenized.iter().collect::<Vec<_>>(), Bytes.pad()).unwrap();
    assert_eq!(tokens, batch.tokens, "completion tokens counted (prompt masked, end-of-sequence included)");
    let mut session = neft::train::TrainSession::open(&out, &SessionOptions::default()).unwrap();
    let graph_loss = session.eval(&batch.feed()).unwrap() as f64;
    assert!((loss - graph_loss).abs() <= 1e-5 * graph_loss.abs(), "host {loss} vs graph {graph_loss}");
}

fn argmax_continuation(model: &Path, prompt: &[i64], n: usize) -> Vec<i64> {
    let mut s = Session::from_file(model, &SessionOptions::default()).unwrap();
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let out = s.run(&[("input_ids", HostTensor::i64(&[1, seq.len()], seq.clone()))]).unwrap();
        let logits = out.into_iter().find(|(n, _)| n == "logits").unwrap().1;
        let l = logits.as_f32().unwrap();
        let vocab = l.shape()[2];
        let last = &l.as_slice().unwrap()[(seq.len() - 1) * vocab..];
        let best = (0..vocab).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        seq.push(best as i64);
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn batched_greedy_decoding_equals_decoding_each_prompt_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.onnx");
    std::fs::copy(llama_path(), &model).unwrap();
    let prompts: Vec<Vec<i64>> = vec![vec![5, 9, 13, 17, 21, 25, 29], vec![40, 3], vec![7, 7, 7, 100, 2]];
    let mut greedy = Greedy::open(&model, &SessionOptions::default()).unwrap();
    assert!(dir.path().join("tiny.greedy.onnx").is_file(), "the wrapper is written beside the model");
    let none = HashSet::new();
    let together = greedy.generate(&prompts, 6, &none, 0).unwrap();
    for (p, t) in prompts.iter().zip(&together) {
        assert_eq!(t, &greedy.generate(&[p.clone()], 6, &none, 0).unwrap()[0], "prompt {p:?}");
        assert_eq!(t, &argmax_continuation(&model, p, 6), "prompt {p:?} against the full logits");
    }
    // A stop token ends a row without being kept; other rows go on.
    let tok = *together[1].last().unwrap();
    let first = together[1].iter().position(|&t| t == tok).unwrap();
    let stopped = greedy.generate(&prompts, 6, &[tok].into(), 0).unwrap();
    assert_eq!(stopped[1], together[1][..first].to_vec());
}

/// A Bible of 66 one-chapter books with five verses each, English and "Chichewa".
fn write_bible(root: &Path) -> Sources {
    let mut kjv = String::new();
    for book in 1..=66 {
        let dir = root.join("chichewa").join(book.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let ny: Vec<String> = (1..=5).map(|v| format!("vesi {v} la buku {book}")).collect();
        std::fs::write(dir.join("1.json"), serde_json::to_string(&ny).unwrap()).unwrap();
        for v in 1..=5 {
            let words =
                if v == 5 { "a very long verse with far too many words to be kept here" } else { "short verse" };
            let line = serde_json::json!({"book": format!("Book{book}"), "chapter": 1, "verse": v, "text": format!("{words} {v} of {book}")});
            kjv += &format!("{line}\n");
        }
    }
    std::fs::write(root.join("kjv.jsonl"), kjv).unwrap();
    Sources { kjv: root.join("kjv.jsonl"), chichewa: root.join("chichewa") }
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(String::from).collect()
}

#[test]
fn the_task_split_is_deterministic_disjoint_and_keeps_short_verses() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_bible(dir.path());
    let size = TaskSize { max_words: 6, calibration: 10, eval: 8, translate: 4, test_per_mille: 100, validation: 0 };
    let a = Task::prepare(&src, &size, &dir.path().join("a")).unwrap();
    let b = Task::prepare(&src, &size, &dir.path().join("b")).unwrap();
    assert_eq!(a.all_pairs, 330);
    for (x, y) in [(&a.train, &b.train), (&a.eval, &b.eval), (&a.calibration, &b.calibration)] {
        assert_eq!(lines(x), lines(y), "same split twice");
    }
    let (train, eval, calib) = (lines(&a.train), lines(&a.eval), lines(&a.calibration));
    assert_eq!(eval.len(), 8);
    assert_eq!(calib.len(), 10);
    assert_eq!(train.len(), a.train_count);
    assert!(train.len() > 200 && train.len() < 264, "about 90% of the 264 short verses: {}", train.len());
    assert!(eval.iter().all(|l| !train.contains(l)), "held-out verses never train");
    assert!(calib.iter().all(|l| train.contains(l)), "calibration comes from the training side");
    assert!(train.iter().chain(&eval).all(|l| !l.contains("too many words")), "long verses left out");
    let first: serde_json::Value = serde_json::from_str(&eval[0]).unwrap();
    assert!(first["prompt"].as_str().unwrap().starts_with("Translate English to Chichewa: "));
    assert!(first["prompt"].as_str().unwrap().ends_with("\nChichewa:"));
    assert!(first["completion"].as_str().unwrap().starts_with(" vesi "));
    assert_eq!(a.translate.len(), 4);
    assert!(lines(&a.validation).is_empty(), "no validation set unless asked");

    // A validation set comes out of the training side: disjoint from training and test.
    let c = Task::prepare(&src, &TaskSize { validation: 20, ..size }, &dir.path().join("c")).unwrap();
    let (val, train_c) = (lines(&c.validation), lines(&c.train));
    assert_eq!(val.len(), 20);
    assert_eq!(train_c.len() + 20, train.len(), "validation verses leave the training file");
    assert!(val.iter().all(|l| train.contains(l) && !train_c.contains(l) && !eval.contains(l)));
}

#[test]
fn the_demo_without_its_downloads_says_what_to_run_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = neft(&["demo", "--cache", "no-cache", "-o", "d"], dir.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bash .ci/setup --demo"), "{}", stderr(&out));
    assert!(!dir.path().join("d").exists());
    // A bad budget is refused before anything runs.
    let out = neft(&["demo", "--budget", "200%", "-o", "d"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("at most 100%"), "{}", stderr(&out));
    assert!(!dir.path().join("d").exists());
    // A folder the demo did not write is never replaced.
    std::fs::create_dir_all(dir.path().join("mine")).unwrap();
    std::fs::write(dir.path().join("mine/keep.txt"), "precious").unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("smollm2")).unwrap();
    std::fs::write(cache.join(neft::demo::GGUF_FILE), b"").unwrap();
    write_bible(&cache.join("bible"));
    let out = neft(&["demo", "--cache", "cache", "-o", "mine"], dir.path());
    assert!(stderr(&out).contains("was not written by `neft demo`"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(dir.path().join("mine/keep.txt")).unwrap(), "precious");
}
