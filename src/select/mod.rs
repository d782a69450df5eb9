//! Which neurons train: the [`NeuronSet`] (`neurons.json`) and its checks against the
//! model's layers.

mod neurons;

pub use neurons::{LayerNeurons, NeuronError, NeuronSet, NEURONS_FORMAT};
