//! GGUF reading and the GGUF tokenizer on tiny files written here by hand: block
//! dequantization against values worked out in comments, metadata round trips,
//! hostile files, the q/k unpermutation, and byte-level BPE encoding.

use neft::models::gguf::{permute_qk, unpermute_qk, GgmlType, Gguf, GgufError, Value, ValueType};
use neft::models::tokenizer::{tokenizer_json_from_gguf, GgufTokenizer};
use std::io::Write;

mod gguf_support;
use gguf_support::{gguf_bytes as write_gguf, put_str, tensor, tokenizer_kvs, MERGED, SPECIALS};

/// Writes `bytes` to a temporary file and opens it (the file may go once it is mapped).
fn open(bytes: &[u8]) -> Result<Gguf, GgufError> {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    Gguf::open(f.path())
}

fn dequant(g: &Gguf, name: &str) -> Vec<f32> {
    g.dequantize(g.tensor(name).unwrap()).unwrap()
}

fn f16_block(scales: &[u16], quants: &[u8]) -> Vec<u8> {
    scales.iter().flat_map(|s| s.to_le_bytes()).chain(quants.iter().copied()).collect()
}

// f16 bit patterns used below.
const HALF: u16 = 0x3800; // 0.5
const ONE: u16 = 0x3c00; // 1.0
const TWO: u16 = 0x4000; // 2.0
const MINUS_ONE: u16 = 0xbc00; // -1.0

/// Nibbles for 4-bit blocks: byte j holds q = j in its low nibble (element j) and
/// q = 15 - j in its high nibble (element 16 + j).
fn nibbles() -> Vec<u8> {
    (0..16u8).map(|j| j | (15 - j) << 4).collect()
}

// ---------------------------------------------------------------------------
// (1) Dequantization of each supported block type.

#[test]
fn dequantizes_every_supported_block_type() {
    let f32_data: Vec<u8> = [1.5f32, -2.0, 0.0, 3.25].iter().flat_map(|x| x.to_le_bytes()).collect();
    // f16 0x3c00 = 1.0, 0xc000 = -2.0, 0x3800 = 0.5, 0x7bff = 65504 (largest finite), 0x0001 = 2^-24.
    let f16_data: Vec<u8> = [0x3c00u16, 0xc000, 0x3800, 0x7bff, 0x0001].iter().flat_map(|x| x.to_le_bytes()).collect();
    // bf16 is the top 16 bits of an f32: 0x3f80 -> 0x3f800000 = 1.0, 0xc040 -> -3.0, 0x3fc0 -> 1.5.
    let bf16_data: Vec<u8> = [0x3f80u16, 0xc040, 0x3fc0].iter().flat_map(|x| x.to_le_bytes()).collect();
    // Q8_0, two blocks, q_i = i - 16 (i = 0..32): block 0 has d = 0.5 so x_i = 0.5 * (i - 16),
    // from -8.0 up to 7.5; block 1 has d = -1 so x_{32+i} = 16 - i, from 16 down to -15.
    let q8: Vec<u8> = (0..32).map(|i| (i as i8 - 16) as u8).collect();
    let q8_data = [f16_block(&[HALF], &q8), f16_block(&[MINUS_ONE], &q8)].concat();
    // Q4_0, d = 2: x = 2 * (q - 8); x_j = 2 * (j - 8) and x_{16+j} = 2 * (7 - j).
    let q4_0_data = f16_block(&[TWO], &nibbles());
    // Q4_1, d = 0.5, m = -1: x = 0.5 * q - 1; x_j = 0.5 * j - 1 and x_{16+j} = 0.5 * (15 - j) - 1.
    let q4_1_data = f16_block(&[HALF, MINUS_ONE], &nibbles());

    let file = write_gguf(
        &[],
        &[
            tensor("f32", &[4], GgmlType::F32, f32_data),
            tensor("f16", &[5], GgmlType::F16, f16_data),
            tensor("bf16", &[3], GgmlType::BF16, bf16_data),
            tensor("q8_0", &[32, 2], GgmlType::Q8_0, q8_data),
            tensor("q4_0", &[32], GgmlType::Q4_0, q4_0_data),
            tensor("q4_1", &[32], GgmlType::Q4_1, q4_1_data),
        ],
    );
    let g = open(&file).unwrap();
    assert_eq!(dequant(&g, "f32"), [1.5, -2.0, 0.0, 3.25]);
    assert_eq!(dequant(&g, "f16"), [1.0, -2.0, 0.5, 65504.0, 1.0 / 16_777_216.0]);
    assert_eq!(dequant(&g, "bf16"), [1.0, -3.0, 1.5]);

    let q8 = dequant(&g, "q8_0");
    assert_eq!(g.tensor("q8_0").unwrap().shape(), [2, 32]);
    assert_eq!((q8.len(), q8[0], q8[1], q8[16], q8[31]), (64, -8.0, -7.5, 0.0, 7.5));
    assert_eq!((q8[32], q8[48], q8[63]), (16.0, 0.0, -15.0));
    let expect: Vec<f32> = (0..64).map(|k| if k < 32 { 0.5 * (k as f32 - 16.0) } else { 48.0 - k as f32 }).collect();
    assert_eq!(q8, expect);

    let q4_0 = dequant(&g, "q4_0");
    assert_eq!((q4_0[0], q4_0[8], q4_0[15], q4_0[16], q4_0[31]), (-16.0, 0.0, 14.0, 14.0, -16.0));
    let expect: Vec<f32> =
        (0..32).map(|k| if k < 16 { 2.0 * (k as f32 - 8.0) } else { 2.0 * (23.0 - k as f32) }).collect();
    assert_eq!(q4_0, expect);

    let q4_1 = dequant(&g, "q4_1");
    assert_eq!((q4_1[0], q4_1[2], q4_1[15], q4_1[16], q4_1[31]), (-1.0, 0.0, 6.5, 6.5, -1.0));
    let expect: Vec<f32> =
        (0..32).map(|k| if k < 16 { 0.5 * k as f32 - 1.0 } else { 0.5 * (31 - k) as f32 - 1.0 }).collect();
    assert_eq!(q4_1, expect);
}

/// The K-quant fixture: for each type, random super-blocks (`<TYPE>.bytes`) and the
/// values the `gguf` Python package decodes them to (`<TYPE>.values`; Q8_K from ggml's
/// definition, which gguf lacks). Made by models/fixtures/kquants.py.
const KQUANTS: &[(&str, GgmlType)] = &[
    ("Q2_K", GgmlType::Q2_K),
    ("Q3_K", GgmlType::Q3_K),
    ("Q4_K", GgmlType::Q4_K),
    ("Q5_K", GgmlType::Q5_K),
    ("Q6_K", GgmlType::Q6_K),
    ("Q8_K", GgmlType::Q8_K),
];

fn kquant_fixture() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/models/fixtures/kquants.safetensors")).unwrap()
}

#[test]
fn k_quants_decode_bit_for_bit_like_the_gguf_package() {
    let file = kquant_fixture();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    for &(name, ty) in KQUANTS {
        let bytes = st.tensor(&format!("{name}.bytes")).unwrap().data().to_vec();
        let expect: Vec<f32> = st
            .tensor(&format!("{name}.values"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        // Two rows of super-blocks, so the tensor is a real 2-D weight.
        let g = open(&write_gguf(&[], &[tensor("w", &[expect.len() as u64 / 2, 2], ty, bytes)])).unwrap();
        let got = dequant(&g, "w");
        assert_eq!(got.len(), expect.len(), "{name}");
        for (i, (a, b)) in got.iter().zip(&expect).enumerate() {
            // The same f32 operations in the same order: equal bits, signed zeros included.
            assert_eq!(a.to_bits(), b.to_bits(), "{name} value {i}: {a} instead of {b}");
        }
    }
}

#[test]
fn k_quant_data_past_the_end_is_refused_with_its_tensor() {
    let file = kquant_fixture();
    let st = safetensors::SafeTensors::deserialize(&file).unwrap();
    let bytes = st.tensor("Q5_K.bytes").unwrap().data();
    // One super-block fewer than the dims need: refused at open, naming the tensor.
    let short = bytes[..bytes.len() - 176].to_vec();
    let g = write_gguf(&[], &[tensor("blk.3.ffn_down.weight", &[256, 4], GgmlType::Q5_K, short)]);
    let err = open_err(&g);
    assert!(err.contains("blk.3.ffn_down.weight") && err.contains("past the end"), "{err}");
    // A K-quant innermost dim must fill whole super-blocks.
    let g = write_gguf(&[], &[tensor("w", &[128, 2], GgmlType::Q5_K, bytes[..176].to_vec())]);
    assert!(open_err(&g).contains("multiple of the Q5_K block (256)"));
}

#[test]
fn unsupported_type_is_named_with_its_tensor() {
    // One IQ4_XS super-block: 256 elements in 136 bytes. Parsed, but not dequantized.
    let g = open(&write_gguf(&[], &[tensor("blk.0.ffn_up.weight", &[256], GgmlType(23), vec![0; 136])])).unwrap();
    let err = g.dequantize(g.tensor("blk.0.ffn_up.weight").unwrap()).unwrap_err().to_string();
    assert!(err.contains("IQ4_XS") && err.contains("blk.0.ffn_up.weight"), "{err}");
    assert!(err.contains("Q4_K") && err.contains("Q8_K"), "the supported types are listed: {err}");
}

// ---------------------------------------------------------------------------
// (2) Metadata of every value type round-trips.

#[test]
fn metadata_of_every_type_round_trips() {
    let s = |x: &str| Value::String(x.to_string());
    let kvs = vec![
        ("general.alignment", Value::U32(64)),
        ("u8", Value::U8(255)),
        ("i8", Value::I8(-128)),
        ("u16", Value::U16(65535)),
        ("i16", Value::I16(-32768)),
        ("u32", Value::U32(u32::MAX)),
        ("i32", Value::I32(i32::MIN)),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f32", Value::F32(-1.25e-5)),
        ("f64", Value::F64(std::f64::consts::PI)),
        ("bool.true", Value::Bool(true)),
        ("bool.false", Value::Bool(false)),
        ("string", s("Ġthe ✓ naïve\n")),
        ("string.empty", s("")),
        ("array.i32", Value::Array(ValueType::I32, vec![Value::I32(3), Value::I32(-1)])),
        ("array.string", Value::Array(ValueType::String, vec![s("a b"), s("")])),
        ("array.empty", Value::Array(ValueType::F64, vec![])),
        (
            "array.nested",
            Value::Array(
                ValueType::Array,
                vec![Value::Array(ValueType::Bool, vec![Value::Bool(true)]), Value::Array(ValueType::U8, vec![])],
            ),
        ),
    ];
    let file = write_gguf(
        &kvs,
        &[tensor("t", &[2], GgmlType::F32, [7f32, 8.0].iter().flat_map(|x| x.to_le_bytes()).collect())],
    );
    let g = open(&file).unwrap();
    assert_eq!(g.version, 3);
    let back: Vec<(&str, Value)> = g.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    assert_eq!(back, kvs);
    // The custom alignment places the data section and is honored when reading.
    assert_eq!((g.alignment, g.data_offset % 64), (64, 0));
    assert_eq!(dequant(&g, "t"), [7.0, 8.0]);
    assert_eq!(g.require("u32", Value::as_u64).unwrap(), u32::MAX as u64);
    let err = g.require("string", Value::as_u64).unwrap_err().to_string();
    assert!(err.contains("'string'"), "{err}");
    assert!(g.require("missing.key", Value::as_u64).unwrap_err().to_string().contains("missing.key"));
}

// ---------------------------------------------------------------------------
// (3) Truncated and hostile files give errors, not panics.

fn small_file() -> Vec<u8> {
    let kvs = [
        ("general.name", Value::String("tiny".into())),
        ("list", Value::Array(ValueType::U16, vec![Value::U16(1); 5])),
    ];
    write_gguf(&kvs, &[tensor("w", &[32], GgmlType::Q8_0, f16_block(&[ONE], &[1; 32]))])
}

fn open_err(bytes: &[u8]) -> String {
    open(bytes).expect_err("a malformed file must be refused").to_string()
}

#[test]
fn every_truncation_is_an_error() {
    let file = small_file();
    let t = open(&file).unwrap().tensors[0].clone();
    let end = (t.offset + t.n_bytes) as usize;
    // Every prefix that cuts into the header, the tables or the data is refused...
    for len in 0..end {
        let err = open_err(&file[..len]);
        assert!(!err.is_empty());
    }
    // ...while the padding after the last tensor is optional.
    assert!((end..=file.len()).all(|len| open(&file[..len]).is_ok()));
    assert!(open_err(&file[..10]).contains("header"));
}

#[test]
fn hostile_headers_and_tables_are_refused() {
    let header = |version: u32, n_tensors: u64, n_kv: u64| {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend(n_kv.to_le_bytes());
        b
    };
    assert!(open_err(b"GGML\x03\0\0\0").contains("not a GGUF file"));
    assert!(open_err(&header(1, 0, 0)).contains("version 1"));
    // Huge counts with nothing behind them.
    assert!(open_err(&header(3, u64::MAX, u64::MAX)).contains("metadata key #0"));

    // An array claiming 2^62 elements: refused before allocating.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(4u32.to_le_bytes());
    b.extend((1u64 << 62).to_le_bytes());
    let err = open_err(&b);
    assert!(err.contains("'tokens'") && err.contains("cannot fit"), "{err}");

    // A string claiming u64::MAX bytes.
    let mut b = header(3, 0, 1);
    b.extend(u64::MAX.to_le_bytes());
    assert!(open_err(&b).contains("metadata key #0"));

    // Unknown value type, bad bool byte.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "k");
    b.extend(99u32.to_le_bytes());
    assert!(open_err(&b).contains("unknown value type 99"));
    let mut b = header(3, 0, 1);
    put_str(&mut b, "flag");
    b.extend(7u32.to_le_bytes());
    b.push(2);
    assert!(open_err(&b).contains("'flag'"));

    // Arrays nested deeper than the parser allows.
    let mut b = header(3, 0, 1);
    put_str(&mut b, "deep");
    b.extend(9u32.to_le_bytes());
    for _ in 0..100 {
        b.extend(9u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    assert!(open_err(&b).contains("nested"));

    let dup = [("a", Value::U8(1)), ("a", Value::U8(2))];
    assert!(open_err(&write_gguf(&dup, &[])).contains("'a': appears twice"));
}

#[test]
fn hostile_tensor_infos_are_refused() {
    let w = || tensor("w", &[32], GgmlType::Q8_0, f16_block(&[ONE], &[1; 32]));
    let with = |f: &dyn Fn(&mut neft::models::gguf_write::GgufTensor)| {
        let mut t = w();
        f(&mut t);
        write_gguf(&[], &[t])
    };
    // The offset field is the last 8 bytes of the tensor table: point it past the end.
    let mut file = write_gguf(&[], &[w()]);
    let at = 24 + (8 + 1) + 4 + 8 + 4; // header, name "w", n_dims, one dim, type
    file[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = open_err(&file);
    assert!(err.contains("'w'") && err.contains("past the end"), "{err}");
    // An offset that wraps around u64.
    file[at..at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(open_err(&file).contains("'w'"));
    // Misaligned offset.
    file[at..at + 8].copy_from_slice(&8u64.to_le_bytes());
    assert!(open_err(&file).contains("alignment"));

    // Dims whose product overflows, too many dims, a row not made of whole blocks, unknown type.
    assert!(open_err(&with(&|t| t.dims = vec![1 << 40, 1 << 40])).contains("overflow"));
    assert!(open_err(&with(&|t| t.dims = vec![32, 1 << 30])).contains("past the end"));
    // 2^62 F64 values fit the element count but not a byte count.
    assert!(open_err(&with(&|t| (t.dims, t.ggml_type) = (vec![1 << 62], GgmlType(28)))).contains("overflow"));
    assert!(open_err(&with(&|t| t.dims = vec![1; 5])).contains("5 dims"));
    assert!(open_err(&with(&|t| t.dims = vec![16, 2])).contains("multiple of the Q8_0 block"));
    assert!(open_err(&with(&|t| t.ggml_type = GgmlType(99))).contains("unknown ggml type 99"));
    assert!(open_err(&write_gguf(&[], &[w(), w()])).contains("'w': appears twice"));
    for align in [Value::U32(3), Value::U32(0), Value::U64(1 << 63)] {
        let bad_align = write_gguf(&[("general.alignment", align)], &[]);
        assert!(open_err(&bad_align).contains("general.alignment"));
    }
}

// ---------------------------------------------------------------------------
// (4) Undoing llama.cpp's q/k row permutation.

#[test]
fn unpermute_qk_restores_rotary_halves_and_permute_qk_undoes_it() {
    // One head, 4 rows of 2: llama.cpp stores rows in (pair j, half i) order:
    // r0 = (j0,i0), r1 = (j0,i1), r2 = (j1,i0), r3 = (j1,i1). HF wants (i, j) order: r0 r2 r1 r3.
    let rows = [[0.0, 0.5], [1.0, 1.5], [2.0, 2.5], [3.0, 3.5]];
    let data: Vec<f32> = rows.concat();
    assert_eq!(unpermute_qk(&data, 4, 2, 1), [0.0, 0.5, 2.0, 2.5, 1.0, 1.5, 3.0, 3.5]);
    // Two heads of 4 rows (inp = 1): each head is reordered on its own.
    let data: Vec<f32> = (0..8).map(|x| x as f32).collect();
    assert_eq!(unpermute_qk(&data, 8, 1, 2), [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    // Three heads of 6 rows: head h's rows (h,j,i) = 6h + 2j + i go to 6h + 3i + j.
    let data: Vec<f32> = (0..18).map(|x| x as f32).collect();
    let expect = [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11, 12, 14, 16, 13, 15, 17].map(|x| x as f32);
    assert_eq!(unpermute_qk(&data, 18, 1, 3), expect);
    // The export's permutation undoes it, whatever the shape.
    assert_eq!(permute_qk(&expect, 18, 1, 3), data);
    let data: Vec<f32> = (0..8 * 3).map(|x| x as f32).collect();
    assert_eq!(permute_qk(&unpermute_qk(&data, 8, 3, 2), 8, 3, 2), data);
}

#[test]
fn llama_weight_unpermutes_q_and_k_only() {
    // q: 4 rows (out) of 2 (in) stored as GGUF dims [in, out] = [2, 4]; k has 2 kv heads.
    let f32s = |n: usize| (0..n).flat_map(|x| (x as f32).to_le_bytes()).collect::<Vec<u8>>();
    let kvs = [("llama.attention.head_count", Value::U32(1)), ("llama.attention.head_count_kv", Value::U32(2))];
    let g = open(&write_gguf(
        &kvs,
        &[
            tensor("blk.0.attn_q.weight", &[2, 4], GgmlType::F32, f32s(8)),
            tensor("blk.0.attn_k.weight", &[1, 8], GgmlType::F32, f32s(8)),
            tensor("blk.0.attn_v.weight", &[2, 4], GgmlType::F32, f32s(8)),
            tensor("blk.1.attn_q.weight", &[2, 6], GgmlType::F32, f32s(12)),
        ],
    ))
    .unwrap();
    assert_eq!(g.tensor("blk.0.attn_q.weight").unwrap().shape(), [4, 2]);
    assert_eq!(g.llama_weight("blk.0.attn_q.weight").unwrap(), [0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
    assert_eq!(g.llama_weight("blk.0.attn_k.weight").unwrap(), [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    assert_eq!(g.llama_weight("blk.0.attn_v.weight").unwrap(), dequant(&g, "blk.0.attn_v.weight"));
    // 6 rows make 1 head of 3 rotary pairs, but not 4 heads.
    assert_eq!(g.llama_weight("blk.1.attn_q.weight").unwrap().len(), 12);
    let g = open(&write_gguf(
        &[("llama.attention.head_count", Value::U32(4))],
        &[tensor("blk.1.attn_q.weight", &[2, 6], GgmlType::F32, f32s(12))],
    ))
    .unwrap();
    let err = g.llama_weight("blk.1.attn_q.weight").unwrap_err().to_string();
    assert!(err.contains("blk.1.attn_q.weight") && err.contains("4 heads"), "{err}");
    let g = open(&write_gguf(
        &[("llama.attention.head_count", Value::U64(u64::MAX))],
        &[tensor("blk.1.attn_q.weight", &[2, 6], GgmlType::F32, f32s(12))],
    ))
    .unwrap();
    assert!(g.llama_weight("blk.1.attn_q.weight").is_err());
}

// ---------------------------------------------------------------------------
// (5) The tokenizer on a small byte-level BPE vocabulary.

fn tokenizer_file(pre: &str, add_bos: bool) -> Vec<u8> {
    write_gguf(&tokenizer_kvs(pre, add_bos), &[])
}

fn id(token: &str) -> u32 {
    (SPECIALS + 256) as u32 + MERGED.iter().position(|t| *t == token).unwrap() as u32
}

fn byte_id(b: u8) -> u32 {
    SPECIALS as u32 + b as u32
}

#[test]
fn tokenizer_applies_merges_and_round_trips() {
    let g = open(&tokenizer_file("smollm", false)).unwrap();
    let tok = GgufTokenizer::from_gguf(&g).unwrap();
    assert_eq!((tok.bos, tok.eos, tok.chat_template.as_deref()), (Some(1), Some(2), Some("{{ messages }}")));

    // "hello": h e -> he, l l -> ll, he ll -> hell, hell o -> hello.
    // " world": Ġ w -> Ġw, o r -> or, Ġw or -> Ġwor, l d -> ld.
    assert_eq!(tok.encode("hello world", true).unwrap(), [id("hello"), id("Ġwor"), id("ld")]);
    // smollm splits digits one by one before the GPT-2 split, so the "1 2" merge never applies;
    // the trailing-space rule keeps " " apart from "hello".
    assert_eq!(tok.encode("hello 12", false).unwrap(), [id("hello"), byte_id(b' '), byte_id(b'1'), byte_id(b'2')]);
    // Control tokens are matched whole and can be skipped when decoding.
    let ids = tok.encode("<|im_start|>hello", false).unwrap();
    assert_eq!(ids, [1, id("hello")]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>hello");
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello");

    // Anything round-trips through bytes, merges or not.
    for text in ["hello world", "  naïve café ✓ 😀\n\ttabs", "world hello 2024"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn tokenizer_follows_pre_type_and_add_bos() {
    // GPT-2's split keeps " 12" together, so the "1 2" merge applies; bos is added on request.
    let g = open(&tokenizer_file("gpt-2", true)).unwrap();
    let tok = GgufTokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.encode("hello 12", true).unwrap(), [1, id("hello"), byte_id(b' '), id("12")]);
    assert_eq!(tok.encode("hello 12", false).unwrap(), [id("hello"), byte_id(b' '), id("12")]);

    let json = tokenizer_json_from_gguf(&g).unwrap();
    assert_eq!(json["model"]["merges"][0], serde_json::json!(["h", "e"]));
    assert_eq!(json["added_tokens"][1]["content"], "<|im_start|>");
    assert_eq!(json["added_tokens"][1]["special"], true);

    let g = open(&tokenizer_file("qwen2", false)).unwrap();
    let err = GgufTokenizer::from_gguf(&g).err().unwrap().to_string();
    assert!(err.contains("'qwen2'"), "{err}");
}

// ---------------------------------------------------------------------------
// (6) A K-quant model end to end.

#[test]
fn a_k_quant_llama_builds_into_the_model_of_its_f32_dequantization() {
    // A Q4_K_M-like file (Q4_K matrices, Q6_K down projections; K-quant blocks need
    // 256-wide rows) and the same file with every tensor dequantized to F32 build into
    // the same graph: same weights, same logits.
    use gguf_support::{llama_gguf, LlamaShape};
    use neft::runtime::ort::{HostTensor, Session, SessionOptions};
    let shape = LlamaShape { hidden: 256, ffn: 512, layers: 2, heads: 4, kv_heads: 2 };
    let ty = |name: &str| match name {
        n if n.ends_with("ffn_down.weight") => GgmlType::Q6_K,
        n if n.starts_with("blk.") => GgmlType::Q4_K,
        _ => GgmlType::F32,
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("kq.gguf"), llama_gguf(11, shape, &ty)).unwrap();
    let kq = Gguf::open(dir.join("kq.gguf")).unwrap();
    assert!(kq.tensors.iter().any(|t| t.ggml_type == GgmlType::Q6_K));
    let dequantized: Vec<_> = kq
        .tensors
        .iter()
        .map(|t| {
            let values = kq.dequantize(t).unwrap();
            assert!(values.iter().all(|v| v.is_finite()), "{}", t.name);
            tensor(&t.name, &t.dims, GgmlType::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    let kvs: Vec<(&str, Value)> = kq.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    std::fs::write(dir.join("f32.gguf"), write_gguf(&kvs, &dequantized)).unwrap();

    let mut logits = vec![];
    for name in ["kq", "f32"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_neft"))
            .args(["build-model", "llama", "--gguf"])
            .arg(dir.join(format!("{name}.gguf")))
            .arg("-o")
            .arg(dir.join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut s = Session::from_file(&dir.join(name).join("model.onnx"), &SessionOptions::default()).unwrap();
        let ids: Vec<i64> = (0..10).map(|k| (k * 37 % 268) as i64).collect();
        let out = s.run(&[("input_ids", HostTensor::i64(&[1, 10], ids))]).unwrap();
        let l: Vec<f32> =
            out.into_iter().find(|(n, _)| n == "logits").unwrap().1.as_f32().unwrap().iter().copied().collect();
        assert!(l.iter().all(|v| v.is_finite()) && l.iter().any(|&v| v != l[0]), "{name}: degenerate logits");
        logits.push(l);
    }
    assert!(logits[0] == logits[1], "the K-quant model's logits differ from its F32 dequantization's");
}
