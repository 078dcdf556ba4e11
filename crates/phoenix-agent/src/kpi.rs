//! KPI reporting: the engine's per-variant interval KPIs become `KpiBatch`es with fresh
//! batch ids, are appended to the on-disk KPI buffer at once, and a sender drains the
//! buffer to `POST /api/v1/agent/metrics` in order. While the API is unreachable the buffer
//! grows (bounded, overflow counted); on reconnect it is replayed in order. A batch is only
//! removed from the buffer after the API acknowledged it, and the API stores a replayed
//! batch id once, so every batch reaches it exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use phoenix_core::labelstats::{
    LabelStat, LabelStatsReport, MetricLabelStats, SeriesGroup, ValueCount,
};
use phoenix_core::{ExperimentId, KpiBatch, KpiValues, Variant};
use phoenix_pipeline::engine::KpiSink;
use phoenix_pipeline::kpi::VariantKpis;
use phoenix_pipeline::labelstats::LabelStats;

use crate::client::{ApiClient, Backoff};
use crate::diskqueue::DiskQueue;

/// Batches per `POST /metrics` at most.
pub const KPI_BATCHES_PER_REQUEST: usize = 100;

/// Which pipeline name is which variant of which experiment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KpiContext {
    /// The experiment, when one runs.
    pub experiment_id: Option<ExperimentId>,
    /// `(pipeline name, variant)`; pipelines not listed are not reported.
    pub variants: Vec<(String, Variant)>,
}

/// The detail sections a batch carries unless a `metrics` task narrows them.
pub const DETAIL_SECTIONS: &[&str] = &["processors", "errors", "reduction", "metrics"];

/// Bytes of label statistics one batch carries at most (JSON); the smallest metrics are cut
/// beyond (counted in `metrics_cut`/`series_cut`), so a batch always fits a request.
pub const LABEL_STATS_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Bytes of KPI batches one `POST /metrics` carries at most (the API takes 16 MiB).
pub const KPI_REQUEST_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Metrics listed in a batch's `details.metrics` at most (most input series first).
pub const MAX_DETAIL_METRICS: usize = 500;

/// Maps one variant's KPIs to the API's `KpiValues` and details.
pub fn to_values(k: &VariantKpis, details: Option<&[String]>) -> (KpiValues, Value) {
    let values = KpiValues {
        input_series: k.input_series,
        output_series: k.output_series,
        input_samples: k.input_samples,
        output_samples: k.output_samples,
        input_bytes: k.input_bytes,
        output_bytes: k.output_bytes,
        protected_series_in: k.protected_in,
        protected_series_out: k.protected_out.min(k.protected_in),
        anomalies_in: k.anomalies_in,
        anomalies_kept: k.anomalies_kept,
        ns_per_sample: if k.ns_per_sample.is_finite() && k.ns_per_sample >= 0.0 {
            k.ns_per_sample
        } else {
            0.0
        },
        max_total_error: if k.max_relative_error.is_finite() && k.max_relative_error >= 0.0 {
            k.max_relative_error
        } else {
            0.0
        },
    };
    let wants = |section: &str| details.is_none_or(|d| d.iter().any(|s| s == section));
    let mut out = serde_json::Map::new();
    out.insert("pipeline".into(), json!(k.variant));
    if wants("reduction") {
        out.insert("reduction_percent".into(), json!(k.reduction_percent));
        out.insert(
            "protected_coverage_percent".into(),
            json!(k.protected_coverage_percent()),
        );
        out.insert(
            "anomaly_recall_percent".into(),
            json!(k.anomaly_recall_percent()),
        );
    }
    if wants("errors") {
        out.insert(
            "worst_metric".into(),
            json!({ "metric": k.worst_metric, "relative_error": values.max_total_error }),
        );
    }
    if wants("processors") {
        let processors: Vec<Value> = k
            .processors
            .iter()
            .map(|(index, kind, c)| {
                json!({
                    "index": index, "type": kind, "received": c.received, "passed": c.passed,
                    "dropped": c.dropped, "folded": c.folded, "emitted": c.emitted,
                })
            })
            .collect();
        out.insert("processors".into(), Value::Array(processors));
    }
    if wants("metrics") && !k.per_metric.is_empty() {
        // Per-metric distinct series in and out: where the cost flow sees the reduction.
        let metrics: Vec<Value> = k
            .per_metric
            .iter()
            .take(MAX_DETAIL_METRICS)
            .map(|m| json!({"metric": m.metric, "input_series": m.input_series, "output_series": m.output_series}))
            .collect();
        out.insert("metrics".into(), Value::Array(metrics));
        out.insert(
            "metrics_cut".into(),
            json!(k.per_metric.len().saturating_sub(MAX_DETAIL_METRICS)),
        );
    }
    (values, Value::Object(out))
}

/// The engine's label statistics as the API takes them.
pub fn to_report(stats: &LabelStats) -> LabelStatsReport {
    LabelStatsReport {
        breakdown_labels: stats.breakdown_labels.clone(),
        metrics: stats
            .metrics
            .iter()
            .map(|m| MetricLabelStats {
                metric: m.metric.clone(),
                series: m.series,
                labels: m
                    .labels
                    .iter()
                    .map(|l| LabelStat {
                        name: l.name.clone(),
                        series: l.series,
                        values: l.values.clone(),
                        without: l.without.clone(),
                        top_values: l
                            .top_values
                            .iter()
                            .map(|(value, series)| ValueCount {
                                value: value.clone(),
                                series: *series,
                            })
                            .collect(),
                    })
                    .collect(),
                labels_cut: m.labels_cut,
                groups: m
                    .groups
                    .iter()
                    .map(|(values, series)| SeriesGroup {
                        values: values.clone(),
                        series: *series,
                    })
                    .collect(),
                groups_cut_series: m.groups_cut_series,
            })
            .collect(),
        metrics_cut: stats.metrics_cut,
        series_cut: stats.series_cut,
    }
}

/// Keeps the largest metrics whose JSON fits in `max_bytes`; the others are counted as cut.
pub fn bounded(mut report: LabelStatsReport, max_bytes: usize) -> LabelStatsReport {
    let mut used: usize = 256;
    let mut keep = 0;
    for m in &report.metrics {
        let size = serde_json::to_vec(m).map_or(usize::MAX, |v| v.len() + 1);
        if used.saturating_add(size) > max_bytes {
            break;
        }
        used += size;
        keep += 1;
    }
    for cut in report.metrics.drain(keep..) {
        report.metrics_cut += 1;
        report.series_cut += cut.series;
    }
    report
}

/// Builds the batches of one interval under `context`; variants without input are skipped
/// (an idle agent sends nothing). Label statistics, when the interval collected them, ride
/// on its baseline batch (or its first batch when there is none).
pub fn batches(
    kpis: &[VariantKpis],
    context: &KpiContext,
    interval_start: DateTime<Utc>,
    interval_end: DateTime<Utc>,
    details: Option<&[String]>,
) -> Vec<KpiBatch> {
    let mut out = variant_batches(kpis, context, interval_start, interval_end, details);
    if let Some(stats) = kpis.iter().find_map(|k| k.label_stats.as_ref()) {
        let target = out
            .iter()
            .position(|b| b.variant == Variant::Baseline)
            .or(if out.is_empty() { None } else { Some(0) });
        if let Some(i) = target {
            out[i].label_stats = Some(Box::new(bounded(to_report(stats), LABEL_STATS_MAX_BYTES)));
        }
    }
    out
}

fn variant_batches(
    kpis: &[VariantKpis],
    context: &KpiContext,
    interval_start: DateTime<Utc>,
    interval_end: DateTime<Utc>,
    details: Option<&[String]>,
) -> Vec<KpiBatch> {
    kpis.iter()
        .filter(|k| k.input_samples > 0)
        .filter_map(|k| {
            let variant = context
                .variants
                .iter()
                .find(|(name, _)| *name == k.variant)
                .map(|(_, v)| *v)?;
            let (values, details) = to_values(k, details);
            Some(KpiBatch {
                batch_id: uuid::Uuid::now_v7(),
                experiment_id: context.experiment_id,
                variant,
                interval_start,
                interval_end: interval_end.max(interval_start),
                values,
                details,
                label_stats: None,
            })
        })
        .collect()
}

/// A sink that hands every published interval to the supervisor, in order. The supervisor
/// asks for every interval itself (finish or swap), so it knows which context each belongs
/// to.
#[derive(Debug)]
pub struct ChannelKpiSink(pub tokio::sync::mpsc::UnboundedSender<Vec<VariantKpis>>);

impl KpiSink for ChannelKpiSink {
    fn publish(&self, kpis: &[VariantKpis]) {
        let _ = self.0.send(kpis.to_vec());
    }
}

/// Counters of KPI reporting.
#[derive(Debug, Default)]
pub struct KpiStats {
    /// Batches produced.
    pub produced_total: AtomicU64,
    /// Batches the API stored.
    pub delivered_total: AtomicU64,
    /// Batches the API already had (replays).
    pub duplicates_total: AtomicU64,
    /// Batches the API refused as invalid (dropped).
    pub rejected_total: AtomicU64,
}

/// Appends batches to the KPI buffer; each id is logged so a run can be audited.
pub fn enqueue(queue: &DiskQueue, stats: &KpiStats, batches: &[KpiBatch]) {
    for batch in batches {
        let bytes = match serde_json::to_vec(batch) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "kpi batch not serialisable");
                continue;
            }
        };
        match queue.push(&bytes) {
            Ok(()) => {
                stats.produced_total.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    batch_id = %batch.batch_id,
                    variant = batch.variant.as_str(),
                    experiment_id = ?batch.experiment_id.map(|e| e.to_string()),
                    input_series = batch.values.input_series,
                    output_series = batch.values.output_series,
                    "kpi batch queued"
                );
            }
            Err(e) => tracing::warn!(error = %e, batch_id = %batch.batch_id, "kpi batch dropped"),
        }
    }
}

/// Drains the KPI buffer to the API in order until `cancel` fires (then one last attempt
/// within `grace`).
pub async fn run_sender(
    queue: Arc<DiskQueue>,
    client: Arc<ApiClient>,
    stats: Arc<KpiStats>,
    mut backoff: Backoff,
    cancel: CancellationToken,
) {
    loop {
        let mut batch_records = Vec::new();
        let mut read_any = false;
        let mut read_failed = false;
        let mut request_bytes = 0usize;
        loop {
            match queue.next() {
                Ok(Some(record)) => {
                    read_any = true;
                    request_bytes += record.len();
                    match serde_json::from_slice::<KpiBatch>(&record) {
                        Ok(b) => batch_records.push(b),
                        Err(e) => {
                            // A record that passed its checksum but is not a batch: skip it.
                            tracing::warn!(error = %e, "undecodable kpi record skipped");
                        }
                    }
                    if batch_records.len() >= KPI_BATCHES_PER_REQUEST
                        || request_bytes >= KPI_REQUEST_MAX_BYTES
                    {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "kpi buffer unreadable");
                    read_failed = true;
                    break;
                }
            }
        }
        if batch_records.is_empty() {
            if read_any {
                // Only undecodable records were read: commit them away.
                let _ = queue.commit();
                continue;
            }
            let idle = if read_failed {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = queue.wait(), if !read_failed => continue,
                _ = tokio::time::sleep(idle) => continue,
                _ = cancel.cancelled() => return,
            }
        }
        loop {
            match client.send_kpis(&batch_records).await {
                Ok(answer) => {
                    stats
                        .delivered_total
                        .fetch_add(answer.accepted, Ordering::Relaxed);
                    stats
                        .duplicates_total
                        .fetch_add(answer.duplicates, Ordering::Relaxed);
                    if let Err(e) = queue.commit() {
                        tracing::error!(error = %e, "kpi buffer position not saved");
                    }
                    backoff.reset();
                    break;
                }
                Err(e) if e.status() == Some(400) || e.status() == Some(413) => {
                    // The API will never take these: drop them, loudly, rather than block.
                    tracing::error!(error = %e, batches = batch_records.len(), "kpi batches refused by the api, dropped");
                    stats
                        .rejected_total
                        .fetch_add(batch_records.len() as u64, Ordering::Relaxed);
                    let _ = queue.commit();
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::debug!(error = %e, ?delay, pending = queue.pending_records(), "kpi delivery failed, buffering");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => {
                            queue.rewind();
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_pipeline::processor::MetricCounts;

    fn kpis(variant: &str, input: u64) -> VariantKpis {
        VariantKpis {
            variant: variant.into(),
            input_series: 1000,
            output_series: 120,
            input_samples: input,
            output_samples: 130,
            input_bytes: 64_000,
            output_bytes: 9_000,
            reduction_percent: 88.0,
            protected_in: 10,
            protected_out: 10,
            max_relative_error: 0.001,
            worst_metric: Some("http_requests_total".into()),
            processors: vec![(
                0,
                "adaptive".into(),
                MetricCounts {
                    received: 1000,
                    passed: 100,
                    dropped: 0,
                    folded: 900,
                    emitted: 20,
                },
            )],
            ..Default::default()
        }
    }

    #[test]
    fn variants_map_to_batches_with_fresh_ids_and_details() {
        let context = KpiContext {
            experiment_id: Some(ExperimentId::new()),
            variants: vec![
                ("baseline".into(), Variant::Baseline),
                ("candidate".into(), Variant::Candidate),
            ],
        };
        let now = Utc::now();
        let out = batches(
            &[
                kpis("baseline", 1000),
                kpis("candidate", 1000),
                kpis("other", 5),
            ],
            &context,
            now - chrono::Duration::seconds(10),
            now,
            None,
        );
        assert_eq!(out.len(), 2);
        assert_ne!(out[0].batch_id, out[1].batch_id);
        assert_eq!(out[1].variant, Variant::Candidate);
        assert_eq!(out[1].values.output_series, 120);
        assert_eq!(out[1].values.protected_series_out, 10);
        assert_eq!(
            (out[1].values.input_bytes, out[1].values.output_bytes),
            (64_000, 9_000)
        );
        assert_eq!(out[1].details["processors"][0]["folded"], 900);
        assert_eq!(
            out[1].details["worst_metric"]["metric"],
            "http_requests_total"
        );
        let mut e = phoenix_core::FieldErrors::default();
        out[1].validate("b", &mut e);
        assert!(e.into_result().is_ok());
    }

    #[test]
    fn idle_variants_send_nothing_and_details_can_be_narrowed() {
        let context = KpiContext {
            experiment_id: None,
            variants: vec![("main".into(), Variant::Baseline)],
        };
        let now = Utc::now();
        assert!(batches(&[kpis("main", 0)], &context, now, now, None).is_empty());
        let only = vec!["reduction".to_string()];
        let out = batches(&[kpis("main", 10)], &context, now, now, Some(&only));
        assert!(out[0].details.get("processors").is_none());
        assert_eq!(out[0].details["reduction_percent"], 88.0);
    }
}
