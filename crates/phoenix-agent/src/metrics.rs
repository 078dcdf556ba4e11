//! The agent's `/metrics`: the live pipeline output and the engine's counters (as in
//! standalone mode), followed by the agent's own: control-plane calls, tasks, KPI
//! reporting, the disk buffers (pending, dropped past their bound, corrupt parts skipped)
//! and log shipping.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;

use phoenix_pipeline::exporter::ExpositionExporter;
use phoenix_pipeline::telemetry::Telemetry;

use crate::client::ApiClient;
use crate::diskqueue::QueueStats;
use crate::kpi::KpiStats;
use crate::logship::LogQueue;
use crate::rwbuffer::RemoteWriteBufferStats;

/// Counters of task handling.
#[derive(Debug, Default)]
pub struct TaskStats {
    /// Tasks executed (first delivery).
    pub executed_total: AtomicU64,
    /// Tasks that ended `failed`.
    pub failed_total: AtomicU64,
    /// Deliveries of a task id already seen (not executed again).
    pub redelivered_total: AtomicU64,
}

/// Everything the agent counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// Task handling.
    pub tasks: TaskStats,
    kpi: Mutex<Option<(Arc<QueueStats>, Arc<KpiStats>)>>,
    remote_write: Mutex<Option<(Arc<QueueStats>, Arc<RemoteWriteBufferStats>)>>,
    client: Mutex<Option<Arc<ApiClient>>>,
    logs: Mutex<Option<Arc<LogQueue>>>,
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

impl AgentMetrics {
    /// Registers the KPI buffer.
    pub fn set_kpi(&self, queue: Arc<QueueStats>, stats: Arc<KpiStats>) {
        *self.kpi.lock() = Some((queue, stats));
    }

    /// Registers the remote-write buffer.
    pub fn set_remote_write(&self, queue: Arc<QueueStats>, stats: Arc<RemoteWriteBufferStats>) {
        *self.remote_write.lock() = Some((queue, stats));
    }

    /// Registers the API client.
    pub fn set_client(&self, client: Arc<ApiClient>) {
        *self.client.lock() = Some(client);
    }

    /// Registers the log queue.
    pub fn set_logs(&self, logs: Arc<LogQueue>) {
        *self.logs.lock() = Some(logs);
    }

    /// Renders every counter in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            out,
            "phoenix_agent_tasks_executed_total",
            "Tasks executed.",
            get(&self.tasks.executed_total),
        );
        counter(
            out,
            "phoenix_agent_tasks_failed_total",
            "Tasks that ended failed.",
            get(&self.tasks.failed_total),
        );
        counter(
            out,
            "phoenix_agent_tasks_redelivered_total",
            "Deliveries of an already seen task id (not executed again).",
            get(&self.tasks.redelivered_total),
        );
        if let Some(client) = self.client.lock().as_ref() {
            counter(
                out,
                "phoenix_agent_api_failures_total",
                "Control-plane calls failed for an outage.",
                get(&client.failures_total),
            );
            counter(
                out,
                "phoenix_agent_api_breaker_opened_total",
                "Times the circuit breaker opened.",
                get(&client.breaker.opened_total),
            );
            gauge(
                out,
                "phoenix_agent_api_breaker_open",
                "1 while the circuit breaker refuses calls.",
                u64::from(client.breaker.is_open()),
            );
        }
        for (prefix, queue) in [
            ("kpi", self.kpi.lock().as_ref().map(|(q, _)| q.clone())),
            (
                "remote_write",
                self.remote_write.lock().as_ref().map(|(q, _)| q.clone()),
            ),
        ] {
            let Some(q) = queue else { continue };
            gauge(
                out,
                &format!("phoenix_agent_{prefix}_buffer_pending_bytes"),
                "Bytes waiting in the disk buffer.",
                get(&q.pending_bytes),
            );
            gauge(
                out,
                &format!("phoenix_agent_{prefix}_buffer_pending_records"),
                "Records waiting in the disk buffer.",
                get(&q.pending_records),
            );
            counter(
                out,
                &format!("phoenix_agent_{prefix}_buffer_dropped_records_total"),
                "Records dropped because the disk buffer was full.",
                get(&q.dropped_records),
            );
            counter(
                out,
                &format!("phoenix_agent_{prefix}_buffer_corrupt_regions_total"),
                "Corrupt parts of the disk buffer skipped.",
                get(&q.corrupt_regions),
            );
            counter(
                out,
                &format!("phoenix_agent_{prefix}_buffer_torn_tail_bytes_total"),
                "Bytes of torn records dropped after a crash.",
                get(&q.torn_tail_bytes),
            );
        }
        if let Some((_, k)) = self.kpi.lock().as_ref() {
            counter(
                out,
                "phoenix_agent_kpi_batches_produced_total",
                "KPI batches produced.",
                get(&k.produced_total),
            );
            counter(
                out,
                "phoenix_agent_kpi_batches_delivered_total",
                "KPI batches the API stored.",
                get(&k.delivered_total),
            );
            counter(
                out,
                "phoenix_agent_kpi_batches_duplicate_total",
                "KPI batches the API already had (replays).",
                get(&k.duplicates_total),
            );
        }
        if let Some((_, rw)) = self.remote_write.lock().as_ref() {
            counter(
                out,
                "phoenix_agent_remote_write_queued_samples_total",
                "Samples of the live output accepted into the remote-write buffer.",
                get(&rw.queued_samples_total),
            );
            counter(
                out,
                "phoenix_agent_remote_write_buffer_dropped_samples_total",
                "Samples dropped because the remote-write buffer was full.",
                get(&rw.dropped_samples_total),
            );
            counter(
                out,
                "phoenix_agent_remote_write_rejected_samples_total",
                "Samples the backend refused with a non-retryable 4xx.",
                get(&rw.rejected_samples_total),
            );
        }
        if let Some(logs) = self.logs.lock().as_ref() {
            counter(
                out,
                "phoenix_agent_logs_shipped_total",
                "Log entries sent to the API.",
                get(&logs.shipped_total),
            );
            counter(
                out,
                "phoenix_agent_logs_dropped_total",
                "Log entries dropped (queue full or refused).",
                get(&logs.dropped_total),
            );
        }
    }
}

#[derive(Debug, Clone)]
struct MetricsState {
    exposition: Arc<ExpositionExporter>,
    telemetry: Arc<Telemetry>,
    agent: Arc<AgentMetrics>,
}

async fn metrics(State(state): State<MetricsState>) -> impl IntoResponse {
    let mut out = String::new();
    state.exposition.render(&mut out);
    state.telemetry.render(&mut out);
    state.agent.render(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// `GET /metrics`.
pub fn router(
    exposition: Arc<ExpositionExporter>,
    telemetry: Arc<Telemetry>,
    agent: Arc<AgentMetrics>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(MetricsState {
            exposition,
            telemetry,
            agent,
        })
}
