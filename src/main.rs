//! The `lookalike` binary: `serve` runs the daemon; the other subcommands
//! are a gRPC client for it.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lookalike::Config;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "lookalike",
    version,
    about = "Image-similarity database daemon and client"
)]
struct Cli {
    /// Log lines as text, or as one JSON object per line (for log shippers).
    /// Logs go to stderr; LOOKALIKE_LOG sets the level (default info).
    #[arg(long, global = true, env = "LOOKALIKE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: TopCommand,
}

#[derive(Subcommand, Debug)]
enum TopCommand {
    /// Run the daemon.
    Serve(Box<Config>),
    #[command(flatten)]
    Client(cli::Command),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> Result<()> {
    let args = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LOOKALIKE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match args.log_format {
        // Colour only for a terminal: a log file gets no escape codes.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match args.command {
        TopCommand::Serve(config) => runtime.block_on(serve(*config)),
        TopCommand::Client(command) => runtime.block_on(cli::run(command)),
    }
}

async fn serve(config: Config) -> Result<()> {
    let announce = |addr| {
        println!("{}{addr}", lookalike::server::LISTENING);
    };
    lookalike::server::run(config, announce, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on the first Ctrl-C or SIGTERM (a graceful stop); a second one
/// exits the process at once. That is safe: a write is acknowledged only
/// once it is on disk, and a graph not saved is rebuilt at the next start.
async fn shutdown_signal() {
    signal().await;
    tracing::info!("signal received; a second one exits at once");
    tokio::spawn(async {
        signal().await;
        tracing::warn!("second signal: exiting now, without saving the graph");
        std::process::exit(130);
    });
}

/// The next Ctrl-C or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
