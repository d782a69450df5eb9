//! ONNX files in and out.
//!
//! In: a path to a `.onnx` file (and the external data files it names).
//! Out: a [`Model`]: the decoded [`proto::ModelProto`], nothing dropped, with tensor
//! data left where it lies (a slice of the memory-mapped model file, or a byte range
//! of an external file) until someone asks for it with [`Model::tensor_bytes`].

mod error;
mod external;
mod load;
pub mod make;
mod save;
mod tensor;
mod walk;

pub mod proto {
    //! Types generated from `proto/onnx.proto`.
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use error::OnnxError;
pub use external::{ExternalData, ExternalWriter};
pub use load::{decode, load, load_bytes};
pub use save::{encode, save, PROTOBUF_LIMIT};
pub use tensor::{dtype_name, dtype_size, element_count, embedded_i64, float_format, DataType};
pub use walk::for_each_tensor;

use std::path::{Path, PathBuf};

/// A decoded ONNX model and the folder its external data live in.
#[derive(Debug, Clone)]
pub struct Model {
    pub proto: proto::ModelProto,
    /// The file it was read from (for messages); empty for models made in memory.
    pub path: PathBuf,
    /// The folder that external-data locations are relative to.
    pub dir: PathBuf,
    external: ExternalData,
}

impl Model {
    /// A model made in memory whose external data (if any) lie in `dir`.
    pub fn new(proto: proto::ModelProto, dir: impl Into<PathBuf>) -> Model {
        let dir = dir.into();
        Model { proto, path: PathBuf::new(), external: ExternalData::new(&dir), dir }
    }

    pub fn graph(&self) -> &proto::GraphProto {
        self.proto.graph.as_ref().expect("Model always has a graph (checked at load)")
    }

    /// The raw little-endian bytes of a tensor, wherever they are stored.
    /// Zero-copy for `raw_data` and external data; typed fields are converted.
    pub fn tensor_bytes(&self, tensor: &proto::TensorProto) -> Result<bytes::Bytes, OnnxError> {
        tensor::tensor_bytes(tensor, &self.external, &self.path)
    }

    /// The FLOAT tensor's slices `rows` along `axis`, decoding only those: external
    /// data are read slab by slab with positioned reads, never mapped whole.
    pub fn tensor_rows_f32(
        &self,
        tensor: &proto::TensorProto,
        axis: usize,
        rows: &[usize],
    ) -> Result<Vec<f32>, OnnxError> {
        let dims = &tensor.dims;
        let bad =
            |why: String| OnnxError::TensorData { path: self.display_path(), tensor: tensor.name().to_string(), why };
        if tensor.data_type() != DataType::Float as i32 || axis >= dims.len() {
            return Err(bad(format!(
                "cannot take rows along axis {axis} of a {} tensor {dims:?}",
                dtype_name(tensor.data_type())
            )));
        }
        let n = dims[axis].max(0) as usize;
        if let Some(r) = rows.iter().find(|&&r| r >= n) {
            return Err(bad(format!("row {r} is out of range (axis {axis} has {n})")));
        }
        let outer = element_count(&dims[..axis]) as usize;
        let inner = element_count(&dims[axis + 1..]) as usize;
        let external = tensor.data_location() == proto::tensor_proto::DataLocation::External;
        let inline = if external { None } else { Some(self.tensor_bytes(tensor)?) };
        let slab = n * inner * 4;
        let mut out = Vec::with_capacity(outer * rows.len() * inner);
        for o in 0..outer {
            let bytes = match &inline {
                Some(b) => b.slice(o * slab..(o + 1) * slab).to_vec(),
                None => self.external.read_range(tensor, &self.path, (o * slab) as u64, slab)?,
            };
            for &r in rows {
                let chunk = &bytes[r * inner * 4..(r + 1) * inner * 4];
                out.extend(chunk.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            }
        }
        Ok(out)
    }

    /// The tensor's values as f32 (for FLOAT tensors; other float types are converted).
    pub fn tensor_f32(&self, tensor: &proto::TensorProto) -> Result<Vec<f32>, OnnxError> {
        let bytes = self.tensor_bytes(tensor)?;
        tensor::to_f32(tensor, &bytes, &self.path)
    }

    /// Where this model's external data files live; used by `save` to copy them.
    pub(crate) fn external(&self) -> &ExternalData {
        &self.external
    }

    /// A label for messages: the file name, or `<memory>`.
    pub fn display_path(&self) -> String {
        display(&self.path)
    }
}

pub(crate) fn display(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "<memory>".to_string()
    } else {
        path.display().to_string()
    }
}
