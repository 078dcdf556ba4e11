//! Pipeline deployments over HTTP against a real server and store: deploy a template to
//! hosts by name and by label, follow each host, withdraw, and refuse bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};

on_both_backends!(
    a_template_is_deployed_followed_per_host_and_withdrawn,
    deployments_refuse_bad_input,
);

async fn tasks_of(agent: &AgentClient<'_>) -> Vec<Value> {
    let body: Value = agent.poll("2s").await.json().await.unwrap();
    body["tasks"].as_array().unwrap().clone()
}

async fn a_template_is_deployed_followed_per_host_and_withdrawn(s: &TestServer) {
    let sa = s.enroll("node-a").await;
    let a = s.agent("node-a", &sa);
    let res = a
        .post(
            "/api/v1/agent/heartbeat",
            json!({ "labels": { "cluster": "eu-1" } }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = s
        .post(
            "/api/v1/pipeline-deployments",
            json!({
                "name": "topk everywhere in eu-1",
                "pipeline": "topk",
                "parameters": { "k": 5 },
                "target_hosts": ["node-b"],
                "target_selector": { "cluster": "eu-1" }
            }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let d: Value = res.json().await.unwrap();
    let id = d["id"].as_str().unwrap().to_string();
    assert_eq!(d["status"], "active");
    assert_eq!(d["target_hosts"], json!(["node-b", "node-a"]));
    assert_eq!(d["by_status"], json!({ "pending": 2 }));

    // node-a receives the pipeline and applies it.
    let tasks = tasks_of(&a).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["type"], "deployment");
    assert_eq!(tasks[0]["payload"]["pipeline"], "topk");
    assert_eq!(tasks[0]["payload"]["parameters"], json!({ "k": 5 }));
    let task_id = tasks[0]["id"].as_str().unwrap();
    assert_eq!(a.status(task_id, "completed").await.status(), 200);
    let d: Value = s
        .get(&format!("/api/v1/pipeline-deployments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let hosts: Vec<(&str, &str)> = d["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host_id"].as_str().unwrap(),
                h["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(hosts, vec![("node-a", "completed"), ("node-b", "pending")]);

    let list: Value = s
        .get("/api/v1/pipeline-deployments")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["name"], "topk everywhere in eu-1");

    // Withdrawn: every host gets the baseline back; withdrawing again changes nothing.
    let res = s
        .client
        .delete(s.url(&format!("/api/v1/pipeline-deployments/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let d: Value = res.json().await.unwrap();
    assert_eq!(d["status"], "withdrawn");
    let tasks = tasks_of(&a).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["payload"]["pipeline"], "baseline");
    let res = s
        .client
        .delete(s.url(&format!("/api/v1/pipeline-deployments/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(tasks_of(&a).await.is_empty());
}

async fn deployments_refuse_bad_input(s: &TestServer) {
    let field_of = |body: &Value| {
        body["error"]["details"]["fields"][0]["field"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    // Parameters the template refuses: 400 naming the parameter.
    let res = s
        .post(
            "/api/v1/pipeline-deployments",
            json!({ "name": "bad k", "pipeline": "topk", "parameters": { "k": 0 },
                    "target_hosts": ["node-a"] }),
        )
        .await;
    let body = error_body(res, 400).await;
    assert_eq!(field_of(&body), "parameters.k", "{body}");
    // A literal that is no pipeline.
    let res = s
        .post(
            "/api/v1/pipeline-deployments",
            json!({ "name": "bad yaml", "pipeline": "processors: [", "target_hosts": ["node-a"] }),
        )
        .await;
    let body = error_body(res, 400).await;
    assert_eq!(field_of(&body), "pipeline", "{body}");
    // No target at all, a selector that matches nobody, an unknown field.
    let res = s
        .post(
            "/api/v1/pipeline-deployments",
            json!({ "name": "nowhere", "pipeline": "topk" }),
        )
        .await;
    let body = error_body(res, 400).await;
    assert_eq!(field_of(&body), "target_hosts", "{body}");
    let res = s
        .post(
            "/api/v1/pipeline-deployments",
            json!({ "name": "nobody", "pipeline": "topk", "target_selector": { "cluster": "ap-9" } }),
        )
        .await;
    let body = error_body(res, 409).await;
    assert_eq!(body["error"]["code"], "no_targets");
    let res = s
        .post(
            "/api/v1/pipeline-deployments",
            json!({ "name": "x", "pipeline": "topk", "target_hosts": ["node-a"], "hosts": [] }),
        )
        .await;
    error_body(res, 400).await;
    // Unknown and malformed ids.
    let missing = uuid::Uuid::new_v4();
    error_body(
        s.get(&format!("/api/v1/pipeline-deployments/{missing}"))
            .await,
        404,
    )
    .await;
    error_body(s.get("/api/v1/pipeline-deployments/nope").await, 400).await;
    let res = s
        .client
        .delete(s.url(&format!("/api/v1/pipeline-deployments/{missing}")))
        .send()
        .await
        .unwrap();
    error_body(res, 404).await;
}
