//! Learning-rate schedules (`neft train --schedule`, `--warmup`), with the Hugging Face
//! Trainer's formulas so that a run here and a `transformers` run step the same way.
//!
//! In: the base learning rate, the schedule, the warmup steps, the run's total steps
//! (`num_training_steps`), and the number of optimizer steps done before the one about
//! to run (`current_step` of `LambdaLR`: 0 for the first step). Out: that step's
//! learning rate, `base · λ(current_step)`:
//!
//! - warmup (every schedule): `λ(s) = s / max(1, warmup)` while `s < warmup`, so the
//!   first step of a warmup runs at learning rate 0, as in `transformers`;
//! - `constant`: then `λ = 1`;
//! - `linear`: then `λ(s) = max(0, (total − s) / max(1, total − warmup))`;
//! - `cosine`: then with `p = (s − warmup) / max(1, total − warmup)`,
//!   `λ = max(0, ½·(1 + cos(π·p)))`.
//!
//! Linear and cosine reach 0 at `s = total`, one past the last step run. `λ` is computed
//! in f64 and the product rounded to f32 once, so a resumed run gets the same bits.

use serde::Serialize;

/// The shape of the learning rate over a run (`--schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            _ => Err(format!("unknown schedule '{s}': use constant, linear or cosine")),
        }
    }
}

impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        })
    }
}

/// A schedule over one run of `total` steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup: u64,
    /// The run's total steps (`num_training_steps`).
    pub total: u64,
}

impl Schedule {
    /// The multiplier `λ(done)` of the step that follows `done` finished steps.
    pub fn factor(&self, done: u64) -> f64 {
        let (s, warmup, total) = (done as f64, self.warmup as f64, self.total as f64);
        if done < self.warmup {
            return s / warmup.max(1.0);
        }
        let rest = (total - warmup).max(1.0);
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((total - s) / rest).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (s - warmup) / rest;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }

    /// The learning rate of the step that follows `done` finished steps.
    pub fn lr(&self, base: f32, done: u64) -> f32 {
        (base as f64 * self.factor(done)) as f32
    }

    /// Whether the rate depends on the total step count (after the warmup).
    pub fn depends_on_total(&self) -> bool {
        self.kind != ScheduleKind::Constant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: u64, total: u64) -> Schedule {
        Schedule { kind, warmup, total }
    }

    /// Values worked out by hand from the `transformers` formulas
    /// (`get_{constant,linear,cosine}_schedule_with_warmup`).
    #[test]
    fn factors_match_the_hugging_face_formulas_at_chosen_steps() {
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        let c = sched(ScheduleKind::Constant, 4, 100);
        for (s, want) in [(0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0), (99, 1.0)] {
            close(c.factor(s), want);
        }
        // linear, warmup 10 of 110: (110 - s) / 100 after the warmup.
        let l = sched(ScheduleKind::Linear, 10, 110);
        for (s, want) in [(0, 0.0), (5, 0.5), (10, 1.0), (35, 0.75), (60, 0.5), (109, 0.01), (110, 0.0), (200, 0.0)] {
            close(l.factor(s), want);
        }
        // cosine, warmup 10 of 110: ½(1 + cos(π (s - 10) / 100)).
        let k = sched(ScheduleKind::Cosine, 10, 110);
        let quarter = 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2); // p = ¼: 0.853553...
        for (s, want) in [(0, 0.0), (5, 0.5), (10, 1.0), (35, quarter), (60, 0.5), (85, 1.0 - quarter), (110, 0.0)] {
            close(k.factor(s), want);
        }
        close(k.factor(109), 0.5 * (1.0 + (std::f64::consts::PI * 0.99).cos())); // 2.4671e-4
        close(k.factor(35), 0.853_553_390_593_273_7);
        // No warmup: the first step runs at the full rate.
        close(sched(ScheduleKind::Linear, 0, 8).factor(0), 1.0);
        close(sched(ScheduleKind::Linear, 0, 8).factor(7), 0.125);
        close(sched(ScheduleKind::Cosine, 0, 8).factor(4), 0.5);
        // A warmup as long as the run: max(1, total - warmup) keeps it finite.
        close(sched(ScheduleKind::Linear, 8, 8).factor(8), 0.0);
    }

    #[test]
    fn the_constant_schedule_without_warmup_is_the_base_rate_exactly() {
        let c = sched(ScheduleKind::Constant, 0, 10);
        for base in [1e-4f32, 3e-3, 0.1] {
            assert_eq!(c.lr(base, 0).to_bits(), base.to_bits());
            assert_eq!(c.lr(base, 9).to_bits(), base.to_bits());
        }
    }
}
