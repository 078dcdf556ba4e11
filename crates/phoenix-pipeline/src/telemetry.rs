//! The engine's own counters, rendered in the Prometheus text format at `/metrics`, so a
//! user can always see where data went: received, refused, sent, retried, dropped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::kpi::VariantKpis;

/// Reads one figure out of a variant's KPIs.
type KpiValue = fn(&VariantKpis) -> f64;

/// Monotonic counters of the receivers, engine and exporters.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Remote write requests received.
    pub receiver_requests_total: AtomicU64,
    /// Remote write requests refused (bad snappy/protobuf).
    pub receiver_request_errors_total: AtomicU64,
    /// Series received.
    pub receiver_series_total: AtomicU64,
    /// Samples received.
    pub receiver_samples_total: AtomicU64,
    /// Series skipped for having no `__name__`.
    pub receiver_series_without_name_total: AtomicU64,
    /// Batches processed by the engine.
    pub engine_batches_total: AtomicU64,
    /// Configurations swapped in.
    pub engine_swaps_total: AtomicU64,
    /// Exporter requests (remote write, OTLP) delivered.
    pub exporter_requests_sent_total: AtomicU64,
    /// Samples delivered.
    pub exporter_samples_sent_total: AtomicU64,
    /// Retries after 5xx, 429, retryable gRPC codes or transport errors.
    pub exporter_retries_total: AtomicU64,
    /// Requests refused by the peer with a non-retryable status.
    pub exporter_requests_rejected_total: AtomicU64,
    /// Requests given up after `max_attempts`.
    pub exporter_requests_failed_total: AtomicU64,
    /// Requests dropped because the queue was full.
    pub exporter_queue_dropped_requests_total: AtomicU64,
    /// Samples in those dropped requests.
    pub exporter_queue_dropped_samples_total: AtomicU64,
    last_kpis: Mutex<Vec<VariantKpis>>,
}

impl Telemetry {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Stores the KPIs of the last finished interval.
    pub fn set_kpis(&self, kpis: Vec<VariantKpis>) {
        *self.last_kpis.lock() = kpis;
    }

    /// The KPIs of the last finished interval.
    pub fn kpis(&self) -> Vec<VariantKpis> {
        self.last_kpis.lock().clone()
    }

    /// Renders every counter and the last KPIs in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let counters: [(&str, &str, &AtomicU64); 14] = [
            (
                "phoenix_receiver_requests_total",
                "Remote write requests received.",
                &self.receiver_requests_total,
            ),
            (
                "phoenix_receiver_request_errors_total",
                "Remote write requests refused as malformed.",
                &self.receiver_request_errors_total,
            ),
            (
                "phoenix_receiver_series_total",
                "Series received.",
                &self.receiver_series_total,
            ),
            (
                "phoenix_receiver_samples_total",
                "Samples received.",
                &self.receiver_samples_total,
            ),
            (
                "phoenix_receiver_series_without_name_total",
                "Series skipped for lacking __name__.",
                &self.receiver_series_without_name_total,
            ),
            (
                "phoenix_engine_batches_total",
                "Batches processed.",
                &self.engine_batches_total,
            ),
            (
                "phoenix_engine_swaps_total",
                "Pipeline configurations swapped in.",
                &self.engine_swaps_total,
            ),
            (
                "phoenix_exporter_requests_sent_total",
                "Exporter (remote write, OTLP) requests delivered.",
                &self.exporter_requests_sent_total,
            ),
            (
                "phoenix_exporter_samples_sent_total",
                "Samples delivered.",
                &self.exporter_samples_sent_total,
            ),
            (
                "phoenix_exporter_retries_total",
                "Exporter retries.",
                &self.exporter_retries_total,
            ),
            (
                "phoenix_exporter_requests_rejected_total",
                "Requests refused with a non-retryable status.",
                &self.exporter_requests_rejected_total,
            ),
            (
                "phoenix_exporter_requests_failed_total",
                "Requests given up after max_attempts.",
                &self.exporter_requests_failed_total,
            ),
            (
                "phoenix_exporter_queue_dropped_requests_total",
                "Requests dropped on a full queue.",
                &self.exporter_queue_dropped_requests_total,
            ),
            (
                "phoenix_exporter_queue_dropped_samples_total",
                "Samples dropped on a full queue.",
                &self.exporter_queue_dropped_samples_total,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                Self::get(counter)
            );
        }
        let kpis = self.kpis();
        if kpis.is_empty() {
            return;
        }
        let gauges: [(&str, &str, KpiValue); 7] = [
            (
                "phoenix_cardinality_reduction_percent",
                "Reduction of active series in the last interval.",
                |k| k.reduction_percent,
            ),
            (
                "phoenix_pipeline_input_series",
                "Distinct input series in the last interval.",
                |k| k.input_series as f64,
            ),
            (
                "phoenix_pipeline_output_series",
                "Distinct output series in the last interval.",
                |k| k.output_series as f64,
            ),
            (
                "phoenix_pipeline_protected_coverage_percent",
                "Protected series exported bit-identical.",
                |k| k.protected_coverage_percent(),
            ),
            (
                "phoenix_pipeline_max_relative_error",
                "Largest per-metric relative error of totals.",
                |k| k.max_relative_error,
            ),
            (
                "phoenix_pipeline_ns_per_sample",
                "Processing time per input sample.",
                |k| k.ns_per_sample,
            ),
            (
                "phoenix_pipeline_output_samples",
                "Output samples in the last interval.",
                |k| k.output_samples as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for k in &kpis {
                let _ = writeln!(
                    out,
                    "{name}{{variant=\"{}\"}} {}",
                    escape_label_value(&k.variant),
                    value(k)
                );
            }
        }
    }
}

/// Escapes a label value for the text format (`\`, `"` and newlines).
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out
}
