//! The one mapping from failures to HTTP. Every error a client sees has the body
//! `{ "error": { "code", "message", "details" } }`; handlers just use `?`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use phoenix_core::FieldErrors;
use phoenix_store::StoreError;

/// An error on its way to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

/// The error body, as documented in the OpenAPI description.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `validation_failed`, `invalid_json`, `not_found`,
    /// `phase_conflict`, `task_not_held`, `unauthorized`, `payload_too_large`, ...
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Object(Default::default()),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A single bad field, named by its path.
    pub fn invalid_field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        let mut e = FieldErrors::default();
        e.push(field, problem);
        e.into()
    }

    pub fn not_found(entity: &str, id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{entity} {id} not found"),
        )
        .with_details(json!({ "entity": entity, "id": id.to_string() }))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<FieldErrors> for ApiError {
    fn from(e: FieldErrors) -> Self {
        let message = e.to_string();
        Self::bad_request("validation_failed", message).with_details(json!({ "fields": e.0 }))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => ApiError::not_found(entity, id),
            StoreError::Transition(t) => {
                ApiError::new(StatusCode::CONFLICT, "phase_conflict", t.to_string())
                    .with_details(json!({ "current_phase": t.current, "command": t.command }))
            }
            StoreError::Patch(phoenix_core::PatchError::Invalid(fields)) => fields.into(),
            StoreError::Patch(p @ phoenix_core::PatchError::NotPending { current }) => {
                ApiError::new(StatusCode::CONFLICT, "phase_conflict", p.to_string())
                    .with_details(json!({ "current_phase": current }))
            }
            e @ StoreError::ExperimentActive { phase, .. } => {
                ApiError::new(StatusCode::CONFLICT, "phase_conflict", e.to_string())
                    .with_details(json!({ "current_phase": phase }))
            }
            ref e @ StoreError::TaskNotHeld {
                ref holder, status, ..
            } => ApiError::new(StatusCode::CONFLICT, "task_not_held", e.to_string())
                .with_details(json!({ "holder": holder, "status": status })),
            ref e @ StoreError::TaskTransition { from, to, .. } => {
                ApiError::new(StatusCode::CONFLICT, "task_status_conflict", e.to_string())
                    .with_details(json!({ "current_status": from, "requested_status": to }))
            }
            e @ StoreError::AgentRevoked(_) => ApiError::unauthorized(e.to_string()),
            e @ StoreError::Unavailable(_) => {
                tracing::error!(error = %e, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    e.to_string(),
                )
            }
            e => {
                tracing::error!(error = %e, "store failure");
                ApiError::internal("internal error while accessing the store; see server logs")
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "code": self.code, "message": self.message, "details": self.details }
        });
        let mut res = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
