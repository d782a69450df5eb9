//! Writing `.onnx` files atomically, carrying external data along when the model
//! moves to another folder.

use super::external::{is_external, parse_ref};
use super::proto::ModelProto;
use super::walk::for_each_tensor;
use super::{display, Model, OnnxError};
use crate::fsutil;
use prost::Message;
use std::collections::BTreeSet;
use std::path::Path;

/// Protobuf refuses messages of 2 GiB or more; ONNX Runtime does too.
pub const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// Serializes a model, refusing one too large for protobuf readers.
pub fn encode(proto: &ModelProto, label: &Path) -> Result<Vec<u8>, OnnxError> {
    let size = proto.encoded_len();
    if size > PROTOBUF_LIMIT {
        return Err(OnnxError::TooLarge { path: display(label), size });
    }
    Ok(proto.encode_to_vec())
}

/// Saves `model` to `path`. External references are written unchanged; when `path`
/// is in another folder than the model's data, the referenced files are copied there
/// (whole, so offsets stay valid). Every file appears complete or not at all.
pub fn save(model: &Model, path: impl AsRef<Path>) -> Result<(), OnnxError> {
    let path = path.as_ref();
    let bytes = encode(&model.proto, path)?;
    let target = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    copy_external_files(model, target)?;
    fsutil::write_bytes_atomic(path, &bytes).map_err(|e| OnnxError::io(path, e))
}

fn copy_external_files(model: &Model, target: &Path) -> Result<(), OnnxError> {
    let mut locations = BTreeSet::new();
    let mut first_tensor = std::collections::HashMap::new();
    for_each_tensor(&model.proto, &mut |t| {
        if is_external(t) {
            let r = parse_ref(t, &model.path)?;
            first_tensor.entry(r.location.clone()).or_insert_with(|| t.clone());
            locations.insert(r.location);
        }
        Ok::<(), OnnxError>(())
    })?;
    if locations.is_empty() {
        return Ok(());
    }
    let target_canon = target.canonicalize().map_err(|e| OnnxError::io(target, e))?;
    for location in locations {
        let src = model.external().resolve(&first_tensor[&location], &location, &model.path)?;
        let dst = target_canon.join(&location);
        if dst.canonicalize().ok().as_deref() == Some(src.as_path()) {
            continue; // saving in place: the data file is already where it belongs
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| OnnxError::io(parent, e))?;
        }
        let tmp = fsutil::temp_beside(&dst);
        std::fs::copy(&src, &tmp).and_then(|_| std::fs::rename(&tmp, &dst)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            OnnxError::io(&dst, e)
        })?;
    }
    Ok(())
}
