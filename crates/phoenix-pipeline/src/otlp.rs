//! OTLP metrics receivers: gRPC (`MetricsService/Export`) and HTTP (`POST /v1/metrics`,
//! protobuf or JSON), and the mapping of OTLP data points into Prometheus-shaped series.
//!
//! Mapping (close to Prometheus' OTLP ingestion): names and attribute keys are sanitised to
//! `[a-zA-Z0-9_:]`; monotonic sums become counters with a `_total` suffix, other sums and
//! gauges become gauges; explicit histograms become `_bucket{le}`/`_sum`/`_count`;
//! exponential histograms become the same classic shape with `le` at the exponential
//! bucket bounds (negative and zero buckets folded into `le="0"`); summaries become
//! `{quantile}`/`_sum`/`_count`. `service.namespace/service.name` becomes `job` and
//! `service.instance.id` becomes `instance`; other resource attributes are not copied.
//! Delta temporality is turned into cumulative by accumulating per series.

use std::borrow::Cow;
use std::sync::Arc;

use hashbrown::HashMap;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, NumberDataPoint};
use parking_lot::Mutex;

use crate::engine::EngineHandle;
use crate::model::{Batch, Interner, Labels, MetricKind, Sample, Series, SeriesId, Sym};
use crate::telemetry::Telemetry;

const TEMPORALITY_DELTA: i32 = 1;

/// Why an OTLP request was refused.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// Malformed protobuf.
    #[error("bad OTLP protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// Malformed JSON.
    #[error("bad OTLP JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Unsupported content type.
    #[error("unsupported content type {0:?} (use application/x-protobuf or application/json)")]
    ContentType(String),
}

/// Turns OTLP requests into batches; keeps the running sums of delta series.
#[derive(Debug, Default)]
pub struct OtlpConverter {
    interner: Interner,
    delta_totals: HashMap<SeriesId, f64, ahash::RandomState>,
}

/// Replaces every character outside `[a-zA-Z0-9_:]` with `_` (and a leading digit).
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn sanitize_label(name: &str) -> String {
    sanitize_name(name).replace(':', "_")
}

fn value_string(
    value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>,
) -> Option<String> {
    match value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn resource_labels(attributes: &[KeyValue]) -> Vec<(String, String)> {
    let get = |key: &str| {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| value_string(&kv.value))
    };
    let mut labels = Vec::new();
    match (get("service.namespace"), get("service.name")) {
        (Some(ns), Some(name)) => labels.push(("job".to_string(), format!("{ns}/{name}"))),
        (None, Some(name)) => labels.push(("job".to_string(), name)),
        _ => {}
    }
    if let Some(instance) = get("service.instance.id") {
        labels.push(("instance".to_string(), instance));
    }
    labels
}

fn nanos_to_ms(nanos: u64) -> i64 {
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

fn number(point: &NumberDataPoint) -> f64 {
    match point.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => f64::NAN,
    }
}

/// Bound of exponential bucket `index` at `scale`: `base^(index + 1)`, `base = 2^(2^-scale)`.
fn exponential_upper_bound(scale: i32, index: i64) -> f64 {
    let base = 2f64.powf(2f64.powi(-scale));
    base.powf((index + 1) as f64)
}

/// One value to write, with its kind and whether it is a delta to accumulate.
#[derive(Debug, Clone, Copy)]
struct Point {
    kind: MetricKind,
    timestamp_ms: i64,
    value: f64,
    delta: bool,
}

struct PointWriter<'a> {
    converter: &'a mut OtlpConverter,
    out: &'a mut Batch,
    base_labels: Vec<(String, String)>,
}

impl PointWriter<'_> {
    fn push(
        &mut self,
        name: &str,
        attributes: &[KeyValue],
        extra: Option<(&str, String)>,
        point: Point,
    ) {
        let Point {
            kind,
            timestamp_ms,
            value,
            delta,
        } = point;
        let interner = &mut self.converter.interner;
        let mut labels: Vec<(Cow<'_, str>, Cow<'_, str>)> =
            Vec::with_capacity(attributes.len() + self.base_labels.len() + 1);
        for (k, v) in &self.base_labels {
            labels.push((Cow::Borrowed(k), Cow::Borrowed(v)));
        }
        for kv in attributes {
            if let Some(v) = value_string(&kv.value) {
                labels.push((Cow::Owned(sanitize_label(&kv.key)), Cow::Owned(v)));
            }
        }
        if let Some((k, v)) = extra {
            labels.push((Cow::Borrowed(k), Cow::Owned(v)));
        }
        let labels = Labels::from_pairs(labels);
        let name: Sym = interner.intern(name);
        let mut series = Series::new(name, labels, kind, vec![Sample::new(timestamp_ms, value)]);
        if delta {
            let total = self
                .converter
                .delta_totals
                .entry(series.id())
                .or_insert(0.0);
            if value.is_finite() {
                *total += value;
            }
            series.samples[0].value = *total;
        }
        self.out.series.push(series);
    }
}

impl OtlpConverter {
    /// A converter with empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the request's data points to `out`; returns how many points were rejected
    /// (no value).
    pub fn convert(&mut self, request: &ExportMetricsServiceRequest, out: &mut Batch) -> u64 {
        if self.interner.len() > 1 << 20 {
            self.interner.clear();
        }
        let mut rejected = 0;
        for resource_metrics in &request.resource_metrics {
            let base_labels = resource_metrics
                .resource
                .as_ref()
                .map(|r| resource_labels(&r.attributes))
                .unwrap_or_default();
            let mut writer = PointWriter {
                converter: self,
                out,
                base_labels,
            };
            for scope in &resource_metrics.scope_metrics {
                for m in &scope.metrics {
                    rejected += writer.metric(m);
                }
            }
        }
        rejected
    }
}

impl PointWriter<'_> {
    fn metric(&mut self, m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> u64 {
        let base = sanitize_name(&m.name);
        let mut rejected = 0;
        match &m.data {
            Some(metric::Data::Gauge(g)) => {
                for p in &g.data_points {
                    if p.value.is_none() {
                        rejected += 1;
                        continue;
                    }
                    self.push(
                        &base,
                        &p.attributes,
                        None,
                        Point {
                            kind: MetricKind::Gauge,
                            timestamp_ms: nanos_to_ms(p.time_unix_nano),
                            value: number(p),
                            delta: false,
                        },
                    );
                }
            }
            Some(metric::Data::Sum(s)) => {
                let (name, kind) = if s.is_monotonic {
                    let name = if base.ends_with("_total") {
                        base.clone()
                    } else {
                        format!("{base}_total")
                    };
                    (name, MetricKind::Counter)
                } else {
                    (base.clone(), MetricKind::Gauge)
                };
                let delta = s.aggregation_temporality == TEMPORALITY_DELTA && s.is_monotonic;
                for p in &s.data_points {
                    if p.value.is_none() {
                        rejected += 1;
                        continue;
                    }
                    self.push(
                        &name,
                        &p.attributes,
                        None,
                        Point {
                            kind,
                            timestamp_ms: nanos_to_ms(p.time_unix_nano),
                            value: number(p),
                            delta,
                        },
                    );
                }
            }
            Some(metric::Data::Histogram(h)) => {
                let delta = h.aggregation_temporality == TEMPORALITY_DELTA;
                let bucket = format!("{base}_bucket");
                for p in &h.data_points {
                    let ts = nanos_to_ms(p.time_unix_nano);
                    let mut cumulative = 0u64;
                    for (i, count) in p.bucket_counts.iter().enumerate() {
                        cumulative += count;
                        let le = p
                            .explicit_bounds
                            .get(i)
                            .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                        self.push(
                            &bucket,
                            &p.attributes,
                            Some(("le", le)),
                            Point {
                                kind: MetricKind::Histogram,
                                timestamp_ms: ts,
                                value: cumulative as f64,
                                delta,
                            },
                        );
                    }
                    if p.bucket_counts.len() <= p.explicit_bounds.len() {
                        self.push(
                            &bucket,
                            &p.attributes,
                            Some(("le", "+Inf".into())),
                            Point {
                                kind: MetricKind::Histogram,
                                timestamp_ms: ts,
                                value: p.count as f64,
                                delta,
                            },
                        );
                    }
                    if let Some(sum) = p.sum {
                        self.push(
                            &format!("{base}_sum"),
                            &p.attributes,
                            None,
                            Point {
                                kind: MetricKind::Histogram,
                                timestamp_ms: ts,
                                value: sum,
                                delta,
                            },
                        );
                    }
                    self.push(
                        &format!("{base}_count"),
                        &p.attributes,
                        None,
                        Point {
                            kind: MetricKind::Histogram,
                            timestamp_ms: ts,
                            value: p.count as f64,
                            delta,
                        },
                    );
                }
            }
            Some(metric::Data::ExponentialHistogram(h)) => {
                let delta = h.aggregation_temporality == TEMPORALITY_DELTA;
                let bucket = format!("{base}_bucket");
                for p in &h.data_points {
                    let ts = nanos_to_ms(p.time_unix_nano);
                    let negative: u64 = p
                        .negative
                        .as_ref()
                        .map_or(0, |b| b.bucket_counts.iter().sum());
                    let mut cumulative = negative + p.zero_count;
                    let kind = MetricKind::ExponentialHistogram;
                    self.push(
                        &bucket,
                        &p.attributes,
                        Some(("le", "0".into())),
                        Point {
                            kind,
                            timestamp_ms: ts,
                            value: cumulative as f64,
                            delta,
                        },
                    );
                    if let Some(positive) = &p.positive {
                        for (i, count) in positive.bucket_counts.iter().enumerate() {
                            cumulative += count;
                            let le = exponential_upper_bound(
                                p.scale,
                                i64::from(positive.offset) + i as i64,
                            );
                            self.push(
                                &bucket,
                                &p.attributes,
                                Some(("le", le.to_string())),
                                Point {
                                    kind,
                                    timestamp_ms: ts,
                                    value: cumulative as f64,
                                    delta,
                                },
                            );
                        }
                    }
                    self.push(
                        &bucket,
                        &p.attributes,
                        Some(("le", "+Inf".into())),
                        Point {
                            kind,
                            timestamp_ms: ts,
                            value: p.count as f64,
                            delta,
                        },
                    );
                    if let Some(sum) = p.sum {
                        self.push(
                            &format!("{base}_sum"),
                            &p.attributes,
                            None,
                            Point {
                                kind,
                                timestamp_ms: ts,
                                value: sum,
                                delta,
                            },
                        );
                    }
                    self.push(
                        &format!("{base}_count"),
                        &p.attributes,
                        None,
                        Point {
                            kind,
                            timestamp_ms: ts,
                            value: p.count as f64,
                            delta,
                        },
                    );
                }
            }
            Some(metric::Data::Summary(s)) => {
                for p in &s.data_points {
                    let ts = nanos_to_ms(p.time_unix_nano);
                    for q in &p.quantile_values {
                        self.push(
                            &base,
                            &p.attributes,
                            Some(("quantile", q.quantile.to_string())),
                            Point {
                                kind: MetricKind::Summary,
                                timestamp_ms: ts,
                                value: q.value,
                                delta: false,
                            },
                        );
                    }
                    self.push(
                        &format!("{base}_sum"),
                        &p.attributes,
                        None,
                        Point {
                            kind: MetricKind::Summary,
                            timestamp_ms: ts,
                            value: p.sum,
                            delta: false,
                        },
                    );
                    self.push(
                        &format!("{base}_count"),
                        &p.attributes,
                        None,
                        Point {
                            kind: MetricKind::Summary,
                            timestamp_ms: ts,
                            value: p.count as f64,
                            delta: false,
                        },
                    );
                }
            }
            None => rejected += 1,
        }
        rejected
    }
}

/// Shared state of the OTLP receivers.
#[derive(Debug, Clone)]
pub struct OtlpState {
    engine: EngineHandle,
    converter: Arc<Mutex<OtlpConverter>>,
    telemetry: Arc<Telemetry>,
}

impl OtlpState {
    /// State forwarding converted batches to `engine`.
    pub fn new(engine: EngineHandle, telemetry: Arc<Telemetry>) -> Self {
        Self {
            engine,
            converter: Arc::new(Mutex::new(OtlpConverter::new())),
            telemetry,
        }
    }

    /// Converts and forwards one request; returns the rejected point count.
    pub async fn ingest(
        &self,
        request: &ExportMetricsServiceRequest,
    ) -> Result<u64, crate::engine::EngineStopped> {
        let mut batch = Batch::default();
        let rejected = self.converter.lock().convert(request, &mut batch);
        Telemetry::add(&self.telemetry.receiver_requests_total, 1);
        Telemetry::add(&self.telemetry.receiver_series_total, batch.len() as u64);
        Telemetry::add(
            &self.telemetry.receiver_samples_total,
            batch.sample_count() as u64,
        );
        if !batch.is_empty() {
            self.engine.send_batch(batch).await?;
        }
        Ok(rejected)
    }
}

fn response(rejected: u64) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: "data points without a value".into(),
        }),
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpState {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let rejected = self
            .ingest(request.get_ref())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(tonic::Response::new(response(rejected)))
    }
}

/// The gRPC service (serve it with `tonic::transport::Server`).
pub fn grpc_service(state: OtlpState) -> MetricsServiceServer<OtlpState> {
    MetricsServiceServer::new(state)
}

async fn http_export(
    axum::extract::State(state): axum::extract::State<OtlpState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use prost::Message;
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-protobuf")
        .to_string();
    let json = content_type.starts_with("application/json");
    let decoded: Result<ExportMetricsServiceRequest, OtlpError> = if json {
        serde_json::from_slice(&body).map_err(OtlpError::from)
    } else if content_type.starts_with("application/x-protobuf")
        || content_type.starts_with("application/protobuf")
    {
        ExportMetricsServiceRequest::decode(body.as_ref()).map_err(OtlpError::from)
    } else {
        Err(OtlpError::ContentType(content_type.clone()))
    };
    let request = match decoded {
        Ok(request) => request,
        Err(e) => {
            Telemetry::add(&state.telemetry.receiver_request_errors_total, 1);
            return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    match state.ingest(&request).await {
        Ok(rejected) => {
            let reply = response(rejected);
            if json {
                let text = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".into());
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    text,
                )
                    .into_response()
            } else {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                    reply.encode_to_vec(),
                )
                    .into_response()
            }
        }
        Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The OTLP/HTTP router (`POST /v1/metrics`).
pub fn http_router(state: OtlpState) -> axum::Router {
    axum::Router::new()
        .route("/v1/metrics", axum::routing::post(http_export))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::metrics::v1::{
        exponential_histogram_data_point::Buckets, summary_data_point::ValueAtQuantile,
        ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
        Metric, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn point(value: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs,
            time_unix_nano: 1_700_000_000_000_000_000,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", "checkout"),
                        kv("service.instance.id", "i-1"),
                        kv("host.arch", "x"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn metric(name: &str, data: metric::Data) -> Metric {
        Metric {
            name: name.into(),
            data: Some(data),
            ..Default::default()
        }
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

    #[test]
    fn monotonic_sums_become_counters_with_total_suffix_and_resource_labels() {
        let req = request(vec![
            metric(
                "http.server.requests",
                metric::Data::Sum(Sum {
                    data_points: vec![point(5.0, vec![kv("http.method", "GET")])],
                    aggregation_temporality: 2,
                    is_monotonic: true,
                }),
            ),
            metric(
                "queue.depth",
                metric::Data::Gauge(Gauge {
                    data_points: vec![point(3.0, vec![])],
                }),
            ),
        ]);
        let mut batch = Batch::default();
        assert_eq!(OtlpConverter::new().convert(&req, &mut batch), 0);
        assert_eq!(
            render(&batch),
            vec![
                r#"http_server_requests_total{http_method="GET",instance="i-1",job="checkout"} 5"#,
                r#"queue_depth{instance="i-1",job="checkout"} 3"#,
            ]
        );
        assert_eq!(
            batch
                .series
                .iter()
                .find(|s| s.name.ends_with("_total"))
                .map(|s| s.kind),
            Some(MetricKind::Counter)
        );
        assert_eq!(batch.series[0].samples[0].timestamp_ms, 1_700_000_000_000);
    }

    #[test]
    fn delta_sums_accumulate_into_cumulative_counters() {
        let delta = |v| {
            request(vec![metric(
                "jobs",
                metric::Data::Sum(Sum {
                    data_points: vec![point(v, vec![])],
                    aggregation_temporality: TEMPORALITY_DELTA,
                    is_monotonic: true,
                }),
            )])
        };
        let mut converter = OtlpConverter::new();
        let values: Vec<f64> = [2.0, 3.0, 4.0]
            .iter()
            .map(|v| {
                let mut batch = Batch::default();
                converter.convert(&delta(*v), &mut batch);
                batch.series[0].samples[0].value
            })
            .collect();
        assert_eq!(values, vec![2.0, 5.0, 9.0]);
    }

    #[test]
    fn explicit_histograms_become_cumulative_buckets() {
        let req = request(vec![metric(
            "latency",
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 6,
                    sum: Some(1.5),
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![0.1, 1.0],
                    time_unix_nano: 1_000_000,
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            }),
        )]);
        let mut batch = Batch::default();
        OtlpConverter::new().convert(&req, &mut batch);
        assert_eq!(
            render(&batch),
            vec![
                r#"latency_bucket{instance="i-1",job="checkout",le="+Inf"} 6"#,
                r#"latency_bucket{instance="i-1",job="checkout",le="0.1"} 1"#,
                r#"latency_bucket{instance="i-1",job="checkout",le="1"} 3"#,
                r#"latency_count{instance="i-1",job="checkout"} 6"#,
                r#"latency_sum{instance="i-1",job="checkout"} 1.5"#,
            ]
        );
    }

    #[test]
    fn exponential_histograms_become_buckets_at_exponential_bounds() {
        let req = request(vec![metric(
            "size",
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    count: 10,
                    sum: Some(20.0),
                    scale: 0,
                    zero_count: 1,
                    positive: Some(Buckets {
                        offset: 0,
                        bucket_counts: vec![3, 4],
                    }),
                    negative: Some(Buckets {
                        offset: 0,
                        bucket_counts: vec![2],
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            }),
        )]);
        let mut batch = Batch::default();
        OtlpConverter::new().convert(&req, &mut batch);
        let buckets: Vec<(String, f64)> = batch
            .series
            .iter()
            .filter(|s| &*s.name == "size_bucket")
            .map(|s| {
                (
                    s.labels
                        .get("le")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    s.samples[0].value,
                )
            })
            .collect();
        // Scale 0: base 2, bucket i covers (2^i, 2^(i+1)].
        assert_eq!(
            buckets,
            vec![
                ("0".into(), 3.0),
                ("2".into(), 6.0),
                ("4".into(), 10.0),
                ("+Inf".into(), 10.0)
            ]
        );
    }

    #[test]
    fn summaries_keep_quantiles() {
        let req = request(vec![metric(
            "rpc",
            metric::Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    count: 4,
                    sum: 2.0,
                    quantile_values: vec![ValueAtQuantile {
                        quantile: 0.5,
                        value: 0.4,
                    }],
                    ..Default::default()
                }],
            }),
        )]);
        let mut batch = Batch::default();
        OtlpConverter::new().convert(&req, &mut batch);
        assert!(render(&batch)
            .contains(&r#"rpc{instance="i-1",job="checkout",quantile="0.5"} 0.4"#.to_string()));
        assert_eq!(batch.len(), 3);
    }

    #[test]
    fn points_without_value_are_rejected_and_counted() {
        let mut empty = point(0.0, vec![]);
        empty.value = None;
        let req = request(vec![metric(
            "g",
            metric::Data::Gauge(Gauge {
                data_points: vec![empty],
            }),
        )]);
        let mut batch = Batch::default();
        assert_eq!(OtlpConverter::new().convert(&req, &mut batch), 1);
        assert!(batch.is_empty());
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(
            sanitize_name("http.server.duration"),
            "http_server_duration"
        );
        assert_eq!(sanitize_name("1xx-count"), "_1xx_count");
    }
}
