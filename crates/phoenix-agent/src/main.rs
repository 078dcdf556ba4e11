//! `phoenix-agent`: runs the Phoenix pipeline engine.
//!
//! Standalone mode: `phoenix-agent run --config pipeline.yaml` (reloads the file on SIGHUP,
//! refusing an invalid one while the running pipelines carry on) and
//! `phoenix-agent validate --config pipeline.yaml`. The logic lives in `phoenix-pipeline`;
//! this file parses arguments and maps errors to exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use phoenix_pipeline::agent::{Agent, DEFAULT_KPI_INTERVAL};
use phoenix_pipeline::config::AgentConfig;

#[derive(Debug, Parser)]
#[command(
    name = "phoenix-agent",
    version,
    about = "Phoenix metrics pipeline agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline engine standalone (no control plane).
    Run {
        /// Pipeline configuration (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Length of a KPI interval, in seconds.
        #[arg(long, default_value_t = DEFAULT_KPI_INTERVAL.as_secs())]
        kpi_interval_seconds: u64,
    },
    /// Check a configuration and print every error with its path.
    Validate {
        /// Pipeline configuration (YAML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Validate { config } => match read(&config).map(|text| AgentConfig::load(&text)) {
            Ok(Ok(validated)) => {
                println!(
                    "{}: valid ({} pipelines, live: {})",
                    config.display(),
                    validated.pipelines.len(),
                    validated.live
                );
                ExitCode::SUCCESS
            }
            Ok(Err(errors)) => {
                for error in &errors.0 {
                    eprintln!("{}: {error}", config.display());
                }
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            config,
            kpi_interval_seconds,
        } => match run(&config, Duration::from_secs(kpi_interval_seconds.max(1))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("phoenix-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(path: &Path, kpi_interval: Duration) -> anyhow::Result<()> {
    let text = read(path)?;
    let validated =
        AgentConfig::load(&text).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let mut agent = Agent::start(validated, kpi_interval).await?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
                _ = hangup.recv() => {
                    match read(path) {
                        Ok(text) => match agent.reload(&text).await {
                            Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
                            Err(e) => tracing::error!(error = %e, "reload refused, keeping the running pipelines"),
                        },
                        Err(e) => tracing::error!(error = %e, "reload refused"),
                    }
                }
            }
        }
        tracing::info!("shutting down");
        agent.engine().flush().await?;
        agent.stop();
        Ok(())
    })
}
