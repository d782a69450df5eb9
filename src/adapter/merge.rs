//! Merging an adapter into its base model: the base with the trained rows written over
//! the original ones, saved with every large initializer in `<name>.data` beside the
//! new `.onnx` (the base's own data files are read, never changed).

use super::{sha256_file, Adapter, AdapterTensor};
use crate::onnx::proto::tensor_proto::DataLocation;
use crate::onnx::proto::TensorProto;
use crate::onnx::{self, DataType, ExternalWriter, Model};
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Initializers at least this large go to the data file.
const EXTERNAL_MIN_BYTES: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub model: PathBuf,
    pub data: Option<PathBuf>,
    /// Source tensors that changed, and the rows written into each.
    pub tensors: Vec<(String, usize)>,
}

/// Writes `base` with `adapter`'s rows to `out` (see [`merged_tensors`]).
pub fn merge(base: &Model, adapter: &Adapter, out: &Path) -> anyhow::Result<MergeReport> {
    refuse_overwriting_base(base, out)?;
    let replaced = merged_tensors(base, adapter)?;
    let data = write_merged(base, &replaced, out)?;
    Ok(MergeReport {
        model: out.to_path_buf(),
        data,
        tensors: adapter.tensors.iter().map(|t| (t.source.clone(), t.rows.len())).collect(),
    })
}

/// The whole tensors `adapter` changes, by initializer name, with its rows written in.
/// Refuses a base model whose SHA-256 is not the one the adapter was trained from.
pub fn merged_tensors(base: &Model, adapter: &Adapter) -> anyhow::Result<HashMap<String, Vec<f32>>> {
    let label = base.display_path();
    let sha = sha256_file(&base.path)?;
    if sha != adapter.base_sha256 {
        bail!(
            "{label}: this is not the model the adapter was trained from (SHA-256 {} instead of {}, the hash of {}); \
             an adapter only merges onto its own base model",
            &sha[..16],
            &adapter.base_sha256[..adapter.base_sha256.len().min(16)],
            adapter.base_path
        );
    }
    let mut replaced = HashMap::new();
    for t in &adapter.tensors {
        replaced.insert(t.source.clone(), merged_values(base, t)?);
    }
    Ok(replaced)
}

fn data_location(out: &Path) -> anyhow::Result<String> {
    let name = out.file_name().with_context(|| format!("{}: not a file name", out.display()))?;
    Ok(format!("{}.data", name.to_string_lossy()))
}

fn out_dir(out: &Path) -> &Path {
    out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The merged model and its data file must not replace the base model or its data.
fn refuse_overwriting_base(base: &Model, out: &Path) -> anyhow::Result<()> {
    let same = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a));
    if same(out, &base.path) {
        bail!("{}: the merged model would overwrite the base model; choose another -o", out.display());
    }
    let data = out_dir(out).join(data_location(out)?);
    let mut clash = false;
    onnx::for_each_tensor(&base.proto, &mut |t| {
        if let Some(loc) = t.external_data.iter().find(|e| e.key() == "location") {
            clash |= same(&base.dir.join(loc.value()), &data);
        }
        Ok::<(), std::convert::Infallible>(())
    })
    .ok();
    if clash {
        bail!("{}: the base model keeps its weights there; choose another -o", data.display());
    }
    Ok(())
}

/// The source tensor with the adapter's rows written in.
fn merged_values(base: &Model, t: &AdapterTensor) -> anyhow::Result<Vec<f32>> {
    let label = base.display_path();
    let init = base.graph().initializer.iter().find(|i| i.name() == t.source).with_context(|| {
        format!("{label}: the adapter changes '{}', which is not an initializer of this model", t.source)
    })?;
    if init.data_type() != DataType::Float as i32 {
        bail!("{label}: initializer '{}' is {}, not FLOAT", t.source, onnx::dtype_name(init.data_type()));
    }
    let dims: Vec<usize> = init.dims.iter().map(|&d| d as usize).collect();
    let mut expect = dims.clone();
    if let Some(d) = expect.get_mut(t.axis) {
        *d = t.rows.len();
    }
    if t.axis >= dims.len() || expect != t.shape {
        bail!(
            "{label}: initializer '{}' has shape {dims:?}; the adapter's rows along axis {} have shape {:?}",
            t.source,
            t.axis,
            t.shape
        );
    }
    if let Some(r) = t.rows.iter().find(|&&r| r >= dims[t.axis]) {
        bail!("{label}: '{}' has {} rows along axis {}; the adapter names row {r}", t.source, dims[t.axis], t.axis);
    }
    let mut data = base.tensor_f32(init)?;
    put_rows(&mut data, &dims, t.axis, &t.rows, &t.values);
    Ok(data)
}

/// Writes `values` (rows `rows` along `axis`, in order) into `data` of shape `dims`.
pub fn put_rows(data: &mut [f32], dims: &[usize], axis: usize, rows: &[usize], values: &[f32]) {
    let outer: usize = dims[..axis].iter().product();
    let n = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let mut src = values.chunks_exact(inner);
    for o in 0..outer {
        for &r in rows {
            let start = (o * n + r) * inner;
            data[start..start + inner].copy_from_slice(src.next().expect("values match rows"));
        }
    }
}

/// Saves the model: large or external initializers into one new data file (written
/// first, renamed into place), then the `.onnx` atomically.
fn write_merged(base: &Model, replaced: &HashMap<String, Vec<f32>>, out: &Path) -> anyhow::Result<Option<PathBuf>> {
    let location = data_location(out)?;
    let dir = out_dir(out);
    let mut proto = base.proto.clone();
    let mut writer = ExternalWriter::create(dir, &location)?;
    let mut wrote = false;
    let graph = proto.graph.as_mut().expect("a model has a graph");
    for t in &mut graph.initializer {
        let bytes: Vec<u8> = match replaced.get(t.name()) {
            Some(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            None if is_external(t) || base.tensor_bytes(t)?.len() >= EXTERNAL_MIN_BYTES => {
                base.tensor_bytes(t)?.to_vec()
            }
            None => continue,
        };
        if is_external(t) || bytes.len() >= EXTERNAL_MIN_BYTES {
            writer.write(t, &bytes)?;
            wrote = true;
        } else {
            set_inline(t, bytes);
        }
    }
    let mut stray = None;
    onnx::for_each_tensor(&proto, &mut |t| {
        if stray.is_none() && is_external(t) && !t.external_data.iter().any(|e| e.value() == location) {
            stray = Some(t.name().to_string());
        }
        Ok::<(), std::convert::Infallible>(())
    })
    .ok();
    if let Some(name) = stray {
        bail!(
            "{}: tensor '{name}' keeps external data outside the main graph's initializers; merge does not move it",
            base.display_path()
        );
    }
    let data = if wrote {
        writer.finish()?;
        Some(out.with_file_name(&location))
    } else {
        None
    };
    let bytes = onnx::encode(&proto, out)?;
    crate::fsutil::write_bytes_atomic(out, &bytes).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    Ok(data)
}

fn is_external(t: &TensorProto) -> bool {
    t.data_location() == DataLocation::External
}

fn set_inline(t: &mut TensorProto, bytes: Vec<u8>) {
    t.raw_data = Some(bytes.into());
    t.float_data.clear();
    t.double_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.uint64_data.clear();
    t.external_data.clear();
    t.set_data_location(DataLocation::Default);
}
