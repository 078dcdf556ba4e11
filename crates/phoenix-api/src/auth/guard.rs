//! The middleware every route is wrapped in, with the [`Access`] its route-table entry names:
//! authenticate the bearer (401), take a token from the client's bucket (429 with
//! `Retry-After`), check the role (403). Handlers then read the [`Principal`].

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use uuid::Uuid;

use phoenix_core::ExperimentId;
use phoenix_store::Role;

use super::Access;
use crate::app::AppState;
use crate::error::ApiError;
use crate::routes::agent::HOST_HEADER;

/// How a principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An access token of this session.
    Session(Uuid),
    /// This API key.
    ApiKey(Uuid),
}

/// The user a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub username: String,
    /// The effective role (an API key's role capped by its user's).
    pub role: Role,
    pub via: Via,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// An operator may change only the experiments it owns; an admin any.
    pub fn may_change(&self, owner: Option<&str>) -> bool {
        self.is_admin() || (self.role >= Role::Operator && owner == Some(self.username.as_str()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("this route needs a signed-in user"))
    }
}

fn bearer(req: &Request) -> Result<Option<&str>, ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not valid text"))?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(ApiError::unauthorized(
            "Authorization header must be `Bearer <token>`",
        ));
    };
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "Authorization header must be `Bearer <token>`",
        ));
    }
    Ok(Some(token.trim()))
}

fn client_address(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

fn too_many(retry_after_seconds: u64, who: &str) -> Response {
    let mut res = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from {who}: retry after {retry_after_seconds} s"),
    )
    .with_details(json!({ "retry_after_seconds": retry_after_seconds }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after_seconds.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

/// The per-route middleware (see the module docs).
pub async fn guard(
    State((state, access)): State<(AppState, Access)>,
    mut req: Request,
    next: Next,
) -> Response {
    let limiter = &state.limiter;
    let limits = limiter.limits();
    match access {
        Access::Probe | Access::Enroll => {}
        Access::Public => {
            let ip = client_address(&req);
            if let Err(wait) = limiter.check(&format!("ip:{ip}"), limits.anonymous) {
                return too_many(wait, "this address");
            }
        }
        Access::Agent => {
            // The agent's own extractor authenticates; user tokens carry no host id and
            // are refused there.
            let host = req
                .headers()
                .get(HOST_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string();
            if let Err(wait) = limiter.check(&format!("agent:{host}"), limits.agent) {
                return too_many(wait, "this agent");
            }
        }
        Access::Role(_) | Access::Owner => {
            let token = match bearer(&req) {
                Ok(Some(t)) => t,
                Ok(None) => {
                    return ApiError::unauthorized(
                        "missing `Authorization: Bearer <token>`: log in at POST /api/v1/auth/login or use an API key",
                    )
                    .into_response()
                }
                Err(e) => return e.into_response(),
            };
            if req.headers().contains_key(HOST_HEADER) {
                return ApiError::unauthorized(
                    "agent credentials are not accepted here: this route is for users",
                )
                .into_response();
            }
            let principal = match state.auth.authenticate(token).await {
                Ok(p) => p,
                Err(e) => return ApiError::from(e).into_response(),
            };
            let key = match principal.via {
                Via::ApiKey(id) => format!("key:{id}"),
                Via::Session(_) => format!("user:{}", principal.user_id),
            };
            if let Err(wait) = limiter.check(&key, limits.user) {
                return too_many(wait, "this client");
            }
            let needed = access.min_role().unwrap_or(Role::Admin);
            if principal.role < needed {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "{} is a {}: this route needs {}",
                        principal.username,
                        principal.role,
                        access.describe()
                    ),
                )
                .with_details(json!({ "role": principal.role, "required": needed }))
                .into_response();
            }
            req.extensions_mut().insert(principal);
        }
    }
    next.run(req).await
}

/// Refuse unless `who` may change experiment `id` (its owner, or an admin). An unknown
/// experiment is 404, as the handler would say.
pub async fn require_owner(
    state: &AppState,
    who: &Principal,
    id: ExperimentId,
) -> Result<(), ApiError> {
    if who.is_admin() {
        return Ok(());
    }
    let exp = state.service.get_experiment(id).await?;
    if who.may_change(exp.owner.as_deref()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "experiment {id} belongs to {}: an operator changes only its own experiments",
                exp.owner.as_deref().unwrap_or("nobody")
            ),
        )
        .with_details(json!({ "owner": exp.owner })))
    }
}
