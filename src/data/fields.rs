//! Named tensors carried by JSONL lines: any field that is not one of the known token
//! fields (`text`, `prompt`, `completion`, `input_ids`, `labels`, `label`) is a number
//! or nested lists of numbers that feeds the graph input of the same name
//! (`{"input_ids": [...], "pixel_values": [[...], ...]}`, or `{"x": [...], "target": 3}`
//! for a model that takes no tokens at all).
//!
//! In: JSON values, one per line and field. Out: per batch, one `[rows, ...]` tensor
//! per field: a field whose first axis is as long as its line's `input_ids` on every
//! line runs along the tokens and is padded with zeros to the batch's length, as the
//! ids are; other fields must have one shape on every line and are stacked; rows past
//! the examples are zeros.

use crate::onnx::proto::tensor_proto::DataType;
use crate::runtime::ort::HostTensor;
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use std::collections::BTreeMap;

/// One field of one line (or of a batch, stacked): a rectangular array of numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// The named tensors of a line or a batch, by field name.
pub type Fields = BTreeMap<String, Field>;

impl Field {
    /// A number or rectangular nested lists of numbers (booleans count as 0/1).
    pub fn parse(name: &str, value: &Value) -> Result<Field, String> {
        let mut shape = vec![];
        let mut at = value;
        while let Value::Array(items) = at {
            shape.push(items.len());
            match items.first() {
                Some(first) => at = first,
                None => break,
            }
        }
        let mut values = Vec::with_capacity(shape.iter().product());
        flatten(value, &shape, &mut values)
            .map_err(|why| format!("field \"{name}\" is not a number or nested lists of numbers: {why}"))?;
        Ok(Field { shape, values })
    }

    /// The first `n` entries along the first axis.
    fn truncated(&self, n: usize) -> Field {
        let inner: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = n;
        Field { shape, values: self.values[..n * inner].to_vec() }
    }

    /// The tensor a graph input of element type `dtype` takes; `None` when the type is
    /// not one a JSON number fills, `Err` when a value does not fit it.
    pub fn encode(&self, name: &str, dtype: i32) -> Result<HostTensor, String> {
        let dt = DataType::try_from(dtype).map_err(|_| format!("input '{name}' has an unknown element type"))?;
        let integral = || match self.values.iter().find(|v| v.fract() != 0.0 || !v.is_finite()) {
            Some(v) => Err(format!("field \"{name}\" holds {v}, but input '{name}' is {}", dt.as_str_name())),
            None => Ok(()),
        };
        fn array<T>(shape: &[usize], v: Vec<T>, name: &str) -> Result<ArrayD<T>, String> {
            ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| format!("field \"{name}\": {e}"))
        }
        Ok(match dt {
            DataType::Float => {
                HostTensor::F32(array(&self.shape, self.values.iter().map(|&v| v as f32).collect(), name)?)
            }
            DataType::Double => HostTensor::F64(array(&self.shape, self.values.clone(), name)?),
            DataType::Int64 => {
                integral()?;
                HostTensor::I64(array(&self.shape, self.values.iter().map(|&v| v as i64).collect(), name)?)
            }
            DataType::Int32 => {
                integral()?;
                HostTensor::I32(array(&self.shape, self.values.iter().map(|&v| v as i32).collect(), name)?)
            }
            DataType::Bool => {
                HostTensor::Bool(array(&self.shape, self.values.iter().map(|&v| v != 0.0).collect(), name)?)
            }
            other => {
                return Err(format!(
                    "input '{name}' is {}; JSONL fields fill FLOAT, DOUBLE, INT64, INT32 or BOOL inputs",
                    other.as_str_name()
                ))
            }
        })
    }
}

fn flatten(value: &Value, shape: &[usize], out: &mut Vec<f64>) -> Result<(), String> {
    match (value, shape.split_first()) {
        (Value::Number(n), None) => out.push(n.as_f64().ok_or("a number out of range")?),
        (Value::Bool(b), None) => out.push(f64::from(u8::from(*b))),
        (Value::Array(items), Some((&n, rest))) if items.len() == n => {
            for item in items {
                flatten(item, rest, out)?;
            }
        }
        (Value::Array(items), Some((&n, _))) => {
            return Err(format!("lists of {n} and {} entries at one depth", items.len()))
        }
        (Value::Array(_), None) => return Err("lists nested deeper in some places than in others".into()),
        (other, _) => {
            let kind = match other {
                Value::String(_) => "a string",
                Value::Object(_) => "an object",
                Value::Null => "null",
                _ => "a number where lists were expected",
            };
            return Err(format!("it holds {kind}"));
        }
    }
    Ok(())
}

/// Cuts a field that runs along a line's `tokens` ids to the first `keep` of them.
pub fn truncate_per_token(fields: &mut Fields, tokens: usize, keep: usize) {
    for f in fields.values_mut() {
        if keep < tokens && f.shape.first() == Some(&tokens) {
            *f = f.truncated(keep);
        }
    }
}

/// How one field of several lines becomes one tensor.
#[derive(Debug, Clone, PartialEq)]
enum Layout {
    /// Every line has this shape: `[rows, shape...]`.
    Same(Vec<usize>),
    /// The first axis is each line's tokens, the rest is this: `[rows, len, rest...]`.
    PerToken(Vec<usize>),
}

/// The layout of field `name` over lines of `(field, tokens)`, or why there is none.
fn layout(name: &str, lines: &[(Option<&Field>, usize)]) -> Result<Layout, String> {
    let missing = lines.iter().position(|(f, _)| f.is_none());
    let present = lines.iter().position(|(f, _)| f.is_some());
    if let (Some(m), Some(p)) = (missing, present) {
        return Err(format!(
            "field \"{name}\" is on example {} but not on example {}: every line needs it",
            p + 1,
            m + 1
        ));
    }
    let shapes: Vec<(&[usize], usize)> =
        lines.iter().filter_map(|(f, n)| Some((f.as_ref()?.shape.as_slice(), *n))).collect();
    let Some(&(first, _)) = shapes.first() else { return Ok(Layout::Same(vec![])) };
    // Along the tokens first: such a field pads to the batch's length with the ids.
    let rest = &first[first.len().min(1)..];
    if shapes.iter().all(|(s, n)| *n > 0 && s.first() == Some(n) && &s[1..] == rest) {
        return Ok(Layout::PerToken(rest.to_vec()));
    }
    if shapes.iter().all(|(s, _)| *s == first) {
        return Ok(Layout::Same(first.to_vec()));
    }
    let odd = shapes.iter().position(|(s, _)| *s != first).expect("shapes differ");
    Err(format!(
        "field \"{name}\" has shape {:?} on example 1 and {:?} on example {}: a field either has one shape on every \
         line or runs along the tokens (first axis as long as the line's input_ids)",
        first,
        shapes[odd].0,
        odd + 1
    ))
}

/// Every field of `lines` with its layout, or why a field does not stack.
fn layouts<'a>(lines: impl Iterator<Item = (&'a Fields, usize)> + Clone) -> Result<Vec<(String, Layout)>, String> {
    let mut names: Vec<String> = lines.clone().flat_map(|(f, _)| f.keys().cloned()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let column: Vec<_> = lines.clone().map(|(f, n)| (f.get(&name), n)).collect();
            let l = layout(&name, &column)?;
            Ok((name, l))
        })
        .collect()
}

/// Checks that the fields of `lines` stack into batches: every line has each, with
/// one shape or one per token.
pub fn check<'a>(lines: impl Iterator<Item = (&'a Fields, usize)> + Clone) -> Result<(), String> {
    layouts(lines).map(|_| ())
}

/// Every field of `lines` (`(fields, tokens)` per example) as one tensor of `rows`
/// rows (rows past the lines are zeros); per-token fields padded with zeros to `len`.
pub fn stack(lines: &[(&Fields, usize)], rows: usize, len: usize) -> Result<Fields, String> {
    let mut out = Fields::new();
    for (name, layout) in layouts(lines.iter().copied())? {
        let row_shape = match layout {
            Layout::Same(shape) => shape,
            Layout::PerToken(rest) => [vec![len], rest].concat(),
        };
        let row_size: usize = row_shape.iter().product();
        let mut values = vec![0.0; rows * row_size];
        for (r, (fields, _)) in lines.iter().enumerate() {
            let f = &fields[&name];
            let n = f.values.len().min(row_size);
            values[r * row_size..r * row_size + n].copy_from_slice(&f.values[..n]);
        }
        out.insert(name, Field { shape: [vec![rows], row_shape].concat(), values });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(v: Value) -> Field {
        Field::parse("f", &v).unwrap()
    }

    #[test]
    fn parses_numbers_and_rectangular_lists() {
        assert_eq!(field(json!(3)), Field { shape: vec![], values: vec![3.0] });
        assert_eq!(field(json!([[1, 2.5], [true, 4]])), Field { shape: vec![2, 2], values: vec![1.0, 2.5, 1.0, 4.0] });
        assert_eq!(field(json!([])), Field { shape: vec![0], values: vec![] });
        let err = |v| Field::parse("pixel_values", &v).unwrap_err();
        assert!(
            err(json!([[1, 2], [3]])).contains("\"pixel_values\"") && err(json!([[1, 2], [3]])).contains("2 and 1")
        );
        assert!(err(json!([[1, 2], 3])).contains("a number where lists were expected"), "{}", err(json!([[1, 2], 3])));
        assert!(err(json!(["a"])).contains("a string"));
        assert!(err(json!([[1], [[2]]])).contains("deeper"));
    }

    #[test]
    fn stacks_equal_shapes_and_pads_per_token_fields() {
        let line = |pix: Value, per: Value| -> Fields {
            [("pix".to_string(), field(pix)), ("per".to_string(), field(per))].into_iter().collect()
        };
        let (a, b) = (line(json!([1, 2]), json!([[1], [2], [3]])), line(json!([3, 4]), json!([[5]])));
        let out = stack(&[(&a, 3), (&b, 1)], 3, 4).unwrap();
        assert_eq!(out["pix"], Field { shape: vec![3, 2], values: vec![1., 2., 3., 4., 0., 0.] });
        let per = [1., 2., 3., 0., 5., 0., 0., 0., 0., 0., 0., 0.].to_vec();
        assert_eq!(out["per"], Field { shape: vec![3, 4, 1], values: per });
    }

    #[test]
    fn refuses_fields_that_do_not_stack_naming_field_and_example() {
        let one = |v: Value| -> Fields { [("pix".to_string(), field(v))].into_iter().collect() };
        let (a, b) = (one(json!([1, 2])), one(json!([1, 2, 3])));
        let err = stack(&[(&a, 5), (&b, 5)], 2, 5).unwrap_err();
        assert!(err.contains("\"pix\" has shape [2] on example 1 and [3] on example 2"), "{err}");
        let none = Fields::new();
        let err = stack(&[(&a, 5), (&none, 5)], 2, 5).unwrap_err();
        assert!(err.contains("on example 1 but not on example 2"), "{err}");
    }

    #[test]
    fn encodes_by_the_declared_type_and_refuses_fractions_for_integers() {
        let f = field(json!([1, 0, 2]));
        assert_eq!(f.encode("m", DataType::Int64 as i32).unwrap(), HostTensor::i64(&[3], vec![1, 0, 2]));
        assert_eq!(f.encode("m", DataType::Float as i32).unwrap(), HostTensor::f32(&[3], vec![1., 0., 2.]));
        let err = field(json!([0.5])).encode("m", DataType::Int32 as i32).unwrap_err();
        assert!(err.contains("holds 0.5, but input 'm' is INT32"), "{err}");
        assert!(f.encode("m", DataType::String as i32).unwrap_err().contains("is STRING"));
    }

    #[test]
    fn truncation_cuts_only_fields_along_the_tokens() {
        let mut f: Fields =
            [("per".to_string(), field(json!([1, 2, 3, 4]))), ("pix".to_string(), field(json!([1, 2])))].into();
        truncate_per_token(&mut f, 4, 2);
        assert_eq!(f["per"].values, vec![1., 2.]);
        assert_eq!(f["pix"].values, vec![1., 2.]);
    }
}
