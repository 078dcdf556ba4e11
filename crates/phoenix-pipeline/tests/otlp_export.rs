//! The OTLP exporter against real peers: Phoenix's own OTLP receivers (tonic gRPC server
//! and axum HTTP server) as the far side, a peer answering UNAVAILABLE / 503 before it
//! accepts, peers refusing for good, a full queue, and invalid exporter settings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use phoenix_pipeline::agent::Agent;
use phoenix_pipeline::config::{AgentConfig, OtlpExporterConfig, OtlpProtocol};
use phoenix_pipeline::exporter::Exporter;
use phoenix_pipeline::model::{Interner, Label, Labels, MetricKind, Sample, Series};
use phoenix_pipeline::otlp_export::OtlpExporter;
use phoenix_pipeline::remote_write::RemoteWriteEncoder;
use phoenix_pipeline::telemetry::Telemetry;

const DEADLINE: Duration = Duration::from_secs(15);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn series(
    interner: &mut Interner,
    name: &str,
    labels: &[(&str, &str)],
    kind: MetricKind,
    value: f64,
    timestamp_ms: i64,
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
        vec![Sample::new(timestamp_ms, value)],
    )
}

/// A counter, a gauge and a full histogram, with the `/metrics` lines each must become.
fn payload() -> (Vec<Series>, Vec<&'static str>) {
    let mut i = Interner::new();
    let ts = now_ms();
    let h = MetricKind::Histogram;
    let series = vec![
        series(
            &mut i,
            "orders_total",
            &[("job", "shop")],
            MetricKind::Counter,
            7.0,
            ts,
        ),
        series(
            &mut i,
            "queue_depth",
            &[("job", "shop")],
            MetricKind::Gauge,
            3.0,
            ts,
        ),
        series(
            &mut i,
            "latency_bucket",
            &[("job", "shop"), ("le", "0.5")],
            h,
            2.0,
            ts,
        ),
        series(
            &mut i,
            "latency_bucket",
            &[("job", "shop"), ("le", "+Inf")],
            h,
            5.0,
            ts,
        ),
        series(&mut i, "latency_sum", &[("job", "shop")], h, 4.25, ts),
        series(&mut i, "latency_count", &[("job", "shop")], h, 5.0, ts),
    ];
    let expected = vec![
        r#"orders_total{job="shop"} 7"#,
        r#"queue_depth{job="shop"} 3"#,
        r#"latency_bucket{job="shop",le="0.5"} 2"#,
        r#"latency_bucket{job="shop",le="+Inf"} 5"#,
        r#"latency_sum{job="shop"} 4.25"#,
        r#"latency_count{job="shop"} 5"#,
    ];
    (series, expected)
}

/// A Phoenix agent with both OTLP receivers, exposing what it received on `/metrics`.
async fn far_side() -> Agent {
    let yaml = "receivers:\n  otlp:\n    grpc_listen: 127.0.0.1:0\n    http_listen: 127.0.0.1:0\npipelines:\n  live: {}\nexporters:\n  prometheus:\n    listen: 127.0.0.1:0\n";
    Agent::start(
        AgentConfig::load(yaml).expect("valid far-side config"),
        Duration::from_secs(3600),
    )
    .await
    .expect("far side starts")
}

/// Polls the far side's `/metrics` until every expected line is there.
async fn wait_for_lines(agent: &Agent, expected: &[&str]) -> String {
    let url = format!(
        "http://{}/metrics",
        agent.metrics_address.expect("metrics address")
    );
    let started = Instant::now();
    loop {
        agent.engine().flush().await.expect("engine alive");
        let text = reqwest::get(&url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body");
        if expected.iter().all(|line| text.contains(line)) {
            return text;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "missing lines after {DEADLINE:?}: {:?}\n{text}",
            expected
                .iter()
                .filter(|l| !text.contains(*l))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fast_retries(mut config: OtlpExporterConfig) -> OtlpExporterConfig {
    config.min_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(50);
    config.timeout = Duration::from_secs(5);
    config
}

#[tokio::test]
async fn grpc_exporter_delivers_counters_gauges_and_histograms_to_phoenix_otlp_receiver() {
    let far = far_side().await;
    let telemetry = Arc::new(Telemetry::default());
    let config = OtlpExporterConfig::with_endpoint(
        format!("http://{}", far.otlp_grpc_address.expect("grpc address")),
        OtlpProtocol::Grpc,
    );
    let exporter = OtlpExporter::start(config, telemetry.clone()).expect("exporter starts");
    let (series, expected) = payload();
    exporter.export(&series, &[]);
    wait_for_lines(&far, &expected).await;
    wait_for("samples counted", || {
        Telemetry::get(&telemetry.exporter_samples_sent_total) == 6
    })
    .await;
    assert_eq!(Telemetry::get(&telemetry.exporter_requests_sent_total), 1);
    assert_eq!(Telemetry::get(&far.telemetry().receiver_samples_total), 6);
}

#[tokio::test]
async fn http_exporter_delivers_to_phoenix_otlp_http_receiver_with_headers_and_small_batches() {
    let far = far_side().await;
    let telemetry = Arc::new(Telemetry::default());
    let mut config = OtlpExporterConfig::with_endpoint(
        format!("http://{}", far.otlp_http_address.expect("http address")),
        OtlpProtocol::Http,
    );
    config.max_data_points_per_request = 2;
    config
        .headers
        .insert("x-scope-orgid".into(), "tenant-1".into());
    let exporter = OtlpExporter::start(config, telemetry.clone()).expect("exporter starts");
    let (series, expected) = payload();
    exporter.export(&series, &[("phoenix_variant", "candidate")]);
    assert_eq!(expected.len(), 6);
    let tagged = [
        r#"orders_total{job="shop",phoenix_variant="candidate"} 7"#,
        r#"queue_depth{job="shop",phoenix_variant="candidate"} 3"#,
        r#"latency_bucket{job="shop",le="0.5",phoenix_variant="candidate"} 2"#,
        r#"latency_bucket{job="shop",le="+Inf",phoenix_variant="candidate"} 5"#,
        r#"latency_sum{job="shop",phoenix_variant="candidate"} 4.25"#,
        r#"latency_count{job="shop",phoenix_variant="candidate"} 5"#,
    ];
    wait_for_lines(&far, &tagged).await;
    // Four data points (counter, gauge, one histogram point) in requests of two.
    wait_for("two requests", || {
        Telemetry::get(&telemetry.exporter_requests_sent_total) == 2
    })
    .await;
    assert_eq!(Telemetry::get(&telemetry.exporter_samples_sent_total), 6);
}

#[tokio::test]
async fn configured_otlp_exporter_forwards_remote_write_input_end_to_end() {
    let far = far_side().await;
    let yaml = format!(
        "receivers:\n  remote_write:\n    listen: 127.0.0.1:0\npipelines:\n  live:\n    processors:\n      - type: relabel\n        rules:\n          - action: labeldrop\n            regex: pod\nexporters:\n  otlp:\n    endpoint: http://{}\n    protocol: grpc\n    timeout: 5s\n",
        far.otlp_grpc_address.expect("grpc address")
    );
    let near = Agent::start(
        AgentConfig::load(&yaml).expect("valid near-side config"),
        Duration::from_secs(3600),
    )
    .await
    .expect("near side starts");
    let mut interner = Interner::new();
    let ts = now_ms();
    let mut input: Vec<Series> = (0..3)
        .map(|pod| {
            series(
                &mut interner,
                "http_requests_total",
                &[("job", "web"), ("pod", &format!("p{pod}"))],
                MetricKind::Counter,
                10.0,
                ts,
            )
        })
        .collect();
    input.push(series(
        &mut interner,
        "up",
        &[("job", "web")],
        MetricKind::Gauge,
        1.0,
        ts,
    ));
    let body = RemoteWriteEncoder::new().encode(&input, &[]);
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/write",
            near.remote_write_address.expect("remote write address")
        ))
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("remote write");
    assert!(response.status().is_success(), "{}", response.status());
    near.engine().flush().await.expect("near engine alive");
    // The relabel step dropped `pod`; the three pods' samples share one series whose
    // last value the far side exposes.
    let text = wait_for_lines(
        &far,
        &[r#"http_requests_total{job="web"} 10"#, r#"up{job="web"} 1"#],
    )
    .await;
    assert!(!text.contains("pod="), "{text}");
}

/// A gRPC peer answering `failures` with `code` before it accepts.
#[derive(Debug)]
struct FlakyPeer {
    calls: Arc<AtomicUsize>,
    failures: usize,
    code: tonic::Code,
}

#[tonic::async_trait]
impl MetricsService for FlakyPeer {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call < self.failures {
            Err(tonic::Status::new(self.code, "not now"))
        } else {
            Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
        }
    }
}

async fn flaky_grpc_peer(failures: usize, code: tonic::Code) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let calls = Arc::new(AtomicUsize::new(0));
    let peer = FlakyPeer {
        calls: calls.clone(),
        failures,
        code,
    };
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(peer))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (format!("http://{address}"), calls)
}

#[tokio::test]
async fn grpc_unavailable_is_retried_until_the_peer_accepts() {
    let (endpoint, calls) = flaky_grpc_peer(2, tonic::Code::Unavailable).await;
    let telemetry = Arc::new(Telemetry::default());
    let config = fast_retries(OtlpExporterConfig::with_endpoint(
        endpoint,
        OtlpProtocol::Grpc,
    ));
    let exporter = OtlpExporter::start(config, telemetry.clone()).expect("exporter starts");
    exporter.export(&payload().0, &[]);
    wait_for("delivery after retries", || {
        Telemetry::get(&telemetry.exporter_requests_sent_total) == 1
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(Telemetry::get(&telemetry.exporter_retries_total), 2);
    assert_eq!(Telemetry::get(&telemetry.exporter_requests_failed_total), 0);
}

#[tokio::test]
async fn grpc_invalid_argument_is_not_retried() {
    let (endpoint, calls) = flaky_grpc_peer(usize::MAX, tonic::Code::InvalidArgument).await;
    let telemetry = Arc::new(Telemetry::default());
    let config = fast_retries(OtlpExporterConfig::with_endpoint(
        endpoint,
        OtlpProtocol::Grpc,
    ));
    let exporter = OtlpExporter::start(config, telemetry.clone()).expect("exporter starts");
    exporter.export(&payload().0, &[]);
    wait_for("rejection", || {
        Telemetry::get(&telemetry.exporter_requests_rejected_total) == 1
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(Telemetry::get(&telemetry.exporter_retries_total), 0);
    assert_eq!(Telemetry::get(&telemetry.exporter_requests_sent_total), 0);
}

/// An HTTP peer answering `failures` with `status` before it accepts.
async fn flaky_http_peer(failures: usize, status: u16) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let router = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                let call = counter.fetch_add(1, Ordering::SeqCst);
                if call < failures {
                    axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{address}"), calls)
}

#[tokio::test]
async fn http_503_and_429_are_retried_and_400_is_not() {
    for (status, failures, retried) in [(503u16, 2usize, true), (429, 1, true), (400, 1, false)] {
        let (endpoint, calls) = flaky_http_peer(failures, status).await;
        let telemetry = Arc::new(Telemetry::default());
        let config = fast_retries(OtlpExporterConfig::with_endpoint(
            endpoint,
            OtlpProtocol::Http,
        ));
        let exporter = OtlpExporter::start(config, telemetry.clone()).expect("exporter starts");
        exporter.export(&payload().0, &[]);
        if retried {
            wait_for("delivery after retries", || {
                Telemetry::get(&telemetry.exporter_requests_sent_total) == 1
            })
            .await;
            assert_eq!(calls.load(Ordering::SeqCst), failures + 1, "HTTP {status}");
            assert_eq!(
                Telemetry::get(&telemetry.exporter_retries_total),
                failures as u64
            );
        } else {
            wait_for("rejection", || {
                Telemetry::get(&telemetry.exporter_requests_rejected_total) == 1
            })
            .await;
            assert_eq!(calls.load(Ordering::SeqCst), 1, "HTTP {status}");
            assert_eq!(Telemetry::get(&telemetry.exporter_retries_total), 0);
        }
    }
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_blocking() {
    // Nobody listens here: the one worker sits in a long backoff with its first request.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let telemetry = Arc::new(Telemetry::default());
    let mut config =
        OtlpExporterConfig::with_endpoint(format!("http://{closed}"), OtlpProtocol::Http);
    config.concurrency = 1;
    config.queue_capacity_requests = 1;
    config.max_data_points_per_request = 1;
    config.min_backoff = Duration::from_secs(60);
    config.max_backoff = Duration::from_secs(60);
    let exporter = OtlpExporter::start(config, telemetry.clone()).expect("exporter starts");
    // Four data points, one per request: at most one in flight and one queued.
    exporter.export(&payload().0, &[]);
    let dropped = Telemetry::get(&telemetry.exporter_queue_dropped_requests_total);
    assert!((2..=3).contains(&dropped), "dropped {dropped}");
    assert!(Telemetry::get(&telemetry.exporter_queue_dropped_samples_total) >= 2);
}

#[test]
fn invalid_otlp_exporter_settings_are_refused_with_their_paths() {
    let yaml = "receivers:\n  remote_write:\n    listen: 127.0.0.1:9201\npipelines:\n  live: {}\nexporters:\n  otlp:\n    endpoint: https://collector:4317\n    headers:\n      Bad Header: x\n    concurrency: 0\n    min_backoff: 5s\n    max_backoff: 1s\n";
    let errors = AgentConfig::load(yaml).expect_err("invalid").0;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "exporters.otlp.endpoint",
            "exporters.otlp.headers.Bad Header",
            "exporters.otlp.concurrency",
            "exporters.otlp.min_backoff",
        ],
        "{errors:?}"
    );
    assert!(errors[0].message.contains("TLS"), "{errors:?}");

    let yaml = "receivers:\n  remote_write:\n    listen: 127.0.0.1:9201\npipelines:\n  live: {}\nexporters:\n  otlp:\n    endpoint: collector:4318\n    protocol: thrift\n";
    let errors = AgentConfig::load(yaml).expect_err("invalid").0;
    assert_eq!(errors[0].path, "exporters.otlp.protocol", "{errors:?}");

    let yaml = "receivers:\n  remote_write:\n    listen: 127.0.0.1:9201\npipelines:\n  live: {}\nexporters:\n  otlp:\n    endpoint: collector:4318\n    protocol: http\n";
    let errors = AgentConfig::load(yaml).expect_err("invalid").0;
    assert_eq!(errors[0].path, "exporters.otlp.endpoint", "{errors:?}");

    let yaml = "receivers:\n  remote_write:\n    listen: 127.0.0.1:9201\npipelines:\n  live: {}\nexporters:\n  otlp:\n    endpoint: https://otlp.example/v1/metrics\n    protocol: http\n    headers:\n      authorization: Bearer abc\n";
    assert!(AgentConfig::load(yaml).is_ok());
}
