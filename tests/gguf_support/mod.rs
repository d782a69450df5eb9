//! Shared pieces of the GGUF tests: files written through neft's own GGUF writer, a
//! small byte-level BPE tokenizer, and a tiny Llama GGUF carrying it.
#![allow(dead_code)]

use neft::models::gguf::{GgmlType, Value, ValueType};
use neft::models::gguf_write::{write_gguf, GgufTensor};

pub fn tensor(name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> GgufTensor {
    GgufTensor { name: name.to_string(), dims: dims.to_vec(), ggml_type: ty, data }
}

/// A whole GGUF file in memory.
pub fn gguf_bytes(kvs: &[(&str, Value)], tensors: &[GgufTensor]) -> Vec<u8> {
    let kvs: Vec<(String, Value)> = kvs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut buf = vec![];
    write_gguf(&mut buf, &kvs, tensors).unwrap();
    buf
}

/// A GGUF string: length (u64) and bytes, for tests that write headers by hand.
pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the others
/// take U+0100 onwards in byte order (so space is 'Ġ', U+0120).
pub fn byte_chars() -> Vec<char> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut next = 0x100;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                b as char
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// ids: 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>, 3..259 the 256 bytes, then the
/// merged tokens.
pub const MERGED: [&str; 9] = ["he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "12"];
pub const MERGES: [&str; 9] = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "1 2"];
pub const SPECIALS: usize = 3;
pub const VOCAB: usize = SPECIALS + 256 + MERGED.len();

/// The tokenizer's metadata; end of sequence is `<|im_end|>` (2), as in SmolLM2-Instruct.
pub fn tokenizer_kvs(pre: &str, add_bos: bool) -> Vec<(&'static str, Value)> {
    let strings = |xs: Vec<String>| Value::Array(ValueType::String, xs.into_iter().map(Value::String).collect());
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    tokens.extend(byte_chars().iter().map(|c| c.to_string()));
    tokens.extend(MERGED.iter().map(|s| s.to_string()));
    let types = (0..tokens.len()).map(|i| Value::I32(if i < SPECIALS { 3 } else { 1 })).collect();
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(ValueType::I32, types)),
        ("tokenizer.ggml.merges", strings(MERGES.iter().map(|s| s.to_string()).collect())),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.padding_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(add_bos)),
        ("tokenizer.chat_template", Value::String("{{ messages }}".into())),
    ]
}

/// The dimensions of a test Llama.
#[derive(Debug, Clone, Copy)]
pub struct LlamaShape {
    pub hidden: u64,
    pub ffn: u64,
    pub layers: u32,
    pub heads: u64,
    pub kv_heads: u64,
}

/// Hidden 32, 2 blocks, 4 heads of which 2 key/value heads, MLP 64.
pub const TINY: LlamaShape = LlamaShape { hidden: 32, ffn: 64, layers: 2, heads: 4, kv_heads: 2 };

/// A tiny Llama ([`TINY`], tied head) in F32, seeded random weights, with the tokenizer above.
pub fn tiny_llama_gguf(seed: u64) -> Vec<u8> {
    llama_gguf(seed, TINY, &|_| GgmlType::F32)
}

/// A Llama GGUF of `shape` with the tokenizer above: norms F32, each matrix in the
/// type `ty` gives its name (F32 values, or random K-quant blocks whose f16 scales are
/// set small and finite).
pub fn llama_gguf(seed: u64, shape: LlamaShape, ty: &dyn Fn(&str) -> GgmlType) -> Vec<u8> {
    let LlamaShape { hidden: h, ffn: f, layers, heads, kv_heads: kv } = shape;
    let mut kvs = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny".into())),
        ("general.file_type", Value::U32(0)),
        ("llama.context_length", Value::U32(256)),
        ("llama.embedding_length", Value::U32(h as u32)),
        ("llama.feed_forward_length", Value::U32(f as u32)),
        ("llama.block_count", Value::U32(layers)),
        ("llama.attention.head_count", Value::U32(heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(kv as u32)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    kvs.extend(tokenizer_kvs("smollm", false));
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut matrix = |name: &str, dims: [u64; 2]| -> GgufTensor {
        let t = ty(name);
        let n = dims[0] * dims[1];
        let data: Vec<u8> = match t {
            GgmlType::F32 => (0..n)
                .flat_map(|_| {
                    let u = (next() >> 11) as f32 / (1u64 << 53) as f32;
                    ((u - 0.5) * 0.6).to_le_bytes()
                })
                .collect(),
            _ => {
                let (_, block, bytes) = t.traits().expect("a known type");
                let mut data: Vec<u8> = (0..n / block * bytes).map(|_| (next() >> 24) as u8).collect();
                let scale = half::f16::from_f32(2e-4).to_le_bytes();
                for b in data.chunks_exact_mut(bytes as usize) {
                    match t {
                        GgmlType::Q4_K | GgmlType::Q5_K => {
                            (b[0..2].copy_from_slice(&scale), b[2..4].copy_from_slice(&scale))
                        }
                        GgmlType::Q6_K => (b[208..210].copy_from_slice(&scale), ()),
                        other => panic!("no scale layout for {other} here"),
                    };
                }
                data
            }
        };
        tensor(name, &dims, t, data)
    };
    let v = VOCAB as u64;
    let mut tensors = vec![matrix("token_embd.weight", [h, v])];
    let hd = h / heads;
    let ones = |n: u64| (0..n).flat_map(|i| (1.0 + 0.01 * i as f32).to_le_bytes()).collect::<Vec<u8>>();
    for l in 0..layers {
        let t = |n: &str| format!("blk.{l}.{n}");
        tensors.push(tensor(&t("attn_norm.weight"), &[h], GgmlType::F32, ones(h)));
        tensors.push(matrix(&t("attn_q.weight"), [h, h]));
        tensors.push(matrix(&t("attn_k.weight"), [h, kv * hd]));
        tensors.push(matrix(&t("attn_v.weight"), [h, kv * hd]));
        tensors.push(matrix(&t("attn_output.weight"), [h, h]));
        tensors.push(tensor(&t("ffn_norm.weight"), &[h], GgmlType::F32, ones(h)));
        tensors.push(matrix(&t("ffn_gate.weight"), [h, f]));
        tensors.push(matrix(&t("ffn_up.weight"), [h, f]));
        tensors.push(matrix(&t("ffn_down.weight"), [f, h]));
    }
    tensors.push(tensor("output_norm.weight", &[h], GgmlType::F32, (0..h).flat_map(|_| 1f32.to_le_bytes()).collect()));
    gguf_bytes(&kvs, &tensors)
}
