//! The agent protocol against a real server and store: enrollment, authentication,
//! long-poll delivery, task status rules, heartbeats, KPI batches and logs, and the
//! operational endpoints that show them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use phoenix_core::ManualClock;
use serde_json::{json, Value};

on_both_backends!(
    long_poll_returns_the_moment_a_task_is_queued,
    task_status_moves_only_for_the_holding_host,
    replayed_kpi_batch_is_accepted_and_not_stored_twice,
    heartbeat_shows_in_fleet_status_and_metrics,
);

async fn long_poll_returns_the_moment_a_task_is_queued(s: &TestServer) {
    let secret = s.enroll("node-a").await;
    let agent = s.agent("node-a", &secret);

    // Nothing queued: a short wait answers empty.
    let res = agent.poll("0").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["tasks"].as_array().unwrap().len(), 0);

    // A long wait is released by an enqueue well before its 20 s run out.
    let poll = agent.poll("20s");
    let enqueue = async {
        // Let the poll park first; correctness does not depend on it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let res = s
            .post(
                "/api/v1/tasks",
                json!({ "type": "health", "host_id": "node-a" }),
            )
            .await;
        assert_eq!(res.status(), 201);
        res.json::<Value>().await.unwrap()
    };
    let started = std::time::Instant::now();
    let (res, queued) = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::join!(poll, enqueue)
    })
    .await
    .expect("the long-poll was not released by the enqueue");
    let body: Value = res.json().await.unwrap();
    let tasks = body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["id"], queued["task"]["id"]);
    assert_eq!(tasks[0]["status"], "assigned");
    assert_eq!(tasks[0]["assigned_to"], "node-a");
    assert!(started.elapsed() < Duration::from_secs(15));

    // A task for another host is not delivered here.
    s.post(
        "/api/v1/tasks",
        json!({ "type": "health", "host_id": "node-b" }),
    )
    .await;
    let body: Value = agent.poll("0").await.json().await.unwrap();
    assert_eq!(body["tasks"].as_array().unwrap().len(), 0);
}

async fn task_status_moves_only_for_the_holding_host(s: &TestServer) {
    let a = s.enroll("node-a").await;
    let b = s.enroll("node-b").await;
    let agent_a = s.agent("node-a", &a);
    let agent_b = s.agent("node-b", &b);
    s.post(
        "/api/v1/tasks",
        json!({ "type": "deployment", "host_id": "node-a" }),
    )
    .await;
    let body: Value = agent_a.poll("0").await.json().await.unwrap();
    let id = body["tasks"][0]["id"].as_str().unwrap().to_string();

    let err = error_body(agent_b.status(&id, "running").await, 409).await;
    assert_eq!(err["error"]["code"], "task_not_held");
    assert_eq!(err["error"]["details"]["holder"], "node-a");

    assert_eq!(agent_a.status(&id, "running").await.status(), 200);
    let res = agent_a
        .post(
            &format!("/api/v1/agent/tasks/{id}/status"),
            json!({ "status": "completed", "result": { "applied": true } }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let task: Value = res.json().await.unwrap();
    assert_eq!(task["status"], "completed");
    assert_eq!(task["result"]["applied"], true);
    // The same report again (a retry after a lost answer) is accepted unchanged.
    let res = agent_a
        .post(
            &format!("/api/v1/agent/tasks/{id}/status"),
            json!({ "status": "completed" }),
        )
        .await;
    assert_eq!(res.status(), 200);
    // But a completed task does not fail afterwards.
    error_body(agent_a.status(&id, "failed").await, 409).await;
    // Bad values are named.
    let err = error_body(agent_a.status(&id, "sleeping").await, 400).await;
    assert!(err["error"]["message"].as_str().unwrap().contains("status"));
    let err = error_body(agent_a.status(&id, "pending").await, 400).await;
    assert!(err["error"]["message"].as_str().unwrap().contains("status"));
    error_body(
        agent_a
            .status(&uuid::Uuid::now_v7().to_string(), "running")
            .await,
        404,
    )
    .await;
}

fn kpi_batch(batch_id: &str, exp: &str, variant: &str, input: u64, output: u64) -> Value {
    json!({
        "batch_id": batch_id,
        "experiment_id": exp,
        "variant": variant,
        "interval_start": "2026-11-23T10:00:00Z",
        "interval_end": "2026-11-23T10:00:10Z",
        "values": { "input_series": input, "output_series": output, "input_samples": input * 10, "output_samples": output * 10 }
    })
}

async fn replayed_kpi_batch_is_accepted_and_not_stored_twice(s: &TestServer) {
    let secret = s.enroll("node-a").await;
    let agent = s.agent("node-a", &secret);
    let exp = s.create_experiment(&["node-a"]).await;
    let exp_id = exp["id"].as_str().unwrap();
    let b1 = uuid::Uuid::new_v4().to_string();
    let b2 = uuid::Uuid::new_v4().to_string();
    let batches = json!({ "batches": [
        kpi_batch(&b1, exp_id, "baseline", 1000, 1000),
        kpi_batch(&b2, exp_id, "candidate", 1000, 130),
    ]});
    let res = agent.post("/api/v1/agent/metrics", batches.clone()).await;
    assert_eq!(res.status(), 200);
    let out: Value = res.json().await.unwrap();
    assert_eq!(out, json!({ "accepted": 2, "duplicates": 0 }));
    let res = agent.post("/api/v1/agent/metrics", batches).await;
    assert_eq!(res.status(), 200);
    let out: Value = res.json().await.unwrap();
    assert_eq!(out, json!({ "accepted": 0, "duplicates": 2 }));

    let metrics = s.get("/metrics").await.text().await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("phoenix_cardinality_reduction_percent{") && l.contains(exp_id))
        .unwrap_or_else(|| panic!("no reduction gauge for {exp_id} in\n{metrics}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((value - 87.0).abs() < 1e-6, "{line}");

    // Bad batches are refused whole, naming the field.
    let bad = json!({ "batches": [ {
        "batch_id": uuid::Uuid::new_v4(), "variant": "treatment",
        "interval_start": "2026-11-23T10:00:00Z", "interval_end": "2026-11-23T10:00:10Z",
        "values": { "input_series": 1, "output_series": 1 } } ] });
    let err = error_body(agent.post("/api/v1/agent/metrics", bad).await, 400).await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("batches[0].variant"),
        "{err}"
    );
    let backwards = json!({ "batches": [ {
        "batch_id": uuid::Uuid::new_v4(), "variant": "baseline",
        "interval_start": "2026-11-23T10:00:10Z", "interval_end": "2026-11-23T10:00:00Z",
        "values": { "input_series": 1, "output_series": 1 } } ] });
    let err = error_body(agent.post("/api/v1/agent/metrics", backwards).await, 400).await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interval_end"),
        "{err}"
    );

    let logs = json!({ "entries": [
        { "at": "2026-11-23T10:00:00Z", "level": "warn", "message": "exporter backing off" }
    ]});
    assert_eq!(agent.post("/api/v1/agent/logs", logs).await.status(), 202);
    let bad_logs = json!({ "entries": [ { "at": "yesterday", "level": "warn", "message": "x" } ] });
    let err = error_body(agent.post("/api/v1/agent/logs", bad_logs).await, 400).await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("entries[0].at"),
        "{err}"
    );
}

async fn heartbeat_shows_in_fleet_status_and_metrics(s: &TestServer) {
    let secret = s.enroll("node-a").await;
    let agent = s.agent("node-a", &secret);
    let res = agent
        .post(
            "/api/v1/agent/heartbeat",
            json!({
                "version": "0.1.0",
                "hostname": "node-a.example",
                "capabilities": ["shadow", "remote_write"],
                "labels": { "cluster": "eu-1" },
                "resource_usage": { "cpu_percent": 12.5, "memory_bytes": 41943040 },
                "running_pipelines": [ { "variant": "baseline" } ]
            }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let fleet: Value = s.get("/api/v1/fleet/status").await.json().await.unwrap();
    assert_eq!(fleet["total"], 1);
    let a = &fleet["agents"][0];
    assert_eq!(a["host_id"], "node-a");
    assert_eq!(a["health"], "healthy");
    assert_eq!(a["version"], "0.1.0");
    assert_eq!(a["labels"]["cluster"], "eu-1");
    assert_eq!(fleet["by_health"]["healthy"], 1);

    // A request for no route is counted too, under `route="unmatched"`.
    assert_eq!(s.get("/api/v1/no-such-route").await.status(), 404);
    let metrics = s.get("/metrics").await.text().await.unwrap();
    for needle in [
        "http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "phoenix_agent_last_seen_seconds{host_id=\"node-a\"}",
        "phoenix_task_queue_depth{status=\"pending\"}",
        "http_requests_total{",
        "http_request_duration_seconds_bucket{",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }

    let err = error_body(
        agent
            .post(
                "/api/v1/agent/heartbeat",
                json!({ "resource_usage": { "cpu_percent": "hot" } }),
            )
            .await,
        400,
    )
    .await;
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("resource_usage.cpu_percent"));
}

#[tokio::test]
async fn unknown_unenrolled_or_wrong_secret_agents_get_401_and_no_task() {
    let s = start_sqlite().await;
    s.post("/api/v1/tasks", json!({ "type": "health" })).await;
    // No headers at all.
    let res = s.get("/api/v1/agent/tasks?wait=0").await;
    assert_eq!(error_body(res, 401).await["error"]["code"], "unauthorized");
    // Never enrolled.
    error_body(s.agent("ghost", "whatever").poll("0").await, 401).await;
    // Wrong secret.
    let _ = s.enroll("node-a").await;
    error_body(s.agent("node-a", "not-the-secret").poll("0").await, 401).await;
    // Malformed host id.
    error_body(s.agent("bad host", "x").poll("0").await, 401).await;
    // Wrong enrollment token.
    let res = s
        .post(
            "/api/v1/agent/enroll",
            json!({ "host_id": "node-b", "enrollment_token": "guess" }),
        )
        .await;
    error_body(res, 401).await;
    // Revoked, after a successful call (its credentials are cached by then).
    let secret = s.enroll("node-c").await;
    let hb = s
        .agent("node-c", &secret)
        .post("/api/v1/agent/heartbeat", json!({}))
        .await;
    assert_eq!(hb.status(), 200);
    s.state
        .service
        .revoke_agent(&phoenix_core::HostId::parse("node-c").unwrap())
        .await
        .unwrap();
    let body = error_body(s.agent("node-c", &secret).poll("0").await, 401).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    // The host-less task is still there for a legitimate agent.
    let counts: Value = s
        .get("/api/v1/tasks?status=pending")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(counts["total"], 1);
}

#[tokio::test]
async fn oversize_metrics_batch_is_a_413_and_larger_than_the_default_limit_is_accepted() {
    let s = start_sqlite().await;
    let secret = s.enroll("node-a").await;
    let agent = s.agent("node-a", &secret);
    // ~3 MiB of details: over the 1 MiB default, under the 16 MiB batch limit.
    let details = "d".repeat(3 * 1024 * 1024);
    let mut batch = kpi_batch(
        &uuid::Uuid::new_v4().to_string(),
        &uuid::Uuid::now_v7().to_string(),
        "baseline",
        10,
        10,
    );
    batch["details"] = json!({ "blob": details });
    batch["experiment_id"] = Value::Null;
    let res = agent
        .post("/api/v1/agent/metrics", json!({ "batches": [batch] }))
        .await;
    assert_eq!(res.status(), 200);
    let huge = "d".repeat(17 * 1024 * 1024);
    let res = agent
        .post(
            "/api/v1/agent/metrics",
            json!({ "batches": [], "pad": huge }),
        )
        .await;
    error_body(res, 413).await;
}

#[tokio::test]
async fn expired_lease_returns_task_to_pending_then_fails_after_max_attempts() {
    let clock = ManualClock::new(chrono::Utc::now());
    let s = start_sqlite_with(test_config(), Arc::new(clock.clone())).await;
    let secret = s.enroll("node-a").await;
    let agent = s.agent("node-a", &secret);
    let res = s
        .post(
            "/api/v1/tasks",
            json!({ "type": "loadsim", "host_id": "node-a", "max_attempts": 2 }),
        )
        .await;
    let id = res.json::<Value>().await.unwrap()["task"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let last_tick = clock.now_for_test();

    for attempt in 1..=2 {
        let body: Value = agent.poll("0").await.json().await.unwrap();
        assert_eq!(body["tasks"][0]["id"], id.as_str(), "attempt {attempt}");
        assert_eq!(body["tasks"][0]["attempts"], attempt);
        clock.advance(chrono::Duration::seconds(61));
        s.state.service.tick_queue(last_tick).await.unwrap();
    }
    let task: Value = s
        .get(&format!("/api/v1/tasks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "failed");
    assert!(
        task["error"].as_str().unwrap().contains("lease expired"),
        "{task}"
    );
    // The agent that lost it may no longer report on it.
    error_body(agent.status(&id, "completed").await, 409).await;
}

#[tokio::test]
async fn heartbeats_keep_a_held_task_from_expiring() {
    let clock = ManualClock::new(chrono::Utc::now());
    let s = start_sqlite_with(test_config(), Arc::new(clock.clone())).await;
    let secret = s.enroll("node-a").await;
    let agent = s.agent("node-a", &secret);
    s.post(
        "/api/v1/tasks",
        json!({ "type": "experiment", "host_id": "node-a" }),
    )
    .await;
    let body: Value = agent.poll("0").await.json().await.unwrap();
    let id = body["tasks"][0]["id"].as_str().unwrap().to_string();
    for _ in 0..5 {
        clock.advance(chrono::Duration::seconds(40));
        let res = agent.post("/api/v1/agent/heartbeat", json!({})).await;
        assert_eq!(res.json::<Value>().await.unwrap()["leases_renewed"], 1);
        s.state
            .service
            .tick_queue(clock.now_for_test())
            .await
            .unwrap();
    }
    let task: Value = s
        .get(&format!("/api/v1/tasks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "assigned");
}

trait NowForTest {
    fn now_for_test(&self) -> chrono::DateTime<chrono::Utc>;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> chrono::DateTime<chrono::Utc> {
        use phoenix_core::Clock;
        self.now()
    }
}

#[tokio::test]
async fn idempotency_key_returns_the_existing_task() {
    let s = start_sqlite().await;
    let body = json!({ "type": "health", "idempotency_key": "nightly-health-2026-11-23" });
    let first = s.post("/api/v1/tasks", body.clone()).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = s.post("/api/v1/tasks", body).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["created"], false);
    assert_eq!(again["task"]["id"], first["task"]["id"]);
    let err = error_body(
        s.post("/api/v1/tasks", json!({ "type": "reboot" })).await,
        400,
    )
    .await;
    assert!(err["error"]["message"].as_str().unwrap().contains("type"));
    let err = error_body(
        s.post(
            "/api/v1/tasks",
            json!({ "type": "health", "max_attempts": 0 }),
        )
        .await,
        400,
    )
    .await;
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_attempts"));
}

#[tokio::test]
async fn ready_reports_the_store() {
    let s = start_sqlite().await;
    let body: Value = s.get("/ready").await.json().await.unwrap();
    assert_eq!(body["store"], "sqlite");
}

/// Replicas cache agent credentials; a revocation or a re-enrollment on one replica reaches
/// the others through PostgreSQL notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_changed_on_one_replica_are_honoured_by_another() {
    let (url, name) = create_pg_database().await;
    let a = start_pg_at(&url, None).await;
    let b = start_pg_at(&url, None).await;
    let host = phoenix_core::HostId::parse("node-r").unwrap();

    // Enrolled through A, used through B: B caches the credentials.
    let first = a.enroll("node-r").await;
    assert_eq!(b.agent("node-r", &first).poll("0").await.status(), 200);
    // Enrolled again through A: B accepts the new secret and refuses the old one.
    let second = a.enroll("node-r").await;
    assert_eq!(b.agent("node-r", &second).poll("0").await.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.agent("node-r", &first).poll("0").await.status() != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "old secret still accepted by B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Revoked through A: B refuses the agent.
    a.state.service.revoke_agent(&host).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let res = b.agent("node-r", &second).poll("0").await;
        if res.status() == 401 {
            let body = error_body(res, 401).await;
            assert!(body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("revoked"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revoked agent still accepted by B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(a);
    drop(b);
    drop_pg_database(&name).await;
}

/// An agent that stops heartbeating while its long-poll is parked (frozen by SIGSTOP, cut
/// off) is not handed work by that poll: it answers empty and the task stays queued for a
/// live agent. An agent that keeps heartbeating gets its task as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_poll_of_an_agent_gone_quiet_claims_nothing() {
    let config = phoenix_api::Config {
        agent_heartbeat_interval: Duration::from_secs(1),
        ..test_config()
    };
    let s = start_sqlite_with(config, Arc::new(phoenix_core::SystemClock)).await;
    let secret = s.enroll("node-a").await;
    let agent = s.agent("node-a", &secret);

    // Quiet: no heartbeat for longer than two intervals (plus a second) while parked.
    let poll = agent.poll("20s");
    let enqueue = async {
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let res = s
            .post(
                "/api/v1/tasks",
                json!({ "type": "health", "host_id": "node-a" }),
            )
            .await;
        assert_eq!(res.status(), 201);
        res.json::<Value>().await.unwrap()
    };
    let (res, queued) = tokio::join!(poll, enqueue);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["tasks"].as_array().unwrap().len(), 0, "{body}");
    let id = queued["task"]["id"].as_str().unwrap().to_string();
    let task: Value = s
        .get(&format!("/api/v1/tasks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(task["status"], "pending", "{task}");
    // A fresh poll (the agent is back) takes it.
    let body: Value = agent.poll("0").await.json().await.unwrap();
    assert_eq!(body["tasks"][0]["id"], id.as_str(), "{body}");

    // Heartbeating while parked: the poll claims what is queued for it.
    let poll = agent.poll("20s");
    let beat_then_enqueue = async {
        for _ in 0..7 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let res = agent.post("/api/v1/agent/heartbeat", json!({})).await;
            assert_eq!(res.status(), 200);
        }
        let res = s
            .post(
                "/api/v1/tasks",
                json!({ "type": "health", "host_id": "node-a" }),
            )
            .await;
        assert_eq!(res.status(), 201);
    };
    let (res, ()) = tokio::join!(poll, beat_then_enqueue);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1, "{body}");
}
