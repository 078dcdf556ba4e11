//! Cardinality, cost flow and recommendations, from the label statistics agents report with
//! their KPI batches (each host's latest report, merged fleet-wide: HyperLogLog sketches
//! merged, series summed) and each host's latest per-metric KPIs.
//!
//! A recommendation is an `aggregate without: [label]` or a drop of a whole metric, with the
//! series it saves estimated from the agents' sketches, priced with a cost preset, and never
//! touching a label the uploaded queries use or a protected series. See
//! `docs/recommendations.md`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use phoenix_core::cost::{PricingPreset, Usage};
use phoenix_core::labelstats::{merge_reports, LabelStatsReport, MergedLabel, MergedStats};
use phoenix_core::{
    Experiment, ExperimentId, FieldErrors, HostId, KpiBatch, NewExperiment, Variant,
};
use phoenix_pipeline::selector::Selector;

use crate::service::{Service, ServiceError, ServiceResult};
use crate::usage::{removes_label, UsageView};

/// Reports older than this are left out: their host stopped reporting.
pub const STATS_MAX_AGE_SECONDS: i64 = 3600;

/// Labels an aggregation always keeps (histogram buckets, summary quantiles).
const ALWAYS_KEPT: &[&str] = &["le", "quantile"];

/// A label name counted as `namespace`/`service` in the breakdown when the agents use them.
const NAMESPACE: &str = "namespace";
const SERVICE: &str = "service";

// ---- cardinality ----

/// Filters shared by the three views.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub service: Option<String>,
    pub metric: Option<String>,
    pub host: Option<HostId>,
}

/// Series of one namespace (or service within a namespace).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SeriesBreakdown {
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub series: u64,
}

/// One metric in the cardinality view.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MetricCardinality {
    pub metric: String,
    /// Series (summed across hosts; within the namespace/service filter when one is given).
    pub series: u64,
    /// Per label, largest distinct-value count first (for the whole metric: sketches are
    /// per metric, not per namespace).
    pub labels: Vec<MergedLabel>,
    pub hosts: Vec<HostId>,
    /// An agent's cap cut labels or groups of this metric from its report.
    pub truncated: bool,
}

/// `GET /api/v1/metrics/cardinality`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CardinalityReport {
    /// Hosts whose latest report (received in the last hour) is merged.
    pub hosts: u64,
    pub breakdown_labels: Vec<String>,
    /// Series of every metric matching the filter, summed across hosts.
    pub total_series: u64,
    pub by_namespace: Vec<SeriesBreakdown>,
    pub by_service: Vec<SeriesBreakdown>,
    /// Largest first, at most `limit`.
    pub metrics: Vec<MetricCardinality>,
    /// Metrics matching the filter, before `limit`.
    pub metrics_total: u64,
    /// Metrics and series the agents' caps left untracked.
    pub metrics_cut: u64,
    pub series_cut: u64,
    pub generated_at: DateTime<Utc>,
}

/// The series of `m` by (namespace, service), within the filter.
fn groups_of<'a>(
    stats: &'a MergedStats,
    m: &'a phoenix_core::labelstats::MergedMetric,
    f: &'a Filter,
) -> impl Iterator<Item = (String, String, u64)> + 'a {
    let ns = stats.breakdown_labels.iter().position(|l| l == NAMESPACE);
    let svc = stats.breakdown_labels.iter().position(|l| l == SERVICE);
    let grouped: u64 = m.groups.iter().map(|g| g.series).sum();
    // Series the groups miss (an agent's group cap) stay visible as an unnamed group.
    let missing = m.series.saturating_sub(grouped);
    m.groups
        .iter()
        .map(move |g| {
            let at =
                |i: Option<usize>| i.and_then(|i| g.values.get(i).cloned()).unwrap_or_default();
            (at(ns), at(svc), g.series)
        })
        .chain((missing > 0).then(|| (String::new(), String::new(), missing)))
        .filter(move |(n, s, _)| {
            f.namespace.as_ref().is_none_or(|want| want == n)
                && f.service.as_ref().is_none_or(|want| want == s)
        })
}

// ---- cost flow ----

/// A node of the flow: a namespace, a service, a metric, or where series end up.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FlowNode {
    /// `namespace:<ns>`, `service:<ns>/<svc>`, `metric:<name>`, `kept` or `reduced`.
    pub id: String,
    pub kind: String,
    pub name: String,
    pub series: f64,
    pub monthly_cost: f64,
}

/// A link: series (and their monthly cost) flowing from one node to the next.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FlowLink {
    pub source: String,
    pub target: String,
    pub series: f64,
    pub monthly_cost: f64,
}

/// `GET /api/v1/metrics/cost-flow`: a Sankey diagram's nodes and links.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CostFlow {
    pub preset: String,
    pub currency: String,
    /// `live` (each host's live pipeline) or `experiment` (its candidate).
    pub reduction_source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment_id: Option<ExperimentId>,
    /// Samples per series per second used for the samples part of the price.
    pub samples_per_series_per_second: f64,
    pub series_in: f64,
    pub series_out: f64,
    pub monthly_cost_in: f64,
    pub monthly_cost_out: f64,
    pub monthly_savings: f64,
    pub nodes: Vec<FlowNode>,
    pub links: Vec<FlowLink>,
    /// Metrics with no per-metric KPI yet (counted as kept whole).
    pub metrics_without_kpis: Vec<String>,
    pub hosts: u64,
    pub generated_at: DateTime<Utc>,
}

// ---- recommendations ----

/// What a recommendation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecommendationKind {
    /// `aggregate without: [label]` on the metric (sum; `le`/`quantile` kept).
    Aggregate,
    /// Drop the metric.
    Drop,
}

/// How an estimate was made.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Estimate {
    pub series_before: u64,
    pub series_after: u64,
    pub series_saved: u64,
    pub percent_of_metric: f64,
    pub monthly_savings: f64,
    pub currency: String,
    pub preset: String,
    /// In words: which sketches, how many hosts, the error bound.
    pub method: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Recommendation {
    /// Stable: a hash of kind, metric and label.
    pub id: String,
    pub kind: RecommendationKind,
    pub metric: String,
    /// The labels aggregated away (empty for a drop).
    pub without: Vec<String>,
    /// The labels the aggregation keeps (the metric's other labels).
    pub by: Vec<String>,
    pub estimate: Estimate,
    /// Distinct values of the label fleet-wide (HyperLogLog), for an aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct_values: Option<u64>,
    /// The hosts that reported the metric: an experiment testing this targets them.
    pub hosts: Vec<HostId>,
    /// The candidate pipeline that applies it (Phoenix pipeline YAML).
    pub candidate_pipeline: String,
    pub title: String,
}

/// `GET /api/v1/recommendations`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RecommendationList {
    pub items: Vec<Recommendation>,
    /// Recommendations before `limit`.
    pub total: u64,
    /// What was left out and why, counted.
    pub skipped_used_by_queries: u64,
    pub skipped_protected: u64,
    pub hosts: u64,
    pub generated_at: DateTime<Utc>,
}

/// `POST /api/v1/recommendations/{id}/experiment` (every field optional).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendationExperimentRequest {
    pub name: Option<String>,
    pub duration_seconds: Option<u64>,
    pub owner: Option<String>,
}

fn recommendation_id(kind: RecommendationKind, metric: &str, label: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("{kind:?}\0{metric}\0{label}").as_bytes());
    format!("rec-{}", &hex::encode(h.finalize())[..16])
}

/// A PromQL string literal for a selector value.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// At most `max` characters of `s`.
fn clip(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        s
    } else {
        s.chars().take(max).collect()
    }
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// The candidate pipeline applying a recommendation, protecting what `protect` protects.
pub fn candidate_pipeline(
    kind: RecommendationKind,
    metric: &str,
    label: &str,
    protect: &[String],
) -> String {
    let selector = format!("{{__name__={}}}", quoted(metric));
    match kind {
        RecommendationKind::Aggregate => format!(
            "protect: {}\nprocessors:\n  - type: aggregate\n    match: {}\n    without: {}\n",
            json_list(protect),
            json_list(&[selector]),
            json_list(&[label.to_string()])
        ),
        RecommendationKind::Drop => format!(
            "protect: {}\nprocessors:\n  - type: filter\n    drop: {}\n",
            json_list(protect),
            json_list(&[selector])
        ),
    }
}

/// Whether a selector may select series of `metric` (ignoring its other matchers).
fn may_match(sel: &Selector, metric: &str) -> bool {
    sel.matchers()
        .iter()
        .filter(|m| m.name == "__name__")
        .all(|m| m.matches_value(metric))
}

fn bad(field: &str, problem: impl Into<String>) -> ServiceError {
    let mut e = FieldErrors::default();
    e.push(field, problem);
    ServiceError::from(e)
}

/// The monthly price of `series` series under `preset` at `rate` samples per series per
/// second.
fn monthly(preset: &PricingPreset, series: f64, rate: f64) -> f64 {
    preset
        .bill(&Usage {
            active_series: series,
            samples_per_second: series * rate,
            bytes_per_second: 0.0,
        })
        .monthly
}

/// Samples per series per second over `batches` (input side), 1/60 when unknown (one
/// sample a minute, a common scrape interval).
fn sample_rate(batches: &[KpiBatch]) -> f64 {
    let (mut samples, mut series_seconds) = (0f64, 0f64);
    for b in batches {
        let seconds = (b.interval_end - b.interval_start)
            .num_milliseconds()
            .max(0) as f64
            / 1e3;
        samples += b.values.input_samples as f64;
        series_seconds += b.values.input_series as f64 * seconds;
    }
    if series_seconds > 0.0 && samples > 0.0 {
        samples / series_seconds
    } else {
        1.0 / 60.0
    }
}

impl Service {
    /// Every host's latest label statistics (received within the last hour), merged.
    pub async fn fleet_label_stats(&self, host: Option<&HostId>) -> ServiceResult<MergedStats> {
        let since = self.clock.now() - chrono::Duration::seconds(STATS_MAX_AGE_SECONDS);
        let stored = self.store.list_label_stats(since).await?;
        let mut reports: Vec<(HostId, LabelStatsReport)> = Vec::with_capacity(stored.len());
        for s in stored {
            if host.is_some_and(|h| *h != s.host_id) {
                continue;
            }
            match serde_json::from_value::<LabelStatsReport>(s.stats) {
                Ok(r) => reports.push((s.host_id, r)),
                Err(e) => {
                    tracing::warn!(host_id = %s.host_id, error = %e, "stored label statistics undecodable, skipped")
                }
            }
        }
        Ok(merge_reports(&reports))
    }

    /// Keeps the label statistics a KPI request carried (the newest interval's per host).
    pub async fn ingest_label_stats(
        &self,
        host: &HostId,
        batches: &[KpiBatch],
    ) -> ServiceResult<()> {
        let Some(latest) = batches
            .iter()
            .filter(|b| b.label_stats.is_some())
            .max_by_key(|b| b.interval_end)
        else {
            return Ok(());
        };
        let Some(stats) = &latest.label_stats else {
            return Ok(());
        };
        let value = serde_json::to_value(stats).map_err(|e| {
            phoenix_store::StoreError::Corrupt(format!("cannot serialise label statistics: {e}"))
        })?;
        self.store
            .put_label_stats(host, latest.interval_end, &value, self.clock.now())
            .await?;
        Ok(())
    }

    pub async fn cardinality(&self, f: &Filter, limit: u32) -> ServiceResult<CardinalityReport> {
        let stats = self.fleet_label_stats(f.host.as_ref()).await?;
        let mut by_ns: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_svc: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut metrics = Vec::new();
        for m in &stats.metrics {
            if f.metric.as_ref().is_some_and(|want| *want != m.metric) {
                continue;
            }
            let mut series = 0;
            for (ns, svc, n) in groups_of(&stats, m, f) {
                series += n;
                *by_ns.entry(ns.clone()).or_default() += n;
                *by_svc.entry((ns, svc)).or_default() += n;
            }
            if series == 0 {
                continue;
            }
            metrics.push(MetricCardinality {
                metric: m.metric.clone(),
                series,
                labels: m.labels.clone(),
                hosts: m.hosts.clone(),
                truncated: m.truncated,
            });
        }
        metrics.sort_by(|a, b| b.series.cmp(&a.series).then(a.metric.cmp(&b.metric)));
        let total_series = metrics.iter().map(|m| m.series).sum();
        let metrics_total = metrics.len() as u64;
        metrics.truncate(limit as usize);
        let mut by_namespace: Vec<SeriesBreakdown> = by_ns
            .into_iter()
            .map(|(namespace, series)| SeriesBreakdown {
                namespace,
                service: None,
                series,
            })
            .collect();
        by_namespace.sort_by(|a, b| b.series.cmp(&a.series).then(a.namespace.cmp(&b.namespace)));
        let mut by_service: Vec<SeriesBreakdown> = by_svc
            .into_iter()
            .map(|((namespace, service), series)| SeriesBreakdown {
                namespace,
                service: Some(service),
                series,
            })
            .collect();
        by_service.sort_by_key(|b| std::cmp::Reverse(b.series));
        by_namespace.truncate(limit as usize);
        by_service.truncate(limit as usize);
        Ok(CardinalityReport {
            hosts: stats.hosts,
            breakdown_labels: stats.breakdown_labels.clone(),
            total_series,
            by_namespace,
            by_service,
            metrics,
            metrics_total,
            metrics_cut: stats.metrics_cut,
            series_cut: stats.series_cut,
            generated_at: self.clock.now(),
        })
    }

    /// The preset named `name` (`query.preset`), or the first one.
    async fn preset(&self, name: Option<&str>) -> ServiceResult<PricingPreset> {
        let presets = self.cost_presets().await?;
        match name {
            None => presets
                .into_iter()
                .next()
                .ok_or_else(|| bad("query.preset", "no pricing preset is configured")),
            Some(name) => {
                let known: Vec<String> = presets.iter().map(|p| p.name.clone()).collect();
                presets.into_iter().find(|p| p.name == name).ok_or_else(|| {
                    bad(
                        "query.preset",
                        format!(
                            "unknown preset `{}`; known: {}",
                            name.chars().take(64).collect::<String>(),
                            known.join(", ")
                        ),
                    )
                })
            }
        }
    }

    pub async fn cost_flow(
        &self,
        f: &Filter,
        preset: Option<&str>,
        experiment_id: Option<ExperimentId>,
        limit: u32,
    ) -> ServiceResult<CostFlow> {
        let preset = self.preset(preset).await?;
        if let Some(id) = experiment_id {
            // 404 for an unknown experiment rather than an empty flow.
            self.store.get_experiment(id).await?;
        }
        let stats = self.fleet_label_stats(f.host.as_ref()).await?;
        let since = self.clock.now() - chrono::Duration::seconds(STATS_MAX_AGE_SECONDS);
        let (variant, source) = match experiment_id {
            Some(_) => (Variant::Candidate, "experiment"),
            None => (Variant::Baseline, "live"),
        };
        let batches: Vec<KpiBatch> = self
            .store
            .latest_kpi_batches_by_host(variant, experiment_id, since)
            .await?
            .into_iter()
            .filter(|b| f.host.as_ref().is_none_or(|h| *h == b.host_id))
            .map(|b| b.batch)
            .collect();
        // Per metric, the share of input series that comes out, from the hosts' KPIs.
        let mut per_metric: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for b in &batches {
            let Some(list) = b.details.get("metrics").and_then(|m| m.as_array()) else {
                continue;
            };
            for m in list {
                let (Some(name), Some(i), Some(o)) = (
                    m.get("metric").and_then(|v| v.as_str()),
                    m.get("input_series").and_then(|v| v.as_u64()),
                    m.get("output_series").and_then(|v| v.as_u64()),
                ) else {
                    continue;
                };
                let e = per_metric.entry(name.to_string()).or_default();
                e.0 += i;
                e.1 += o;
            }
        }
        let rate = sample_rate(&batches);
        let price = |series: f64| monthly(&preset, series, rate);
        let mut nodes: BTreeMap<String, FlowNode> = BTreeMap::new();
        let mut links: BTreeMap<(String, String), f64> = BTreeMap::new();
        let mut metric_series: Vec<(String, f64, f64)> = Vec::new();
        let mut without_kpis = Vec::new();
        let mut node = |id: String, kind: &str, name: &str, series: f64| {
            nodes
                .entry(id.clone())
                .or_insert_with(|| FlowNode {
                    id,
                    kind: kind.into(),
                    name: name.into(),
                    series: 0.0,
                    monthly_cost: 0.0,
                })
                .series += series;
        };
        // The largest metrics by name; the rest flow through one `metric:(other)` node.
        let mut selected: Vec<(&phoenix_core::labelstats::MergedMetric, u64)> = stats
            .metrics
            .iter()
            .filter(|m| f.metric.as_ref().is_none_or(|w| *w == m.metric))
            .map(|m| (m, groups_of(&stats, m, f).map(|g| g.2).sum::<u64>()))
            .filter(|(_, s)| *s > 0)
            .collect();
        selected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.metric.cmp(&b.0.metric)));
        for (rank, (m, _)) in selected.iter().enumerate() {
            let ratio = match per_metric.get(&m.metric) {
                Some((i, o)) if *i > 0 => (*o as f64 / *i as f64).min(1.0),
                _ => {
                    without_kpis.push(m.metric.clone());
                    1.0
                }
            };
            let (metric_id, metric_name) = if rank < limit as usize {
                (format!("metric:{}", m.metric), m.metric.as_str())
            } else {
                ("metric:(other)".to_string(), "(other)")
            };
            let mut total = 0.0;
            for (ns, svc, n) in groups_of(&stats, m, f) {
                let n = n as f64;
                total += n;
                let ns_id = format!("namespace:{ns}");
                let svc_id = format!("service:{ns}/{svc}");
                node(ns_id.clone(), "namespace", &ns, n);
                node(svc_id.clone(), "service", &svc, n);
                node(metric_id.clone(), "metric", metric_name, n);
                *links.entry((ns_id, svc_id.clone())).or_default() += n;
                *links.entry((svc_id, metric_id.clone())).or_default() += n;
            }
            let kept = total * ratio;
            node("kept".into(), "outcome", "kept", kept);
            node("reduced".into(), "outcome", "reduced", total - kept);
            *links.entry((metric_id.clone(), "kept".into())).or_default() += kept;
            *links.entry((metric_id, "reduced".into())).or_default() += total - kept;
            metric_series.push((m.metric.clone(), total, kept));
        }
        let series_in: f64 = metric_series.iter().map(|m| m.1).sum();
        let series_out: f64 = metric_series.iter().map(|m| m.2).sum();
        let mut nodes: Vec<FlowNode> = nodes
            .into_values()
            .map(|mut n| {
                n.monthly_cost = price(n.series);
                n
            })
            .collect();
        nodes.sort_by(|a, b| {
            b.series
                .partial_cmp(&a.series)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.id.cmp(&b.id))
        });
        let links = links
            .into_iter()
            .filter(|(_, series)| *series > 0.0)
            .map(|((source, target), series)| FlowLink {
                source,
                target,
                series,
                monthly_cost: price(series),
            })
            .collect();
        let (cost_in, cost_out) = (price(series_in), price(series_out));
        Ok(CostFlow {
            preset: preset.name.clone(),
            currency: preset.currency.clone(),
            reduction_source: source.into(),
            experiment_id,
            samples_per_series_per_second: rate,
            series_in,
            series_out,
            monthly_cost_in: cost_in,
            monthly_cost_out: cost_out,
            monthly_savings: cost_in - cost_out,
            nodes,
            links,
            metrics_without_kpis: without_kpis,
            hosts: stats.hosts,
            generated_at: self.clock.now(),
        })
    }

    /// Every recommendation, best first (no limit), with the counts of what was skipped.
    pub async fn all_recommendations(
        &self,
        metric: Option<&str>,
        preset: Option<&str>,
    ) -> ServiceResult<RecommendationList> {
        let preset = self.preset(preset).await?;
        let stats = self.fleet_label_stats(None).await?;
        let usage: UsageView = self.usage().await?;
        let since = self.clock.now() - chrono::Duration::seconds(STATS_MAX_AGE_SECONDS);
        let live: Vec<KpiBatch> = self
            .store
            .latest_kpi_batches_by_host(Variant::Baseline, None, since)
            .await?
            .into_iter()
            .map(|b| b.batch)
            .collect();
        let rate = sample_rate(&live);
        // What the baseline template protects stays untouched.
        let protect: Vec<String> = phoenix_pipeline::templates::resolve("baseline", &json!({}))
            .map(|c| c.protect)
            .unwrap_or_default();
        let protect_selectors: Vec<Selector> = protect
            .iter()
            .filter_map(|s| Selector::parse(s).ok())
            .collect();
        let used: BTreeSet<(&str, &str)> = usage
            .protected_labels
            .iter()
            .map(|u| (u.metric.as_str(), u.label.as_str()))
            .collect();
        let read_metrics: BTreeSet<&str> = usage
            .sources
            .iter()
            .flat_map(|s| {
                s.queries
                    .iter()
                    .flat_map(|q| q.metrics.iter().map(String::as_str))
            })
            .collect();
        // A query selecting by labels only may read any metric: then nothing is dropped.
        let label_only_query = usage
            .sources
            .iter()
            .any(|s| s.queries.iter().any(|q| q.metrics.is_empty()));
        let (mut skipped_used, mut skipped_protected) = (0u64, 0u64);
        let mut items = Vec::new();
        for m in &stats.metrics {
            if metric.is_some_and(|w| w != m.metric) {
                continue;
            }
            if protect_selectors.iter().any(|s| may_match(s, &m.metric)) {
                skipped_protected += 1;
                continue;
            }
            let label_names: Vec<String> = m.labels.iter().map(|l| l.name.clone()).collect();
            let hosts = m.hosts.len();
            for l in &m.labels {
                if ALWAYS_KEPT.contains(&l.name.as_str()) {
                    continue;
                }
                if used.contains(&(m.metric.as_str(), l.name.as_str()))
                    || used.contains(&("*", l.name.as_str()))
                {
                    skipped_used += 1;
                    continue;
                }
                let after = l.series_without.min(m.series);
                let saved = m.series - after;
                if saved == 0 {
                    continue;
                }
                let candidate =
                    candidate_pipeline(RecommendationKind::Aggregate, &m.metric, &l.name, &protect);
                items.push(Recommendation {
                    id: recommendation_id(RecommendationKind::Aggregate, &m.metric, &l.name),
                    kind: RecommendationKind::Aggregate,
                    metric: m.metric.clone(),
                    without: vec![l.name.clone()],
                    by: label_names.iter().filter(|n| **n != l.name).cloned().collect(),
                    estimate: Estimate {
                        series_before: m.series,
                        series_after: after,
                        series_saved: saved,
                        percent_of_metric: 100.0 * saved as f64 / m.series.max(1) as f64,
                        monthly_savings: monthly(&preset, saved as f64, rate),
                        currency: preset.currency.clone(),
                        preset: preset.name.clone(),
                        method: format!(
                            "per host, a HyperLogLog++ sketch (precision 12, ~1.6 % standard error, exact up to 128) of the series identities of `{}` with `{}` removed gives the series the aggregation leaves; summed over the {hosts} reporting host(s) plus the series lacking the label; `{}` has ~{} distinct values fleet-wide (sketches merged)",
                            m.metric, l.name, l.name, l.distinct_values
                        ),
                    },
                    distinct_values: Some(l.distinct_values),
                    hosts: m.hosts.clone(),
                    candidate_pipeline: candidate,
                    title: format!(
                        "aggregate `{}` without `{}`: {} → {} series",
                        m.metric, l.name, m.series, after
                    ),
                });
            }
            if read_metrics.contains(m.metric.as_str()) || label_only_query {
                skipped_used += 1;
                continue;
            }
            items.push(Recommendation {
                id: recommendation_id(RecommendationKind::Drop, &m.metric, ""),
                kind: RecommendationKind::Drop,
                metric: m.metric.clone(),
                without: Vec::new(),
                by: Vec::new(),
                estimate: Estimate {
                    series_before: m.series,
                    series_after: 0,
                    series_saved: m.series,
                    percent_of_metric: 100.0,
                    monthly_savings: monthly(&preset, m.series as f64, rate),
                    currency: preset.currency.clone(),
                    preset: preset.name.clone(),
                    method: format!(
                        "no uploaded query reads `{}`: dropping it saves all its series, counted exactly per host and summed over {hosts} host(s)",
                        m.metric
                    ),
                },
                distinct_values: None,
                hosts: m.hosts.clone(),
                candidate_pipeline: candidate_pipeline(
                    RecommendationKind::Drop,
                    &m.metric,
                    "",
                    &protect,
                ),
                title: format!("drop `{}`: {} series no query reads", m.metric, m.series),
            });
        }
        // Belt and braces: the candidate must pass the `used_labels` guardrail and render.
        items.retain(|r| {
            let Ok(config) =
                phoenix_pipeline::templates::resolve(&r.candidate_pipeline, &json!({}))
            else {
                return false;
            };
            usage
                .protected_labels
                .iter()
                .all(|u| removes_label(&config, &u.metric, &u.label).is_none())
        });
        items.sort_by(|a, b| {
            b.estimate
                .series_saved
                .cmp(&a.estimate.series_saved)
                .then(
                    b.estimate
                        .monthly_savings
                        .partial_cmp(&a.estimate.monthly_savings)
                        .unwrap_or(std::cmp::Ordering::Equal),
                )
                .then(a.id.cmp(&b.id))
        });
        Ok(RecommendationList {
            total: items.len() as u64,
            items,
            skipped_used_by_queries: skipped_used,
            skipped_protected,
            hosts: stats.hosts,
            generated_at: self.clock.now(),
        })
    }

    pub async fn recommendations(
        &self,
        metric: Option<&str>,
        preset: Option<&str>,
        limit: u32,
    ) -> ServiceResult<RecommendationList> {
        let mut list = self.all_recommendations(metric, preset).await?;
        list.items.truncate(limit as usize);
        Ok(list)
    }

    /// Creates (does not start) the experiment testing recommendation `id`: the baseline
    /// template against a candidate applying it, on the hosts that reported the metric.
    pub async fn recommendation_experiment(
        &self,
        id: &str,
        req: RecommendationExperimentRequest,
    ) -> ServiceResult<Experiment> {
        let list = self.all_recommendations(None, None).await?;
        let Some(rec) = list.items.into_iter().find(|r| r.id == id) else {
            return Err(phoenix_store::StoreError::NotFound {
                entity: "recommendation",
                id: id.chars().take(64).collect(),
            }
            .into());
        };
        let mut new = NewExperiment {
            name: req.name.unwrap_or_else(|| {
                clip(
                    format!("recommendation {}: {}", rec.id, rec.title),
                    phoenix_core::experiment::MAX_NAME_LEN,
                )
            }),
            description: format!(
                "{}\nEstimate: {} → {} series ({} saved, {:.2} {}/month under `{}`). {}",
                rec.title,
                rec.estimate.series_before,
                rec.estimate.series_after,
                rec.estimate.series_saved,
                rec.estimate.monthly_savings,
                rec.estimate.currency,
                rec.estimate.preset,
                rec.estimate.method
            ),
            baseline_pipeline: "baseline".into(),
            candidate_pipeline: rec.candidate_pipeline,
            target_hosts: rec.hosts,
            target_selector: BTreeMap::new(),
            mode: Default::default(),
            candidate_share_percent: None,
            duration_seconds: 3600,
            parameters: json!({}),
            owner: req.owner,
            analysis: Default::default(),
        };
        if let Some(d) = req.duration_seconds {
            new.duration_seconds = d;
        }
        new.description = clip(
            new.description,
            phoenix_core::experiment::MAX_DESCRIPTION_LEN,
        );
        self.create_experiment(new).await
    }
}
