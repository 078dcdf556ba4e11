//! `/api/v1/auth`: log in with a username and password, refresh, log out, who am I.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{IssuedTokens, Principal, Via};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::ApiJson;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "an access token (15 min) and a refresh token", body = IssuedTokens),
        (status = 400, body = ErrorBody),
        (status = 401, description = "wrong username or password (one message for both)", body = ErrorBody),
        (status = 429, description = "too many attempts from this address", body = ErrorBody),
    ))]
pub async fn login(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<IssuedTokens>> {
    Ok(Json(s.auth.login(&req.username, &req.password).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "new tokens; the presented refresh token is spent", body = IssuedTokens),
        (status = 400, body = ErrorBody),
        (status = 401, description = "unknown, expired or revoked refresh token; a reused one revokes its session", body = ErrorBody),
    ))]
pub async fn refresh(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<IssuedTokens>> {
    Ok(Json(s.auth.refresh(&req.refresh_token).await?))
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "the session is revoked: its access and refresh tokens stop working"),
        (status = 400, description = "called with an API key", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
pub async fn logout(State(s): State<AppState>, who: Principal) -> ApiResult<StatusCode> {
    s.auth.logout(&who).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub id: Uuid,
    pub username: String,
    /// The effective role (an API key's role, capped by its user's).
    pub role: String,
    /// `session` or `api_key`.
    pub authenticated_by: &'static str,
    pub session_id: Option<Uuid>,
    pub api_key_id: Option<Uuid>,
}

#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(who: Principal) -> Json<Me> {
    let (by, session_id, api_key_id) = match who.via {
        Via::Session(id) => ("session", Some(id), None),
        Via::ApiKey(id) => ("api_key", None, Some(id)),
    };
    Json(Me {
        id: who.user_id,
        username: who.username,
        role: who.role.to_string(),
        authenticated_by: by,
        session_id,
        api_key_id,
    })
}
