//! Tensor element types and access to a tensor's bytes in any of the format's storage forms.

use super::external::ExternalData;
use super::proto::tensor_proto::DataLocation;
use super::proto::TensorProto;
use super::{display, OnnxError};
use crate::precision::FloatFormat;
use bytes::Bytes;
use std::path::Path;

pub use super::proto::tensor_proto::DataType;

/// Size in bytes of one element, for types that have a whole-byte size.
pub fn dtype_size(data_type: i32) -> Option<usize> {
    use DataType::*;
    Some(match DataType::try_from(data_type).ok()? {
        Float | Int32 | Uint32 => 4,
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz | Float8e8m0 => 1,
        Uint16 | Int16 | Float16 | Bfloat16 => 2,
        Int64 | Uint64 | Double | Complex64 => 8,
        Complex128 => 16,
        Undefined | String | Uint4 | Int4 | Float4e2m1 | Uint2 | Int2 | Float6e2m3 | Float6e3m2 => return None,
    })
}

/// The type's name as the ONNX spec spells it (`FLOAT`, `INT64`, ...).
pub fn dtype_name(data_type: i32) -> String {
    DataType::try_from(data_type)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| format!("<unknown type {data_type}>"))
}

/// Elements of a tensor with these dimensions, saturating (a hostile file can declare
/// dimensions whose product overflows); negative dimensions count as 0.
pub fn element_count(dims: &[i64]) -> u64 {
    dims.iter().fold(1u64, |acc, &d| acc.saturating_mul(d.max(0) as u64))
}

pub(crate) fn numel(tensor: &TensorProto) -> Option<u64> {
    tensor.dims.iter().try_fold(1u64, |acc, &d| u64::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
}

/// Expected byte length of the tensor's data, where the type has a whole-byte size.
pub(crate) fn expected_len(tensor: &TensorProto) -> Option<u64> {
    let size = dtype_size(tensor.data_type()) as Option<usize>;
    numel(tensor)?.checked_mul(size? as u64)
}

pub(crate) fn tensor_bytes(tensor: &TensorProto, external: &ExternalData, path: &Path) -> Result<Bytes, OnnxError> {
    let bytes = if tensor.data_location() == DataLocation::External {
        external.read(tensor, path)?
    } else if let Some(raw) = &tensor.raw_data {
        raw.clone()
    } else {
        typed_bytes(tensor).map_err(|why| bad(tensor, path, why))?
    };
    match expected_len(tensor) {
        Some(n) if n != bytes.len() as u64 => Err(bad(
            tensor,
            path,
            format!(
                "holds {} bytes but its shape {:?} and type {} need {n}",
                bytes.len(),
                tensor.dims,
                dtype_name(tensor.data_type())
            ),
        )),
        _ => Ok(bytes),
    }
}

fn bad(tensor: &TensorProto, path: &Path, why: String) -> OnnxError {
    OnnxError::TensorData { path: display(path), tensor: tensor.name().to_string(), why }
}

/// Converts the typed repeated fields (`float_data`, `int32_data`, ...) to raw bytes.
fn typed_bytes(t: &TensorProto) -> Result<Bytes, String> {
    use DataType::*;
    let dt = DataType::try_from(t.data_type()).map_err(|_| format!("unknown data type {}", t.data_type()))?;
    let out: Vec<u8> = match dt {
        Float | Complex64 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Double | Complex128 => t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Int64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Uint64 => t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Uint32 => t.uint64_data.iter().flat_map(|&v| (v as u32).to_le_bytes()).collect(),
        Int32 => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Int16 | Uint16 | Float16 | Bfloat16 => t.int32_data.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect(),
        Int8 | Uint8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz | Float8e8m0 => {
            t.int32_data.iter().map(|&v| v as u8).collect()
        }
        Uint4 | Int4 | Float4e2m1 | Uint2 | Int2 => t.int32_data.iter().map(|&v| v as u8).collect(),
        // One 6-bit value per int32 here, but bit-packed in raw_data: not converted.
        Float6e2m3 | Float6e3m2 => {
            return Err(format!("{} values in int32_data are not converted to packed bytes", dt.as_str_name()))
        }
        String => return Err("string tensors have no byte representation".into()),
        Undefined => return Err("data type is UNDEFINED".into()),
    };
    Ok(Bytes::from(out))
}

/// The values of a small INT64 tensor stored inside the model file (shape tensors);
/// `None` for other types or external data.
pub fn embedded_i64(t: &TensorProto) -> Option<Vec<i64>> {
    if t.data_type() != DataType::Int64 as i32 || t.data_location() == DataLocation::External {
        return None;
    }
    let values: Vec<i64> = match &t.raw_data {
        Some(raw) => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        None => t.int64_data.clone(),
    };
    (values.len() as u64 == numel(t)?).then_some(values)
}

/// The storage format of a floating-point ONNX element type; `None` for any other type.
pub fn float_format(dtype: i32) -> Option<FloatFormat> {
    Some(match DataType::try_from(dtype).ok()? {
        DataType::Float => FloatFormat::F32,
        DataType::Double => FloatFormat::F64,
        DataType::Float16 => FloatFormat::F16,
        DataType::Bfloat16 => FloatFormat::BF16,
        _ => return None,
    })
}

/// Decodes little-endian bytes of a float tensor to f32.
pub(crate) fn to_f32(tensor: &TensorProto, bytes: &[u8], path: &Path) -> Result<Vec<f32>, OnnxError> {
    match float_format(tensor.data_type()) {
        Some(format) => Ok(format.decode(bytes)),
        None => Err(bad(
            tensor,
            path,
            format!("expected a floating-point tensor, found {}", dtype_name(tensor.data_type())),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_added_by_onnx_1_23_are_named_and_have_no_byte_size() {
        // FLOAT6E2M3 and FLOAT6E3M2 came with the official onnx.proto of onnx 1.23.
        assert_eq!((dtype_name(27), dtype_name(28)), ("FLOAT6E2M3".to_string(), "FLOAT6E3M2".to_string()));
        assert_eq!((dtype_size(27), dtype_size(28)), (None, None), "6-bit values are bit-packed");
        assert_eq!(dtype_name(29), "<unknown type 29>");
    }
}
