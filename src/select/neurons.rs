//! `neurons.json`: `{"format":"neft.neurons/1","layers":{"<weight>":{"axis":A,"rows":[...]}}}`
//! with `rows` sorted and unique, `axis` the weight axis that indexes neurons.

use crate::analyze::Layer;
use std::path::Path;

pub use crate::types::{LayerNeurons, NeuronSet, NEURONS_FORMAT};

#[derive(Debug, thiserror::Error)]
pub enum NeuronError {
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: not a neurons file: {why}")]
    Parse { file: String, why: String },
    #[error("{file}: layer '{weight}': {why}")]
    Layer { file: String, weight: String, why: String },
}

impl NeuronSet {
    /// Reads and checks the file's own structure (format tag, sorted unique rows).
    pub fn load(path: &Path) -> Result<NeuronSet, NeuronError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| NeuronError::Io { file: file.clone(), source })?;
        let mut set: NeuronSet =
            serde_json::from_str(&text).map_err(|e| NeuronError::Parse { file: file.clone(), why: e.to_string() })?;
        set.origin = file.clone();
        if set.format != NEURONS_FORMAT {
            return Err(NeuronError::Parse {
                file,
                why: format!("field 'format' is '{}', expected '{NEURONS_FORMAT}'", set.format),
            });
        }
        for (weight, l) in &set.layers {
            if let Some(w) = l.rows.windows(2).find(|w| w[0] >= w[1]) {
                let why = if w[0] == w[1] {
                    format!("row {} is listed twice; rows must be unique", w[0])
                } else {
                    format!("rows must be sorted ascending: {} comes before {}", w[0], w[1])
                };
                return Err(NeuronError::Layer { file, weight: weight.clone(), why });
            }
        }
        Ok(set)
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serializable");
        crate::fsutil::write_bytes_atomic(path, text.as_bytes())
    }

    /// Checks every entry against the layers of `model`: the weight exists, the axis is
    /// the one that indexes its neurons, every row is in range.
    pub fn check(&self, model: &str, layers: &[Layer]) -> Result<(), NeuronError> {
        let file = if self.origin.is_empty() { "neurons" } else { &self.origin };
        for (weight, sel) in &self.layers {
            let err = |why: String| NeuronError::Layer { file: file.into(), weight: weight.clone(), why };
            let Some(layer) = layers.iter().find(|l| &l.weight == weight) else {
                let known: Vec<&str> = layers.iter().take(8).map(|l| l.weight.as_str()).collect();
                let more = if layers.len() > 8 { format!(", and {} more", layers.len() - 8) } else { String::new() };
                return Err(err(format!(
                    "no trainable layer of {model} uses this weight (its layers are: {}{more}; see `neft inspect`)",
                    known.join(", ")
                )));
            };
            // A weight stored [in, out] also has input units along axis 0: the down
            // projection's share of an MLP unit.
            let input_units = layer.input_units_are_rows() && sel.axis == 0;
            if sel.axis != layer.axis && !input_units {
                return Err(err(format!(
                    "axis {} given, but the neurons of this {:?} weight {:?} lie along axis {}",
                    sel.axis, layer.kind, layer.shape, layer.axis
                )));
            }
            let size = layer.shape[sel.axis].max(0) as usize;
            if let Some(&bad) = sel.rows.iter().find(|&&r| r >= size) {
                return Err(err(format!(
                    "row {bad} is out of range: axis {} of {:?} has {size} rows (0..{size})",
                    sel.axis, layer.shape
                )));
            }
        }
        Ok(())
    }

    /// The paper's unit: in every gated MLP, a unit selected in any of gate, up or down
    /// is selected in all three (columns of gate and up, rows of down).
    pub fn expand_mlp_units(&self, mlps: &[crate::analyze::MlpUnits]) -> NeuronSet {
        let mut out = self.clone();
        for m in mlps {
            let mut units: std::collections::BTreeSet<usize> = std::collections::BTreeSet::new();
            for (w, axis) in m.gate.iter().map(|g| (g, 1)).chain([(&m.up, 1), (&m.down, 0)]) {
                if let Some(sel) = self.layers.get(w).filter(|s| s.axis == axis) {
                    units.extend(sel.rows.iter().copied());
                }
            }
            if units.is_empty() {
                continue;
            }
            let rows: Vec<usize> = units.into_iter().collect();
            for (w, axis) in m.gate.iter().map(|g| (g, 1)).chain([(&m.up, 1), (&m.down, 0)]) {
                out.layers.insert(w.clone(), LayerNeurons { axis, rows: rows.clone() });
            }
        }
        out
    }

    /// Number of selected neurons over all layers.
    pub fn count(&self) -> usize {
        self.layers.values().map(|l| l.rows.len()).sum()
    }
}
