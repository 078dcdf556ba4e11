//! The agent protocol under `/api/v1/agent`: enroll once, then every call carries
//! `X-Agent-Host-ID` and `Authorization: Bearer <secret>`.

use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use phoenix_core::{Heartbeat, HostId, KpiBatch, Task, TaskId};
use phoenix_store::{AgentLogEntry, TaskStatusUpdate};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{parse_path_id, ApiJson, ApiPath, ApiQuery};
use crate::service::Enrollment;

pub const HOST_HEADER: &str = "x-agent-host-id";

/// An authenticated agent.
#[derive(Debug, Clone)]
pub struct AgentAuth {
    pub host: HostId,
}

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        let host = parts
            .headers
            .get(HOST_HEADER)
            .ok_or_else(|| ApiError::unauthorized("missing X-Agent-Host-ID header"))?
            .to_str()
            .map_err(|_| ApiError::unauthorized("X-Agent-Host-ID is not valid text"))?;
        let host = HostId::parse(host)
            .map_err(|e| ApiError::unauthorized(format!("X-Agent-Host-ID: {e}")))?;
        let secret = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("missing `Authorization: Bearer <agent secret>` header")
            })?;
        s.service.authenticate_agent(&host, secret.trim()).await?;
        Ok(AgentAuth { host })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    #[schema(value_type = String)]
    pub host_id: HostId,
    /// The enrollment token configured on the API.
    pub enrollment_token: String,
}

#[utoipa::path(post, path = "/api/v1/agent/enroll", tag = "agent",
    request_body = EnrollRequest,
    responses(
        (status = 200, body = Enrollment),
        (status = 400, body = ErrorBody),
        (status = 401, description = "unknown, expired, used-up or revoked enrollment token, or agent revoked", body = ErrorBody),
    ))]
pub async fn enroll(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<Json<Enrollment>> {
    // The bootstrap token, else one issued at /api/v1/enrollment-tokens (counted).
    if !s.service.bootstrap_token_matches(&req.enrollment_token) {
        s.auth
            .use_enrollment_token(&req.enrollment_token)
            .await
            .map_err(ApiError::unauthorized)?;
    }
    Ok(Json(s.service.enroll_checked(req.host_id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PollParams {
    /// How long to wait for a task: `30s`, `500ms`, or plain seconds. At most the server's
    /// `long_poll_max` (30 s by default); `0` answers at once.
    pub wait: Option<String>,
}

fn parse_wait(raw: Option<&str>, max: Duration) -> ApiResult<Duration> {
    let Some(raw) = raw else { return Ok(max) };
    let d = match raw.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(raw).map_err(|e| {
            ApiError::invalid_field("query.wait", format!("`{raw}` is not a duration: {e}"))
        })?,
    };
    Ok(d.min(max))
}

/// Holds one unit of a gauge for as long as it lives.
struct WaitingGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> WaitingGuard<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Tasks handed to the agent; empty when the wait ended with nothing queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct PollResponse {
    pub tasks: Vec<Task>,
}

#[utoipa::path(get, path = "/api/v1/agent/tasks", tag = "agent", params(PollParams),
    responses(
        (status = 200, description = "claimed tasks (assigned to this host, with a lease)", body = PollResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("agent" = [])))]
pub async fn poll(
    State(s): State<AppState>,
    agent: AgentAuth,
    ApiQuery(p): ApiQuery<PollParams>,
) -> ApiResult<Json<PollResponse>> {
    let wait = parse_wait(p.wait.as_deref(), s.service.timings.long_poll_max)?;
    // Counted while parked, also when the client goes away mid-wait (the future is dropped).
    let waiting = WaitingGuard::new(&s.metrics.long_polls_waiting);
    let result = s.service.poll_tasks(&agent.host, wait).await;
    drop(waiting);
    let tasks = result?;
    s.metrics.tasks_delivered.inc_by(tasks.len() as u64);
    Ok(Json(PollResponse { tasks }))
}

/// What the agent reports about a task it holds.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// `running`, `completed` or `failed`.
    #[schema(value_type = String)]
    pub status: phoenix_core::TaskStatus,
    pub error: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

#[utoipa::path(post, path = "/api/v1/agent/tasks/{id}/status", tag = "agent",
    params(("id" = String, Path, description = "task id (UUID)")),
    request_body = StatusRequest,
    responses(
        (status = 200, body = Task),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the task is not held by this host, or the move is not allowed", body = ErrorBody),
    ),
    security(("agent" = [])))]
pub async fn task_status(
    State(s): State<AppState>,
    agent: AgentAuth,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<StatusRequest>,
) -> ApiResult<Json<Task>> {
    let id: TaskId = parse_path_id("id", &id)?;
    let update = TaskStatusUpdate {
        status: req.status,
        error: req.error,
        result: req.result,
    };
    Ok(Json(
        s.service
            .update_task_status(id, &agent.host, update)
            .await?,
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatResponse {
    /// Leases renewed on the tasks this agent holds.
    pub leases_renewed: u64,
    /// When the server expects the next heartbeat, in seconds.
    pub heartbeat_interval_seconds: f64,
}

#[utoipa::path(post, path = "/api/v1/agent/heartbeat", tag = "agent",
    request_body = Heartbeat,
    responses(
        (status = 200, body = HeartbeatResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("agent" = [])))]
pub async fn heartbeat(
    State(s): State<AppState>,
    agent: AgentAuth,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let renewed = s.service.heartbeat(&agent.host, hb).await?;
    Ok(Json(HeartbeatResponse {
        leases_renewed: renewed,
        heartbeat_interval_seconds: s.service.timings.heartbeat_interval.as_secs_f64(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsRequest {
    pub batches: Vec<KpiBatch>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsResponse {
    /// Batches stored now.
    pub accepted: u64,
    /// Batches whose id was already stored (a replay): accepted, not stored twice.
    pub duplicates: u64,
}

#[utoipa::path(post, path = "/api/v1/agent/metrics", tag = "agent",
    request_body = MetricsRequest,
    responses(
        (status = 200, body = MetricsResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody),
    ),
    security(("agent" = [])))]
pub async fn metrics(
    State(s): State<AppState>,
    agent: AgentAuth,
    ApiJson(req): ApiJson<MetricsRequest>,
) -> ApiResult<Json<MetricsResponse>> {
    let out = s.service.ingest_kpis(&agent.host, req.batches).await?;
    let stored = crate::telemetry::StatusLabel {
        status: "stored".into(),
    };
    let dup = crate::telemetry::StatusLabel {
        status: "duplicate".into(),
    };
    s.metrics
        .kpi_batches
        .get_or_create(&stored)
        .inc_by(out.inserted);
    s.metrics
        .kpi_batches
        .get_or_create(&dup)
        .inc_by(out.duplicates);
    Ok(Json(MetricsResponse {
        accepted: out.inserted,
        duplicates: out.duplicates,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<AgentLogEntry>,
}

#[utoipa::path(post, path = "/api/v1/agent/logs", tag = "agent",
    request_body = LogsRequest,
    responses(
        (status = 202, description = "stored"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody),
    ),
    security(("agent" = [])))]
pub async fn logs(
    State(s): State<AppState>,
    agent: AgentAuth,
    ApiJson(req): ApiJson<LogsRequest>,
) -> ApiResult<impl IntoResponse> {
    let n = s.service.ingest_logs(&agent.host, req.entries).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "stored": n })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_accepts_seconds_and_durations_and_is_capped() {
        let max = Duration::from_secs(30);
        assert_eq!(parse_wait(None, max).unwrap(), max);
        assert_eq!(parse_wait(Some("5"), max).unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_wait(Some("250ms"), max).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_wait(Some("10m"), max).unwrap(), max);
        let err = parse_wait(Some("soon"), max).unwrap_err();
        assert!(err.message.contains("query.wait"), "{}", err.message);
    }
}
