use std::path::PathBuf;

/// Everything that can go wrong reading or writing an ONNX file. Each variant names
/// the file and, where there is one, the tensor or field involved.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid ONNX model (protobuf decoding failed: {source}); is the file truncated or not an .onnx file?")]
    Decode {
        path: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{path}: not a valid ONNX model: {what}")]
    Invalid { path: String, what: String },
    #[error("{path}: tensor '{tensor}': external data location '{location}' is refused: {why}")]
    UnsafeLocation { path: String, tensor: String, location: String, why: &'static str },
    #[error("{path}: tensor '{tensor}': external data file '{location}' cannot be opened: {source}")]
    MissingExternal {
        path: String,
        tensor: String,
        location: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: tensor '{tensor}': external data field '{field}': {why}")]
    ExternalField { path: String, tensor: String, field: String, why: String },
    #[error("{path}: tensor '{tensor}': {why}")]
    TensorData { path: String, tensor: String, why: String },
    #[error("{path}: the model serializes to {size} bytes, over protobuf's 2 GiB limit; store large initializers as external data")]
    TooLarge { path: String, size: usize },
}

impl OnnxError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        OnnxError::Io { path: path.into(), source }
    }
}
