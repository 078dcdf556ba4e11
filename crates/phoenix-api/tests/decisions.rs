//! Experiments that decide, over HTTP against a real server and store: the scheduler ends a
//! run with `promote` and its reasons, rolls back a bad candidate on its own naming the
//! guardrail, metric and host, serves KPIs, results and cost, and refuses bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use common::*;
use serde_json::{json, Value};

on_both_backends!(
    a_good_candidate_is_promoted_with_reasons_cost_and_promote_tasks,
    a_candidate_that_breaks_a_guardrail_is_rolled_back_naming_guardrail_metric_and_host,
    analysis_and_cost_refuse_bad_input,
    a_target_selector_picks_agents_by_label_at_start_and_nobody_is_a_409,
    a_candidate_dropping_a_label_an_alert_uses_is_rolled_back,
    unparsable_promql_is_a_400_naming_the_rule,
    a_target_that_fails_is_excluded_and_the_others_decide,
    excluding_below_min_targets_fails_the_experiment_and_bad_policies_are_400,
);

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What a shadow run reports per host per 5 s interval: the baseline passes everything, the
/// candidate keeps `kept` series of 10,000 (and all 50 protected ones, unless `lost` of them),
/// its worst metric total off by `err` (0.002 = 0.2 %).
fn batches(
    exp: &str,
    end: DateTime<Utc>,
    kept: u64,
    lost: u64,
    err: f64,
    worst_metric: &str,
) -> Vec<Value> {
    let start = end - chrono::Duration::seconds(5);
    let one = |variant: &str, out: u64, p_out: u64, err: f64| {
        json!({
            "batch_id": uuid::Uuid::new_v4(),
            "experiment_id": exp,
            "variant": variant,
            "interval_start": ts(start),
            "interval_end": ts(end),
            "values": {
                "input_series": 10_000, "output_series": out,
                "input_samples": 10_000, "output_samples": out,
                "protected_series_in": 50, "protected_series_out": p_out,
                "anomalies_in": 10, "anomalies_kept": 10,
                "ns_per_sample": if variant == "baseline" { 300.0 } else { 700.0 },
                "max_total_error": err
            },
            "details": { "worst_metric": { "metric": worst_metric, "relative_error": err } }
        })
    };
    vec![
        one("baseline", 10_000, 50, 0.0),
        one("candidate", kept, 50 - lost, err),
    ]
}

async fn create(s: &TestServer, hosts: &[&str], duration: u64, analysis: Value) -> String {
    let res = s
        .post(
            "/api/v1/experiments",
            json!({
                "name": "decide",
                "baseline_pipeline": "baseline",
                "candidate_pipeline": "adaptive",
                "target_hosts": hosts,
                "duration_seconds": duration,
                "analysis": analysis,
            }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

async fn get_json(s: &TestServer, path: &str) -> Value {
    let res = s.get(path).await;
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

/// Starts `id`, has every agent claim and run its tasks, reporting `kpis` first.
async fn run_on(s: &TestServer, id: &str, agents: &[AgentClient<'_>], kpis: &[Vec<Value>]) {
    let res = s
        .client
        .post(s.url(&format!("/api/v1/experiments/{id}/start")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for (agent, kpis) in agents.iter().zip(kpis) {
        let res = agent
            .post("/api/v1/agent/metrics", json!({ "batches": kpis }))
            .await;
        assert_eq!(res.status(), 200);
        let body: Value = agent.poll("2s").await.json().await.unwrap();
        for t in body["tasks"].as_array().unwrap() {
            let status = if t["type"] == "deployment" {
                "completed"
            } else {
                "running"
            };
            let task_id = t["id"].as_str().unwrap();
            assert_eq!(agent.status(task_id, status).await.status(), 200);
        }
    }
}

async fn wait_for_phase(s: &TestServer, id: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let e = get_json(s, &format!("/api/v1/experiments/{id}")).await;
        if e["phase"] == want {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after {within:?}: {e}",
            e["phase"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_good_candidate_is_promoted_with_reasons_cost_and_promote_tasks(s: &TestServer) {
    let hosts = ["node-a", "node-b"];
    let secrets = [s.enroll(hosts[0]).await, s.enroll(hosts[1]).await];
    let agents = [
        s.agent(hosts[0], &secrets[0]),
        s.agent(hosts[1], &secrets[1]),
    ];
    // Ten 5-second intervals already reported, the candidate keeping 12–16 % of the series.
    let id = create(
        s,
        &hosts,
        1,
        json!({ "interval_seconds": 5, "min_intervals": 5 }),
    )
    .await;
    let now = Utc::now();
    let kpis: Vec<Vec<Value>> = (0..2u64)
        .map(|h| {
            (0..10u64)
                .flat_map(|i| {
                    let end = now - chrono::Duration::seconds(5 * (10 - i as i64));
                    batches(
                        &id,
                        end,
                        1_200 + 100 * ((i + h) % 5),
                        0,
                        0.002,
                        "http_requests_total",
                    )
                })
                .collect()
        })
        .collect();
    run_on(s, &id, &agents, &kpis).await;

    let exp = wait_for_phase(s, &id, "completed", Duration::from_secs(20)).await;
    assert_eq!(exp["promoted"], true, "{exp}");
    assert!(
        exp["phase_reason"].as_str().unwrap().contains("promote"),
        "{exp}"
    );

    let results = get_json(s, &format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(results["source"], "stored");
    let r = &results["result"];
    assert_eq!(r["decision"], "promote", "{results}");
    assert_eq!(r["final"], true);
    assert!(r["intervals"].as_u64().unwrap() >= 9, "{r}");
    assert_eq!(r["hosts"], 2);
    let reasons: Vec<&str> = r["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|x| x.contains("removes") && x.contains("target at least 70")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|x| x.contains("Mann–Whitney")),
        "{reasons:?}"
    );
    let reduction = r["reduction_percent"].as_f64().unwrap();
    assert!((85.0..89.0).contains(&reduction), "{reduction}");
    assert_eq!(r["protected_coverage_percent"], 100.0);
    let rank = &r["rank_test"];
    assert_eq!(rank["classification"], "low", "{rank}");
    assert!(rank["p_value"].as_f64().unwrap() < 0.02, "{rank}");
    let guardrails: Vec<(&str, &str)> = r["guardrails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["guardrail"].as_str().unwrap(),
                g["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        guardrails,
        vec![
            ("min_reduction", "pass"),
            ("protected_coverage", "pass"),
            ("max_total_error", "pass"),
            ("min_anomaly_recall", "pass"),
            ("max_added_cpu", "not_enforced"),
            ("used_labels", "no_data"),
        ]
    );
    // The same at its other address.
    let again = get_json(s, &format!("/api/v1/experiments/{id}/analysis")).await;
    assert_eq!(again["result"], results["result"]);

    // KPIs: per interval, summed across the two hosts.
    let k = get_json(s, &format!("/api/v1/experiments/{id}/kpis")).await;
    assert_eq!(k["interval_seconds"], 5);
    assert_eq!(k["summary"]["hosts"], 2);
    assert_eq!(k["summary"]["batches"], 40);
    let first = &k["baseline"][0];
    assert_eq!(first["hosts"], 2);
    assert_eq!(first["input_series"], 20_000.0);

    // Cost: the baseline's 20,000 series against the candidate's ~2,800.
    let c = get_json(s, &format!("/api/v1/experiments/{id}/cost-analysis")).await;
    assert_eq!(c["selected"]["preset"], "per-series");
    let saved = c["selected"]["savings_monthly"].as_f64().unwrap();
    let expect = (20_000.0 - c["after"]["active_series"].as_f64().unwrap()) * 0.008;
    assert!((saved - expect).abs() < 1e-6, "{c}");
    assert!(c["selected"]["savings_percent"].as_f64().unwrap() > 80.0);
    assert_eq!(c["presets"].as_array().unwrap().len(), 3);

    // Every target is told to make the candidate its live pipeline.
    for agent in &agents {
        let body: Value = agent.poll("2s").await.json().await.unwrap();
        let actions: Vec<&str> = body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["payload"]["action"].as_str())
            .collect();
        assert_eq!(actions, vec!["promote"], "{body}");
    }

    // The promotion is recorded as a pipeline deployment, followed per host.
    let deployments = get_json(s, "/api/v1/pipeline-deployments").await;
    assert_eq!(deployments["total"], 1, "{deployments}");
    let d = &deployments["items"][0];
    assert_eq!(d["pipeline"], "adaptive");
    assert_eq!(d["target_hosts"], json!(["node-a", "node-b"]));
    assert!(d["name"].as_str().unwrap().contains(&id));

    // The history tells the story.
    let events = get_json(s, &format!("/api/v1/experiments/{id}/events")).await;
    let to: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["to_phase"].as_str())
        .collect();
    assert_eq!(
        to,
        vec![
            "pending",
            "initializing",
            "running",
            "analyzing",
            "completed"
        ]
    );
}

async fn a_candidate_that_breaks_a_guardrail_is_rolled_back_naming_guardrail_metric_and_host(
    s: &TestServer,
) {
    let hosts = ["node-a", "node-b"];
    let secrets = [s.enroll(hosts[0]).await, s.enroll(hosts[1]).await];
    let agents = [
        s.agent(hosts[0], &secrets[0]),
        s.agent(hosts[1], &secrets[1]),
    ];
    let id = create(s, &hosts, 3600, json!({ "interval_seconds": 5 })).await;
    let now = Utc::now();
    // On node-b the candidate's total of one metric is 4 % off the baseline's.
    let kpis = vec![
        batches(&id, now, 1_500, 0, 0.002, "http_requests_total"),
        batches(&id, now, 1_500, 0, 0.04, "apiserver_request_total"),
    ];
    run_on(s, &id, &agents, &kpis).await;

    let exp = wait_for_phase(s, &id, "rolled_back", Duration::from_secs(20)).await;
    let reason = exp["phase_reason"].as_str().unwrap();
    assert!(
        reason.contains("automatic rollback")
            && reason.contains("max_total_error")
            && reason.contains("apiserver_request_total")
            && reason.contains("node-b"),
        "{reason}"
    );
    let r = get_json(s, &format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(r["result"]["decision"], "rollback");
    assert_eq!(r["result"]["breach"]["guardrail"], "max_total_error");
    assert_eq!(r["result"]["breach"]["metric"], "apiserver_request_total");
    assert_eq!(r["result"]["breach"]["host_id"], "node-b");
    // Both targets are told to go back to the baseline.
    for agent in &agents {
        let body: Value = agent.poll("2s").await.json().await.unwrap();
        let actions: Vec<&str> = body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["payload"]["action"].as_str())
            .collect();
        assert_eq!(actions, vec!["rollback"], "{body}");
    }

    // node-b's candidate folded 3 of its 50 protected series into an aggregate. With
    // auto_rollback off the breach is reported and the run goes on.
    let id = create(
        s,
        &hosts,
        3600,
        json!({ "interval_seconds": 5, "auto_rollback": false }),
    )
    .await;
    let kpis = vec![
        batches(&id, now, 1_500, 0, 0.002, "m"),
        batches(&id, now, 1_500, 3, 0.002, "m"),
    ];
    run_on(s, &id, &agents, &kpis).await;
    wait_for_phase(s, &id, "running", Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get_json(s, &format!("/api/v1/experiments/{id}/results")).await;
        if r["source"] == "stored" {
            let breach = &r["result"]["breach"];
            assert_eq!(breach["guardrail"], "protected_coverage", "{r}");
            assert_eq!(breach["host_id"], "node-b", "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "no analysis stored: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let e = get_json(s, &format!("/api/v1/experiments/{id}")).await;
    assert_eq!(e["phase"], "running");
}

async fn analysis_and_cost_refuse_bad_input(s: &TestServer) {
    // Out-of-range and unknown analysis fields, named by path.
    let res = s
        .post(
            "/api/v1/experiments",
            json!({
                "name": "bad", "baseline_pipeline": "baseline", "candidate_pipeline": "topk",
                "analysis": { "interval_seconds": 0, "confidence": 1.5,
                              "guardrails": { "min_reduction_percent": 120 } }
            }),
        )
        .await;
    let body = error_body(res, 400).await;
    let fields: Vec<&str> = body["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec![
            "analysis.interval_seconds",
            "analysis.confidence",
            "analysis.guardrails.min_reduction_percent"
        ]
    );
    let res = s
        .post(
            "/api/v1/experiments",
            json!({
                "name": "bad", "baseline_pipeline": "baseline", "candidate_pipeline": "topk",
                "analysis": { "guardrails": { "max_latency": 3 } }
            }),
        )
        .await;
    let body = error_body(res, 400).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_latency"),
        "{body}"
    );

    // Unknown and malformed experiment ids.
    let missing = uuid::Uuid::new_v4();
    for path in ["kpis", "results", "analysis", "cost-analysis"] {
        error_body(
            s.get(&format!("/api/v1/experiments/{missing}/{path}"))
                .await,
            404,
        )
        .await;
        error_body(
            s.get(&format!("/api/v1/experiments/nope/{path}")).await,
            400,
        )
        .await;
    }

    // Presets: listed, replaced whole, refused with the bad field named.
    let p = get_json(s, "/api/v1/cost/presets").await;
    assert_eq!(p["presets"][0]["name"], "per-series");
    let res = s
        .client
        .put(s.url("/api/v1/cost/presets"))
        .json(&json!({ "presets": [
            { "name": "ours", "per_active_series_month": 0.02 },
            { "name": "ours", "per_gb": -1 }
        ]}))
        .send()
        .await
        .unwrap();
    let body = error_body(res, 400).await;
    let fields: Vec<&str> = body["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["presets[1].name", "presets[1].per_gb"]);
    let res = s
        .client
        .put(s.url("/api/v1/cost/presets"))
        .json(&json!({ "presets": [{ "name": "ours", "per_active_series_month": 0.02 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let p = get_json(s, "/api/v1/cost/presets").await;
    assert_eq!(p["presets"].as_array().unwrap().len(), 1);
    assert_eq!(p["presets"][0]["currency"], "USD");

    // An unknown preset is a 400 that lists the known ones.
    let id = s.create_experiment(&["node-a"]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let res = s
        .get(&format!(
            "/api/v1/experiments/{id}/cost-analysis?preset=datadog"
        ))
        .await;
    let body = error_body(res, 400).await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("ours"),
        "{body}"
    );
    // Nothing reported yet: results are a live, inconclusive analysis.
    let r = get_json(s, &format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(r["source"], "live");
    assert_eq!(r["result"]["decision"], "inconclusive");
}

/// Two API replicas on one PostgreSQL database both run the scheduler: every interval of an
/// experiment is analysed by exactly one of them, and the run ends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_analyse_each_interval_exactly_once() {
    let (url, name) = create_pg_database().await;
    let a = start_pg_at(&url, None).await;
    let b = start_pg_at(&url, None).await;
    let hosts = ["node-a"];
    let secret = a.enroll(hosts[0]).await;
    let agents = [a.agent(hosts[0], &secret)];
    let id = create(
        &a,
        &hosts,
        16,
        json!({ "interval_seconds": 5, "min_intervals": 2 }),
    )
    .await;
    let now = Utc::now();
    let kpis = vec![(0..4)
        .flat_map(|i| {
            batches(
                &id,
                now - chrono::Duration::seconds(5 * i),
                1_000,
                0,
                0.0,
                "m",
            )
        })
        .collect()];
    run_on(&a, &id, &agents, &kpis).await;
    wait_for_phase(&b, &id, "completed", Duration::from_secs(40)).await;

    let exp_id: phoenix_core::ExperimentId = id.parse().unwrap();
    let analyses = a
        .state
        .service
        .store
        .list_analyses(exp_id, 100)
        .await
        .unwrap();
    let mut seqs: Vec<i64> = analyses.iter().map(|x| x.seq).collect();
    seqs.sort();
    // -1 is the final analysis; 0..=3 the intervals of the 16 s run (the first may be
    // skipped when the run was still initializing during its interval).
    assert_eq!(seqs.first(), Some(&-1), "{seqs:?}");
    assert!(
        seqs.len() >= 4,
        "a final and at least three interval analyses: {seqs:?}"
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(analyses.iter().all(|x| x.finished_at.is_some()));
    let ran = a
        .state
        .service
        .analyses_run
        .load(std::sync::atomic::Ordering::Relaxed)
        + b.state
            .service
            .analyses_run
            .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(ran, analyses.len() as u64, "an interval was analysed twice");
    let events = get_json(&a, &format!("/api/v1/experiments/{id}/events")).await;
    let completions = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["to_phase"] == "completed")
        .count();
    assert_eq!(completions, 1);
    drop((a, b));
    drop_pg_database(&name).await;
}

/// Targets that never start fail the experiment after `experiment_start_timeout`, naming
/// the hosts that did not start and their task's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_that_never_start_fail_the_experiment_naming_them() {
    let config = phoenix_api::Config {
        experiment_start_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let s = start_sqlite_with(config, std::sync::Arc::new(phoenix_core::SystemClock)).await;
    let secret = s.enroll("node-a").await;
    let a = s.agent("node-a", &secret);
    let id = create(&s, &["node-a", "node-b"], 600, json!({})).await;
    run_on(&s, &id, &[a], &[vec![]]).await;
    let exp = wait_for_phase(&s, &id, "failed", Duration::from_secs(10)).await;
    let reason = exp["phase_reason"].as_str().unwrap();
    assert!(
        reason.contains("did not start within 1 s") && reason.contains("node-b (pending)"),
        "{reason}"
    );
    assert!(!reason.contains("node-a"), "{reason}");
}

async fn a_target_selector_picks_agents_by_label_at_start_and_nobody_is_a_409(s: &TestServer) {
    for (host, cluster) in [("node-a", "eu-1"), ("node-b", "us-1"), ("node-c", "eu-1")] {
        let secret = s.enroll(host).await;
        let res = s
            .agent(host, &secret)
            .post(
                "/api/v1/agent/heartbeat",
                json!({ "labels": { "cluster": cluster, "namespace": "shop" } }),
            )
            .await;
        assert_eq!(res.status(), 200);
    }
    let res = s
        .post(
            "/api/v1/experiments",
            json!({
                "name": "by label", "baseline_pipeline": "baseline", "candidate_pipeline": "topk",
                "target_selector": { "cluster": "eu-1", "namespace": "shop" }
            }),
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
    let e = get_json(s, &format!("/api/v1/experiments/{id}")).await;
    assert_eq!(e["target_hosts"], json!(["node-a", "node-c"]), "{e}");
    assert_eq!(e["phase"], "initializing");

    // A selector that matches nobody, and no host listed: nothing to run on.
    let res = s
        .post(
            "/api/v1/experiments",
            json!({
                "name": "nobody", "baseline_pipeline": "baseline", "candidate_pipeline": "topk",
                "target_selector": { "cluster": "ap-9" }
            }),
        )
        .await;
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
    let body = error_body(res, 409).await;
    assert_eq!(body["error"]["code"], "no_targets");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cluster=ap-9"),
        "{body}"
    );
    let e = get_json(s, &format!("/api/v1/experiments/{id}")).await;
    assert_eq!(e["phase"], "pending");

    // A bad selector is a 400 naming it.
    let res = s
        .post(
            "/api/v1/experiments",
            json!({
                "name": "bad", "baseline_pipeline": "baseline", "candidate_pipeline": "topk",
                "target_selector": { "cluster": "" }
            }),
        )
        .await;
    let body = error_body(res, 400).await;
    assert_eq!(
        body["error"]["details"]["fields"][0]["field"],
        "target_selector.cluster"
    );
}

const RULES: &str = r#"
groups:
  - name: api
    rules:
      - alert: HighErrorRate
        expr: sum by (service) (rate(http_requests_total{status=~"5.."}[5m])) / sum by (service) (rate(http_requests_total[5m])) > 0.05
      - record: job:latency:p99
        expr: histogram_quantile(0.99, sum by (le, job) (rate(http_request_duration_seconds_bucket[5m])))
"#;

async fn a_candidate_dropping_a_label_an_alert_uses_is_rolled_back(s: &TestServer) {
    let res = s
        .post(
            "/api/v1/usage/queries",
            json!({ "source": "alerts/api.yml", "rules": RULES,
                    "queries": ["topk(5, sum by (pod) (rate(container_cpu_usage_seconds_total[1m])))"] }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let up: Value = res.json().await.unwrap();
    assert_eq!(up["queries"].as_array().unwrap().len(), 3);
    assert_eq!(up["queries"][0]["name"], "HighErrorRate");
    let usage = get_json(s, "/api/v1/usage/queries").await;
    let labels: Vec<String> = usage["protected_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            format!(
                "{}:{}",
                l["metric"].as_str().unwrap(),
                l["label"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "http_requests_total:status",
        "http_requests_total:service",
        "http_request_duration_seconds_bucket:le",
        "container_cpu_usage_seconds_total:pod",
    ] {
        assert!(
            labels.iter().any(|l| l == want),
            "{want} missing from {labels:?}"
        );
    }

    // The candidate aggregates the stable series without `status`: the alert would break.
    let secret = s.enroll("node-a").await;
    let agents = [s.agent("node-a", &secret)];
    let res = s
        .post(
            "/api/v1/experiments",
            json!({
                "name": "drops status", "baseline_pipeline": "baseline",
                "candidate_pipeline": "adaptive",
                "parameters": { "without": ["status", "instance"] },
                "target_hosts": ["node-a"], "duration_seconds": 3600,
                "analysis": { "interval_seconds": 5 }
            }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    run_on(s, &id, &agents, &[vec![]]).await;
    let exp = wait_for_phase(s, &id, "rolled_back", Duration::from_secs(20)).await;
    let reason = exp["phase_reason"].as_str().unwrap();
    assert!(
        reason.contains("used_labels")
            && reason.contains("`status`")
            && reason.contains("http_requests_total")
            && reason.contains("HighErrorRate"),
        "{reason}"
    );

    // The same candidate keeping `status` (dropping only `pod`, which no query here groups
    // http_requests_total by) passes the guardrail.
    let res = s
        .post(
            "/api/v1/experiments",
            json!({
                "name": "keeps status", "baseline_pipeline": "baseline",
                "candidate_pipeline": "adaptive",
                "parameters": { "without": ["instance"] },
                "target_hosts": ["node-a"], "duration_seconds": 3600
            }),
        )
        .await;
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = get_json(s, &format!("/api/v1/experiments/{id}/results")).await;
    let g = r["result"]["guardrails"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["guardrail"] == "used_labels")
        .cloned()
        .unwrap();
    assert_eq!(g["status"], "pass", "{g}");
}

async fn unparsable_promql_is_a_400_naming_the_rule(s: &TestServer) {
    let rules = "groups:\n  - name: g\n    rules:\n      - alert: Ok\n        expr: up == 0\n      - alert: Broken\n        expr: sum(rate(x[5m])\n";
    let res = s
        .post(
            "/api/v1/usage/queries",
            json!({ "source": "alerts.yml", "rules": rules, "queries": ["up", "foo bar"] }),
        )
        .await;
    let body = error_body(res, 400).await;
    let fields: Vec<(&str, &str)> = body["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["field"].as_str().unwrap(), f["problem"].as_str().unwrap()))
        .collect();
    assert_eq!(fields.len(), 2, "{body}");
    assert_eq!(fields[0].0, "rules.groups[0].rules[1].expr");
    assert!(fields[0].1.contains("unclosed left parenthesis"), "{body}");
    assert_eq!(fields[1].0, "queries[1]");
    assert!(fields[1].1.contains("foo bar"), "{body}");
    assert!(
        fields[1].1.contains("at line 1, column 5, near `bar`"),
        "{body}"
    );
    // Not a rule file at all; nothing given.
    let res = s
        .post(
            "/api/v1/usage/queries",
            json!({ "source": "x", "rules": "groups: 3" }),
        )
        .await;
    let body = error_body(res, 400).await;
    assert_eq!(body["error"]["details"]["fields"][0]["field"], "rules");
    let res = s
        .post("/api/v1/usage/queries", json!({ "source": "x" }))
        .await;
    error_body(res, 400).await;
    // Nothing was stored by the refused uploads.
    let usage = get_json(s, "/api/v1/usage/queries").await;
    assert_eq!(usage["sources"], json!([]));
}

/// Under `on_target_failure: exclude`, a target whose deployment fails leaves the run: it
/// gets a `stop`, its KPIs (here: a candidate that loses protected series, which would roll
/// the run back) leave the analysis, the two others run to a promotion that reaches only them.
async fn a_target_that_fails_is_excluded_and_the_others_decide(s: &TestServer) {
    let hosts = ["node-a", "node-b", "node-c"];
    let mut secrets = Vec::new();
    for h in hosts {
        secrets.push(s.enroll(h).await);
    }
    let agents: Vec<AgentClient<'_>> = hosts
        .iter()
        .zip(&secrets)
        .map(|(h, sec)| s.agent(h, sec))
        .collect();
    let id = create(
        s,
        &hosts,
        1,
        json!({ "interval_seconds": 5, "min_intervals": 5,
                "on_target_failure": "exclude", "min_targets": 2 }),
    )
    .await;
    let now = Utc::now();
    let kpis = |kept: u64, lost: u64| -> Vec<Value> {
        (0..10i64)
            .flat_map(|i| {
                let end = now - chrono::Duration::seconds(5 * (10 - i));
                batches(&id, end, kept + 100 * (i as u64 % 3), lost, 0.002, "m")
            })
            .collect()
    };
    // node-a and node-b run; node-c reports a bad candidate, then fails its deployment.
    run_on(s, &id, &agents[..2], &[kpis(1_200, 0), kpis(1_300, 0)]).await;
    let c = &agents[2];
    let res = c
        .post(
            "/api/v1/agent/metrics",
            json!({ "batches": kpis(9_000, 10) }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = c.poll("2s").await.json().await.unwrap();
    let tasks = body["tasks"].as_array().unwrap().clone();
    let deploy = tasks.iter().find(|t| t["type"] == "deployment").unwrap();
    let res = c
        .post(
            &format!(
                "/api/v1/agent/tasks/{}/status",
                deploy["id"].as_str().unwrap()
            ),
            json!({ "status": "failed", "error": "pipeline config refused: disk full" }),
        )
        .await;
    assert_eq!(res.status(), 200);

    let exp = wait_for_phase(s, &id, "completed", Duration::from_secs(20)).await;
    assert_eq!(exp["promoted"], true, "{exp}");
    let excluded = exp["excluded_targets"].as_array().unwrap();
    assert_eq!(excluded.len(), 1, "{exp}");
    assert_eq!(excluded[0]["host_id"], "node-c");
    assert!(
        excluded[0]["reason"]
            .as_str()
            .unwrap()
            .contains("deployment task failed: pipeline config refused: disk full"),
        "{exp}"
    );
    let events = get_json(s, &format!("/api/v1/experiments/{id}/events")).await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "updated"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("excluded from the run: node-c")),
        "{events}"
    );
    let results = get_json(s, &format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(results["result"]["decision"], "promote", "{results}");
    assert_eq!(results["result"]["hosts"], 2, "{results}");
    assert_eq!(results["result"]["protected_coverage_percent"], 100.0);

    // node-c: a stop (its start was claimed before it failed); the promotion skips it.
    let tasks = get_json(s, &format!("/api/v1/tasks?experiment_id={id}&limit=100")).await;
    let actions = |host: &str| -> Vec<String> {
        tasks["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["host_id"] == host && t["type"] == "experiment")
            .map(|t| t["payload"]["action"].as_str().unwrap().to_string())
            .collect()
    };
    let mut c_actions = actions("node-c");
    c_actions.sort();
    assert_eq!(c_actions, ["start", "stop"], "{tasks}");
    for h in ["node-a", "node-b"] {
        let mut a = actions(h);
        a.sort();
        assert_eq!(a, ["promote", "start"], "{h}: {tasks}");
    }
}

async fn excluding_below_min_targets_fails_the_experiment_and_bad_policies_are_400(s: &TestServer) {
    for (analysis, field) in [
        (
            json!({ "on_target_failure": "exclude", "min_targets": 0 }),
            "analysis.min_targets",
        ),
        (
            json!({ "on_target_failure": "ignore" }),
            "on_target_failure",
        ),
    ] {
        let res = s
            .post(
                "/api/v1/experiments",
                json!({ "name": "bad", "baseline_pipeline": "baseline",
                        "candidate_pipeline": "topk", "target_hosts": ["node-a"],
                        "analysis": analysis }),
            )
            .await;
        let body = error_body(res, 400).await;
        assert!(body.to_string().contains(field), "{field}: {body}");
    }

    let hosts = ["node-a", "node-b"];
    let secrets = [s.enroll(hosts[0]).await, s.enroll(hosts[1]).await];
    let b = s.agent(hosts[1], &secrets[1]);
    let id = create(
        s,
        &hosts,
        600,
        json!({ "on_target_failure": "exclude", "min_targets": 2 }),
    )
    .await;
    let res = s
        .client
        .post(s.url(&format!("/api/v1/experiments/{id}/start")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = b.poll("2s").await.json().await.unwrap();
    let start = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "experiment")
        .unwrap()
        .clone();
    let res = b
        .post(
            &format!(
                "/api/v1/agent/tasks/{}/status",
                start["id"].as_str().unwrap()
            ),
            json!({ "status": "failed", "error": "no memory" }),
        )
        .await;
    assert_eq!(res.status(), 200);
    let exp = wait_for_phase(s, &id, "failed", Duration::from_secs(10)).await;
    let reason = exp["phase_reason"].as_str().unwrap();
    assert!(
        reason.contains("1 target(s) left, fewer than min_targets 2")
            && reason.contains("node-b (experiment task failed: no memory)"),
        "{reason}"
    );
    // node-a never claimed its deployment and start: they are cancelled with the failure,
    // and every target gets a stop.
    let tasks = get_json(s, &format!("/api/v1/tasks?experiment_id={id}&limit=100")).await;
    let mut a: Vec<(String, String)> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["host_id"] == "node-a")
        .map(|t| {
            (
                t["payload"]["action"]
                    .as_str()
                    .unwrap_or("deploy")
                    .to_string(),
                t["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    a.sort();
    assert_eq!(
        a,
        [
            ("deploy".to_string(), "failed".to_string()),
            ("start".to_string(), "failed".to_string()),
            ("stop".to_string(), "pending".to_string()),
        ],
        "{tasks}"
    );
}

/// Under `exclude`, a target that does not start within `experiment_start_timeout` is
/// dropped (its queued tasks cancelled) and the run goes on with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_starts_is_excluded_and_the_run_goes_on() {
    let config = phoenix_api::Config {
        experiment_start_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let s = start_sqlite_with(config, std::sync::Arc::new(phoenix_core::SystemClock)).await;
    let secret = s.enroll("node-a").await;
    let a = s.agent("node-a", &secret);
    let id = create(
        &s,
        &["node-a", "node-b"],
        600,
        json!({ "on_target_failure": "exclude" }),
    )
    .await;
    run_on(&s, &id, &[a], &[vec![]]).await;
    let exp = wait_for_phase(&s, &id, "running", Duration::from_secs(10)).await;
    let excluded = exp["excluded_targets"].as_array().unwrap();
    assert_eq!(excluded.len(), 1, "{exp}");
    assert_eq!(excluded[0]["host_id"], "node-b");
    assert!(
        excluded[0]["reason"]
            .as_str()
            .unwrap()
            .contains("did not start within 1 s (start task pending)"),
        "{exp}"
    );
    let tasks = get_json(&s, &format!("/api/v1/tasks?experiment_id={id}&limit=100")).await;
    let b_tasks: Vec<&Value> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["host_id"] == "node-b")
        .collect();
    // deploy and start cancelled, a stop queued.
    assert_eq!(b_tasks.len(), 3, "{tasks}");
    assert_eq!(
        b_tasks
            .iter()
            .filter(|t| t["status"] == "failed"
                && t["error"].as_str().unwrap_or("").contains("excluded"))
            .count(),
        2,
        "{tasks}"
    );
}
