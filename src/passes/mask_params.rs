//! Mask mode, the paper's semantics: whole weights are parameters, and a 0/1 mask
//! keeps every unselected row's gradient at zero and its value exactly unchanged.
//!
//! In: a graph, its layers, the selected rows. Out: each selected weight (and its bias)
//! turned from an initializer into a graph input of the same name, with a BOOL mask
//! initializer `<W>.mask` shaped to broadcast along the neuron axis.

use super::{refuse, PassError};
use crate::analyze::{Layer, WeightSource};
use crate::ir::Graph;
use crate::onnx::make;
use crate::onnx::DataType;
use crate::types::NeuronSet;
use crate::types::Trainable;

const PASS: &str = "mask_params";

pub fn mask_params(graph: &mut Graph, layers: &[Layer], neurons: &NeuronSet) -> Result<Vec<Trainable>, PassError> {
    graph.set_pass(Some(PASS));
    let mut out = vec![];
    for (layer, sel) in super::selected_layers(PASS, layers, neurons)? {
        let weight = &layer.weight;
        if layer.source != WeightSource::Initializer {
            return Err(refuse(
                PASS,
                format!(
                    "weight '{weight}' is made by a {:?} node; only initializer weights can be trained",
                    layer.source
                ),
            ));
        }
        out.push(promote(graph, weight, &layer.shape, sel.axis, &sel.rows)?);
        // Bias elements belong to output neurons, not to input units.
        if let Some(b) = layer.bias.as_ref().filter(|_| sel.axis == layer.axis) {
            out.push(promote(graph, b, &[layer.neurons as i64], 0, &sel.rows)?);
        }
    }
    graph.set_pass(None);
    Ok(out)
}

/// `name` becomes an input; its mask is true on the selected rows along `axis`.
fn promote(graph: &mut Graph, name: &str, shape: &[i64], axis: usize, rows: &[usize]) -> Result<Trainable, PassError> {
    let t = graph.promote_to_input(name)?;
    if t.data_type() != DataType::Float as i32 {
        return Err(refuse(
            PASS,
            format!("'{name}' is {}; only FLOAT weights can be trained", crate::onnx::dtype_name(t.data_type())),
        ));
    }
    add_mask(graph, name, shape, axis, rows)
}

/// For a graph that already has gradients: the weight `name` (an initializer, made an
/// input, or already an input with a static shape) gets a mask along `axis`.
pub fn promote_with_mask(graph: &mut Graph, name: &str, axis: usize, rows: &[usize]) -> Result<Trainable, PassError> {
    graph.set_pass(Some(PASS));
    let result = match graph.initializer(name).map(|t| t.dims.clone()) {
        Some(dims) => promote(graph, name, &dims, axis, rows),
        None => {
            let declared = graph.inputs().find(|i| i.name() == name).and_then(make::declared);
            let dims: Option<Vec<i64>> = declared.and_then(|(_, shape)| {
                shape?.iter().map(|d| if let make::DimSpec::Fixed(n) = d { Some(*n) } else { None }).collect()
            });
            match dims {
                Some(dims) => add_mask(graph, name, &dims, axis, rows),
                None => Err(refuse(
                    PASS,
                    format!("'{name}' is neither an initializer nor a graph input with a static shape"),
                )),
            }
        }
    };
    graph.set_pass(None);
    result
}

fn add_mask(graph: &mut Graph, name: &str, shape: &[i64], axis: usize, rows: &[usize]) -> Result<Trainable, PassError> {
    let Some(&size) = shape.get(axis) else {
        return Err(refuse(PASS, format!("'{name}' of shape {shape:?} has no axis {axis}")));
    };
    if let Some(bad) = rows.iter().find(|&&r| r as i64 >= size) {
        return Err(refuse(
            PASS,
            format!("'{name}': row {bad} is out of range: axis {axis} of {shape:?} has {size} rows"),
        ));
    }
    let mut mask_shape = vec![1i64; shape.len()];
    mask_shape[axis] = size;
    let mut bits = vec![0u8; size as usize];
    for &r in rows {
        bits[r] = 1;
    }
    let mask = graph.fresh_name(&format!("{name}.mask"));
    graph.add_initializer(make::tensor_raw(&mask, DataType::Bool, &mask_shape, bits))?;
    Ok(Trainable {
        name: name.to_string(),
        shape: shape.to_vec(),
        source: name.to_string(),
        axis,
        rows: rows.to_vec(),
        mask: Some(mask),
        role: String::new(),
        source_rows: 0,
        lora: None,
    })
}
