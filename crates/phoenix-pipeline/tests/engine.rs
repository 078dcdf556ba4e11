//! The engine: shadow A/B exports only the live variant (or all, tagged), measures every
//! variant, and hot swaps configurations between batches without losing or duplicating a
//! sample.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use phoenix_pipeline::config::AgentConfig;
use phoenix_pipeline::engine::{self, EnginePipelines, KpiSink};
use phoenix_pipeline::exporter::Exporter;
use phoenix_pipeline::kpi::VariantKpis;
use phoenix_pipeline::model::{Batch, Label, Labels, MetricKind, Sample, Series};
use phoenix_pipeline::telemetry::Telemetry;

/// An exported series with the extra labels it was exported with.
type Exported = (Series, Vec<(String, String)>);

#[derive(Debug, Default)]
struct Collect {
    series: Mutex<Vec<Exported>>,
}

impl Exporter for Collect {
    fn export(&self, series: &[Series], extra: &[(&str, &str)]) {
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        self.series
            .lock()
            .extend(series.iter().map(|s| (s.clone(), extra.clone())));
    }
}

#[derive(Debug, Default)]
struct KeepKpis(Mutex<Vec<VariantKpis>>);

impl KpiSink for KeepKpis {
    fn publish(&self, kpis: &[VariantKpis]) {
        self.0.lock().extend_from_slice(kpis);
    }
}

const RECEIVER: &str = "receivers:\n  remote_write:\n    listen: 127.0.0.1:0\n";

fn pipelines(yaml: &str) -> EnginePipelines {
    EnginePipelines::from_validated(
        AgentConfig::load(&format!("{RECEIVER}{yaml}")).expect("valid config"),
    )
}

fn gauge(pod: usize, tick: i64) -> Series {
    Series::new(
        Arc::from("queue_depth"),
        Labels::from_unsorted(vec![Label::new(
            Arc::from("pod"),
            Arc::from(format!("p{pod}")),
        )]),
        MetricKind::Gauge,
        vec![Sample::new(tick, (pod * 1000) as f64 + tick as f64)],
    )
}

fn batch(tick: i64, pods: usize) -> Batch {
    Batch::new((0..pods).map(|p| gauge(p, tick)).collect())
}

fn start(p: EnginePipelines) -> (engine::EngineHandle, Arc<Collect>, Arc<KeepKpis>) {
    let collect = Arc::new(Collect::default());
    let kpis = Arc::new(KeepKpis::default());
    let (handle, _join) = engine::spawn(
        p,
        vec![collect.clone()],
        Arc::new(Telemetry::default()),
        kpis.clone(),
        Duration::from_secs(3600),
    )
    .expect("engine thread");
    (handle, collect, kpis)
}

#[tokio::test]
async fn shadow_mode_exports_only_the_live_variant_and_measures_both() {
    let (handle, collect, _) = start(pipelines(
        "pipelines:\n  baseline: {}\n  candidate:\n    processors:\n      - {type: aggregate, without: [pod]}\nshadow:\n  live: candidate\n",
    ));
    handle.send_batch(batch(1, 10)).await.unwrap();
    let kpis = handle.finish_interval().await.unwrap();
    let exported = collect.series.lock().clone();
    assert_eq!(
        exported.len(),
        1,
        "only the aggregated candidate output is exported"
    );
    assert_eq!(
        exported[0].0.samples[0].value,
        (0..10).map(|p| (p * 1000 + 1) as f64).sum::<f64>()
    );
    let by_name = |n: &str| {
        kpis.iter()
            .find(|k| k.variant == n)
            .expect("variant kpis")
            .clone()
    };
    assert_eq!(by_name("baseline").output_series, 10);
    assert_eq!(by_name("candidate").output_series, 1);
    assert_eq!(by_name("candidate").reduction_percent, 90.0);
    assert_eq!(by_name("candidate").processors[0].1, "aggregate");
    assert_eq!(by_name("candidate").processors[0].2.folded, 10);
}

#[tokio::test]
async fn export_all_tagged_exports_every_variant_with_its_label() {
    let (handle, collect, _) = start(pipelines(
        "pipelines:\n  baseline: {}\n  candidate:\n    processors:\n      - {type: aggregate, without: [pod]}\nshadow:\n  live: candidate\n  export_all_tagged: true\n",
    ));
    handle.send_batch(batch(1, 4)).await.unwrap();
    handle.flush().await.unwrap();
    let exported = collect.series.lock().clone();
    let tagged = |variant: &str| {
        exported
            .iter()
            .filter(|(_, extra)| {
                extra == &vec![("phoenix_variant".to_string(), variant.to_string())]
            })
            .count()
    };
    assert_eq!(tagged("baseline"), 4);
    assert_eq!(tagged("candidate"), 1);
}

#[tokio::test]
async fn hot_swap_between_batches_loses_and_duplicates_no_sample() {
    let config = |marker: &str| {
        pipelines(&format!(
            "pipelines:\n  live:\n    processors:\n      - type: relabel\n        rules:\n          - {{target_label: config, replacement: {marker}}}\n"
        ))
    };
    let (handle, collect, _) = start(config("a"));
    let pods = 25;
    let ticks = 200;
    let feeder = {
        let handle = handle.clone();
        tokio::spawn(async move {
            for tick in 0..ticks {
                handle.send_batch(batch(tick, pods)).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    for swap in 0..50 {
        handle
            .swap(config(if swap % 2 == 0 { "b" } else { "a" }))
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    feeder.await.unwrap();
    handle.flush().await.unwrap();

    let exported = collect.series.lock().clone();
    let mut seen = std::collections::HashMap::new();
    let mut configs_per_tick: std::collections::HashMap<i64, std::collections::HashSet<String>> =
        Default::default();
    for (series, _) in &exported {
        let pod = series.labels.get("pod").expect("pod label").to_string();
        let config = series
            .labels
            .get("config")
            .expect("config label")
            .to_string();
        for sample in &series.samples {
            *seen.entry((pod.clone(), sample.timestamp_ms)).or_insert(0) += 1;
            configs_per_tick
                .entry(sample.timestamp_ms)
                .or_default()
                .insert(config.clone());
        }
    }
    assert_eq!(seen.len(), (pods * ticks as usize), "every sample arrives");
    assert!(seen.values().all(|&n| n == 1), "no sample is duplicated");
    assert!(
        configs_per_tick.values().all(|c| c.len() == 1),
        "each batch is processed by exactly one configuration"
    );
    let both = configs_per_tick
        .values()
        .flatten()
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(both.len(), 2, "both configurations processed batches");
}

#[tokio::test]
async fn kpis_report_protected_coverage_and_anomalies() {
    let (handle, _, sink) = start(pipelines(
        "pipelines:\n  candidate:\n    protect: ['{pod=\"p1\"}']\n    processors:\n      - {type: topk, k: 1}\n",
    ));
    let input = batch(5, 6);
    let anomalous = vec![input.series[3].id()];
    handle
        .send_batch_with_anomalies(input, anomalous)
        .await
        .unwrap();
    handle.finish_interval().await.unwrap();
    let kpis = sink.0.lock().clone();
    assert_eq!(kpis.len(), 1);
    assert_eq!((kpis[0].protected_in, kpis[0].protected_out), (1, 1));
    assert_eq!(kpis[0].anomalies_in, 1);
    // topk k=1 keeps the largest gauge (p5); p3 is folded into `other`.
    assert_eq!(kpis[0].anomalies_kept, 0);
    assert!(kpis[0].ns_per_sample > 0.0);
}

#[tokio::test]
async fn split_mode_runs_and_exports_only_the_hosts_pipeline() {
    let (handle, collect, _) = start(pipelines(
        "pipelines:\n  baseline: {}\n  candidate:\n    processors:\n      - {type: aggregate, without: [pod]}\nshadow:\n  split: {baseline: baseline, candidate: candidate, candidate_share: 1.0, host_id: host-a}\n",
    ));
    handle.send_batch(batch(1, 5)).await.unwrap();
    let kpis = handle.finish_interval().await.unwrap();
    assert_eq!(kpis.len(), 1, "only one variant runs on this host");
    assert_eq!(kpis[0].variant, "candidate");
    assert_eq!(collect.series.lock().len(), 1);
}
