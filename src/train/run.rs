//! The training loop behind `neft train`.
//!
//! In: [`TrainOptions`] (an artifact folder, data files, how long, where to run).
//! Out: `OUT/checkpoint.safetensors` (every N steps, at the end, on Ctrl-C),
//! `OUT/metrics.jsonl`, `OUT/loss.svg`, and a [`Summary`].
//!
//! Everything that can be refused is checked before the first step: the plan, the
//! data (every line), the tokenizer, the checkpoint to resume from, and the options
//! against that checkpoint. The data order depends only on the seed, the batch size
//! and the step, so a resumed run continues exactly where the checkpoint stopped.

use super::checkpoint::{self, Progress};
use super::data::{Dataset, Feeder};
use super::device::DeviceTrainer;
use super::metrics::{MetricsLog, Record};
use super::progress::Reporter;
use super::schedule::{Schedule, ScheduleKind};
use super::{plot, StepOutput};
use crate::artifact::{Plan, State};
use crate::data::{Batch, Batcher, Encode};
use crate::profile::load_tokenizer;
use crate::runtime::ort::{Ep, SessionOptions};
use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub const DEFAULT_BATCH: usize = 8;
pub const DEFAULT_SEQ_LEN: usize = 512;

/// How long to train: a total step count, or whole epochs over the data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    Steps(u64),
    Epochs(u64),
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub eval: Option<PathBuf>,
    pub length: Length,
    /// `None`: the checkpoint's value when resuming, else the default.
    pub batch: Option<usize>,
    pub seq_len: Option<usize>,
    pub seed: Option<u64>,
    /// `None`: the checkpoint's learning rate when resuming, else the plan's.
    pub lr: Option<f32>,
    /// `None`: the checkpoint's schedule when resuming, else constant.
    pub schedule: Option<ScheduleKind>,
    /// Warmup steps; `None`: the checkpoint's when resuming, else 0.
    pub warmup: Option<u64>,
    pub ep: Ep,
    pub threads: Option<usize>,
    pub resume: bool,
    pub tokenizer: Option<PathBuf>,
    /// Checkpoint (and evaluate) every this many steps; 0: only at the end.
    pub checkpoint_every: u64,
    /// No progress output (for `--json`).
    pub quiet: bool,
}

/// How a run ended, for people (`Display`) and scripts (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `completed`, `interrupted`, or `up-to-date` (the checkpoint was already there).
    pub status: String,
    pub ep: String,
    pub start_step: u64,
    pub step: u64,
    pub target_steps: u64,
    pub examples: usize,
    pub batch: usize,
    /// The base learning rate; each step's (scaled by the schedule) is in metrics.jsonl.
    pub lr: f32,
    pub schedule: ScheduleKind,
    pub warmup: u64,
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    pub eval_loss_start: Option<f64>,
    pub eval_loss: Option<f64>,
    pub eval_perplexity: Option<f64>,
    /// Classification: the eval accuracy before the first step and at the last evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_accuracy_start: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
    /// Label tokens trained on over every run that led to this checkpoint.
    pub tokens: u64,
    /// Wall time of this run.
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub checkpoint: Option<PathBuf>,
    pub metrics: PathBuf,
    pub plot: PathBuf,
}

/// Returned (as an error) after a Ctrl-C: the checkpoint is written; exit code 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted at step {step}; the checkpoint is saved: continue with --resume")]
pub struct Interrupted {
    pub step: u64,
}

/// The settings a run uses, from the options, the checkpoint and the defaults.
struct Settings {
    seed: u64,
    batch: usize,
    seq_len: usize,
    lr: f32,
    schedule: ScheduleKind,
    warmup: u64,
}

impl Settings {
    fn resolve(opts: &TrainOptions, plan: &Plan, resumed: Option<&Progress>) -> anyhow::Result<Settings> {
        fn pick<T: PartialEq + std::fmt::Display + Copy>(
            flag: &str,
            given: Option<T>,
            stored: Option<T>,
            default: T,
        ) -> anyhow::Result<T> {
            match (given, stored) {
                (Some(g), Some(s)) if g != s => bail!(
                    "--{flag} {g} differs from the checkpoint's {s}; resuming with another value would not \
                     continue the same run (leave --{flag} out to use the checkpoint's)"
                ),
                (g, s) => Ok(g.or(s).unwrap_or(default)),
            }
        }
        let s = Settings {
            seed: pick("seed", opts.seed, resumed.map(|p| p.seed), 0)?,
            batch: pick("batch", opts.batch, resumed.map(|p| p.batch), DEFAULT_BATCH)?,
            seq_len: pick("seq-len", opts.seq_len, resumed.map(|p| p.seq_len), DEFAULT_SEQ_LEN)?,
            lr: opts.lr.or(resumed.map(|p| p.lr)).unwrap_or(plan.lr),
            schedule: pick("schedule", opts.schedule, resumed.map(|p| p.schedule), ScheduleKind::Constant)?,
            warmup: pick("warmup", opts.warmup, resumed.map(|p| p.warmup), 0)?,
        };
        if s.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if s.seq_len < 2 {
            bail!("--seq-len must be at least 2 (a token and the one it predicts)");
        }
        if !(s.lr > 0.0 && s.lr.is_finite()) {
            bail!("--lr must be a positive number, got {}", s.lr);
        }
        Ok(s)
    }
}

/// Trains as `opts` says. A Ctrl-C ends the run early with status `interrupted`.
pub fn train(opts: &TrainOptions) -> anyhow::Result<Summary> {
    let plan = Plan::load_dir(&opts.dir)?;
    let feeder = Feeder::new(&plan, &opts.dir)?;
    let tokenizer = opts.tokenizer.as_deref().map(load_tokenizer).transpose()?;
    let enc = tokenizer.as_ref().map(|t| t as &dyn Encode);
    let (state, resumed) = starting_point(opts, &plan)?;
    let settings = Settings::resolve(opts, &plan, resumed.as_ref())?;
    let data = Dataset::load(&opts.data, enc, settings.seq_len)?;
    feeder.check(&data)?;
    let eval = opts.eval.as_deref().map(|p| load_eval(p, enc, &settings, &feeder)).transpose()?;
    let total = match opts.length {
        Length::Steps(n) => n,
        Length::Epochs(e) => e * data.batches_per_epoch(settings.batch) as u64,
    };
    let session = SessionOptions { ep: opts.ep, threads: opts.threads, ..Default::default() };
    let schedule = Schedule { kind: settings.schedule, warmup: settings.warmup, total };
    check_schedule_length(&schedule, resumed.as_ref())?;
    let trainer = DeviceTrainer::new(&opts.dir, plan, &state, &session)?;
    let pad = enc.map(|e| e.pad()).unwrap_or(0);
    let mut run = Run::new(opts, trainer, feeder, settings, schedule, &data, eval, resumed.as_ref())?;
    run.go(&data, pad)?;
    Ok(run.finish())
}

/// A decaying schedule spans the run's total steps: resuming with another total would
/// bend the curve midway, so it is refused (a constant one only needs its warmup).
fn check_schedule_length(schedule: &Schedule, resumed: Option<&Progress>) -> anyhow::Result<()> {
    match resumed {
        Some(p) if schedule.depends_on_total() && p.schedule_steps != schedule.total && p.step < schedule.total => {
            bail!(
                "the checkpoint's {} schedule spans {} steps, but this run would span {}; resume with --steps {} \
                 (the same total), or train without --resume to start a new schedule",
                schedule.kind,
                p.schedule_steps,
                schedule.total,
                p.schedule_steps
            )
        }
        _ => Ok(()),
    }
}

/// The compiled state for a fresh run, the checkpoint for `--resume`.
fn starting_point(opts: &TrainOptions, plan: &Plan) -> anyhow::Result<(State, Option<Progress>)> {
    if opts.resume {
        let (state, progress) = checkpoint::load(&opts.dir, plan)?;
        return Ok((state, Some(progress)));
    }
    let path = opts.dir.join(checkpoint::INITIAL_STATE_FILE);
    let state = State::load(&path)?;
    super::session::check_state(plan, &state).with_context(|| path.display().to_string())?;
    Ok((state, None))
}

fn load_eval(path: &Path, enc: Option<&dyn Encode>, s: &Settings, feeder: &Feeder) -> anyhow::Result<Vec<Batch>> {
    let set = Dataset::load(path, enc, s.seq_len)?;
    feeder.check(&set)?;
    let batches = set.in_order(s.batch, enc.map(|e| e.pad()).unwrap_or(0))?;
    if batches.iter().all(|b| b.tokens == 0) {
        bail!("{}: no example has a token to predict (every label is -100 or too short)", path.display());
    }
    Ok(batches)
}

/// One run: its parts, and where it stands.
struct Run<'a> {
    opts: &'a TrainOptions,
    trainer: DeviceTrainer,
    feeder: Feeder,
    settings: Settings,
    schedule: Schedule,
    eval: Option<Vec<Batch>>,
    data_sha256: String,
    start: u64,
    total: u64,
    /// Time and tokens of the runs before this one.
    base_seconds: f64,
    base_tokens: u64,
    step: u64,
    tokens: u64,
    t0: Instant,
    /// Steps of the checkpoint file and of the one kept before it, in this run's line.
    last: Option<u64>,
    previous: Option<u64>,
    metrics: MetricsLog,
    reporter: Reporter,
    summary: Summary,
}

impl<'a> Run<'a> {
    /// Starts the metrics log; a fresh run removes an earlier run's checkpoints.
    #[allow(clippy::too_many_arguments)]
    fn new(
        opts: &'a TrainOptions,
        mut trainer: DeviceTrainer,
        feeder: Feeder,
        settings: Settings,
        schedule: Schedule,
        data: &Dataset,
        eval: Option<Vec<Batch>>,
        resumed: Option<&Progress>,
    ) -> anyhow::Result<Run<'a>> {
        let total = schedule.total;
        let start = resumed.map_or(0, |p| p.step);
        let reporter = Reporter::new(start, total, opts.quiet);
        note_what_changes(&reporter, opts, data, resumed);
        let eval_start = evaluate(&mut trainer, &feeder, &eval)?;
        if resumed.is_none() {
            checkpoint::clear(&opts.dir)?;
        }
        let metrics = MetricsLog::start(&opts.dir, resumed.map(|p| p.step))?;
        let summary = Summary {
            status: "completed".into(),
            ep: opts.ep.to_string(),
            start_step: start,
            step: start,
            target_steps: total,
            examples: data.examples.len(),
            batch: settings.batch,
            lr: settings.lr,
            schedule: settings.schedule,
            warmup: settings.warmup,
            first_loss: None,
            last_loss: None,
            eval_loss_start: eval_start.map(|e| e.loss),
            eval_loss: None,
            eval_perplexity: None,
            eval_accuracy_start: eval_start.and_then(|e| e.accuracy),
            eval_accuracy: None,
            tokens: 0,
            seconds: 0.0,
            tokens_per_second: 0.0,
            checkpoint: None,
            metrics: metrics.path.clone(),
            plot: opts.dir.join(plot::PLOT_FILE),
        };
        Ok(Run {
            opts,
            trainer,
            feeder,
            settings,
            schedule,
            eval,
            data_sha256: data.sha256.clone(),
            start,
            total,
            base_seconds: resumed.map_or(0.0, |p| p.seconds),
            base_tokens: resumed.map_or(0, |p| p.tokens),
            step: start,
            tokens: resumed.map_or(0, |p| p.tokens),
            t0: Instant::now(),
            last: resumed.map(|p| p.step),
            previous: resumed.and_then(|_| checkpoint::previous_step(&opts.dir)),
            metrics,
            reporter,
            summary,
        })
    }

    /// Steps until the target, a Ctrl-C, or a divergence (an error).
    fn go(&mut self, data: &Dataset, pad: i64) -> anyhow::Result<()> {
        let stop = interrupt_flag();
        let mut batcher = Batcher::new(&data.examples, self.settings.batch, pad, self.settings.seed);
        batcher.skip(self.start as usize);
        while self.step < self.total {
            if stop.load(Ordering::SeqCst) {
                self.summary.status = "interrupted".into();
                if self.last != Some(self.step) {
                    self.save(&StepOutput::default())?;
                }
                break;
            }
            let batch = batcher.next_batch().map_err(|e| anyhow!("{}: {e}", data.file.display()))?;
            self.one_step(&batch)?;
        }
        Ok(())
    }

    fn one_step(&mut self, batch: &Batch) -> anyhow::Result<()> {
        let lr = self.schedule.lr(self.settings.lr, self.step);
        let out = self.trainer.step(&self.feeder.feed(batch)?, lr)?;
        self.step += 1;
        self.tokens += batch.tokens as u64;
        let mut record = record(self.step, &out, lr, batch.tokens as u64, self.tokens, self.seconds());
        if !(out.loss.is_finite() && out.grad_norm.is_finite()) {
            return Err(self.diverge(record, &out));
        }
        let every = self.opts.checkpoint_every;
        let due = self.step == self.total || (every > 0 && self.step.is_multiple_of(every));
        if due {
            if let Some(e) = evaluate(&mut self.trainer, &self.feeder, &self.eval)? {
                record.eval_loss = Some(e.loss);
                record.eval_perplexity = Some(e.loss.exp());
                record.eval_accuracy = e.accuracy;
            }
        }
        self.metrics.push(record)?;
        self.summary.first_loss.get_or_insert(out.loss);
        self.summary.last_loss = Some(out.loss);
        let rate = (self.tokens - self.base_tokens) as f64 / self.t0.elapsed().as_secs_f64().max(1e-9);
        self.reporter.step(self.step, out.loss, rate);
        if due {
            self.save(&out)?;
        }
        Ok(())
    }

    fn seconds(&self) -> f64 {
        self.base_seconds + self.t0.elapsed().as_secs_f64()
    }

    /// Writes the checkpoint (keeping the one before it) and the plot.
    fn save(&mut self, out: &StepOutput) -> anyhow::Result<()> {
        let progress = Progress {
            step: self.step,
            seed: self.settings.seed,
            batch: self.settings.batch,
            seq_len: self.settings.seq_len,
            lr: self.settings.lr,
            schedule: self.settings.schedule,
            warmup: self.settings.warmup,
            schedule_steps: self.schedule.total,
            data: self.data_sha256.clone(),
            seconds: self.seconds(),
            tokens: self.tokens,
        };
        let state = self.trainer.state()?;
        let plan = &self.trainer.plan;
        checkpoint::save(&self.opts.dir, plan, state, &progress, self.last.is_some())
            .map_err(|e| anyhow::anyhow!("{e}\n{}", diverged(&self.opts.dir, self.step, out, self.last)))?;
        self.previous = self.last;
        self.last = Some(self.step);
        plot::write(&self.opts.dir, &self.metrics.records)?;
        Ok(())
    }

    /// A step gave a loss or gradient norm that is not finite: log it, and if the
    /// newest checkpoint is the state that gave it, put the one before it back.
    fn diverge(&mut self, record: Record, out: &StepOutput) -> anyhow::Error {
        self.reporter.finish();
        let cleanup = (|| {
            self.metrics.push(record)?;
            plot::write(&self.opts.dir, &self.metrics.records)?;
            if self.last == Some(self.step - 1) {
                checkpoint::roll_back(&self.opts.dir, self.previous.is_some())?;
                self.last = self.previous;
            }
            Ok::<(), anyhow::Error>(())
        })();
        let message = diverged(&self.opts.dir, self.step, out, self.last);
        match cleanup {
            Ok(()) => anyhow::anyhow!(message),
            Err(e) => anyhow::anyhow!("{message}\n(while stopping: {e:#})"),
        }
    }

    fn finish(mut self) -> Summary {
        self.reporter.finish();
        let s = &mut self.summary;
        s.step = self.step;
        s.tokens = self.tokens;
        s.seconds = self.t0.elapsed().as_secs_f64();
        s.tokens_per_second = (self.tokens - self.base_tokens) as f64 / s.seconds.max(1e-9);
        if let Some(last) = self.metrics.records.iter().rev().find(|r| r.eval_loss.is_some()) {
            s.eval_loss = last.eval_loss;
            s.eval_perplexity = last.eval_perplexity;
            s.eval_accuracy = last.eval_accuracy;
        }
        if self.step == self.start && s.status == "completed" {
            s.status = "up-to-date".into();
        }
        s.checkpoint = Some(checkpoint::checkpoint_path(&self.opts.dir)).filter(|p| p.is_file());
        self.summary
    }
}

/// Tells the user what a run replaces or cannot reproduce.
fn note_what_changes(reporter: &Reporter, opts: &TrainOptions, data: &Dataset, resumed: Option<&Progress>) {
    match resumed {
        Some(p) if p.data != data.sha256 => reporter.note(&format!(
            "note: {} differs from the data the checkpoint was trained on; the data order will not match",
            data.file.display()
        )),
        None if checkpoint::checkpoint_path(&opts.dir).is_file() => reporter.note(
            "note: starting over from the compiled state; the earlier checkpoint is removed \
             (--resume continues it)",
        ),
        _ => {}
    }
}

/// The eval set's scores.
#[derive(Debug, Clone, Copy)]
struct EvalScore {
    /// Mean loss per label token (per row, for classification).
    loss: f64,
    /// Classification: the share of rows predicted right.
    accuracy: Option<f64>,
}

fn evaluate(
    trainer: &mut DeviceTrainer,
    feeder: &Feeder,
    eval: &Option<Vec<Batch>>,
) -> anyhow::Result<Option<EvalScore>> {
    let Some(batches) = eval else { return Ok(None) };
    let (mut sum, mut count, mut correct) = (0.0f64, 0.0f64, None::<f64>);
    for b in batches.iter().filter(|b| b.tokens > 0) {
        let (loss, _, right) = trainer.eval(&feeder.feed(b)?)?;
        sum += loss as f64 * b.tokens as f64;
        count += b.tokens as f64;
        if let Some(r) = right {
            *correct.get_or_insert(0.0) += r as f64;
        }
    }
    let count = count.max(1.0);
    Ok(Some(EvalScore { loss: sum / count, accuracy: correct.map(|c| c / count) }))
}

fn record(step: u64, out: &StepOutput, lr: f32, tokens: u64, total_tokens: u64, seconds: f64) -> Record {
    Record {
        step,
        loss: Some(out.loss).filter(|l| l.is_finite()),
        grad_norm: Some(out.grad_norm).filter(|g| g.is_finite()),
        lr,
        tokens,
        total_tokens,
        seconds,
        eval_loss: None,
        eval_perplexity: None,
        eval_accuracy: None,
    }
}

/// What to tell the user when training diverges.
fn diverged(dir: &Path, step: u64, out: &StepOutput, last_checkpoint: Option<u64>) -> String {
    let what = if !out.loss.is_finite() {
        format!("the loss is {}", out.loss)
    } else if !out.grad_norm.is_finite() {
        format!("the gradient norm is {}", out.grad_norm)
    } else {
        "the updated state is not finite".to_string()
    };
    let kept = match last_checkpoint {
        Some(s) => format!("{} still holds step {s}, the last good state", checkpoint::checkpoint_path(dir).display()),
        None => format!(
            "no checkpoint was written; {} holds the compiled starting state",
            dir.join(checkpoint::INITIAL_STATE_FILE).display()
        ),
    };
    format!(
        "training diverged at step {step}: {what}; stopped without saving this state. {kept}. \
         Lower the learning rate (--lr) or compile with --clip."
    )
}

/// Set by Ctrl-C; checked between steps. A second Ctrl-C exits at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    let flag = FLAG
        .get_or_init(|| {
            let flag = Arc::new(AtomicBool::new(false));
            let seen = flag.clone();
            let _ = ctrlc::set_handler(move || {
                if seen.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!("\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again quits at once)");
            });
            flag
        })
        .clone();
    flag.store(false, Ordering::SeqCst);
    flag
}
