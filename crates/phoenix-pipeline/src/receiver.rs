//! HTTP receivers: Prometheus remote write v1 on `POST /api/v1/write`, and the `/metrics`
//! endpoint serving the live output plus the engine's own counters.
//!
//! A malformed body gets 400 with the reason and is counted; other requests carry on.
//! Decoders and interners are pooled so concurrent requests reuse buffers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use parking_lot::Mutex;

use crate::engine::{EngineHandle, EngineStopped};
use crate::exporter::ExpositionExporter;
use crate::model::{Batch, Interner};
use crate::remote_write::{DecodeError, RemoteWriteDecoder};
use crate::telemetry::Telemetry;

/// Distinct metric names an interner may hold before it is cleared (bounds memory when
/// names churn).
const MAX_INTERNED_STRINGS: usize = 1 << 16;

/// Why a request failed; the one place receiver errors become HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// The body could not be decoded.
    #[error("bad remote write request: {0}")]
    Decode(#[from] DecodeError),
    /// The engine stopped.
    #[error("{0}")]
    Stopped(#[from] EngineStopped),
}

impl IntoResponse for ReceiverError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Decode(_) => StatusCode::BAD_REQUEST,
            Self::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, self.to_string()).into_response()
    }
}

#[derive(Debug)]
struct Decoding {
    decoder: RemoteWriteDecoder,
    interner: Interner,
}

/// Shared state of the remote write receiver.
#[derive(Debug, Clone)]
pub struct RemoteWriteState {
    engine: EngineHandle,
    pool: Arc<Mutex<Vec<Decoding>>>,
    telemetry: Arc<Telemetry>,
    max_decompressed_bytes: usize,
}

impl RemoteWriteState {
    /// State forwarding decoded batches to `engine`.
    pub fn new(
        engine: EngineHandle,
        telemetry: Arc<Telemetry>,
        max_decompressed_bytes: usize,
    ) -> Self {
        Self {
            engine,
            pool: Arc::new(Mutex::new(Vec::new())),
            telemetry,
            max_decompressed_bytes,
        }
    }

    fn decode(&self, body: &[u8]) -> Result<Batch, DecodeError> {
        let mut decoding = self.pool.lock().pop().unwrap_or_else(|| Decoding {
            decoder: RemoteWriteDecoder::new(self.max_decompressed_bytes),
            interner: Interner::new(),
        });
        if decoding.interner.len() > MAX_INTERNED_STRINGS {
            decoding.interner.clear();
        }
        let mut batch = Batch::default();
        let result = decoding
            .decoder
            .decode(body, &mut decoding.interner, &mut batch);
        self.pool.lock().push(decoding);
        let summary = result?;
        Telemetry::add(
            &self.telemetry.receiver_series_without_name_total,
            summary.series_without_name as u64,
        );
        Ok(batch)
    }
}

async fn write(
    State(state): State<RemoteWriteState>,
    body: Bytes,
) -> Result<StatusCode, ReceiverError> {
    Telemetry::add(&state.telemetry.receiver_requests_total, 1);
    let batch = match state.decode(&body) {
        Ok(batch) => batch,
        Err(e) => {
            Telemetry::add(&state.telemetry.receiver_request_errors_total, 1);
            return Err(e.into());
        }
    };
    Telemetry::add(&state.telemetry.receiver_series_total, batch.len() as u64);
    Telemetry::add(
        &state.telemetry.receiver_samples_total,
        batch.sample_count() as u64,
    );
    if !batch.is_empty() {
        state.engine.send_batch(batch).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The remote write router (`POST /api/v1/write`, `GET /-/healthy`).
pub fn remote_write_router(state: RemoteWriteState) -> Router {
    let limit = state.max_decompressed_bytes;
    Router::new()
        .route("/api/v1/write", post(write))
        .route("/-/healthy", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Shared state of the `/metrics` endpoint.
#[derive(Debug, Clone)]
pub struct MetricsState {
    /// The live output.
    pub exposition: Arc<ExpositionExporter>,
    /// The engine's counters.
    pub telemetry: Arc<Telemetry>,
}

async fn metrics(State(state): State<MetricsState>) -> Response {
    let mut out = String::new();
    state.exposition.render(&mut out);
    state.telemetry.render(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// The `/metrics` router.
pub fn metrics_router(state: MetricsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}
