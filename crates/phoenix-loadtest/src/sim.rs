//! The simulation: enroll the fleet, keep one long-poll open per agent, run the fleet-wide
//! heartbeat schedule and the open-loop enqueue schedule, and count what happened. Only what
//! was scheduled inside the measurement window is recorded; warmup and drain are not.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use parking_lot::Mutex;
use rand::Rng;
use reqwest::{Client, RequestBuilder, StatusCode, Url};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::procfs;
use crate::report::{self, Report};
use crate::schedule::{heartbeat_agent, heartbeat_rate_per_second, nth_offset};
use crate::stats::LatencyRecorder;

const HOST_HEADER: &str = "x-agent-host-id";
/// Longest error text kept as a sample for each kind of error.
const ERROR_SAMPLE_MAX_CHARS: usize = 400;
/// Attempts at enrolling one agent before giving up on it.
const ENROLL_ATTEMPTS: u32 = 3;
/// Pause after a failed long-poll, so a broken server is not hammered in a tight loop.
const POLL_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Timeout of every request but the long-poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to the long-poll's wait for its timeout.
const POLL_TIMEOUT_MARGIN: Duration = Duration::from_secs(15);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What to simulate, validated by the command line.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub api: Url,
    pub agents: usize,
    pub enroll_token: String,
    /// Sent as `Authorization: Bearer` with task enqueues.
    pub api_token: Option<String>,
    pub heartbeat_interval: Duration,
    pub enqueue_rate_per_second: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub warmup_timeout: Duration,
    pub drain: Duration,
    pub poll_wait: Duration,
    pub api_pid: Option<u32>,
    pub host_prefix: String,
    pub max_in_flight: usize,
    pub enroll_concurrency: usize,
}

#[derive(Debug)]
struct Urls {
    enroll: Url,
    poll: Url,
    heartbeat: Url,
    tasks: Url,
    metrics: Url,
    ready: Url,
    base: String,
}

impl Urls {
    fn new(api: &Url) -> anyhow::Result<Self> {
        let join = |p: &str| api.join(p);
        Ok(Self {
            enroll: join("/api/v1/agent/enroll")?,
            poll: join("/api/v1/agent/tasks")?,
            heartbeat: join("/api/v1/agent/heartbeat")?,
            tasks: join("/api/v1/tasks")?,
            metrics: join("/metrics")?,
            ready: join("/ready")?,
            base: api.as_str().trim_end_matches('/').to_string(),
        })
    }

    fn task_status(&self, task_id: &str) -> String {
        format!("{}/api/v1/agent/tasks/{task_id}/status", self.base)
    }
}

#[derive(Debug)]
struct Agent {
    host_id: String,
    secret: OnceLock<String>,
}

/// The measurement window, fixed when measuring starts.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// Counters of the measurement window (and a few of the whole run, named so).
#[derive(Debug, Default)]
pub struct Counters {
    pub enrolled: AtomicUsize,
    pub enroll_failed: AtomicUsize,
    pub first_polls_sent: AtomicUsize,
    pub polls_open: AtomicI64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_ok: AtomicU64,
    pub heartbeats_failed: AtomicU64,
    pub enqueues_scheduled: AtomicU64,
    pub enqueues_sent: AtomicU64,
    pub enqueues_ok: AtomicU64,
    pub enqueues_failed: AtomicU64,
    pub enqueues_skipped_unenrolled: AtomicU64,
    pub delivered: AtomicU64,
    pub redelivered: AtomicU64,
    pub foreign_tasks: AtomicU64,
    pub completed_total: AtomicU64,
    pub completed_in_window: AtomicU64,
    pub status_reports_failed: AtomicU64,
    pub polls_answered: AtomicU64,
    pub polls_failed: AtomicU64,
}

/// Latency distributions, all measured on this process's monotonic clock.
#[derive(Debug, Default)]
pub struct Latencies {
    /// Heartbeat: response received − scheduled send time.
    pub heartbeat: LatencyRecorder,
    /// Heartbeat: response received − actual send time (the server's part).
    pub heartbeat_http: LatencyRecorder,
    /// Enqueue→delivery: long-poll answer received − the enqueue's scheduled send time.
    pub delivery: LatencyRecorder,
    /// Enqueue→delivery from the moment the enqueue request actually left.
    pub delivery_from_send: LatencyRecorder,
    /// `POST /api/v1/tasks` response time.
    pub enqueue_http: LatencyRecorder,
    /// `POST /api/v1/agent/tasks/{id}/status` response time.
    pub status_http: LatencyRecorder,
    /// Enrollment response time (warmup, whole run).
    pub enroll_http: LatencyRecorder,
    /// How late this tool sent scheduled requests (waiting for an in-flight slot): if this is
    /// high, the tool or its in-flight cap was the bottleneck, not only the server.
    pub send_lag: LatencyRecorder,
}

#[derive(Debug, Default)]
struct ErrorTally {
    count: u64,
    sample: String,
}

/// Everything the tasks of one run share.
#[derive(Debug)]
pub struct Shared {
    pub cfg: SimConfig,
    urls: Urls,
    /// One long-poll connection per agent: a client whose idle pool holds the whole fleet.
    poll_client: Client,
    /// Heartbeats, status reports and enqueues, capped by `in_flight`.
    shared_client: Client,
    in_flight: Semaphore,
    agents: Vec<Agent>,
    run_id: u64,
    /// The clock origin: unix time is derived from it, so all latencies use one clock.
    origin: Instant,
    origin_unix_ns: u64,
    window: OnceLock<Window>,
    pub counters: Counters,
    pub latencies: Latencies,
    errors: Mutex<BTreeMap<String, ErrorTally>>,
    stop_schedules: CancellationToken,
    stop_all: CancellationToken,
    tracker: TaskTracker,
}

/// Why one request did not succeed.
#[derive(Debug)]
enum CallError {
    Status { status: StatusCode, body: String },
    Transport(reqwest::Error),
}

impl CallError {
    fn kind(&self) -> String {
        match self {
            Self::Status { status, .. } => format!("http {}", status.as_u16()),
            Self::Transport(e) if e.is_timeout() => "timeout".to_string(),
            Self::Transport(e) if e.is_connect() => "connect".to_string(),
            Self::Transport(e) if e.is_decode() => "decode".to_string(),
            Self::Transport(e) if e.is_body() => "body".to_string(),
            Self::Transport(_) => "transport".to_string(),
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Status { body, .. } => body.clone(),
            Self::Transport(e) => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                text
            }
        }
    }
}

/// Send a request and read its whole body; a non-2xx answer is an error carrying the body.
async fn call(req: RequestBuilder) -> Result<(StatusCode, bytes::Bytes), CallError> {
    let resp = req.send().await.map_err(CallError::Transport)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(CallError::Transport)?;
    if !status.is_success() {
        let body = String::from_utf8_lossy(&body)
            .chars()
            .take(ERROR_SAMPLE_MAX_CHARS)
            .collect();
        return Err(CallError::Status { status, body });
    }
    Ok((status, body))
}

#[derive(Debug, Deserialize)]
struct EnrollBody {
    agent_secret: String,
}

#[derive(Debug, Deserialize)]
struct PollBody {
    tasks: Vec<PolledTask>,
}

#[derive(Debug, Deserialize)]
struct PolledTask {
    id: String,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default)]
    attempts: u32,
}

impl Shared {
    pub fn new(cfg: SimConfig) -> anyhow::Result<Arc<Self>> {
        let urls = Urls::new(&cfg.api)?;
        let poll_client = Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(cfg.agents + 64)
            .pool_idle_timeout(None)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let shared_client = Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(cfg.max_in_flight + 16)
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let agents = (0..cfg.agents)
            .map(|i| Agent {
                host_id: format!("{}-{i:05}", cfg.host_prefix),
                secret: OnceLock::new(),
            })
            .collect();
        let origin = Instant::now();
        let origin_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Ok(Arc::new(Self {
            in_flight: Semaphore::new(cfg.max_in_flight),
            cfg,
            urls,
            poll_client,
            shared_client,
            agents,
            run_id: rand::thread_rng().gen(),
            origin,
            origin_unix_ns,
            window: OnceLock::new(),
            counters: Counters::default(),
            latencies: Latencies::default(),
            errors: Mutex::new(BTreeMap::new()),
            stop_schedules: CancellationToken::new(),
            stop_all: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }))
    }

    fn unix_ns(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.origin).as_nanos();
        self.origin_unix_ns
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    fn instant_of_unix_ns(&self, unix_ns: u64) -> Option<Instant> {
        let since = unix_ns.checked_sub(self.origin_unix_ns)?;
        self.origin.checked_add(Duration::from_nanos(since))
    }

    fn in_window(&self, t: Instant) -> bool {
        self.window.get().is_some_and(|w| t >= w.start && t < w.end)
    }

    fn note_error(&self, endpoint: &str, err: &CallError) {
        let key = format!("{endpoint}: {}", err.kind());
        let mut errors = self.errors.lock();
        let tally = errors.entry(key).or_default();
        tally.count += 1;
        if tally.sample.is_empty() {
            tally.sample = err.message().chars().take(ERROR_SAMPLE_MAX_CHARS).collect();
        }
    }

    fn agent_request(&self, req: RequestBuilder, agent: &Agent, secret: &str) -> RequestBuilder {
        req.header(HOST_HEADER, &agent.host_id).bearer_auth(secret)
    }

    // ---- enrollment and the per-agent loop ----

    async fn enroll(self: &Arc<Self>, index: usize) {
        let agent = &self.agents[index];
        let body = json!({ "host_id": agent.host_id, "enrollment_token": self.cfg.enroll_token });
        for attempt in 1..=ENROLL_ATTEMPTS {
            if self.stop_all.is_cancelled() {
                return;
            }
            let started = Instant::now();
            let result = call(
                self.shared_client
                    .post(self.urls.enroll.clone())
                    .json(&body),
            )
            .await;
            let parsed = result.and_then(|(_, bytes)| {
                serde_json::from_slice::<EnrollBody>(&bytes).map_err(|e| CallError::Status {
                    status: StatusCode::OK,
                    body: format!("enroll answer is not {{agent_secret}}: {e}"),
                })
            });
            match parsed {
                Ok(enrolled) => {
                    self.latencies.enroll_http.record(started.elapsed());
                    let _ = agent.secret.set(enrolled.agent_secret);
                    self.counters.enrolled.fetch_add(1, Ordering::Relaxed);
                    let me = self.clone();
                    self.tracker
                        .spawn(async move { me.agent_loop(index).await });
                    return;
                }
                Err(e) => {
                    self.note_error("enroll", &e);
                    let unauthorized = matches!(&e, CallError::Status { status, .. } if *status == StatusCode::UNAUTHORIZED);
                    if unauthorized || attempt == ENROLL_ATTEMPTS {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
            }
        }
        self.counters.enroll_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Long-poll, run what comes back (`running`, then `completed`), poll again.
    async fn agent_loop(self: Arc<Self>, index: usize) {
        let agent = &self.agents[index];
        let Some(secret) = agent.secret.get() else {
            return;
        };
        let wait = format!("{}ms", self.cfg.poll_wait.as_millis());
        let mut first = true;
        loop {
            let req = self
                .agent_request(self.poll_client.get(self.urls.poll.clone()), agent, secret)
                .query(&[("wait", wait.as_str())])
                .timeout(self.cfg.poll_wait + POLL_TIMEOUT_MARGIN);
            if first {
                self.counters
                    .first_polls_sent
                    .fetch_add(1, Ordering::Relaxed);
                first = false;
            }
            self.counters.polls_open.fetch_add(1, Ordering::Relaxed);
            let answer = tokio::select! {
                _ = self.stop_all.cancelled() => None,
                r = call(req) => Some(r),
            };
            self.counters.polls_open.fetch_sub(1, Ordering::Relaxed);
            let Some(answer) = answer else { return };
            let received = Instant::now();
            let parsed = answer.and_then(|(status, bytes)| {
                serde_json::from_slice::<PollBody>(&bytes).map_err(|e| CallError::Status {
                    status,
                    body: format!("long-poll answer is not {{tasks:[...]}}: {e}"),
                })
            });
            match parsed {
                Ok(body) => {
                    self.counters.polls_answered.fetch_add(1, Ordering::Relaxed);
                    for task in body.tasks {
                        self.on_delivered(&task, received);
                        self.run_task(agent, secret, &task.id).await;
                    }
                }
                Err(e) => {
                    self.counters.polls_failed.fetch_add(1, Ordering::Relaxed);
                    self.note_error("long-poll", &e);
                    tokio::select! {
                        _ = self.stop_all.cancelled() => return,
                        _ = tokio::time::sleep(POLL_RETRY_PAUSE) => {}
                    }
                }
            }
        }
    }

    fn on_delivered(&self, task: &PolledTask, received: Instant) {
        let ours = task.payload.get("loadtest_run").and_then(|v| v.as_u64()) == Some(self.run_id);
        if !ours {
            self.counters.foreign_tasks.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if task.attempts > 1 {
            // A lease lapsed and the task came back: its first delivery was already counted.
            self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        let received_ns = self.unix_ns(received);
        let field = |name: &str| task.payload.get(name).and_then(|v| v.as_u64());
        if let Some(scheduled_ns) = field("scheduled_at_unix_ns") {
            let scheduled = self.instant_of_unix_ns(scheduled_ns);
            if scheduled.is_some_and(|t| self.in_window(t)) {
                let latency = Duration::from_nanos(received_ns.saturating_sub(scheduled_ns));
                self.latencies.delivery.record(latency);
                if let Some(sent_ns) = field("sent_at_unix_ns") {
                    let latency = Duration::from_nanos(received_ns.saturating_sub(sent_ns));
                    self.latencies.delivery_from_send.record(latency);
                }
            }
        }
    }

    async fn run_task(&self, agent: &Agent, secret: &str, task_id: &str) {
        let url = self.urls.task_status(task_id);
        for status in ["running", "completed"] {
            let Ok(_permit) = self.in_flight.acquire().await else {
                return;
            };
            let started = Instant::now();
            let req = self
                .shared_client
                .post(&url)
                .json(&json!({ "status": status }));
            match call(self.agent_request(req, agent, secret)).await {
                Ok(_) => {
                    let now = Instant::now();
                    if self.in_window(started) {
                        self.latencies.status_http.record(now - started);
                    }
                    if status == "completed" {
                        self.counters
                            .completed_total
                            .fetch_add(1, Ordering::Relaxed);
                        if self.in_window(now) {
                            self.counters
                                .completed_in_window
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => {
                    self.counters
                        .status_reports_failed
                        .fetch_add(1, Ordering::Relaxed);
                    self.note_error(&format!("status {status}"), &e);
                    return;
                }
            }
        }
    }

    // ---- the schedules ----

    /// Every agent beats once per interval, agent `i` at `i * interval / agents`: one
    /// fleet-wide open-loop schedule from the start of the run (warmup included, unrecorded).
    async fn heartbeat_schedule(self: Arc<Self>) {
        let rate = heartbeat_rate_per_second(self.cfg.agents, self.cfg.heartbeat_interval);
        if rate <= 0.0 {
            return;
        }
        let start = self.origin;
        let mut n: u64 = 0;
        loop {
            let due = start + nth_offset(n, rate);
            tokio::select! {
                _ = self.stop_schedules.cancelled() => return,
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            let now = Instant::now();
            loop {
                let scheduled = start + nth_offset(n, rate);
                if scheduled > now {
                    break;
                }
                let index = heartbeat_agent(n, self.cfg.agents);
                n += 1;
                if self.agents[index].secret.get().is_none() {
                    continue; // not enrolled yet
                }
                let me = self.clone();
                self.tracker
                    .spawn(async move { me.heartbeat(index, scheduled).await });
            }
        }
    }

    async fn heartbeat(self: Arc<Self>, index: usize, scheduled: Instant) {
        let agent = &self.agents[index];
        let Some(secret) = agent.secret.get() else {
            return;
        };
        let Ok(_permit) = self.in_flight.acquire().await else {
            return;
        };
        let recorded = self.in_window(scheduled);
        let sent = Instant::now();
        if recorded {
            self.latencies.send_lag.record(sent - scheduled);
            self.counters
                .heartbeats_sent
                .fetch_add(1, Ordering::Relaxed);
        }
        let body = json!({
            "version": concat!("phoenix-load/", env!("CARGO_PKG_VERSION")),
            "hostname": agent.host_id,
            "capabilities": ["loadtest"],
            "labels": { "loadtest": "true" },
            "resource_usage": { "cpu_percent": 1.5, "memory_bytes": 52_428_800u64 },
            "running_pipelines": [],
        });
        let req = self
            .shared_client
            .post(self.urls.heartbeat.clone())
            .json(&body);
        match call(self.agent_request(req, agent, secret)).await {
            Ok(_) if recorded => {
                self.counters.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                self.latencies.heartbeat.record(now - scheduled);
                self.latencies.heartbeat_http.record(now - sent);
            }
            Ok(_) => {}
            Err(e) => {
                if recorded {
                    self.counters
                        .heartbeats_failed
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.note_error("heartbeat", &e);
            }
        }
    }

    /// `enqueue_rate` tasks a second for random agents, on a fixed schedule across the
    /// measurement window.
    async fn enqueue_schedule(self: Arc<Self>, window: Window) {
        let rate = self.cfg.enqueue_rate_per_second;
        if rate <= 0.0 {
            return;
        }
        let mut n: u64 = 0;
        loop {
            let due = window.start + nth_offset(n, rate);
            if due >= window.end {
                return;
            }
            tokio::select! {
                _ = self.stop_schedules.cancelled() => return,
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            let now = Instant::now();
            loop {
                let scheduled = window.start + nth_offset(n, rate);
                if scheduled > now || scheduled >= window.end {
                    break;
                }
                let index = rand::thread_rng().gen_range(0..self.cfg.agents);
                let seq = n;
                n += 1;
                self.counters
                    .enqueues_scheduled
                    .fetch_add(1, Ordering::Relaxed);
                if self.agents[index].secret.get().is_none() {
                    self.counters
                        .enqueues_skipped_unenrolled
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let me = self.clone();
                self.tracker
                    .spawn(async move { me.enqueue(index, seq, scheduled).await });
            }
        }
    }

    async fn enqueue(self: Arc<Self>, index: usize, seq: u64, scheduled: Instant) {
        let Ok(_permit) = self.in_flight.acquire().await else {
            return;
        };
        let sent = Instant::now();
        self.latencies.send_lag.record(sent - scheduled);
        self.counters.enqueues_sent.fetch_add(1, Ordering::Relaxed);
        let body = json!({
            "type": "health",
            "host_id": self.agents[index].host_id,
            "payload": {
                "loadtest_run": self.run_id,
                "seq": seq,
                "scheduled_at_unix_ns": self.unix_ns(scheduled),
                "sent_at_unix_ns": self.unix_ns(sent),
            },
        });
        let mut request = self.shared_client.post(self.urls.tasks.clone()).json(&body);
        if let Some(token) = &self.cfg.api_token {
            request = request.bearer_auth(token);
        }
        match call(request).await {
            Ok((status, _)) => {
                self.latencies.enqueue_http.record(sent.elapsed());
                if status == StatusCode::CREATED {
                    self.counters.enqueues_ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.counters
                        .enqueues_failed
                        .fetch_add(1, Ordering::Relaxed);
                    let e = CallError::Status {
                        status,
                        body: "expected 201 Created".into(),
                    };
                    self.note_error("enqueue", &e);
                }
            }
            Err(e) => {
                self.counters
                    .enqueues_failed
                    .fetch_add(1, Ordering::Relaxed);
                self.note_error("enqueue", &e);
            }
        }
    }

    // ---- observation ----

    /// The API's own count of parked long-polls, from `/metrics`.
    async fn server_long_polls_waiting(&self) -> Option<u64> {
        let (_, body) = call(self.shared_client.get(self.urls.metrics.clone()))
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find(|l| {
                l.starts_with("phoenix_long_polls_waiting ")
                    || l.starts_with("phoenix_long_polls_waiting{")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match call(self.shared_client.get(self.urls.ready.clone())).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    anyhow::bail!(
                        "{} is not ready after 30 s: {}",
                        self.urls.ready,
                        e.message()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    fn progress(&self, phase: &str) {
        let c = &self.counters;
        let errors: u64 = self.errors.lock().values().map(|t| t.count).sum();
        eprintln!(
            "[{:>6.1}s {phase}] enrolled {}/{} polls open {} | hb ok {} | enqueued {} | delivered {} | completed {} | errors {}",
            self.origin.elapsed().as_secs_f64(),
            c.enrolled.load(Ordering::Relaxed),
            self.cfg.agents,
            c.polls_open.load(Ordering::Relaxed),
            c.heartbeats_ok.load(Ordering::Relaxed),
            c.enqueues_ok.load(Ordering::Relaxed),
            c.delivered.load(Ordering::Relaxed),
            c.completed_total.load(Ordering::Relaxed),
            errors,
        );
    }

    fn error_table(&self) -> BTreeMap<String, report::ErrorEntry> {
        self.errors
            .lock()
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    report::ErrorEntry {
                        count: t.count,
                        sample: t.sample.clone(),
                    },
                )
            })
            .collect()
    }
}

/// Samples taken once a second while measuring.
#[derive(Debug, Default)]
struct Sampled {
    polls_open_min: Option<i64>,
    api_rss_max_kib: u64,
}

/// Run the whole simulation and return its report.
pub async fn run(cfg: SimConfig) -> anyhow::Result<Report> {
    let sh = Shared::new(cfg)?;
    sh.wait_ready().await?;
    let api_pid = sh.cfg.api_pid.map(|p| p.to_string());
    let ticks_per_second = procfs::ticks_per_second();

    // Warmup: enroll (bounded), each agent starts polling as soon as it is enrolled; the
    // heartbeat schedule runs from the start.
    let heartbeats = tokio::spawn(sh.clone().heartbeat_schedule());
    let enroller = {
        let sh = sh.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..sh.cfg.agents)
                .for_each_concurrent(sh.cfg.enroll_concurrency, |i| {
                    let sh = sh.clone();
                    async move { sh.enroll(i).await }
                })
                .await;
        })
    };
    let warmup_min_end = sh.origin + sh.cfg.warmup;
    let warmup_deadline = sh.origin + sh.cfg.warmup.max(sh.cfg.warmup_timeout);
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        let c = &sh.counters;
        let settled = c.enrolled.load(Ordering::Relaxed) + c.enroll_failed.load(Ordering::Relaxed);
        let all_polling = settled >= sh.cfg.agents
            && c.first_polls_sent.load(Ordering::Relaxed) >= c.enrolled.load(Ordering::Relaxed);
        if now >= warmup_min_end && all_polling {
            break;
        }
        if now >= warmup_deadline {
            eprintln!(
                "warning: warmup timeout ({:?}) reached before every agent was enrolled and polling; measuring anyway",
                sh.cfg.warmup_timeout
            );
            break;
        }
        if now.duration_since(last_progress) >= PROGRESS_EVERY {
            sh.progress("warmup");
            last_progress = now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warmup_taken = sh.origin.elapsed();
    // Give the last polls a moment to reach the server before counting them.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Measure.
    let start = Instant::now();
    let window = Window {
        start,
        end: start + sh.cfg.duration,
    };
    let _ = sh.window.set(window);
    let polls_open_at_start = sh.counters.polls_open.load(Ordering::Relaxed);
    let api_at_start = api_pid.as_deref().and_then(procfs::sample_process);
    let me_at_start = procfs::sample_process("self");
    let machine_at_start = procfs::sample_machine();
    let server_waiting_at_start = sh.server_long_polls_waiting().await;
    sh.progress("measure");
    let enqueues = tokio::spawn(sh.clone().enqueue_schedule(window));

    let mut sampled = Sampled::default();
    let mut last_progress = Instant::now();
    while Instant::now() < window.end {
        let open = sh.counters.polls_open.load(Ordering::Relaxed);
        sampled.polls_open_min = Some(sampled.polls_open_min.map_or(open, |m| m.min(open)));
        if let Some(s) = api_pid.as_deref().and_then(procfs::sample_process) {
            sampled.api_rss_max_kib = sampled.api_rss_max_kib.max(s.memory.rss_kib);
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            sh.progress("measure");
            last_progress = Instant::now();
        }
        let next = (Instant::now() + Duration::from_secs(1)).min(window.end);
        tokio::time::sleep_until(next.into()).await;
    }
    let measured = start.elapsed();
    let api_at_end = api_pid.as_deref().and_then(procfs::sample_process);
    let me_at_end = procfs::sample_process("self");
    let machine_at_end = procfs::sample_machine();
    let polls_open_at_end = sh.counters.polls_open.load(Ordering::Relaxed);
    let server_waiting_at_end = sh.server_long_polls_waiting().await;

    // Drain: no new heartbeats or tasks; let queued tasks reach their agents and finish.
    sh.stop_schedules.cancel();
    let _ = enqueues.await;
    let _ = heartbeats.await;
    let drain_deadline = Instant::now() + sh.cfg.drain;
    while Instant::now() < drain_deadline {
        let c = &sh.counters;
        let done = c.completed_total.load(Ordering::Relaxed)
            + c.status_reports_failed.load(Ordering::Relaxed);
        let enqueued = c.enqueues_ok.load(Ordering::Relaxed);
        if c.delivered.load(Ordering::Relaxed) >= enqueued && done >= enqueued {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sh.progress("drained");
    sh.stop_all.cancel();
    enroller.abort();
    sh.tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), sh.tracker.wait())
        .await
        .is_err()
    {
        eprintln!(
            "note: some requests were still in flight 10 s after the end; not waiting for them"
        );
    }

    let api_process = match (&api_pid, api_at_start, api_at_end) {
        (Some(pid), Some(a), Some(b)) => Some(report::ProcessUsage {
            pid: pid.clone(),
            cpu_percent_of_one_core: procfs::cpu_percent_of_one_core(
                b.cpu.total().saturating_sub(a.cpu.total()),
                ticks_per_second,
                measured,
            ),
            rss_mib_at_start: kib_to_mib(a.memory.rss_kib),
            rss_mib_at_end: kib_to_mib(b.memory.rss_kib),
            rss_mib_max_sampled: kib_to_mib(sampled.api_rss_max_kib.max(b.memory.rss_kib)),
            peak_rss_mib: kib_to_mib(b.memory.peak_rss_kib),
        }),
        _ => None,
    };
    let load_tool = match (me_at_start, me_at_end) {
        (Some(a), Some(b)) => Some(report::ProcessUsage {
            pid: std::process::id().to_string(),
            cpu_percent_of_one_core: procfs::cpu_percent_of_one_core(
                b.cpu.total().saturating_sub(a.cpu.total()),
                ticks_per_second,
                measured,
            ),
            rss_mib_at_start: kib_to_mib(a.memory.rss_kib),
            rss_mib_at_end: kib_to_mib(b.memory.rss_kib),
            rss_mib_max_sampled: kib_to_mib(b.memory.rss_kib),
            peak_rss_mib: kib_to_mib(b.memory.peak_rss_kib),
        }),
        _ => None,
    };
    let machine_cpu_busy_percent = match (machine_at_start, machine_at_end) {
        (Some(a), Some(b)) if b.total_ticks > a.total_ticks => Some(
            (b.busy_ticks.saturating_sub(a.busy_ticks)) as f64
                / (b.total_ticks - a.total_ticks) as f64
                * 100.0,
        ),
        _ => None,
    };

    let c = &sh.counters;
    let l = &sh.latencies;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let measured_s = measured.as_secs_f64();
    Ok(Report {
        api: sh.cfg.api.to_string(),
        agents: sh.cfg.agents,
        enrolled: c.enrolled.load(Ordering::Relaxed),
        enroll_failed: c.enroll_failed.load(Ordering::Relaxed),
        enroll_latency: l.enroll_http.summary(),
        warmup_s: warmup_taken.as_secs_f64(),
        measured_s,
        long_polls: report::LongPolls {
            open_at_start: polls_open_at_start,
            open_min_during: sampled.polls_open_min.unwrap_or(0),
            open_at_end: polls_open_at_end,
            server_waiting_at_start,
            server_waiting_at_end,
            answered: load(&c.polls_answered),
            failed: load(&c.polls_failed),
        },
        heartbeats: report::Heartbeats {
            target_per_second: heartbeat_rate_per_second(sh.cfg.agents, sh.cfg.heartbeat_interval),
            sent: load(&c.heartbeats_sent),
            ok: load(&c.heartbeats_ok),
            failed: load(&c.heartbeats_failed),
            achieved_per_second: load(&c.heartbeats_ok) as f64 / measured_s,
            latency: l.heartbeat.summary(),
            http_latency: l.heartbeat_http.summary(),
        },
        tasks: report::Tasks {
            target_enqueue_per_second: sh.cfg.enqueue_rate_per_second,
            scheduled: load(&c.enqueues_scheduled),
            enqueued: load(&c.enqueues_ok),
            enqueue_failed: load(&c.enqueues_failed),
            enqueue_skipped_unenrolled: load(&c.enqueues_skipped_unenrolled),
            enqueued_per_second: load(&c.enqueues_ok) as f64 / measured_s,
            delivered: load(&c.delivered),
            redelivered: load(&c.redelivered),
            foreign: load(&c.foreign_tasks),
            completed: load(&c.completed_total),
            completed_in_window: load(&c.completed_in_window),
            completed_per_second: load(&c.completed_in_window) as f64 / measured_s,
            status_reports_failed: load(&c.status_reports_failed),
            delivery_latency: l.delivery.summary(),
            delivery_latency_from_send: l.delivery_from_send.summary(),
            enqueue_http_latency: l.enqueue_http.summary(),
            status_http_latency: l.status_http.summary(),
        },
        send_lag: l.send_lag.summary(),
        errors: sh.error_table(),
        api_process,
        load_tool,
        machine_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        machine_cpu_busy_percent,
        max_in_flight: sh.cfg.max_in_flight,
    })
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
