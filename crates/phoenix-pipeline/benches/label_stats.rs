//! The cost label statistics add to KPI metering of the input, on a k8s-profile batch
//! (scale 0.1, ~22k series, one sample each), reported per sample.
//!
//! `first_sighting/*` ends an interval after every batch, so every series is new each time:
//! the worst case, where the statistics see every series (an interval's first batch).
//! `steady/*` feeds batches within one interval: series already counted cost the statistics
//! nothing (the usual batch). Each pair compares the meter without and with statistics.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use phoenix_pipeline::kpi::KpiMeter;
use phoenix_pipeline::labelstats::LabelStatsConfig;
use phoenix_pipeline::simulator::{Profile, Simulator, SimulatorConfig};

fn meter(with_stats: bool) -> KpiMeter {
    let meter = KpiMeter::new(&["baseline"], Vec::new());
    if with_stats {
        meter.with_label_stats(LabelStatsConfig::default())
    } else {
        meter
    }
}

fn label_stats(c: &mut Criterion) {
    let mut config = SimulatorConfig::new(Profile::K8s, 3);
    config.scale = 0.1;
    let mut simulator = Simulator::new(config);
    let batch = simulator.next_batch();
    let mut group = c.benchmark_group("label_stats");
    group.throughput(Throughput::Elements(batch.sample_count() as u64));
    for (name, with_stats) in [("without", false), ("with", true)] {
        let mut m = meter(with_stats);
        group.bench_function(format!("first_sighting/{name}"), |b| {
            b.iter(|| {
                m.record_input(&batch, &[]);
                m.finish_interval(&[]).len()
            })
        });
        let mut m = meter(with_stats);
        m.record_input(&batch, &[]);
        group.bench_function(format!("steady/{name}"), |b| {
            b.iter(|| m.record_input(&batch, &[]))
        });
    }
    group.finish();
}

criterion_group!(benches, label_stats);
criterion_main!(benches);
