//! Model builders: graphs written by neft itself (a Llama-family decoder), and the
//! readers they take weights from.

pub mod folder;
pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod kquants;
pub mod llama;
pub mod tokenizer;
pub mod weights;
