//! The inputs a model declares, filled from a batch of token rows by name and element
//! type: the one place that knows what `attention_mask`, `position_ids` and
//! `token_type_ids` hold, shared by `neft train`, `profile`, `select`, `compile --data`
//! and the evaluation code.
//!
//! In: the model's data inputs (name and declared element type), the name of its
//! labels input if any. Out: per batch (`[rows, len]` ids right-padded, the real length
//! of each row), one tensor per input, or at construction an error naming an input
//! that token data cannot fill.

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
                        rank 1), attention_mask (1 on real tokens, 0 on padding), position_ids (0..n in each row) and \
                        token_type_ids (zeros)";

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
                other => {
                    // A KV cache input: the graph was exported for generation step by step.
                    let hint = if other.starts_with("past_key") {
                        " (a KV cache: export the model without past, e.g. optimum's task text-generation rather \
                         than text-generation-with-past)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "input '{other}' cannot be filled from JSONL token data: no JSONL field fills it{hint}. \
                         Token data fill {FILLABLE}; feed other inputs from a model that computes them, or remove \
                         them from the graph"
                    ));
                }
            };
            let dtype = dtype.unwrap_or(DataType::Int64 as i32);
            if encode(source, dtype, &[1], &[0]).is_none() {
                let dt = DataType::try_from(dtype).map(|d| d.as_str_name()).unwrap_or("an unknown type");
                return Err(format!("input '{name}' is {dt}; neft fills it as INT64, INT32, FLOAT or BOOL only"));
            }
            out.push((name.clone(), source, dtype));
        }
        if !out.iter().any(|(_, s, _)| *s == TokenSource::Ids) {
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

    /// One tensor per input for a batch: `ids` `[rows, len]` INT64, right-padded;
    /// `labels` `[rows, len]` INT64 (`None`: the ids); `classes` `[rows]` INT64, one per
    /// row, when the examples have them; `lengths[r]` real tokens in row `r`.
    pub fn fill<'a>(
        &'a self,
        ids: &HostTensor,
        labels: Option<&HostTensor>,
        classes: Option<&HostTensor>,
        lengths: &[usize],
    ) -> Result<Vec<(&'a str, HostTensor)>, String> {
        let shape = ids.shape().to_vec();
        let (rows, len) = (shape[0], shape.get(1).copied().unwrap_or(1));
        let mut out = vec![];
        for (name, source, dtype) in &self.inputs {
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
        let out = f.fill(&ids, Some(&labels), None, &[3, 1]).unwrap();
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
        let out = f.fill(&ids, None, Some(&classes), &[2, 1]).unwrap();
        assert_eq!(out[1], ("classes", classes));
        let err = f.fill(&ids, None, None, &[2, 1]).unwrap_err();
        assert!(err.contains("'classes' takes one class per example"), "{err}");
    }

    #[test]
    fn refuses_an_input_it_cannot_fill_and_names_it() {
        let err = feed(&[("input_ids", DataType::Int64), ("pixel_values", DataType::Float)]).unwrap_err();
        assert!(err.contains("'pixel_values'") && err.contains("attention_mask (1 on real tokens"), "{err}");
        let err = feed(&[("input_ids", DataType::Int64), ("past_key_values.0.key", DataType::Float)]).unwrap_err();
        assert!(err.contains("export the model without past"), "{err}");
        let err = feed(&[("input_ids", DataType::Int64), ("position_ids", DataType::Float)]).unwrap_err();
        assert!(err.contains("'position_ids' is FLOAT"), "{err}");
        let err = feed(&[("attention_mask", DataType::Int64)]).unwrap_err();
        assert!(err.contains("no 'input_ids'"), "{err}");
    }
}
