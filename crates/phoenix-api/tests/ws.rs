//! The WebSocket hub (`/api/v1/ws`) against a real server and store, through a real WebSocket
//! client: per-topic ordering, resume after a reconnect, slow-consumer disconnect, bad input,
//! the fleet and KPI topics, and (PostgreSQL) delivery across two API replicas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use phoenix_api::Config;
use phoenix_core::SystemClock;
use phoenix_store::NewTopicEvent;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use common::{
    create_pg_database, drop_pg_database, error_body, start_pg_with, start_sqlite_with,
    test_config, TestServer, ENROLL_TOKEN,
};

on_both_backends!(
    events_of_a_topic_arrive_in_order_without_gaps,
    resume_after_reconnect_delivers_missed_events_exactly_once,
    resume_while_events_keep_coming_has_no_gap_and_no_duplicate,
    slow_client_is_closed_with_4008_while_another_keeps_receiving,
    bad_tokens_messages_and_topics_are_refused_with_reasons,
    fleet_and_kpi_topics_carry_summaries,
    hub_series_on_metrics_follow_connections_subscriptions_and_events,
);

const BUFFER: usize = 64;

fn ws_config() -> Config {
    Config {
        ws_client_buffer: BUFFER,
        ws_auth_timeout: Duration::from_millis(500),
        ..test_config()
    }
}

async fn start_sqlite() -> TestServer {
    start_sqlite_with(ws_config(), Arc::new(SystemClock)).await
}

async fn start_pg() -> TestServer {
    let (url, name) = create_pg_database().await;
    start_pg_with(ws_config(), &url, Some(name)).await
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Ws {
    socket: Socket,
}

const WAIT: Duration = Duration::from_secs(20);

/// The first admin's access token (what a signed-in dashboard sends).
fn admin_token(s: &TestServer) -> String {
    s.admin_login["access_token"].as_str().unwrap().to_string()
}

fn ws_url(s: &TestServer) -> String {
    format!("{}/api/v1/ws", s.base.replacen("http://", "ws://", 1))
}

impl Ws {
    /// Connected and authenticated with a bearer header.
    async fn open(s: &TestServer) -> Self {
        let mut req = ws_url(s).into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", admin_token(s)).parse().unwrap(),
        );
        let (socket, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut ws = Self { socket };
        let hello = ws.next().await;
        assert_eq!(hello["type"], "authenticated", "{hello}");
        ws
    }

    /// Connected, not authenticated.
    async fn anonymous(s: &TestServer) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(ws_url(s)).await.unwrap();
        Self { socket }
    }

    async fn send(&mut self, v: Value) {
        self.socket
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON message (pings and pongs skipped).
    async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a message within the deadline")
                .expect("the connection is open")
                .expect("a valid frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    async fn subscribe(&mut self, topic: &str, after_seq: Option<i64>) -> i64 {
        let mut m = json!({ "type": "subscribe", "topic": topic });
        if let Some(a) = after_seq {
            m["after_seq"] = json!(a);
        }
        self.send(m).await;
        let ack = self.next().await;
        assert_eq!(ack["type"], "subscribed", "{ack}");
        assert_eq!(ack["topic"], topic, "{ack}");
        ack["seq"].as_i64().unwrap()
    }

    async fn event(&mut self) -> Value {
        let e = self.next().await;
        assert_eq!(e["type"], "event", "{e}");
        e
    }

    /// Nothing else queued: a ping's pong comes next.
    async fn assert_nothing_pending(&mut self) {
        self.send(json!({ "type": "ping", "id": 7 })).await;
        let m = self.next().await;
        assert_eq!(m, json!({ "type": "pong", "id": 7 }));
    }

    /// Read until the server closes; the close code and reason (events before it skipped).
    async fn closed(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("closed within the deadline");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

async fn create(s: &TestServer, name: &str) -> String {
    let res = s
        .post(
            "/api/v1/experiments",
            json!({ "name": name, "baseline_pipeline": "baseline",
                    "candidate_pipeline": "adaptive", "target_hosts": ["node-a"] }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

async fn events_of_a_topic_arrive_in_order_without_gaps(s: &TestServer) {
    let mut all = Ws::open(s).await;
    let start = all.subscribe("experiments", None).await;
    assert_eq!(start, 0);
    let id = create(s, "first").await;
    let mut one = Ws::open(s).await;
    assert_eq!(one.subscribe(&format!("experiments/{id}"), None).await, 1);

    // Concurrent writers: the topic still numbers its events 1, 2, 3, … in delivery order.
    let mut writers = Vec::new();
    for i in 0..8 {
        let client = s.client.clone();
        let url = s.url("/api/v1/experiments");
        writers.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .json(
                    &json!({ "name": format!("w{i}"), "baseline_pipeline": "baseline",
                               "candidate_pipeline": "topk", "target_hosts": ["node-a"] }),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let res = s
        .post(&format!("/api/v1/experiments/{id}/start"), json!({}))
        .await;
    assert_eq!(res.status(), 200);

    let mut names = Vec::new();
    for expected in 1..=10 {
        let e = all.event().await;
        assert_eq!(e["topic"], "experiments");
        assert_eq!(e["seq"], expected, "{e}");
        assert!(e["time"].is_string(), "{e}");
        names.push(
            e["data"]["experiment"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        if expected <= 9 {
            assert_eq!(e["kind"], "created", "{e}");
        } else {
            assert_eq!(e["kind"], "transition", "{e}");
            assert_eq!(e["data"]["event"]["to_phase"], "initializing", "{e}");
        }
    }
    assert_eq!(names[0], "first");
    all.assert_nothing_pending().await;

    // The experiment's own topic: only its events, numbered on their own.
    let e = one.event().await;
    assert_eq!(
        (e["topic"].as_str().unwrap(), e["seq"].as_i64().unwrap()),
        (format!("experiments/{id}").as_str(), 2)
    );
    assert_eq!(e["kind"], "transition");
    one.assert_nothing_pending().await;

    // Unsubscribed: nothing more arrives.
    one.send(json!({ "type": "unsubscribe", "topic": format!("experiments/{id}") }))
        .await;
    assert_eq!(one.next().await["type"], "unsubscribed");
    let res = s
        .post(&format!("/api/v1/experiments/{id}/stop"), json!({}))
        .await;
    assert_eq!(res.status(), 200);
    let e = all.event().await;
    assert_eq!(
        (e["seq"].as_i64(), e["kind"].as_str()),
        (Some(11), Some("transition"))
    );
    one.assert_nothing_pending().await;
}

async fn resume_after_reconnect_delivers_missed_events_exactly_once(s: &TestServer) {
    let mut ws = Ws::open(s).await;
    ws.subscribe("experiments", None).await;
    create(s, "seen").await;
    let seen = ws.event().await["seq"].as_i64().unwrap();
    assert_eq!(seen, 1);
    drop(ws);

    // Missed while away.
    create(s, "missed-1").await;
    create(s, "missed-2").await;

    let mut ws = Ws::open(s).await;
    assert_eq!(ws.subscribe("experiments", Some(seen)).await, seen);
    let mut got = Vec::new();
    for _ in 0..2 {
        let e = ws.event().await;
        got.push((
            e["seq"].as_i64().unwrap(),
            e["data"]["experiment"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        ));
    }
    assert_eq!(
        got,
        [(2, "missed-1".to_string()), (3, "missed-2".to_string())]
    );
    // Then the live stream, continuing the numbering.
    create(s, "live").await;
    let e = ws.event().await;
    assert_eq!(
        (e["seq"].as_i64(), e["data"]["experiment"]["name"].as_str()),
        (Some(4), Some("live"))
    );
    ws.assert_nothing_pending().await;

    // From the beginning: everything stored, once.
    let mut again = Ws::open(s).await;
    again.subscribe("experiments", Some(0)).await;
    for expected in 1..=4 {
        assert_eq!(again.event().await["seq"], expected);
    }
    again.assert_nothing_pending().await;
}

async fn resume_while_events_keep_coming_has_no_gap_and_no_duplicate(s: &TestServer) {
    // A writer publishes continuously while clients reconnect with their last seq: the events
    // replayed from the store and the live ones meet without gap or duplicate.
    let svc = s.state.service.clone();
    let total = 300;
    let writer = tokio::spawn(async move {
        for i in 0..total {
            svc.events
                .publish(vec![NewTopicEvent::new("fleet", "test", json!({ "i": i }))])
                .await;
            tokio::task::yield_now().await;
        }
    });
    let mut last = 0;
    let mut seen = Vec::new();
    while last < total {
        let mut ws = Ws::open(s).await;
        ws.subscribe("fleet", Some(last)).await;
        // Read a few, then drop the connection mid-stream.
        for _ in 0..37 {
            if last == total {
                break;
            }
            let e = ws.event().await;
            let seq = e["seq"].as_i64().unwrap();
            assert_eq!(seq, last + 1, "gap or duplicate after {last}: {e}");
            assert_eq!(e["data"]["i"], seq - 1);
            seen.push(seq);
            last = seq;
        }
    }
    writer.await.unwrap();
    assert_eq!(seen, (1..=total).collect::<Vec<i64>>());
}

async fn slow_client_is_closed_with_4008_while_another_keeps_receiving(s: &TestServer) {
    let mut slow = Ws::open(s).await;
    slow.subscribe("fleet", None).await;
    let mut fast = Ws::open(s).await;
    fast.subscribe("fleet", None).await;

    // The fast client reads everything; the slow one reads nothing until it has been cut off.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0i64);
    let reader = tokio::spawn(async move {
        loop {
            let e = fast.event().await;
            let seq = e["seq"].as_i64().unwrap();
            assert_eq!(seq, *progress_tx.borrow() + 1, "fast client skipped: {e}");
            progress_tx.send(seq).unwrap();
            if e["kind"] == "last" {
                return (seq, fast);
            }
        }
    });
    let stats = &s.state.service.events.hub;
    let blob = "x".repeat(64 * 1024);
    let mut published = 0i64;
    // Large events fill the socket buffers of the client that does not read, then its queue.
    while stats.stats().disconnects("slow_consumer") == 0 {
        assert!(published < 5_000, "the slow client was never cut off");
        // Pace on the fast client so that only the slow one falls behind.
        while *progress.borrow() < published - (BUFFER as i64) / 2 {
            progress.changed().await.unwrap();
        }
        s.state
            .service
            .events
            .publish(vec![NewTopicEvent::new(
                "fleet",
                "blob",
                json!({ "blob": blob }),
            )])
            .await;
        published += 1;
    }
    s.state
        .service
        .events
        .publish(vec![NewTopicEvent::new("fleet", "last", json!({}))])
        .await;
    let (last, mut fast) = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    assert_eq!(last, published + 1);
    fast.assert_nothing_pending().await;

    let (code, reason) = slow.closed().await;
    assert_eq!(code, 4008, "{reason}");
    assert!(reason.contains("slow consumer"), "{reason}");
}

async fn bad_tokens_messages_and_topics_are_refused_with_reasons(s: &TestServer) {
    // A wrong token with the request: a plain 401 with the JSON error body.
    let mut req = ws_url(s).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer wrong-token".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 401);
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let url = format!("{}?access_token=wrong", ws_url(s));
    assert!(matches!(
        tokio_tungstenite::connect_async(url).await,
        Err(tungstenite::Error::Http(res)) if res.status() == 401
    ));
    // The token in the query (browsers) works.
    // The enrollment token (an agent's secret) is not a user credential.
    let url = format!("{}?access_token={ENROLL_TOKEN}", ws_url(s));
    assert!(matches!(
        tokio_tungstenite::connect_async(url).await,
        Err(tungstenite::Error::Http(res)) if res.status() == 401
    ));
    let url = format!("{}?access_token={}", ws_url(s), admin_token(s));
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(Ws { socket }.next().await["type"], "authenticated");
    // Not a WebSocket request at all.
    let body = error_body(s.get("/api/v1/ws").await, 400).await;
    assert_eq!(
        body["error"]["code"], "websocket_upgrade_required",
        "{body}"
    );

    // No token: anything but `auth` first is a policy violation.
    let mut ws = Ws::anonymous(s).await;
    ws.send(json!({ "type": "subscribe", "topic": "fleet" }))
        .await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("authenticate first"), "{reason}");
    let mut ws = Ws::anonymous(s).await;
    ws.send(json!({ "type": "auth", "token": "nope" })).await;
    assert_eq!(ws.closed().await, (1008, "invalid token".to_string()));
    // Too slow to authenticate.
    let mut ws = Ws::anonymous(s).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1008);
    assert!(reason.contains("not authenticated within"), "{reason}");
    // The first-message way works.
    let mut ws = Ws::anonymous(s).await;
    ws.send(json!({ "type": "auth", "token": admin_token(s) }))
        .await;
    assert_eq!(ws.next().await["type"], "authenticated");

    // Unknown topics are errors naming them; the connection stays usable.
    ws.send(json!({ "type": "subscribe", "topic": "weather" }))
        .await;
    let e = ws.next().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unknown_topic"))
    );
    assert_eq!(e["topic"], "weather");
    assert!(e["message"].as_str().unwrap().contains("`weather`"), "{e}");
    let ghost = uuid::Uuid::new_v4();
    ws.send(json!({ "type": "subscribe", "topic": format!("kpis/{ghost}") }))
        .await;
    let e = ws.next().await;
    assert_eq!(e["code"], "unknown_topic");
    assert!(
        e["message"].as_str().unwrap().contains(&ghost.to_string()),
        "{e}"
    );
    ws.send(json!({ "type": "subscribe", "topic": "fleet", "after_seq": -3 }))
        .await;
    assert_eq!(ws.next().await["code"], "invalid_after_seq");
    ws.send(json!({ "type": "unsubscribe", "topic": "fleet" }))
        .await;
    assert_eq!(ws.next().await["code"], "not_subscribed");
    ws.subscribe("fleet", None).await;
    ws.send(json!({ "type": "subscribe", "topic": "fleet" }))
        .await;
    assert_eq!(ws.next().await["code"], "already_subscribed");
    ws.assert_nothing_pending().await;

    // Malformed JSON, an unknown message type, an unknown field: 1007 with the reason.
    for bad in [
        "{not json".to_string(),
        json!({ "type": "dance" }).to_string(),
        json!({ "type": "subscribe", "topic": "fleet", "color": "red" }).to_string(),
    ] {
        let mut ws = Ws::open(s).await;
        ws.socket
            .send(Message::Text(bad.clone().into()))
            .await
            .unwrap();
        let (code, reason) = ws.closed().await;
        assert_eq!(code, 1007, "{bad}: {reason}");
        assert!(reason.starts_with("invalid message"), "{reason}");
    }
    // Oversize messages: 1009, just above the limit and far above it.
    for size in [20 * 1024, 200 * 1024] {
        let mut ws = Ws::open(s).await;
        let big = json!({ "type": "ping", "id": "x".repeat(size) }).to_string();
        let _ = ws.socket.send(Message::Text(big.into())).await;
        let (code, reason) = ws.closed().await;
        assert_eq!(code, 1009, "{size}: {reason}");
    }
    // Binary frames: 1003.
    let mut ws = Ws::open(s).await;
    ws.socket
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(ws.closed().await.0, 1003);
}

async fn fleet_and_kpi_topics_carry_summaries(s: &TestServer) {
    let mut fleet = Ws::open(s).await;
    fleet.subscribe("fleet", None).await;
    let secret = s.enroll("node-a").await;
    let e = fleet.event().await;
    assert_eq!(
        (e["kind"].as_str(), e["data"]["host_id"].as_str()),
        (Some("agent_enrolled"), Some("node-a"))
    );

    // Heartbeats: one `agent_online`, not one event per heartbeat.
    let agent = s.agent("node-a", &secret);
    for _ in 0..5 {
        assert_eq!(
            agent
                .post("/api/v1/agent/heartbeat", json!({}))
                .await
                .status(),
            200
        );
    }
    let e = fleet.event().await;
    assert_eq!(
        (e["kind"].as_str(), e["seq"].as_i64()),
        (Some("agent_online"), Some(2))
    );
    assert_eq!(e["data"]["host_id"], "node-a");
    agent.post("/api/v1/agent/heartbeat", json!({})).await;
    fleet.assert_nothing_pending().await;

    // KPI batches: summed per interval and variant.
    let id = create(s, "kpis").await;
    let mut kpis = Ws::open(s).await;
    kpis.subscribe(&format!("kpis/{id}"), None).await;
    let batch = |variant: &str, input: u64, output: u64| {
        json!({
            "batch_id": uuid::Uuid::new_v4(), "experiment_id": id, "variant": variant,
            "interval_start": "2026-11-23T10:00:00Z", "interval_end": "2026-11-23T10:00:10Z",
            "values": { "input_series": input, "output_series": output }
        })
    };
    let body = json!({ "batches": [batch("baseline", 1000, 1000), batch("candidate", 1000, 100), batch("candidate", 1000, 300)] });
    let res = agent.post("/api/v1/agent/metrics", body.clone()).await;
    assert_eq!(res.status(), 200);
    let e = kpis.event().await;
    assert_eq!(
        (e["kind"].as_str(), e["seq"].as_i64()),
        (Some("kpi_summary"), Some(1))
    );
    let intervals = e["data"]["intervals"].as_array().unwrap();
    assert_eq!(intervals.len(), 2, "{e}");
    let cand = intervals
        .iter()
        .find(|i| i["variant"] == "candidate")
        .unwrap();
    assert_eq!(
        (
            cand["batches"].as_u64(),
            cand["input_series"].as_u64(),
            cand["output_series"].as_u64()
        ),
        (Some(2), Some(2000), Some(400))
    );
    assert!(
        (cand["reduction_percent"].as_f64().unwrap() - 80.0).abs() < 1e-9,
        "{cand}"
    );
    // A replayed request adds nothing.
    assert_eq!(
        agent.post("/api/v1/agent/metrics", body).await.status(),
        200
    );
    tokio::time::sleep(phoenix_api::ws::publish::KPI_FLUSH_INTERVAL * 2).await;
    kpis.assert_nothing_pending().await;
}

/// Two API replicas on one PostgreSQL database: an event published on one reaches a client
/// of the other, small ones carried in the notification, large ones read from the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_on_one_replica_reach_clients_of_another() {
    let (url, name) = create_pg_database().await;
    let a = start_pg_with(ws_config(), &url, None).await;
    let b = start_pg_with(ws_config(), &url, None).await;

    let mut on_b = Ws::open(&b).await;
    on_b.subscribe("experiments", None).await;
    let mut fleet_b = Ws::open(&b).await;
    fleet_b.subscribe("fleet", None).await;

    let id = create(&a, "made on a").await;
    let e = on_b.event().await;
    assert_eq!(
        (e["seq"].as_i64(), e["kind"].as_str()),
        (Some(1), Some("created"))
    );
    assert_eq!(e["data"]["experiment"]["id"], id.as_str());

    // Larger than a NOTIFY payload.
    let blob = "y".repeat(20 * 1024);
    a.state
        .service
        .events
        .publish(vec![NewTopicEvent::new(
            "fleet",
            "big",
            json!({ "blob": blob }),
        )])
        .await;
    let e = fleet_b.event().await;
    assert_eq!(
        (e["seq"].as_i64(), e["kind"].as_str()),
        (Some(1), Some("big"))
    );
    assert_eq!(e["data"]["blob"].as_str().unwrap().len(), 20 * 1024);

    // Interleaved publishes on both replicas: each client sees one gap-free sequence.
    for i in 0..20 {
        let on = if i % 2 == 0 { &a } else { &b };
        create(on, &format!("n{i}")).await;
    }
    let mut on_a = Ws::open(&a).await;
    on_a.subscribe("experiments", Some(1)).await;
    for expected in 2..=21 {
        assert_eq!(on_b.event().await["seq"], expected);
        assert_eq!(on_a.event().await["seq"], expected);
    }
    on_b.assert_nothing_pending().await;
    on_a.assert_nothing_pending().await;
    drop((on_a, on_b, fleet_b, a, b));
    drop_pg_database(&name).await;
}

/// One series of a `/metrics` scrape (`name{labels}` as the exposition prints it), 0 when
/// absent.
fn series(scrape: &str, key: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

async fn scrape(s: &TestServer) -> String {
    let res = s
        .anon
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// Scrape until `check` holds (a connection's end is counted by its own task).
async fn scrape_until(s: &TestServer, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(s).await;
        if check(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hub_series_on_metrics_follow_connections_subscriptions_and_events(s: &TestServer) {
    const CONNECTIONS: &str = "phoenix_ws_connections";
    const SUBS_ALL: &str = r#"phoenix_ws_subscriptions{topic="experiments"}"#;
    const SUBS_ONE: &str = r#"phoenix_ws_subscriptions{topic="experiments/{id}"}"#;
    const PUBLISHED: &str = "phoenix_ws_events_published_total";
    const LIVE: &str = r#"phoenix_ws_events_delivered_total{source="live"}"#;
    const STORED: &str = r#"phoenix_ws_events_delivered_total{source="store"}"#;
    const RESUMES: &str = "phoenix_ws_resumes_total";
    const CLOSED: &str = r#"phoenix_ws_disconnects_total{reason="client_closed"}"#;
    const BINARY: &str = r#"phoenix_ws_disconnects_total{reason="binary_frame"}"#;

    let before = scrape(s).await;
    for key in [
        CONNECTIONS,
        SUBS_ALL,
        SUBS_ONE,
        LIVE,
        STORED,
        RESUMES,
        CLOSED,
        BINARY,
    ] {
        assert!(
            before.contains(&format!("{key} 0")),
            "{key} missing or not 0:\n{before}"
        );
    }
    let published_before = series(&before, PUBLISHED);

    // A live follower of `experiments`: one connection, one subscription, one event
    // published and delivered live.
    let mut all = Ws::open(s).await;
    all.subscribe("experiments", None).await;
    let text = scrape(s).await;
    assert_eq!(series(&text, CONNECTIONS), 1.0, "{text}");
    assert_eq!(series(&text, SUBS_ALL), 1.0, "{text}");
    let id = create(s, "counted").await;
    let e = all.event().await;
    assert_eq!(e["kind"], "created", "{e}");
    let text = scrape(s).await;
    // `created` on `experiments` and on `experiments/{id}`.
    assert!(series(&text, PUBLISHED) >= published_before + 2.0, "{text}");
    assert_eq!(series(&text, LIVE), 1.0, "{text}");
    assert_eq!(series(&text, STORED), 0.0, "{text}");

    // A resume from 0 on the experiment's topic is served from the store.
    let mut resumed = Ws::open(s).await;
    resumed
        .subscribe(&format!("experiments/{id}"), Some(0))
        .await;
    let replayed = resumed.event().await;
    assert_eq!(replayed["seq"], 1, "{replayed}");
    let text = scrape(s).await;
    assert_eq!(series(&text, CONNECTIONS), 2.0, "{text}");
    assert_eq!(series(&text, SUBS_ONE), 1.0, "{text}");
    assert_eq!(series(&text, RESUMES), 1.0, "{text}");
    assert_eq!(series(&text, STORED), 1.0, "{text}");

    // One is closed by the server (binary frame), the other leaves on its own: both are
    // counted by reason, and their subscriptions are gone.
    resumed
        .socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(resumed.closed().await.0, 1003);
    all.socket.close(None).await.unwrap();
    let text = scrape_until(s, "both disconnects counted", |t| {
        series(t, CONNECTIONS) == 0.0 && series(t, CLOSED) == 1.0 && series(t, BINARY) == 1.0
    })
    .await;
    assert_eq!(series(&text, SUBS_ALL), 0.0, "{text}");
    assert_eq!(series(&text, SUBS_ONE), 0.0, "{text}");
}
