//! The two sessions of a training run: the train step and the eval graph beside it.
//!
//! Both run with lean memory (no memory pattern). The eval graph is opened with only
//! the outputs a trainer fetches (its scalars): ONNX Runtime computes every output of a
//! graph whatever a run asks for, and an eval graph's `logits` cost a head product over
//! every position and a batch × sequence × vocabulary buffer that the loss does not need.
//! On the CPU the two sessions share the frozen weights they both hold
//! ([`super::shared_weights`]), so the eval graph's products use the train step's packed
//! copies; without shareable weights, or on CUDA, the eval graph packs nothing, since it
//! runs now and then and packing would cost a copy of every weight.
//!
//! In: the two graph files, the eval outputs wanted, session options. Out: the sessions.

use super::ort::{Ep, RuntimeError, Session, SessionOptions};
use super::shared_weights::SharedWeights;
use crate::ir::Graph;
use crate::onnx::Model;
use std::path::Path;
use std::sync::Arc;

/// Opens the train step at `train` and the eval graph at `eval`, the latter cut down to
/// the outputs named in `eval_outputs`.
pub fn open_train_and_eval(
    train: &Path,
    eval: &Path,
    eval_outputs: &[String],
    opts: &SessionOptions,
) -> Result<(Session, Session), RuntimeError> {
    let lean = SessionOptions { no_memory_pattern: true, ..opts.clone() };
    let eval_model = with_outputs(crate::onnx::load(eval)?, eval_outputs)
        .map_err(|why| RuntimeError::Session { model: eval.display().to_string(), why })?;
    let eval_bytes = crate::onnx::encode(&eval_model.proto, eval)?;
    let shared = match lean.ep == Ep::Cpu && !lean.no_packing {
        true => {
            let train_model = crate::onnx::load(train)?;
            Some(SharedWeights::between(&[&train_model, &eval_model])?).filter(|s| !s.is_empty()).map(Arc::new)
        }
        false => None,
    };
    let Some(shared) = shared else {
        let train = Session::from_file(train, &lean)?;
        let eval = Session::from_bytes_beside(&eval_bytes, eval, &SessionOptions { no_packing: true, ..lean })?;
        return Ok((train, eval));
    };
    let both = SessionOptions { shared: Some(shared.clone()), ..lean };
    let train = Session::from_file(train, &both)?;
    let eval = Session::from_bytes_beside(&eval_bytes, eval, &both)?;
    shared.release_pages();
    Ok((train, eval))
}

/// `model` with only the graph outputs named in `keep`, and only the nodes and
/// initializers they need. A model none of whose outputs is named stays whole.
fn with_outputs(mut model: Model, keep: &[String]) -> Result<Model, String> {
    let proto = model.proto.graph.as_ref().expect("a loaded model has a graph");
    let outputs: Vec<_> = proto.output.iter().filter(|o| keep.iter().any(|k| k == o.name())).cloned().collect();
    if outputs.is_empty() || outputs.len() == proto.output.len() {
        return Ok(model);
    }
    let mut graph = Graph::from_proto(proto).map_err(|e| e.to_string())?;
    graph.set_outputs(outputs).map_err(|e| e.to_string())?;
    graph.eliminate_dead();
    model.proto.graph = Some(graph.to_proto());
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::make::{model, node, value_info, value_info_unshaped};
    use crate::onnx::proto::GraphProto;
    use crate::onnx::DataType;

    fn two_outputs() -> Model {
        let graph = GraphProto {
            node: vec![node("Relu", &["x"], &["kept"], vec![]), node("Neg", &["x"], &["dropped"], vec![])],
            input: vec![value_info("x", DataType::Float, &[2.into()])],
            output: vec![value_info_unshaped("kept", DataType::Float), value_info_unshaped("dropped", DataType::Float)],
            ..Default::default()
        };
        Model::new(model(graph, 18), ".")
    }

    #[test]
    fn an_eval_graph_keeps_only_the_wanted_outputs_and_what_they_need() {
        let cut = with_outputs(two_outputs(), &["kept".into(), "absent".into()]).unwrap();
        let g = cut.graph();
        assert_eq!(g.output.iter().map(|o| o.name()).collect::<Vec<_>>(), ["kept"]);
        assert_eq!(g.node.iter().map(|n| n.op_type()).collect::<Vec<_>>(), ["Relu"]);
        assert_eq!(g.input.len(), 1, "inputs stay");
    }

    #[test]
    fn an_eval_graph_that_has_none_of_the_wanted_outputs_stays_whole() {
        let whole = with_outputs(two_outputs(), &["absent".into()]).unwrap();
        assert_eq!(whole.graph().node.len(), 2);
    }
}
