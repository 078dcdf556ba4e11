//! Reduction on the `k8s` profile at default size (≥ 200k series) with churn and injected
//! anomalies: `topk` cuts ≥ 70 % of active series, `adaptive` and `hybrid` ≥ 85 %, every
//! pipeline keeps protected series bit-identical (100 %) and per-metric totals within 1 %,
//! and `adaptive`/`hybrid` keep ≥ 95 % of the anomalous series individually.
//!
//! The table is printed (`cargo test -p phoenix-pipeline --release --test reduction --
//! --nocapture`) and recorded in docs/pipeline.md. `PHOENIX_REDUCTION_SCALE` shrinks the
//! profile for quick local runs; the assertions hold at the default scale of 1.

use std::time::{Duration, Instant};

use phoenix_pipeline::config::PipelineConfig;
use phoenix_pipeline::kpi::{KpiMeter, VariantKpis};
use phoenix_pipeline::model::SeriesId;
use phoenix_pipeline::pipeline::Pipeline;
use phoenix_pipeline::selector::Selector;
use phoenix_pipeline::simulator::{AnomalyConfig, Profile, Simulator, SimulatorConfig};

const PROTECT: &str = r#"['{__name__=~"up|kube_pod_status_ready"}']"#;
const TICKS: u64 = 16;

fn pipeline(name: &str, processors: &str) -> Pipeline {
    let yaml = format!("protect: {PROTECT}\nprocessors: {processors}\n");
    let config: PipelineConfig = serde_yaml::from_str(&yaml).expect("valid yaml");
    config
        .build(name, &format!("pipelines.{name}"))
        .expect("valid pipeline")
}

fn scale() -> f64 {
    std::env::var("PHOENIX_REDUCTION_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

#[test]
fn k8s_profile_reduction_meets_targets_with_full_protection_and_recall() {
    let mut config = SimulatorConfig::new(Profile::K8s, 42);
    config.scale = scale();
    config.churn_per_tick = 0.005;
    config.anomalies = AnomalyConfig {
        count: 40,
        first_tick: 6,
        last_tick: 12,
        duration_ticks: 3,
    };
    let mut simulator = Simulator::new(config);
    let truth = simulator.ground_truth().to_vec();

    let mut pipelines = [
        pipeline("topk", "[{type: topk, k: 100}]"),
        pipeline("adaptive", "[{type: adaptive, without: [pod, instance]}]"),
        pipeline(
            "hybrid",
            "[{type: cardinality_limit, limit: 50000}, {type: adaptive, keep_top_k: 20, without: [pod, instance]}]",
        ),
    ];
    let names = ["topk", "adaptive", "hybrid"];
    let protect =
        vec![Selector::parse(r#"{__name__=~"up|kube_pod_status_ready"}"#).expect("selector")];
    let mut meter = KpiMeter::new(&names, protect);
    let started = Instant::now();
    let mut input_series_per_tick = 0;
    for tick in 0..TICKS {
        let batch = simulator.next_batch();
        input_series_per_tick = batch.len();
        let anomalous: Vec<SeriesId> = truth
            .iter()
            .filter(|t| (t.start_tick..=t.end_tick).contains(&tick))
            .map(|t| t.series_id)
            .collect();
        meter.record_input(&batch, &anomalous);
        for (index, pipeline) in pipelines.iter_mut().enumerate() {
            let input = batch.clone();
            let begun = Instant::now();
            let output = pipeline.process(input);
            meter.record_output(index, &output, begun.elapsed());
        }
    }
    let processors: Vec<_> = pipelines
        .iter()
        .map(|p| {
            p.processor_stats()
                .map(|(i, kind, stats)| (i, kind.to_string(), stats.total()))
                .collect()
        })
        .collect();
    let kpis = meter.finish_interval(&processors);
    print_table(&kpis, input_series_per_tick, started.elapsed());

    for k in &kpis {
        assert_eq!(
            k.protected_in, k.protected_out,
            "{}: protected coverage",
            k.variant
        );
        assert!(k.protected_in > 0, "the profile has protected series");
        assert!(
            k.max_relative_error <= 0.01,
            "{}: per-metric total error {:.4} % on {:?}",
            k.variant,
            100.0 * k.max_relative_error,
            k.worst_metric
        );
        let target = if k.variant == "topk" { 70.0 } else { 85.0 };
        assert!(
            k.reduction_percent >= target,
            "{}: reduction {:.1} %",
            k.variant,
            k.reduction_percent
        );
        if k.variant != "topk" {
            assert!(k.anomalies_in > 0);
            assert!(
                k.anomaly_recall_percent() >= 95.0,
                "{}: anomaly recall {:.1} %",
                k.variant,
                k.anomaly_recall_percent()
            );
        }
    }
}

fn print_table(kpis: &[VariantKpis], series_per_tick: usize, elapsed: Duration) {
    println!(
        "\nk8s profile: {series_per_tick} series per tick, {TICKS} ticks, churn 0.5 %/tick, 40 anomalies (run took {:.1} s)",
        elapsed.as_secs_f64()
    );
    println!(
        "| variant | input series | output series | reduction | protected coverage | max per-metric total error (metric) | anomaly recall | ns/sample |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for k in kpis {
        println!(
            "| {} | {} | {} | {:.1} % | {:.1} % ({}/{}) | {:.3} % ({}) | {:.1} % ({}/{}) | {:.0} |",
            k.variant,
            k.input_series,
            k.output_series,
            k.reduction_percent,
            k.protected_coverage_percent(),
            k.protected_out,
            k.protected_in,
            100.0 * k.max_relative_error,
            k.worst_metric.as_deref().unwrap_or("-"),
            k.anomaly_recall_percent(),
            k.anomalies_kept,
            k.anomalies_in,
            k.ns_per_sample
        );
    }
}
