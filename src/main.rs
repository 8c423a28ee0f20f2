//! Wiring only: settings, logging, build, run until SIGTERM or SIGINT.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use translation_jobs::{
    app::App,
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
    telemetry::init(settings.log_format);

    let app = match App::build(settings).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "cannot start");
            return ExitCode::FAILURE;
        }
    };
    match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "stopped with an error");
            ExitCode::FAILURE
        }
    }
}
