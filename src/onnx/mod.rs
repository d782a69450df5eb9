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
pub use tensor::{dtype_name, dtype_size, element_count, embedded_i64, f16_to_f32, DataType};
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
