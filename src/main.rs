//! Wiring only: the command line, then for `serve` (the default) settings,
//! logging and traces, build, run until SIGTERM or SIGINT, flush the traces.

use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use translation_jobs::{
    app::App,
    cli::{self, Cli, Command},
    config::Settings,
    telemetry::{self, error_chain},
};

/// mimalloc instead of the system allocator: a create makes a couple of
/// hundred small allocations, and glibc's malloc and free were a quarter of
/// the service's instructions per create (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve) => serve().await,
        Some(command) => cli::run(command, cli.json).await,
    }
}

async fn serve() -> ExitCode {
    // Installed first, so a SIGTERM during start-up also shuts down cleanly.
    let mut terminate = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };

    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("translation-jobs: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    let telemetry = telemetry::init(settings.log_format);

    let code = match App::build(settings).await {
        Ok(app) => match app.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "stopped with an error");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "cannot start");
            ExitCode::FAILURE
        }
    };
    // The last spans (those of the shutdown itself included) go out now.
    telemetry.shutdown().await;
    code
}
