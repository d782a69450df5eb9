//! neft: neuron-level fine-tuning (NeFT) compiled into ONNX graphs and run on stock
//! ONNX Runtime. See README.md for the flow; each module owns one stage of it.

pub mod adapter;
pub mod analyze;
pub mod artifact;
pub mod autodiff;
pub mod cli;
pub mod compile;
pub mod data;
pub mod demo;
pub mod fsutil;
pub mod inspect;
pub mod ir;
pub mod markup;
#[path = "../models/mod.rs"]
pub mod models;
pub mod onnx;
pub mod optim;
pub mod passes;
pub mod precision;
pub mod profile;
pub mod runtime;
pub mod select;
pub mod train;
pub mod types;
