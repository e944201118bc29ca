//! `kmover`: a fast backup mover for Kopia repositories. This binary only parses arguments and
//! renders results; the work happens in the kmover-* crates.

mod cli;
mod commands;
mod connection;
mod identity;
mod output;
mod progress;
mod timespec;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KMOVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args.global.log_level.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ERROR cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR {e:#}");
            ExitCode::FAILURE
        }
    }
}
