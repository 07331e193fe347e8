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
    // Registered before the address is announced: a signal sent as soon as
    // a supervisor sees the daemon up must stop it cleanly, not kill it.
    let signals = Signals::register()?;
    let announce = |addr| {
        println!("{}{addr}", lookalike::server::LISTENING);
    };
    lookalike::server::run(config, announce, signals.first()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment this is made.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Resolves on the first signal (a graceful stop); a second one exits
    /// the process at once. That is safe: a write is acknowledged only once
    /// it is on disk, and a graph not saved is rebuilt at the next start.
    async fn first(mut self) {
        self.next().await;
        tracing::info!("signal received; a second one exits at once");
        tokio::spawn(async move {
            self.next().await;
            tracing::warn!("second signal: exiting now, without saving the graph");
            std::process::exit(130);
        });
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
