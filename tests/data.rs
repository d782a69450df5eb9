//! Data files: every accepted shape, clear errors naming file and line, labels that
//! mask prompts and padding, and seeded shuffling.

use neft::data::{read_jsonl, tokenize, Batch, Batcher, Encode, Example, Field};

/// One token per byte: enough to check labels and padding by hand.
struct Bytes;

impl Encode for Bytes {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<i64>> {
        Ok(text.bytes().map(|b| b as i64).collect())
    }
    fn eos(&self) -> Option<i64> {
        Some(2)
    }
}

fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn every_shape_reads_and_prompts_are_masked() {
    let (_d, path) = write("{\"text\":\"hi\"}\n\n{\"prompt\":\"ab\",\"completion\":\"c\"}\n{\"input_ids\":[5,6,7],\"labels\":[-100,6,7]}\n{\"input_ids\":[9]}\n");
    let ex = read_jsonl(&path).unwrap();
    assert_eq!(ex.len(), 4);
    assert_eq!(ex[1], Example::PromptCompletion { prompt: "ab".into(), completion: "c".into() }.into());
    let t = tokenize(&ex, Some(&Bytes), 16).unwrap();
    assert_eq!(t[0].input_ids, [104, 105, 2]);
    assert_eq!(t[0].labels, [104, 105, 2]);
    assert_eq!(t[1].input_ids, [97, 98, 99, 2]);
    assert_eq!(t[1].labels, [-100, -100, 99, 2], "loss on the completion only");
    assert_eq!(t[2].labels, [-100, 6, 7]);
    assert_eq!(t[3].labels, [9]);
    let cut = tokenize(&ex, Some(&Bytes), 2).unwrap();
    assert!(cut.iter().all(|e| e.input_ids.len() <= 2 && e.labels.len() == e.input_ids.len()));
}

#[test]
fn bad_lines_name_the_file_and_line() {
    let cases = [
        ("{\"text\":\"ok\"}\n{\"text\": 3}\n", ":2:"),
        ("{\"text\":\"ok\"}\nnot json\n", ":2:"),
        ("{\"prompt\":\"only a prompt\"}\n", ":1:"),
        ("{\"text\":\"a\",\"extra\":\"b\"}\n", ":1:"),
        ("{\"input_ids\":[1],\"pixel_values\":[[1,2],[3]]}\n", ":1:"),
        ("{\"labels\":[1]}\n", ":1:"),
        ("{\"input_ids\":[1,2],\"labels\":[1]}\n", ":1:"),
        ("{\"input_ids\":[]}\n", ":1:"),
    ];
    for (text, at) in cases {
        let (_d, path) = write(text);
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("d.jsonl{at}")), "{text:?}: {err}");
    }
    let (_d, empty) = write("\n\n");
    assert!(read_jsonl(&empty).unwrap_err().to_string().contains("no examples"));
    let (_d, text) = write("{\"text\":\"x\"}\n");
    let err = tokenize(&read_jsonl(&text).unwrap(), None, 8).unwrap_err().to_string();
    assert!(err.contains("tokenizer"), "{err}");
}

#[test]
fn batches_pad_with_ignored_labels_and_shuffle_by_seed() {
    let (_d, path) =
        write("{\"input_ids\":[1,2,3]}\n{\"input_ids\":[4]}\n{\"input_ids\":[5,6]}\n{\"input_ids\":[7,8,9,10]}\n");
    let t = tokenize(&read_jsonl(&path).unwrap(), None, 8).unwrap();
    let first = |seed| Batcher::new(&t, 2, 0, seed).next_batch().unwrap();
    assert_eq!(first(1), first(1), "same seed, same batches");
    let epoch = |seed| {
        let mut b = Batcher::new(&t, 4, 0, seed);
        b.next_batch().unwrap().input_ids.into_i64()
    };
    assert_ne!(epoch(1), epoch(2), "another seed, another order");
    let mut b = Batcher::new(&t, 4, 0, 3);
    let batch = b.next_batch().unwrap();
    assert_eq!(batch.input_ids.shape(), [4, 4]);
    let (ids, labels) = (batch.input_ids.into_i64(), batch.labels.into_i64());
    for (i, l) in ids.iter().zip(&labels) {
        assert!(*l == *i || (*l == -100 && *i == 0), "padding must carry label -100");
    }
    assert_eq!(batch.tokens, 2 + 0 + 1 + 3, "counted labels after the shift");
}

#[test]
fn classification_lines_carry_one_class_and_batch_it_per_row() {
    let (_d, path) = write("{\"text\":\"hi\",\"label\":2}\n{\"input_ids\":[5,6,7],\"label\":0}\n");
    let ex = read_jsonl(&path).unwrap();
    let t = tokenize(&ex, Some(&Bytes), 16).unwrap();
    assert_eq!((t[0].input_ids.clone(), t[0].class), (vec![104, 105], Some(2)), "no end-of-sequence appended");
    assert_eq!(t[1].labels, [-100, -100, -100], "no token counts in a per-row loss");
    let b = Batch::new(&t.iter().collect::<Vec<_>>(), 0).unwrap();
    assert_eq!(b.classes, Some(neft::runtime::ort::HostTensor::i64(&[2], vec![2, 0])));
    assert_eq!((b.tokens, b.lengths.clone()), (2, vec![2, 3]));
    for bad in ["{\"text\":\"a\",\"input_ids\":[1],\"label\":1}", "{\"input_ids\":[1],\"labels\":[1],\"label\":1}"] {
        let (_d, path) = write(bad);
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains(":1:") && err.contains("\"label\": class"), "{err}");
    }
}

#[test]
fn other_fields_are_named_tensors_stacked_per_batch() {
    // An image beside the tokens, a per-token field, and lines of tensors alone.
    let (_d, path) = write(concat!(
        "{\"input_ids\":[1,2,3],\"pixel_values\":[[0.5,1],[2,3]],\"weights\":[1,1,0]}\n",
        "{\"input_ids\":[4],\"pixel_values\":[[4,5],[6,7]],\"weights\":[2]}\n",
    ));
    let t = tokenize(&read_jsonl(&path).unwrap(), None, 2).unwrap();
    assert_eq!(t[0].fields["weights"].values, [1.0, 1.0], "a per-token field is cut with its ids");
    let b = Batch::new(&t.iter().collect::<Vec<_>>(), 0).unwrap();
    assert_eq!(b.fields["pixel_values"], Field { shape: vec![2, 2, 2], values: vec![0.5, 1., 2., 3., 4., 5., 6., 7.] });
    assert_eq!(b.fields["weights"], Field { shape: vec![2, 2], values: vec![1., 1., 2., 0.] }, "padded like the ids");

    let (_d, path) = write("{\"x\":[1,2],\"target\":3}\n{\"x\":[3,4],\"target\":0}\n{\"x\":[5,6],\"target\":1}\n");
    let t = tokenize(&read_jsonl(&path).unwrap(), None, 8).unwrap();
    let b = Batch::new(&t.iter().collect::<Vec<_>>(), 0).unwrap();
    assert_eq!(b.fields["x"].shape, [3, 2]);
    assert_eq!(b.fields["target"], Field { shape: vec![3], values: vec![3., 0., 1.] });
    assert_eq!(b.tokens, 3, "lines without tokens count one each");

    let (_d, path) = write("{\"x\":[1,2]}\n{\"x\":[3]}\n");
    let err = tokenize(&read_jsonl(&path).unwrap(), None, 8).unwrap_err().to_string();
    assert!(err.contains("\"x\" has shape [2] on example 1 and [1] on example 2"), "{err}");
    let (_d, path) = write("{\"x\":[1,2]}\n{\"y\":[3,4]}\n");
    let err = tokenize(&read_jsonl(&path).unwrap(), None, 8).unwrap_err().to_string();
    assert!(err.contains("\"x\" is on example 1 but not on example 2"), "{err}");
}
