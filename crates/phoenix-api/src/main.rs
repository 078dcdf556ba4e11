//! `phoenix-api` binary: load configuration, connect the store, serve until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use utoipa::OpenApi;

use phoenix_api::config::{Config, LogFormat};
use phoenix_api::{app, telemetry, AppState};

#[derive(Debug, Parser)]
#[command(name = "phoenix-api", version, about = "Phoenix control plane")]
struct Cli {
    /// YAML configuration file. Environment variables `PHOENIX_<KEY>` override it; flags
    /// override both.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:8080]
    #[arg(long, global = true)]
    listen: Option<String>,
    /// sqlite://PATH or postgres://USER@HOST/DB [default: sqlite://<data-dir>/phoenix.db]
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Directory for the embedded database [default: ./data]
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[arg(long, global = true, value_parser = ["json", "pretty"])]
    log_format: Option<String>,
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Create a sample experiment when the database has none.
    #[arg(long, global = true)]
    seed_demo: bool,
    /// PEM certificate chain: serve HTTPS (with --tls-key-file).
    #[arg(long, global = true)]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key for --tls-cert-file.
    #[arg(long, global = true)]
    tls_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print the OpenAPI description and exit.
    Openapi,
    /// Print the effective configuration and exit.
    Config,
    /// Manage users directly in the database (no running server needed).
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a user (an admin by default), reading its password from standard input.
    Create {
        #[arg(long)]
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
        #[arg(long, default_value = "admin", value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
}

impl Cli {
    fn overrides(&self) -> Map<String, Value> {
        let mut m = Map::new();
        if let Some(v) = &self.listen {
            m.insert("listen".into(), v.clone().into());
        }
        if let Some(v) = &self.database_url {
            m.insert("database_url".into(), v.clone().into());
        }
        if let Some(v) = &self.data_dir {
            m.insert("data_dir".into(), v.display().to_string().into());
        }
        if let Some(v) = &self.log_format {
            m.insert("log_format".into(), v.clone().into());
        }
        if let Some(v) = &self.log_level {
            m.insert("log_level".into(), v.clone().into());
        }
        if let Some(v) = &self.tls_cert_file {
            m.insert("tls_cert_file".into(), v.display().to_string().into());
        }
        if let Some(v) = &self.tls_key_file {
            m.insert("tls_key_file".into(), v.display().to_string().into());
        }
        if self.seed_demo {
            m.insert("seed_demo".into(), true.into());
        }
        m
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Openapi) => {
            println!(
                "{}",
                phoenix_api::openapi::ApiDoc::openapi().to_pretty_json()?
            );
            return Ok(());
        }
        Some(Command::Config) => {
            let cfg = Config::load(cli.config.as_deref(), &cli.overrides())?;
            print!("{}", printable_config(&cfg)?);
            return Ok(());
        }
        Some(Command::Admin(AdminCommand::Create {
            ref username,
            password_stdin: _,
            ref role,
        })) => {
            let cfg = Config::load(cli.config.as_deref(), &cli.overrides())?;
            return admin_create(&cfg, username, role).await;
        }
        _ => {}
    }
    let cfg = Config::load(cli.config.as_deref(), &cli.overrides())?;
    telemetry::init_logging(cfg.log_format, &cfg.log_level)?;
    serve(cfg).await
}

/// The effective configuration as YAML (the format of `--config`), secrets redacted: the
/// output of `phoenix-api config` ends up in tickets and chat.
fn printable_config(cfg: &Config) -> anyhow::Result<String> {
    let mut shown = cfg.clone();
    if shown.enrollment_token.is_some() {
        shown.enrollment_token = Some("<redacted>".into());
    }
    if shown.ws_token.is_some() {
        shown.ws_token = Some("<redacted>".into());
    }
    shown.database_url = shown.database_url.as_deref().map(redact);
    if shown.jwt_secret.is_some() {
        shown.jwt_secret = Some("<redacted>".into());
    }
    if shown.admin_password.is_some() {
        shown.admin_password = Some("<redacted>".into());
    }
    Ok(serde_yaml::to_string(&shown)?)
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let url = cfg.database_url();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    }
    let store = phoenix_store::connect(&url)
        .await
        .with_context(|| format!("connecting to the store at {}", redact(&url)))?;
    tracing::info!(backend = ?store.backend(), url = %redact(&url), "store ready");

    // TLS problems are configuration errors: caught before anything listens.
    let tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => Some(phoenix_api::tls::server_config(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let local = listener.local_addr()?;
    let seed = cfg.seed_demo;
    let pretty = cfg.log_format == LogFormat::Pretty;
    let state = AppState::new(cfg, store, Arc::new(phoenix_core::SystemClock)).await?;
    if seed {
        if let Some(exp) = app::seed_demo(&state)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            tracing::info!(experiment_id = %exp.id, name = %exp.name, "created the demo experiment");
        }
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let background = app::spawn_background(&state, shutdown.clone());
    let router = app::router(state);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %local, scheme, "phoenix-api serving");
    if pretty {
        eprintln!("phoenix-api listening on {scheme}://{local}");
    }
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    match tls {
        None => {
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown_signal())
                .await?
        }
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                // In-flight requests finish; long-polls answer at their own deadline.
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(35)));
            });
            axum_server::from_tcp_rustls(
                listener.into_std()?,
                axum_server::tls_rustls::RustlsConfig::from_config(tls),
            )
            .handle(handle)
            .serve(service)
            .await?
        }
    }
    shutdown.cancel();
    for h in background {
        let _ = h.await;
    }
    tracing::info!("phoenix-api stopped");
    Ok(())
}

/// `phoenix-api admin create`: a user straight into the store, password from stdin.
async fn admin_create(cfg: &Config, username: &str, role: &str) -> anyhow::Result<()> {
    let role: phoenix_api::auth::Role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']);
    let url = cfg.database_url();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    }
    let store = phoenix_store::connect(&url)
        .await
        .with_context(|| format!("connecting to the store at {}", redact(&url)))?;
    let auth = phoenix_api::auth::AuthService::new(
        store,
        Arc::new(phoenix_core::SystemClock),
        phoenix_api::auth::AuthSettings {
            jwt_secret: cfg.jwt_secret.clone(),
            access_ttl: cfg.access_token_ttl,
            refresh_ttl: cfg.refresh_token_ttl,
        },
    )
    .await?;
    let user = auth
        .create_user(username, password, role)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create user `{username}`: {e}"))?;
    eprintln!("created {} `{}` ({})", user.role, user.username, user.id);
    Ok(())
}

/// Hide a password in a database URL before it reaches a log.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}://{}:***{}", &url[..s], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
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
    tracing::info!("shutting down: finishing in-flight requests");
}
