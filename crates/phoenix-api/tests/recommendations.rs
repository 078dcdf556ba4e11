//! Cardinality, cost flow and recommendations over HTTP against a real server and store.
//! The label statistics are produced by the real pipeline code (the KPI meter with label
//! statistics, over batches of known shape, on two hosts) and sent as the agent sends them
//! (`phoenix_agent::kpi::batches` → `POST /api/v1/agent/metrics`); the answers are checked
//! against what was fed, including the HyperLogLog merge across hosts within its error
//! bound, and a recommendation's estimate against what its candidate pipeline really does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::{json, Value};

use phoenix_agent::kpi::{batches, KpiContext};
use phoenix_core::Variant;
use phoenix_pipeline::kpi::KpiMeter;
use phoenix_pipeline::labelstats::LabelStatsConfig;
use phoenix_pipeline::model::{Batch, Label, Labels, MetricKind, Sample, Series, Sym};

on_both_backends!(
    statistics_from_two_hosts_merge_into_the_cardinality_breakdown,
    recommendations_rank_savings_and_never_touch_used_or_protected_labels,
    a_recommendation_becomes_a_pending_experiment_on_the_hosts_that_reported_it,
    cost_flow_prices_series_from_namespace_to_what_the_live_pipeline_keeps,
    bad_input_is_a_400_naming_the_parameter_and_unknown_ids_404,
);

fn series(metric: &str, labels: &[(&str, String)]) -> Series {
    Series::new(
        Sym::from(metric),
        Labels::from_unsorted(
            labels
                .iter()
                .map(|(n, v)| Label::new(Sym::from(*n), Sym::from(v.as_str())))
                .collect(),
        ),
        MetricKind::Counter,
        vec![Sample::new(1_700_000_000_000, 1.0)],
    )
}

/// One host's input. `http_requests_total`: 300 pods of its own over two services, × 5
/// paths (overlapping between hosts) × 2 statuses = 3,000 series. `dns_lookups_total`: 2,000
/// domains, half of them shared with the other host. `up`: one protected series.
fn host_batch(host: &str) -> Batch {
    let mut out = Vec::new();
    let (first_path, first_domain) = if host == "node-a" { (0, 0) } else { (3, 1000) };
    for pod in 0..300 {
        let (ns, svc) = match (host, pod < 150) {
            ("node-a", true) => ("shop", "cart"),
            ("node-a", false) => ("shop", "checkout"),
            (_, true) => ("shop", "cart"),
            (_, false) => ("billing", "invoices"),
        };
        for path in first_path..first_path + 5 {
            for status in ["200", "500"] {
                out.push(series(
                    "http_requests_total",
                    &[
                        ("namespace", ns.into()),
                        ("service", svc.into()),
                        ("pod", format!("{host}-pod-{pod}")),
                        ("path", format!("/p{path}")),
                        ("status", status.into()),
                    ],
                ));
            }
        }
    }
    let (ns, svc) = if host == "node-a" {
        ("shop", "cart")
    } else {
        ("billing", "invoices")
    };
    for d in first_domain..first_domain + 2000 {
        out.push(series(
            "dns_lookups_total",
            &[
                ("namespace", ns.into()),
                ("service", svc.into()),
                ("domain", format!("d-{d}.example")),
            ],
        ));
    }
    out.push(series(
        "up",
        &[
            ("namespace", ns.into()),
            ("service", svc.into()),
            ("instance", host.into()),
        ],
    ));
    Batch::new(out)
}

/// The live pipeline of the cost flow: `http_requests_total` aggregated without `pod`.
fn live_pipeline() -> phoenix_pipeline::pipeline::Pipeline {
    let config = phoenix_pipeline::templates::resolve(
        "processors:\n  - type: aggregate\n    match: ['{__name__=\"http_requests_total\"}']\n    without: [pod]\n",
        &json!({}),
    )
    .unwrap();
    config.build("live", "live").unwrap()
}

/// Runs the real meter (with label statistics) over the host's batch and its live output,
/// and sends the interval's batches as the agent does.
async fn report(s: &TestServer, host: &str) {
    let secret = s.enroll(host).await;
    let input = host_batch(host);
    let mut meter =
        KpiMeter::new(&["main"], Vec::new()).with_label_stats(LabelStatsConfig::default());
    meter.record_input(&input, &[]);
    let output = live_pipeline().process(input);
    meter.record_output(0, &output, Duration::from_millis(3));
    let kpis = meter.finish_interval(&[]);
    let context = KpiContext {
        experiment_id: None,
        variants: vec![("main".into(), Variant::Baseline)],
    };
    let now = Utc::now();
    let out = batches(
        &kpis,
        &context,
        now - chrono::Duration::seconds(10),
        now,
        None,
    );
    assert!(out[0].label_stats.is_some());
    let res = s
        .agent(host, &secret)
        .post("/api/v1/agent/metrics", json!({ "batches": out }))
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

async fn both_hosts(s: &TestServer) {
    report(s, "node-a").await;
    report(s, "node-b").await;
}

async fn get_ok(s: &TestServer, path: &str) -> Value {
    let res = s.get(path).await;
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

async fn statistics_from_two_hosts_merge_into_the_cardinality_breakdown(s: &TestServer) {
    both_hosts(s).await;
    let c = get_ok(s, "/api/v1/metrics/cardinality").await;
    assert_eq!(c["hosts"], 2);
    assert_eq!(c["total_series"], 6000 + 4000 + 2);
    assert_eq!(c["metrics"][0]["metric"], "http_requests_total");
    assert_eq!(c["metrics"][0]["series"], 6000);
    let ns: Vec<(String, u64)> = c["by_namespace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["namespace"].as_str().unwrap().into(),
                n["series"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ns,
        [
            ("shop".into(), 3000 + 1500 + 2000 + 1),
            ("billing".into(), 1500 + 2000 + 1)
        ]
    );
    let label = |m: &Value, name: &str| -> Value {
        m["labels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no label {name} in {m}"))
    };
    let http = &c["metrics"][0];
    // Paths /p0–/p4 on one host, /p3–/p7 on the other: 8 distinct, not 10.
    assert_eq!(label(http, "path")["distinct_values"], 8);
    // 600 pods: past the sketch's exact range (128), within its error bound.
    let pods = label(http, "pod")["distinct_values"].as_u64().unwrap();
    assert!((pods as f64 - 600.0).abs() / 600.0 < 0.05, "{pods} pods");
    assert_eq!(label(http, "status")["top_values"][0]["series"], 3000);
    // 3,000 distinct domains fleet-wide (1,000 shared): the merged sketch, not the sum.
    let dns = get_ok(s, "/api/v1/metrics/cardinality?metric=dns_lookups_total").await;
    assert_eq!(dns["metrics"].as_array().unwrap().len(), 1);
    let domains = label(&dns["metrics"][0], "domain")["distinct_values"]
        .as_u64()
        .unwrap();
    let error = (domains as f64 - 3000.0).abs() / 3000.0;
    assert!(
        error < 0.05,
        "{domains} distinct domains, {:.1} % off",
        error * 100.0
    );
    // Filters: a namespace and service, one host, and a limit.
    let billing = get_ok(
        s,
        "/api/v1/metrics/cardinality?namespace=billing&service=invoices",
    )
    .await;
    assert_eq!(billing["total_series"], 1500 + 2000 + 1);
    let a = get_ok(s, "/api/v1/metrics/cardinality?host=node-a&limit=1").await;
    assert_eq!(a["hosts"], 1);
    assert_eq!(a["total_series"], 3000 + 2000 + 1);
    assert_eq!(a["metrics"].as_array().unwrap().len(), 1);
    assert_eq!(a["metrics_total"], 3);
}

async fn upload_alert(s: &TestServer) {
    let res = s
        .post(
            "/api/v1/usage/queries",
            json!({
                "source": "alerts/http.yml",
                "queries": ["sum by (path) (rate(http_requests_total{status=\"500\"}[5m])) > 1"],
            }),
        )
        .await;
    assert_eq!(res.status(), 200);
}

async fn recommendations_rank_savings_and_never_touch_used_or_protected_labels(s: &TestServer) {
    both_hosts(s).await;
    upload_alert(s).await;
    let list = get_ok(s, "/api/v1/recommendations").await;
    let items = list["items"].as_array().unwrap();
    let summary: Vec<(String, String, String, u64)> = items
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["metric"].as_str().unwrap().to_string(),
                r["without"][0].as_str().unwrap_or("").to_string(),
                r["estimate"]["series_saved"].as_u64().unwrap(),
            )
        })
        .collect();
    // Without `pod`, each host keeps 2 services × 5 paths × 2 statuses = 20 series.
    assert_eq!(
        summary[0],
        (
            "aggregate".into(),
            "http_requests_total".into(),
            "pod".into(),
            6000 - 40
        )
    );
    assert_eq!(
        summary[1],
        (
            "drop".into(),
            "dns_lookups_total".into(),
            String::new(),
            4000
        )
    );
    assert_eq!(
        summary[2],
        (
            "aggregate".into(),
            "dns_lookups_total".into(),
            "domain".into(),
            4000 - 2
        )
    );
    // The alert uses `path` and `status` of http_requests_total and reads the metric: no
    // recommendation touches them, nor drops it; `up` is protected.
    for (kind, metric, label, _) in &summary {
        assert!(
            !(metric == "http_requests_total"
                && (label == "path" || label == "status" || kind == "drop")),
            "{summary:?}"
        );
        assert_ne!(metric, "up", "{summary:?}");
    }
    assert!(
        list["skipped_used_by_queries"].as_u64().unwrap() >= 3,
        "{list}"
    );
    assert_eq!(list["skipped_protected"], 1);
    // Ranked by series saved; savings priced with the default preset; ids stable.
    let saved: Vec<u64> = summary.iter().map(|s| s.3).collect();
    assert!(saved.windows(2).all(|w| w[0] >= w[1]), "{saved:?}");
    assert!(items[0]["estimate"]["monthly_savings"].as_f64().unwrap() > 0.0);
    assert!(items[0]["estimate"]["method"]
        .as_str()
        .unwrap()
        .contains("HyperLogLog"));
    let again = get_ok(s, "/api/v1/recommendations?limit=1").await;
    assert_eq!(again["items"].as_array().unwrap().len(), 1);
    assert_eq!(again["items"][0]["id"], items[0]["id"]);
    assert_eq!(again["total"], list["total"]);
    // The estimate is what the candidate really does: run it on the hosts' input.
    let config = phoenix_pipeline::templates::resolve(
        items[0]["candidate_pipeline"].as_str().unwrap(),
        &json!({}),
    )
    .unwrap();
    let mut out_series = 0;
    for host in ["node-a", "node-b"] {
        let mut p = config.build("candidate", "candidate").unwrap();
        let out = p.process(host_batch(host));
        out_series += out
            .series
            .iter()
            .filter(|s| &*s.name == "http_requests_total")
            .map(|s| s.id())
            .collect::<HashSet<_>>()
            .len();
    }
    assert_eq!(
        out_series as u64,
        items[0]["estimate"]["series_after"].as_u64().unwrap()
    );
    // Only one metric's, when asked.
    let dns = get_ok(s, "/api/v1/recommendations?metric=dns_lookups_total").await;
    assert!(dns["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["metric"] == "dns_lookups_total"));
}

async fn a_recommendation_becomes_a_pending_experiment_on_the_hosts_that_reported_it(
    s: &TestServer,
) {
    both_hosts(s).await;
    let list = get_ok(s, "/api/v1/recommendations").await;
    let rec = &list["items"][0];
    let id = rec["id"].as_str().unwrap();
    let res = s
        .post(
            &format!("/api/v1/recommendations/{id}/experiment"),
            json!({ "duration_seconds": 600, "owner": "sre" }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let exp: Value = res.json().await.unwrap();
    assert_eq!(exp["phase"], "pending");
    assert_eq!(exp["baseline_pipeline"], "baseline");
    assert_eq!(exp["candidate_pipeline"], rec["candidate_pipeline"]);
    assert_eq!(exp["target_hosts"], json!(["node-a", "node-b"]));
    assert_eq!(exp["duration_seconds"], 600);
    assert!(exp["name"].as_str().unwrap().contains(id));
    // It is a real experiment: readable, and its candidate renders.
    let got = get_ok(
        s,
        &format!("/api/v1/experiments/{}", exp["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(got["id"], exp["id"]);
    let res = s
        .post(
            "/api/v1/pipelines/validate",
            json!({ "pipeline": rec["candidate_pipeline"] }),
        )
        .await;
    assert_eq!(res.status(), 200);
    // Without a body too.
    let res = s
        .client
        .post(s.url(&format!("/api/v1/recommendations/{id}/experiment")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

async fn cost_flow_prices_series_from_namespace_to_what_the_live_pipeline_keeps(s: &TestServer) {
    both_hosts(s).await;
    let flow = get_ok(s, "/api/v1/metrics/cost-flow").await;
    assert_eq!(flow["reduction_source"], "live");
    assert_eq!(flow["series_in"], 10002.0);
    // The live pipeline keeps 20 http series per host, every dns and up series.
    assert_eq!(flow["series_out"], 40.0 + 4000.0 + 2.0);
    let link = |source: &str, target: &str| -> f64 {
        flow["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["source"] == source && l["target"] == target)
            .map(|l| l["series"].as_f64().unwrap())
            .unwrap_or_else(|| panic!("no link {source} → {target} in {flow}"))
    };
    assert_eq!(
        link("namespace:billing", "service:billing/invoices"),
        3501.0
    );
    assert_eq!(
        link("service:shop/cart", "metric:http_requests_total"),
        3000.0
    );
    assert_eq!(link("metric:http_requests_total", "reduced"), 5960.0);
    assert_eq!(link("metric:dns_lookups_total", "kept"), 4000.0);
    let (cost_in, cost_out) = (
        flow["monthly_cost_in"].as_f64().unwrap(),
        flow["monthly_cost_out"].as_f64().unwrap(),
    );
    assert!(cost_in > cost_out && cost_out > 0.0, "{flow}");
    assert!((flow["monthly_savings"].as_f64().unwrap() - (cost_in - cost_out)).abs() < 1e-6);
    // The alias, another preset, and a metric limit folding the rest into `(other)`.
    let presets = get_ok(s, "/api/v1/cost/presets").await;
    let second = presets["presets"][1]["name"].as_str().unwrap();
    let alias = get_ok(s, &format!("/api/v1/cost-flow?preset={second}&limit=1")).await;
    assert_eq!(alias["preset"], second);
    assert_eq!(alias["series_in"], 10002.0);
    assert!(alias["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["id"] == "metric:(other)"));
}

async fn bad_input_is_a_400_naming_the_parameter_and_unknown_ids_404(s: &TestServer) {
    for (path, field) in [
        ("/api/v1/metrics/cardinality?limit=0", "query.limit"),
        ("/api/v1/metrics/cardinality?host=bad%20host", "query.host"),
        ("/api/v1/metrics/cost-flow?preset=nope", "query.preset"),
        (
            "/api/v1/metrics/cost-flow?experiment_id=xyz",
            "query.experiment_id",
        ),
        ("/api/v1/recommendations?limit=501", "query.limit"),
        ("/api/v1/recommendations?preset=nope", "query.preset"),
        ("/api/v1/recommendations?metric=", "query.metric"),
    ] {
        let err = error_body(s.get(path).await, 400).await;
        assert!(
            err.to_string().contains(field),
            "{path}: expected {field} in {err}"
        );
    }
    let err = error_body(s.get("/api/v1/recommendations?colour=red").await, 400).await;
    assert!(err.to_string().contains("colour"), "{err}");
    let err = error_body(s.get("/api/v1/metrics/cardinality?limit=many").await, 400).await;
    assert!(err.to_string().contains("limit"), "{err}");
    let unknown = uuid::Uuid::new_v4();
    error_body(
        s.get(&format!(
            "/api/v1/metrics/cost-flow?experiment_id={unknown}"
        ))
        .await,
        404,
    )
    .await;
    error_body(
        s.post(
            "/api/v1/recommendations/rec-0123456789abcdef/experiment",
            json!({}),
        )
        .await,
        404,
    )
    .await;
    let err = error_body(
        s.post("/api/v1/recommendations/not-an-id/experiment", json!({}))
            .await,
        400,
    )
    .await;
    assert!(err.to_string().contains("path.id"), "{err}");
    let err = error_body(
        s.post(
            "/api/v1/recommendations/rec-0123456789abcdef/experiment",
            json!({ "colour": "red" }),
        )
        .await,
        400,
    )
    .await;
    assert!(err.to_string().contains("colour"), "{err}");
    // A KPI batch carrying malformed statistics is refused, naming the field.
    let secret = s.enroll("node-x").await;
    let now = Utc::now();
    let res = s
        .agent("node-x", &secret)
        .post(
            "/api/v1/agent/metrics",
            json!({ "batches": [{
                "batch_id": uuid::Uuid::new_v4(),
                "variant": "baseline",
                "interval_start": now - chrono::Duration::seconds(10),
                "interval_end": now,
                "values": { "input_series": 1, "output_series": 1 },
                "label_stats": {
                    "breakdown_labels": ["namespace"],
                    "metrics": [{ "metric": "m", "series": 1, "labels": [], "groups": [{ "values": [], "series": 1 }] }]
                }
            }]}),
        )
        .await;
    let err = error_body(res, 400).await;
    assert!(
        err.to_string()
            .contains("batches[0].label_stats.metrics[0].groups[0].values"),
        "{err}"
    );
    // An empty fleet is an empty answer, not an error.
    let c = get_ok(s, "/api/v1/metrics/cardinality").await;
    assert_eq!(c["total_series"], 0);
    let r = get_ok(s, "/api/v1/recommendations").await;
    assert_eq!(r["total"], 0);
}
