//! Shape and type inference with tract, without executing anything.
//!
//! Large float initializers are handed to tract as typed inputs instead of data, so
//! inference never reads frozen weights; only small tensors (which may feed shape
//! computations) keep their values.

use crate::onnx::proto::{
    tensor_proto::DataType, tensor_shape_proto, type_proto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::onnx::{self, Model};
use prost::Message;
use std::collections::HashMap;
use std::fmt;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// One dimension: a number, or an expression of symbols (`batch`, `seq+1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Known(i64),
    Symbolic(String),
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// What is known of a value: its element type (an ONNX `DataType` number) and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueFact {
    pub dtype: Option<i32>,
    pub shape: Option<Vec<Dim>>,
}

/// Initializers with more elements than this are given to tract as typed inputs.
const KEEP_VALUES_UP_TO: u64 = 64;

/// Infers the type and shape of every named value of the model's main graph; an error
/// when inference fails anywhere.
pub fn infer(model: &Model) -> anyhow::Result<HashMap<String, ValueFact>> {
    match infer_partial(model)? {
        (facts, None) => Ok(facts),
        (_, Some(e)) => Err(e),
    }
}

/// [`infer`] that goes on past the ops it cannot analyse (real exports hold shape
/// subgraphs tract stops on, such as a `Flatten` of a product of symbols): what it
/// learned, and the first failure. Values downstream of a failure may stay unknown.
pub fn infer_partial(model: &Model) -> anyhow::Result<(HashMap<String, ValueFact>, Option<anyhow::Error>)> {
    let mut proto = model.proto.clone();
    let graph = proto.graph.as_mut().expect("checked at load");
    let inputs: std::collections::HashSet<String> = graph.input.iter().map(|i| i.name().to_string()).collect();
    let mut kept = vec![];
    for t in std::mem::take(&mut graph.initializer) {
        let numel = onnx::element_count(&t.dims);
        let float = matches!(
            DataType::try_from(t.data_type()),
            Ok(DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16)
        );
        if float && numel > KEEP_VALUES_UP_TO {
            if !inputs.contains(t.name()) {
                graph.input.push(typed_input(t.name(), t.data_type(), &t.dims));
            }
        } else {
            let mut t = t;
            if t.data_location() == onnx::proto::tensor_proto::DataLocation::External {
                // tract gets the bytes inline: it must not follow locations itself.
                let bytes = model.tensor_bytes(&t)?;
                t.external_data.clear();
                t.set_data_location(onnx::proto::tensor_proto::DataLocation::Default);
                t.raw_data = Some(bytes);
            }
            kept.push(t);
        }
    }
    graph.initializer = kept;
    let bytes = proto.encode_to_vec();
    let pb = tract_onnx::pb::ModelProto::decode(&bytes[..])?;
    let parsed = tract_onnx::onnx().parse(&pb, None)?;
    let mut im = parsed.model;
    let failure = im.analyse(true).err();
    let mut facts = HashMap::new();
    for (name, outlet) in parsed.outlets_by_name {
        let fact = im.outlet_fact(outlet)?;
        facts.insert(name, convert(fact));
    }
    Ok((facts, failure))
}

fn typed_input(name: &str, dtype: i32, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn convert(fact: &InferenceFact) -> ValueFact {
    let dtype = fact.datum_type.concretize().and_then(onnx_dtype);
    let shape = if fact.shape.is_open() {
        None
    } else {
        Some(
            fact.shape
                .dims()
                .map(|d| match d.concretize() {
                    Some(d) => match d.to_i64() {
                        Ok(n) => Dim::Known(n),
                        Err(_) => Dim::Symbolic(d.to_string()),
                    },
                    None => Dim::Unknown,
                })
                .collect(),
        )
    };
    ValueFact { dtype, shape }
}

fn onnx_dtype(dt: DatumType) -> Option<i32> {
    use DataType as D;
    let t = match dt {
        DatumType::F32 => D::Float,
        DatumType::F64 => D::Double,
        DatumType::F16 => D::Float16,
        DatumType::I64 => D::Int64,
        DatumType::I32 => D::Int32,
        DatumType::I16 => D::Int16,
        DatumType::I8 => D::Int8,
        DatumType::U8 => D::Uint8,
        DatumType::U16 => D::Uint16,
        DatumType::U32 => D::Uint32,
        DatumType::U64 => D::Uint64,
        DatumType::Bool => D::Bool,
        DatumType::TDim => D::Int64,
        _ => return None,
    };
    Some(t as i32)
}
