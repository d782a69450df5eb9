//! What in a graph can be fine-tuned: the layers whose weight is an initializer, and
//! the neurons (rows of the weight along one axis) each one has.
//!
//! In: an [`ir::Graph`]. Out: [`Layer`]s, one per weight initializer, in graph order.

mod layers;
mod structure;

pub use layers::{find_layers, Layer, LayerKind, WeightSource};
pub use structure::{analyze_structure, MlpUnits, Role, Structure, ELEMENTWISE};
