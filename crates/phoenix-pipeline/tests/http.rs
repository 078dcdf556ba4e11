//! HTTP edges against local peers: the remote write receiver refuses malformed bodies with
//! 400 and carries on; the remote write exporter delivers everything, retries 5xx and 429
//! with backoff, never retries other 4xx, and counts what its bounded queue drops.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use phoenix_pipeline::agent::Agent;
use phoenix_pipeline::config::{AgentConfig, RemoteWriteExporterConfig};
use phoenix_pipeline::exporter::{Exporter, RemoteWriteExporter};
use phoenix_pipeline::model::{Batch, Interner, Series};
use phoenix_pipeline::remote_write::{RemoteWriteDecoder, RemoteWriteEncoder};
use phoenix_pipeline::simulator::{Profile, Simulator, SimulatorConfig};
use phoenix_pipeline::telemetry::Telemetry;

/// A remote write peer answering with scripted statuses (then 204) and keeping what it got.
#[derive(Debug, Default)]
struct Peer {
    script: Mutex<Vec<u16>>,
    requests: AtomicUsize,
    received: Mutex<Vec<Series>>,
}

async fn peer_write(State(peer): State<Arc<Peer>>, body: Bytes) -> StatusCode {
    peer.requests.fetch_add(1, Ordering::SeqCst);
    let scripted = {
        let mut script = peer.script.lock();
        if script.is_empty() {
            None
        } else {
            Some(script.remove(0))
        }
    };
    if let Some(status) = scripted {
        return StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let mut decoder = RemoteWriteDecoder::default();
    let mut batch = Batch::default();
    match decoder.decode(&body, &mut Interner::new(), &mut batch) {
        Ok(_) => {
            peer.received.lock().extend(batch.series);
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn start_peer(script: Vec<u16>) -> (Arc<Peer>, String) {
    let peer = Arc::new(Peer {
        script: Mutex::new(script),
        ..Peer::default()
    });
    let app = Router::new()
        .route("/api/v1/write", post(peer_write))
        .with_state(peer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("bound address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("peer serves") });
    (peer, format!("http://{address}/api/v1/write"))
}

/// Polls `condition` until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    condition()
}

fn fast_retry(url: &str) -> RemoteWriteExporterConfig {
    let mut config = RemoteWriteExporterConfig::with_url(url);
    config.min_backoff = Duration::from_millis(1);
    config.max_backoff = Duration::from_millis(5);
    config.max_attempts = 4;
    config.concurrency = 1;
    config
}

fn sample_series(count: usize) -> Vec<Series> {
    let mut config = SimulatorConfig::new(Profile::App, 11);
    config.scale = 0.05;
    let mut batch = Simulator::new(config).next_batch();
    batch.series.truncate(count);
    batch.series
}

#[tokio::test]
async fn exporter_retries_5xx_and_429_then_delivers() {
    let (peer, url) = start_peer(vec![503, 429, 500]).await;
    let telemetry = Arc::new(Telemetry::default());
    let exporter = RemoteWriteExporter::start(fast_retry(&url), telemetry.clone()).unwrap();
    exporter.export(&sample_series(10), &[]);
    // The peer records before it answers: wait for the exporter to see the answer too.
    assert!(
        eventually(Duration::from_secs(10), || {
            peer.received.lock().len() == 10
                && Telemetry::get(&telemetry.exporter_requests_sent_total) == 1
        })
        .await
    );
    assert_eq!(peer.requests.load(Ordering::SeqCst), 4);
    assert_eq!(Telemetry::get(&telemetry.exporter_retries_total), 3);
    assert_eq!(Telemetry::get(&telemetry.exporter_requests_sent_total), 1);
}

#[tokio::test]
async fn exporter_never_retries_other_4xx() {
    let (peer, url) = start_peer(vec![400]).await;
    let telemetry = Arc::new(Telemetry::default());
    let exporter = RemoteWriteExporter::start(fast_retry(&url), telemetry.clone()).unwrap();
    exporter.export(&sample_series(5), &[]);
    assert!(
        eventually(Duration::from_secs(10), || Telemetry::get(
            &telemetry.exporter_requests_rejected_total
        ) == 1)
        .await
    );
    assert_eq!(peer.requests.load(Ordering::SeqCst), 1);
    assert_eq!(Telemetry::get(&telemetry.exporter_retries_total), 0);
}

#[tokio::test]
async fn exporter_gives_up_after_max_attempts_and_counts_it() {
    let (peer, url) = start_peer(vec![500; 10]).await;
    let telemetry = Arc::new(Telemetry::default());
    let exporter = RemoteWriteExporter::start(fast_retry(&url), telemetry.clone()).unwrap();
    exporter.export(&sample_series(5), &[]);
    assert!(
        eventually(Duration::from_secs(10), || Telemetry::get(
            &telemetry.exporter_requests_failed_total
        ) == 1)
        .await
    );
    assert_eq!(peer.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn exporter_splits_requests_and_counts_queue_overflow() {
    // No worker can drain the queue while the peer refuses to answer quickly: point the
    // exporter at a port nobody listens on with a long backoff, and a queue of 2.
    let mut config = RemoteWriteExporterConfig::with_url("http://127.0.0.1:9/api/v1/write");
    config.max_samples_per_request = 3;
    config.queue_capacity_requests = 2;
    config.concurrency = 1;
    config.min_backoff = Duration::from_secs(30);
    config.max_backoff = Duration::from_secs(30);
    let telemetry = Arc::new(Telemetry::default());
    let exporter = RemoteWriteExporter::start(config, telemetry.clone()).unwrap();
    // 30 samples in requests of 3: 10 requests; at most 1 in flight + 2 queued.
    exporter.export(&sample_series(30), &[]);
    let dropped = Telemetry::get(&telemetry.exporter_queue_dropped_requests_total);
    assert!((7..=8).contains(&dropped), "dropped {dropped}");
    assert_eq!(
        Telemetry::get(&telemetry.exporter_queue_dropped_samples_total),
        dropped * 3
    );
}

#[tokio::test]
async fn receiver_refuses_malformed_bodies_with_400_and_keeps_serving() {
    let (peer, url) = start_peer(vec![]).await;
    let yaml = format!(
        "receivers:\n  remote_write:\n    listen: 127.0.0.1:0\npipelines:\n  live:\n    processors:\n      - {{type: filter, drop: ['{{status=\"404\"}}']}}\nexporters:\n  remote_write:\n    url: {url}\n"
    );
    let agent = Agent::start(AgentConfig::load(&yaml).unwrap(), Duration::from_secs(3600))
        .await
        .unwrap();
    let address = agent.remote_write_address.unwrap();
    let client = reqwest::Client::new();
    let write_url = format!("http://{address}/api/v1/write");

    let bad = client
        .post(&write_url)
        .body(&b"definitely not snappy"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let reason = bad.text().await.unwrap();
    assert!(reason.contains("snappy"), "{reason}");
    let truncated = snap::raw::Encoder::new()
        .compress_vec(&[0x0a, 0x10, 0x0a])
        .unwrap();
    let bad = client
        .post(&write_url)
        .body(truncated)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("truncated"));

    let series = sample_series(200);
    let kept = series
        .iter()
        .filter(|s| s.labels.get("status") != Some("404"))
        .count();
    let body = RemoteWriteEncoder::new().encode(&series, &[]);
    let good = client
        .post(&write_url)
        .header("Content-Encoding", "snappy")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 204);
    assert!(
        eventually(Duration::from_secs(10), || peer.received.lock().len()
            == kept)
        .await
    );
    let telemetry = agent.telemetry();
    assert_eq!(Telemetry::get(&telemetry.receiver_request_errors_total), 2);
    assert_eq!(Telemetry::get(&telemetry.receiver_requests_total), 3);
    assert_eq!(Telemetry::get(&telemetry.receiver_series_total), 200);
}

#[tokio::test]
async fn metrics_endpoint_exposes_live_output_and_counters() {
    let yaml = "receivers:\n  remote_write:\n    listen: 127.0.0.1:0\npipelines:\n  live:\n    processors:\n      - {type: aggregate, by: [method]}\nexporters:\n  prometheus:\n    listen: 127.0.0.1:0\n";
    let agent = Agent::start(AgentConfig::load(yaml).unwrap(), Duration::from_secs(3600))
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let body = RemoteWriteEncoder::new().encode(&sample_series(400), &[]);
    let write_url = format!(
        "http://{}/api/v1/write",
        agent.remote_write_address.unwrap()
    );
    assert_eq!(
        client
            .post(&write_url)
            .body(body)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    agent.engine().flush().await.unwrap();
    let text = client
        .get(format!("http://{}/metrics", agent.metrics_address.unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("http_requests_total{method=\"GET\"} "),
        "{text}"
    );
    assert!(
        text.contains("phoenix_receiver_samples_total 400"),
        "{text}"
    );
    assert!(!text.contains("route="), "aggregated away: {text}");
}

#[tokio::test]
async fn reload_refuses_an_invalid_file_and_keeps_the_running_pipeline() {
    let yaml = "receivers:\n  remote_write:\n    listen: 127.0.0.1:0\npipelines:\n  live: {}\n";
    let mut agent = Agent::start(AgentConfig::load(yaml).unwrap(), Duration::from_secs(3600))
        .await
        .unwrap();
    let invalid = "receivers:\n  remote_write:\n    listen: 127.0.0.1:0\npipelines:\n  live:\n    processors:\n      - {type: topk, k: 0}\n";
    let error = agent.reload(invalid).await.unwrap_err().to_string();
    assert!(
        error.contains("pipelines.live.processors[0].topk.k: must be greater than 0"),
        "{error}"
    );
    assert_eq!(Telemetry::get(&agent.telemetry().engine_swaps_total), 0);
    let valid = "receivers:\n  remote_write:\n    listen: 127.0.0.1:0\npipelines:\n  live:\n    processors:\n      - {type: topk, k: 3}\n";
    agent.reload(valid).await.unwrap();
    assert_eq!(Telemetry::get(&agent.telemetry().engine_swaps_total), 1);
}
