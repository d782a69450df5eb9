//! Checks a Llama built by `neft build-model` against facts nobody here computed:
//! the tokenizer's ids for a known sentence, the sentence's perplexity, and a greedy
//! answer to a chat question.
//!
//! ```text
//! cargo run --release --example llm_check -- DIR [--expect-ppl 55.24]
//! ```
//! DIR holds model.onnx, tokenizer.json and tokenizer_config.json (from
//! `neft build-model llama --gguf SmolLM2-135M-Instruct.Q4_1.gguf -o DIR`). Exits 1 if a
//! check fails.

use neft::runtime::ort::{HostTensor, Session, SessionOptions};
use std::path::Path;

const FOX: &str = "The quick brown fox jumps over the lazy dog.";
const FOX_IDS: [u32; 10] = [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30];

fn logits(s: &mut Session, ids: &[u32]) -> Vec<f32> {
    let x: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let out = s.run(&[("input_ids", HostTensor::i64(&[1, x.len()], x))]).unwrap();
    out.into_iter().find(|(n, _)| n == "logits").unwrap().1.as_f32().unwrap().iter().copied().collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = Path::new(args.first().expect("usage: llm_check DIR [--expect-ppl X]"));
    let expect_ppl: Option<f64> = args.iter().position(|a| a == "--expect-ppl").map(|i| args[i + 1].parse().unwrap());
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let mut session = Session::from_file(&dir.join("model.onnx"), &SessionOptions::default()).unwrap();
    let mut ok = true;

    let ids = tok.encode(FOX, false).unwrap().get_ids().to_vec();
    let same = ids == FOX_IDS;
    ok &= same;
    println!("tokenizer: {FOX:?} -> {ids:?} {}", if same { "PASS" } else { "FAIL" });

    // Perplexity over the 9 tokens that have a predecessor (no BOS).
    let vocab = tok.get_vocab_size(true);
    let l = logits(&mut session, &ids);
    let mut nll = 0.0f64;
    for t in 0..ids.len() - 1 {
        let row = &l[t * vocab..(t + 1) * vocab];
        let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        nll += lse - row[ids[t + 1] as usize] as f64;
    }
    let ppl = (nll / (ids.len() - 1) as f64).exp();
    print!("perplexity of the sentence: {ppl:.3}");
    if let Some(want) = expect_ppl {
        let close = (ppl - want).abs() <= 0.01 * want;
        ok &= close;
        print!(" (expected {want}: {})", if close { "PASS" } else { "FAIL" });
    }
    println!("\nfirst logits: {:?}", &l[..5]);

    // Greedy answer to the chat-formatted question (SmolLM2's template, default system prompt).
    let prompt = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                  <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let mut seq = tok.encode(prompt, false).unwrap().get_ids().to_vec();
    let start = seq.len();
    let end = tok.token_to_id("<|im_end|>");
    for _ in 0..20 {
        let l = logits(&mut session, &seq);
        let last = &l[(seq.len() - 1) * vocab..seq.len() * vocab];
        let next = last.iter().enumerate().max_by(|a, b| a.1.partial_cmp(b.1).unwrap()).unwrap().0 as u32;
        if Some(next) == end {
            break;
        }
        seq.push(next);
    }
    let answer = tok.decode(&seq[start..], true).unwrap();
    let paris = answer.contains("Paris");
    ok &= paris;
    println!("answer: {answer:?} {}", if paris { "PASS" } else { "FAIL" });
    std::process::exit(if ok { 0 } else { 1 });
}
