//! `/api/v1/users`: admins manage users (create, list, read, change role / password /
//! disabled, delete).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{Principal, Role, UserView};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{parse_path_id, ApiJson, ApiPath};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = String)]
    pub role: Role,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[schema(value_type = Option<String>)]
    pub role: Option<Role>,
    pub password: Option<String>,
    /// A disabled user cannot log in, and its tokens and keys stop working.
    pub disabled: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = Vec<UserView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<UserView>>> {
    let users = s.auth.list_users().await?;
    Ok(Json(users.into_iter().map(UserView::from).collect()))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    request_body = NewUser,
    responses(
        (status = 201, body = UserView),
        (status = 400, body = ErrorBody),
        (status = 409, description = "username taken", body = ErrorBody),
    ))]
pub async fn create(
    State(s): State<AppState>,
    ApiJson(new): ApiJson<NewUser>,
) -> ApiResult<impl IntoResponse> {
    let user = s
        .auth
        .create_user(&new.username, &new.password, new.role)
        .await?;
    Ok((StatusCode::CREATED, Json(UserView::from(user))))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "user id (UUID)")),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<UserView>> {
    let id: Uuid = parse_path_id("id", &id)?;
    Ok(Json(s.auth.get_user(id).await?.into()))
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "user id (UUID)")),
    request_body = UserUpdate,
    responses(
        (status = 200, body = UserView),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "an admin demoting or disabling itself", body = ErrorBody),
    ))]
pub async fn update(
    State(s): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<UserUpdate>,
) -> ApiResult<Json<UserView>> {
    let id: Uuid = parse_path_id("id", &id)?;
    let user = s
        .auth
        .update_user(
            &who,
            id,
            change.role,
            change.password.as_deref(),
            change.disabled,
        )
        .await?;
    Ok(Json(user.into()))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "user id (UUID)")),
    responses(
        (status = 204, description = "deleted, with its sessions and API keys"),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "an admin deleting itself", body = ErrorBody),
    ))]
pub async fn delete(
    State(s): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id: Uuid = parse_path_id("id", &id)?;
    s.auth.delete_user(&who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
