//! OTLP receivers end to end inside one process: gRPC, HTTP protobuf and HTTP JSON requests
//! reach the pipeline and come out on `/metrics`; malformed bodies get 400.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use phoenix_pipeline::agent::Agent;
use phoenix_pipeline::config::AgentConfig;
use prost::Message;

fn request(service: &str, name: &str, value: f64) -> ExportMetricsServiceRequest {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: now_ns,
                            value: Some(number_data_point::Value::AsDouble(value)),
                            ..Default::default()
                        }],
                        aggregation_temporality: 2,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn start() -> Agent {
    let yaml = "receivers:\n  otlp:\n    grpc_listen: 127.0.0.1:0\n    http_listen: 127.0.0.1:0\npipelines:\n  live: {}\nexporters:\n  prometheus:\n    listen: 127.0.0.1:0\n";
    Agent::start(
        AgentConfig::load(yaml).expect("valid config"),
        Duration::from_secs(3600),
    )
    .await
    .expect("agent starts")
}

async fn metrics(agent: &Agent) -> String {
    agent.engine().flush().await.expect("engine alive");
    reqwest::get(format!(
        "http://{}/metrics",
        agent.metrics_address.expect("metrics address")
    ))
    .await
    .expect("GET /metrics")
    .text()
    .await
    .expect("body")
}

#[tokio::test]
async fn grpc_export_reaches_the_pipeline() {
    let agent = start().await;
    let mut client = MetricsServiceClient::connect(format!(
        "http://{}",
        agent.otlp_grpc_address.expect("grpc address")
    ))
    .await
    .expect("grpc connect");
    let response = client
        .export(request("checkout", "orders.placed", 7.0))
        .await
        .expect("export succeeds");
    assert!(response.get_ref().partial_success.is_none());
    let text = metrics(&agent).await;
    assert!(
        text.contains("orders_placed_total{job=\"checkout\"} 7"),
        "{text}"
    );
}

#[tokio::test]
async fn http_protobuf_and_json_exports_reach_the_pipeline() {
    let agent = start().await;
    let url = format!(
        "http://{}/v1/metrics",
        agent.otlp_http_address.expect("http address")
    );
    let client = reqwest::Client::new();
    let protobuf = client
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
        .body(request("cart", "items.added", 3.0).encode_to_vec())
        .send()
        .await
        .expect("post protobuf");
    assert_eq!(protobuf.status(), 200);

    let json = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}}]},"scopeMetrics":[{"metrics":[{"name":"room.temperature","gauge":{"dataPoints":[{"asDouble":21.5,"timeUnixNano":"1700000000000000000"}]}}]}]}]}"#;
    let response = client
        .post(&url)
        .header("Content-Type", "application/json")
        .body(json)
        .send()
        .await
        .expect("post json");
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );

    let text = metrics(&agent).await;
    assert!(text.contains("items_added_total{job=\"cart\"} 3"), "{text}");
    assert!(
        text.contains("room_temperature{job=\"web\"} 21.5"),
        "{text}"
    );
}

#[tokio::test]
async fn malformed_otlp_bodies_get_400_with_the_reason() {
    let agent = start().await;
    let url = format!(
        "http://{}/v1/metrics",
        agent.otlp_http_address.expect("http address")
    );
    let client = reqwest::Client::new();
    let bad = client
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
        .body(vec![0x0a, 0xff, 0xff])
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 400);
    assert!(bad
        .text()
        .await
        .unwrap_or_default()
        .contains("bad OTLP protobuf"));
    let bad = client
        .post(&url)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 400);
    assert!(bad
        .text()
        .await
        .unwrap_or_default()
        .contains("bad OTLP JSON"));
    // A gauge point keeps working afterwards.
    let ok = client
        .post(&url)
        .header("Content-Type", "application/x-protobuf")
        .body(
            ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    scope_metrics: vec![ScopeMetrics {
                        metrics: vec![Metric {
                            name: "g".into(),
                            data: Some(metric::Data::Gauge(Gauge {
                                data_points: vec![NumberDataPoint {
                                    value: Some(number_data_point::Value::AsInt(4)),
                                    ..Default::default()
                                }],
                            })),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec(),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 200);
}
