//! The KPI meter's per-series table at production size: a million series remembered,
//! batches of 2,000 observed in a shuffled order (every lookup far from the last one),
//! with the batch's slots read ahead (`prefetched`) and without (`one_by_one`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use phoenix_pipeline::seen::{SeenTable, LOOKAHEAD};

const SERIES: u64 = 1_000_000;
const BATCH: usize = 2_000;

fn ids() -> Vec<u64> {
    // A fixed permutation of hashed ids, so that successive lookups land anywhere.
    let mut ids: Vec<u64> = (0..SERIES)
        .map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
        .collect();
    ids.sort_unstable_by_key(|id| id.rotate_left(17));
    ids
}

fn seen_table(c: &mut Criterion) {
    let ids = ids();
    let mut group = c.benchmark_group("seen_table_1m");
    group.throughput(Throughput::Elements(BATCH as u64));
    for prefetched in [true, false] {
        let mut table = SeenTable::new(60_000);
        for chunk in ids.chunks(BATCH) {
            table.start_batch();
            for id in chunk {
                table.observe(*id, true, 1.0);
            }
        }
        let mut batches = ids.chunks(BATCH).cycle();
        let name = if prefetched {
            "prefetched"
        } else {
            "one_by_one"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let chunk = batches.next().unwrap_or(&[]);
                table.start_batch();
                let mut total = 0.0;
                for ahead in chunk.chunks(LOOKAHEAD) {
                    if prefetched {
                        table.prefetch(ahead);
                    }
                    for id in ahead {
                        total += table.observe(*id, true, 2.0).contribution;
                    }
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, seen_table);
criterion_main!(benches);
