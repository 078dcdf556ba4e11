//! Exporters: where the live pipeline output goes.
//!
//! [`RemoteWriteExporter`] splits output into requests of at most `max_samples_per_request`
//! samples, encodes them, and queues them in a bounded queue (overflow dropped and
//! counted); `concurrency` workers send them, retrying 5xx, 429 and transport errors with
//! exponential backoff, never retrying other 4xx. [`ExpositionExporter`] keeps the latest
//! value of each output series for the `/metrics` endpoint.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::config::RemoteWriteExporterConfig;
use crate::model::{Series, SeriesId};
use crate::remote_write::RemoteWriteEncoder;
use crate::telemetry::{escape_label_value, Telemetry};

/// A destination for output series.
pub trait Exporter: Send + Sync + std::fmt::Debug {
    /// Takes one batch of output series, with `extra_labels` to add to every series.
    fn export(&self, series: &[Series], extra_labels: &[(&str, &str)]);
}

/// One encoded request waiting in the queue.
#[derive(Debug)]
struct QueuedRequest {
    body: bytes::Bytes,
    samples: u64,
}

/// What to do with a response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Delivered.
    Done,
    /// Retry later (5xx, 429, transport error).
    Retry,
    /// Give up now (other 4xx).
    Reject,
}

/// Classifies a response status the way Prometheus' remote write client does.
pub fn classify_status(status: u16) -> RetryDecision {
    match status {
        200..=299 => RetryDecision::Done,
        429 | 500..=599 => RetryDecision::Retry,
        _ => RetryDecision::Reject,
    }
}

/// The backoff before attempt `attempt` (1 = first retry): doubles from `min` up to `max`.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

/// Prometheus remote write client with a bounded queue.
#[derive(Debug)]
pub struct RemoteWriteExporter {
    config: RemoteWriteExporterConfig,
    queue: mpsc::Sender<QueuedRequest>,
    encoder: Mutex<RemoteWriteEncoder>,
    telemetry: Arc<Telemetry>,
}

impl RemoteWriteExporter {
    /// Starts `concurrency` sender tasks on the current tokio runtime.
    pub fn start(
        config: RemoteWriteExporterConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(config.timeout).build()?;
        let (tx, rx) = mpsc::channel::<QueuedRequest>(config.queue_capacity_requests);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..config.concurrency {
            let rx = rx.clone();
            let client = client.clone();
            let config = config.clone();
            let telemetry = telemetry.clone();
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(request) = next else { break };
                    send_with_retry(&client, &config, &telemetry, request).await;
                }
            });
        }
        Ok(Arc::new(Self {
            config,
            queue: tx,
            encoder: Mutex::new(RemoteWriteEncoder::new()),
            telemetry,
        }))
    }
}

async fn send_with_retry(
    client: &reqwest::Client,
    config: &RemoteWriteExporterConfig,
    telemetry: &Telemetry,
    request: QueuedRequest,
) {
    for attempt in 1..=config.max_attempts {
        let result = client
            .post(&config.url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header("User-Agent", "phoenix-agent")
            .body(request.body.clone())
            .send()
            .await;
        let decision = match &result {
            Ok(response) => classify_status(response.status().as_u16()),
            Err(_) => RetryDecision::Retry,
        };
        match decision {
            RetryDecision::Done => {
                Telemetry::add(&telemetry.exporter_requests_sent_total, 1);
                Telemetry::add(&telemetry.exporter_samples_sent_total, request.samples);
                return;
            }
            RetryDecision::Reject => {
                tracing::warn!(url = %config.url, status = ?result.as_ref().map(|r| r.status()).ok(), "remote write rejected, not retrying");
                Telemetry::add(&telemetry.exporter_requests_rejected_total, 1);
                return;
            }
            RetryDecision::Retry if attempt < config.max_attempts => {
                Telemetry::add(&telemetry.exporter_retries_total, 1);
                tokio::time::sleep(backoff(attempt, config.min_backoff, config.max_backoff)).await;
            }
            RetryDecision::Retry => {}
        }
    }
    tracing::warn!(url = %config.url, attempts = config.max_attempts, "remote write failed, giving up");
    Telemetry::add(&telemetry.exporter_requests_failed_total, 1);
}

impl Exporter for RemoteWriteExporter {
    fn export(&self, series: &[Series], extra_labels: &[(&str, &str)]) {
        let max_samples = self.config.max_samples_per_request.max(1);
        let mut start = 0;
        while start < series.len() {
            let mut end = start;
            let mut samples = 0usize;
            while end < series.len()
                && (end == start || samples + series[end].samples.len() <= max_samples)
            {
                samples += series[end].samples.len();
                end += 1;
            }
            let body = self
                .encoder
                .lock()
                .encode(&series[start..end], extra_labels);
            let request = QueuedRequest {
                body: bytes::Bytes::from(body),
                samples: samples as u64,
            };
            if self.queue.try_send(request).is_err() {
                Telemetry::add(&self.telemetry.exporter_queue_dropped_requests_total, 1);
                Telemetry::add(
                    &self.telemetry.exporter_queue_dropped_samples_total,
                    samples as u64,
                );
            }
            start = end;
        }
    }
}

/// Output series older than this are no longer exposed.
const EXPOSITION_STALE_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Exposed {
    line_prefix: String,
    value: f64,
    updated: Instant,
}

/// Keeps the latest value of every output series for `/metrics`.
#[derive(Debug, Default)]
pub struct ExpositionExporter {
    latest: Mutex<HashMap<SeriesId, Exposed, ahash::RandomState>>,
}

impl ExpositionExporter {
    /// An empty exposition.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Renders the exposed series (no timestamps: the scraper stamps them).
    pub fn render(&self, out: &mut String) {
        let now = Instant::now();
        let mut latest = self.latest.lock();
        latest.retain(|_, e| now.duration_since(e.updated) < EXPOSITION_STALE_AFTER);
        let mut lines: Vec<(&str, f64)> = latest
            .values()
            .map(|e| (e.line_prefix.as_str(), e.value))
            .collect();
        lines.sort_by(|a, b| a.0.cmp(b.0));
        for (prefix, value) in lines {
            let _ = writeln!(out, "{prefix} {}", format_value(value));
        }
    }

    /// Number of series exposed.
    pub fn len(&self) -> usize {
        self.latest.lock().len()
    }

    /// Whether nothing is exposed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

impl Exporter for ExpositionExporter {
    fn export(&self, series: &[Series], extra_labels: &[(&str, &str)]) {
        let now = Instant::now();
        // Variants tagged with extra labels are distinct series.
        let mut extra_hasher = xxhash_rust::xxh3::Xxh3::new();
        for (name, value) in extra_labels {
            extra_hasher.update(name.as_bytes());
            extra_hasher.update(&[0xff]);
            extra_hasher.update(value.as_bytes());
        }
        let extra_hash = if extra_labels.is_empty() {
            0
        } else {
            extra_hasher.digest()
        };
        let mut latest = self.latest.lock();
        for s in series {
            let Some(sample) = s.last_sample() else {
                continue;
            };
            let id = SeriesId(s.id().0 ^ extra_hash);
            if let Some(existing) = latest.get_mut(&id) {
                existing.value = sample.value;
                existing.updated = now;
                continue;
            }
            let mut prefix = String::with_capacity(64);
            prefix.push_str(&s.name);
            let mut labels: Vec<(&str, &str)> =
                s.labels.iter().map(|l| (l.name, l.value)).collect();
            labels.extend_from_slice(extra_labels);
            labels.sort_by(|a, b| a.0.cmp(b.0));
            if !labels.is_empty() {
                prefix.push('{');
                for (i, (name, value)) in labels.iter().enumerate() {
                    if i > 0 {
                        prefix.push(',');
                    }
                    let _ = write!(prefix, "{name}=\"{}\"", escape_label_value(value));
                }
                prefix.push('}');
            }
            latest.insert(
                id,
                Exposed {
                    line_prefix: prefix,
                    value: sample.value,
                    updated: now,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_like_prometheus() {
        assert_eq!(classify_status(204), RetryDecision::Done);
        assert_eq!(classify_status(429), RetryDecision::Retry);
        assert_eq!(classify_status(503), RetryDecision::Retry);
        assert_eq!(classify_status(400), RetryDecision::Reject);
        assert_eq!(classify_status(404), RetryDecision::Reject);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        assert_eq!(backoff(1, min, max), Duration::from_millis(100));
        assert_eq!(backoff(2, min, max), Duration::from_millis(200));
        assert_eq!(backoff(4, min, max), Duration::from_millis(800));
        assert_eq!(backoff(5, min, max), max);
        assert_eq!(backoff(64, min, max), max);
    }
}
