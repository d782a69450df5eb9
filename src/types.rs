//! Types the stages share: what a selection is (`NeuronSet`, `Unit`), how a graph is
//! rewritten (`Mode`, `Trainable`) and what its loss is (`LossSpec`, `LossInfo`).
//!
//! They live here, below every stage, so that select, the passes and compile can all
//! use them without depending on one another.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How selected rows become parameters (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only the selected rows are parameters.
    Split,
    /// Whole weights are parameters; a mask freezes the unselected rows (the paper).
    Mask,
    /// Whole weights of the selected layers train, rows ignored: full fine-tuning of
    /// those matrices, the baseline NeFT is measured against.
    Full,
    /// Whole weights of the selected layers stay frozen; each gains a trainable
    /// low-rank update `X·A·B·(alpha/rank)` (LoRA, the other baseline).
    Lora,
}

impl Mode {
    /// The name `--mode` takes and `plan.json` records.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Split => "split",
            Mode::Mask => "mask",
            Mode::Full => "full",
            Mode::Lora => "lora",
        }
    }
}

/// LoRA's shape (`--rank`, `--alpha`) and the seed of its `A` matrices.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraOptions {
    pub rank: usize,
    pub alpha: f32,
    pub seed: u64,
}

impl LoraOptions {
    /// The factor the update is scaled by, PEFT's `scaling`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// Which factor of a LoRA update a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoraPart {
    /// `[in, rank]`, random at the start.
    A,
    /// `[rank, out]`, zero at the start: the first step starts from the base model.
    B,
}

/// A parameter that is one factor of the update `ΔW = A·B·scale` of the weight
/// `source`, with `A`, `B` in the `X·W` orientation; `transposed`: the weight is stored
/// `[out, in]` (a Gemm with `transB=1`), so it changes by `ΔWᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraFactor {
    pub part: LoraPart,
    pub scale: f32,
    pub transposed: bool,
}

/// What one selected row stands for (`--unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// One row of one weight.
    Neuron,
    /// A gated-MLP unit: up and gate columns and the down row, selected together.
    MlpUnit,
}

impl std::str::FromStr for Unit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "neuron" => Ok(Unit::Neuron),
            "mlp-unit" => Ok(Unit::MlpUnit),
            _ => Err(format!("unknown unit '{s}': use neuron or mlp-unit")),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "split" => Ok(Mode::Split),
            "mask" => Ok(Mode::Mask),
            "full" => Ok(Mode::Full),
            "lora" => Ok(Mode::Lora),
            _ => Err(format!("unknown mode '{s}': use split, mask, full or lora")),
        }
    }
}

/// The `format` tag of a `neurons.json` file.
pub const NEURONS_FORMAT: &str = "neft.neurons/1";

/// One weight's selected rows along `axis`, the weight axis that indexes neurons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerNeurons {
    pub axis: usize,
    pub rows: Vec<usize>,
}

/// The selected neurons, per weight initializer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NeuronSet {
    pub format: String,
    pub layers: BTreeMap<String, LayerNeurons>,
    /// The file it was read from, for messages.
    #[serde(skip)]
    pub origin: String,
}

impl NeuronSet {
    pub fn new() -> Self {
        NeuronSet { format: NEURONS_FORMAT.into(), layers: BTreeMap::new(), origin: String::new() }
    }
}

/// How to find or build the loss (`--loss`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossSpec {
    /// A scalar output whose name contains "loss", else causal LM on `logits`.
    Auto,
    CausalLm,
    /// Use this scalar output as the loss.
    Output(String),
}

impl std::str::FromStr for LossSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => LossSpec::Auto,
            "causal-lm" => LossSpec::CausalLm,
            other => LossSpec::Output(other.to_string()),
        })
    }
}

/// What the training graph's loss is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossInfo {
    /// The scalar loss output.
    pub loss: String,
    /// `output` (the model's own), or appended: `causal-lm` or `sequence-classification`.
    pub kind: String,
    /// The labels input added for an appended loss (`[batch, seq]`, or `[batch]` for
    /// sequence classification).
    pub labels: Option<String>,
    /// A scalar output counting the tokens (rows, for sequence classification) the loss
    /// averages over.
    pub tokens: Option<String>,
    /// A scalar output counting the rows whose most likely class is their label (sequence
    /// classification): the eval graph's accuracy is this over `tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<String>,
}

impl LossInfo {
    /// The eval graph's scalar outputs: the loss, and the token count and the rows
    /// predicted right where the loss has them.
    pub fn scalars(&self) -> Vec<String> {
        let mut names = vec![self.loss.clone()];
        names.extend(self.tokens.clone());
        names.extend(self.correct.clone());
        names
    }
}

/// The label value a loss does not count (Hugging Face's convention).
pub const IGNORE_INDEX: i64 = -100;

/// A tensor the training graph takes as a parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trainable {
    /// The graph input holding its value.
    pub name: String,
    pub shape: Vec<i64>,
    /// The initializer it comes from.
    pub source: String,
    /// The source axis the rows index.
    pub axis: usize,
    /// The selected rows of the source along `axis`.
    pub rows: Vec<usize>,
    /// Mask mode: the BOOL initializer marking trainable elements; the parameter is
    /// then the whole source tensor.
    pub mask: Option<String>,
    /// The source layer's structural label (`block 3 / mlp.up`), for reports.
    #[serde(default)]
    pub role: String,
    /// Rows of the source along `axis` (selected or not), for reports.
    #[serde(default)]
    pub source_rows: usize,
    /// LoRA mode: the factor this parameter is (its `rows` are then empty: the value
    /// starts from the pass's initialisation, not from the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraFactor>,
}

impl Trainable {
    /// Split mode's parameter `name`: the slices `rows` of `source` along `axis`.
    pub fn rows_of(name: &str, shape: Vec<i64>, source: &str, axis: usize, rows: &[usize]) -> Trainable {
        Trainable {
            name: name.to_string(),
            shape,
            source: source.to_string(),
            axis,
            rows: rows.to_vec(),
            mask: None,
            role: String::new(),
            source_rows: 0,
            lora: None,
        }
    }
}
