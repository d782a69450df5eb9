//! Checks the GGUF reader and tokenizer on the real SmolLM2-135M-Instruct file.
//!
//!     cargo run --release --example smollm2_check -- SmolLM2-135M-Instruct.Q4_1.gguf [--dump DIR]
//!
//! Prints the model's metadata, dequantizes every tensor (q/k unpermuted) with timing,
//! and checks the tokenizer against ids from the Hugging Face tokenizer; exits 1 on a
//! mismatch. `--dump DIR` also writes a few tensors as raw little-endian f32 (GGUF order,
//! not unpermuted; `.unpermuted` for the q projection) for comparison with Python's `gguf`.

use anyhow::{bail, Context};
use neft::models::gguf::{Gguf, Value};
use neft::models::tokenizer::GgufTokenizer;
use std::time::Instant;

const TEXT: &str = "The quick brown fox jumps over the lazy dog.";
const EXPECTED: [u32; 10] = [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30];
const DUMPED: [&str; 5] = [
    "token_embd.weight",
    "blk.0.attn_norm.weight",
    "blk.0.attn_q.weight",
    "blk.0.attn_k.weight",
    "blk.29.ffn_down.weight",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, dump) = match args.as_slice() {
        [path] => (path, None),
        [path, flag, dir] if flag == "--dump" => (path, Some(dir)),
        _ => bail!("usage: smollm2_check PATH.gguf [--dump DIR]"),
    };

    let t = Instant::now();
    let g = Gguf::open(path)?;
    println!(
        "opened {path} (GGUF v{}, {} keys, {} tensors) in {:.1?}",
        g.version,
        g.metadata.len(),
        g.tensors.len(),
        t.elapsed()
    );
    let arch = g.require("general.architecture", Value::as_str)?;
    let int = |k: &str| g.require(&format!("{arch}.{k}"), Value::as_u64);
    let float = |k: &str| g.require(&format!("{arch}.{k}"), Value::as_f64);
    println!(
        "arch {arch}, n_layer {}, n_embd {}, n_ff {}",
        int("block_count")?,
        int("embedding_length")?,
        int("feed_forward_length")?
    );
    println!("n_head {}, n_head_kv {}", int("attention.head_count")?, int("attention.head_count_kv")?);
    println!("rope theta {}, rms eps {:e}", float("rope.freq_base")?, float("attention.layer_norm_rms_epsilon")?);
    let vocab = g.require("tokenizer.ggml.tokens", Value::as_array)?.len();
    println!("vocab size {vocab}");

    let t = Instant::now();
    let (mut elements, mut types) = (0u64, std::collections::BTreeMap::new());
    for info in &g.tensors {
        let data = g.llama_weight(&info.name)?;
        elements += data.len() as u64;
        *types.entry(info.ggml_type.to_string()).or_insert(0) += 1;
        if let Some(bad) = data.iter().find(|x| !x.is_finite()) {
            bail!("tensor {} holds a non-finite value {bad}", info.name);
        }
    }
    println!("dequantized {} tensors ({elements} values, types {types:?}) in {:.2?}", g.tensors.len(), t.elapsed());

    if let Some(dir) = dump {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        for name in DUMPED {
            let raw = g.dequantize(g.tensor(name)?)?;
            write_f32(&format!("{dir}/{name}.f32"), &raw)?;
        }
        write_f32(&format!("{dir}/blk.0.attn_q.weight.unpermuted.f32"), &g.llama_weight("blk.0.attn_q.weight")?)?;
        println!("dumped {DUMPED:?} to {dir}");
    }

    let t = Instant::now();
    let tok = GgufTokenizer::from_gguf(&g)?;
    println!("tokenizer built in {:.2?} (bos {:?}, eos {:?}, pad {:?})", t.elapsed(), tok.bos, tok.eos, tok.pad);
    let ids = tok.encode(TEXT, true)?;
    let back = tok.decode(&ids, false)?;
    println!("encode {TEXT:?} -> {ids:?}");
    if ids == EXPECTED && back == TEXT {
        println!("PASS");
        Ok(())
    } else {
        println!("FAIL: expected {EXPECTED:?}, decoded back as {back:?}");
        std::process::exit(1);
    }
}

fn write_f32(path: &str, data: &[f32]) -> anyhow::Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {path}"))
}
