//! `/api/v1/tasks`: queue tasks directly (automation, tests, the load tool) and inspect the
//! queue. Experiments enqueue their own tasks; this is the operator's view.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use phoenix_core::{ExperimentId, HostId, NewTask, Task, TaskId, TaskStatus};
use phoenix_store::TaskQuery;

use crate::app::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{parse_path_id, ApiJson, ApiPath, ApiQuery};
use crate::routes::{page_limit, ListResponse};

#[derive(Debug, Serialize, ToSchema)]
pub struct EnqueueResponse {
    pub task: Task,
    /// False when the idempotency key named a task already queued (answered 200, not 201).
    pub created: bool,
}

#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks",
    request_body = NewTask,
    responses(
        (status = 201, body = EnqueueResponse),
        (status = 200, description = "idempotency key seen before: the existing task", body = EnqueueResponse),
        (status = 400, body = ErrorBody),
    ))]
pub async fn enqueue(
    State(s): State<AppState>,
    ApiJson(task): ApiJson<NewTask>,
) -> ApiResult<impl IntoResponse> {
    let out = s.service.enqueue_task(task).await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(EnqueueResponse {
            task: out.task,
            created: out.created,
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub status: Option<TaskStatus>,
    #[param(value_type = Option<String>)]
    pub host_id: Option<HostId>,
    #[param(value_type = Option<String>)]
    pub experiment_id: Option<ExperimentId>,
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(ListParams),
    responses((status = 200, body = ListResponse<Task>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<ListResponse<Task>>> {
    let q = TaskQuery {
        status: p.status,
        host_id: p.host_id,
        experiment_id: p.experiment_id,
        limit: page_limit(p.limit)?,
        offset: p.offset.unwrap_or(0),
    };
    Ok(Json(s.service.list_tasks(&q).await?.into()))
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "task id (UUID)")),
    responses((status = 200, body = Task), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(State(s): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Task>> {
    let id: TaskId = parse_path_id("id", &id)?;
    Ok(Json(s.service.get_task(id).await?))
}
