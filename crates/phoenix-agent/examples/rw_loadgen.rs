//! Remote write load generator and sink for the vmagent side-by-side benchmark
//! (`crates/phoenix-agent/scripts/bench-vs-vmagent.sh`).
//!
//! `rw_loadgen sink --listen 127.0.0.1:PORT` answers 204 to every write, decodes it to
//! count the series and samples forwarded, and reports its counts at `GET /stats` (and
//! when stopped with Ctrl-C). `rw_loadgen send --url URL --series N --rounds R`
//! pre-encodes the `k8s` profile (N series, one sample each per tick) into requests of
//! 2,000 series and posts every request R times with a few connections, then prints what
//! was accepted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use clap::{Parser, Subcommand};
use phoenix_pipeline::model::{Batch, Interner};
use phoenix_pipeline::remote_write::{RemoteWriteDecoder, RemoteWriteEncoder};
use phoenix_pipeline::simulator::{Profile, Simulator, SimulatorConfig};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept remote writes and count them.
    Sink {
        #[arg(long)]
        listen: String,
    },
    /// Send the k8s profile to a remote write URL.
    Send {
        #[arg(long)]
        url: String,
        /// Series per tick (the k8s profile is scaled to about this many).
        #[arg(long, default_value_t = 200_000)]
        series: usize,
        /// Ticks pre-encoded (distinct timestamps).
        #[arg(long, default_value_t = 3)]
        ticks: usize,
        /// Times every pre-encoded request is sent.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Series per request.
        #[arg(long, default_value_t = 2_000)]
        series_per_request: usize,
        /// Concurrent connections.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
}

#[derive(Debug, Default)]
struct SinkCounts {
    requests: AtomicU64,
    bytes: AtomicU64,
    series: AtomicU64,
    samples: AtomicU64,
    bad_requests: AtomicU64,
}

impl SinkCounts {
    fn render(&self) -> String {
        format!(
            "sink: requests={} bytes={} series={} samples={} bad_requests={}",
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.series.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
            self.bad_requests.load(Ordering::Relaxed)
        )
    }
}

async fn sink_write(State(counts): State<Arc<SinkCounts>>, body: axum::body::Bytes) -> StatusCode {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    let mut batch = Batch::default();
    let decoded = RemoteWriteDecoder::default().decode(&body, &mut Interner::new(), &mut batch);
    if decoded.is_err() {
        counts.bad_requests.fetch_add(1, Ordering::Relaxed);
        return StatusCode::BAD_REQUEST;
    }
    counts
        .series
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    counts
        .samples
        .fetch_add(batch.sample_count() as u64, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

async fn sink(listen: &str) -> anyhow::Result<()> {
    let counts = Arc::new(SinkCounts::default());
    let app = Router::new()
        .route("/api/v1/write", post(sink_write))
        .route(
            "/stats",
            get(|State(counts): State<Arc<SinkCounts>>| async move { counts.render() }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(256 << 20))
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .context("bind sink")?;
    let server = axum::serve(listener, app);
    tokio::select! {
        result = server => result.context("sink server")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("{}", counts.render());
    Ok(())
}

async fn send(
    url: &str,
    series: usize,
    ticks: usize,
    rounds: usize,
    series_per_request: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut config = SimulatorConfig::new(Profile::K8s, 1);
    // ~218k series at scale 1.
    config.scale = series as f64 / 218_180.0;
    config.start_timestamp_ms = Some(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64
            - 3_600_000,
    );
    let mut simulator = Simulator::new(config);
    let mut encoder = RemoteWriteEncoder::new();
    let mut requests: Vec<(bytes::Bytes, u64)> = Vec::new();
    for _ in 0..ticks.max(1) {
        let batch = simulator.next_batch();
        for chunk in batch.series.chunks(series_per_request.max(1)) {
            let body = encoder.encode(chunk, &[]);
            requests.push((bytes::Bytes::from(body), chunk.len() as u64));
        }
    }
    let series_per_tick = simulator.series_count();
    let requests = Arc::new(requests);
    let total = requests.len() * rounds;
    let next = Arc::new(AtomicU64::new(0));
    let accepted_samples = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (requests, next, accepted_samples, failed, client, url) = (
            requests.clone(),
            next.clone(),
            accepted_samples.clone(),
            failed.clone(),
            client.clone(),
            url.to_string(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                if index >= total {
                    break;
                }
                let (body, samples) = &requests[index % requests.len()];
                let ok = client
                    .post(&url)
                    .header("Content-Encoding", "snappy")
                    .header("Content-Type", "application/x-protobuf")
                    .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                    .body(body.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    accepted_samples.fetch_add(*samples, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = accepted_samples.load(Ordering::Relaxed);
    println!(
        "send: series_per_tick={series_per_tick} requests={total} accepted_samples={accepted} failed_requests={} seconds={elapsed:.2} samples_per_second={:.0}",
        failed.load(Ordering::Relaxed),
        accepted as f64 / elapsed
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sink { listen } => sink(&listen).await,
        Command::Send {
            url,
            series,
            ticks,
            rounds,
            series_per_request,
            concurrency,
        } => send(&url, series, ticks, rounds, series_per_request, concurrency).await,
    }
}
