//! The experiments API over HTTP against a real server and store, and its answers to bad
//! input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};

on_both_backends!(
    experiment_lifecycle_create_start_stop_list_and_history,
    illegal_phase_moves_answer_409_with_the_current_phase,
    list_filters_by_phase_and_paginates,
    run_shaping_edits_are_refused_after_start,
    experiment_runs_once_every_target_started_and_fails_with_the_hosts_reason,
);

/// Claim everything queued for an agent (waiting a little for it to arrive).
async fn claim_all(agent: &AgentClient<'_>) -> Vec<Value> {
    let res = agent.poll("2s").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["tasks"].as_array().unwrap().clone()
}

async fn phase(s: &TestServer, id: &str) -> String {
    let got: Value = s
        .get(&format!("/api/v1/experiments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    got["phase"].as_str().unwrap().to_string()
}

async fn experiment_runs_once_every_target_started_and_fails_with_the_hosts_reason(s: &TestServer) {
    let (sa, sb) = (s.enroll("node-a").await, s.enroll("node-b").await);
    let (a, b) = (s.agent("node-a", &sa), s.agent("node-b", &sb));
    let exp = s.create_experiment(&["node-a", "node-b"]).await;
    let id = exp["id"].as_str().unwrap().to_string();
    let res = s
        .client
        .post(s.url(&format!("/api/v1/experiments/{id}/start")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(phase(s, &id).await, "initializing");

    let start_of = |tasks: &[Value]| {
        tasks
            .iter()
            .find(|t| t["type"] == "experiment" && t["payload"]["action"] == "start")
            .map(|t| t["id"].as_str().unwrap().to_string())
            .expect("a start task")
    };
    let deploy_of = |tasks: &[Value]| {
        tasks
            .iter()
            .find(|t| t["type"] == "deployment")
            .map(|t| t["id"].as_str().unwrap().to_string())
            .expect("a deployment task")
    };
    let (ta, tb) = (claim_all(&a).await, claim_all(&b).await);
    assert_eq!(a.status(&deploy_of(&ta), "completed").await.status(), 200);
    assert_eq!(a.status(&start_of(&ta), "running").await.status(), 200);
    // One target of two has started: still initializing.
    assert_eq!(phase(s, &id).await, "initializing");
    assert_eq!(b.status(&deploy_of(&tb), "completed").await.status(), 200);
    assert_eq!(b.status(&start_of(&tb), "running").await.status(), 200);
    assert_eq!(phase(s, &id).await, "running");

    // A second experiment whose deployment fails on one host fails, naming host and reason.
    let exp = s.create_experiment(&["node-a", "node-b"]).await;
    let id = exp["id"].as_str().unwrap().to_string();
    s.client
        .post(s.url(&format!("/api/v1/experiments/{id}/start")))
        .send()
        .await
        .unwrap();
    let tb = claim_all(&b).await;
    let res = b
        .post(
            &format!("/api/v1/agent/tasks/{}/status", deploy_of(&tb)),
            json!({ "status": "failed", "error": "pipelines.candidate.processors[0].topk.k: must be greater than 0" }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let got: Value = s
        .get(&format!("/api/v1/experiments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["phase"], "failed");
    let reason = got["phase_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("node-b") && reason.contains("topk.k"),
        "{got}"
    );
}

async fn experiment_lifecycle_create_start_stop_list_and_history(s: &TestServer) {
    let exp = s.create_experiment(&["node-a", "node-b"]).await;
    assert_eq!(exp["phase"], "pending");
    let id = exp["id"].as_str().unwrap().to_string();

    let got: Value = s
        .get(&format!("/api/v1/experiments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["name"], "cut k8s series");

    let res = s
        .client
        .post(s.url(&format!("/api/v1/experiments/{id}/start")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let started: Value = res.json().await.unwrap();
    assert_eq!(started["experiment"]["phase"], "initializing");
    assert_eq!(started["event"]["to_phase"], "initializing");
    assert_eq!(
        started["task_ids"].as_array().unwrap().len(),
        4,
        "deployment + experiment per host"
    );

    let tasks: Value = s
        .get(&format!("/api/v1/tasks?experiment_id={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tasks["total"], 4);
    for t in tasks["items"].as_array().unwrap() {
        assert_eq!(t["status"], "pending");
        assert!(["node-a", "node-b"].contains(&t["host_id"].as_str().unwrap()));
    }

    let res = s
        .post(
            &format!("/api/v1/experiments/{id}/stop"),
            json!({ "reason": "enough data" }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let stopped: Value = res.json().await.unwrap();
    assert_eq!(stopped["experiment"]["phase"], "stopped");
    assert_eq!(
        stopped["task_ids"].as_array().unwrap().len(),
        2,
        "a stop task per host"
    );

    let events: Value = s
        .get(&format!("/api/v1/experiments/{id}/events"))
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["kind"].as_str().unwrap(),
                e["to_phase"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "created:pending",
            "phase_changed:initializing",
            "phase_changed:stopped"
        ]
    );
    let seqs: Vec<i64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let after: Value = s
        .get(&format!(
            "/api/v1/experiments/{id}/events?after_seq={}",
            seqs[1]
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after.as_array().unwrap().len(), 1);
    assert!(events[2]["message"]
        .as_str()
        .unwrap()
        .contains("enough data"));

    let list: Value = s.get("/api/v1/experiments").await.json().await.unwrap();
    assert_eq!(list["total"], 1);

    let res = s
        .client
        .delete(s.url(&format!("/api/v1/experiments/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    error_body(s.get(&format!("/api/v1/experiments/{id}")).await, 404).await;
}

async fn illegal_phase_moves_answer_409_with_the_current_phase(s: &TestServer) {
    let exp = s.create_experiment(&["node-a"]).await;
    let id = exp["id"].as_str().unwrap();
    let body = error_body(
        s.post(&format!("/api/v1/experiments/{id}/rollback"), json!({}))
            .await,
        409,
    )
    .await;
    assert_eq!(body["error"]["code"], "phase_conflict");
    assert_eq!(body["error"]["details"]["current_phase"], "pending");

    let start = |id: String| async move {
        s.client
            .post(s.url(&format!("/api/v1/experiments/{id}/start")))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(start(id.to_string()).await.status(), 200);
    let body = error_body(start(id.to_string()).await, 409).await;
    assert_eq!(body["error"]["details"]["current_phase"], "initializing");
    assert_eq!(
        body["error"]["message"],
        "experiment is initializing, cannot start"
    );

    // An active experiment cannot be deleted.
    let res = s
        .client
        .delete(s.url(&format!("/api/v1/experiments/{id}")))
        .send()
        .await
        .unwrap();
    let body = error_body(res, 409).await;
    assert_eq!(body["error"]["details"]["current_phase"], "initializing");

    let rolled = s
        .post(&format!("/api/v1/experiments/{id}/rollback"), json!({}))
        .await;
    assert_eq!(rolled.status(), 200);
    let body = error_body(
        s.post(&format!("/api/v1/experiments/{id}/stop"), json!({}))
            .await,
        409,
    )
    .await;
    assert_eq!(body["error"]["details"]["current_phase"], "rolled_back");
}

async fn list_filters_by_phase_and_paginates(s: &TestServer) {
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            s.create_experiment(&["node-a"]).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids[..2] {
        let res = s
            .client
            .post(s.url(&format!("/api/v1/experiments/{id}/start")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let page: Value = s
        .get("/api/v1/experiments?phase=pending&limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let page2: Value = s
        .get("/api/v1/experiments?phase=pending&limit=2&offset=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    let init: Value = s
        .get("/api/v1/experiments?phase=initializing")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(init["total"], 2);
    for e in init["items"].as_array().unwrap() {
        assert_eq!(e["phase"], "initializing");
    }
}

async fn run_shaping_edits_are_refused_after_start(s: &TestServer) {
    let exp = s.create_experiment(&["node-a"]).await;
    let id = exp["id"].as_str().unwrap();
    let path = format!("/api/v1/experiments/{id}");
    let patch = |body: Value| s.patch(&path, body);
    let res = patch(json!({ "duration_seconds": 120, "description": "two minutes" })).await;
    assert_eq!(res.status(), 200);
    let e: Value = res.json().await.unwrap();
    assert_eq!(e["duration_seconds"], 120);
    s.client
        .post(s.url(&format!("/api/v1/experiments/{id}/start")))
        .send()
        .await
        .unwrap();
    let body = error_body(patch(json!({ "duration_seconds": 60 })).await, 409).await;
    assert_eq!(body["error"]["details"]["current_phase"], "initializing");
    let res = patch(json!({ "name": "renamed while running" })).await;
    assert_eq!(res.status(), 200);
}

// ---- bad input (SQLite is enough: the mapping is the same code) ----

#[tokio::test]
async fn a_split_experiment_is_patched_back_to_shadow_by_clearing_its_share() {
    let s = start_sqlite().await;
    let exp = s.create_experiment(&["node-a"]).await;
    let id = exp["id"].as_str().unwrap();
    let path = format!("/api/v1/experiments/{id}");
    let patch = |body: Value| s.patch(&path, body);
    let res = patch(json!({ "mode": "split", "candidate_share_percent": 30 })).await;
    assert_eq!(res.status(), 200);
    let body = error_body(patch(json!({ "mode": "shadow" })).await, 400).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("candidate_share_percent"));
    let res = patch(json!({ "mode": "shadow", "candidate_share_percent": null })).await;
    assert_eq!(res.status(), 200);
    let e: Value = res.json().await.unwrap();
    assert_eq!(
        (e["mode"].as_str(), &e["candidate_share_percent"]),
        (Some("shadow"), &Value::Null)
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_that_says_where() {
    let s = start_sqlite().await;
    let res = s
        .client
        .post(s.url("/api/v1/experiments"))
        .header("content-type", "application/json")
        .body(r#"{"name": "x", "#)
        .send()
        .await
        .unwrap();
    let body = error_body(res, 400).await;
    assert_eq!(body["error"]["code"], "invalid_json");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("line 1"));
}

#[tokio::test]
async fn wrong_types_missing_fields_and_unknown_enums_name_the_field() {
    let s = start_sqlite().await;
    let base = json!({ "name": "n", "baseline_pipeline": "b", "candidate_pipeline": "c" });
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({ "name": "n", "baseline_pipeline": "b" }),
            "candidate_pipeline",
        ),
        (
            merge(&base, json!({ "duration_seconds": "soon" })),
            "duration_seconds",
        ),
        (merge(&base, json!({ "mode": "blue" })), "mode"),
        (
            merge(&base, json!({ "target_hosts": ["ok", "not ok"] })),
            "target_hosts[1]",
        ),
        (merge(&base, json!({ "colour": "red" })), "colour"),
        (merge(&base, json!({ "name": "" })), "name"),
        (
            merge(&base, json!({ "mode": "split" })),
            "candidate_share_percent",
        ),
        (
            merge(&base, json!({ "duration_seconds": 0 })),
            "duration_seconds",
        ),
    ];
    for (body, field) in cases {
        let res = s.post("/api/v1/experiments", body.clone()).await;
        let err = error_body(res, 400).await;
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(field),
            "body {body}: message `{msg}` does not name `{field}`"
        );
    }
}

fn merge(base: &Value, extra: Value) -> Value {
    let mut out = base.clone();
    for (k, v) in extra.as_object().unwrap() {
        out[k] = v.clone();
    }
    out
}

#[tokio::test]
async fn oversize_body_is_a_413_with_the_error_body() {
    let s = start_sqlite().await;
    let big = "x".repeat(2 * 1024 * 1024);
    let res = s
        .post(
            "/api/v1/experiments",
            json!({ "name": "n", "baseline_pipeline": "b", "candidate_pipeline": big }),
        )
        .await;
    let body = error_body(res, 413).await;
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn wrong_content_type_is_a_415() {
    let s = start_sqlite().await;
    let res = s
        .client
        .post(s.url("/api/v1/experiments"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    error_body(res, 415).await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_routes_and_methods() {
    let s = start_sqlite().await;
    let unknown = uuid::Uuid::now_v7();
    let body = error_body(s.get(&format!("/api/v1/experiments/{unknown}")).await, 404).await;
    assert_eq!(body["error"]["code"], "not_found");
    error_body(
        s.post(&format!("/api/v1/experiments/{unknown}/start"), json!({}))
            .await,
        404,
    )
    .await;
    error_body(
        s.get(&format!("/api/v1/experiments/{unknown}/events"))
            .await,
        404,
    )
    .await;
    error_body(s.get(&format!("/api/v1/tasks/{unknown}")).await, 404).await;
    let body = error_body(s.get("/api/v1/experiments/not-a-uuid").await, 400).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("path.id"));
    error_body(s.get("/api/v1/nothing-here").await, 404).await;
    let res = s
        .client
        .put(s.url("/api/v1/experiments"))
        .send()
        .await
        .unwrap();
    error_body(res, 405).await;
}

#[tokio::test]
async fn bad_query_parameters_are_named() {
    let s = start_sqlite().await;
    let body = error_body(s.get("/api/v1/experiments?phase=done").await, 400).await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("phase"),
        "{body}"
    );
    let body = error_body(s.get("/api/v1/experiments?limit=0").await, 400).await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    let body = error_body(s.get("/api/v1/experiments?limit=many").await, 400).await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    error_body(s.get("/api/v1/tasks?status=sleeping").await, 400).await;
}

#[tokio::test]
async fn starting_without_targets_is_refused_naming_the_field() {
    let s = start_sqlite().await;
    let exp = s.create_experiment(&[]).await;
    let id = exp["id"].as_str().unwrap();
    let res = s
        .client
        .post(s.url(&format!("/api/v1/experiments/{id}/start")))
        .send()
        .await
        .unwrap();
    let body = error_body(res, 400).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("target_hosts"));
}

#[tokio::test]
async fn request_ids_are_generated_or_echoed() {
    let s = start_sqlite().await;
    let res = s.get("/health").await;
    let id = res.headers().get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let res = s
        .client
        .get(s.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers().get("x-request-id").unwrap(), "abc-123");
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let s = start_sqlite().await;
    let doc: Value = s.get("/api/v1/openapi.json").await.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/experiments",
        "/api/v1/experiments/{id}",
        "/api/v1/experiments/{id}/start",
        "/api/v1/experiments/{id}/stop",
        "/api/v1/experiments/{id}/rollback",
        "/api/v1/experiments/{id}/events",
        "/api/v1/agent/enroll",
        "/api/v1/agent/tasks",
        "/api/v1/agent/tasks/{id}/status",
        "/api/v1/agent/heartbeat",
        "/api/v1/agent/metrics",
        "/api/v1/agent/logs",
        "/api/v1/tasks",
        "/api/v1/tasks/{id}",
        "/api/v1/fleet/status",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from openapi.json");
    }
    assert!(doc["components"]["schemas"]["Experiment"].is_object());
}
