//! `neft-compile`: the same as `neft compile`.

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "neft-compile", version, about = "Rewrite an ONNX model for neuron-level fine-tuning")]
struct Cli {
    #[command(flatten)]
    args: neft::cli::CompileArgs,
}

fn main() -> ExitCode {
    neft::cli::exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    match neft::cli::run_compile(&cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", neft::cli::error_text(&e));
            ExitCode::FAILURE
        }
    }
}
