//! Remote write decode and encode: the hand-written path against the prost reference on a
//! realistic request (2,000 series of the k8s profile, one sample each — Prometheus'
//! default `max_samples_per_send`).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use phoenix_pipeline::model::{Batch, Interner};
use phoenix_pipeline::remote_write::{reference, RemoteWriteDecoder, RemoteWriteEncoder};
use phoenix_pipeline::simulator::{Profile, Simulator, SimulatorConfig};
use prost::Message;

fn payload() -> Batch {
    let mut config = SimulatorConfig::new(Profile::K8s, 7);
    config.scale = 0.1;
    let mut simulator = Simulator::new(config);
    simulator.next_batch();
    let mut batch = simulator.next_batch();
    batch.series.truncate(2_000);
    batch
}

fn decode(c: &mut Criterion) {
    let batch = payload();
    let compressed = RemoteWriteEncoder::new().encode(&batch.series, &[]);
    let samples = batch.sample_count() as u64;
    let mut group = c.benchmark_group("remote_write_decode");
    group.throughput(Throughput::Elements(samples));

    let mut decoder = RemoteWriteDecoder::default();
    group.bench_function("prost_message", |b| {
        b.iter(|| {
            let body = snap::raw::Decoder::new()
                .decompress_vec(&compressed)
                .unwrap_or_default();
            reference::WriteRequest::decode(body.as_slice())
                .map(|r| r.timeseries.len())
                .unwrap_or(0)
        })
    });
    let mut interner = Interner::new();
    group.bench_function("hand_to_batch", |b| {
        b.iter(|| {
            let mut out = Batch::default();
            let _ = decoder.decode(&compressed, &mut interner, &mut out);
            out.len()
        })
    });
    let mut interner = Interner::new();
    group.bench_function("prost_to_batch", |b| {
        b.iter(|| {
            reference::decode_to_batch(&compressed, &mut interner)
                .map(|b| b.len())
                .unwrap_or(0)
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let batch = payload();
    let mut group = c.benchmark_group("remote_write_encode");
    group.throughput(Throughput::Elements(batch.sample_count() as u64));
    let mut encoder = RemoteWriteEncoder::new();
    group.bench_function("hand", |b| {
        b.iter(|| encoder.encode(&batch.series, &[]).len())
    });
    group.bench_function("prost_from_series", |b| {
        b.iter_batched(
            || (),
            |()| {
                let body = reference::from_series(&batch.series).encode_to_vec();
                snap::raw::Encoder::new()
                    .compress_vec(&body)
                    .map(|v| v.len())
                    .unwrap_or(0)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
