//! `idem`: one binary for every role. Bad settings end the process with one line naming
//! the setting and exit code 2; SIGTERM/SIGINT begin a graceful shutdown.

use std::process::ExitCode;

use clap::Parser;
use idem::app::{self, Roles};
use idem::config::{Cli, Command, Config, LogFormat, Settings};
use tracing_subscriber::EnvFilter;

fn init_logging(s: &Settings) -> Result<(), String> {
    let filter = EnvFilter::try_new(&s.log).map_err(|e| format!("IDEM_LOG: {e}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match s.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

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
    if let Err(e) = init_logging(&cli.settings) {
        eprintln!("idem: {e}");
        return ExitCode::from(2);
    }
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
    match rt.block_on(run(cli.command, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context names the setting, the cause says why.
            eprintln!("idem: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
