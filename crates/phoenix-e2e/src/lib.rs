//! Helpers for the end-to-end tests: find the built binaries, start them as real processes on
//! free loopback ports, wait for readiness, and clean up. The tests live in `tests/`.
//! Binaries come from `$PHOENIX_BIN_DIR`, else `<target>/debug`; `./scripts/test` builds them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod peers;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ENROLL_TOKEN: &str = "e2e-enrollment-token-0123456789";
/// The first admin of every API these tests start (`PHOENIX_ADMIN_PASSWORD`).
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "e2e-admin-password";

/// Where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PHOENIX_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("debug")
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --workspace --bins`, which ./scripts/test does) or set PHOENIX_BIN_DIR",
        path.display()
    );
    path
}

/// A free loopback port (bound then released; the child binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `phoenix-api` process; killed on drop.
#[derive(Debug)]
pub struct ApiProcess {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    /// The admin's access token (logged in once the API is ready).
    pub token: String,
}

impl ApiProcess {
    /// Start `phoenix-api` on `database_url` and wait until `/ready` answers.
    pub async fn start(database_url: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), database_url, extra_env).await
    }

    /// Like [`ApiProcess::start`] on a given port (to restart an API where agents expect it).
    pub async fn start_on(port: u16, database_url: &str, extra_env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "phoenix-e2e-api-{port}-{}.log",
            uuid::Uuid::new_v4()
        ));
        let log_file = std::fs::File::create(&log).unwrap();
        let data_dir =
            std::env::temp_dir().join(format!("phoenix-e2e-data-{}", uuid::Uuid::new_v4()));
        let mut cmd = Command::new(bin("phoenix-api"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(database_url)
            .arg("--data-dir")
            .arg(&data_dir)
            .env("PHOENIX_ENROLLMENT_TOKEN", ENROLL_TOKEN)
            .env("PHOENIX_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("PHOENIX_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut p = ApiProcess {
            child,
            port,
            log,
            token: String::new(),
        };
        p.wait_ready(Duration::from_secs(30)).await;
        p.token = p.login(ADMIN_USER, ADMIN_PASSWORD).await;
        p
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Log in; the access token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let res = reqwest::Client::new()
            .post(format!("{}/api/v1/auth/login", self.base()))
            .json(&serde_json::json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap();
        assert!(
            res.status().is_success(),
            "login as {username}: {}",
            res.status()
        );
        let body: serde_json::Value = res.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    /// A client sending the admin's token on every request.
    pub fn client(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    }

    pub async fn wait_ready(&self, within: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = client.get(format!("{}/ready", self.base())).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "phoenix-api on port {} not ready in {within:?}; log:\n{}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn pg_admin_url() -> String {
    std::env::var("PHOENIX_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A fresh PostgreSQL database for one test; dropped on [`PgDatabase::drop_now`].
#[derive(Debug)]
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> Self {
        use sqlx::Connection;
        let admin = pg_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is required and unreachable at {admin}: {e}. Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect 15 main start`."
                )
            });
        let name = format!("phoenix_e2e_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn drop_now(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a signal to a process with the `kill` command (`STOP`, `CONT`, `TERM`, `KILL`).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// A running `phoenix-agent agent` process; killed on drop.
#[derive(Debug)]
pub struct AgentProcess {
    pub child: Child,
    pub host_id: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

/// Settings for [`AgentProcess::start`].
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub api_base: String,
    pub host_id: String,
    pub data_dir: PathBuf,
    /// Pipeline file contents (written next to the data directory), if any.
    pub pipeline_yaml: Option<String>,
    /// Extra `PHOENIX_AGENT_*` (or other) variables.
    pub env: Vec<(String, String)>,
}

impl AgentOptions {
    pub fn new(api_base: &str, host_id: &str, data_dir: &std::path::Path) -> Self {
        Self {
            api_base: api_base.to_string(),
            host_id: host_id.to_string(),
            data_dir: data_dir.to_path_buf(),
            pipeline_yaml: None,
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn pipeline(mut self, yaml: &str) -> Self {
        self.pipeline_yaml = Some(yaml.to_string());
        self
    }
}

impl AgentProcess {
    /// Starts an agent with short intervals (KPIs every second, heartbeats every 500 ms).
    pub fn start(options: AgentOptions) -> Self {
        std::fs::create_dir_all(&options.data_dir).unwrap();
        let mut env: Vec<(String, String)> = vec![
            ("PHOENIX_AGENT_API_URL".into(), options.api_base.clone()),
            ("PHOENIX_AGENT_HOST_ID".into(), options.host_id.clone()),
            ("PHOENIX_AGENT_ENROLLMENT_TOKEN".into(), ENROLL_TOKEN.into()),
            (
                "PHOENIX_AGENT_DATA_DIR".into(),
                options.data_dir.display().to_string(),
            ),
            ("PHOENIX_AGENT_POLL_INTERVAL".into(), "5s".into()),
            ("PHOENIX_AGENT_HEARTBEAT_INTERVAL".into(), "500ms".into()),
            ("PHOENIX_AGENT_KPI_INTERVAL".into(), "1s".into()),
            ("PHOENIX_AGENT_MIN_BACKOFF".into(), "100ms".into()),
            ("PHOENIX_AGENT_MAX_BACKOFF".into(), "1s".into()),
            ("PHOENIX_AGENT_BREAKER_COOLDOWN".into(), "1s".into()),
            (
                "PHOENIX_AGENT_LOG_LEVEL".into(),
                "phoenix_agent=debug,info".into(),
            ),
        ];
        if let Some(yaml) = &options.pipeline_yaml {
            let path = options.data_dir.with_extension("pipeline.yaml");
            std::fs::write(&path, yaml).unwrap();
            env.push((
                "PHOENIX_AGENT_PIPELINE_CONFIG".into(),
                path.display().to_string(),
            ));
        }
        env.extend(options.env.iter().cloned());
        let log = options.data_dir.with_extension("log");
        let child = spawn_agent(&env, &log);
        AgentProcess {
            child,
            host_id: options.host_id.clone(),
            data_dir: options.data_dir.clone(),
            log,
            env,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same agent again (same data directory), after [`Self::kill9`] or exit.
    pub fn restart(&mut self) {
        self.child = spawn_agent(&self.env, &self.log);
    }

    /// SIGTERM, then wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        signal(self.pid(), "TERM");
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log lines (JSON) whose message is `message`.
    pub fn log_events(&self, message: &str) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }

    /// Ids of the KPI batches this agent queued (from its log).
    pub fn queued_batch_ids(&self) -> Vec<String> {
        self.log_events("kpi batch queued")
            .iter()
            .filter_map(|v| v["fields"]["batch_id"].as_str().map(str::to_string))
            .collect()
    }

    /// Ids of the tasks this agent executed (from its log), with repeats.
    pub fn executed_task_ids(&self) -> Vec<String> {
        self.log_events("task executing")
            .iter()
            .filter_map(|v| v["fields"]["task_id"].as_str().map(str::to_string))
            .collect()
    }
}

fn spawn_agent(env: &[(String, String)], log: &std::path::Path) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(bin("phoenix-agent"));
    cmd.arg("agent").stdout(Stdio::null()).stderr(log_file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// KPI batch ids stored by an API on SQLite at `db_path`, per host.
pub async fn stored_batch_ids(db_path: &std::path::Path) -> Vec<(String, String)> {
    use sqlx::Connection;
    let url = format!("sqlite://{}?mode=ro", db_path.display());
    let Ok(mut conn) = sqlx::SqliteConnection::connect(&url).await else {
        return Vec::new();
    };
    sqlx::query_as::<_, (String, String)>("SELECT batch_id, host_id FROM kpi_batches")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default()
}

/// A temporary directory for one test, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PHOENIX_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Starts an API on SQLite in `dir` with short leases and heartbeat expectations.
pub async fn api_on_sqlite(
    dir: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> (ApiProcess, PathBuf) {
    let db = dir.join("phoenix.db");
    let url = format!("sqlite://{}", db.display());
    let mut env: Vec<(&str, &str)> = vec![
        ("PHOENIX_AGENT_HEARTBEAT_INTERVAL", "500ms"),
        ("PHOENIX_LEASE_CHECK_INTERVAL", "200ms"),
    ];
    env.extend_from_slice(extra_env);
    (ApiProcess::start(&url, &env).await, db)
}

/// Messages of the agent log entries stored by an API on SQLite at `db_path` for `host`.
pub async fn stored_log_messages(db_path: &std::path::Path, host: &str) -> Vec<String> {
    use sqlx::Connection;
    let url = format!("sqlite://{}?mode=ro", db_path.display());
    let Ok(mut conn) = sqlx::SqliteConnection::connect(&url).await else {
        return Vec::new();
    };
    sqlx::query_as::<_, (String,)>("SELECT message FROM agent_logs WHERE host_id = ?1")
        .bind(host)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(m,)| m)
        .collect()
}
