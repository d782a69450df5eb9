//! `OUT/metrics.jsonl`: one JSON object per optimizer step, appended (and flushed) as
//! training goes, so a crash loses nothing that was computed.
//!
//! In: a [`Record`] per step. Out: the file, and the records in memory for the plot. A
//! resumed run first drops the lines past its checkpoint (they belong to steps that
//! will be redone), rewriting the file atomically.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

pub const METRICS_FILE: &str = "metrics.jsonl";

/// One optimizer step. `loss` and `grad_norm` are null when they were not finite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Steps done after this one (the first step is 1).
    pub step: u64,
    pub loss: Option<f32>,
    pub grad_norm: Option<f32>,
    pub lr: f32,
    /// Label tokens this step's loss averaged over.
    pub tokens: u64,
    /// Label tokens over every step so far.
    pub total_tokens: u64,
    /// Training time so far (evaluation and checkpoints included).
    pub seconds: f64,
    /// Mean loss per token over the eval set, on steps where it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_perplexity: Option<f64>,
    /// Share of eval rows whose most likely class is their label (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
}

pub struct MetricsLog {
    pub path: PathBuf,
    out: BufWriter<File>,
    pub records: Vec<Record>,
}

impl MetricsLog {
    /// Starts the log of `dir`: empty for a fresh run, or the records up to `resume_at`.
    pub fn start(dir: &Path, resume_at: Option<u64>) -> anyhow::Result<MetricsLog> {
        let path = dir.join(METRICS_FILE);
        let records = match resume_at {
            Some(step) if path.is_file() => read(&path)?.into_iter().filter(|r| r.step <= step).collect(),
            _ => vec![],
        };
        crate::fsutil::write_atomic(&path, |w| {
            for r in &records {
                writeln!(w, "{}", serde_json::to_string(r).expect("serializable"))?;
            }
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(MetricsLog { path, out: BufWriter::new(file), records })
    }

    pub fn push(&mut self, r: Record) -> anyhow::Result<()> {
        let line = serde_json::to_string(&r).expect("serializable");
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
        self.records.push(r);
        Ok(())
    }
}

/// The records of a metrics file; lines that do not parse (a line cut short by a
/// crash) are skipped.
pub fn read(path: &Path) -> anyhow::Result<Vec<Record>> {
    let file = File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = vec![];
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Ok(r) = serde_json::from_str::<Record>(&line) {
            out.push(r);
        }
    }
    Ok(out)
}
