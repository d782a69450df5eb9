//! The inputs a model declares, filled from a batch by name and element type: the one
//! place that knows what `attention_mask`, `position_ids` and `token_type_ids` hold,
//! shared by `neft train`, `profile`, `select`, `compile --data` and the evaluation
//! code. Any other input takes the JSONL field of its name (see [`super::fields`]);
//! a field of an input neft also fills (an `attention_mask`, `token_type_ids`) wins.
//!
//! In: the model's data inputs (name and declared element type), the name of its
//! labels input if any. Out: per batch (`[rows, len]` ids right-padded, the real length
//! of each row, the named tensors), one tensor per input, or an error naming an input
//! that the data cannot fill.

use super::fields::{Field, Fields};
use crate::onnx::make::declared;
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::GraphProto;
use crate::runtime::ort::HostTensor;
use ndarray::{ArrayD, IxDyn};
use std::collections::HashSet;

/// What one input gets from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The token ids (`input_ids`).
    Ids,
    /// Token labels `[rows, len]`: the ids, -100 where the loss ignores a position
    /// (Hugging Face's convention: the model shifts them itself).
    Labels,
    /// One class per row `[rows]` (JSONL "label"), for a labels input of rank 1.
    Classes,
    /// 1 on real tokens, 0 on padding.
    AttentionMask,
    /// 0, 1, ..., len-1 in every row.
    PositionIds,
    /// Zeros (one segment).
    TokenTypeIds,
    /// The JSONL field of the input's name, on every line.
    Field,
}

/// One data input of a graph as it declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct DataInput {
    pub name: String,
    /// ONNX element type (`None`: undeclared, fed as INT64).
    pub dtype: Option<i32>,
    pub rank: Option<usize>,
}

/// How each data input of a model is filled.
#[derive(Debug, Clone)]
pub struct TokenFeed {
    inputs: Vec<(String, TokenSource, i32)>,
}

/// What the error message lists: the inputs token data fill, and from what.
const FILLABLE: &str = "input_ids (the JSONL field \"input_ids\", or \"text\" / \"prompt\"+\"completion\" with a \
                        tokenizer), labels (\"labels\", else the ids; one \"label\" per line for a labels input of \
                        rank 1), attention_mask (1 on real tokens, 0 on padding), position_ids (0..n in each row), \
                        token_type_ids (zeros), and any input from the JSONL field of its name (a number or nested \
                        lists of numbers on every line)";

impl TokenFeed {
    /// `inputs`: the data inputs as declared; `labels`: the input that takes the
    /// labels, if any (per token, or one class per row when it is declared 1-D).
    pub fn new(inputs: &[DataInput], labels: Option<&str>) -> Result<TokenFeed, String> {
        let mut out = vec![];
        for DataInput { name, dtype, rank } in inputs {
            let source = match name.as_str() {
                "input_ids" => TokenSource::Ids,
                n if Some(n) == labels && *rank == Some(1) => TokenSource::Classes,
                n if Some(n) == labels => TokenSource::Labels,
                "attention_mask" => TokenSource::AttentionMask,
                "position_ids" => TokenSource::PositionIds,
                "token_type_ids" => TokenSource::TokenTypeIds,
                // A KV cache input: the graph was exported for generation step by step.
                other if other.starts_with("past_key") => {
                    return Err(format!(
                        "input '{other}' is a KV cache, which training does not feed: export the model without past \
                         (e.g. optimum's task text-generation rather than text-generation-with-past)"
                    ));
                }
                _ => TokenSource::Field,
            };
            let dtype = dtype.unwrap_or(DataType::Int64 as i32);
            let fits = match source {
                TokenSource::Field => Field { shape: vec![0], values: vec![] }.encode(name, dtype).map(|_| ()),
                _ => encode(source, dtype, &[1], &[0]).map(|_| ()).ok_or_else(|| {
                    let dt = DataType::try_from(dtype).map(|d| d.as_str_name()).unwrap_or("an unknown type");
                    format!("input '{name}' is {dt}; neft fills it as INT64, INT32, FLOAT or BOOL only")
                }),
            };
            fits?;
            out.push((name.clone(), source, dtype));
        }
        let from_tokens = |s: &TokenSource| !matches!(s, TokenSource::Ids | TokenSource::Field | TokenSource::Classes);
        if !out.iter().any(|(_, s, _)| *s == TokenSource::Ids) && out.iter().any(|(_, s, _)| from_tokens(s)) {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(format!(
                "the model's inputs ({}) cannot be fed from JSONL token data: it has no 'input_ids' input",
                names.join(", ")
            ));
        }
        Ok(TokenFeed { inputs: out })
    }

    /// The data inputs of `graph` (graph inputs that are not initializers) as
    /// declared, and a feed for them.
    pub fn of_graph(graph: &GraphProto, labels: Option<&str>) -> Result<TokenFeed, String> {
        TokenFeed::new(&data_inputs(graph), labels)
    }

    /// Input names and what fills them.
    pub fn sources(&self) -> impl Iterator<Item = (&str, TokenSource)> {
        self.inputs.iter().map(|(n, s, _)| (n.as_str(), *s))
    }

    /// Whether an input takes one class per row (every example needs a "label").
    pub fn needs_classes(&self) -> bool {
        self.sources().any(|(_, s)| s == TokenSource::Classes)
    }

    /// Whether the model takes token ids.
    pub fn takes_tokens(&self) -> bool {
        self.sources().any(|(_, s)| s == TokenSource::Ids)
    }

    /// Checks that the named tensors `fields` of the data (the same on every line) are
    /// what the model takes: every input fed from a field has it, every field feeds an
    /// input.
    pub fn check_fields<'f>(&self, fields: impl IntoIterator<Item = &'f str>) -> Result<(), String> {
        let fields: HashSet<&str> = fields.into_iter().collect();
        // A field of no input first: a misspelt name explains the missing input too.
        let inputs: Vec<&str> = self.sources().map(|(n, _)| n).collect();
        if let Some(extra) = fields.iter().find(|f| !inputs.contains(f)) {
            return Err(format!(
                "the data carry a field \"{extra}\" that feeds no input of the model (its inputs: {})",
                inputs.join(", ")
            ));
        }
        if let Some((name, _)) = self.sources().find(|(n, s)| *s == TokenSource::Field && !fields.contains(n)) {
            return Err(format!(
                "input '{name}' cannot be filled: the data have no field \"{name}\". Data fill {FILLABLE}"
            ));
        }
        Ok(())
    }

    /// One tensor per input for a batch: `ids` `[rows, len]` INT64, right-padded;
    /// `labels` `[rows, len]` INT64 (`None`: the ids); `classes` `[rows]` INT64, one per
    /// row, when the examples have them; `lengths[r]` real tokens in row `r`; `fields`
    /// the batch's named tensors (`[rows, ...]`).
    pub fn fill<'a>(
        &'a self,
        ids: &HostTensor,
        labels: Option<&HostTensor>,
        classes: Option<&HostTensor>,
        lengths: &[usize],
        fields: &Fields,
    ) -> Result<Vec<(&'a str, HostTensor)>, String> {
        self.check_fields(fields.keys().map(String::as_str))?;
        let shape = ids.shape().to_vec();
        let (rows, len) = (shape[0], shape.get(1).copied().unwrap_or(1));
        let mut out = vec![];
        for (name, source, dtype) in &self.inputs {
            if let Some(field) = fields.get(name) {
                out.push((name.as_str(), field.encode(name, *dtype)?));
                continue;
            }
            let (values, shape) = match source {
                TokenSource::Ids => (ids.clone().into_i64(), shape.clone()),
                TokenSource::Labels => (labels.unwrap_or(ids).clone().into_i64(), shape.clone()),
                TokenSource::Classes => {
                    let c = classes.ok_or_else(|| {
                        format!("input '{name}' takes one class per example: every JSONL line needs a \"label\"")
                    })?;
                    (c.clone().into_i64(), c.shape().to_vec())
                }
                TokenSource::AttentionMask => {
                    let real = |r: usize| lengths.get(r).copied().unwrap_or(len);
                    ((0..rows).flat_map(|r| (0..len).map(move |t| i64::from(t < real(r)))).collect(), shape.clone())
                }
                TokenSource::PositionIds => ((0..rows).flat_map(|_| 0..len as i64).collect(), shape.clone()),
                TokenSource::TokenTypeIds => (vec![0; rows * len], shape.clone()),
                TokenSource::Field => return Err(format!("input '{name}': the data have no field \"{name}\"")),
            };
            out.push((name.as_str(), encode(*source, *dtype, &shape, &values).expect("element type checked in new")));
        }
        Ok(out)
    }
}

/// Graph inputs that are not initializers, as declared.
pub fn data_inputs(graph: &GraphProto) -> Vec<DataInput> {
    let weights: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    graph
        .input
        .iter()
        .filter(|i| !weights.contains(i.name()))
        .map(|i| {
            let d = declared(i);
            DataInput {
                name: i.name().to_string(),
                dtype: d.as_ref().map(|d| d.0),
                rank: d.and_then(|d| d.1).map(|s| s.len()),
            }
        })
        .collect()
}

/// `values` as a tensor of element type `dtype`, where that type suits the source.
fn encode(source: TokenSource, dtype: i32, shape: &[usize], values: &[i64]) -> Option<HostTensor> {
    fn arr<T>(shape: &[usize], v: Vec<T>) -> Option<ArrayD<T>> {
        ArrayD::from_shape_vec(IxDyn(shape), v).ok()
    }
    match DataType::try_from(dtype).ok()? {
        DataType::Int64 => Some(HostTensor::I64(arr(shape, values.to_vec())?)),
        DataType::Int32 => Some(HostTensor::I32(arr(shape, values.iter().map(|&v| v as i32).collect())?)),
        DataType::Float if source == TokenSource::AttentionMask => {
            Some(HostTensor::F32(arr(shape, values.iter().map(|&v| v as f32).collect())?))
        }
        DataType::Bool if source == TokenSource::AttentionMask => {
            Some(HostTensor::Bool(arr(shape, values.iter().map(|&v| v != 0).collect())?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(names: &[(&str, DataType)]) -> Result<TokenFeed, String> {
        let rank = |n: &str| Some(if n == "classes" { 1 } else { 2 });
        let inputs: Vec<_> = names
            .iter()
            .map(|(n, d)| DataInput { name: n.to_string(), dtype: Some(*d as i32), rank: rank(n) })
            .collect();
        TokenFeed::new(&inputs, Some(if names.iter().any(|(n, _)| *n == "classes") { "classes" } else { "labels" }))
    }

    #[test]
    fn fills_every_token_input_by_name_and_type() {
        let f = feed(&[
            ("input_ids", DataType::Int64),
            ("attention_mask", DataType::Float),
            ("position_ids", DataType::Int32),
            ("token_type_ids", DataType::Int64),
            ("labels", DataType::Int64),
        ])
        .unwrap();
        let ids = HostTensor::i64(&[2, 3], vec![5, 6, 7, 8, 0, 0]);
        let labels = HostTensor::i64(&[2, 3], vec![5, 6, 7, 8, -100, -100]);
        let out = f.fill(&ids, Some(&labels), None, &[3, 1], &Fields::new()).unwrap();
        let get = |n: &str| out.iter().find(|(name, _)| *name == n).unwrap().1.clone();
        assert_eq!(get("input_ids"), ids);
        assert_eq!(get("labels"), labels);
        assert_eq!(get("attention_mask"), HostTensor::f32(&[2, 3], vec![1., 1., 1., 1., 0., 0.]));
        let pos = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0, 1, 2, 0, 1, 2]).unwrap();
        assert_eq!(get("position_ids"), HostTensor::I32(pos));
        assert_eq!(get("token_type_ids"), HostTensor::i64(&[2, 3], vec![0; 6]));
    }

    #[test]
    fn a_labels_input_of_rank_one_takes_one_class_per_row() {
        let f = feed(&[("input_ids", DataType::Int64), ("classes", DataType::Int64)]).unwrap();
        assert!(f.needs_classes());
        let ids = HostTensor::i64(&[2, 2], vec![5, 6, 7, 0]);
        let classes = HostTensor::i64(&[2], vec![1, 0]);
        let out = f.fill(&ids, None, Some(&classes), &[2, 1], &Fields::new()).unwrap();
        assert_eq!(out[1], ("classes", classes));
        let err = f.fill(&ids, None, None, &[2, 1], &Fields::new()).unwrap_err();
        assert!(err.contains("'classes' takes one class per example"), "{err}");
    }

    #[test]
    fn other_inputs_take_the_field_of_their_name_and_fields_win() {
        let f = feed(&[
            ("input_ids", DataType::Int64),
            ("pixel_values", DataType::Float),
            ("token_type_ids", DataType::Int64),
        ])
        .unwrap();
        let ids = HostTensor::i64(&[1, 2], vec![5, 6]);
        let field = |shape: &[usize], values: Vec<f64>| Field { shape: shape.to_vec(), values };
        let fields: Fields = [
            ("pixel_values".to_string(), field(&[1, 3], vec![0.5, 1.5, 2.5])),
            ("token_type_ids".to_string(), field(&[1, 2], vec![0.0, 1.0])),
        ]
        .into();
        let out = f.fill(&ids, None, None, &[2], &fields).unwrap();
        assert_eq!(out[1], ("pixel_values", HostTensor::f32(&[1, 3], vec![0.5, 1.5, 2.5])));
        assert_eq!(out[2], ("token_type_ids", HostTensor::i64(&[1, 2], vec![0, 1])));
        let err = f.fill(&ids, None, None, &[2], &Fields::new()).unwrap_err();
        assert!(err.contains("'pixel_values' cannot be filled: the data have no field \"pixel_values\""), "{err}");
        let extra: Fields = [("pixel_value".to_string(), field(&[1], vec![0.0]))].into();
        let err = f.check_fields(extra.keys().map(String::as_str)).unwrap_err();
        assert!(err.contains("a field \"pixel_value\" that feeds no input"), "{err}");
    }

    #[test]
    fn refuses_an_input_it_cannot_fill_and_names_it() {
        let err = feed(&[("input_ids", DataType::Int64), ("past_key_values.0.key", DataType::Float)]).unwrap_err();
        assert!(err.contains("export the model without past"), "{err}");
        let err = feed(&[("input_ids", DataType::Int64), ("position_ids", DataType::Float)]).unwrap_err();
        assert!(err.contains("'position_ids' is FLOAT"), "{err}");
        let err = feed(&[("attention_mask", DataType::Int64)]).unwrap_err();
        assert!(err.contains("no 'input_ids'"), "{err}");
        let err = feed(&[("x", DataType::String)]).unwrap_err();
        assert!(err.contains("input 'x' is STRING"), "{err}");
        assert!(!feed(&[("x", DataType::Float), ("target", DataType::Int64)]).unwrap().takes_tokens());
    }
}
