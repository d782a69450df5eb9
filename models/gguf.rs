//! GGUF files (llama.cpp's model format, versions 2 and 3) in, f32 weights out.
//!
//! In: a path to a `.gguf` file. It is memory-mapped; [`Gguf::open`] reads only the
//! header, the metadata and the tensor table, checking every length and offset against
//! the file size so that a truncated or hostile file gives a [`GgufError`], never a panic
//! or an allocation larger than the file justifies.
//!
//! Out: [`Gguf`]: metadata as typed [`Value`]s in file order, a [`TensorInfo`] per tensor,
//! and, on request, a tensor's values dequantized to f32 ([`Gguf::dequantize`]) for
//! F32, F16, BF16, Q8_0, Q4_0 and Q4_1 data and the K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
//! and Q8_K ([`super::kquants`]). Other ggml types (Q5_0, Q5_1, the IQ types, ...) are
//! parsed (their byte sizes are known) but refused by name when asked to dequantize.
//!
//! Dimensions are listed the way GGUF stores them, innermost first (`ne[0]` is the
//! contiguous axis): a PyTorch Linear weight `[out, in]` appears as GGUF dims
//! `[in, out]`. [`TensorInfo::shape`] gives the outermost-first (PyTorch/ONNX) order.
//!
//! llama.cpp's converter permutes the rows of Llama's q and k projections for its RoPE
//! layout; [`unpermute_qk`] undoes it and [`Gguf::llama_weight`] applies it where needed.

use super::kquants::{self, KQuant};
use crate::precision::FloatFormat;
use memmap2::Mmap;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Everything that can go wrong reading a GGUF file; each variant names the file and
/// the key or tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")")]
    Magic { path: PathBuf, magic: Vec<u8> },
    #[error("{path}: GGUF version {version} is not supported (only 2 and 3, little-endian)")]
    Version { path: PathBuf, version: u32 },
    #[error("{path}: malformed at {context}: {why}")]
    Malformed { path: PathBuf, context: String, why: String },
    #[error("{path}: metadata key '{key}': {why}")]
    Key { path: PathBuf, key: String, why: String },
    #[error("{path}: tensor '{tensor}': {why}")]
    Tensor { path: PathBuf, tensor: String, why: String },
    #[error(
        "{path}: tensor '{tensor}': ggml type {ggml_type} cannot be dequantized \
         (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K); \
         requantize the model, e.g. with llama-quantize"
    )]
    Unsupported { path: PathBuf, tensor: String, ggml_type: GgmlType },
}

/// The type of a metadata value, numbered as in the GGUF spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_u32(t: u32) -> Option<ValueType> {
        use ValueType::*;
        [U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64].get(t as usize).copied()
    }

    /// The fewest bytes one value of this type takes in the file: bounds array lengths
    /// before anything is allocated for them.
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value. Arrays keep their element type so that empty arrays round-trip.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
        }
    }

    /// Any integer type holding a non-negative value (writers disagree on widths).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, items) => Some(items),
            _ => None,
        }
    }
}

/// A ggml tensor type id. Known ids have a name and a block layout; unknown ids are
/// refused when the file is opened, since the data size cannot be checked without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const Q8_K: GgmlType = GgmlType(15);
    pub const BF16: GgmlType = GgmlType(30);

    /// (name, elements per block, bytes per block), as in ggml's type traits.
    pub fn traits(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            _ => return None,
        })
    }

    pub fn name(self) -> Option<&'static str> {
        self.traits().map(|t| t.0)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "#{} (unknown)", self.0),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: innermost (contiguous) axis first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file (already checked to fit).
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Outermost-first (PyTorch/ONNX) shape: a Linear weight comes out `[out, in]`.
    pub fn shape(&self) -> Vec<usize> {
        // Lossless on the 64-bit targets that can map model files.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed, memory-mapped GGUF file.
#[derive(Debug)]
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    /// Key/value pairs in file order (keys are unique).
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// From `general.alignment`, default 32.
    pub alignment: u64,
    /// Where the tensor data section starts; tensor offsets in the file are relative to it.
    pub data_offset: u64,
    map: Mmap,
}

const MAX_NESTING: u32 = 8;

impl Gguf {
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io { path: path.clone(), source };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; as with every mmap, another process truncating the
        // file while we hold it would fault. Model files are not rewritten in place.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Gguf::parse(path, map)
    }

    fn parse(path: PathBuf, map: Mmap) -> Result<Gguf, GgufError> {
        let mut c = Cursor { buf: &map, pos: 0 };
        let malformed =
            |context: &str, why: String| GgufError::Malformed { path: path.clone(), context: context.to_string(), why };
        let magic = c.take(4).map_err(|w| malformed("header", w))?;
        if magic != b"GGUF" {
            return Err(GgufError::Magic { path: path.clone(), magic: magic.to_vec() });
        }
        let version = c.u32().map_err(|w| malformed("header", w))?;
        if version != 2 && version != 3 {
            // Version 1 used 32-bit counts; a big-endian file reads as 0x0300_0000 here.
            return Err(GgufError::Version { path: path.clone(), version });
        }
        let n_tensors = c.u64().map_err(|w| malformed("header", w))?;
        let n_kv = c.u64().map_err(|w| malformed("header", w))?;

        let mut metadata = Vec::new();
        let mut seen = HashSet::new();
        for i in 0..n_kv {
            let key = c.string().map_err(|w| malformed(&format!("metadata key #{i}"), w))?;
            let value = c.typed_value(0).map_err(|w| malformed(&format!("metadata key '{key}'"), w))?;
            if !seen.insert(key.clone()) {
                return Err(GgufError::Key { path: path.clone(), key, why: "appears twice".into() });
            }
            metadata.push((key, value));
        }

        let mut infos = Vec::new();
        let mut names = HashSet::new();
        for i in 0..n_tensors {
            let (name, dims, ty, rel) = c.tensor_info().map_err(|w| malformed(&format!("tensor info #{i}"), w))?;
            if !names.insert(name.clone()) {
                return Err(GgufError::Tensor { path: path.clone(), tensor: name, why: "appears twice".into() });
            }
            infos.push((name, dims, GgmlType(ty), rel));
        }
        let header_end = c.pos as u64;

        let mut gguf = Gguf { path, version, metadata, tensors: Vec::new(), alignment: 32, data_offset: 0, map };
        if let Some(v) = gguf.get("general.alignment") {
            // The spec makes it a u32; other integer widths are tolerated.
            gguf.alignment = match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= u32::MAX.into() => a,
                _ => return Err(gguf.key_error("general.alignment", format!("{v:?} is not a power of two u32"))),
            };
        }
        gguf.data_offset = header_end.next_multiple_of(gguf.alignment); // alignment <= 2^31: no overflow
        for (name, dims, ggml_type, rel) in infos {
            let info = gguf.check_tensor(name, dims, ggml_type, rel)?;
            gguf.tensors.push(info);
        }
        Ok(gguf)
    }

    /// Computes a tensor's size and absolute offset, refusing anything that does not
    /// lie inside the file.
    fn check_tensor(&self, name: String, dims: Vec<u64>, ty: GgmlType, rel: u64) -> Result<TensorInfo, GgufError> {
        let Some((_, block, block_bytes)) = ty.traits() else {
            return Err(self.tensor_error(&name, format!("unknown ggml type {}", ty.0)));
        };
        let n_elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let Some(n_elements) = n_elements.filter(|&n| n <= i64::MAX as u64) else {
            return Err(self.tensor_error(&name, format!("dims {dims:?} overflow")));
        };
        if dims.first().is_some_and(|&d| !d.is_multiple_of(block)) {
            return Err(self.tensor_error(
                &name,
                format!("innermost dim {} is not a multiple of the {ty} block ({block})", dims[0]),
            ));
        }
        if !n_elements.is_multiple_of(block) {
            return Err(self.tensor_error(&name, format!("{n_elements} elements do not fill whole {ty} blocks")));
        }
        let Some(n_bytes) = (n_elements / block).checked_mul(block_bytes) else {
            return Err(self.tensor_error(&name, format!("dims {dims:?} of {ty} overflow")));
        };
        if !rel.is_multiple_of(self.alignment) {
            return Err(
                self.tensor_error(&name, format!("offset {rel} is not a multiple of the alignment {}", self.alignment))
            );
        }
        let offset = self.data_offset.checked_add(rel);
        let end = offset.and_then(|o| o.checked_add(n_bytes));
        match (offset, end) {
            (Some(offset), Some(end)) if end <= self.map.len() as u64 => {
                Ok(TensorInfo { name, dims, ggml_type: ty, offset, n_elements, n_bytes })
            }
            _ => Err(self.tensor_error(
                &name,
                format!(
                    "data at {} + {rel} ({n_bytes} bytes) runs past the end of the file ({} bytes); is it truncated?",
                    self.data_offset,
                    self.map.len()
                ),
            )),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A required metadata value, converted by `f` (e.g. `Value::as_u64`).
    pub fn require<'a, T>(&'a self, key: &str, f: impl Fn(&'a Value) -> Option<T>) -> Result<T, GgufError> {
        let v = self.get(key).ok_or_else(|| self.key_error(key, "missing".into()))?;
        f(v).ok_or_else(|| self.key_error(key, format!("unexpected value {}", brief(v))))
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| self.tensor_error(name, "not in the file".into()))
    }

    /// The raw bytes of a tensor, straight from the map.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        // In range: checked when the file was opened.
        &self.map[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    /// A tensor's values as f32, in GGUF order (innermost dim fastest, which is also
    /// row-major order for [`TensorInfo::shape`]).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        dequantize_bytes(t.ggml_type, self.tensor_bytes(t)).ok_or_else(|| GgufError::Unsupported {
            path: self.path.clone(),
            tensor: t.name.clone(),
            ggml_type: t.ggml_type,
        })
    }

    /// A weight of a Llama-architecture file dequantized into PyTorch layout: like
    /// [`Gguf::dequantize`], with the q/k row permutation of `blk.N.attn_q.weight` and
    /// `blk.N.attn_k.weight` undone using `llama.attention.head_count(_kv)`.
    pub fn llama_weight(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self.tensor(name)?;
        let data = self.dequantize(t)?;
        let key = if name.ends_with(".attn_q.weight") {
            "llama.attention.head_count"
        } else if name.ends_with(".attn_k.weight") {
            // Grouped-query files may omit head_count_kv: it then equals head_count.
            if self.get("llama.attention.head_count_kv").is_some() {
                "llama.attention.head_count_kv"
            } else {
                "llama.attention.head_count"
            }
        } else {
            return Ok(data);
        };
        let heads = self.require(key, Value::as_u64)?;
        let &[inp, out] = t.dims.as_slice() else {
            return Err(self.tensor_error(name, format!("expected 2 dims, found {:?}", t.dims)));
        };
        if heads == 0 || heads.checked_mul(2).is_none_or(|h2| !out.is_multiple_of(h2)) {
            return Err(
                self.tensor_error(name, format!("{out} rows do not split into {key} = {heads} heads of even size"))
            );
        }
        Ok(unpermute_qk(&data, out as usize, inp as usize, heads as usize))
    }

    fn key_error(&self, key: &str, why: String) -> GgufError {
        GgufError::Key { path: self.path.clone(), key: key.to_string(), why }
    }

    fn tensor_error(&self, tensor: &str, why: String) -> GgufError {
        GgufError::Tensor { path: self.path.clone(), tensor: tensor.to_string(), why }
    }
}

/// A short rendering of a value for messages (arrays can hold 50k strings).
fn brief(v: &Value) -> String {
    match v {
        Value::Array(t, items) => format!("array of {} {t:?}", items.len()),
        other => format!("{other:?}"),
    }
}

/// Undoes llama.cpp's row permutation of a q or k projection weight.
///
/// `data` is row-major `[out, inp]` (PyTorch layout; GGUF lists these dims as
/// `[inp, out]`). llama.cpp's converter interleaves the two rotary halves of each head;
/// this restores Hugging Face's order:
/// `w.reshape(heads, out/heads/2, 2, inp).swapaxes(1, 2).reshape(out, inp)`.
/// Panics if `data.len() != out * inp` or `out` is not a multiple of `2 * heads`
/// (callers reading files check first, as [`Gguf::llama_weight`] does).
pub fn unpermute_qk(data: &[f32], out: usize, inp: usize, heads: usize) -> Vec<f32> {
    assert!(data.len() == out * inp && heads > 0 && out.is_multiple_of(2 * heads), "unpermute_qk: bad shape");
    let half = out / heads / 2;
    let mut result = Vec::with_capacity(data.len());
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let row = (h * half + j) * 2 + i; // source row (h, j, i)
                result.extend_from_slice(&data[row * inp..(row + 1) * inp]);
            }
        }
    }
    result
}

/// llama.cpp's row permutation of a q or k projection weight, the inverse of
/// [`unpermute_qk`]: Hugging Face's `[out, inp]` rows into the interleaved order GGUF
/// files keep. Panics on the shapes [`unpermute_qk`] panics on.
pub fn permute_qk(data: &[f32], out: usize, inp: usize, heads: usize) -> Vec<f32> {
    assert!(data.len() == out * inp && heads > 0 && out.is_multiple_of(2 * heads), "permute_qk: bad shape");
    let half = out / heads / 2;
    let mut result = Vec::with_capacity(data.len());
    for h in 0..heads {
        for j in 0..half {
            for i in 0..2 {
                let row = (h * 2 + i) * half + j; // source row (h, i, j)
                result.extend_from_slice(&data[row * inp..(row + 1) * inp]);
            }
        }
    }
    result
}

fn f16(b: &[u8]) -> f32 {
    crate::precision::f16_le([b[0], b[1]])
}

/// Dequantizes whole blocks of `ty`; None for types we do not decode. The layouts are
/// ggml's `block_q8_0`, `block_q4_0` and `block_q4_1`: an f16 scale (and for Q4_1 an f16
/// minimum) followed by the quants; 4-bit quants keep elements 0..16 in the low nibbles
/// and 16..32 in the high nibbles. K-quants are decoded by [`super::kquants`].
fn dequantize_bytes(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let (_, block, block_bytes) = ty.traits()?;
    let mut out = Vec::with_capacity(bytes.len() / block_bytes as usize * block as usize);
    let blocks = bytes.chunks_exact(block_bytes as usize);
    match ty {
        GgmlType::F32 => out.extend(FloatFormat::F32.decode(bytes)),
        GgmlType::F16 => out.extend(FloatFormat::F16.decode(bytes)),
        GgmlType::BF16 => out.extend(FloatFormat::BF16.decode(bytes)),
        GgmlType::Q8_0 => {
            for b in blocks {
                let d = f16(b);
                out.extend(b[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in blocks {
                let d = f16(b);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| ((q & 0xf) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in blocks {
                let (d, m) = (f16(b), f16(&b[2..]));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| (q & 0xf) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q2_K => kquants::dequantize(KQuant::Q2K, bytes, &mut out),
        GgmlType::Q3_K => kquants::dequantize(KQuant::Q3K, bytes, &mut out),
        GgmlType::Q4_K => kquants::dequantize(KQuant::Q4K, bytes, &mut out),
        GgmlType::Q5_K => kquants::dequantize(KQuant::Q5K, bytes, &mut out),
        GgmlType::Q6_K => kquants::dequantize(KQuant::Q6K, bytes, &mut out),
        GgmlType::Q8_K => kquants::dequantize(KQuant::Q8K, bytes, &mut out),
        _ => return None,
    }
    Some(out)
}

/// Bounds-checked little-endian reads; errors are messages the caller puts in context.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = self.buf.len() - self.pos;
        if n > left as u64 {
            return Err(format!(
                "needs {n} bytes at offset {} but only {left} remain; is the file truncated?",
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N as u64)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("string is not UTF-8: {e}"))
    }

    fn typed_value(&mut self, depth: u32) -> Result<Value, String> {
        let t = self.u32()?;
        let ty = ValueType::from_u32(t).ok_or_else(|| format!("unknown value type {t}"))?;
        self.value(ty, depth)
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<Value, String> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            ValueType::Bool => match self.array::<1>()?[0] {
                b @ (0 | 1) => Value::Bool(b == 1),
                b => return Err(format!("bool byte is {b}, not 0 or 1")),
            },
            ValueType::String => Value::String(self.string()?),
            ValueType::Array => {
                if depth >= MAX_NESTING {
                    return Err(format!("arrays nested deeper than {MAX_NESTING}"));
                }
                let t = self.u32()?;
                let elem = ValueType::from_u32(t).ok_or_else(|| format!("unknown array element type {t}"))?;
                let len = self.u64()?;
                // Refuse lengths the remaining bytes cannot hold before allocating.
                let left = (self.buf.len() - self.pos) as u64;
                if len > left / elem.min_size() {
                    return Err(format!("array of {len} {elem:?} cannot fit in the {left} bytes left"));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }

    fn tensor_info(&mut self) -> Result<(String, Vec<u64>, u32, u64), String> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims > 4 {
            return Err(format!("tensor '{name}' has {n_dims} dims (ggml allows at most 4)"));
        }
        let dims = (0..n_dims).map(|_| self.u64()).collect::<Result<Vec<_>, _>>()?;
        let ty = self.u32()?;
        let offset = self.u64()?;
        Ok((name, dims, ty, offset))
    }
}
