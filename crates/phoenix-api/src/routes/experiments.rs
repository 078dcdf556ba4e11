//! `/api/v1/experiments`: create, list, read, edit, delete, start, stop, roll back, history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use phoenix_core::{
    Experiment, ExperimentEvent, ExperimentId, ExperimentPatch, ExperimentPhase, NewExperiment,
    TaskId,
};
use phoenix_store::{ExperimentQuery, TransitionOutcome};

use crate::app::AppState;
use crate::auth::{require_owner, Principal};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{parse_path_id, ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::routes::{page_limit, ListResponse};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only experiments in this phase.
    pub phase: Option<ExperimentPhase>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[utoipa::path(post, path = "/api/v1/experiments", tag = "experiments",
    request_body = NewExperiment,
    responses(
        (status = 201, description = "created, pending; the caller is its owner", body = Experiment),
        (status = 400, description = "invalid field", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
    ))]
pub async fn create(
    State(s): State<AppState>,
    who: Principal,
    ApiJson(mut new): ApiJson<NewExperiment>,
) -> ApiResult<impl IntoResponse> {
    // The creator owns it; only an admin may name another owner.
    if !(who.is_admin() && new.owner.is_some()) {
        new.owner = Some(who.username.clone());
    }
    let exp = s.service.create_experiment(new).await?;
    Ok((StatusCode::CREATED, Json(exp)))
}

#[utoipa::path(get, path = "/api/v1/experiments", tag = "experiments", params(ListParams),
    responses(
        (status = 200, body = ListResponse<Experiment>),
        (status = 400, description = "bad query parameter", body = ErrorBody),
    ))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<ListResponse<Experiment>>> {
    let q = ExperimentQuery {
        phase: p.phase,
        limit: page_limit(p.limit)?,
        offset: p.offset.unwrap_or(0),
    };
    Ok(Json(s.service.list_experiments(&q).await?.into()))
}

#[utoipa::path(get, path = "/api/v1/experiments/{id}", tag = "experiments",
    params(("id" = String, Path, description = "experiment id (UUID)")),
    responses(
        (status = 200, body = Experiment),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Experiment>> {
    let id: ExperimentId = parse_path_id("id", &id)?;
    Ok(Json(s.service.get_experiment(id).await?))
}

#[utoipa::path(patch, path = "/api/v1/experiments/{id}", tag = "experiments",
    params(("id" = String, Path, description = "experiment id (UUID)")),
    request_body = ExperimentPatch,
    responses(
        (status = 200, body = Experiment),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "only name and description change after start", body = ErrorBody),
    ))]
pub async fn update(
    State(s): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<ExperimentPatch>,
) -> ApiResult<Json<Experiment>> {
    let id: ExperimentId = parse_path_id("id", &id)?;
    require_owner(&s, &who, id).await?;
    Ok(Json(s.service.update_experiment(id, patch).await?))
}

#[utoipa::path(delete, path = "/api/v1/experiments/{id}", tag = "experiments",
    params(("id" = String, Path, description = "experiment id (UUID)")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "still active: stop it first", body = ErrorBody),
    ))]
pub async fn delete(
    State(s): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: ExperimentId = parse_path_id("id", &id)?;
    require_owner(&s, &who, id).await?;
    s.service.delete_experiment(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Optional body of stop and rollback.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why; recorded in the event.
    pub reason: Option<String>,
}

/// The experiment after an action, the event it emitted, and the tasks it queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionResponse {
    pub experiment: Experiment,
    pub event: ExperimentEvent,
    pub task_ids: Vec<TaskId>,
}

impl From<TransitionOutcome> for TransitionResponse {
    fn from(o: TransitionOutcome) -> Self {
        Self {
            experiment: o.experiment,
            event: o.event,
            task_ids: o.tasks.into_iter().map(|t| t.id).collect(),
        }
    }
}

fn reason(body: Option<ActionRequest>) -> ApiResult<Option<String>> {
    let r = body.and_then(|b| b.reason);
    if r.as_ref().is_some_and(|r| r.chars().count() > 1000) {
        return Err(crate::error::ApiError::invalid_field(
            "reason",
            "must be at most 1000 characters",
        ));
    }
    Ok(r)
}

#[utoipa::path(post, path = "/api/v1/experiments/{id}/start", tag = "experiments",
    params(("id" = String, Path, description = "experiment id (UUID)")),
    responses(
        (status = 200, description = "initializing; tasks queued for every target", body = TransitionResponse),
        (status = 400, description = "no target hosts", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "not pending; details.current_phase says where it is", body = ErrorBody),
    ))]
pub async fn start(
    State(s): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TransitionResponse>> {
    let id: ExperimentId = parse_path_id("id", &id)?;
    require_owner(&s, &who, id).await?;
    Ok(Json(s.service.start_experiment(id).await?.into()))
}

#[utoipa::path(post, path = "/api/v1/experiments/{id}/stop", tag = "experiments",
    params(("id" = String, Path, description = "experiment id (UUID)")),
    request_body(content = Option<ActionRequest>, description = "optional"),
    responses(
        (status = 200, body = TransitionResponse),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn stop(
    State(s): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<ActionRequest>,
) -> ApiResult<Json<TransitionResponse>> {
    let id: ExperimentId = parse_path_id("id", &id)?;
    require_owner(&s, &who, id).await?;
    Ok(Json(
        s.service.stop_experiment(id, reason(body)?).await?.into(),
    ))
}

#[utoipa::path(post, path = "/api/v1/experiments/{id}/rollback", tag = "experiments",
    params(("id" = String, Path, description = "experiment id (UUID)")),
    request_body(content = Option<ActionRequest>, description = "optional"),
    responses(
        (status = 200, body = TransitionResponse),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    ))]
pub async fn rollback(
    State(s): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<ActionRequest>,
) -> ApiResult<Json<TransitionResponse>> {
    let id: ExperimentId = parse_path_id("id", &id)?;
    require_owner(&s, &who, id).await?;
    Ok(Json(
        s.service
            .rollback_experiment(id, reason(body)?)
            .await?
            .into(),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Only events after this sequence number (resume from the last one seen).
    pub after_seq: Option<i64>,
    /// 1–500 (default 50).
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/experiments/{id}/events", tag = "experiments",
    params(("id" = String, Path, description = "experiment id (UUID)"), EventParams),
    responses(
        (status = 200, description = "oldest first", body = Vec<ExperimentEvent>),
        (status = 404, body = ErrorBody),
    ))]
pub async fn events(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<EventParams>,
) -> ApiResult<Json<Vec<ExperimentEvent>>> {
    let id: ExperimentId = parse_path_id("id", &id)?;
    let limit = page_limit(p.limit)?;
    Ok(Json(
        s.service
            .experiment_events(id, p.after_seq.unwrap_or(0), limit)
            .await?,
    ))
}
