//! Command-line flags, checked once into a [`SimConfig`]: the target must be a loopback
//! address (this tool never loads another machine), and the open-file limit is raised for
//! one long-poll connection per simulated agent.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use reqwest::Url;

use crate::sim::SimConfig;

/// Simulate N Phoenix agents against a running phoenix-api and measure it.
#[derive(Debug, Parser)]
#[command(name = "phoenix-load", version)]
pub struct Args {
    /// The API's base URL; only loopback addresses (127.0.0.0/8, ::1, localhost).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// Simulated agents, each with its own long-poll connection.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// The API's enrollment token.
    #[arg(long, env = "PHOENIX_ENROLLMENT_TOKEN", hide_env_values = true)]
    pub enroll_token: String,
    /// An admin's access token or API key, sent with the task enqueues
    /// (`POST /api/v1/tasks` is an admin route).
    #[arg(long, env = "PHOENIX_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Each agent heartbeats once per interval; agents are spread uniformly over it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Tasks per second enqueued for random agents, on a fixed (open-loop) schedule.
    #[arg(long, default_value_t = 10.0)]
    pub enqueue_rate: f64,
    /// How long to measure, after warmup.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Least time before measuring; measuring also waits until every agent is enrolled and
    /// has sent its first long-poll (up to --warmup-timeout).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Longest warmup: measuring starts then even if enrollment is not finished.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub warmup_timeout: Duration,
    /// After measuring: time allowed for tasks already enqueued to be delivered and completed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// The `wait` of each long-poll (the API caps it at its long_poll_max, 30 s by default).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub poll_wait: Duration,
    /// PID of the API process: its CPU and RSS are read from /proc over the window.
    #[arg(long)]
    pub api_pid: Option<u32>,
    /// Agents are named `<prefix>-00000`, `<prefix>-00001`, ...
    #[arg(long, default_value = "load")]
    pub host_prefix: String,
    /// Cap on concurrent heartbeats, status reports and enqueues (long-polls not included).
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Concurrent enrollments during warmup.
    #[arg(long, default_value_t = 64)]
    pub enroll_concurrency: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

impl Args {
    pub fn sim_config(&self) -> anyhow::Result<SimConfig> {
        let api = Url::parse(&self.api).with_context(|| format!("--api {}", self.api))?;
        check_loopback(&api)?;
        if api.scheme() != "http" {
            bail!("--api: only http:// is supported (got {})", api.scheme());
        }
        if self.agents == 0 {
            bail!("--agents: must be at least 1");
        }
        if self.enroll_token.len() < 16 {
            bail!("--enroll-token: the API requires at least 16 characters");
        }
        if !self.enqueue_rate.is_finite() || self.enqueue_rate < 0.0 {
            bail!("--enqueue-rate: must be a number >= 0 (tasks per second)");
        }
        if self.heartbeat_interval.is_zero() {
            bail!("--heartbeat-interval: must be greater than 0");
        }
        if self.duration.is_zero() {
            bail!("--duration: must be greater than 0");
        }
        if self.max_in_flight == 0 || self.enroll_concurrency == 0 {
            bail!("--max-in-flight and --enroll-concurrency: must be at least 1");
        }
        let prefix_ok = !self.host_prefix.is_empty()
            && self.host_prefix.len() <= 240
            && self
                .host_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !prefix_ok {
            bail!("--host-prefix: 1 to 240 characters of [A-Za-z0-9._-]");
        }
        Ok(SimConfig {
            api,
            agents: self.agents,
            enroll_token: self.enroll_token.clone(),
            api_token: self.api_token.clone().filter(|t| !t.is_empty()),
            heartbeat_interval: self.heartbeat_interval,
            enqueue_rate_per_second: self.enqueue_rate,
            duration: self.duration,
            warmup: self.warmup,
            warmup_timeout: self.warmup_timeout,
            drain: self.drain,
            poll_wait: self.poll_wait,
            api_pid: self.api_pid,
            host_prefix: self.host_prefix.clone(),
            max_in_flight: self.max_in_flight,
            enroll_concurrency: self.enroll_concurrency,
        })
    }
}

/// Refuse any target that is not this machine's loopback.
pub fn check_loopback(api: &Url) -> anyhow::Result<()> {
    let host = api.host_str().unwrap_or("");
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>();
    let ok = match ip {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !ok {
        bail!("--api {api}: only loopback targets are allowed (127.0.0.0/8, [::1], localhost)");
    }
    Ok(())
}

/// Open-file limits before and after raising the soft limit to the hard one.
#[derive(Debug, Clone, Copy)]
pub struct FdLimit {
    pub soft_before: Option<u64>,
    pub soft_now: Option<u64>,
    pub hard: Option<u64>,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (`None` = unlimited).
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: before.maximum,
                maximum: before.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok(FdLimit {
        soft_before: before.current,
        soft_now: now.current,
        hard: now.maximum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.3.2.1/",
            "http://localhost:1",
            "http://[::1]:80",
        ] {
            check_loopback(&Url::parse(ok).unwrap()).unwrap();
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://192.168.1.2",
            "http://example.com",
            "http://[::2]",
        ] {
            assert!(
                check_loopback(&Url::parse(bad).unwrap()).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn flags_are_checked_into_a_config() {
        let args = Args::try_parse_from([
            "phoenix-load",
            "--enroll-token",
            "0123456789abcdef",
            "--agents",
            "200",
            "--enqueue-rate",
            "100",
            "--duration",
            "15s",
        ])
        .unwrap();
        let cfg = args.sim_config().unwrap();
        assert_eq!(cfg.agents, 200);
        assert_eq!(cfg.duration, Duration::from_secs(15));
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(30));

        let remote = Args::try_parse_from([
            "phoenix-load",
            "--enroll-token",
            "0123456789abcdef",
            "--api",
            "http://10.1.2.3:8080",
        ])
        .unwrap();
        assert!(remote.sim_config().is_err());
    }
}
