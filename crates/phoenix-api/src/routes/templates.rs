//! `/api/v1/pipelines/...`: templates (built-in and user, versioned), rendering as Phoenix
//! or OpenTelemetry Collector YAML, validation.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::app::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::templates::{
    RenderRequest, RenderResponse, TemplateEdit, TemplateSummary, TemplateView, ValidateRequest,
    ValidateResponse,
};

#[utoipa::path(get, path = "/api/v1/pipelines/templates", tag = "pipelines",
    responses((status = 200, description = "built-ins, then user templates (latest version)", body = Vec<TemplateSummary>)))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<TemplateSummary>>> {
    Ok(Json(s.service.list_templates().await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VersionParams {
    /// A version (default: the latest).
    pub version: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/pipelines/templates/{name}", tag = "pipelines",
    params(("name" = String, Path, description = "template name"), VersionParams),
    responses(
        (status = 200, description = "the template: parameter schema, source, versions", body = TemplateView),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(p): ApiQuery<VersionParams>,
) -> ApiResult<Json<TemplateView>> {
    Ok(Json(s.service.get_template(&name, p.version).await?))
}

#[utoipa::path(put, path = "/api/v1/pipelines/templates/{name}", tag = "pipelines",
    params(("name" = String, Path, description = "template name: [a-z0-9-], at most 64")),
    request_body = TemplateEdit,
    responses(
        (status = 200, description = "stored as a new version; earlier versions stay readable", body = TemplateView),
        (status = 400, description = "a schema or source that does not render into a valid pipeline, named by path", body = ErrorBody),
        (status = 409, description = "a built-in name", body = ErrorBody),
        (status = 415, body = ErrorBody),
    ))]
pub async fn put(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(edit): ApiJson<TemplateEdit>,
) -> ApiResult<Json<TemplateView>> {
    Ok(Json(s.service.put_template(&name, edit).await?))
}

#[utoipa::path(post, path = "/api/v1/pipelines/render", tag = "pipelines",
    request_body = RenderRequest,
    responses(
        (status = 200, description = "the rendered YAML; `format: otelcol` gives the OpenTelemetry Collector equivalent with notes on what has no exact equivalent", body = RenderResponse),
        (status = 400, description = "unknown template, unknown or out-of-range parameter, each named", body = ErrorBody),
    ))]
pub async fn render(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<RenderRequest>,
) -> ApiResult<Json<RenderResponse>> {
    Ok(Json(s.service.render_template(req).await?))
}

#[utoipa::path(post, path = "/api/v1/pipelines/validate", tag = "pipelines",
    request_body = ValidateRequest,
    responses(
        (status = 200, body = ValidateResponse),
        (status = 400, description = "every problem, with its path", body = ErrorBody),
    ))]
pub async fn validate(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<ValidateRequest>,
) -> ApiResult<Json<ValidateResponse>> {
    Ok(Json(s.service.validate_pipeline(req).await?))
}
