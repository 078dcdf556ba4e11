//! `phoenix-api`: the control plane. An axum server over a [`phoenix_store::Store`], serving
//! experiments, the agent task queue and protocol (long-poll with no database connection held
//! while waiting), the fleet view, Prometheus metrics and its own OpenAPI description.

pub mod analysis;
pub mod app;
pub mod auth;
pub mod batch;
pub mod config;
pub mod deployments;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod recommendations;
pub mod route_table;
pub mod routes;
pub mod service;
pub mod telemetry;
pub mod templates;
pub mod tls;
pub mod usage;
pub mod waiters;
pub mod ws;

pub use app::{router, spawn_background, AppState};
pub use config::Config;
pub use error::ApiError;
