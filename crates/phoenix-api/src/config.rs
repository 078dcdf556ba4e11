//! The API's configuration: defaults, then a YAML file (`--config`), then `PHOENIX_*`
//! environment variables, then command-line flags; validated once at start with errors that
//! name the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

/// Everything the API process can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to serve HTTP on.
    pub listen: SocketAddr,
    /// `sqlite://PATH` (default: `<data_dir>/phoenix.db`) or `postgres://...`.
    pub database_url: Option<String>,
    /// Where the embedded database and other local state live.
    pub data_dir: PathBuf,
    /// Token agents present to enroll. When unset, one is generated on first start, stored in
    /// the database (so every replica agrees) and logged once.
    pub enrollment_token: Option<String>,
    /// Longest a `GET /api/v1/agent/tasks` waits for a task.
    #[serde(with = "humantime_serde")]
    pub long_poll_max: Duration,
    /// How long a claimed task stays with its agent without a heartbeat or status report.
    #[serde(with = "humantime_serde")]
    pub task_lease: Duration,
    /// The heartbeat interval agents are expected to keep; three missed ones make an agent
    /// `stale`.
    #[serde(with = "humantime_serde")]
    pub agent_heartbeat_interval: Duration,
    /// Silence after which an agent is `offline`.
    #[serde(with = "humantime_serde")]
    pub agent_offline_after: Duration,
    /// Most tasks handed out per long-poll answer.
    pub claim_batch_max: u32,
    /// Body limit for ordinary requests.
    pub body_limit_bytes: usize,
    /// Body limit for `POST /api/v1/agent/metrics` and `/logs`.
    pub agent_batch_body_limit_bytes: usize,
    /// Completed and failed tasks are deleted after this long.
    #[serde(with = "humantime_serde")]
    pub task_retention: Duration,
    /// KPI batches, heartbeats and agent logs are deleted after this long.
    #[serde(with = "humantime_serde")]
    pub telemetry_retention: Duration,
    /// How often lapsed leases and delayed tasks are looked for.
    #[serde(with = "humantime_serde")]
    pub lease_check_interval: Duration,
    /// How often running experiments are looked at: due analyses, ends of runs, targets that
    /// never started. Each experiment's own `analysis.interval_seconds` sets how often it is
    /// analysed; this only bounds how late that can be.
    #[serde(with = "humantime_serde")]
    pub analysis_tick_interval: Duration,
    /// An experiment whose targets have not all started this long after `start` fails,
    /// naming the hosts that did not.
    #[serde(with = "humantime_serde")]
    pub experiment_start_timeout: Duration,
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `phoenix_api=debug,info`.
    pub log_level: String,
    /// Create a sample experiment when the database has none (the README's first command).
    pub seed_demo: bool,
    /// PEM certificate chain (leaf first). With `tls_key_file`, the API serves HTTPS (and
    /// `wss://`) only; without both, plain HTTP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// The token WebSocket clients (`/api/v1/ws`) present. When unset, the enrollment token
    /// is accepted.
    pub ws_token: Option<String>,
    /// Events queued for one WebSocket client before it is closed as a slow consumer (4008).
    pub ws_client_buffer: usize,
    /// Largest message a WebSocket client may send; a larger one closes it with 1009.
    pub ws_max_message_bytes: usize,
    /// WebSocket keepalive: a ping this often; a client silent for three intervals is closed.
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,
    /// How long a WebSocket client that came without a token has to send its `auth` message.
    #[serde(with = "humantime_serde")]
    pub ws_auth_timeout: Duration,
    // ---- authentication (docs/security.md) ----
    /// HS256 key for access tokens, at least 32 characters. When unset, one is generated at
    /// first start and kept in the database, so every replica signs with the same key.
    pub jwt_secret: Option<String>,
    /// Lifetime of an access token.
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (each refresh issues a new one).
    #[serde(with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    /// Name of the admin created at first start, when the database has no user.
    pub admin_username: String,
    /// Password of that first admin. When unset, a random one is generated and printed once.
    pub admin_password: Option<String>,
    /// Requests per second each signed-in user or API key may make (0: no limit).
    pub rate_limit_per_second: f64,
    /// Requests a user or API key may make at once before the rate applies.
    pub rate_limit_burst: u32,
    /// Requests per second per client address on unauthenticated routes (login, refresh).
    pub anonymous_rate_limit_per_second: f64,
    pub anonymous_rate_limit_burst: u32,
    /// Requests per second per agent (0: no limit).
    pub agent_rate_limit_per_second: f64,
    pub agent_rate_limit_burst: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            database_url: None,
            data_dir: PathBuf::from("data"),
            enrollment_token: None,
            long_poll_max: Duration::from_secs(30),
            task_lease: Duration::from_secs(60),
            agent_heartbeat_interval: Duration::from_secs(10),
            agent_offline_after: Duration::from_secs(300),
            claim_batch_max: 10,
            body_limit_bytes: 1024 * 1024,
            agent_batch_body_limit_bytes: 16 * 1024 * 1024,
            task_retention: Duration::from_secs(7 * 24 * 3600),
            telemetry_retention: Duration::from_secs(30 * 24 * 3600),
            lease_check_interval: Duration::from_secs(1),
            analysis_tick_interval: Duration::from_secs(2),
            experiment_start_timeout: Duration::from_secs(300),
            log_format: LogFormat::Json,
            log_level: "info".to_string(),
            seed_demo: false,
            tls_cert_file: None,
            tls_key_file: None,
            ws_token: None,
            ws_client_buffer: 256,
            ws_max_message_bytes: 16 * 1024,
            ws_ping_interval: Duration::from_secs(30),
            ws_auth_timeout: Duration::from_secs(10),
            jwt_secret: None,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(7 * 24 * 3600),
            admin_username: "admin".to_string(),
            admin_password: None,
            rate_limit_per_second: 50.0,
            rate_limit_burst: 200,
            anonymous_rate_limit_per_second: 5.0,
            anonymous_rate_limit_burst: 20,
            agent_rate_limit_per_second: 20.0,
            agent_rate_limit_burst: 200,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl Config {
    /// Merge the sources in order of precedence. `overrides` are the flags given on the
    /// command line (only those present).
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    key: "config",
                    problem: format!("file {} does not exist", path.display()),
                });
            }
            fig = fig.merge(Yaml::file(path));
        }
        // Only our own keys: other PHOENIX_* variables (the agent's, the tests') are not ours.
        let keys: Vec<String> = match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        fig = fig.merge(Env::prefixed("PHOENIX_").filter(move |k| {
            keys.iter()
                .any(|known| k.as_str().eq_ignore_ascii_case(known))
        }));
        fig = fig.merge(Serialized::defaults(overrides.clone()));
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| ConfigError::Invalid {
            key,
            problem: problem.into(),
        };
        if let Some(url) = &self.database_url {
            let ok = ["sqlite://", "sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|p| url.starts_with(p));
            if !ok {
                return Err(invalid(
                    "database_url",
                    "must start with sqlite:// or postgres:// (or postgresql://)",
                ));
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "tls_key_file",
                    "is required when tls_cert_file is set",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls_cert_file",
                    "is required when tls_key_file is set",
                ))
            }
            _ => {}
        }
        if self.long_poll_max > Duration::from_secs(120) {
            return Err(invalid("long_poll_max", "must be at most 120s"));
        }
        if self.task_lease < Duration::from_secs(1) {
            return Err(invalid("task_lease", "must be at least 1s"));
        }
        if self.agent_heartbeat_interval.is_zero() {
            return Err(invalid(
                "agent_heartbeat_interval",
                "must be greater than 0",
            ));
        }
        if self.agent_offline_after <= self.agent_heartbeat_interval {
            return Err(invalid(
                "agent_offline_after",
                "must be longer than agent_heartbeat_interval",
            ));
        }
        if self.claim_batch_max == 0 || self.claim_batch_max > 1000 {
            return Err(invalid("claim_batch_max", "must be between 1 and 1000"));
        }
        if self.body_limit_bytes < 1024 {
            return Err(invalid("body_limit_bytes", "must be at least 1024"));
        }
        if self.agent_batch_body_limit_bytes < self.body_limit_bytes {
            return Err(invalid(
                "agent_batch_body_limit_bytes",
                "must be at least body_limit_bytes",
            ));
        }
        if self.lease_check_interval.is_zero() {
            return Err(invalid("lease_check_interval", "must be greater than 0"));
        }
        if self.analysis_tick_interval.is_zero() {
            return Err(invalid("analysis_tick_interval", "must be greater than 0"));
        }
        if self.experiment_start_timeout < Duration::from_secs(1) {
            return Err(invalid("experiment_start_timeout", "must be at least 1s"));
        }
        if let Some(t) = &self.ws_token {
            if t.len() < 16 {
                return Err(invalid("ws_token", "must be at least 16 characters"));
            }
        }
        if !(1..=1_000_000).contains(&self.ws_client_buffer) {
            return Err(invalid("ws_client_buffer", "must be between 1 and 1000000"));
        }
        if !(256..=16 * 1024 * 1024).contains(&self.ws_max_message_bytes) {
            return Err(invalid(
                "ws_max_message_bytes",
                "must be between 256 and 16777216",
            ));
        }
        if self.ws_ping_interval < Duration::from_millis(100) {
            return Err(invalid("ws_ping_interval", "must be at least 100ms"));
        }
        if self.ws_auth_timeout < Duration::from_millis(100) {
            return Err(invalid("ws_auth_timeout", "must be at least 100ms"));
        }
        if let Some(t) = &self.enrollment_token {
            if t.len() < 16 {
                return Err(invalid(
                    "enrollment_token",
                    "must be at least 16 characters",
                ));
            }
        }
        self.validate_auth()
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| ConfigError::Invalid { key, problem };
        if let Some(k) = &self.jwt_secret {
            if k.len() < 32 {
                return Err(invalid(
                    "jwt_secret",
                    "must be at least 32 characters".into(),
                ));
            }
        }
        if self.access_token_ttl < Duration::from_secs(10) {
            return Err(invalid("access_token_ttl", "must be at least 10s".into()));
        }
        if self.refresh_token_ttl <= self.access_token_ttl {
            return Err(invalid(
                "refresh_token_ttl",
                "must be longer than access_token_ttl".into(),
            ));
        }
        if let Err(e) = crate::auth::validate_username("admin_username", &self.admin_username) {
            return Err(invalid("admin_username", e.to_string()));
        }
        if let Some(p) = &self.admin_password {
            if let Err(e) = crate::auth::validate_password("admin_password", p) {
                return Err(invalid("admin_password", e.to_string()));
            }
        }
        for (key, rate) in [
            ("rate_limit_per_second", self.rate_limit_per_second),
            (
                "anonymous_rate_limit_per_second",
                self.anonymous_rate_limit_per_second,
            ),
            (
                "agent_rate_limit_per_second",
                self.agent_rate_limit_per_second,
            ),
        ] {
            if !rate.is_finite() || rate < 0.0 {
                return Err(invalid(key, "must be a number >= 0 (0: no limit)".into()));
            }
        }
        Ok(())
    }

    pub fn rate_limits(&self) -> crate::auth::RateLimits {
        use crate::auth::Bucket;
        crate::auth::RateLimits {
            user: Bucket {
                per_second: self.rate_limit_per_second,
                burst: self.rate_limit_burst,
            },
            anonymous: Bucket {
                per_second: self.anonymous_rate_limit_per_second,
                burst: self.anonymous_rate_limit_burst,
            },
            agent: Bucket {
                per_second: self.agent_rate_limit_per_second,
                burst: self.agent_rate_limit_burst,
            },
        }
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("phoenix.db").display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().database_url(), "sqlite://data/phoenix.db");
    }

    #[test]
    fn file_and_overrides_merge_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.yaml");
        std::fs::write(&path, "long_poll_max: 5s\nclaim_batch_max: 20\n").unwrap();
        let mut flags = serde_json::Map::new();
        flags.insert("claim_batch_max".into(), 30.into());
        let cfg = Config::load(Some(&path), &flags).unwrap();
        assert_eq!(cfg.long_poll_max, Duration::from_secs(5));
        assert_eq!(cfg.claim_batch_max, 30);

        std::fs::write(&path, "claim_batch_max: lots\n").unwrap();
        let err = Config::load(Some(&path), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("claim_batch_max"), "{err}");

        std::fs::write(&path, "clam_batch_max: 3\n").unwrap();
        let err = Config::load(Some(&path), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("clam_batch_max"), "{err}");

        std::fs::write(&path, "database_url: mysql://x\n").unwrap();
        let err = Config::load(Some(&path), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("database_url"), "{err}");
    }
}
