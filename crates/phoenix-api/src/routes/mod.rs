//! HTTP handlers: read the request, call the service, map the result. No SQL, no rules.

pub mod agent;
pub mod analysis;
pub mod api_keys;
pub mod auth;
pub mod deployments;
pub mod enrollment_tokens;
pub mod experiments;
pub mod ops;
pub mod recommendations;
pub mod tasks;
pub mod templates;
pub mod users;

use serde::Serialize;
use utoipa::ToSchema;

/// A page of results with the total across pages.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse<T> {
    pub items: Vec<T>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

impl<T> From<phoenix_store::Page<T>> for ListResponse<T> {
    fn from(p: phoenix_store::Page<T>) -> Self {
        Self {
            items: p.items,
            total: p.total,
            limit: p.limit,
            offset: p.offset,
        }
    }
}

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

/// Validate a page size, naming the query parameter when it is out of range.
pub fn page_limit(limit: Option<u32>) -> Result<u32, crate::error::ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(0) => Err(crate::error::ApiError::invalid_field(
            "query.limit",
            "must be at least 1",
        )),
        Some(l) if l > MAX_PAGE => Err(crate::error::ApiError::invalid_field(
            "query.limit",
            format!("must be at most {MAX_PAGE}"),
        )),
        Some(l) => Ok(l),
    }
}
