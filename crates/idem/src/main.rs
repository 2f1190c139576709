//! `idem`: one binary for every role. Bad settings end the process with one line naming
//! the setting and exit code 2; SIGTERM/SIGINT begin a graceful shutdown.

use std::process::ExitCode;

use clap::Parser;
use idem::app::{self, Roles};
use idem::config::{Cli, Command, Config};

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<()> {
    let backends = app::open_backends(&cfg).await?;
    if command == Command::Migrate {
        tracing::info!("migrations applied");
        return Ok(());
    }
    let registry = app::builtin_registry(&cfg);
    let running = app::start(&cfg, Roles::of(command), backends, registry).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown();
    running.wait().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version print as clap formats them; a bad flag or value is one line.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let msg = e.to_string();
            let line = msg.lines().next().unwrap_or_default();
            eprintln!("idem: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let cfg = match cli.settings.resolve() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("idem: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idem: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let role = format!("{:?}", cli.command).to_lowercase();
    // Inside the runtime: the span exporter sends on it.
    let guard = {
        let _rt = rt.enter();
        match idem::telemetry::init(&cli.settings, &role) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("idem: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let outcome = rt.block_on(run(cli.command, cfg));
    // Flushes the last spans while the runtime still runs.
    drop(guard);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context names the setting, the cause says why.
            eprintln!("idem: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
