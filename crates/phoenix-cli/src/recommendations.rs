//! `phoenix recommendations list|apply`, `phoenix cardinality`, `phoenix cost flow`.

use phoenix_client::{BreakdownQuery, Client};
use serde_json::{json, Value};

use crate::cli::{BreakdownArgs, GlobalArgs, RecommendationsCmd};
use crate::error::CliResult;
use crate::output::{emit, fields, Table};

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn money(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.2}"))
}

fn query(a: BreakdownArgs) -> BreakdownQuery {
    BreakdownQuery {
        namespace: a.namespace,
        service: a.service,
        metric: a.metric,
        host: a.host,
        limit: a.limit,
        ..Default::default()
    }
}

pub async fn recommendations(cmd: RecommendationsCmd, g: &GlobalArgs, c: &Client) -> CliResult<u8> {
    match cmd {
        RecommendationsCmd::List {
            metric,
            preset,
            limit,
        } => {
            let list = c
                .recommendations(metric.as_deref(), preset.as_deref(), limit)
                .await?;
            emit(g.output, &list, || {
                let mut t = Table::new(&[
                    "ID", "KIND", "METRIC", "WITHOUT", "BEFORE", "AFTER", "SAVED", "MONTHLY",
                ]);
                for r in list["items"].as_array().into_iter().flatten() {
                    let without: Vec<String> = r["without"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(s)
                        .collect();
                    let e = &r["estimate"];
                    t.row(vec![
                        s(&r["id"]),
                        s(&r["kind"]),
                        s(&r["metric"]),
                        if without.is_empty() {
                            "-".into()
                        } else {
                            without.join(",")
                        },
                        s(&e["series_before"]),
                        s(&e["series_after"]),
                        s(&e["series_saved"]),
                        format!("{} {}", money(&e["monthly_savings"]), s(&e["currency"])),
                    ]);
                }
                let mut out = t.render();
                out.push_str(&format!(
                    "{} of {} recommendation(s) from {} host(s); skipped: {} touching labels or metrics your queries use, {} protected\n",
                    list["items"].as_array().map_or(0, Vec::len),
                    s(&list["total"]),
                    s(&list["hosts"]),
                    s(&list["skipped_used_by_queries"]),
                    s(&list["skipped_protected"]),
                ));
                out
            })?;
        }
        RecommendationsCmd::Apply {
            id,
            name,
            duration,
            owner,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            if let Some(d) = duration {
                body.insert("duration_seconds".into(), json!(d));
            }
            if let Some(o) = owner {
                body.insert("owner".into(), json!(o));
            }
            let exp = c
                .recommendation_experiment(&id, &Value::Object(body))
                .await?;
            emit(g.output, &exp, || {
                let targets: Vec<String> = exp["target_hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(s)
                    .collect();
                let mut out = fields(&[
                    ("id", s(&exp["id"])),
                    ("name", s(&exp["name"])),
                    ("phase", s(&exp["phase"])),
                    ("baseline", s(&exp["baseline_pipeline"])),
                    ("targets", targets.join(",")),
                ]);
                out.push_str(&format!(
                    "candidate:\n{}\nstart it with: phoenix experiment start {}\n",
                    s(&exp["candidate_pipeline"]),
                    s(&exp["id"])
                ));
                out
            })?;
        }
    }
    Ok(0)
}

pub async fn cardinality(args: BreakdownArgs, g: &GlobalArgs, c: &Client) -> CliResult<u8> {
    let report = c.cardinality(&query(args)).await?;
    emit(g.output, &report, || {
        let mut t = Table::new(&["METRIC", "SERIES", "HOSTS", "TOP LABELS (distinct values)"]);
        for m in report["metrics"].as_array().into_iter().flatten() {
            let labels: Vec<String> = m["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .take(4)
                .map(|l| format!("{}={}", s(&l["name"]), s(&l["distinct_values"])))
                .collect();
            t.row(vec![
                s(&m["metric"]),
                s(&m["series"]),
                m["hosts"].as_array().map_or(0, Vec::len).to_string(),
                labels.join(" "),
            ]);
        }
        let mut ns = Table::new(&["NAMESPACE", "SERIES"]);
        for n in report["by_namespace"].as_array().into_iter().flatten() {
            let name = s(&n["namespace"]);
            ns.row(vec![
                if name.is_empty() {
                    "(none)".into()
                } else {
                    name
                },
                s(&n["series"]),
            ]);
        }
        format!(
            "{}total series: {} from {} host(s)\n\n{}",
            t.render(),
            s(&report["total_series"]),
            s(&report["hosts"]),
            ns.render()
        )
    })?;
    Ok(0)
}

pub async fn cost_flow(
    args: BreakdownArgs,
    preset: Option<String>,
    experiment: Option<String>,
    g: &GlobalArgs,
    c: &Client,
) -> CliResult<u8> {
    let mut q = query(args);
    q.preset = preset;
    q.experiment_id = experiment;
    let flow = c.cost_flow(&q).await?;
    emit(g.output, &flow, || {
        let mut t = Table::new(&["FROM", "TO", "SERIES", "MONTHLY"]);
        for l in flow["links"].as_array().into_iter().flatten() {
            t.row(vec![
                s(&l["source"]),
                s(&l["target"]),
                l["series"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |x| format!("{x:.0}")),
                money(&l["monthly_cost"]),
            ]);
        }
        format!(
            "{}{}",
            t.render(),
            fields(&[
                ("preset", s(&flow["preset"])),
                ("reduction from", s(&flow["reduction_source"])),
                (
                    "series in/out",
                    format!(
                        "{:.0} → {:.0}",
                        flow["series_in"].as_f64().unwrap_or(0.0),
                        flow["series_out"].as_f64().unwrap_or(0.0)
                    )
                ),
                (
                    "monthly cost",
                    format!(
                        "{} → {} {} (saves {})",
                        money(&flow["monthly_cost_in"]),
                        money(&flow["monthly_cost_out"]),
                        s(&flow["currency"]),
                        money(&flow["monthly_savings"])
                    )
                ),
            ])
        )
    })?;
    Ok(0)
}
