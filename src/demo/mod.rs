//! The default demo: SmolLM2-135M tuned with NeFT to translate English to Chichewa.

pub mod bible;
pub mod chrf;
