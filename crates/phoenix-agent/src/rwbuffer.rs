//! Remote write with a disk buffer: the live output is encoded into requests (at most
//! `max_samples_per_request` samples each) and appended to an on-disk queue; one sender
//! delivers them in order and removes each only once the backend accepted it. While the
//! backend is down requests wait on disk (up to `remote_write_buffer_max_bytes`; beyond,
//! new requests are dropped and counted), they survive a restart, and they drain when the
//! backend returns. Retryable failures (transport, 5xx, 429) are retried without limit
//! with backoff; other 4xx are dropped and counted as rejected, as Prometheus does.
//!
//! Built from the engine's public pieces (`Exporter`, `RemoteWriteEncoder`,
//! `classify_status`): the pipeline crate's in-memory exporter stays as it is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use phoenix_pipeline::config::RemoteWriteExporterConfig;
use phoenix_pipeline::exporter::{classify_status, Exporter, RetryDecision};
use phoenix_pipeline::model::Series;
use phoenix_pipeline::remote_write::RemoteWriteEncoder;
use phoenix_pipeline::telemetry::Telemetry;

use crate::client::Backoff;
use crate::diskqueue::DiskQueue;

/// Counters beyond the engine's exporter counters.
#[derive(Debug, Default)]
pub struct RemoteWriteBufferStats {
    /// Samples accepted into the buffer (everything the live pipeline exported).
    pub queued_samples_total: AtomicU64,
    /// Samples dropped because the buffer was full.
    pub dropped_samples_total: AtomicU64,
    /// Requests dropped because the buffer was full.
    pub dropped_requests_total: AtomicU64,
    /// Samples in requests the backend refused with a non-retryable 4xx.
    pub rejected_samples_total: AtomicU64,
}

/// The exporter half: encodes on the engine thread and appends to the queue.
#[derive(Debug)]
pub struct BufferedRemoteWrite {
    max_samples_per_request: usize,
    queue: Arc<DiskQueue>,
    encoder: Mutex<RemoteWriteEncoder>,
    stats: Arc<RemoteWriteBufferStats>,
}

impl BufferedRemoteWrite {
    /// An exporter appending to `queue`.
    pub fn new(
        config: &RemoteWriteExporterConfig,
        queue: Arc<DiskQueue>,
        stats: Arc<RemoteWriteBufferStats>,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_samples_per_request: config.max_samples_per_request.max(1),
            queue,
            encoder: Mutex::new(RemoteWriteEncoder::new()),
            stats,
        })
    }
}

impl Exporter for BufferedRemoteWrite {
    fn export(&self, series: &[Series], extra_labels: &[(&str, &str)]) {
        let mut start = 0;
        while start < series.len() {
            let mut end = start;
            let mut samples = 0usize;
            while end < series.len()
                && (end == start
                    || samples + series[end].samples.len() <= self.max_samples_per_request)
            {
                samples += series[end].samples.len();
                end += 1;
            }
            let body = self
                .encoder
                .lock()
                .encode(&series[start..end], extra_labels);
            // Record: sample count (u64 LE), then the snappy body as sent.
            let mut record = Vec::with_capacity(8 + body.len());
            record.extend_from_slice(&(samples as u64).to_le_bytes());
            record.extend_from_slice(&body);
            if self.queue.push(&record).is_ok() {
                self.stats
                    .queued_samples_total
                    .fetch_add(samples as u64, Ordering::Relaxed);
            } else {
                self.stats
                    .dropped_requests_total
                    .fetch_add(1, Ordering::Relaxed);
                self.stats
                    .dropped_samples_total
                    .fetch_add(samples as u64, Ordering::Relaxed);
            }
            start = end;
        }
    }
}

/// Delivers the queue to the backend in order until `cancel` fires.
pub async fn run_sender(
    config: RemoteWriteExporterConfig,
    queue: Arc<DiskQueue>,
    telemetry: Arc<Telemetry>,
    stats: Arc<RemoteWriteBufferStats>,
    cancel: CancellationToken,
) {
    let client = match reqwest::Client::builder().timeout(config.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "remote write client could not be built");
            return;
        }
    };
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    loop {
        let record = match queue.next() {
            Ok(Some(r)) => r,
            Ok(None) => {
                tokio::select! {
                    _ = queue.wait() => continue,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "remote write buffer unreadable");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        if record.len() < 8 {
            let _ = queue.commit();
            continue;
        }
        let mut count = [0u8; 8];
        count.copy_from_slice(&record[..8]);
        let samples = u64::from_le_bytes(count);
        let body = bytes::Bytes::copy_from_slice(&record[8..]);
        loop {
            let result = client
                .post(&config.url)
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .header("User-Agent", "phoenix-agent")
                .body(body.clone())
                .send()
                .await;
            let decision = match &result {
                Ok(r) => classify_status(r.status().as_u16()),
                Err(_) => RetryDecision::Retry,
            };
            match decision {
                RetryDecision::Done => {
                    Telemetry::add(&telemetry.exporter_requests_sent_total, 1);
                    Telemetry::add(&telemetry.exporter_samples_sent_total, samples);
                    backoff.reset();
                    break;
                }
                RetryDecision::Reject => {
                    tracing::warn!(url = %config.url, status = ?result.as_ref().map(|r| r.status()).ok(), "remote write rejected, dropped");
                    Telemetry::add(&telemetry.exporter_requests_rejected_total, 1);
                    stats
                        .rejected_samples_total
                        .fetch_add(samples, Ordering::Relaxed);
                    break;
                }
                RetryDecision::Retry => {
                    Telemetry::add(&telemetry.exporter_retries_total, 1);
                    let delay = backoff.next_delay();
                    if backoff.failures() == 3 {
                        tracing::warn!(url = %config.url, pending_bytes = queue.pending_bytes(), "metrics backend unreachable, buffering on disk");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => {
                            queue.rewind();
                            return;
                        }
                    }
                }
            }
        }
        if let Err(e) = queue.commit() {
            tracing::error!(error = %e, "remote write buffer position not saved");
        }
    }
}
