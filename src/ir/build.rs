//! Helpers passes use to add nodes: fresh unique names and attribute constructors.

use super::graph::{Graph, IrError};
use super::TensorName;
use crate::onnx::proto::{AttributeProto, NodeProto};

impl Graph {
    /// A name not yet used for any value or node, derived from `hint`.
    pub fn fresh_name(&mut self, hint: &str) -> String {
        let hint = if hint.is_empty() { "t" } else { hint };
        let mut name = hint.to_string();
        let mut k = 1;
        while self.taken.contains(&name) {
            name = format!("{hint}_{k}");
            k += 1;
        }
        self.taken.insert(name.clone());
        name
    }

    /// Adds `op_type(inputs) -> n_outputs` with fresh output and node names from `hint`;
    /// returns the output names.
    pub fn add_node(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        n_outputs: usize,
        attributes: Vec<AttributeProto>,
        hint: &str,
    ) -> Result<Vec<TensorName>, IrError> {
        let outputs: Vec<String> = (0..n_outputs).map(|_| self.fresh_name(hint)).collect();
        let proto = NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name: Some(self.fresh_name(&format!("{hint}.{op_type}"))),
            op_type: Some(op_type.to_string()),
            attribute: attributes,
            ..Default::default()
        };
        self.add_op(proto)?;
        Ok(outputs)
    }

    /// [`Graph::add_node`] for the common single-output case.
    pub fn add1(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        hint: &str,
    ) -> Result<TensorName, IrError> {
        Ok(self.add_node(op_type, inputs, 1, attributes, hint)?.remove(0))
    }

    /// A new scalar FLOAT initializer.
    pub fn const_f32(&mut self, hint: &str, value: f32) -> TensorName {
        let name = self.fresh_name(hint);
        let t = crate::onnx::make::tensor_f32(&name, &[], &[value]);
        self.push_initializer(t).expect("fresh name");
        name
    }

    /// A new 1-D INT64 initializer (axes, shapes, indices).
    pub fn const_i64s(&mut self, hint: &str, values: &[i64]) -> TensorName {
        let name = self.fresh_name(hint);
        let t = crate::onnx::make::tensor_i64(&name, &[values.len() as i64], values);
        self.push_initializer(t).expect("fresh name");
        name
    }

    /// A new INT64 initializer of any shape.
    pub fn const_i64_tensor(&mut self, hint: &str, dims: &[i64], values: &[i64]) -> TensorName {
        let name = self.fresh_name(hint);
        let t = crate::onnx::make::tensor_i64(&name, dims, values);
        self.push_initializer(t).expect("fresh name");
        name
    }

    /// A new scalar INT64 initializer.
    pub fn const_i64(&mut self, hint: &str, value: i64) -> TensorName {
        let name = self.fresh_name(hint);
        let t = crate::onnx::make::tensor_i64(&name, &[], &[value]);
        self.push_initializer(t).expect("fresh name");
        name
    }

    /// Labels the nodes added from now on with the pass that adds them (`None` stops).
    pub fn set_pass(&mut self, label: Option<&str>) {
        self.pass = label.map(str::to_string);
    }
}

/// Attribute constructors.
pub mod attr {
    use crate::onnx::proto::attribute_proto::AttributeType;
    use crate::onnx::proto::{AttributeProto, TensorProto};

    fn base(name: &str, ty: AttributeType) -> AttributeProto {
        let mut a = AttributeProto { name: Some(name.into()), ..Default::default() };
        a.set_type(ty);
        a
    }
    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto { i: Some(v), ..base(name, AttributeType::Int) }
    }
    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { ints: v.to_vec(), ..base(name, AttributeType::Ints) }
    }
    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto { f: Some(v), ..base(name, AttributeType::Float) }
    }
    pub fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto { s: Some(v.as_bytes().to_vec().into()), ..base(name, AttributeType::String) }
    }
    pub fn tensor(name: &str, v: TensorProto) -> AttributeProto {
        AttributeProto { t: Some(v), ..base(name, AttributeType::Tensor) }
    }
}
