//! `/api/v1/api-keys`: keys for automation, used as `Authorization: Bearer <key>`. Shown once
//! at creation, stored hashed, scoped to a role no higher than their user's, revocable.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use phoenix_store::ApiKeyRecord;

use crate::app::AppState;
use crate::auth::{Principal, Role};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{parse_path_id, ApiJson, ApiPath, ApiQuery};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKeyRequest {
    /// What the key is for, e.g. `ci-deploy`.
    pub name: String,
    /// At most the caller's role; the caller's role when absent.
    #[schema(value_type = Option<String>)]
    pub role: Option<Role>,
    /// Days until the key expires (1–3650); never when absent.
    pub expires_in_days: Option<u32>,
}

/// A key as listed (never the key itself).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub role: String,
    /// The key's first characters.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRecord> for ApiKeyView {
    fn from(k: ApiKeyRecord) -> Self {
        Self {
            id: k.id,
            user_id: k.user_id,
            name: k.name,
            role: k.role.to_string(),
            prefix: k.prefix,
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A new key: `key` is shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub key: String,
    #[serde(flatten)]
    pub info: ApiKeyView,
}

#[utoipa::path(post, path = "/api/v1/api-keys", tag = "auth",
    request_body = NewApiKeyRequest,
    responses(
        (status = 201, body = CreatedApiKey),
        (status = 400, body = ErrorBody),
        (status = 403, description = "a role above the caller's", body = ErrorBody),
    ))]
pub async fn create(
    State(s): State<AppState>,
    who: Principal,
    ApiJson(req): ApiJson<NewApiKeyRequest>,
) -> ApiResult<impl IntoResponse> {
    let created = s
        .auth
        .create_api_key(&who, &req.name, req.role, req.expires_in_days)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key: created.key,
            info: created.record.into(),
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Every user's keys (admins only).
    pub all: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/api-keys", tag = "auth", params(ListParams),
    responses((status = 200, body = Vec<ApiKeyView>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    who: Principal,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<Vec<ApiKeyView>>> {
    let keys = s.auth.list_api_keys(&who, p.all.unwrap_or(false)).await?;
    Ok(Json(keys.into_iter().map(ApiKeyView::from).collect()))
}

#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "auth",
    params(("id" = String, Path, description = "API key id (UUID)")),
    responses(
        (status = 204, description = "revoked"),
        (status = 400, body = ErrorBody),
        (status = 404, description = "no such key of the caller's (admins: of anyone's)", body = ErrorBody),
    ))]
pub async fn revoke(
    State(s): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: Uuid = parse_path_id("id", &id)?;
    s.auth.revoke_api_key(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
