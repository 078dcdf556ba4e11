//! Operations: liveness, readiness, Prometheus metrics, the fleet view, the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::service::{health_name, FleetStatus};
use crate::telemetry::{ExperimentLabel, HealthLabel, HostLabel, StatusLabel};

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: &'static str,
    pub version: &'static str,
}

#[utoipa::path(get, path = "/health", tag = "ops",
    responses((status = 200, description = "the process is up", body = HealthResponse)))]
pub async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyResponse {
    pub status: &'static str,
    pub store: &'static str,
}

#[utoipa::path(get, path = "/ready", tag = "ops",
    responses(
        (status = 200, description = "the store answers", body = ReadyResponse),
        (status = 503, description = "the store does not answer", body = ErrorBody),
    ))]
pub async fn ready(State(s): State<AppState>) -> ApiResult<Json<ReadyResponse>> {
    s.service.store.ping().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    })?;
    let store = match s.service.store.backend() {
        phoenix_store::Backend::Sqlite => "sqlite",
        phoenix_store::Backend::Postgres => "postgres",
    };
    Ok(Json(ReadyResponse {
        status: "ready",
        store,
    }))
}

/// How long a finished experiment keeps its `phoenix_experiment_phase` series after it
/// ended: long enough for alerts and dashboards to see how it ended, without one series per
/// experiment ever run.
const FINISHED_EXPERIMENTS_IN_METRICS_FOR: chrono::Duration = chrono::Duration::hours(24);

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    // One scrape at a time: the store-derived families are cleared and refilled.
    let _guard = s.scrape_lock.lock().await;
    let m = &s.metrics;
    let store = &s.service.store;
    let now = s.service.clock.now();

    let agents = store.list_agents().await?;
    m.agent_last_seen.clear();
    m.agents.clear();
    let hb = chrono::Duration::from_std(s.service.timings.heartbeat_interval)
        .unwrap_or(chrono::Duration::seconds(10));
    let off = chrono::Duration::from_std(s.service.timings.offline_after)
        .unwrap_or(chrono::Duration::seconds(300));
    for a in &agents {
        if let Some(seen) = a.last_seen_at {
            m.agent_last_seen
                .get_or_create(&HostLabel {
                    host_id: a.host_id.to_string(),
                })
                .set(seen.timestamp_millis() as f64 / 1000.0);
        }
        let health = if a.revoked {
            phoenix_core::AgentHealth::Revoked
        } else {
            phoenix_core::AgentHealth::classify(now, a.last_seen_at, hb, off)
        };
        m.agents
            .get_or_create(&HealthLabel {
                health: health_name(health).into(),
            })
            .inc();
    }

    let counts = store.task_counts().await?;
    m.task_queue_depth.clear();
    for status in phoenix_core::TaskStatus::ALL {
        let n = counts.get(&status).copied().unwrap_or(0);
        m.task_queue_depth
            .get_or_create(&StatusLabel {
                status: status.as_str().into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    m.experiment_phase.clear();
    let finished_since = now - FINISHED_EXPERIMENTS_IN_METRICS_FOR;
    for (id, phase) in store.experiment_phases(finished_since).await? {
        m.experiment_phase
            .get_or_create(&ExperimentLabel {
                experiment_id: id.to_string(),
            })
            .set(phase.gauge_value());
    }
    m.reduction_percent.clear();
    for (id, pct) in store.latest_reduction_percent().await? {
        m.reduction_percent
            .get_or_create(&ExperimentLabel {
                experiment_id: id.to_string(),
            })
            .set(pct);
    }

    let body = m
        .encode()
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}

#[utoipa::path(get, path = "/api/v1/fleet/status", tag = "fleet",
    responses((status = 200, body = FleetStatus)))]
pub async fn fleet_status(State(s): State<AppState>) -> ApiResult<Json<FleetStatus>> {
    Ok(Json(s.service.fleet_status().await?))
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "ops",
    responses((status = 200, description = "this document")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::ApiDoc::openapi())
}
