//! Constructors for protos that passes, model builders and tests create.

use super::proto::tensor_proto::DataType;
use super::proto::tensor_shape_proto::{dimension, Dimension};
use super::proto::{
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use bytes::Bytes;

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimSpec {
    Fixed(i64),
    Named(String),
}

impl From<i64> for DimSpec {
    fn from(n: i64) -> Self {
        DimSpec::Fixed(n)
    }
}

impl From<&str> for DimSpec {
    fn from(s: &str) -> Self {
        DimSpec::Named(s.to_string())
    }
}

/// A tensor from raw little-endian bytes.
pub fn tensor_raw(name: &str, dtype: DataType, dims: &[i64], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        data_type: Some(dtype as i32),
        dims: dims.to_vec(),
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

pub fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    tensor_raw(name, DataType::Float, dims, data.iter().flat_map(|v| v.to_le_bytes()).collect())
}

pub fn tensor_f64(name: &str, dims: &[i64], data: &[f64]) -> TensorProto {
    tensor_raw(name, DataType::Double, dims, data.iter().flat_map(|v| v.to_le_bytes()).collect())
}

pub fn tensor_i64(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    tensor_raw(name, DataType::Int64, dims, data.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// A tensor type with a declared shape (`None`: rank unknown).
pub fn tensor_type(dtype: DataType, shape: Option<&[DimSpec]>) -> TypeProto {
    let shape = shape.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    DimSpec::Fixed(n) => dimension::Value::DimValue(*n),
                    DimSpec::Named(s) => dimension::Value::DimParam(s.clone()),
                }),
                denotation: None,
            })
            .collect(),
    });
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(dtype as i32), shape })),
        denotation: None,
    }
}

/// A value declaration, e.g. `value_info("x", Float, &["batch".into(), 16.into()])`.
pub fn value_info(name: &str, dtype: DataType, dims: &[DimSpec]) -> ValueInfoProto {
    ValueInfoProto { name: Some(name.to_string()), r#type: Some(tensor_type(dtype, Some(dims))), ..Default::default() }
}

/// A value declaration with a known type but no shape.
pub fn value_info_unshaped(name: &str, dtype: DataType) -> ValueInfoProto {
    ValueInfoProto { name: Some(name.to_string()), r#type: Some(tensor_type(dtype, None)), ..Default::default() }
}

pub fn node(
    op_type: &str,
    inputs: &[&str],
    outputs: &[&str],
    attributes: Vec<super::proto::AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(format!("{op_type}_{}", outputs.first().copied().unwrap_or(""))),
        op_type: Some(op_type.to_string()),
        attribute: attributes,
        ..Default::default()
    }
}

/// A model around `graph` importing the default ONNX domain at `opset`.
pub fn model(graph: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: Some(10),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }],
        producer_name: Some("neft".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        ..Default::default()
    }
}

/// The element type and declared shape of a value, if it has a tensor type.
pub fn declared(info: &ValueInfoProto) -> Option<(i32, Option<Vec<DimSpec>>)> {
    let Some(type_proto::Value::TensorType(t)) = info.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let shape = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(dimension::Value::DimValue(n)) => DimSpec::Fixed(*n),
                Some(dimension::Value::DimParam(p)) => DimSpec::Named(p.clone()),
                None => DimSpec::Named("?".into()),
            })
            .collect()
    });
    Some((t.elem_type(), shape))
}
