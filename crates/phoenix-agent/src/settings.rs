//! The agent's own configuration (control-plane mode): defaults, then a YAML file
//! (`/etc/phoenix-agent/config.yaml`), then `PHOENIX_AGENT_*` environment variables, then
//! command-line flags; validated once at start with errors that name the key.
//!
//! Where metrics come from and go to is not here: `pipeline_config` names a pipeline file in
//! the standalone format whose receivers and exporters the agent runs, and into which
//! experiments deploy their baseline and candidate pipelines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use phoenix_core::HostId;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/phoenix-agent/config.yaml";

/// Everything the agent process can be told in control-plane mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Base URL of the control plane, e.g. `http://phoenix:8080`.
    pub api_url: String,
    /// This host's id; the hostname when unset.
    pub host_id: Option<String>,
    /// Token for the first enrollment (not needed once a secret is stored in `data_dir`).
    pub enrollment_token: Option<String>,
    /// Longest one task long-poll waits (the API caps it at its `long_poll_max`).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Time between two heartbeats.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Length of a KPI interval (one batch per variant each); a `metrics` task may change it.
    #[serde(with = "humantime_serde")]
    pub kpi_interval: Duration,
    /// A `tracing` filter, e.g. `info` or `phoenix_agent=debug,info`.
    pub log_level: String,
    /// `json` or `pretty`.
    pub log_format: String,
    /// Credentials, task journal, state and disk buffers live here.
    pub data_dir: PathBuf,
    /// Labels reported with every heartbeat, e.g. `namespace`, `cluster`.
    pub labels: BTreeMap<String, String>,
    /// Pipeline file (standalone format) giving receivers, exporters and the pipelines run
    /// outside experiments. Without it the agent runs no receiver until a `loadsim` task.
    pub pipeline_config: Option<PathBuf>,
    /// Timeout of one API request (a long-poll gets `poll_interval` on top).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First delay after a failed API call (doubled per failure, with jitter).
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// Longest delay between two attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Consecutive API failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before one probe is let through.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Bytes of KPI batches kept on disk while the API is unreachable; beyond, new batches
    /// are dropped and counted.
    pub kpi_buffer_max_bytes: u64,
    /// Bytes of remote-write requests kept on disk while the metrics backend is down.
    pub remote_write_buffer_max_bytes: u64,
    /// Log entries (warn and above) waiting to be shipped to the API at most.
    pub log_buffer_max_entries: usize,
    /// How long a SIGTERM waits for buffers to drain before exiting.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Where the agent's own `/metrics` listens when the pipeline file has no
    /// `exporters.prometheus` (which otherwise serves them too).
    pub metrics_listen: Option<String>,
    /// PEM file of the CA(s) that sign the API's certificate (`https://` api_url); replaces
    /// the system's web roots.
    pub tls_ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the API's leaf certificate (hex, colons allowed), checked in
    /// addition to the chain.
    pub tls_pinned_sha256: Option<String>,
    /// Label statistics of the input (for the API's cardinality breakdown and
    /// recommendations) are collected during one KPI interval out of this many; 0: never.
    pub label_stats_every_intervals: u32,
    /// Metrics the label statistics track at most (further ones are counted, not tracked).
    pub label_stats_max_metrics: usize,
    /// Labels the statistics break series down by (at most 4).
    pub label_stats_breakdown_labels: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            api_url: String::new(),
            host_id: None,
            enrollment_token: None,
            poll_interval: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            kpi_interval: Duration::from_secs(10),
            log_level: "info".into(),
            log_format: "json".into(),
            data_dir: PathBuf::from("/var/lib/phoenix-agent"),
            labels: BTreeMap::new(),
            pipeline_config: None,
            request_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(15),
            kpi_buffer_max_bytes: 64 * 1024 * 1024,
            remote_write_buffer_max_bytes: 512 * 1024 * 1024,
            log_buffer_max_entries: 1000,
            shutdown_grace: Duration::from_secs(10),
            metrics_listen: None,
            tls_ca_file: None,
            tls_pinned_sha256: None,
            label_stats_every_intervals: 1,
            label_stats_max_metrics: 1_000,
            label_stats_breakdown_labels: vec!["namespace".into(), "service".into()],
        }
    }
}

/// A configuration the agent cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The sources could not be read or merged (the message names the key).
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range.
    #[error("configuration key `{key}`: {problem}")]
    Invalid {
        /// The key at fault.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The hostname, from the kernel.
pub fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

impl Settings {
    /// Merges the sources in order of precedence. `overrides` holds the flags given.
    pub fn load(
        file: Option<&Path>,
        overrides: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, SettingsError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(SettingsError::Invalid {
                    key: "config",
                    problem: format!("file {} does not exist", path.display()),
                });
            }
            fig = fig.merge(Yaml::file(path));
        }
        fig = fig.merge(Env::prefixed("PHOENIX_AGENT_"));
        fig = fig.merge(Serialized::defaults(overrides.clone()));
        let settings: Settings = fig.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value; the first problem names its key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key: &'static str, problem: &str| SettingsError::Invalid {
            key,
            problem: problem.to_string(),
        };
        if self.api_url.is_empty() {
            return Err(invalid(
                "api_url",
                "is required (file, PHOENIX_AGENT_API_URL or --api-url)",
            ));
        }
        if !(self.api_url.starts_with("http://") || self.api_url.starts_with("https://")) {
            return Err(invalid("api_url", "must be an http:// or https:// URL"));
        }
        if let Some(host) = &self.host_id {
            HostId::parse(host).map_err(|e| invalid("host_id", &e.to_string()))?;
        }
        if let Some(token) = &self.enrollment_token {
            if token.is_empty() {
                return Err(invalid("enrollment_token", "must not be empty"));
            }
        }
        for (key, value, min) in [
            ("poll_interval", self.poll_interval, Duration::ZERO),
            (
                "heartbeat_interval",
                self.heartbeat_interval,
                Duration::from_millis(100),
            ),
            (
                "kpi_interval",
                self.kpi_interval,
                Duration::from_millis(200),
            ),
            (
                "request_timeout",
                self.request_timeout,
                Duration::from_millis(100),
            ),
            ("min_backoff", self.min_backoff, Duration::from_millis(1)),
        ] {
            if value < min {
                return Err(invalid(key, &format!("must be at least {min:?}")));
            }
        }
        if self.poll_interval > Duration::from_secs(120) {
            return Err(invalid("poll_interval", "must be at most 120s"));
        }
        if self.max_backoff < self.min_backoff {
            return Err(invalid(
                "max_backoff",
                "must not be shorter than min_backoff",
            ));
        }
        if self.breaker_failures == 0 {
            return Err(invalid("breaker_failures", "must be at least 1"));
        }
        if self.kpi_buffer_max_bytes < 64 * 1024 {
            return Err(invalid("kpi_buffer_max_bytes", "must be at least 65536"));
        }
        if self.remote_write_buffer_max_bytes < 1024 * 1024 {
            return Err(invalid(
                "remote_write_buffer_max_bytes",
                "must be at least 1048576",
            ));
        }
        if self.log_buffer_max_entries == 0 {
            return Err(invalid("log_buffer_max_entries", "must be at least 1"));
        }
        if !matches!(self.log_format.as_str(), "json" | "pretty") {
            return Err(invalid("log_format", "must be json or pretty"));
        }
        if self.labels.len() > phoenix_core::agent::MAX_LABELS {
            return Err(invalid("labels", "too many labels (at most 64)"));
        }
        if let Some(listen) = &self.metrics_listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    "metrics_listen",
                    "must be an address like 127.0.0.1:9464",
                ));
            }
        }
        if let Some(pin) = &self.tls_pinned_sha256 {
            crate::tls::parse_pin(pin).map_err(|_| {
                invalid(
                    "tls_pinned_sha256",
                    "must be a SHA-256 fingerprint: 64 hexadecimal digits (colons allowed)",
                )
            })?;
        }
        if (self.tls_ca_file.is_some() || self.tls_pinned_sha256.is_some())
            && !self.api_url.starts_with("https://")
        {
            return Err(invalid(
                "api_url",
                "must be https:// when tls_ca_file or tls_pinned_sha256 is set",
            ));
        }
        if let Some(ca) = &self.tls_ca_file {
            if !ca.is_file() {
                return Err(SettingsError::Invalid {
                    key: "tls_ca_file",
                    problem: format!("{} is not a readable file", ca.display()),
                });
            }
        }
        if self.label_stats_max_metrics == 0 || self.label_stats_max_metrics > 5_000 {
            return Err(invalid(
                "label_stats_max_metrics",
                "must be between 1 and 5000",
            ));
        }
        if self.label_stats_breakdown_labels.len()
            > phoenix_pipeline::labelstats::MAX_BREAKDOWN_LABELS
        {
            return Err(invalid(
                "label_stats_breakdown_labels",
                "must name at most 4 labels",
            ));
        }
        if self
            .label_stats_breakdown_labels
            .iter()
            .any(|l| l.is_empty())
        {
            return Err(invalid(
                "label_stats_breakdown_labels",
                "must not contain an empty name",
            ));
        }
        if self.host_id.is_none() && hostname().is_none() {
            return Err(invalid(
                "host_id",
                "is required: the hostname could not be read",
            ));
        }
        Ok(())
    }

    /// The label statistics to collect, if any.
    pub fn label_stats(&self) -> Option<phoenix_pipeline::labelstats::LabelStatsConfig> {
        (self.label_stats_every_intervals > 0).then(|| {
            phoenix_pipeline::labelstats::LabelStatsConfig {
                every_intervals: self.label_stats_every_intervals,
                max_metrics: self.label_stats_max_metrics,
                breakdown_labels: self.label_stats_breakdown_labels.clone(),
                ..Default::default()
            }
        })
    }

    /// The host id in effect.
    pub fn host_id(&self) -> Result<HostId, SettingsError> {
        let raw = self.host_id.clone().or_else(hostname).unwrap_or_default();
        HostId::parse(&raw).map_err(|e| SettingsError::Invalid {
            key: "host_id",
            problem: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings read the process environment: tests that load them take turns (under
    /// `cargo test` they share one process).
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn env_lock() -> std::sync::MutexGuard<'static, ()> {
        ENV.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flags(pairs: &[(&str, serde_json::Value)]) -> serde_json::Map<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn file_values_are_overridden_by_flags() {
        let _env = env_lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "api_url: http://api:8080\nhost_id: web-1\npoll_interval: 5s\nlabels: {namespace: shop, cluster: eu-1}\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path), &flags(&[("host_id", "web-2".into())])).unwrap();
        assert_eq!(s.api_url, "http://api:8080");
        assert_eq!(s.poll_interval, Duration::from_secs(5));
        assert_eq!(s.host_id.as_deref(), Some("web-2"));
        assert_eq!(s.labels["cluster"], "eu-1");
        assert_eq!(s.kpi_interval, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_key_at_fault() {
        let _env = env_lock();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        for (text, key) in [
            ("api_url: ftp://x\n", "api_url"),
            (
                "api_url: http://x\nheartbeat_interval: soon\n",
                "heartbeat_interval",
            ),
            ("api_url: http://x\npol_interval: 3s\n", "pol_interval"),
            ("api_url: http://x\nhost_id: 'bad host!'\n", "host_id"),
            (
                "api_url: http://x\nbreaker_failures: 0\n",
                "breaker_failures",
            ),
            ("host_id: a\n", "api_url"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Settings::load(Some(&path), &Default::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn environment_overrides_the_file_and_flags_override_both() {
        let _env = env_lock();
        // nextest runs each test in its own process: the variables stay here.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "api_url: http://file:8080\nkpi_interval: 30s\n").unwrap();
        std::env::set_var("PHOENIX_AGENT_KPI_INTERVAL", "2s");
        std::env::set_var("PHOENIX_AGENT_API_URL", "http://env:8080");
        std::env::set_var("PHOENIX_AGENT_LABELS", "{namespace=shop}");
        let s = Settings::load(
            Some(&path),
            &flags(&[("api_url", "http://flag:8080".into())]),
        );
        std::env::remove_var("PHOENIX_AGENT_KPI_INTERVAL");
        std::env::remove_var("PHOENIX_AGENT_API_URL");
        std::env::remove_var("PHOENIX_AGENT_LABELS");
        let s = s.unwrap();
        assert_eq!(s.kpi_interval, Duration::from_secs(2));
        assert_eq!(s.api_url, "http://flag:8080");
        assert_eq!(s.labels["namespace"], "shop");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let _env = env_lock();
        let err = Settings::load(
            Some(Path::new("/nonexistent/agent.yaml")),
            &Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/agent.yaml"), "{err}");
    }
}
