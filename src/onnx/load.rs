//! Reading `.onnx` files: memory-mapped, decoded without copying tensor bytes, then
//! checked so that later stages can trust the structure they walk.

use super::external::is_external;
use super::proto::ModelProto;
use super::walk::for_each_tensor;
use super::{display, Model, OnnxError};
use bytes::Bytes;
use memmap2::Mmap;
use prost::Message;
use std::fs::File;
use std::path::Path;

/// Loads a model file. Tensor data stay in the mapped file (or in external files) until read.
pub fn load(path: impl AsRef<Path>) -> Result<Model, OnnxError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| OnnxError::io(path, e))?;
    let len = file.metadata().map_err(|e| OnnxError::io(path, e))?.len();
    if len == 0 {
        return Err(OnnxError::Invalid { path: display(path), what: "the file is empty".into() });
    }
    // SAFETY: read-only map; see ExternalData::map for the contract.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| OnnxError::io(path, e))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut model = load_bytes(Bytes::from_owner(map), dir, path)?;
    model.path = path.to_path_buf();
    Ok(model)
}

/// Decodes and checks a model held in memory; `dir` is where its external data live,
/// `label` names it in errors.
pub fn load_bytes(bytes: Bytes, dir: &Path, label: &Path) -> Result<Model, OnnxError> {
    let proto = decode(bytes, label)?;
    let mut model = Model::new(proto, dir);
    model.path = label.to_path_buf();
    check(&model)?;
    Ok(model)
}

/// Protobuf decoding only.
pub fn decode(bytes: Bytes, label: &Path) -> Result<ModelProto, OnnxError> {
    ModelProto::decode(bytes).map_err(|source| OnnxError::Decode { path: display(label), source })
}

fn check(model: &Model) -> Result<(), OnnxError> {
    let invalid = |what: String| OnnxError::Invalid { path: display(&model.path), what };
    let proto = &model.proto;
    let Some(graph) = &proto.graph else {
        return Err(invalid("it has no graph (field ModelProto.graph); is this an ONNX model file?".into()));
    };
    if proto.ir_version.is_none() {
        return Err(invalid("field ModelProto.ir_version is missing".into()));
    }
    if proto.opset_import.is_empty() && !graph.node.is_empty() {
        return Err(invalid("field ModelProto.opset_import is empty".into()));
    }
    for_each_tensor(proto, &mut |t| {
        if is_external(t) {
            model.external().check(t, &model.path)?;
        }
        Ok(())
    })
}
