//! OTLP exporter: turns output series back into OTLP metrics and sends them over gRPC
//! (`MetricsService/Export`) or HTTP (`POST /v1/metrics`, `application/x-protobuf`).
//!
//! Mapping (the inverse of [`crate::otlp`]): counters become cumulative monotonic `Sum`s,
//! gauges (and series of unknown kind) `Gauge`s, under the series' own name. The
//! `_bucket{le}`/`_sum`/`_count` series of one histogram (same base name, labels and
//! timestamp in one batch) are joined back into one cumulative `Histogram` point, and the
//! `{quantile}`/`_sum`/`_count` series of a summary into one `Summary` point. Where the
//! model does not allow it (no `+Inf` bucket or `_count` in the batch, bucket values that
//! decrease or are not whole numbers) the component series go out one by one: cumulative
//! ones as monotonic `Sum`s, quantiles as `Gauge`s. Labels become data point attributes.
//!
//! Requests hold at most `max_data_points_per_request` points and wait in a bounded queue
//! (overflow dropped and counted); `concurrency` workers send them, retrying gRPC
//! `UNAVAILABLE`, `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`, `ABORTED`, transport errors,
//! HTTP 5xx and 429 with exponential backoff, and giving up at once on anything else.

use std::sync::Arc;

use hashbrown::HashMap;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, summary_data_point::ValueAtQuantile, AggregationTemporality, Gauge,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::mpsc;

use crate::config::{OtlpExporterConfig, OtlpProtocol};
use crate::exporter::{backoff, classify_status, Exporter, RetryDecision};
use crate::model::{series_id, Labels, MetricKind, Series};
use crate::telemetry::Telemetry;

/// Why the OTLP exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpExporterError {
    /// The HTTP client could not be built.
    #[error("cannot build the OTLP/HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The gRPC endpoint is not usable.
    #[error("invalid OTLP gRPC endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        source: tonic::transport::Error,
    },
    /// A header name or value is not valid.
    #[error("invalid OTLP header {0:?}")]
    Header(String),
}

/// One request ready to send, with the number of Phoenix samples it carries.
#[derive(Debug, Clone)]
pub struct OtlpRequest {
    /// The request.
    pub request: ExportMetricsServiceRequest,
    /// Data points in it.
    pub data_points: usize,
    /// Series samples it represents (a histogram point stands for all its components).
    pub samples: u64,
}

/// The OTLP metric shape a point belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Shape {
    Gauge,
    Sum,
    Histogram,
    Summary,
}

#[derive(Debug)]
enum Point {
    Number(NumberDataPoint),
    Histogram(HistogramDataPoint),
    Summary(SummaryDataPoint),
}

#[derive(Debug)]
struct Item {
    metric: usize,
    point: Point,
    samples: u64,
}

/// A histogram or summary being joined back from its component series.
#[derive(Debug)]
struct Group {
    shape: Shape,
    base: String,
    labels: Labels,
    timestamp_ms: i64,
    /// `(le or quantile, value)`.
    bounds: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
    /// `(series index, sample index)` of every component, for the fallback.
    members: Vec<(usize, usize)>,
}

/// Which part of a histogram or summary a series is.
#[derive(Debug, Clone, Copy)]
enum Component<'a> {
    Bucket(&'a str, f64),
    Quantile(&'a str, f64),
    Sum(&'a str),
    Count(&'a str),
}

fn parse_bound(text: &str) -> Option<f64> {
    let value: f64 = text.parse().ok()?;
    (!value.is_nan()).then_some(value)
}

fn component(series: &Series) -> Option<Component<'_>> {
    let name = &*series.name;
    match series.kind {
        MetricKind::Histogram | MetricKind::ExponentialHistogram => {
            if let Some(base) = name.strip_suffix("_bucket") {
                let le = parse_bound(series.labels.get("le")?)?;
                Some(Component::Bucket(base, le))
            } else if let Some(base) = name.strip_suffix("_sum") {
                Some(Component::Sum(base))
            } else {
                name.strip_suffix("_count").map(Component::Count)
            }
        }
        MetricKind::Summary => {
            if let Some(q) = series.labels.get("quantile") {
                Some(Component::Quantile(name, parse_bound(q)?))
            } else if let Some(base) = name.strip_suffix("_sum") {
                Some(Component::Sum(base))
            } else {
                name.strip_suffix("_count").map(Component::Count)
            }
        }
        _ => None,
    }
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// Labels (minus `skip`) and `extra` labels as attributes; an extra label replaces a
/// label of the same name.
fn attributes(labels: &Labels, skip: Option<&str>, extra: &[(&str, &str)]) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(labels.len() + extra.len());
    for label in labels.iter() {
        if Some(label.name) == skip || extra.iter().any(|(n, _)| *n == label.name) {
            continue;
        }
        out.push(string_kv(label.name, label.value));
    }
    for (name, value) in extra {
        out.push(string_kv(name, value));
    }
    out
}

fn ms_to_nanos(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
}

fn whole(value: f64) -> Option<u64> {
    (value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= u64::MAX as f64)
        .then_some(value as u64)
}

/// Builds OTLP data points out of series, then packs them into requests.
#[derive(Debug, Default)]
struct Builder {
    metrics: Vec<(String, Shape)>,
    /// Per metric name, the index in `metrics` of each shape seen under it.
    metric_index: HashMap<String, [Option<usize>; 4], ahash::RandomState>,
    items: Vec<Item>,
}

impl Builder {
    fn metric(&mut self, name: &str, shape: Shape) -> usize {
        let slot = shape as usize;
        if let Some(Some(index)) = self.metric_index.get(name).map(|shapes| shapes[slot]) {
            return index;
        }
        let index = self.metrics.len();
        self.metrics.push((name.to_string(), shape));
        self.metric_index.entry_ref(name).or_default()[slot] = Some(index);
        index
    }

    fn number(&mut self, series: &Series, sample: usize, extra: &[(&str, &str)]) {
        let shape = if series.is_cumulative() {
            Shape::Sum
        } else {
            Shape::Gauge
        };
        let metric = self.metric(&series.name, shape);
        let s = series.samples[sample];
        self.items.push(Item {
            metric,
            point: Point::Number(NumberDataPoint {
                attributes: attributes(&series.labels, None, extra),
                time_unix_nano: ms_to_nanos(s.timestamp_ms),
                value: Some(number_data_point::Value::AsDouble(s.value)),
                ..Default::default()
            }),
            samples: 1,
        });
    }

    /// Joins a group into one point, or `None` when the model does not allow it.
    fn joined(group: &mut Group, extra: &[(&str, &str)]) -> Option<Point> {
        let count = whole(group.count?)?;
        let time_unix_nano = ms_to_nanos(group.timestamp_ms);
        group.bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        match group.shape {
            Shape::Histogram => {
                let (last_le, _) = *group.bounds.last()?;
                if last_le != f64::INFINITY {
                    return None;
                }
                let mut bucket_counts = Vec::with_capacity(group.bounds.len());
                let mut previous = 0u64;
                for (_, value) in &group.bounds {
                    let cumulative = whole(*value)?;
                    bucket_counts.push(cumulative.checked_sub(previous)?);
                    previous = cumulative;
                }
                let explicit_bounds = group.bounds[..group.bounds.len() - 1]
                    .iter()
                    .map(|(le, _)| *le)
                    .collect();
                Some(Point::Histogram(HistogramDataPoint {
                    attributes: attributes(&group.labels, None, extra),
                    time_unix_nano,
                    count,
                    sum: group.sum,
                    bucket_counts,
                    explicit_bounds,
                    ..Default::default()
                }))
            }
            Shape::Summary => Some(Point::Summary(SummaryDataPoint {
                attributes: attributes(&group.labels, None, extra),
                time_unix_nano,
                count,
                sum: group.sum?,
                quantile_values: group
                    .bounds
                    .iter()
                    .map(|(quantile, value)| ValueAtQuantile {
                        quantile: *quantile,
                        value: *value,
                    })
                    .collect(),
                ..Default::default()
            })),
            Shape::Gauge | Shape::Sum => None,
        }
    }

    fn add(&mut self, series: &[Series], extra: &[(&str, &str)]) {
        let mut groups: Vec<Group> = Vec::new();
        let mut group_index: HashMap<(u64, i64), usize, ahash::RandomState> = HashMap::default();
        for (si, s) in series.iter().enumerate() {
            let Some(part) = component(s) else {
                for sample in 0..s.samples.len() {
                    self.number(s, sample, extra);
                }
                continue;
            };
            let (base, shape) = match part {
                Component::Bucket(base, _) => (base, Shape::Histogram),
                Component::Quantile(base, _) => (base, Shape::Summary),
                Component::Sum(base) | Component::Count(base) => {
                    let shape = if s.kind == MetricKind::Summary {
                        Shape::Summary
                    } else {
                        Shape::Histogram
                    };
                    (base, shape)
                }
            };
            let mut labels = s.labels.clone();
            match part {
                Component::Bucket(..) => labels.remove("le"),
                Component::Quantile(..) => labels.remove("quantile"),
                _ => {}
            }
            let key_hash = series_id(base, &labels).0 ^ (shape as u64);
            for (sample_index, sample) in s.samples.iter().enumerate() {
                let index = *group_index
                    .entry((key_hash, sample.timestamp_ms))
                    .or_insert_with(|| {
                        groups.push(Group {
                            shape,
                            base: base.to_string(),
                            labels: labels.clone(),
                            timestamp_ms: sample.timestamp_ms,
                            bounds: Vec::new(),
                            sum: None,
                            count: None,
                            members: Vec::new(),
                        });
                        groups.len() - 1
                    });
                let group = &mut groups[index];
                group.members.push((si, sample_index));
                match part {
                    Component::Bucket(_, bound) | Component::Quantile(_, bound) => {
                        group.bounds.push((bound, sample.value));
                    }
                    Component::Sum(_) => group.sum = Some(sample.value),
                    Component::Count(_) => group.count = Some(sample.value),
                }
            }
        }
        for mut group in groups {
            match Self::joined(&mut group, extra) {
                Some(point) => {
                    let metric = self.metric(&group.base, group.shape);
                    self.items.push(Item {
                        metric,
                        point,
                        samples: group.members.len() as u64,
                    });
                }
                None => {
                    for (si, sample) in group.members {
                        self.number(&series[si], sample, extra);
                    }
                }
            }
        }
    }

    fn requests(self, max_data_points: usize) -> Vec<OtlpRequest> {
        let max_data_points = max_data_points.max(1);
        let mut out = Vec::new();
        let mut items = self.items.into_iter().peekable();
        while items.peek().is_some() {
            let mut metrics: Vec<Metric> = Vec::new();
            let mut slot: HashMap<usize, usize, ahash::RandomState> = HashMap::default();
            let mut data_points = 0;
            let mut samples = 0;
            for item in items.by_ref().take(max_data_points) {
                data_points += 1;
                samples += item.samples;
                let index = *slot.entry(item.metric).or_insert_with(|| {
                    let (name, shape) = &self.metrics[item.metric];
                    let cumulative = AggregationTemporality::Cumulative as i32;
                    let data = match shape {
                        Shape::Gauge => metric::Data::Gauge(Gauge::default()),
                        Shape::Sum => metric::Data::Sum(Sum {
                            data_points: Vec::new(),
                            aggregation_temporality: cumulative,
                            is_monotonic: true,
                        }),
                        Shape::Histogram => metric::Data::Histogram(Histogram {
                            data_points: Vec::new(),
                            aggregation_temporality: cumulative,
                        }),
                        Shape::Summary => metric::Data::Summary(Summary::default()),
                    };
                    metrics.push(Metric {
                        name: name.clone(),
                        data: Some(data),
                        ..Default::default()
                    });
                    metrics.len() - 1
                });
                match (&mut metrics[index].data, item.point) {
                    (Some(metric::Data::Gauge(g)), Point::Number(p)) => g.data_points.push(p),
                    (Some(metric::Data::Sum(s)), Point::Number(p)) => s.data_points.push(p),
                    (Some(metric::Data::Histogram(h)), Point::Histogram(p)) => {
                        h.data_points.push(p)
                    }
                    (Some(metric::Data::Summary(s)), Point::Summary(p)) => s.data_points.push(p),
                    // Shapes and points are paired by construction above.
                    _ => {}
                }
            }
            out.push(OtlpRequest {
                request: ExportMetricsServiceRequest {
                    resource_metrics: vec![ResourceMetrics {
                        resource: Some(Resource::default()),
                        scope_metrics: vec![ScopeMetrics {
                            scope: Some(InstrumentationScope {
                                name: "phoenix-agent".into(),
                                version: env!("CARGO_PKG_VERSION").into(),
                                ..Default::default()
                            }),
                            metrics,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                },
                data_points,
                samples,
            });
        }
        out
    }
}

/// Converts series (plus `extra` labels on each) into OTLP requests of at most
/// `max_data_points` data points each.
pub fn series_to_requests(
    series: &[Series],
    extra: &[(&str, &str)],
    max_data_points: usize,
) -> Vec<OtlpRequest> {
    let mut builder = Builder::default();
    builder.add(series, extra);
    builder.requests(max_data_points)
}

/// How a gRPC status is handled: the OTLP specification's retryable codes that mean
/// "try again later", everything else is final.
pub fn classify_grpc(code: tonic::Code) -> RetryDecision {
    match code {
        tonic::Code::Ok => RetryDecision::Done,
        tonic::Code::Unavailable
        | tonic::Code::ResourceExhausted
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Aborted => RetryDecision::Retry,
        _ => RetryDecision::Reject,
    }
}

/// How requests leave the process.
#[derive(Debug, Clone)]
enum Transport {
    Grpc {
        client: MetricsServiceClient<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
    },
}

/// The outcome of one attempt.
#[derive(Debug)]
enum Attempt {
    Done { rejected_points: i64 },
    Retry(String),
    Reject(String),
}

impl Transport {
    fn new(config: &OtlpExporterConfig) -> Result<Self, OtlpExporterError> {
        match config.protocol {
            OtlpProtocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|source| OtlpExporterError::Endpoint {
                        endpoint: config.endpoint.clone(),
                        source,
                    })?
                    .connect_timeout(config.timeout)
                    .timeout(config.timeout);
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (name, value) in &config.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
                        .map_err(|_| OtlpExporterError::Header(name.clone()))?;
                    let value = value
                        .parse()
                        .map_err(|_| OtlpExporterError::Header(name.clone()))?;
                    metadata.insert(key, value);
                }
                Ok(Self::Grpc {
                    // Lazy: the peer may come up after us; failures surface per request.
                    client: MetricsServiceClient::new(endpoint.connect_lazy()),
                    metadata,
                })
            }
            OtlpProtocol::Http => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (name, value) in &config.headers {
                    let key = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| OtlpExporterError::Header(name.clone()))?;
                    let value = reqwest::header::HeaderValue::from_str(value)
                        .map_err(|_| OtlpExporterError::Header(name.clone()))?;
                    headers.insert(key, value);
                }
                Ok(Self::Http {
                    client: reqwest::Client::builder().timeout(config.timeout).build()?,
                    url: http_url(&config.endpoint),
                    headers,
                })
            }
        }
    }

    async fn send(&self, request: &ExportMetricsServiceRequest, body: &bytes::Bytes) -> Attempt {
        match self {
            Self::Grpc { client, metadata } => {
                let mut grpc_request = tonic::Request::new(request.clone());
                *grpc_request.metadata_mut() = metadata.clone();
                match client.clone().export(grpc_request).await {
                    Ok(response) => Attempt::Done {
                        rejected_points: response
                            .get_ref()
                            .partial_success
                            .as_ref()
                            .map_or(0, |p| p.rejected_data_points),
                    },
                    Err(status) => {
                        let reason = format!("{:?}: {}", status.code(), status.message());
                        match classify_grpc(status.code()) {
                            RetryDecision::Retry => Attempt::Retry(reason),
                            RetryDecision::Reject | RetryDecision::Done => Attempt::Reject(reason),
                        }
                    }
                }
            }
            Self::Http {
                client,
                url,
                headers,
            } => {
                let result = client
                    .post(url)
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                    .header(reqwest::header::USER_AGENT, "phoenix-agent")
                    .body(body.clone())
                    .send()
                    .await;
                let response = match result {
                    Ok(response) => response,
                    Err(e) => return Attempt::Retry(e.to_string()),
                };
                let status = response.status();
                match classify_status(status.as_u16()) {
                    RetryDecision::Done => {
                        let body = response.bytes().await.unwrap_or_default();
                        let rejected_points = ExportMetricsServiceResponse::decode(body.as_ref())
                            .ok()
                            .and_then(|r| r.partial_success)
                            .map_or(0, |p| p.rejected_data_points);
                        Attempt::Done { rejected_points }
                    }
                    RetryDecision::Retry => Attempt::Retry(format!("HTTP {status}")),
                    RetryDecision::Reject => {
                        let text = response.text().await.unwrap_or_default();
                        Attempt::Reject(format!("HTTP {status}: {}", text.trim()))
                    }
                }
            }
        }
    }
}

/// The OTLP/HTTP URL: `/v1/metrics` is appended to an endpoint without a path.
pub fn http_url(endpoint: &str) -> String {
    match reqwest::Url::parse(endpoint) {
        Ok(url) if url.path() == "/" || url.path().is_empty() => {
            format!("{}/v1/metrics", endpoint.trim_end_matches('/'))
        }
        _ => endpoint.to_string(),
    }
}

#[derive(Debug)]
struct Queued {
    request: ExportMetricsServiceRequest,
    samples: u64,
}

/// OTLP metrics client with a bounded queue.
#[derive(Debug)]
pub struct OtlpExporter {
    config: OtlpExporterConfig,
    queue: mpsc::Sender<Queued>,
    telemetry: Arc<Telemetry>,
}

impl OtlpExporter {
    /// Starts `concurrency` sender tasks on the current tokio runtime.
    pub fn start(
        config: OtlpExporterConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<Arc<Self>, OtlpExporterError> {
        let transport = Transport::new(&config)?;
        let (tx, rx) = mpsc::channel::<Queued>(config.queue_capacity_requests.max(1));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..config.concurrency.max(1) {
            let rx = rx.clone();
            let transport = transport.clone();
            let config = config.clone();
            let telemetry = telemetry.clone();
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(queued) = next else { break };
                    send_with_retry(&transport, &config, &telemetry, queued).await;
                }
            });
        }
        Ok(Arc::new(Self {
            config,
            queue: tx,
            telemetry,
        }))
    }
}

async fn send_with_retry(
    transport: &Transport,
    config: &OtlpExporterConfig,
    telemetry: &Telemetry,
    queued: Queued,
) {
    let body = match transport {
        Transport::Http { .. } => bytes::Bytes::from(queued.request.encode_to_vec()),
        Transport::Grpc { .. } => bytes::Bytes::new(),
    };
    let mut last_reason = String::new();
    for attempt in 1..=config.max_attempts.max(1) {
        match transport.send(&queued.request, &body).await {
            Attempt::Done { rejected_points } => {
                if rejected_points > 0 {
                    tracing::warn!(endpoint = %config.endpoint, rejected_points, "OTLP peer rejected part of a request");
                }
                Telemetry::add(&telemetry.exporter_requests_sent_total, 1);
                Telemetry::add(&telemetry.exporter_samples_sent_total, queued.samples);
                return;
            }
            Attempt::Reject(reason) => {
                tracing::warn!(endpoint = %config.endpoint, %reason, "OTLP export rejected, not retrying");
                Telemetry::add(&telemetry.exporter_requests_rejected_total, 1);
                return;
            }
            Attempt::Retry(reason) => {
                if attempt < config.max_attempts {
                    tracing::debug!(endpoint = %config.endpoint, %reason, attempt, "OTLP export failed, retrying");
                    Telemetry::add(&telemetry.exporter_retries_total, 1);
                    tokio::time::sleep(backoff(attempt, config.min_backoff, config.max_backoff))
                        .await;
                }
                last_reason = reason;
            }
        }
    }
    tracing::warn!(endpoint = %config.endpoint, attempts = config.max_attempts, reason = %last_reason, "OTLP export failed, giving up");
    Telemetry::add(&telemetry.exporter_requests_failed_total, 1);
}

impl Exporter for OtlpExporter {
    fn export(&self, series: &[Series], extra_labels: &[(&str, &str)]) {
        for converted in series_to_requests(
            series,
            extra_labels,
            self.config.max_data_points_per_request,
        ) {
            let queued = Queued {
                request: converted.request,
                samples: converted.samples,
            };
            if self.queue.try_send(queued).is_err() {
                Telemetry::add(&self.telemetry.exporter_queue_dropped_requests_total, 1);
                Telemetry::add(
                    &self.telemetry.exporter_queue_dropped_samples_total,
                    converted.samples,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Batch, Interner, Label, Sample};
    use crate::otlp::OtlpConverter;

    fn series(
        interner: &mut Interner,
        name: &str,
        labels: &[(&str, &str)],
        kind: MetricKind,
        value: f64,
    ) -> Series {
        let labels = Labels::from_unsorted(
            labels
                .iter()
                .map(|(n, v)| Label::new(interner.intern(n), interner.intern(v)))
                .collect(),
        );
        Series::new(
            interner.intern(name),
            labels,
            kind,
            vec![Sample::new(1_700_000_000_000, value)],
        )
    }

    fn render(batch: &Batch) -> Vec<String> {
        let mut lines: Vec<String> = batch
            .series
            .iter()
            .map(|s| format!("{s} {}", s.samples[0].value))
            .collect();
        lines.sort();
        lines
    }

    fn shapes(request: &ExportMetricsServiceRequest) -> Vec<(String, &'static str)> {
        let mut out: Vec<(String, &'static str)> = request.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| {
                let shape = match &m.data {
                    Some(metric::Data::Gauge(_)) => "gauge",
                    Some(metric::Data::Sum(s)) if s.is_monotonic => "monotonic sum",
                    Some(metric::Data::Sum(_)) => "sum",
                    Some(metric::Data::Histogram(_)) => "histogram",
                    Some(metric::Data::Summary(_)) => "summary",
                    _ => "other",
                };
                (m.name.clone(), shape)
            })
            .collect();
        out.sort();
        out
    }

    fn sample_input() -> Vec<Series> {
        let mut i = Interner::new();
        let h = MetricKind::Histogram;
        vec![
            series(
                &mut i,
                "requests_total",
                &[("job", "api")],
                MetricKind::Counter,
                5.0,
            ),
            series(
                &mut i,
                "temperature",
                &[("room", "a")],
                MetricKind::Gauge,
                21.5,
            ),
            series(
                &mut i,
                "latency_bucket",
                &[("job", "api"), ("le", "0.1")],
                h,
                1.0,
            ),
            series(
                &mut i,
                "latency_bucket",
                &[("job", "api"), ("le", "1")],
                h,
                3.0,
            ),
            series(
                &mut i,
                "latency_bucket",
                &[("job", "api"), ("le", "+Inf")],
                h,
                6.0,
            ),
            series(&mut i, "latency_sum", &[("job", "api")], h, 1.5),
            series(&mut i, "latency_count", &[("job", "api")], h, 6.0),
            series(
                &mut i,
                "rpc",
                &[("quantile", "0.5")],
                MetricKind::Summary,
                0.4,
            ),
            series(&mut i, "rpc_sum", &[], MetricKind::Summary, 2.0),
            series(&mut i, "rpc_count", &[], MetricKind::Summary, 4.0),
        ]
    }

    #[test]
    fn counters_gauges_histograms_and_summaries_take_their_otlp_shapes() {
        let requests = series_to_requests(&sample_input(), &[], 1000);
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].samples, 10);
        assert_eq!(requests[0].data_points, 4);
        assert_eq!(
            shapes(&requests[0].request),
            vec![
                ("latency".to_string(), "histogram"),
                ("requests_total".to_string(), "monotonic sum"),
                ("rpc".to_string(), "summary"),
                ("temperature".to_string(), "gauge"),
            ]
        );
    }

    #[test]
    fn exported_series_come_back_identical_through_the_otlp_receiver_mapping() {
        let input = sample_input();
        let requests = series_to_requests(&input, &[], 1000);
        let mut back = Batch::default();
        let mut converter = OtlpConverter::new();
        for r in &requests {
            assert_eq!(converter.convert(&r.request, &mut back), 0);
        }
        assert_eq!(render(&back), render(&Batch::new(input)));
    }

    #[test]
    fn incomplete_histograms_fall_back_to_component_series() {
        let mut i = Interner::new();
        let h = MetricKind::Histogram;
        // No +Inf bucket and no _count: cannot be one OTLP histogram point.
        let input = vec![
            series(&mut i, "size_bucket", &[("le", "10")], h, 2.0),
            series(&mut i, "size_sum", &[], h, 7.0),
        ];
        let requests = series_to_requests(&input, &[], 1000);
        assert_eq!(
            shapes(&requests[0].request),
            vec![
                ("size_bucket".to_string(), "monotonic sum"),
                ("size_sum".to_string(), "monotonic sum"),
            ]
        );
        assert_eq!(requests[0].samples, 2);
    }

    #[test]
    fn requests_hold_at_most_the_configured_data_points_and_keep_every_sample() {
        let mut i = Interner::new();
        let input: Vec<Series> = (0..25)
            .map(|n| {
                series(
                    &mut i,
                    "g",
                    &[("n", &n.to_string())],
                    MetricKind::Gauge,
                    n as f64,
                )
            })
            .collect();
        let requests = series_to_requests(&input, &[("phoenix_variant", "b")], 10);
        let sizes: Vec<usize> = requests.iter().map(|r| r.data_points).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        assert_eq!(requests.iter().map(|r| r.samples).sum::<u64>(), 25);
        let mut back = Batch::default();
        let mut converter = OtlpConverter::new();
        for r in &requests {
            converter.convert(&r.request, &mut back);
        }
        assert_eq!(back.len(), 25);
        assert!(back
            .series
            .iter()
            .all(|s| s.labels.get("phoenix_variant") == Some("b")));
    }

    #[test]
    fn grpc_codes_are_classified_like_the_otlp_specification() {
        assert_eq!(
            classify_grpc(tonic::Code::Unavailable),
            RetryDecision::Retry
        );
        assert_eq!(
            classify_grpc(tonic::Code::ResourceExhausted),
            RetryDecision::Retry
        );
        assert_eq!(
            classify_grpc(tonic::Code::InvalidArgument),
            RetryDecision::Reject
        );
        assert_eq!(
            classify_grpc(tonic::Code::Unauthenticated),
            RetryDecision::Reject
        );
    }

    #[test]
    fn http_endpoints_without_a_path_get_v1_metrics() {
        assert_eq!(
            http_url("http://collector:4318"),
            "http://collector:4318/v1/metrics"
        );
        assert_eq!(
            http_url("http://collector:4318/"),
            "http://collector:4318/v1/metrics"
        );
        assert_eq!(
            http_url("https://x.example/otlp/v1/metrics"),
            "https://x.example/otlp/v1/metrics"
        );
    }
}
