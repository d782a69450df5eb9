//! Checkpoints: `OUT/checkpoint.safetensors`, the state after some steps plus what an
//! exact resume needs (plan hash, step, seed, batch size, sequence length, learning
//! rate and its schedule, data hash, time and tokens so far) in the safetensors
//! metadata.
//!
//! The compile-time `OUT/state.safetensors` is never written: it stays the starting
//! point of a fresh run. A checkpoint is written atomically and only when every value
//! is finite. The one before it stays as `OUT/checkpoint.prev.safetensors`: a state
//! is only known to be good once a step ran on it with a finite loss, so when the step
//! right after a checkpoint diverges, [`roll_back`] puts the previous one back.

use super::schedule::ScheduleKind;
use super::session::check_state;
use crate::artifact::{Plan, State, StateTensor};
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const PREVIOUS_FILE: &str = "checkpoint.prev.safetensors";
pub const INITIAL_STATE_FILE: &str = "state.safetensors";

pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT_FILE)
}

/// Where a run stands, stored beside the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Optimizer steps done (equals the state's `step` tensor).
    pub step: u64,
    pub seed: u64,
    pub batch: usize,
    pub seq_len: usize,
    /// The base learning rate (the schedule scales it per step).
    pub lr: f32,
    /// The learning-rate schedule, its warmup and the total steps it spans
    /// (checkpoints written before schedules existed read as constant, 0, 0).
    pub schedule: ScheduleKind,
    pub warmup: u64,
    pub schedule_steps: u64,
    /// Short SHA-256 of the training data file.
    pub data: String,
    /// Training time and loss tokens so far, over every run that led here.
    pub seconds: f64,
    pub tokens: u64,
}

const KEYS: [&str; 11] =
    ["step", "seed", "batch", "seq_len", "lr", "data", "seconds", "tokens", "schedule", "warmup", "schedule_steps"];

impl Progress {
    fn write(&self, meta: &mut HashMap<String, String>) {
        let values = [
            self.step.to_string(),
            self.seed.to_string(),
            self.batch.to_string(),
            self.seq_len.to_string(),
            self.lr.to_string(),
            self.data.clone(),
            self.seconds.to_string(),
            self.tokens.to_string(),
            self.schedule.to_string(),
            self.warmup.to_string(),
            self.schedule_steps.to_string(),
        ];
        for (k, v) in KEYS.iter().zip(values) {
            meta.insert(k.to_string(), v);
        }
    }

    fn read(meta: &HashMap<String, String>, file: &Path) -> anyhow::Result<Progress> {
        fn field<T: std::str::FromStr>(meta: &HashMap<String, String>, key: &str, file: &Path) -> anyhow::Result<T> {
            let text = meta.get(key).with_context(|| {
                format!("{}: metadata field '{key}' is missing; not a checkpoint written by neft train", file.display())
            })?;
            text.parse()
                .map_err(|_| anyhow::anyhow!("{}: metadata field '{key}' = '{text}' is not valid", file.display()))
        }
        fn optional<T: std::str::FromStr>(
            meta: &HashMap<String, String>,
            key: &str,
            file: &Path,
            default: T,
        ) -> anyhow::Result<T> {
            if meta.contains_key(key) {
                field(meta, key, file)
            } else {
                Ok(default)
            }
        }
        Ok(Progress {
            step: field(meta, "step", file)?,
            seed: field(meta, "seed", file)?,
            batch: field(meta, "batch", file)?,
            seq_len: field(meta, "seq_len", file)?,
            lr: field(meta, "lr", file)?,
            data: field(meta, "data", file)?,
            seconds: field(meta, "seconds", file)?,
            tokens: field(meta, "tokens", file)?,
            schedule: optional(meta, "schedule", file, ScheduleKind::Constant)?,
            warmup: optional(meta, "warmup", file, 0)?,
            schedule_steps: optional(meta, "schedule_steps", file, 0)?,
        })
    }
}

/// Writes `state` (tagged with `plan`'s hash and `progress`) as the checkpoint of
/// `dir`, refusing a state with a value that is not finite. With `keep_previous` the
/// checkpoint it replaces becomes [`PREVIOUS_FILE`].
pub fn save(
    dir: &Path,
    plan: &Plan,
    mut state: State,
    progress: &Progress,
    keep_previous: bool,
) -> anyhow::Result<PathBuf> {
    if let Some(name) = first_non_finite(&state) {
        bail!("state tensor '{name}' holds a NaN or infinite value after step {}; not written", progress.step);
    }
    state.metadata.insert("plan".into(), plan.hash());
    state.metadata.insert("neft".into(), env!("CARGO_PKG_VERSION").into());
    progress.write(&mut state.metadata);
    let path = checkpoint_path(dir);
    let prev = dir.join(PREVIOUS_FILE);
    remove_if_present(&prev)?;
    if keep_previous && path.is_file() {
        // A second name for the old file: the new one then replaces `path` atomically,
        // and at no moment is there no checkpoint.
        std::fs::hard_link(&path, &prev)
            .or_else(|_| std::fs::copy(&path, &prev).map(|_| ()))
            .map_err(|e| anyhow::anyhow!("{}: {e}", prev.display()))?;
    }
    state.save(&path)?;
    Ok(path)
}

/// After the step following the newest checkpoint diverged: the previous checkpoint
/// (if this run kept one) becomes the checkpoint again; without one, the newest is
/// removed.
pub fn roll_back(dir: &Path, to_previous: bool) -> anyhow::Result<()> {
    let (path, prev) = (checkpoint_path(dir), dir.join(PREVIOUS_FILE));
    if to_previous && prev.is_file() {
        std::fs::rename(&prev, &path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    } else {
        remove_if_present(&path)
    }
}

/// The step of [`PREVIOUS_FILE`], if there is a readable one.
pub fn previous_step(dir: &Path) -> Option<u64> {
    let state = State::load(&dir.join(PREVIOUS_FILE)).ok()?;
    state.metadata.get("step")?.parse().ok()
}

/// Removes the checkpoints of an earlier run (a fresh run starts over).
pub fn clear(dir: &Path) -> anyhow::Result<()> {
    remove_if_present(&checkpoint_path(dir))?;
    remove_if_present(&dir.join(PREVIOUS_FILE))
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow::anyhow!("{}: {e}", path.display())),
        _ => Ok(()),
    }
}

/// Reads the checkpoint of `dir` and checks it belongs to `plan`.
pub fn load(dir: &Path, plan: &Plan) -> anyhow::Result<(State, Progress)> {
    let path = checkpoint_path(dir);
    if !path.is_file() {
        bail!(
            "{}: no checkpoint to resume from; run without --resume to start from the compiled state",
            path.display()
        );
    }
    let state =
        State::load(&path).with_context(|| "the checkpoint is corrupted; delete it and train without --resume")?;
    match state.metadata.get("plan") {
        Some(h) if *h == plan.hash() => {}
        Some(h) => bail!(
            "{}: the checkpoint was made for plan {h}, but {} holds plan {} (the artifacts were recompiled?); \
             train without --resume to start again",
            path.display(),
            dir.join("plan.json").display(),
            plan.hash()
        ),
        None => bail!("{}: metadata field 'plan' is missing; not a checkpoint written by neft train", path.display()),
    }
    check_state(plan, &state).with_context(|| format!("{}: does not match the plan", path.display()))?;
    let progress = Progress::read(&state.metadata, &path)?;
    let counter = match state.tensors.get(&plan.io.step) {
        Some(StateTensor::I64 { data, .. }) if data.len() == 1 => data[0],
        _ => bail!("{}: tensor '{}' is not an INT64 scalar", path.display(), plan.io.step),
    };
    if counter != progress.step as i64 {
        bail!(
            "{}: the step counter says {counter} but the metadata says step {}; the checkpoint is corrupted",
            path.display(),
            progress.step
        );
    }
    if let Some(name) = first_non_finite(&state) {
        bail!("{}: tensor '{name}' holds NaN or infinite values; the checkpoint is corrupted", path.display());
    }
    Ok((state, progress))
}

fn first_non_finite(state: &State) -> Option<&str> {
    state.tensors.iter().find_map(|(name, t)| match t {
        StateTensor::F32 { data, .. } if data.iter().any(|v| !v.is_finite()) => Some(name.as_str()),
        _ => None,
    })
}
