//! Helpers for the end-to-end tests: find the built binaries, start them as real processes on
//! free loopback ports, wait for readiness, and clean up. The tests live in `tests/`.
//! Binaries come from `$PHOENIX_BIN_DIR`, else `<target>/debug`; `./scripts/test` builds them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ENROLL_TOKEN: &str = "e2e-enrollment-token-0123456789";

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
}

impl ApiProcess {
    /// Start `phoenix-api` on `database_url` and wait until `/ready` answers.
    pub async fn start(database_url: &str, extra_env: &[(&str, &str)]) -> Self {
        let port = free_port();
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
            .env("PHOENIX_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let p = ApiProcess { child, port, log };
        p.wait_ready(Duration::from_secs(30)).await;
        p
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
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
