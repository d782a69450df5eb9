//! Any bytes given to the model loader must give a model or an error, never a panic,
//! a hang or an unbounded allocation. Models that load are also pushed through the IR
//! and the layer analysis, which walk whatever structure the loader accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let dir = Path::new("/nonexistent-neft-fuzz");
    if let Ok(model) = neft::onnx::load_bytes(bytes::Bytes::copy_from_slice(data), dir, Path::new("fuzz.onnx")) {
        if let Ok(graph) = neft::ir::Graph::from_proto(model.graph()) {
            let _ = graph.to_proto();
            let _ = neft::analyze::find_layers(&graph);
            let _ = neft::inspect::summarize(&model, &graph);
        }
    }
});
