//! The control-plane client: enrollment (the secret kept in the data directory, mode 0600),
//! then authenticated calls carrying `X-Agent-Host-ID` and `Authorization: Bearer`.
//!
//! Every call goes through one circuit breaker: after `breaker_failures` consecutive
//! failures (transport errors, 5xx, 429) calls fail fast for `breaker_cooldown`, then one
//! probe is let through. Callers retry with [`Backoff`] (exponential, with jitter).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use phoenix_core::{Heartbeat, HostId, KpiBatch, TaskId, TaskStatus};

/// Why a call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// No answer (connection refused, timeout, reset).
    #[error("api unreachable: {0}")]
    Transport(String),
    /// The breaker is open: the call was not attempted.
    #[error("api circuit breaker open, retry in {0:?}")]
    CircuitOpen(Duration),
    /// The API answered with an error status.
    #[error("api answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The error message from the body.
        message: String,
    },
    /// The answer could not be decoded.
    #[error("api answer could not be decoded: {0}")]
    Decode(String),
    /// Not enrolled, and no enrollment token to do so.
    #[error("not enrolled and no enrollment_token configured")]
    NoToken,
    /// The credentials file could not be read or written.
    #[error("credentials file {path}: {message}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl ApiError {
    /// Whether the API (or the network to it) is failing, as opposed to refusing the call.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Transport(_) | Self::CircuitOpen(_) => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The HTTP status, when the API answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Exponential backoff with jitter: attempt `n` waits a random time in
/// `[d/2, d]` where `d = min(max, min × 2ⁿ)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            failures: 0,
        }
    }

    /// The ceiling of the next delay (no jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// Records a failure and returns how long to wait.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let jitter_ns = rand::thread_rng().gen_range(0..=half.as_nanos().max(1) as u64);
        half + Duration::from_nanos(jitter_ns)
    }

    /// Records a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Fails calls fast while the API is down.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
    /// Times the breaker opened.
    pub opened_total: AtomicU64,
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(BreakerState::default()),
            opened_total: AtomicU64::new(0),
        }
    }

    /// `Ok` when a call may go out. Once the cooldown is over calls go out again (half
    /// open): the first outage reopens the breaker, the first success closes it.
    pub fn check(&self, now: Instant) -> Result<(), ApiError> {
        let s = self.state.lock();
        match s.open_until {
            Some(until) if now < until => Err(ApiError::CircuitOpen(until - now)),
            _ => Ok(()),
        }
    }

    /// Records the outcome of a call.
    pub fn record(&self, outage: bool, now: Instant) {
        let mut s = self.state.lock();
        if outage {
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            if s.consecutive_failures >= self.threshold {
                if s.open_until.is_none_or(|u| u <= now) {
                    self.opened_total.fetch_add(1, Ordering::Relaxed);
                }
                s.open_until = Some(now + self.cooldown);
            }
        } else {
            s.consecutive_failures = 0;
            s.open_until = None;
        }
    }

    /// Whether calls are being refused now.
    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .open_until
            .is_some_and(|u| Instant::now() < u)
    }
}

/// What the heartbeat answers.
#[derive(Debug, Clone, Deserialize)]
pub struct HeartbeatAnswer {
    /// Leases renewed on the tasks this agent holds.
    pub leases_renewed: u64,
    /// When the server expects the next heartbeat.
    pub heartbeat_interval_seconds: f64,
}

/// What `POST /metrics` answers.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct MetricsAnswer {
    /// Stored now.
    pub accepted: u64,
    /// Already stored (replays).
    pub duplicates: u64,
}

/// One log entry for `POST /api/v1/agent/logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When it was logged.
    pub at: chrono::DateTime<chrono::Utc>,
    /// `warn` or `error`.
    pub level: String,
    /// The message.
    pub message: String,
    /// Structured fields.
    pub fields: Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct Credentials {
    host_id: String,
    api_url: String,
    agent_secret: String,
}

/// An error with its causes: reqwest's own message ("error sending request for url") hides
/// the one that matters (connection refused, an untrusted certificate, a pin mismatch).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The client. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    host: HostId,
    token: Option<String>,
    credentials_path: PathBuf,
    secret: Mutex<Option<String>>,
    /// One enrollment at a time (the loops start together).
    enrolling: tokio::sync::Mutex<()>,
    request_timeout: Duration,
    /// The shared breaker.
    pub breaker: Breaker,
    /// Calls that failed for an outage.
    pub failures_total: AtomicU64,
}

/// Where the secret lives.
pub fn credentials_path(data_dir: &Path) -> PathBuf {
    data_dir.join("credentials.json")
}

impl ApiClient {
    /// A client for `base` (e.g. `http://api:8080`).
    pub fn new(
        base: &str,
        host: HostId,
        token: Option<String>,
        data_dir: &Path,
        request_timeout: Duration,
        breaker: Breaker,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, ApiError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(request_timeout)
            .pool_idle_timeout(Duration::from_secs(50));
        if let Some(config) = tls {
            // The CA / pin of `crate::tls`; without it, reqwest's web roots.
            builder = builder.use_preconfigured_tls(config);
        }
        let http = builder
            .build()
            .map_err(|e| ApiError::Transport(describe(&e)))?;
        let credentials_path = credentials_path(data_dir);
        let base = base.trim_end_matches('/').to_string();
        let secret = match std::fs::read(&credentials_path) {
            Ok(bytes) => match serde_json::from_slice::<Credentials>(&bytes) {
                Ok(c) if c.host_id == host.as_str() && c.api_url == base => Some(c.agent_secret),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(path = %credentials_path.display(), error = %e, "credentials file unreadable, enrolling again");
                    None
                }
            },
            Err(_) => None,
        };
        Ok(Self {
            http,
            base,
            host,
            token,
            credentials_path,
            secret: Mutex::new(secret),
            enrolling: tokio::sync::Mutex::new(()),
            request_timeout,
            breaker,
            failures_total: AtomicU64::new(0),
        })
    }

    /// This agent's host id.
    pub fn host(&self) -> &HostId {
        &self.host
    }

    /// Whether a secret is held.
    pub fn is_enrolled(&self) -> bool {
        self.secret.lock().is_some()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn decode_error(response: reqwest::Response) -> ApiError {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect());
        ApiError::Status { status, message }
    }

    /// Sends one request through the breaker; `Ok` holds a 2xx response.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        self.breaker.check(Instant::now())?;
        let result = request.send().await;
        let outcome = match result {
            Ok(r) if r.status().is_success() => Ok(r),
            Ok(r) => Err(Self::decode_error(r).await),
            Err(e) => Err(ApiError::Transport(describe(&e))),
        };
        let outage = outcome.as_ref().err().is_some_and(ApiError::is_outage);
        if outage {
            self.failures_total.fetch_add(1, Ordering::Relaxed);
        }
        self.breaker.record(outage, Instant::now());
        outcome
    }

    /// Enrolls with the token and stores the secret (0600), unless a secret is held.
    pub async fn ensure_enrolled(&self) -> Result<(), ApiError> {
        if self.is_enrolled() {
            return Ok(());
        }
        let _one_at_a_time = self.enrolling.lock().await;
        if self.is_enrolled() {
            return Ok(());
        }
        let token = self.token.clone().ok_or(ApiError::NoToken)?;
        let response = self
            .send(
                self.http
                    .post(self.url("/api/v1/agent/enroll"))
                    .timeout(self.request_timeout)
                    .json(&serde_json::json!({
                        "host_id": self.host.as_str(),
                        "enrollment_token": token,
                    })),
            )
            .await?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| ApiError::Decode(e.to_string()))?;
        let secret = body["agent_secret"]
            .as_str()
            .ok_or_else(|| ApiError::Decode("no agent_secret in the enrollment answer".into()))?
            .to_string();
        self.store_secret(&secret)?;
        *self.secret.lock() = Some(secret);
        tracing::info!(host_id = %self.host, "enrolled with the control plane");
        Ok(())
    }

    fn store_secret(&self, secret: &str) -> Result<(), ApiError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let fail = |e: std::io::Error| ApiError::Credentials {
            path: self.credentials_path.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = self.credentials_path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let tmp = self.credentials_path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        let creds = Credentials {
            host_id: self.host.to_string(),
            api_url: self.base.clone(),
            agent_secret: secret.to_string(),
        };
        let bytes = serde_json::to_vec(&creds).map_err(|e| ApiError::Credentials {
            path: self.credentials_path.clone(),
            message: e.to_string(),
        })?;
        file.write_all(&bytes).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &self.credentials_path).map_err(fail)
    }

    /// An authenticated call; a 401 drops the secret and enrolls again once.
    async fn authed(
        &self,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        for attempt in 0..2 {
            self.ensure_enrolled().await?;
            let secret = self.secret.lock().clone().unwrap_or_default();
            let request = make(&self.http)
                .header("x-agent-host-id", self.host.as_str())
                .bearer_auth(secret);
            match self.send(request).await {
                Err(ApiError::Status {
                    status: 401,
                    message,
                }) if attempt == 0 && self.token.is_some() => {
                    tracing::warn!(%message, "agent credentials refused, enrolling again");
                    *self.secret.lock() = None;
                }
                other => return other,
            }
        }
        Err(ApiError::Status {
            status: 401,
            message: "credentials refused after enrolling again".into(),
        })
    }

    /// `POST /api/v1/agent/heartbeat`.
    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<HeartbeatAnswer, ApiError> {
        let timeout = self.request_timeout;
        let response = self
            .authed(|c| {
                c.post(self.url("/api/v1/agent/heartbeat"))
                    .timeout(timeout)
                    .json(heartbeat)
            })
            .await?;
        response
            .json()
            .await
            .map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// `GET /api/v1/agent/tasks?wait=…`: the tasks claimed for this host, each as raw JSON
    /// so one the agent cannot parse does not hide the others.
    pub async fn poll(&self, wait: Duration) -> Result<Vec<Value>, ApiError> {
        let timeout = self.request_timeout + wait;
        let wait_ms = wait.as_millis();
        let response = self
            .authed(|c| {
                c.get(self.url(&format!("/api/v1/agent/tasks?wait={wait_ms}ms")))
                    .timeout(timeout)
            })
            .await?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| ApiError::Decode(e.to_string()))?;
        match body.get("tasks") {
            Some(Value::Array(tasks)) => Ok(tasks.clone()),
            _ => Err(ApiError::Decode(
                "no `tasks` array in the poll answer".into(),
            )),
        }
    }

    /// `POST /api/v1/agent/tasks/{id}/status`.
    pub async fn report(
        &self,
        id: TaskId,
        status: TaskStatus,
        error: Option<&str>,
        result: Option<&Value>,
    ) -> Result<(), ApiError> {
        let timeout = self.request_timeout;
        let body = serde_json::json!({ "status": status, "error": error, "result": result });
        self.authed(|c| {
            c.post(self.url(&format!("/api/v1/agent/tasks/{id}/status")))
                .timeout(timeout)
                .json(&body)
        })
        .await
        .map(|_| ())
    }

    /// `POST /api/v1/agent/metrics`.
    pub async fn send_kpis(&self, batches: &[KpiBatch]) -> Result<MetricsAnswer, ApiError> {
        let timeout = self.request_timeout;
        let body = serde_json::json!({ "batches": batches });
        let response = self
            .authed(|c| {
                c.post(self.url("/api/v1/agent/metrics"))
                    .timeout(timeout)
                    .json(&body)
            })
            .await?;
        response
            .json()
            .await
            .map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// `POST /api/v1/agent/logs`.
    pub async fn send_logs(&self, entries: &[LogEntry]) -> Result<(), ApiError> {
        let timeout = self.request_timeout;
        let body = serde_json::json!({ "entries": entries });
        self.authed(|c| {
            c.post(self.url("/api/v1/agent/logs"))
                .timeout(timeout)
                .json(&body)
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_ceiling_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(1), "{d:?}");
        }
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(500), "{late:?}");
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn breaker_opens_after_consecutive_outages_and_closes_on_success() {
        let breaker = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            breaker.check(t0).unwrap();
            breaker.record(true, t0);
        }
        assert!(matches!(breaker.check(t0), Err(ApiError::CircuitOpen(_))));
        // After the cooldown a probe goes out; its failure reopens at once.
        let later = t0 + Duration::from_secs(11);
        breaker.check(later).unwrap();
        breaker.record(true, later);
        assert!(breaker.check(later).is_err());
        let much_later = later + Duration::from_secs(11);
        breaker.check(much_later).unwrap();
        breaker.record(false, much_later);
        breaker.check(much_later).unwrap();
        assert_eq!(breaker.opened_total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn refusals_are_not_outages() {
        let refused = ApiError::Status {
            status: 409,
            message: "not yours".into(),
        };
        assert!(!refused.is_outage());
        assert!(ApiError::Transport("refused".into()).is_outage());
        assert!(ApiError::Status {
            status: 503,
            message: String::new()
        }
        .is_outage());
    }
}
