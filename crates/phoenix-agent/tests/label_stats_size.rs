//! How much the label statistics of one host weigh on the wire (docs/recommendations.md):
//! one interval of the `k8s` profile at its default size (seed 42), collected with the
//! default settings, turned into the report the agent sends on its baseline KPI batch. The
//! test prints the sizes and checks that the bounded report fits the cap a batch carries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use phoenix_agent::kpi::{bounded, to_report, LABEL_STATS_MAX_BYTES};
use phoenix_pipeline::labelstats::{LabelStatsCollector, LabelStatsConfig};
use phoenix_pipeline::simulator::{Profile, Simulator, SimulatorConfig};

#[test]
fn k8s_label_stats_report_size_fits_the_batch_cap() {
    let mut simulator = Simulator::new(SimulatorConfig::new(Profile::K8s, 42));
    let batch = simulator.next_batch();
    let mut collector = LabelStatsCollector::new(LabelStatsConfig::default());
    assert!(collector.collecting());
    for series in &batch.series {
        collector.observe(series);
    }
    let stats = collector
        .finish_interval()
        .expect("an interval's statistics");
    let report = to_report(&stats);
    let full = serde_json::to_vec(&report).unwrap().len();
    let labels: usize = report.metrics.iter().map(|m| m.labels.len()).sum();
    let sent = bounded(report.clone(), LABEL_STATS_MAX_BYTES);
    let sent_len = serde_json::to_vec(&sent).unwrap().len();
    println!(
        "k8s profile, default size: {} series, {} metrics, {} labels; label statistics report {} bytes ({:.1} bytes per series), sent {} bytes with {} metrics cut (cap {} bytes)",
        batch.series.len(),
        report.metrics.len(),
        labels,
        full,
        full as f64 / batch.series.len() as f64,
        sent_len,
        sent.metrics_cut,
        LABEL_STATS_MAX_BYTES
    );
    assert!(sent_len <= LABEL_STATS_MAX_BYTES, "{sent_len}");
    assert_eq!(
        sent.metrics.len() + sent.metrics_cut as usize,
        report.metrics.len() + report.metrics_cut as usize
    );
    if full <= LABEL_STATS_MAX_BYTES {
        assert_eq!(sent, report, "a report under the cap is sent whole");
    }
}
