//! Invoked as `kopia`: the kmover CLI under kopia's name with kopia's exit codes, so CronJob
//! scripts written for kopia run unchanged. Usage errors exit 1 (kopia's), not clap's 2.

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;

pub fn parse_kopia_args() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    })
}
