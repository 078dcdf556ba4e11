//! Label statistics: what an agent observed in its input over one KPI interval, per metric —
//! active series, per label name a HyperLogLog++ sketch of its distinct values and of the
//! series that would remain without it, its top values by series count, and series by a few
//! breakdown labels (`namespace`, `service`). Sketches serialise and merge, so the API can
//! merge the reports of many hosts into fleet-wide distinct counts ([`merge_reports`]).

use std::collections::BTreeMap;

use cardinality_estimator::CardinalityEstimator;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::experiment::FieldErrors;
use crate::ids::HostId;

/// A HyperLogLog++ sketch (Cloudflare's `cardinality-estimator`, precision 12: about 1.6 %
/// standard error, exact up to 128 values). Values are hashed as `str` with the crate's fixed
/// WyHash, so sketches from different hosts merge.
pub type DistinctSketch = CardinalityEstimator<str>;

/// Limits a report must respect (the agent's defaults are well under them).
pub const MAX_REPORT_METRICS: usize = 5_000;
pub const MAX_REPORT_LABELS_PER_METRIC: usize = 128;
pub const MAX_REPORT_TOP_VALUES: usize = 100;
pub const MAX_REPORT_GROUPS_PER_METRIC: usize = 10_000;
pub const MAX_REPORT_BREAKDOWN_LABELS: usize = 4;
pub const MAX_REPORT_STRING_LEN: usize = 1024;

/// One label value and the series carrying it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ValueCount {
    pub value: String,
    pub series: u64,
}

/// What one label name looks like within one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelStat {
    pub name: String,
    /// Series of the metric carrying this label.
    pub series: u64,
    /// Sketch of the label's distinct values.
    #[schema(value_type = Object)]
    pub values: DistinctSketch,
    /// Sketch of the metric's series identities with this label removed: its estimate is the
    /// number of series `aggregate without: [name]` would leave.
    #[schema(value_type = Object)]
    pub without: DistinctSketch,
    /// The values with the most series, most first (space-saving counts: exact while the
    /// label has few values, otherwise an upper bound).
    #[serde(default)]
    pub top_values: Vec<ValueCount>,
}

/// Series of one metric sharing the same values of the breakdown labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SeriesGroup {
    /// Aligned with [`LabelStatsReport::breakdown_labels`]; `""` where the label is absent.
    pub values: Vec<String>,
    pub series: u64,
}

/// One metric's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricLabelStats {
    pub metric: String,
    /// Distinct input series in the interval.
    pub series: u64,
    pub labels: Vec<LabelStat>,
    /// Label names not tracked because of the per-metric cap.
    #[serde(default)]
    pub labels_cut: u64,
    #[serde(default)]
    pub groups: Vec<SeriesGroup>,
    /// Series not in `groups` because of the per-metric group cap.
    #[serde(default)]
    pub groups_cut_series: u64,
}

/// What an agent sends with a KPI batch (the optional `label_stats` field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelStatsReport {
    /// The labels `groups` break series down by, e.g. `["namespace", "service"]`.
    pub breakdown_labels: Vec<String>,
    pub metrics: Vec<MetricLabelStats>,
    /// Metrics not tracked because of the metric cap, and their series.
    #[serde(default)]
    pub metrics_cut: u64,
    #[serde(default)]
    pub series_cut: u64,
}

fn check_string(path: &str, s: &str, e: &mut FieldErrors) {
    if s.len() > MAX_REPORT_STRING_LEN {
        e.push(
            path.to_string(),
            format!("must be at most {MAX_REPORT_STRING_LEN} bytes"),
        );
    }
}

impl LabelStatsReport {
    /// Checks bounds and consistency; errors name the field under `path`.
    pub fn validate(&self, path: &str, e: &mut FieldErrors) {
        if self.breakdown_labels.len() > MAX_REPORT_BREAKDOWN_LABELS {
            e.push(
                format!("{path}.breakdown_labels"),
                format!("must hold at most {MAX_REPORT_BREAKDOWN_LABELS} labels"),
            );
        }
        for (i, l) in self.breakdown_labels.iter().enumerate() {
            check_string(&format!("{path}.breakdown_labels[{i}]"), l, e);
        }
        if self.metrics.len() > MAX_REPORT_METRICS {
            e.push(
                format!("{path}.metrics"),
                format!("must hold at most {MAX_REPORT_METRICS} metrics"),
            );
            return;
        }
        for (i, m) in self.metrics.iter().enumerate() {
            let mp = format!("{path}.metrics[{i}]");
            if m.metric.is_empty() {
                e.push(format!("{mp}.metric"), "must not be empty");
            }
            check_string(&format!("{mp}.metric"), &m.metric, e);
            if m.labels.len() > MAX_REPORT_LABELS_PER_METRIC {
                e.push(
                    format!("{mp}.labels"),
                    format!("must hold at most {MAX_REPORT_LABELS_PER_METRIC} labels"),
                );
                continue;
            }
            for (j, l) in m.labels.iter().enumerate() {
                let lp = format!("{mp}.labels[{j}]");
                check_string(&format!("{lp}.name"), &l.name, e);
                if l.series > m.series {
                    e.push(
                        format!("{lp}.series"),
                        "must not exceed the metric's series",
                    );
                }
                if l.top_values.len() > MAX_REPORT_TOP_VALUES {
                    e.push(
                        format!("{lp}.top_values"),
                        format!("must hold at most {MAX_REPORT_TOP_VALUES} values"),
                    );
                }
                for (k, v) in l.top_values.iter().enumerate() {
                    check_string(&format!("{lp}.top_values[{k}].value"), &v.value, e);
                }
            }
            if m.groups.len() > MAX_REPORT_GROUPS_PER_METRIC {
                e.push(
                    format!("{mp}.groups"),
                    format!("must hold at most {MAX_REPORT_GROUPS_PER_METRIC} groups"),
                );
                continue;
            }
            for (j, g) in m.groups.iter().enumerate() {
                if g.values.len() != self.breakdown_labels.len() {
                    e.push(
                        format!("{mp}.groups[{j}].values"),
                        "must have one value per breakdown label",
                    );
                }
                for (k, v) in g.values.iter().enumerate() {
                    check_string(&format!("{mp}.groups[{j}].values[{k}]"), v, e);
                }
            }
        }
    }
}

/// One label of one metric, merged across hosts.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MergedLabel {
    pub name: String,
    /// Series carrying the label, summed across hosts.
    pub series: u64,
    /// Fleet-wide distinct values (the hosts' sketches merged).
    pub distinct_values: u64,
    /// Series `aggregate without: [name]` would leave, summed across hosts (each host
    /// aggregates its own series).
    pub series_without: u64,
    /// Top values by series, summed across hosts.
    pub top_values: Vec<ValueCount>,
    /// How many hosts reported the label.
    pub hosts: u64,
}

/// One metric merged across hosts.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MergedMetric {
    pub metric: String,
    /// Series summed across hosts.
    pub series: u64,
    pub labels: Vec<MergedLabel>,
    /// Series by breakdown values (`values` aligned with the breakdown labels), summed.
    pub groups: Vec<SeriesGroup>,
    /// The hosts that reported the metric.
    pub hosts: Vec<HostId>,
    /// Labels or groups an agent's caps cut from its report.
    pub truncated: bool,
}

/// Every host's latest report merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct MergedStats {
    pub breakdown_labels: Vec<String>,
    /// Largest first by series.
    pub metrics: Vec<MergedMetric>,
    pub hosts: u64,
    /// Metrics and series the agents' metric caps cut, summed.
    pub metrics_cut: u64,
    pub series_cut: u64,
}

/// Keeps at most this many top values per merged label.
pub const MERGED_TOP_VALUES: usize = 10;

/// Merges reports (one per host). Breakdown groups of a host whose breakdown labels differ
/// from the first report's are re-keyed by name (missing labels become `""`).
pub fn merge_reports(reports: &[(HostId, LabelStatsReport)]) -> MergedStats {
    let breakdown: Vec<String> = reports
        .first()
        .map(|(_, r)| r.breakdown_labels.clone())
        .unwrap_or_default();
    struct LabelAcc {
        series: u64,
        values: DistinctSketch,
        without: u64,
        top: BTreeMap<String, u64>,
        hosts: u64,
    }
    struct MetricAcc {
        series: u64,
        labels: BTreeMap<String, LabelAcc>,
        groups: BTreeMap<Vec<String>, u64>,
        hosts: Vec<HostId>,
        truncated: bool,
    }
    let mut metrics: BTreeMap<String, MetricAcc> = BTreeMap::new();
    let mut out = MergedStats {
        breakdown_labels: breakdown.clone(),
        hosts: reports.len() as u64,
        ..MergedStats::default()
    };
    for (host, report) in reports {
        out.metrics_cut += report.metrics_cut;
        out.series_cut += report.series_cut;
        let remap: Vec<Option<usize>> = breakdown
            .iter()
            .map(|b| report.breakdown_labels.iter().position(|l| l == b))
            .collect();
        for m in &report.metrics {
            let acc = metrics
                .entry(m.metric.clone())
                .or_insert_with(|| MetricAcc {
                    series: 0,
                    labels: BTreeMap::new(),
                    groups: BTreeMap::new(),
                    hosts: Vec::new(),
                    truncated: false,
                });
            acc.series += m.series;
            acc.hosts.push(host.clone());
            acc.truncated |= m.labels_cut > 0 || m.groups_cut_series > 0;
            for l in &m.labels {
                let la = acc
                    .labels
                    .entry(l.name.clone())
                    .or_insert_with(|| LabelAcc {
                        series: 0,
                        values: DistinctSketch::new(),
                        without: 0,
                        top: BTreeMap::new(),
                        hosts: 0,
                    });
                la.series += l.series;
                la.values.merge(&l.values);
                // Series lacking the label keep their identity under the aggregation.
                la.without += l.without.estimate() as u64 + m.series.saturating_sub(l.series);
                la.hosts += 1;
                for v in &l.top_values {
                    *la.top.entry(v.value.clone()).or_insert(0) += v.series;
                }
            }
            for g in &m.groups {
                let key: Vec<String> = remap
                    .iter()
                    .map(|i| i.and_then(|i| g.values.get(i).cloned()).unwrap_or_default())
                    .collect();
                *acc.groups.entry(key).or_insert(0) += g.series;
            }
        }
    }
    out.metrics = metrics
        .into_iter()
        .map(|(metric, acc)| {
            let mut labels: Vec<MergedLabel> = acc
                .labels
                .into_iter()
                .map(|(name, la)| {
                    let mut top: Vec<ValueCount> = la
                        .top
                        .into_iter()
                        .map(|(value, series)| ValueCount { value, series })
                        .collect();
                    top.sort_by(|a, b| b.series.cmp(&a.series).then(a.value.cmp(&b.value)));
                    top.truncate(MERGED_TOP_VALUES);
                    MergedLabel {
                        name,
                        series: la.series,
                        distinct_values: la.values.estimate() as u64,
                        series_without: la.without.min(acc.series),
                        top_values: top,
                        hosts: la.hosts,
                    }
                })
                .collect();
            labels.sort_by(|a, b| {
                b.distinct_values
                    .cmp(&a.distinct_values)
                    .then(a.name.cmp(&b.name))
            });
            let mut groups: Vec<SeriesGroup> = acc
                .groups
                .into_iter()
                .map(|(values, series)| SeriesGroup { values, series })
                .collect();
            groups.sort_by(|a, b| b.series.cmp(&a.series).then(a.values.cmp(&b.values)));
            MergedMetric {
                metric,
                series: acc.series,
                labels,
                groups,
                hosts: acc.hosts,
                truncated: acc.truncated,
            }
        })
        .collect();
    out.metrics
        .sort_by(|a, b| b.series.cmp(&a.series).then(a.metric.cmp(&b.metric)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch(values: impl Iterator<Item = String>) -> DistinctSketch {
        let mut s = DistinctSketch::new();
        for v in values {
            s.insert(&v);
        }
        s
    }

    fn report(pods: std::ops::Range<u32>) -> LabelStatsReport {
        let n = (pods.end - pods.start) as u64;
        LabelStatsReport {
            breakdown_labels: vec!["namespace".into()],
            metrics: vec![MetricLabelStats {
                metric: "m".into(),
                series: n,
                labels: vec![LabelStat {
                    name: "pod".into(),
                    series: n,
                    values: sketch(pods.clone().map(|p| format!("pod-{p}"))),
                    without: sketch(std::iter::once("{}".to_string())),
                    top_values: vec![ValueCount {
                        value: format!("pod-{}", pods.start),
                        series: 1,
                    }],
                }],
                labels_cut: 0,
                groups: vec![SeriesGroup {
                    values: vec!["shop".into()],
                    series: n,
                }],
                groups_cut_series: 0,
            }],
            metrics_cut: 0,
            series_cut: 0,
        }
    }

    #[test]
    fn merge_sums_series_and_unions_distinct_values_across_hosts() {
        // Two hosts, 6000 pods each, 2000 shared: 10000 distinct fleet-wide.
        let a = (HostId::parse("a").unwrap(), report(0..6000));
        let b = (HostId::parse("b").unwrap(), report(4000..10000));
        let merged = merge_reports(&[a, b]);
        let m = &merged.metrics[0];
        assert_eq!(m.series, 12000);
        assert_eq!(m.groups[0].series, 12000);
        let pod = &m.labels[0];
        let error = (pod.distinct_values as f64 - 10000.0).abs() / 10000.0;
        assert!(
            error < 0.05,
            "estimate {} off by {error}",
            pod.distinct_values
        );
        assert_eq!(pod.series_without, 2);
        assert_eq!(pod.hosts, 2);
        // Sketches survive a JSON round trip.
        let text = serde_json::to_string(&report(0..300)).unwrap();
        let back: LabelStatsReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report(0..300));
    }

    #[test]
    fn validation_names_the_field() {
        let mut r = report(0..3);
        r.metrics[0].labels[0].series = 99;
        r.metrics[0].groups[0].values.push("extra".into());
        let mut e = FieldErrors::default();
        r.validate("batches[0].label_stats", &mut e);
        let fields: Vec<String> = e.0.iter().map(|f| f.field.clone()).collect();
        assert!(fields.contains(&"batches[0].label_stats.metrics[0].labels[0].series".into()));
        assert!(fields.contains(&"batches[0].label_stats.metrics[0].groups[0].values".into()));
    }
}
