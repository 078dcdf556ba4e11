//! `phoenix-load-ws`: opens N WebSocket clients on a running `phoenix-api` (loopback only),
//! subscribes each to `experiments`, then creates experiments through the REST API at a fixed
//! rate: every creation is one event broadcast to all N clients. Measures the API's resident
//! memory per connected client (RSS delta / clients, from `/proc`) and the broadcast latency
//! (the event's `time`, stamped by the API when it published, to its receipt by each
//! client; same machine, same clock), and checks each client saw every event once, in order.
//! Stops by itself: connection, measurement and drain each have a deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::cli::check_loopback;
use crate::procfs::sample_process;
use crate::stats::{LatencyRecorder, LatencySummary};

/// Open N WebSocket clients on a running phoenix-api and measure memory per client and
/// broadcast latency.
#[derive(Debug, Clone, Parser)]
#[command(name = "phoenix-load-ws", version)]
pub struct WsArgs {
    /// The API's base URL; only loopback addresses.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// The token the sockets present and the experiments are created with: an operator's
    /// or admin's access token or API key (or the API's static `ws_token`, which serves the
    /// sockets only).
    #[arg(long, env = "PHOENIX_WS_TOKEN", hide_env_values = true)]
    pub token: String,
    /// WebSocket clients to open.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Events to broadcast (experiments created).
    #[arg(long, default_value_t = 100)]
    pub events: usize,
    /// Events per second.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Concurrent connection handshakes.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Longest time to open every client.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// After the last event: time allowed for every client to receive everything.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// PID of the API process (its RSS before and after connecting is read from /proc).
    #[arg(long)]
    pub api_pid: Option<u32>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

impl WsArgs {
    pub fn check(&self) -> anyhow::Result<Url> {
        let api = Url::parse(&self.api).with_context(|| format!("--api {}", self.api))?;
        check_loopback(&api)?;
        if api.scheme() != "http" {
            bail!("--api: only http:// is supported (got {})", api.scheme());
        }
        if self.clients == 0 {
            bail!("--clients: must be at least 1");
        }
        if self.events == 0 {
            bail!("--events: must be at least 1");
        }
        if !self.rate.is_finite() || self.rate <= 0.0 || self.rate > 10_000.0 {
            bail!("--rate: must be in (0, 10000]");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency: must be at least 1");
        }
        Ok(api)
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct WsReport {
    pub clients_requested: usize,
    pub clients_connected: u64,
    pub connect_failures: u64,
    pub connect_seconds: f64,
    pub events_published: u64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    /// Events received out of order, twice, or after a gap (must be 0).
    pub sequence_errors: u64,
    /// Clients the server closed (e.g. 4008 slow consumer) or whose connection broke.
    pub clients_lost: u64,
    pub latency: LatencySummary,
    pub api_rss_before_kib: Option<u64>,
    pub api_rss_connected_kib: Option<u64>,
    pub api_rss_end_kib: Option<u64>,
    /// (RSS with every client connected and subscribed − RSS before) / clients connected.
    pub api_bytes_per_client: Option<f64>,
    pub api_cpu_seconds_while_broadcasting: Option<f64>,
}

impl WsReport {
    pub fn to_text(&self) -> String {
        let kib =
            |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
        let mut out = String::new();
        out.push_str(&format!(
            "clients:   {} connected of {} ({} failed) in {:.1} s\n",
            self.clients_connected,
            self.clients_requested,
            self.connect_failures,
            self.connect_seconds
        ));
        out.push_str(&format!(
            "events:    {} published, {} of {} deliveries received, {} sequence errors, {} clients lost\n",
            self.events_published,
            self.deliveries_received,
            self.deliveries_expected,
            self.sequence_errors,
            self.clients_lost
        ));
        out.push_str(&format!(
            "latency:   publish -> receipt {}\n",
            self.latency.line()
        ));
        out.push_str(&format!(
            "api rss:   before {}, all connected {}, end {}\n",
            kib(self.api_rss_before_kib),
            kib(self.api_rss_connected_kib),
            kib(self.api_rss_end_kib)
        ));
        if let Some(b) = self.api_bytes_per_client {
            out.push_str(&format!(
                "memory:    {:.1} KiB per connected client\n",
                b / 1024.0
            ));
        }
        if let Some(cpu) = self.api_cpu_seconds_while_broadcasting {
            out.push_str(&format!("api cpu:   {cpu:.2} s while broadcasting\n"));
        }
        out
    }

    /// Goals of issue 7: < 20 KB per client, broadcast p99 < 100 ms, nothing lost.
    pub fn goals(&self) -> serde_json::Value {
        serde_json::json!({
            "bytes_per_client_below_20kb": self.api_bytes_per_client.map(|b| b < 20_000.0),
            "broadcast_p99_below_100ms": self.latency.count > 0 && self.latency.p99_ms < 100.0,
            "every_delivery_received": self.deliveries_received == self.deliveries_expected
                && self.sequence_errors == 0,
        })
    }
}

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicU64,
    connect_failures: AtomicU64,
    received: AtomicU64,
    sequence_errors: AtomicU64,
    lost: AtomicU64,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    seq: i64,
    #[serde(default)]
    time: Option<DateTime<Utc>>,
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| sample_process(&p.to_string()))
        .map(|s| s.memory.rss_kib)
}

fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| sample_process(&p.to_string()))
        .map(|s| s.cpu.total())
}

/// Run the benchmark.
pub async fn run(args: WsArgs) -> anyhow::Result<WsReport> {
    let api = args.check()?;
    let ws_url = format!(
        "ws://{}:{}/api/v1/ws",
        api.host_str().unwrap_or("127.0.0.1"),
        api.port_or_known_default().unwrap_or(80)
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let counters = Arc::new(Counters::default());
    let latency = Arc::new(LatencyRecorder::new());
    let stop = CancellationToken::new();

    let rss_before = rss_kib(args.api_pid);
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let permit = gate.clone().acquire_owned().await?;
        let url = ws_url.clone();
        let token = args.token.clone();
        let counters = counters.clone();
        let latency = latency.clone();
        let stop = stop.clone();
        let ready = ready_tx.clone();
        clients.push(tokio::spawn(async move {
            client(url, token, permit, ready, counters, latency, stop).await;
        }));
    }
    drop(ready_tx);
    // Wait until every client is subscribed (or failed), up to the deadline.
    let deadline = tokio::time::Instant::now() + args.connect_timeout;
    let mut answered = 0;
    while answered < args.clients {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(_)) => answered += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let connected = counters.connected.load(Ordering::Relaxed);
    eprintln!(
        "{connected} clients subscribed ({} failed) in {connect_seconds:.1} s",
        counters.connect_failures.load(Ordering::Relaxed)
    );
    // Let allocations settle before reading the RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = rss_kib(args.api_pid);

    // Broadcast: one experiment created per event, on a fixed schedule.
    let cpu_before = cpu_ticks(args.api_pid);
    let every = Duration::from_secs_f64(1.0 / args.rate);
    let mut next = tokio::time::Instant::now();
    let mut published = 0u64;
    for i in 0..args.events {
        tokio::time::sleep_until(next).await;
        next += every;
        let res = http
            .post(api.join("/api/v1/experiments")?)
            .bearer_auth(&args.token)
            .json(&serde_json::json!({
                "name": format!("ws-bench-{i}"),
                "baseline_pipeline": "baseline",
                "candidate_pipeline": "topk",
                "target_hosts": ["ws-bench-host"],
            }))
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => published += 1,
            Ok(r) => eprintln!("creating experiment {i}: HTTP {}", r.status()),
            Err(e) => eprintln!("creating experiment {i}: {e}"),
        }
    }
    // Drain: until every delivery arrived or the deadline.
    let expected = published * connected;
    let drain_deadline = Instant::now() + args.drain;
    while counters.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_seconds = match (cpu_before, cpu_ticks(args.api_pid)) {
        (Some(a), Some(b)) => {
            let hz = rustix::param::clock_ticks_per_second() as f64;
            Some((b.saturating_sub(a)) as f64 / hz)
        }
        _ => None,
    };
    let rss_end = rss_kib(args.api_pid);
    stop.cancel();
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }
    let per_client = match (rss_before, rss_connected) {
        (Some(b), Some(c)) if connected > 0 => {
            Some((c.saturating_sub(b) as f64 * 1024.0) / connected as f64)
        }
        _ => None,
    };
    Ok(WsReport {
        clients_requested: args.clients,
        clients_connected: connected,
        connect_failures: counters.connect_failures.load(Ordering::Relaxed),
        connect_seconds,
        events_published: published,
        deliveries_expected: expected,
        deliveries_received: counters.received.load(Ordering::Relaxed),
        sequence_errors: counters.sequence_errors.load(Ordering::Relaxed),
        clients_lost: counters.lost.load(Ordering::Relaxed),
        latency: latency.summary(),
        api_rss_before_kib: rss_before,
        api_rss_connected_kib: rss_connected,
        api_rss_end_kib: rss_end,
        api_bytes_per_client: per_client,
        api_cpu_seconds_while_broadcasting: cpu_seconds,
    })
}

/// One client: connect, subscribe to `experiments`, report ready, then record every event.
async fn client(
    url: String,
    token: String,
    permit: tokio::sync::OwnedSemaphorePermit,
    ready: tokio::sync::mpsc::UnboundedSender<bool>,
    counters: Arc<Counters>,
    latency: Arc<LatencyRecorder>,
    stop: CancellationToken,
) {
    let connect = async {
        let mut req = url.as_str().into_client_request().ok()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().ok()?);
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(req, Some(config), false)
                .await
                .ok()?;
        socket
            .send(Message::Text(
                r#"{"type":"subscribe","topic":"experiments"}"#.into(),
            ))
            .await
            .ok()?;
        // `authenticated`, then `subscribed`.
        let mut acks = 0;
        while acks < 2 {
            match socket.next().await? {
                Ok(Message::Text(t)) => {
                    let m: Incoming = serde_json::from_str(&t).ok()?;
                    match m.kind.as_str() {
                        "authenticated" | "subscribed" => acks += 1,
                        _ => return None,
                    }
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        Some(socket)
    };
    let socket = tokio::time::timeout(Duration::from_secs(60), connect)
        .await
        .ok()
        .flatten();
    drop(permit);
    let Some(mut socket) = socket else {
        counters.connect_failures.fetch_add(1, Ordering::Relaxed);
        let _ = ready.send(false);
        return;
    };
    counters.connected.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(true);
    drop(ready);
    let mut last_seq: Option<i64> = None;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            msg = socket.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let received_at = Utc::now();
                let Ok(m) = serde_json::from_str::<Incoming>(&t) else {
                    counters.sequence_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if m.kind != "event" {
                    continue;
                }
                if let Some(prev) = last_seq {
                    if m.seq != prev + 1 {
                        counters.sequence_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                last_seq = Some(m.seq);
                counters.received.fetch_add(1, Ordering::Relaxed);
                if let Some(sent) = m.time {
                    let us = (received_at - sent).num_microseconds().unwrap_or(0).max(0);
                    latency.record(Duration::from_micros(us as u64));
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(Ok(_)) => {}
        }
    }
    let _ = socket.close(None).await;
}
