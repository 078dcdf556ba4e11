//! Each processor and full pipelines on a k8s-profile batch (scale 0.1, ~22k series, one
//! sample each), reported per sample. The batch clone fed to each iteration is excluded.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use phoenix_pipeline::config::PipelineConfig;
use phoenix_pipeline::model::Batch;
use phoenix_pipeline::pipeline::Pipeline;
use phoenix_pipeline::simulator::{Profile, Simulator, SimulatorConfig};

fn batches() -> (Batch, Batch) {
    let mut config = SimulatorConfig::new(Profile::K8s, 3);
    config.scale = 0.1;
    let mut simulator = Simulator::new(config);
    (simulator.next_batch(), simulator.next_batch())
}

fn pipeline(processors: &str) -> Pipeline {
    let yaml = format!("processors: {processors}\n");
    let config: PipelineConfig = serde_yaml::from_str(&yaml).unwrap_or_default();
    config
        .build("bench", "bench")
        .unwrap_or_else(|_| Pipeline::passthrough("invalid"))
}

const CASES: &[(&str, &str)] = &[
    ("passthrough", "[]"),
    ("filter", r#"[{type: filter, drop: ['{__name__=~"go_.*|process_.*"}', '{status="404"}']}]"#),
    ("relabel_labeldrop", "[{type: relabel, rules: [{action: labeldrop, regex: pod|instance}]}]"),
    ("relabel_replace", "[{type: relabel, rules: [{source_labels: [namespace, service], target_label: app, regex: 'ns-(.*);svc-(.*)', replacement: '$1/$2'}]}]"),
    ("aggregate", "[{type: aggregate, without: [pod, instance]}]"),
    ("topk", "[{type: topk, k: 100}]"),
    ("cardinality_limit", "[{type: cardinality_limit, limit: 1000}]"),
    ("sample", "[{type: sample, rate: 0.1}]"),
    ("adaptive", "[{type: adaptive, without: [pod, instance]}]"),
    ("relabel_then_aggregate", "[{type: relabel, rules: [{action: labeldrop, regex: container}]}, {type: aggregate, without: [pod, instance]}]"),
    ("hybrid", "[{type: cardinality_limit, limit: 50000}, {type: adaptive, keep_top_k: 20, without: [pod, instance]}]"),
];

fn processors(c: &mut Criterion) {
    let (first, second) = batches();
    let mut group = c.benchmark_group("processor");
    group.throughput(Throughput::Elements(second.sample_count() as u64));
    for (name, processors) in CASES {
        let mut p = pipeline(processors);
        // Warm the state (baselines, scores, counters) with one batch first.
        p.process(first.clone());
        group.bench_function(*name, |b| {
            b.iter_batched(
                || second.clone(),
                |batch| p.process(batch).len(),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, processors);
criterion_main!(benches);
