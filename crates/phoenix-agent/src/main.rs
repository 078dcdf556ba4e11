//! `phoenix-agent`: the Phoenix agent.
//!
//! Control-plane mode (the default): `phoenix-agent agent --config
//! /etc/phoenix-agent/config.yaml` enrolls with the API and runs what it is told (see
//! `phoenix_agent::run`). Standalone mode: `phoenix-agent run --config pipeline.yaml`
//! (reloads the file on SIGHUP, refusing an invalid one while the running pipelines carry
//! on) and `phoenix-agent validate --config pipeline.yaml`. This file parses arguments and
//! maps errors to exit codes.

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
    command: Option<Command>,
}

/// Control-plane mode flags; each overrides the file and `PHOENIX_AGENT_*`.
#[derive(Debug, Default, clap::Args)]
struct AgentArgs {
    /// Agent configuration (YAML); default /etc/phoenix-agent/config.yaml when it exists.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Control-plane URL.
    #[arg(long)]
    api_url: Option<String>,
    /// This host's id (default: the hostname).
    #[arg(long)]
    host_id: Option<String>,
    /// Token for the first enrollment.
    #[arg(long)]
    enrollment_token: Option<String>,
    /// Data directory (credentials, journal, buffers).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Pipeline file with receivers and exporters.
    #[arg(long)]
    pipeline_config: Option<PathBuf>,
    /// Longest task long-poll, e.g. 30s.
    #[arg(long)]
    poll_interval: Option<String>,
    /// Heartbeat interval, e.g. 10s.
    #[arg(long)]
    heartbeat_interval: Option<String>,
    /// KPI interval, e.g. 10s.
    #[arg(long)]
    kpi_interval: Option<String>,
    /// Log filter, e.g. info or phoenix_agent=debug.
    #[arg(long)]
    log_level: Option<String>,
    /// json or pretty.
    #[arg(long)]
    log_format: Option<String>,
    /// A label reported with heartbeats, `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
}

impl AgentArgs {
    fn overrides(&self) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                m.insert(k.into(), v.into());
            }
        };
        put("api_url", self.api_url.clone());
        put("host_id", self.host_id.clone());
        put("enrollment_token", self.enrollment_token.clone());
        put(
            "data_dir",
            self.data_dir.as_ref().map(|p| p.display().to_string()),
        );
        put(
            "pipeline_config",
            self.pipeline_config
                .as_ref()
                .map(|p| p.display().to_string()),
        );
        put("poll_interval", self.poll_interval.clone());
        put("heartbeat_interval", self.heartbeat_interval.clone());
        put("kpi_interval", self.kpi_interval.clone());
        put("log_level", self.log_level.clone());
        put("log_format", self.log_format.clone());
        if !self.labels.is_empty() {
            let mut labels = serde_json::Map::new();
            for label in &self.labels {
                let (k, v) = label
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--label {label:?}: expected KEY=VALUE"))?;
                labels.insert(k.to_string(), v.into());
            }
            m.insert("labels".into(), labels.into());
        }
        Ok(m)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join the control plane and run what it asks (the default).
    Agent(Box<AgentArgs>),
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
    let command = match cli.command {
        None => return agent(AgentArgs::default()),
        Some(Command::Agent(args)) => return agent(*args),
        Some(other) => other,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match command {
        Command::Agent(_) => ExitCode::SUCCESS,
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

fn agent(args: AgentArgs) -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let default_file = PathBuf::from(phoenix_agent::settings::DEFAULT_CONFIG_PATH);
    let file = args
        .config
        .clone()
        .or_else(|| default_file.exists().then_some(default_file));
    let settings = match args.overrides().and_then(|o| {
        Ok(phoenix_agent::settings::Settings::load(
            file.as_deref(),
            &o,
        )?)
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("phoenix-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    let logs = phoenix_agent::logship::LogQueue::new(settings.log_buffer_max_entries);
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ship = phoenix_agent::logship::ShipLayer(logs.clone());
    let registry = tracing_subscriber::registry().with(filter).with(ship);
    if settings.log_format == "pretty" {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("phoenix-agent: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let mut terminate =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("signal received");
            trigger.cancel();
        });
        phoenix_agent::run::run(settings, logs, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            eprintln!("phoenix-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
