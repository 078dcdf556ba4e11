//! `/api/v1/enrollment-tokens`: admins issue tokens agents enroll with (expiry, maximum
//! uses, use count, revocation), and `/api/v1/agents/{host_id}/revoke` shuts an agent out.
//! The configured (or first-start) bootstrap token keeps working beside them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use phoenix_core::HostId;
use phoenix_store::EnrollmentTokenRecord;

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{parse_path_id, ApiJson, ApiPath};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentTokenRequest {
    /// What the token is for, e.g. `eu-1 rollout`.
    pub name: String,
    /// Seconds until it expires (60 to ten years); never when absent.
    pub expires_in_seconds: Option<u64>,
    /// Agents it may enroll (1–1000000); unlimited when absent.
    pub max_uses: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentTokenView {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub max_uses: Option<u32>,
    pub use_count: u32,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<EnrollmentTokenRecord> for EnrollmentTokenView {
    fn from(t: EnrollmentTokenRecord) -> Self {
        Self {
            id: t.id,
            name: t.name,
            prefix: t.prefix,
            created_by: t.created_by,
            created_at: t.created_at,
            expires_at: t.expires_at,
            max_uses: t.max_uses,
            use_count: t.use_count,
            revoked_at: t.revoked_at,
        }
    }
}

/// A new token: `token` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEnrollmentToken {
    pub token: String,
    #[serde(flatten)]
    pub info: EnrollmentTokenView,
}

#[utoipa::path(post, path = "/api/v1/enrollment-tokens", tag = "agent",
    request_body = NewEnrollmentTokenRequest,
    responses((status = 201, body = CreatedEnrollmentToken), (status = 400, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    who: Principal,
    ApiJson(req): ApiJson<NewEnrollmentTokenRequest>,
) -> ApiResult<impl IntoResponse> {
    let created = s
        .auth
        .create_enrollment_token(&who, &req.name, req.expires_in_seconds, req.max_uses)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEnrollmentToken {
            token: created.token,
            info: created.record.into(),
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/enrollment-tokens", tag = "agent",
    responses((status = 200, body = Vec<EnrollmentTokenView>)))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<EnrollmentTokenView>>> {
    let tokens = s.auth.list_enrollment_tokens().await?;
    Ok(Json(tokens.into_iter().map(Into::into).collect()))
}

#[utoipa::path(get, path = "/api/v1/enrollment-tokens/{id}", tag = "agent",
    params(("id" = String, Path, description = "enrollment token id (UUID)")),
    responses((status = 200, body = EnrollmentTokenView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EnrollmentTokenView>> {
    let id: Uuid = parse_path_id("id", &id)?;
    Ok(Json(s.auth.get_enrollment_token(id).await?.into()))
}

#[utoipa::path(delete, path = "/api/v1/enrollment-tokens/{id}", tag = "agent",
    params(("id" = String, Path, description = "enrollment token id (UUID)")),
    responses((status = 204, description = "revoked: no more enrollments with it"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: Uuid = parse_path_id("id", &id)?;
    s.auth.revoke_enrollment_token(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedAgent {
    #[schema(value_type = String)]
    pub host_id: HostId,
    pub revoked: bool,
    /// Tasks the agent held, now back in the queue (or failed, when out of attempts).
    pub requeued_tasks: u64,
}

#[utoipa::path(post, path = "/api/v1/agents/{host_id}/revoke", tag = "agent",
    params(("host_id" = String, Path, description = "the agent's host id")),
    responses(
        (status = 200, description = "revoked: its next call gets 401, on every replica", body = RevokedAgent),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn revoke_agent(
    State(s): State<AppState>,
    who: Principal,
    ApiPath(host): ApiPath<String>,
) -> ApiResult<Json<RevokedAgent>> {
    let host: HostId = parse_path_id("host_id", &host)?;
    let requeued = s.service.revoke_agent_and_requeue(&host).await?;
    tracing::info!(host_id = %host, by = %who.username, requeued, "agent revoked");
    Ok(Json(RevokedAgent {
        host_id: host,
        revoked: true,
        requeued_tasks: requeued,
    }))
}
