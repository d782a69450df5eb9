//! What `neft train` shows while it runs, on stderr: an indicatif progress bar (step,
//! loss, tokens/s, ETA) on a terminal, plain lines every tenth of the run otherwise,
//! no progress with `--json` (notes still go to stderr).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Reporter {
    bar: Option<ProgressBar>,
    lines: bool,
    total: u64,
    every: u64,
}

impl Reporter {
    /// `quiet` (for `--json`) shows nothing; otherwise a bar when stderr is a terminal.
    pub fn new(start: u64, total: u64, quiet: bool) -> Reporter {
        let every = (total / 10).max(1);
        if quiet {
            return Reporter { bar: None, lines: false, total, every };
        }
        if !std::io::stderr().is_terminal() {
            return Reporter { bar: None, lines: true, total, every };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("step {pos}/{len} [{bar:30}] {msg} [{elapsed_precise}, eta {eta}]")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_position(start);
        Reporter { bar: Some(bar), lines: false, total, every }
    }

    /// After a step: the bar moves; plain mode prints every tenth of the run and the last step.
    pub fn step(&self, step: u64, loss: f32, tokens_per_s: f64) {
        let msg = format!("loss {loss:.4} | {} tok/s", human_rate(tokens_per_s));
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(msg);
        } else if self.lines && (step.is_multiple_of(self.every) || step == self.total) {
            eprintln!("step {step}/{}  {msg}", self.total);
        }
    }

    /// A warning or note, shown even with `--json` (it goes to stderr), above the bar.
    pub fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn human_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
