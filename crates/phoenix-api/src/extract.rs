//! Request extractors whose rejections are [`ApiError`]s: malformed JSON, wrong types, missing
//! fields and unknown enum values all answer 400 naming the field; oversize bodies 413;
//! a wrong content type 415. Nothing a client sends reaches a handler half-parsed.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::ApiError;

/// JSON body extractor. Errors carry the JSON path of the offending field.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

/// Like [`ApiJson`] but an empty body (with or without a content type) is `None`: for actions
/// such as `POST .../stop` whose body is optional.
#[derive(Debug, Clone, Default)]
pub struct OptionalJson<T>(pub Option<T>);

fn check_content_type(req: &Request) -> Result<(), ApiError> {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "missing Content-Type header: expected `application/json`",
        ));
    };
    let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type `{essence}` is not supported: expected `application/json`"),
        ))
    }
}

fn bytes_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body exceeds the size limit for this endpoint",
        )
    } else {
        ApiError::bad_request(
            "invalid_body",
            format!("could not read the request body: {r}"),
        )
    }
}

/// Deserialize JSON, reporting the path of the first problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "request body is empty: expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let syntax = inner.is_syntax() || inner.is_eof();
        let problem = strip_position(&inner.to_string());
        if syntax {
            ApiError::bad_request(
                "invalid_json",
                format!(
                    "malformed JSON at line {} column {}: {problem}",
                    inner.line(),
                    inner.column()
                ),
            )
            .with_details(json!({ "line": inner.line(), "column": inner.column() }))
        } else {
            let field = if path == "." {
                "body".to_string()
            } else {
                path
            };
            ApiError::bad_request("validation_failed", format!("{field}: {problem}"))
                .with_details(json!({ "fields": [{ "field": field, "problem": problem }] }))
        }
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C"; the path already says where.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(&req)?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let has_content_type = req.headers().contains_key(header::CONTENT_TYPE);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !has_content_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "missing Content-Type header: expected `application/json`",
            ));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// Query-string extractor with field-naming errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(query_rejection)
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    let text = r.body_text();
    let problem = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    let field = problem
        .split(':')
        .next()
        .filter(|f| !f.contains(' '))
        .map(str::to_string);
    ApiError::bad_request("invalid_query", format!("query string: {problem}"))
        .with_details(json!({ "field": field, "problem": problem }))
}

/// Path extractor whose rejections use the error body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|r: PathRejection| ApiError::bad_request("invalid_path", r.body_text()))
    }
}

/// Parse an id taken from the path, naming the path parameter when it is malformed.
pub fn parse_path_id<T: std::str::FromStr>(name: &str, raw: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    raw.parse::<T>()
        .map_err(|e| ApiError::invalid_field(format!("path.{name}"), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn wrong_type_names_the_nested_field() {
        let err = parse_json::<Outer>(br#"{"inner":{"count":"x"}}"#).unwrap_err();
        assert_eq!(err.code, "validation_failed");
        assert!(
            err.message.starts_with("inner.count: invalid type"),
            "{}",
            err.message
        );
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse_json::<Outer>(br#"{"inner":{}}"#).unwrap_err();
        assert!(
            err.message.contains("missing field `count`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn malformed_json_says_where() {
        let err = parse_json::<Outer>(br#"{"inner": "#).unwrap_err();
        assert_eq!(err.code, "invalid_json");
        assert!(err.message.contains("line 1"), "{}", err.message);
        let err = parse_json::<Outer>(b"").unwrap_err();
        assert_eq!(err.code, "invalid_json");
    }
}
