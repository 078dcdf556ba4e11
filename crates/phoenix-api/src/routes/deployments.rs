//! `/api/v1/pipeline-deployments`: deploy a template to hosts outside experiments, follow
//! each host, withdraw.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use phoenix_core::{DeploymentId, NewPipelineDeployment, PipelineDeployment};

use crate::app::AppState;
use crate::deployments::DeploymentView;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{parse_path_id, ApiJson, ApiPath, ApiQuery};
use crate::routes::{page_limit, ListResponse};

#[utoipa::path(post, path = "/api/v1/pipeline-deployments", tag = "pipelines",
    request_body = NewPipelineDeployment,
    responses(
        (status = 201, description = "recorded and sent: one deployment task per host", body = DeploymentView),
        (status = 400, description = "invalid field, or a pipeline that does not render or validate", body = ErrorBody),
        (status = 409, description = "no target: the selector matches no agent and no host is listed", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
    ))]
pub async fn create(
    State(s): State<AppState>,
    ApiJson(new): ApiJson<NewPipelineDeployment>,
) -> ApiResult<impl IntoResponse> {
    let d = s.service.create_deployment(new).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1–500 (default 50).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/pipeline-deployments", tag = "pipelines", params(ListParams),
    responses(
        (status = 200, description = "newest first", body = ListResponse<PipelineDeployment>),
        (status = 400, body = ErrorBody),
    ))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<ListResponse<PipelineDeployment>>> {
    let limit = page_limit(p.limit)?;
    Ok(Json(
        s.service
            .list_deployments(limit, p.offset.unwrap_or(0))
            .await?
            .into(),
    ))
}

#[utoipa::path(get, path = "/api/v1/pipeline-deployments/{id}", tag = "pipelines",
    params(("id" = String, Path, description = "deployment id (UUID)")),
    responses(
        (status = 200, description = "the deployment and each host's progress", body = DeploymentView),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeploymentView>> {
    let id: DeploymentId = parse_path_id("id", &id)?;
    Ok(Json(s.service.get_deployment(id).await?))
}

#[utoipa::path(delete, path = "/api/v1/pipeline-deployments/{id}", tag = "pipelines",
    params(("id" = String, Path, description = "deployment id (UUID)")),
    responses(
        (status = 200, description = "withdrawn: every host is sent the baseline pipeline back", body = DeploymentView),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn withdraw(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<DeploymentView>> {
    let id: DeploymentId = parse_path_id("id", &id)?;
    Ok(Json(s.service.withdraw_deployment(id).await?))
}
