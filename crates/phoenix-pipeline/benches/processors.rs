//! Each processor and full pipelines on a k8s-profile batch (scale 0.1, ~22k series, one
//! sample each), reported per sample. The batch clone fed to each iteration is excluded.
//!
//! `forward/*` is the engine's share of the vmagent comparison job in one thread: remote
//! write requests of 2,000 series decoded into a batch, KPI metering of input and output,
//! `relabel` labeldrop of `pod|instance|container`, and the remote write encoding of the
//! output in requests of 10,000 samples (no network, no async runtime).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use phoenix_pipeline::config::PipelineConfig;
use phoenix_pipeline::kpi::KpiMeter;
use phoenix_pipeline::model::{Batch, Interner};
use phoenix_pipeline::pipeline::Pipeline;
use phoenix_pipeline::remote_write::{RemoteWriteDecoder, RemoteWriteEncoder};
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

fn forward(c: &mut Criterion) {
    let (first, second) = batches();
    let encode = |batch: &Batch| -> Vec<Vec<u8>> {
        let mut encoder = RemoteWriteEncoder::new();
        batch
            .series
            .chunks(2_000)
            .map(|chunk| encoder.encode(chunk, &[]))
            .collect()
    };
    let (warm_requests, requests) = (encode(&first), encode(&second));
    let mut group = c.benchmark_group("forward");
    group.throughput(Throughput::Elements(second.sample_count() as u64));
    let mut p =
        pipeline("[{type: relabel, rules: [{action: labeldrop, regex: pod|instance|container}]}]");
    let mut meter = KpiMeter::new(&["live"], Vec::new());
    let mut decoder = RemoteWriteDecoder::default();
    let mut interner = Interner::new();
    let mut encoder = RemoteWriteEncoder::new();
    let mut run = |requests: &[Vec<u8>]| -> usize {
        let mut input = Batch::default();
        for request in requests {
            let _ = decoder.decode(request, &mut interner, &mut input);
        }
        meter.record_input(&input, &[]);
        let output = p.process(input);
        meter.record_output(0, &output, std::time::Duration::ZERO);
        let mut bytes = 0;
        let mut start = 0;
        while start < output.series.len() {
            let end = (start + 10_000).min(output.series.len());
            bytes += encoder.encode(&output.series[start..end], &[]).len();
            start = end;
        }
        bytes
    };
    run(&warm_requests);
    group.bench_function("relabel_labeldrop", |b| b.iter(|| run(&requests)));
    group.finish();
}

criterion_group!(benches, processors, forward);
criterion_main!(benches);
