//! llama.cpp's K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K super-blocks, 256 values
//! each, decoded to f32.
//!
//! In: the bytes of whole super-blocks (the GGUF reader has already checked that a tensor's
//! data is a whole number of them, and [`dequantize`] only ever reads inside one block
//! array, so no input can make it index out of bounds). Out: 256 values per super-block,
//! in file order.
//!
//! The layouts are ggml's `block_q*_K` structs. Values come in sub-blocks (16 values for
//! Q2_K, Q3_K and Q6_K; 32 for Q4_K and Q5_K) that share a small integer scale (and, for
//! Q2_K, Q4_K and Q5_K, a minimum), themselves scaled by the block's f16 `d` (and `dmin`):
//! `y = (d * scale) * q - (dmin * min)`. Each product is rounded to f32 in that order, as
//! ggml and the `gguf` Python package do, so the results are bit-identical to theirs
//! (tests/gguf.rs checks every type against committed values).

use crate::precision::f16_le;

/// Values per super-block (ggml's `QK_K`).
const QK_K: usize = 256;

/// The K-quant types this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KQuant {
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
}

/// Appends the values of every super-block in `bytes` to `out`. A trailing partial block
/// (which the reader never passes) is ignored.
pub fn dequantize(kind: KQuant, bytes: &[u8], out: &mut Vec<f32>) {
    match kind {
        KQuant::Q2K => each_block(bytes, out, q2_k),
        KQuant::Q3K => each_block(bytes, out, q3_k),
        KQuant::Q4K => each_block(bytes, out, q4_k),
        KQuant::Q5K => each_block(bytes, out, q5_k),
        KQuant::Q6K => each_block(bytes, out, q6_k),
        KQuant::Q8K => each_block(bytes, out, q8_k),
    }
}

fn each_block<const N: usize>(bytes: &[u8], out: &mut Vec<f32>, decode: fn(&[u8; N], &mut Vec<f32>)) {
    let (blocks, _) = bytes.as_chunks::<N>();
    out.reserve(blocks.len() * QK_K);
    for b in blocks {
        decode(b, out);
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_le([b[at], b[at + 1]])
}

/// `block_q2_K`: scales[16], qs[64], d, dmin. Each scale byte holds a 4-bit scale (low
/// nibble) and a 4-bit minimum (high nibble) for 16 values of 2 bits. The 2-bit quants
/// of value `128c + 32s + l` sit at bits `2s` of `qs[32c + l]`.
fn q2_k(b: &[u8; 84], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (half(b, 80), half(b, 82));
    for (g, &sc) in scales.iter().enumerate() {
        let (dl, ml) = (d * f32::from(sc & 0xf), dmin * f32::from(sc >> 4));
        out.extend((g * 16..g * 16 + 16).map(|e| {
            let (c, s, l) = (e / 128, e % 128 / 32, e % 32);
            dl * f32::from((qs[32 * c + l] >> (2 * s)) & 3) - ml
        }));
    }
}

/// `block_q3_K`: hmask[32], qs[64], scales[12], d. 16 signed 6-bit scales (stored plus
/// 32) for 16 values each; a value's 3-bit quant is two low bits laid out as in Q2_K and
/// a high bit `c*4 + s` of `hmask[l]`. A clear high bit means `q - 4`, so quants run from
/// -4 to 3.
fn q3_k(b: &[u8; 110], out: &mut Vec<f32>) {
    let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
    let d = half(b, 108);
    for g in 0..16 {
        // Low 4 bits: nibbles of bytes 0..8 (low nibbles first); high 2 bits: the 2-bit
        // fields of bytes 8..12, the lowest field of each byte first.
        let low = if g < 8 { scales[g] & 0xf } else { scales[g - 8] >> 4 };
        let high = (scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        let dl = d * f32::from((low | high << 4) as i8 - 32);
        out.extend((g * 16..g * 16 + 16).map(|e| {
            let (c, s, l) = (e / 128, e % 128 / 32, e % 32);
            let low_bits = (qs[32 * c + l] >> (2 * s)) & 3;
            let high_bit = (hmask[l] >> (4 * c + s)) & 1;
            dl * f32::from(low_bits as i8 - if high_bit == 0 { 4 } else { 0 })
        }));
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of Q4_K and Q5_K, packed in 12
/// bytes: sub-blocks 0..4 in the low 6 bits of bytes 0..4 (scales) and 4..8 (minimums);
/// sub-blocks 4..8 take their low 4 bits from the nibbles of bytes 8..12 and their high
/// 2 bits from the top bits of bytes 0..8. (ggml's `get_scale_min_k4`.)
fn scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        ((scales[j + 4] & 0xf) | (scales[j - 4] >> 6) << 4, (scales[j + 4] >> 4) | (scales[j] >> 6) << 4)
    }
}

/// Q4_K and Q5_K: d, dmin, scales[12], then the quants; `quant(j, l)` is value `l` of
/// sub-block `j` (32 values each).
fn q45_k(b: &[u8], out: &mut Vec<f32>, quant: impl Fn(usize, usize) -> u8) {
    let (d, dmin, scales) = (half(b, 0), half(b, 2), &b[4..16]);
    for j in 0..8 {
        let (sc, m) = scale_min(scales, j);
        let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
        out.extend((0..32).map(|l| dl * f32::from(quant(j, l)) - ml));
    }
}

/// `block_q4_K`: d, dmin, scales[12], qs[128]. Sub-blocks 2c and 2c + 1 are the low and
/// high nibbles of `qs[32c..32c + 32]`.
fn q4_k(b: &[u8; 144], out: &mut Vec<f32>) {
    let qs = &b[16..144];
    q45_k(b, out, |j, l| (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xf)
}

/// `block_q5_K`: d, dmin, scales[12], qh[32], qs[128]. The low 4 bits as in Q4_K; the
/// fifth bit of sub-block `j` is bit `j` of `qh[l]`.
fn q5_k(b: &[u8; 176], out: &mut Vec<f32>) {
    let (qh, qs) = (&b[16..48], &b[48..176]);
    q45_k(b, out, |j, l| (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xf | ((qh[l] >> j) & 1) << 4)
}

/// `block_q6_K`: ql[128], qh[64], scales[16] (signed), d. Value `128c + w`: low 4 bits
/// from nibble `w / 64` of `ql[64c + w % 64]`, high 2 bits from bits `2s` of
/// `qh[32c + l]` (`w = 32s + l`); quants run from -32 to 31, 16 values per scale.
fn q6_k(b: &[u8; 210], out: &mut Vec<f32>) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for (g, &sc) in scales.iter().enumerate() {
        let dl = d * f32::from(sc as i8);
        out.extend((g * 16..g * 16 + 16).map(|e| {
            let (c, w) = (e / 128, e % 128);
            let low = (ql[64 * c + w % 64] >> (4 * (w / 64))) & 0xf;
            let high = (qh[32 * c + w % 32] >> (2 * (w / 32))) & 3;
            dl * f32::from((low | high << 4) as i8 - 32)
        }));
    }
}

/// `block_q8_K`: an f32 d, qs[256] (signed), bsums[16] (sums for dot products, unused
/// here).
fn q8_k(b: &[u8; 292], out: &mut Vec<f32>) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    out.extend(b[4..4 + QK_K].iter().map(|&q| d * f32::from(q as i8)));
}
