//! Demos: the whole flow on the embedded tiny Llama (`neft demo`), and the pieces of
//! the English→Chichewa task for SmolLM2 (verse pairs, chrF).

pub mod bible;
pub mod chrf;
mod tiny;

pub use tiny::run_tiny_demo;
