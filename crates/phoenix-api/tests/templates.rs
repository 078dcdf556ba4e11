//! Pipeline templates over HTTP against a real server and store: the built-ins, rendering
//! as Phoenix and OpenTelemetry Collector YAML, validation, user templates and their
//! versions, and experiments refusing unknown templates and parameters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};

on_both_backends!(
    builtins_render_as_phoenix_and_otelcol_and_validate,
    user_templates_are_versioned_and_reach_agents_rendered,
    bad_templates_parameters_and_pipelines_are_400s_naming_them,
);

fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|f| f["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn put(s: &TestServer, path: &str, body: Value) -> reqwest::Response {
    s.client.put(s.url(path)).json(&body).send().await.unwrap()
}

async fn builtins_render_as_phoenix_and_otelcol_and_validate(s: &TestServer) {
    let list: Value = s
        .get("/api/v1/pipelines/templates")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for want in [
        "baseline",
        "topk",
        "adaptive",
        "hybrid",
        "cardinality-cap",
        "errors-and-anomalies",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    let topk: Value = s
        .get("/api/v1/pipelines/templates/topk")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(topk["builtin"], true);
    assert_eq!(topk["versions"], json!([1]));
    let k = topk["template"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "k")
        .unwrap()
        .clone();
    assert_eq!(k["type"], "integer");
    assert_eq!(k["default"], 100);

    let res = s
        .post(
            "/api/v1/pipelines/render",
            json!({ "template": "topk", "parameters": { "k": 20 } }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let r: Value = res.json().await.unwrap();
    assert!(r["yaml"].as_str().unwrap().contains("k: 20"), "{r}");
    assert_eq!(r["format"], "phoenix");

    let res = s
        .post(
            "/api/v1/pipelines/render",
            json!({ "template": "adaptive", "format": "otelcol" }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let r: Value = res.json().await.unwrap();
    let yaml = r["yaml"].as_str().unwrap();
    let parsed: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    assert!(parsed.get("service").is_some(), "{yaml}");
    assert!(!r["notes"].as_array().unwrap().is_empty(), "{r}");

    let res = s
        .post(
            "/api/v1/pipelines/validate",
            json!({ "pipeline": "processors: [{type: topk, k: 5}, {type: sample, rate: 0.5}]" }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["processors"], json!(["topk", "sample"]));
}

async fn user_templates_are_versioned_and_reach_agents_rendered(s: &TestServer) {
    let v1 = json!({
        "description": "topk with a fixed window",
        "parameters": [{ "name": "k", "type": "integer", "description": "kept", "default": 10, "min": 1 }],
        "source": "processors:\n  - type: topk\n    k: {{ k }}\n    window: 1m\n"
    });
    let res = put(s, "/api/v1/pipelines/templates/team-topk", v1).await;
    assert_eq!(res.status(), 200);
    let t: Value = res.json().await.unwrap();
    assert_eq!(t["template"]["version"], 1);
    let mut v2 = json!({
        "description": "now 2m",
        "parameters": [{ "name": "k", "type": "integer", "description": "kept", "default": 10, "min": 1 }],
        "source": "processors:\n  - type: topk\n    k: {{ k }}\n    window: 2m\n"
    });
    let res = put(s, "/api/v1/pipelines/templates/team-topk", v2.clone()).await;
    let t: Value = res.json().await.unwrap();
    assert_eq!(t["template"]["version"], 2);
    assert_eq!(t["versions"], json!([1, 2]));
    // The old version stays readable.
    let old: Value = s
        .get("/api/v1/pipelines/templates/team-topk?version=1")
        .await
        .json()
        .await
        .unwrap();
    assert!(old["template"]["source"].as_str().unwrap().contains("1m"));
    error_body(
        s.get("/api/v1/pipelines/templates/team-topk?version=7")
            .await,
        404,
    )
    .await;
    // A source that renders an invalid pipeline is refused, with the pipeline's path.
    v2["source"] = json!("processors:\n  - type: topk\n    k: 0\n");
    let body = error_body(
        put(s, "/api/v1/pipelines/templates/team-topk", v2).await,
        400,
    )
    .await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("k"),
        "{body}"
    );
    // Built-ins cannot be overwritten.
    let body = error_body(
        put(
            s,
            "/api/v1/pipelines/templates/topk",
            json!({ "source": "processors: []\n" }),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(body["error"]["code"], "builtin_template");

    // An experiment on the user template: the agent receives the rendered pipeline.
    let secret = s.enroll("node-a").await;
    let a = s.agent("node-a", &secret);
    let res = s
        .post(
            "/api/v1/experiments",
            json!({ "name": "team", "baseline_pipeline": "baseline", "candidate_pipeline": "team-topk",
                    "parameters": { "k": 7 }, "target_hosts": ["node-a"] }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let res = s
        .client
        .post(s.url(&format!("/api/v1/experiments/{id}/start")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = a.poll("2s").await.json().await.unwrap();
    let deploy = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "deployment")
        .unwrap()
        .clone();
    assert_eq!(deploy["payload"]["baseline_pipeline"], "baseline");
    let candidate = deploy["payload"]["candidate_pipeline"].as_str().unwrap();
    assert!(
        candidate.contains("topk") && candidate.contains("k: 7") && candidate.contains("2m"),
        "{candidate}"
    );
}

async fn bad_templates_parameters_and_pipelines_are_400s_naming_them(s: &TestServer) {
    // Render: unknown template, out-of-range and unknown parameters.
    let body = error_body(
        s.post("/api/v1/pipelines/render", json!({ "template": "topkk" }))
            .await,
        400,
    )
    .await;
    assert_eq!(fields(&body), vec!["template"]);
    assert!(body["error"]["message"].as_str().unwrap().contains("topk"));
    let body = error_body(
        s.post(
            "/api/v1/pipelines/render",
            json!({ "template": "topk", "parameters": { "k": 0, "color": "red" } }),
        )
        .await,
        400,
    )
    .await;
    let f = fields(&body);
    assert!(f.contains(&"parameters.k".to_string()), "{body}");
    assert!(f.contains(&"parameters.color".to_string()), "{body}");
    let body = error_body(
        s.post(
            "/api/v1/pipelines/render",
            json!({ "template": "topk", "format": "grafana" }),
        )
        .await,
        400,
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("format"),
        "{body}"
    );

    // Validate: every problem with its path.
    let body = error_body(
        s.post(
            "/api/v1/pipelines/validate",
            json!({ "pipeline": "processors: [{type: topk, k: 0}]" }),
        )
        .await,
        400,
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("topk.k"),
        "{body}"
    );

    // Experiments: an unknown template, a parameter no variant declares, a value out of range.
    let body = error_body(
        s.post(
            "/api/v1/experiments",
            json!({ "name": "x", "baseline_pipeline": "baseline", "candidate_pipeline": "adaptiv" }),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&body), vec!["candidate_pipeline"]);
    let body = error_body(
        s.post(
            "/api/v1/experiments",
            json!({ "name": "x", "baseline_pipeline": "baseline", "candidate_pipeline": "topk",
                    "parameters": { "kk": 3 } }),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(fields(&body), vec!["parameters.kk"]);
    let body = error_body(
        s.post(
            "/api/v1/experiments",
            json!({ "name": "x", "baseline_pipeline": "baseline", "candidate_pipeline": "topk",
                    "parameters": { "k": -1 } }),
        )
        .await,
        400,
    )
    .await;
    assert!(
        fields(&body).contains(&"parameters.k".to_string()),
        "{body}"
    );
    // Unknown template names to read.
    error_body(s.get("/api/v1/pipelines/templates/nope").await, 404).await;
}
