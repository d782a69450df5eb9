//! Demos: SmolLM2-135M learning English→Chichewa (`neft demo`, the README's first
//! command) and the whole flow in seconds on the embedded tiny Llama (`neft demo
//! --tiny`), plus the pieces of the translation task (verse pairs, chrF, evaluation).

pub mod bible;
pub mod chrf;
pub mod evaluate;
mod smollm;
mod tiny;
pub mod translation;

pub use smollm::{run_smollm_demo, DemoSettings, GGUF_FILE};
pub use tiny::run_tiny_demo;

use anyhow::{bail, Context};
use std::io::Write;
use std::process::Command;

/// Runs `neft ARGS` with this executable, printing the command first so the demo's
/// output doubles as a tutorial.
fn run_neft(step: usize, steps: usize, what: &str, args: &[String]) -> anyhow::Result<()> {
    println!("\n[{step}/{steps}] {what}\n$ neft {}", args.join(" "));
    std::io::stdout().flush().ok();
    let exe = std::env::current_exe().context("finding the neft executable")?;
    let status = Command::new(&exe).args(args).status().with_context(|| format!("running neft {}", args[0]))?;
    if !status.success() {
        bail!("step {step} (neft {}) failed", args[0]);
    }
    Ok(())
}

/// Command-line words from string slices.
fn words(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}
