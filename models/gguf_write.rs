//! GGUF out: a writer for version 3 files, and a tuned Llama written back under its
//! source file's metadata and tensor names, so llama.cpp runs it.
//!
//! In: metadata [`Value`]s and tensors already encoded in a ggml type; for
//! [`llama_gguf`], the source [`Gguf`] and the checkpoint's [`HfTensor`]s.
//! Out: the file's bytes, written through any `io::Write` (the caller writes them to a
//! temporary file and renames it).
//!
//! The layout: magic, version, counts, the metadata, the tensor table (dims innermost
//! first, offsets relative to the data section), padding to the alignment, then each
//! tensor's bytes, each padded to the alignment.

use super::gguf::{permute_qk, GgmlType, Gguf, Value};
use super::hf::HfTensor;
use crate::precision::FloatFormat;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::io::{self, Write};

/// One tensor to write: GGUF dims (innermost first) and bytes in `ggml_type`.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub data: Vec<u8>,
}

/// The alignment `general.alignment` asks for: a power of two, else the default 32.
/// (An invalid value is still written as given, which the reader's tests rely on.)
fn alignment(metadata: &[(String, Value)]) -> usize {
    let given = metadata.iter().find(|(k, _)| k == "general.alignment").and_then(|(_, v)| v.as_u64());
    given.filter(|a| a.is_power_of_two() && *a <= u32::MAX as u64).unwrap_or(32) as usize
}

/// Writes a GGUF version 3 file.
pub fn write_gguf(w: &mut impl Write, metadata: &[(String, Value)], tensors: &[GgufTensor]) -> io::Result<()> {
    let align = alignment(metadata);
    let mut head = b"GGUF".to_vec();
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut head, k);
        head.extend((v.value_type() as u32).to_le_bytes());
        put_value(&mut head, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut head, &t.name);
        head.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| head.extend(d.to_le_bytes()));
        head.extend(t.ggml_type.0.to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset = (offset + t.data.len()).next_multiple_of(align);
    }
    head.resize(head.len().next_multiple_of(align), 0);
    w.write_all(&head)?;
    let zeros = vec![0u8; align];
    for t in tensors {
        w.write_all(&t.data)?;
        w.write_all(&zeros[..t.data.len().next_multiple_of(align) - t.data.len()])?;
    }
    Ok(())
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend(x.to_le_bytes()),
        Value::I16(x) => buf.extend(x.to_le_bytes()),
        Value::U32(x) => buf.extend(x.to_le_bytes()),
        Value::I32(x) => buf.extend(x.to_le_bytes()),
        Value::U64(x) => buf.extend(x.to_le_bytes()),
        Value::I64(x) => buf.extend(x.to_le_bytes()),
        Value::F32(x) => buf.extend(x.to_le_bytes()),
        Value::F64(x) => buf.extend(x.to_le_bytes()),
        Value::Bool(x) => buf.push(*x as u8),
        Value::String(s) => put_str(buf, s),
        Value::Array(t, items) => {
            buf.extend((*t as u32).to_le_bytes());
            buf.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(buf, i));
        }
    }
}

/// The float type of the written matrices (vectors are always F32, as llama.cpp keeps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GgufFloat {
    F32,
    F16,
}

impl GgufFloat {
    fn ggml(self) -> GgmlType {
        match self {
            GgufFloat::F32 => GgmlType::F32,
            GgufFloat::F16 => GgmlType::F16,
        }
    }

    /// llama.cpp's `general.file_type` for a file of this type (`LLAMA_FTYPE_ALL_F32`,
    /// `LLAMA_FTYPE_MOSTLY_F16`).
    fn file_type(self) -> u32 {
        match self {
            GgufFloat::F32 => 0,
            GgufFloat::F16 => 1,
        }
    }
}

/// A GGUF file's metadata and tensors, ready for [`write_gguf`].
pub type GgufContents = (Vec<(String, Value)>, Vec<GgufTensor>);

/// The tuned model as a GGUF: `source`'s metadata (file type updated, quantization
/// version dropped) and tensor table order, each Llama weight taken from `weights` (Hugging
/// Face names and layout, q/k rows permuted back for llama.cpp's rotary layout) in `float`,
/// any other tensor of the source copied as it is. An output projection the source
/// ties to the embedding but `weights` carries separately is added as `output.weight`.
pub fn llama_gguf(source: &Gguf, weights: &[HfTensor], float: GgufFloat) -> anyhow::Result<GgufContents> {
    let mut by_gguf: HashMap<String, &HfTensor> = HashMap::new();
    for w in weights {
        by_gguf.insert(super::weights::gguf_name(&w.name)?, w);
    }
    let heads = |key: &str| source.require(key, Value::as_u64).map(|h| h as usize);
    let q_heads = heads("llama.attention.head_count")?;
    let kv_heads = if source.get("llama.attention.head_count_kv").is_some() {
        heads("llama.attention.head_count_kv")?
    } else {
        q_heads
    };
    let mut tensors = vec![];
    for info in &source.tensors {
        let Some(w) = by_gguf.remove(&info.name) else {
            tensors.push(GgufTensor {
                name: info.name.clone(),
                dims: info.dims.clone(),
                ggml_type: info.ggml_type,
                data: source.tensor_bytes(info).to_vec(),
            });
            continue;
        };
        if info.shape() != w.shape {
            bail!(
                "{}: tensor '{}' has shape {:?}, the tuned '{}' {:?}",
                source.path.display(),
                info.name,
                info.shape(),
                w.name,
                w.shape
            );
        }
        tensors.push(encode(&info.name, w, float, q_heads, kv_heads));
    }
    if let Some(head) = by_gguf.remove("output.weight") {
        tensors.push(encode("output.weight", head, float, q_heads, kv_heads));
    }
    if let Some(name) = by_gguf.keys().next() {
        bail!("{}: has no tensor '{name}' to write the tuned weight into", source.path.display());
    }
    let mut metadata: Vec<(String, Value)> =
        source.metadata.iter().filter(|(k, _)| k != "general.quantization_version").cloned().collect();
    match metadata.iter_mut().find(|(k, _)| k == "general.file_type") {
        Some((_, v)) => *v = Value::U32(float.file_type()),
        None => metadata.push(("general.file_type".into(), Value::U32(float.file_type()))),
    }
    Ok((metadata, tensors))
}

fn encode(name: &str, w: &HfTensor, float: GgufFloat, q_heads: usize, kv_heads: usize) -> GgufTensor {
    let data = match (name.ends_with(".attn_q.weight"), name.ends_with(".attn_k.weight")) {
        (true, _) => permute_qk(&w.data, w.shape[0], w.shape[1], q_heads),
        (_, true) => permute_qk(&w.data, w.shape[0], w.shape[1], kv_heads),
        _ => w.data.clone(),
    };
    let ty = if w.shape.len() == 1 { GgufFloat::F32 } else { float };
    let format = match ty {
        GgufFloat::F32 => FloatFormat::F32,
        GgufFloat::F16 => FloatFormat::F16,
    };
    let values: Vec<f64> = data.iter().map(|&v| v as f64).collect();
    GgufTensor {
        name: name.to_string(),
        dims: w.shape.iter().rev().map(|&d| d as u64).collect(),
        ggml_type: ty.ggml(),
        data: format.encode(&values),
    }
}

/// Writes the tuned model to `path` atomically (see [`llama_gguf`]); returns the
/// number of tensors written.
pub fn save_llama_gguf(
    path: &std::path::Path,
    source: &Gguf,
    weights: &[HfTensor],
    float: GgufFloat,
) -> anyhow::Result<usize> {
    let (metadata, tensors) = llama_gguf(source, weights, float)?;
    crate::fsutil::write_atomic(path, |w| write_gguf(w, &metadata, &tensors))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(tensors.len())
}
