//! The API's own telemetry: Prometheus exposition at `/metrics` (HTTP counters and latency
//! histograms, plus gauges read from the store at scrape time), and JSON logs.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route template (`/api/v1/experiments/{id}`), never the raw path, so ids do not
    /// become series.
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExperimentLabel {
    pub experiment_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabel {
    pub health: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~33 s; long-polls land in the top buckets by design.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 17,
    ))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub agent_last_seen: Family<HostLabel, Gauge<f64, AtomicU64>>,
    pub agents: Family<HealthLabel, Gauge>,
    pub task_queue_depth: Family<StatusLabel, Gauge>,
    pub experiment_phase: Family<ExperimentLabel, Gauge>,
    pub reduction_percent: Family<ExperimentLabel, Gauge<f64, AtomicU64>>,
    pub long_polls_waiting: Gauge,
    pub kpi_batches: Family<StatusLabel, Counter>,
    pub tasks_delivered: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request latency, long-polls included",
            prometheus_client::registry::Unit::Seconds,
            http_duration.clone(),
        );
        let agent_last_seen = Family::<HostLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "phoenix_agent_last_seen_seconds",
            "Unix time of each agent's last heartbeat",
            agent_last_seen.clone(),
        );
        let agents = Family::<HealthLabel, Gauge>::default();
        registry.register(
            "phoenix_agents",
            "Enrolled agents by health",
            agents.clone(),
        );
        let task_queue_depth = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "phoenix_task_queue_depth",
            "Tasks in the queue by status",
            task_queue_depth.clone(),
        );
        let experiment_phase = Family::<ExperimentLabel, Gauge>::default();
        registry.register(
            "phoenix_experiment_phase",
            "Experiment phase: 0 pending, 1 initializing, 2 running, 3 analyzing, 4 completed, 5 failed, 6 stopped, 7 rolled_back",
            experiment_phase.clone(),
        );
        let reduction_percent = Family::<ExperimentLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "phoenix_cardinality_reduction_percent",
            "Candidate active-series reduction over the latest reported interval",
            reduction_percent.clone(),
        );
        let long_polls_waiting = Gauge::default();
        registry.register(
            "phoenix_long_polls_waiting",
            "Agent long-polls parked in this process",
            long_polls_waiting.clone(),
        );
        let kpi_batches = Family::<StatusLabel, Counter>::default();
        registry.register(
            "phoenix_kpi_batches",
            "KPI batches received, by outcome (stored, duplicate)",
            kpi_batches.clone(),
        );
        let tasks_delivered = Counter::default();
        registry.register(
            "phoenix_tasks_delivered",
            "Tasks handed to agents by long-poll answers",
            tasks_delivered.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            agent_last_seen,
            agents,
            task_queue_depth,
            experiment_phase,
            reduction_percent,
            long_polls_waiting,
            kpi_batches,
            tasks_delivered,
        }
    }

    /// The WebSocket hub's series (`phoenix_ws_*`), sharing their values with `stats`.
    pub fn register_hub(&mut self, stats: &crate::ws::hub::HubStats) {
        let r = &mut self.registry;
        r.register(
            "phoenix_ws_connections",
            "Open WebSocket connections to the hub in this process, authenticated or not",
            stats.connections.clone(),
        );
        r.register(
            "phoenix_ws_subscriptions",
            "Hub subscriptions in this process, by topic kind",
            stats.subscriptions.clone(),
        );
        r.register(
            "phoenix_ws_events_published",
            "Topic events this process stored and handed to its hub",
            stats.events_published.clone(),
        );
        r.register(
            "phoenix_ws_events_delivered",
            "Event frames written to WebSocket clients, live or replayed from the store",
            stats.events_delivered.clone(),
        );
        r.register(
            "phoenix_ws_disconnects",
            "WebSocket connections ended, by reason (the close code's meaning)",
            stats.disconnects.clone(),
        );
        r.register(
            "phoenix_ws_resumes",
            "Subscriptions with after_seq: resumes served from the store",
            stats.resumes.clone(),
        );
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Counts and times every request under its route template.
pub async fn track_http(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let res = next.run(req).await;
    let status = res.status().as_u16();
    metrics
        .http_duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status,
        })
        .inc();
    res
}

/// JSON (or human) logs on stderr, filtered by `level` (a `tracing` filter).
pub fn init_logging(format: crate::config::LogFormat, level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(level)
        .map_err(|e| anyhow::anyhow!("configuration key `log_level`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        crate::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        crate::config::LogFormat::Pretty => builder.compact().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))
}
