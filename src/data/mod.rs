//! Training and calibration data: JSONL examples → token ids and labels → padded
//! batches.
//!
//! In: a JSONL file whose lines are `{"text"}`, `{"prompt","completion"}` (loss on the
//! completion only) or pre-tokenized `{"input_ids","labels"}`, optionally a class
//! `"label"`, and any other input by name as nested lists (`"pixel_values"`), and a
//! text encoder. Out: [`Batch`]es of `input_ids` and `labels` (`[batch, len]`, INT64),
//! padded on the right with labels -100 so padding never counts in the loss, and the
//! named tensors stacked; [`TokenFeed`] turns them into the inputs a model declares
//! (`attention_mask`, `position_ids`, ...).

mod batch;
mod feed;
pub mod fields;
mod jsonl;
mod tokenizer;

pub use batch::{Batch, Batcher};
pub use feed::{data_inputs, DataInput, TokenFeed, TokenSource};
pub use fields::{Field, Fields};
pub use jsonl::{parse_line, read_jsonl, tokenize, DataError, Example, Record, Tokenized};
pub use tokenizer::{load_tokenizer, TextTokenizer};

/// Turns text into token ids (a `tokenizer.json`, or anything else).
pub trait Encode {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<i64>>;
    /// Appended after a completion or a text, if any.
    fn eos(&self) -> Option<i64>;
    /// The id written into padded positions (their labels are -100, so any id works).
    fn pad(&self) -> i64 {
        self.eos().unwrap_or(0)
    }
}
