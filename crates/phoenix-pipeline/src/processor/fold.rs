//! Folding many series into one, shared by `aggregate`, `topk`, `cardinality_limit` and
//! `adaptive`.
//!
//! Gauges fold per batch (sum, count, min, max, avg of the members' latest values).
//! Cumulative series (counters, histogram buckets, `_sum`/`_count`) fold through an
//! accumulator: a new group starts at the sum of its members' values, and from then on
//! grows by the members' increases (a reset counts from zero, a member seen for the first
//! time contributes from its second sample on). So a folded counter never decreases when
//! pods come and go, and its increase equals the sum of its members' increases.

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::model::{Labels, MetricKind, Sample, Series, SeriesId, Sym};

/// Batches a cumulative member or group may stay unseen before its state is forgotten.
pub const DEFAULT_IDLE_BATCHES_BEFORE_EXPIRY: u64 = 1_000;

/// Aggregation outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateOp {
    /// Sum (keeps the metric name; counters stay monotonic).
    Sum,
    /// Number of member series (`<name>:count`).
    Count,
    /// Smallest member value (`<name>:min`).
    Min,
    /// Largest member value (`<name>:max`).
    Max,
    /// Mean of member values (`<name>:avg`).
    Avg,
}

impl AggregateOp {
    /// The suffix of the output metric name (`None` for `sum`, which keeps the name).
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            Self::Sum => None,
            Self::Count => Some(":count"),
            Self::Min => Some(":min"),
            Self::Max => Some(":max"),
            Self::Avg => Some(":avg"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct LastValue {
    value: f64,
    batch_index: u64,
}

/// Remembers the last value of each cumulative series to turn values into increases.
#[derive(Debug)]
pub struct CumulativeTracker {
    last: HashMap<SeriesId, LastValue, ahash::RandomState>,
    batch_index: u64,
    idle_batches_before_expiry: u64,
}

impl Default for CumulativeTracker {
    fn default() -> Self {
        Self::new(DEFAULT_IDLE_BATCHES_BEFORE_EXPIRY)
    }
}

impl CumulativeTracker {
    /// A tracker forgetting series unseen for `idle_batches_before_expiry` batches.
    pub fn new(idle_batches_before_expiry: u64) -> Self {
        Self {
            last: HashMap::default(),
            batch_index: 0,
            idle_batches_before_expiry: idle_batches_before_expiry.max(1),
        }
    }

    /// Starts a batch (and now and then forgets idle series).
    pub fn begin_batch(&mut self) {
        self.batch_index += 1;
        if self.batch_index.is_multiple_of(64) {
            let horizon = self
                .batch_index
                .saturating_sub(self.idle_batches_before_expiry);
            self.last.retain(|_, v| v.batch_index >= horizon);
        }
    }

    /// The increase of series `id` since it was last observed, reset-aware; `None` the
    /// first time it is seen. NaN values (staleness markers) count as no increase.
    pub fn observe(&mut self, id: SeriesId, value: f64) -> Option<f64> {
        let batch_index = self.batch_index;
        if value.is_nan() {
            return self.last.get(&id).map(|_| 0.0);
        }
        match self.last.insert(id, LastValue { value, batch_index }) {
            None => None,
            Some(previous) if value >= previous.value => Some(value - previous.value),
            // A reset: the counter restarted from zero.
            Some(_) => Some(value),
        }
    }

    /// Number of series remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// One group being folded in the current batch.
#[derive(Debug, Clone)]
struct GroupAcc {
    name: Sym,
    labels: Labels,
    kind: MetricKind,
    cumulative: bool,
    timestamp_ms: i64,
    sum: f64,
    count: u64,
    min: f64,
    max: f64,
    increase: f64,
}

#[derive(Debug, Clone, Copy)]
struct GroupTotal {
    value: f64,
    batch_index: u64,
}

/// Folds members into groups batch by batch, keeping cumulative groups monotonic.
#[derive(Debug, Default)]
pub struct Folder {
    groups: HashMap<u64, GroupAcc, ahash::RandomState>,
    totals: HashMap<u64, GroupTotal, ahash::RandomState>,
    batch_index: u64,
    idle_batches_before_expiry: u64,
}

impl Folder {
    /// A folder forgetting group totals unseen for `idle_batches_before_expiry` batches.
    pub fn new(idle_batches_before_expiry: u64) -> Self {
        Self {
            idle_batches_before_expiry: idle_batches_before_expiry.max(1),
            ..Self::default()
        }
    }

    /// Adds `series` (its latest sample) to group `group`, creating the group with the
    /// labels from `make` on first use in this batch. `increase` is the member's increase
    /// from a [`CumulativeTracker`] (ignored for gauges).
    pub fn add(
        &mut self,
        group: u64,
        series: &Series,
        increase: Option<f64>,
        make: impl FnOnce() -> (Sym, Labels),
    ) {
        let Some(sample) = series.last_sample() else {
            return;
        };
        let value = if sample.value.is_nan() {
            0.0
        } else {
            sample.value
        };
        let acc = self.groups.entry(group).or_insert_with(|| {
            let (name, labels) = make();
            GroupAcc {
                name,
                labels,
                kind: series.kind,
                cumulative: series.is_cumulative(),
                timestamp_ms: sample.timestamp_ms,
                sum: 0.0,
                count: 0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                increase: 0.0,
            }
        });
        acc.timestamp_ms = acc.timestamp_ms.max(sample.timestamp_ms);
        acc.sum += value;
        acc.count += 1;
        acc.min = acc.min.min(value);
        acc.max = acc.max.max(value);
        acc.increase += increase.unwrap_or(0.0);
    }

    /// Adds only an increase to cumulative group `group` (creating it from `series` and
    /// `make` when needed), without counting a member or a value. Used when a series
    /// leaves a group to be exported on its own: its last increase still belongs to the
    /// group, since the backend sees the promoted series as new and counts no increase.
    pub fn add_increase(
        &mut self,
        group: u64,
        series: &Series,
        increase: f64,
        make: impl FnOnce() -> (Sym, Labels),
    ) {
        let Some(sample) = series.last_sample() else {
            return;
        };
        if !series.is_cumulative() {
            return;
        }
        let acc = self.groups.entry(group).or_insert_with(|| {
            let (name, labels) = make();
            GroupAcc {
                name,
                labels,
                kind: series.kind,
                cumulative: true,
                timestamp_ms: sample.timestamp_ms,
                sum: 0.0,
                count: 0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                increase: 0.0,
            }
        });
        acc.timestamp_ms = acc.timestamp_ms.max(sample.timestamp_ms);
        acc.increase += increase;
    }

    /// Number of groups in the current batch.
    pub fn pending_groups(&self) -> usize {
        self.groups.len()
    }

    /// Emits one series per group and output, and starts the next batch.
    pub fn drain(&mut self, outputs: &[AggregateOp], mut emit: impl FnMut(Series)) {
        self.batch_index += 1;
        let batch_index = self.batch_index;
        for (group, acc) in self.groups.drain() {
            if acc.count == 0 && !self.totals.contains_key(&group) {
                // Only a carried-over increase for a group never emitted: nothing to base
                // a total on, and no backend series that could miss it.
                continue;
            }
            let mut labels = Some(acc.labels);
            for (op_index, op) in outputs.iter().enumerate() {
                let (value, kind) = match op {
                    AggregateOp::Sum if acc.cumulative => {
                        let total = match self.totals.get_mut(&group) {
                            Some(total) => {
                                total.value += acc.increase;
                                total.batch_index = batch_index;
                                total.value
                            }
                            None => {
                                self.totals.insert(
                                    group,
                                    GroupTotal {
                                        value: acc.sum,
                                        batch_index,
                                    },
                                );
                                acc.sum
                            }
                        };
                        (total, acc.kind)
                    }
                    AggregateOp::Sum => (acc.sum, acc.kind),
                    AggregateOp::Count => (acc.count as f64, MetricKind::Gauge),
                    AggregateOp::Min => (acc.min, MetricKind::Gauge),
                    AggregateOp::Max => (acc.max, MetricKind::Gauge),
                    AggregateOp::Avg => (acc.sum / acc.count.max(1) as f64, MetricKind::Gauge),
                };
                let name = match op.suffix() {
                    None => acc.name.clone(),
                    Some(suffix) => Sym::from(format!("{}{suffix}", acc.name)),
                };
                // The last output takes the group's labels, the others a copy.
                let labels = if op_index + 1 == outputs.len() {
                    labels.take().unwrap_or_default()
                } else {
                    labels.clone().unwrap_or_default()
                };
                emit(Series::new(
                    name,
                    labels,
                    kind,
                    vec![Sample::new(acc.timestamp_ms, value)],
                ));
            }
        }
        if batch_index.is_multiple_of(64) {
            let horizon = batch_index.saturating_sub(self.idle_batches_before_expiry);
            self.totals.retain(|_, t| t.batch_index >= horizon);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Label;

    fn counter(pod: &str, value: f64, ts: i64) -> Series {
        Series::new(
            Sym::from("requests_total"),
            Labels::from_unsorted(vec![Label::new(Sym::from("pod"), Sym::from(pod))]),
            MetricKind::Counter,
            vec![Sample::new(ts, value)],
        )
    }

    fn fold_once(tracker: &mut CumulativeTracker, folder: &mut Folder, members: &[Series]) -> f64 {
        tracker.begin_batch();
        for m in members {
            let inc = tracker.observe(m.id(), m.samples[0].value);
            folder.add(1, m, inc, || (m.name.clone(), Labels::new()));
        }
        let mut out = Vec::new();
        folder.drain(&[AggregateOp::Sum], |s| out.push(s));
        out[0].samples[0].value
    }

    #[test]
    fn folded_counter_stays_monotonic_when_members_leave_and_join() {
        let mut tracker = CumulativeTracker::default();
        let mut folder = Folder::default();
        let v1 = fold_once(
            &mut tracker,
            &mut folder,
            &[counter("a", 100.0, 1), counter("b", 50.0, 1)],
        );
        assert_eq!(v1, 150.0);
        // b leaves, c joins with a large value: only a's increase counts.
        let v2 = fold_once(
            &mut tracker,
            &mut folder,
            &[counter("a", 110.0, 2), counter("c", 500.0, 2)],
        );
        assert_eq!(v2, 160.0);
        // c grows by 5, a resets to 3.
        let v3 = fold_once(
            &mut tracker,
            &mut folder,
            &[counter("a", 3.0, 3), counter("c", 505.0, 3)],
        );
        assert_eq!(v3, 168.0);
    }

    #[test]
    fn gauge_outputs_cover_every_operation() {
        let mut folder = Folder::default();
        for (pod, v) in [("a", 1.0), ("b", 3.0)] {
            let s = Series::new(
                Sym::from("temp"),
                Labels::from_unsorted(vec![Label::new(Sym::from("pod"), Sym::from(pod))]),
                MetricKind::Gauge,
                vec![Sample::new(7, v)],
            );
            folder.add(9, &s, None, || (Sym::from("temp"), Labels::new()));
        }
        let mut out = Vec::new();
        let ops = [
            AggregateOp::Sum,
            AggregateOp::Count,
            AggregateOp::Min,
            AggregateOp::Max,
            AggregateOp::Avg,
        ];
        folder.drain(&ops, |s| out.push(s));
        let got: Vec<(String, f64)> = out
            .iter()
            .map(|s| (s.name.to_string(), s.samples[0].value))
            .collect();
        assert_eq!(
            got,
            vec![
                ("temp".into(), 4.0),
                ("temp:count".into(), 2.0),
                ("temp:min".into(), 1.0),
                ("temp:max".into(), 3.0),
                ("temp:avg".into(), 2.0)
            ]
        );
    }
}
