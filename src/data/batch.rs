use super::fields::{self, Fields};
use super::Tokenized;
use crate::runtime::ort::HostTensor;
use crate::types::IGNORE_INDEX;

/// One batch, padded on the right to its longest example.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub input_ids: HostTensor,
    pub labels: HostTensor,
    /// Label positions that count in the loss (after the causal shift).
    pub tokens: usize,
    /// Real (unpadded) tokens of each row.
    pub lengths: Vec<usize>,
    /// `[batch]` INT64, one class per row, when every example has one (sequence
    /// classification); `tokens` then counts the rows whose class is not -100.
    pub classes: Option<HostTensor>,
    /// The examples' named tensors, `[batch, ...]` each (see [`fields::stack`]).
    pub fields: Fields,
}

impl Batch {
    /// Fails only when the examples' named tensors do not stack (which
    /// [`super::tokenize`] checks for a whole file).
    pub fn new(examples: &[&Tokenized], pad: i64) -> Result<Batch, String> {
        let len = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(examples.len() * len);
        let mut labels = Vec::with_capacity(examples.len() * len);
        let mut tokens = 0;
        for e in examples {
            let n = e.input_ids.len();
            ids.extend(e.input_ids.iter().copied().chain(std::iter::repeat(pad).take(len - n)));
            labels.extend(e.labels.iter().copied().chain(std::iter::repeat(IGNORE_INDEX).take(len - n)));
            tokens += e.labels.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count();
        }
        let shape = [examples.len(), len];
        let lengths = examples.iter().map(|e| e.input_ids.len()).collect();
        let classes: Option<Vec<i64>> = examples.iter().map(|e| e.class).collect();
        if let Some(c) = &classes {
            tokens = c.iter().filter(|&&c| c != IGNORE_INDEX).count();
        }
        // Lines of named tensors alone (no tokens, no class) count one each.
        if classes.is_none() && examples.iter().all(|e| e.input_ids.is_empty()) {
            tokens = examples.len();
        }
        let classes = classes.map(|c| HostTensor::i64(&[c.len()], c));
        let lines: Vec<_> = examples.iter().map(|e| (&e.fields, e.input_ids.len())).collect();
        Ok(Batch {
            input_ids: HostTensor::i64(&shape, ids),
            labels: HostTensor::i64(&shape, labels),
            tokens,
            lengths,
            classes,
            fields: fields::stack(&lines, examples.len(), len)?,
        })
    }

    /// The named inputs a causal-LM artifact takes.
    pub fn feed(&self) -> Vec<(&'static str, HostTensor)> {
        vec![("input_ids", self.input_ids.clone()), ("labels", self.labels.clone())]
    }
}

/// Epochs of shuffled batches; the order depends only on the seed and the epoch.
pub struct Batcher<'a> {
    examples: &'a [Tokenized],
    batch: usize,
    pad: i64,
    seed: u64,
    order: Vec<usize>,
    next: usize,
    pub epoch: usize,
}

impl<'a> Batcher<'a> {
    pub fn new(examples: &'a [Tokenized], batch: usize, pad: i64, seed: u64) -> Self {
        let mut b = Batcher { examples, batch: batch.max(1), pad, seed, order: vec![], next: 0, epoch: 0 };
        b.shuffle();
        b
    }

    /// Jumps to where the batcher is after `steps` batches (for resuming).
    pub fn skip(&mut self, steps: usize) {
        for _ in 0..steps {
            self.next_rows();
        }
    }

    fn shuffle(&mut self) {
        self.order = (0..self.examples.len()).collect();
        let mut s = self.seed ^ (self.epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
        for i in (1..self.order.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            self.order.swap(i, (s % (i as u64 + 1)) as usize);
        }
        self.next = 0;
    }

    /// The next batch; a new epoch starts (reshuffled) when the data run out.
    pub fn next_batch(&mut self) -> Result<Batch, String> {
        let picked = self.next_rows();
        let examples = self.examples;
        Batch::new(&picked.into_iter().map(|i| &examples[i]).collect::<Vec<_>>(), self.pad)
    }

    /// The indices of the next batch's examples.
    fn next_rows(&mut self) -> Vec<usize> {
        if self.next >= self.order.len() {
            self.epoch += 1;
            self.shuffle();
        }
        let end = (self.next + self.batch).min(self.order.len());
        let picked = self.order[self.next..end].to_vec();
        self.next = end;
        picked
    }
}
