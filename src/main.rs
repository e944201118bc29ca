//! `kmover`: a fast backup mover for Kopia repositories. This binary only parses arguments and
//! renders results; the work happens in the kmover-* crates.

mod allocator;
mod cli;
mod clock;
mod commands;
mod connection;
#[cfg(feature = "testing")]
mod crash_hook;
mod exit_code;
#[cfg(feature = "testing")]
mod fake_clock;
mod identity;
mod logging;
mod metrics;
mod output;
mod progress;
mod serve;
#[cfg(feature = "testing")]
mod storage_clock;
mod timespec;
mod volsync;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    allocator::return_freed_buffers_to_the_os();
    // Before parsing, so that even `--version` shows whether a crash is armed.
    #[cfg(feature = "testing")]
    if let Err(e) = crash_hook::arm_from_env() {
        eprintln!("ERROR {e:#}");
        return ExitCode::FAILURE;
    }
    // Every role below (mover, kopia, kmover) reads the same clock.
    if let Err(e) = clock::install() {
        eprintln!("ERROR {e:#}");
        return ExitCode::FAILURE;
    }
    // Run as /mover-kopia/entry.sh or as kopia (links in the image), kmover plays those roles.
    let args = match volsync::entry_point() {
        volsync::EntryPoint::Mover => return volsync::mover_main(),
        volsync::EntryPoint::Kopia => match volsync::parse_kopia_args() {
            Ok(args) => args,
            Err(code) => return code,
        },
        volsync::EntryPoint::Kmover => cli::Cli::parse(),
    };
    let global = &args.global;
    let log_format = match global.json_log_console {
        true => logging::LogFormat::Json,
        false => global.log_format,
    };
    if let Err(e) = logging::init(&global.log_level, log_format) {
        logging::fatal(&e);
        return ExitCode::from(exit_code::USAGE);
    }
    progress::configure(progress::ProgressConfig {
        enabled: !global.no_progress,
        interval: global.progress_update_interval,
    });
    match metrics::Targets::new(
        global.metrics_textfile.clone(),
        global.metrics_push_url.clone(),
        &global.metrics_job,
    ) {
        Ok(targets) => metrics::configure(targets),
        Err(e) => {
            logging::fatal(&format!("{e:#}"));
            return ExitCode::from(exit_code::USAGE);
        }
    }

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
    let result = runtime.block_on(commands::run(args));
    if let Err(e) = &result
        && !e.chain().any(|cause| cause.is::<exit_code::Exit>())
    {
        logging::fatal(&format!("{e:#}"));
    }
    ExitCode::from(exit_code::for_result(&result))
}
