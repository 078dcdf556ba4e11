//! Analysis and decision: from the KPI batches an experiment's agents reported, per variant
//! and per interval, to a decision — `promote`, `rollback` or `inconclusive` — with the
//! reasons, the effect sizes, their confidence intervals, the rank test and a guardrail table.
//!
//! Pure: the API's scheduler fetches the rows and stores the result; everything that decides
//! is here, so it can be tested without a database. See `docs/analysis.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::experiment::FieldErrors;
use crate::ids::HostId;
use crate::kpi::{KpiValues, Variant};
use crate::stats;

/// What an experiment is judged against, and how often it is looked at while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSpec {
    /// Seconds between two analyses while running; also the width of the intervals the KPIs
    /// are grouped into (across hosts) for the statistics.
    #[serde(default = "default_interval_seconds")]
    pub interval_seconds: u64,
    /// Roll back on its own, while running, when a guardrail is breached.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// Confidence of the rank test and of the intervals (Kayenta's default: 0.98).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// Fewer complete intervals than this and the decision is `inconclusive`.
    #[serde(default = "default_min_intervals")]
    pub min_intervals: u32,
    #[serde(default)]
    pub guardrails: Guardrails,
    /// What a target whose deployment or start fails, or that does not start within the
    /// API's `experiment_start_timeout`, does to the run: `fail` it (default) or be
    /// `exclude`d from it (its KPIs leave the analysis, it gets a `stop`, the others go on).
    #[serde(default)]
    pub on_target_failure: TargetFailurePolicy,
    /// Under `exclude`: fewer targets left than this and the experiment fails.
    #[serde(default = "default_min_targets")]
    pub min_targets: u32,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            interval_seconds: default_interval_seconds(),
            auto_rollback: true,
            confidence: default_confidence(),
            min_intervals: default_min_intervals(),
            guardrails: Guardrails::default(),
            on_target_failure: TargetFailurePolicy::default(),
            min_targets: default_min_targets(),
        }
    }
}

/// What a failed or late target does to its experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetFailurePolicy {
    /// The experiment fails, naming the host and the reason.
    #[default]
    Fail,
    /// The target leaves the run (recorded in the experiment's `excluded_targets`) and the
    /// others go on, as long as at least `min_targets` remain.
    Exclude,
}

impl TargetFailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Exclude => "exclude",
        }
    }
}

/// The bounds a candidate must stay within. Protected coverage is not a setting: it must be
/// exactly 100 %, always.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Guardrails {
    /// The candidate must remove at least this share of active series (lower confidence
    /// bound of the mean over intervals), in percent.
    #[serde(default = "default_min_reduction")]
    pub min_reduction_percent: f64,
    /// Largest relative error of any metric's total against the baseline, in percent, in any
    /// interval on any host.
    #[serde(default = "default_max_error")]
    pub max_total_error_percent: f64,
    /// Share of injected or detected anomalous series the candidate keeps, in percent, over
    /// the whole run (checked once at least [`MIN_ANOMALIES_FOR_RECALL`] were seen).
    #[serde(default = "default_min_recall")]
    pub min_anomaly_recall_percent: f64,
    /// CPU the candidate may add over the baseline, in milliseconds per million input samples
    /// (numerically the added nanoseconds per sample). `null`: reported, not enforced.
    #[serde(default)]
    pub max_added_cpu_ms_per_million_samples: Option<f64>,
}

impl Default for Guardrails {
    fn default() -> Self {
        Self {
            min_reduction_percent: default_min_reduction(),
            max_total_error_percent: default_max_error(),
            min_anomaly_recall_percent: default_min_recall(),
            max_added_cpu_ms_per_million_samples: None,
        }
    }
}

fn default_interval_seconds() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_confidence() -> f64 {
    0.98
}
fn default_min_intervals() -> u32 {
    5
}
fn default_min_targets() -> u32 {
    1
}
fn default_min_reduction() -> f64 {
    70.0
}
fn default_max_error() -> f64 {
    1.0
}
fn default_min_recall() -> f64 {
    95.0
}

/// Anomaly recall is judged only once this many anomalous series were seen: below it, one
/// missed series swings the percentage by more than the bound allows.
pub const MIN_ANOMALIES_FOR_RECALL: u64 = 20;
pub const MIN_INTERVAL_SECONDS: u64 = 1;
pub const MAX_INTERVAL_SECONDS: u64 = 24 * 3600;

impl AnalysisSpec {
    /// Field errors under `path` (`analysis` in an experiment request).
    pub fn validate_into(&self, path: &str, e: &mut FieldErrors) {
        if !(MIN_INTERVAL_SECONDS..=MAX_INTERVAL_SECONDS).contains(&self.interval_seconds) {
            e.push(
                format!("{path}.interval_seconds"),
                format!("must be between {MIN_INTERVAL_SECONDS} and {MAX_INTERVAL_SECONDS}"),
            );
        }
        if !(self.confidence.is_finite() && self.confidence > 0.5 && self.confidence < 1.0) {
            e.push(
                format!("{path}.confidence"),
                "must be greater than 0.5 and less than 1",
            );
        }
        if !(2..=10_000).contains(&self.min_intervals) {
            e.push(
                format!("{path}.min_intervals"),
                "must be between 2 and 10000",
            );
        }
        if !(1..=crate::experiment::MAX_TARGET_HOSTS as u32).contains(&self.min_targets) {
            e.push(
                format!("{path}.min_targets"),
                format!(
                    "must be between 1 and {}",
                    crate::experiment::MAX_TARGET_HOSTS
                ),
            );
        }
        let g = &self.guardrails;
        let pct = |name: &str, v: f64, e: &mut FieldErrors| {
            if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                e.push(
                    format!("{path}.guardrails.{name}"),
                    "must be a percentage between 0 and 100",
                );
            }
        };
        pct("min_reduction_percent", g.min_reduction_percent, e);
        pct("max_total_error_percent", g.max_total_error_percent, e);
        pct(
            "min_anomaly_recall_percent",
            g.min_anomaly_recall_percent,
            e,
        );
        if let Some(v) = g.max_added_cpu_ms_per_million_samples {
            if !(v.is_finite() && v >= 0.0) {
                e.push(
                    format!("{path}.guardrails.max_added_cpu_ms_per_million_samples"),
                    "must be a number of at least 0",
                );
            }
        }
    }
}

/// One KPI batch as the analysis reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct KpiRow {
    pub host_id: HostId,
    pub variant: Variant,
    pub interval_start: DateTime<Utc>,
    pub interval_end: DateTime<Utc>,
    pub values: KpiValues,
    /// The metric with the largest error of totals in this batch, when the agent said.
    pub worst_metric: Option<String>,
}

/// KPIs of one variant summed across hosts over one analysis interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KpiPoint {
    pub interval_start: DateTime<Utc>,
    /// Hosts that reported in this interval.
    pub hosts: u32,
    /// Batches summed (a host with a shorter KPI interval sends several per interval).
    pub batches: u32,
    /// Active series, averaged over each host's batches, then summed across hosts.
    pub input_series: f64,
    pub output_series: f64,
    pub input_samples: u64,
    pub output_samples: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub protected_series_in: f64,
    pub protected_series_out: f64,
    pub anomalies_in: u64,
    pub anomalies_kept: u64,
    /// Sample-weighted mean cost.
    pub ns_per_sample: f64,
    pub max_total_error: f64,
    pub reduction_percent: f64,
}

/// The per-interval series of both variants, aligned on interval starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KpiSeries {
    pub interval_seconds: u64,
    pub baseline: Vec<KpiPoint>,
    pub candidate: Vec<KpiPoint>,
}

/// Groups rows into `interval_seconds`-wide intervals by where each batch ended. Within an
/// interval a host's active-series counts are averaged over its batches (series are a level,
/// not a flow) and then summed across hosts; samples and bytes are summed.
pub fn bucket(rows: &[KpiRow], interval_seconds: u64) -> KpiSeries {
    let width = interval_seconds.max(1) as i64;
    #[derive(Default)]
    struct HostAcc {
        n: u32,
        input_series: u64,
        output_series: u64,
        protected_in: u64,
        protected_out: u64,
    }
    #[derive(Default)]
    struct Acc {
        hosts: BTreeMap<HostId, HostAcc>,
        batches: u32,
        input_samples: u64,
        output_samples: u64,
        input_bytes: u64,
        output_bytes: u64,
        anomalies_in: u64,
        anomalies_kept: u64,
        ns_weighted: f64,
        max_total_error: f64,
    }
    let mut acc: BTreeMap<(Variant, i64), Acc> = BTreeMap::new();
    for r in rows {
        let slot = r.interval_end.timestamp().div_euclid(width);
        let a = acc.entry((r.variant, slot)).or_default();
        let v = &r.values;
        let h = a.hosts.entry(r.host_id.clone()).or_default();
        h.n += 1;
        h.input_series += v.input_series;
        h.output_series += v.output_series;
        h.protected_in += v.protected_series_in;
        h.protected_out += v.protected_series_out;
        a.batches += 1;
        a.input_samples += v.input_samples;
        a.output_samples += v.output_samples;
        a.input_bytes += v.input_bytes;
        a.output_bytes += v.output_bytes;
        a.anomalies_in += v.anomalies_in;
        a.anomalies_kept += v.anomalies_kept;
        a.ns_weighted += v.ns_per_sample * v.input_samples as f64;
        a.max_total_error = a.max_total_error.max(v.max_total_error);
    }
    let mut out = KpiSeries {
        interval_seconds,
        ..Default::default()
    };
    for ((variant, slot), a) in acc {
        let mean = |f: fn(&HostAcc) -> u64| -> f64 {
            a.hosts
                .values()
                .map(|h| f(h) as f64 / f64::from(h.n.max(1)))
                .sum()
        };
        let input_series = mean(|h| h.input_series);
        let output_series = mean(|h| h.output_series);
        let point = KpiPoint {
            interval_start: Utc
                .timestamp_opt(slot * width, 0)
                .single()
                .unwrap_or_default(),
            hosts: a.hosts.len() as u32,
            batches: a.batches,
            input_series,
            output_series,
            input_samples: a.input_samples,
            output_samples: a.output_samples,
            input_bytes: a.input_bytes,
            output_bytes: a.output_bytes,
            protected_series_in: mean(|h| h.protected_in),
            protected_series_out: mean(|h| h.protected_out),
            anomalies_in: a.anomalies_in,
            anomalies_kept: a.anomalies_kept,
            ns_per_sample: if a.input_samples > 0 {
                a.ns_weighted / a.input_samples as f64
            } else {
                0.0
            },
            max_total_error: a.max_total_error,
            reduction_percent: reduction(input_series, output_series),
        };
        match variant {
            Variant::Baseline => out.baseline.push(point),
            Variant::Candidate => out.candidate.push(point),
        }
    }
    out
}

/// The (baseline, candidate) points of the intervals both variants reported in (in shadow
/// mode, every one).
pub fn paired(series: &KpiSeries) -> Vec<(&KpiPoint, &KpiPoint)> {
    let base: BTreeMap<DateTime<Utc>, &KpiPoint> = series
        .baseline
        .iter()
        .map(|p| (p.interval_start, p))
        .collect();
    series
        .candidate
        .iter()
        .filter_map(|c| base.get(&c.interval_start).map(|b| (*b, c)))
        .collect()
}

fn reduction(input: f64, output: f64) -> f64 {
    if input > 0.0 {
        (1.0 - output / input) * 100.0
    } else {
        0.0
    }
}

/// The outcome of an analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Promote,
    Rollback,
    Inconclusive,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Rollback => "rollback",
            Self::Inconclusive => "inconclusive",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailStatus {
    Pass,
    Breach,
    /// Not enough data to judge (for example, too few anomalies seen).
    NoData,
    /// Reported, not enforced.
    NotEnforced,
}

/// One row of the guardrail table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GuardrailResult {
    pub guardrail: String,
    pub status: GuardrailStatus,
    /// The figure measured (its worst case where the guardrail is "in every interval").
    pub observed: Option<f64>,
    /// The bound, in the same unit.
    pub threshold: Option<f64>,
    /// Where a breach was seen.
    pub metric: Option<String>,
    pub host_id: Option<HostId>,
    pub at: Option<DateTime<Utc>>,
    pub message: String,
}

/// An effect with its confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Effect {
    pub name: String,
    pub unit: String,
    pub baseline_mean: f64,
    pub candidate_mean: f64,
    /// Interval of the candidate's mean.
    pub candidate_ci_low: f64,
    pub candidate_ci_high: f64,
    /// Candidate minus baseline (mean of the per-interval differences), and its interval.
    pub difference: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub confidence: f64,
}

/// Mann–Whitney U on per-interval output series, candidate against baseline, after IQR
/// outlier removal, as Kayenta's judge does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RankTest {
    pub metric: String,
    /// Two-sided Mann–Whitney U p-value.
    pub p_value: f64,
    /// Hodges–Lehmann shift (candidate − baseline) and its interval.
    pub hodges_lehmann: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub confidence: f64,
    /// `low`: the candidate is significantly lower; `high`: higher; `pass`: no significant
    /// difference.
    pub classification: String,
    /// The judge's own sentence.
    pub reason: String,
    pub baseline_n: usize,
    pub candidate_n: usize,
    pub outliers_removed: usize,
}

/// A whole analysis: what `GET /experiments/{id}/results` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnalysisResult {
    pub decision: Decision,
    /// One sentence per reason, most important first.
    pub reasons: Vec<String>,
    /// `true` for the analysis at the end of the run, `false` for one while running.
    pub r#final: bool,
    pub intervals: usize,
    pub hosts: usize,
    pub reduction_percent: Option<f64>,
    pub protected_coverage_percent: Option<f64>,
    pub anomaly_recall_percent: Option<f64>,
    pub max_total_error_percent: Option<f64>,
    pub effects: Vec<Effect>,
    pub rank_test: Option<RankTest>,
    pub guardrails: Vec<GuardrailResult>,
    /// The first breached guardrail, when any: what an automatic rollback cites.
    pub breach: Option<GuardrailResult>,
}

/// Checks the guardrails that hold in every interval on every host (protected coverage,
/// error of totals, added CPU) and anomaly recall over `rows`, the candidate's batches of
/// the window under review. Used while running, on the newest rows, and at the end, on all.
pub fn check_guardrails(
    spec: &AnalysisSpec,
    rows: &[KpiRow],
    baseline_ns_per_sample: Option<f64>,
) -> Vec<GuardrailResult> {
    let g = &spec.guardrails;
    let candidate: Vec<&KpiRow> = rows
        .iter()
        .filter(|r| r.variant == Variant::Candidate)
        .collect();

    // Protected coverage: every protected series the candidate saw, it kept, everywhere.
    let mut protected = GuardrailResult {
        guardrail: "protected_coverage".into(),
        status: GuardrailStatus::NoData,
        observed: None,
        threshold: Some(100.0),
        metric: None,
        host_id: None,
        at: None,
        message: "no protected series seen yet".into(),
    };
    let (mut p_in, mut p_out) = (0u64, 0u64);
    let mut worst: Option<(f64, &KpiRow)> = None;
    for r in &candidate {
        let v = &r.values;
        p_in += v.protected_series_in;
        p_out += v.protected_series_out.min(v.protected_series_in);
        if v.protected_series_in > 0 {
            let cov = v.protected_series_out.min(v.protected_series_in) as f64
                / v.protected_series_in as f64
                * 100.0;
            if worst.is_none_or(|(w, _)| cov < w) {
                worst = Some((cov, r));
            }
        }
    }
    if let Some((cov, r)) = worst {
        protected.observed = Some(cov);
        if cov < 100.0 {
            let lost = r.values.protected_series_in - r.values.protected_series_out;
            protected.status = GuardrailStatus::Breach;
            protected.host_id = Some(r.host_id.clone());
            protected.at = Some(r.interval_end);
            protected.message = format!(
                "candidate kept {cov:.2} % of protected series on {} ({lost} of {} lost in the interval ending {}); it must keep 100 %",
                r.host_id,
                r.values.protected_series_in,
                r.interval_end.format("%H:%M:%S")
            );
        } else {
            protected.status = GuardrailStatus::Pass;
            protected.message = format!("{p_out} of {p_in} protected series-intervals kept");
        }
    }

    // Error of totals: worst metric, worst host.
    let bound = g.max_total_error_percent;
    let mut error = GuardrailResult {
        guardrail: "max_total_error".into(),
        status: GuardrailStatus::NoData,
        observed: None,
        threshold: Some(bound),
        metric: None,
        host_id: None,
        at: None,
        message: "no candidate KPIs yet".into(),
    };
    if let Some(r) = candidate.iter().max_by(|a, b| {
        a.values
            .max_total_error
            .total_cmp(&b.values.max_total_error)
    }) {
        let pct = r.values.max_total_error * 100.0;
        error.observed = Some(pct);
        error.metric = r.worst_metric.clone();
        error.host_id = Some(r.host_id.clone());
        error.at = Some(r.interval_end);
        let metric = r.worst_metric.as_deref().unwrap_or("(unnamed)");
        if pct > bound {
            error.status = GuardrailStatus::Breach;
            error.message = format!(
                "metric `{metric}` total off by {pct:.3} % against the baseline on {} (bound {bound} %)",
                r.host_id
            );
        } else {
            error.status = GuardrailStatus::Pass;
            error.message = format!(
                "largest error of totals {pct:.3} % (metric `{metric}` on {}), bound {bound} %",
                r.host_id
            );
        }
    }

    // Anomaly recall over the window.
    let a_in: u64 = candidate.iter().map(|r| r.values.anomalies_in).sum();
    let a_kept: u64 = candidate
        .iter()
        .map(|r| r.values.anomalies_kept.min(r.values.anomalies_in))
        .sum();
    let mut recall = GuardrailResult {
        guardrail: "min_anomaly_recall".into(),
        status: GuardrailStatus::NoData,
        observed: None,
        threshold: Some(g.min_anomaly_recall_percent),
        metric: None,
        host_id: None,
        at: None,
        message: format!(
            "{a_in} anomalous series seen; recall is judged from {MIN_ANOMALIES_FOR_RECALL}"
        ),
    };
    if a_in > 0 {
        let pct = a_kept as f64 / a_in as f64 * 100.0;
        recall.observed = Some(pct);
        if a_in >= MIN_ANOMALIES_FOR_RECALL {
            if pct < g.min_anomaly_recall_percent {
                // Name the host that lost most.
                let host = candidate
                    .iter()
                    .max_by_key(|r| {
                        r.values.anomalies_in - r.values.anomalies_kept.min(r.values.anomalies_in)
                    })
                    .map(|r| r.host_id.clone());
                recall.status = GuardrailStatus::Breach;
                recall.host_id = host;
                recall.message = format!(
                    "candidate kept {a_kept} of {a_in} anomalous series ({pct:.1} %), below {} %",
                    g.min_anomaly_recall_percent
                );
            } else {
                recall.status = GuardrailStatus::Pass;
                recall.message =
                    format!("candidate kept {a_kept} of {a_in} anomalous series ({pct:.1} %)");
            }
        }
    }

    // Added CPU.
    let samples: u64 = candidate.iter().map(|r| r.values.input_samples).sum();
    let cand_ns = if samples > 0 {
        Some(
            candidate
                .iter()
                .map(|r| r.values.ns_per_sample * r.values.input_samples as f64)
                .sum::<f64>()
                / samples as f64,
        )
    } else {
        None
    };
    let added = match (cand_ns, baseline_ns_per_sample) {
        (Some(c), Some(b)) => Some(c - b),
        _ => None,
    };
    let mut cpu = GuardrailResult {
        guardrail: "max_added_cpu".into(),
        status: GuardrailStatus::NotEnforced,
        observed: added,
        threshold: g.max_added_cpu_ms_per_million_samples,
        metric: None,
        host_id: None,
        at: None,
        message: match added {
            Some(a) => format!("candidate adds {a:.1} ms of CPU per million samples"),
            None => "no samples measured yet".into(),
        },
    };
    if let Some(limit) = g.max_added_cpu_ms_per_million_samples {
        match added {
            Some(a) if a > limit => {
                cpu.status = GuardrailStatus::Breach;
                cpu.message = format!(
                    "candidate adds {a:.1} ms of CPU per million samples, more than {limit}"
                );
            }
            Some(_) => cpu.status = GuardrailStatus::Pass,
            None => cpu.status = GuardrailStatus::NoData,
        }
    }
    vec![protected, error, recall, cpu]
}

/// The analysis of a run (or of the run so far). `rows` are all the experiment's KPI rows;
/// `final_` says whether the run is over (an interim analysis never promotes: it only
/// reports and, through the guardrails, may roll back).
///
/// `extra` are guardrails judged outside the KPIs (the API's check of the candidate against
/// the labels users' queries need); they join the table and, in breach, decide.
pub fn analyze(
    spec: &AnalysisSpec,
    rows: &[KpiRow],
    final_: bool,
    extra: Vec<GuardrailResult>,
) -> AnalysisResult {
    let series = bucket(rows, spec.interval_seconds);
    let paired = paired(&series);
    let hosts = rows
        .iter()
        .map(|r| &r.host_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len();

    let baseline_ns = weighted_ns(rows, Variant::Baseline);
    let mut guardrails = check_guardrails(spec, rows, baseline_ns);

    let mut effects = Vec::new();
    let mut rank_test = None;
    let mut reduction_mean = None;
    let conf = spec.confidence;
    if paired.len() >= 2 {
        let b: Vec<f64> = paired.iter().map(|(b, _)| b.reduction_percent).collect();
        let c: Vec<f64> = paired.iter().map(|(_, c)| c.reduction_percent).collect();
        if let Some(e) = paired_effect("reduction", "percent of active series", &b, &c, conf) {
            reduction_mean = Some(e.candidate_mean);
            effects.push(e);
        }
        let b: Vec<f64> = paired.iter().map(|(b, _)| b.output_series).collect();
        let c: Vec<f64> = paired.iter().map(|(_, c)| c.output_series).collect();
        if let Some(e) = paired_effect("output_series", "active series", &b, &c, conf) {
            effects.push(e);
        }
        let b: Vec<f64> = paired
            .iter()
            .map(|(b, _)| b.max_total_error * 100.0)
            .collect();
        let c: Vec<f64> = paired
            .iter()
            .map(|(_, c)| c.max_total_error * 100.0)
            .collect();
        if let Some(e) = paired_effect("max_total_error", "percent", &b, &c, conf) {
            effects.push(e);
        }
        let b: Vec<f64> = paired.iter().map(|(b, _)| b.output_series).collect();
        let c: Vec<f64> = paired.iter().map(|(_, c)| c.output_series).collect();
        rank_test = rank("output_series", &b, &c, conf);
    }

    // The reduction guardrail: the lower bound of the candidate's mean per-interval reduction.
    let min_red = spec.guardrails.min_reduction_percent;
    let mut red = GuardrailResult {
        guardrail: "min_reduction".into(),
        status: GuardrailStatus::NoData,
        observed: reduction_mean,
        threshold: Some(min_red),
        metric: None,
        host_id: None,
        at: None,
        message: "fewer than two intervals with both variants".into(),
    };
    if let Some(e) = effects.iter().find(|e| e.name == "reduction") {
        let (lo, hi) = (e.candidate_ci_low, e.candidate_ci_high);
        red.status = if lo >= min_red {
            GuardrailStatus::Pass
        } else if hi < min_red {
            GuardrailStatus::Breach
        } else {
            GuardrailStatus::NoData
        };
        red.message = format!(
            "candidate removes {:.1} % of active series ({:.0} % CI {lo:.1}–{hi:.1} %); target at least {min_red} %",
            e.candidate_mean,
            conf * 100.0,
        );
    }
    guardrails.insert(0, red.clone());
    guardrails.extend(extra);

    // While running only the guardrails that must hold at every moment can end the run; the
    // reduction is judged once the run is over.
    let enforced_now = |g: &&GuardrailResult| {
        g.status == GuardrailStatus::Breach && (final_ || g.guardrail != "min_reduction")
    };
    let breach = guardrails.iter().find(enforced_now).cloned();

    let cand_all = totals(rows, Variant::Candidate);
    let protected_cov = (cand_all.protected_in > 0)
        .then(|| cand_all.protected_out as f64 / cand_all.protected_in as f64 * 100.0);
    let recall = (cand_all.anomalies_in > 0)
        .then(|| cand_all.anomalies_kept as f64 / cand_all.anomalies_in as f64 * 100.0);
    let max_err = rows
        .iter()
        .filter(|r| r.variant == Variant::Candidate)
        .map(|r| r.values.max_total_error * 100.0)
        .reduce(f64::max);

    let mut reasons = Vec::new();
    let decision = if let Some(b) = &breach {
        reasons.push(format!("guardrail {} breached: {}", b.guardrail, b.message));
        Decision::Rollback
    } else if !final_ {
        reasons.push(format!(
            "running: {} interval(s) with both variants so far, no guardrail breached",
            paired.len()
        ));
        Decision::Inconclusive
    } else if paired.len() < spec.min_intervals as usize {
        reasons.push(format!(
            "only {} interval(s) with both variants reported; at least {} are needed to decide",
            paired.len(),
            spec.min_intervals
        ));
        Decision::Inconclusive
    } else if red.status != GuardrailStatus::Pass {
        reasons.push(format!(
            "reduction not shown to reach the target: {}",
            red.message
        ));
        Decision::Inconclusive
    } else if rank_test.as_ref().is_none_or(|t| t.classification != "low") {
        let p = rank_test.as_ref().map(|t| t.p_value).unwrap_or(1.0);
        reasons.push(format!(
            "active series not significantly lower than the baseline's (Mann–Whitney p = {p:.4}, needs < {:.4})",
            1.0 - conf
        ));
        Decision::Inconclusive
    } else {
        Decision::Promote
    };
    if (decision == Decision::Promote || (final_ && breach.is_none()))
        && !reasons.iter().any(|r| r.contains(&red.message))
    {
        // State what holds, so a promotion explains itself.
        reasons.push(red.message.clone());
    }
    if breach.is_none() {
        for g in &guardrails[1..] {
            if g.status == GuardrailStatus::Pass {
                reasons.push(g.message.clone());
            }
        }
        if let Some(t) = &rank_test {
            reasons.push(format!(
                "active series per interval: candidate − baseline = {:.0} (Hodges–Lehmann, {:.0} % CI {:.0} to {:.0}), Mann–Whitney p = {:.2e}",
                t.hodges_lehmann,
                t.confidence * 100.0,
                t.ci_low,
                t.ci_high,
                t.p_value
            ));
        }
    }
    AnalysisResult {
        decision,
        reasons,
        r#final: final_,
        intervals: paired.len(),
        hosts,
        reduction_percent: reduction_mean,
        protected_coverage_percent: protected_cov,
        anomaly_recall_percent: recall,
        max_total_error_percent: max_err,
        effects,
        rank_test,
        guardrails,
        breach,
    }
}

#[derive(Default)]
struct Totals {
    protected_in: u64,
    protected_out: u64,
    anomalies_in: u64,
    anomalies_kept: u64,
}

fn totals(rows: &[KpiRow], variant: Variant) -> Totals {
    let mut t = Totals::default();
    for r in rows.iter().filter(|r| r.variant == variant) {
        let v = &r.values;
        t.protected_in += v.protected_series_in;
        t.protected_out += v.protected_series_out.min(v.protected_series_in);
        t.anomalies_in += v.anomalies_in;
        t.anomalies_kept += v.anomalies_kept.min(v.anomalies_in);
    }
    t
}

fn weighted_ns(rows: &[KpiRow], variant: Variant) -> Option<f64> {
    let (mut n, mut w) = (0u64, 0.0f64);
    for r in rows.iter().filter(|r| r.variant == variant) {
        n += r.values.input_samples;
        w += r.values.ns_per_sample * r.values.input_samples as f64;
    }
    (n > 0).then(|| w / n as f64)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Means of both variants, the candidate's mean with its interval, and the paired
/// difference (per interval, candidate − baseline) with its interval (Student t).
fn paired_effect(name: &str, unit: &str, b: &[f64], c: &[f64], conf: f64) -> Option<Effect> {
    let diffs: Vec<f64> = b.iter().zip(c).map(|(b, c)| c - b).collect();
    let (cl, ch) = mean_interval(c, conf)?;
    let (dl, dh) = mean_interval(&diffs, conf)?;
    Some(Effect {
        name: name.into(),
        unit: unit.into(),
        baseline_mean: mean(b),
        candidate_mean: mean(c),
        candidate_ci_low: cl,
        candidate_ci_high: ch,
        difference: mean(&diffs),
        ci_low: dl,
        ci_high: dh,
        confidence: conf,
    })
}

/// The mean of `v` with its Student t interval; a sample without spread has a point interval.
fn mean_interval(v: &[f64], conf: f64) -> Option<(f64, f64)> {
    if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    if v.iter().all(|x| *x == v[0]) {
        return Some((v[0], v[0]));
    }
    let ci = stats::mean_ci(v, conf).ok()?;
    Some((ci.lower, ci.upper))
}

/// Kayenta's judge on one metric: candidate against baseline.
fn rank(metric: &str, b: &[f64], c: &[f64], conf: f64) -> Option<RankTest> {
    let config = stats::JudgeConfig {
        confidence: conf,
        ..Default::default()
    };
    let j = stats::judge_metric(b, c, &config).ok()?;
    Some(RankTest {
        metric: metric.into(),
        p_value: j.p_value,
        hodges_lehmann: j.estimate,
        ci_low: j.lower,
        ci_high: j.upper,
        confidence: conf,
        classification: match j.classification {
            stats::Classification::High => "high",
            stats::Classification::Low => "low",
            stats::Classification::Pass => "pass",
        }
        .into(),
        reason: j.reason,
        baseline_n: b.len(),
        candidate_n: c.len(),
        outliers_removed: b.len() + c.len() - j.baseline_kept - j.candidate_kept,
    })
}
