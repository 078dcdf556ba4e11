//! `aggregate`: folds series into groups `by` (or `without`) labels.
//!
//! Outputs sum (keeping the metric name), count, min, max and avg (`<name>:<op>`). `le` and
//! `quantile` always stay on the groups unless listed in `without`, so histogram buckets
//! merge per bucket. Cumulative sums stay monotonic across series churn (see
//! [`super::fold`]). One sample per group per batch, stamped with the newest member's time.
//!
//! Layout: the processor does what [`super::fold::CumulativeTracker`] and
//! [`super::fold::Folder`] do for the other folding processors, with the same results, but
//! finds everything it keeps about a series with one hash-table lookup by the series' id:
//! one entry per input series holds the index of its group in a dense vector and the
//! series' last cumulative value. Groups (their labels, running total and this batch's
//! accumulator) persist from batch to batch, so a known series costs one hash of its
//! labels, one probe and one touch of its group; its group key is only computed the first
//! time it is seen.

use serde::{Deserialize, Serialize};

use hashbrown::hash_map::Entry;
use hashbrown::HashMap;

use super::fold::{AggregateOp, DEFAULT_IDLE_BATCHES_BEFORE_EXPIRY};
use super::{parse_selectors, FieldError, Processor, ProcessorStats, DEFAULT_KEEP_LABELS};
use crate::model::{Batch, Labels, MetricKind, Sample, Series, Sym};
use crate::selector::{any_matches, Selector};

fn default_outputs() -> Vec<AggregateOp> {
    vec![AggregateOp::Sum]
}

/// Configuration of `aggregate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Only series matching one of these are aggregated (all when empty); others pass.
    #[serde(default, rename = "match")]
    pub match_selectors: Vec<String>,
    /// Labels to keep (plus `le` and `quantile`).
    #[serde(default)]
    pub by: Option<Vec<String>>,
    /// Labels to remove.
    #[serde(default)]
    pub without: Option<Vec<String>>,
    /// Outputs; `[sum]` by default.
    #[serde(default = "default_outputs")]
    pub outputs: Vec<AggregateOp>,
}

/// How group labels are chosen.
#[derive(Debug, Clone)]
enum Grouping {
    By(Vec<Sym>),
    Without(Vec<Sym>),
}

impl Grouping {
    fn keeps(&self, name: &str) -> bool {
        match self {
            Self::By(by) => super::contains_name(by, name),
            Self::Without(without) => !super::contains_name(without, name),
        }
    }
}

impl AggregateConfig {
    /// Validates and builds the processor.
    pub fn build(&self) -> Result<AggregateProcessor, Vec<FieldError>> {
        let mut errors = Vec::new();
        let selectors = parse_selectors("match", &self.match_selectors, &mut errors);
        let grouping = match (&self.by, &self.without) {
            (Some(by), None) => {
                let mut by: Vec<Sym> = by.iter().map(|s| Sym::from(s.as_str())).collect();
                by.extend(DEFAULT_KEEP_LABELS.iter().map(|s| Sym::from(*s)));
                Some(Grouping::By(by))
            }
            (None, Some(without)) => {
                if without.is_empty() {
                    errors.push(FieldError::new("without", "must list at least one label"));
                }
                Some(Grouping::Without(
                    without.iter().map(|s| Sym::from(s.as_str())).collect(),
                ))
            }
            (Some(_), Some(_)) => {
                errors.push(FieldError::new("by", "set either by or without, not both"));
                None
            }
            (None, None) => {
                errors.push(FieldError::new("by", "set either by or without"));
                None
            }
        };
        if self.outputs.is_empty() {
            errors.push(FieldError::new("outputs", "must list at least one output"));
        }
        for (i, op) in self.outputs.iter().enumerate() {
            if self.outputs[..i].contains(op) {
                errors.push(FieldError::new(
                    format!("outputs[{i}]"),
                    format!("{op:?} is listed twice"),
                ));
            }
        }
        match grouping {
            Some(grouping) if errors.is_empty() => Ok(AggregateProcessor {
                selectors,
                grouping,
                outputs: self.outputs.clone(),
                state: GroupState::new(DEFAULT_IDLE_BATCHES_BEFORE_EXPIRY),
                stats: ProcessorStats::default(),
            }),
            _ => Err(errors),
        }
    }
}

/// The running `aggregate`.
#[derive(Debug)]
pub struct AggregateProcessor {
    selectors: Vec<Selector>,
    grouping: Grouping,
    outputs: Vec<AggregateOp>,
    state: GroupState,
    stats: ProcessorStats,
}

fn group_key(series: &Series, grouping: &Grouping) -> u64 {
    crate::model::hash_name_and_labels(
        &series.name,
        series
            .labels
            .iter()
            .filter(|l| grouping.keeps(l.name))
            .map(|l| (l.name, l.value)),
    )
}

/// What is remembered of one input series, found by its id.
#[derive(Debug, Clone, Copy)]
struct Member {
    /// Index of its group in [`GroupState::groups`]...
    group: u32,
    /// ...valid while the group's generation is this one (groups are reused once idle).
    generation: u32,
    /// Batch it was last seen in (the entry is forgotten after the idle horizon).
    seen: u64,
    /// Last cumulative value (NaN: none remembered), as `CumulativeTracker` keeps it...
    last_value: f64,
    /// ...and the batch it was observed in.
    last_batch: u64,
}

/// One group: its identity and labels (kept while it is active), its running cumulative
/// total, and the accumulator of the current batch.
#[derive(Debug)]
struct Group {
    key: u64,
    generation: u32,
    labels: Labels,
    /// Output names per output (`name` for `sum`, `name:op` otherwise), made once.
    output_names: Vec<Sym>,
    /// Last batch a member was added in (`0`: free slot).
    touched: u64,
    total: Option<f64>,
    total_batch: u64,
    kind: MetricKind,
    cumulative: bool,
    timestamp_ms: i64,
    sum: f64,
    count: u64,
    min: f64,
    max: f64,
    increase: f64,
}

/// The state of `aggregate`: members (per input series) and groups, with the semantics of
/// a `CumulativeTracker` plus a `Folder` (same increases, totals, expiry horizon).
#[derive(Debug)]
struct GroupState {
    members: HashMap<u64, Member, ahash::RandomState>,
    group_index: HashMap<u64, u32, ahash::RandomState>,
    groups: Vec<Group>,
    free: Vec<u32>,
    /// Groups touched in this batch, in first-touch order (reused between batches).
    touched: Vec<u32>,
    batch_index: u64,
    idle_batches_before_expiry: u64,
}

impl GroupState {
    fn new(idle_batches_before_expiry: u64) -> Self {
        Self {
            members: HashMap::default(),
            group_index: HashMap::default(),
            groups: Vec::new(),
            free: Vec::new(),
            touched: Vec::new(),
            batch_index: 0,
            idle_batches_before_expiry: idle_batches_before_expiry.max(1),
        }
    }

    fn horizon(&self) -> u64 {
        self.batch_index
            .saturating_sub(self.idle_batches_before_expiry)
    }

    /// Starts a batch; now and then forgets idle cumulative values and members (as
    /// `CumulativeTracker::begin_batch` does).
    fn begin_batch(&mut self) {
        self.batch_index += 1;
        self.touched.clear();
        if self.batch_index.is_multiple_of(64) {
            let horizon = self.horizon();
            self.members.retain(|_, m| {
                if !m.last_value.is_nan() && m.last_batch < horizon {
                    m.last_value = f64::NAN;
                }
                // A member without a cumulative value only caches its group: forgetting
                // it once idle changes nothing but the cost of its next sighting.
                !m.last_value.is_nan() || m.seen >= horizon
            });
        }
    }

    /// The group index for a series seen for the first time (or whose group was reused).
    fn resolve(
        &mut self,
        series: &Series,
        grouping: &Grouping,
        outputs: &[AggregateOp],
    ) -> (u32, u32) {
        let key = group_key(series, grouping);
        let index = match self.group_index.entry(key) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                // Only the kept labels are cloned (still sorted and unique).
                let mut labels = series.labels.clone();
                labels.retain(|l| grouping.keeps(l.name));
                let name = series.name.clone();
                let output_names = outputs
                    .iter()
                    .map(|op| match op.suffix() {
                        None => name.clone(),
                        Some(suffix) => Sym::from(format!("{name}{suffix}")),
                    })
                    .collect();
                let group = Group {
                    key,
                    generation: 0,
                    labels,
                    output_names,
                    touched: 0,
                    total: None,
                    total_batch: 0,
                    kind: series.kind,
                    cumulative: false,
                    timestamp_ms: 0,
                    sum: 0.0,
                    count: 0,
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY,
                    increase: 0.0,
                };
                let free = self
                    .free
                    .pop()
                    .and_then(|index| Some((index, self.groups.get_mut(index as usize)?)));
                let index = match free {
                    Some((index, slot)) => {
                        let generation = slot.generation.wrapping_add(1);
                        *slot = Group {
                            generation,
                            ..group
                        };
                        index
                    }
                    None => {
                        // More than 2³² live groups cannot fit in memory anyway.
                        let index = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
                        self.groups.push(group);
                        index
                    }
                };
                *e.insert(index)
            }
        };
        let generation = self.groups.get(index as usize).map_or(0, |g| g.generation);
        (index, generation)
    }

    /// Adds `series` (already checked to have a last sample) to its group, turning a
    /// cumulative value into an increase like `CumulativeTracker::observe` and
    /// accumulating like `Folder::add`.
    fn add(&mut self, series: &Series, last: Sample, grouping: &Grouping, outputs: &[AggregateOp]) {
        let batch_index = self.batch_index;
        let id = series.id().0;
        let cumulative = series.is_cumulative();
        let member = match self.members.get_mut(&id) {
            Some(m)
                if self
                    .groups
                    .get(m.group as usize)
                    .is_some_and(|g| g.generation == m.generation && g.touched != 0) =>
            {
                m
            }
            _ => {
                let (group, generation) = self.resolve(series, grouping, outputs);
                let m = self.members.entry(id).or_insert(Member {
                    group,
                    generation,
                    seen: batch_index,
                    last_value: f64::NAN,
                    last_batch: 0,
                });
                m.group = group;
                m.generation = generation;
                m
            }
        };
        member.seen = batch_index;
        let increase = if !cumulative {
            None
        } else if last.value.is_nan() {
            (!member.last_value.is_nan()).then_some(0.0)
        } else {
            let previous = std::mem::replace(&mut member.last_value, last.value);
            member.last_batch = batch_index;
            if previous.is_nan() {
                None
            } else if last.value >= previous {
                Some(last.value - previous)
            } else {
                // A reset: the counter restarted from zero.
                Some(last.value)
            }
        };
        let index = member.group;
        let Some(group) = self.groups.get_mut(index as usize) else {
            return;
        };
        if group.touched != batch_index {
            group.touched = batch_index;
            group.kind = series.kind;
            group.cumulative = cumulative;
            group.timestamp_ms = last.timestamp_ms;
            group.sum = 0.0;
            group.count = 0;
            group.min = f64::INFINITY;
            group.max = f64::NEG_INFINITY;
            group.increase = 0.0;
            self.touched.push(index);
        }
        let value = if last.value.is_nan() { 0.0 } else { last.value };
        group.timestamp_ms = group.timestamp_ms.max(last.timestamp_ms);
        group.sum += value;
        group.count += 1;
        group.min = group.min.min(value);
        group.max = group.max.max(value);
        group.increase += increase.unwrap_or(0.0);
    }

    /// Emits one series per touched group and output (as `Folder::drain`), and now and
    /// then frees idle groups.
    fn drain(&mut self, outputs: &[AggregateOp], mut emit: impl FnMut(Series)) {
        let batch_index = self.batch_index;
        for &index in &self.touched {
            let Some(group) = self.groups.get_mut(index as usize) else {
                continue;
            };
            for (op, name) in outputs.iter().zip(&group.output_names) {
                let (value, kind) = match op {
                    AggregateOp::Sum if group.cumulative => {
                        let total = match group.total {
                            Some(total) => total + group.increase,
                            None => group.sum,
                        };
                        group.total = Some(total);
                        group.total_batch = batch_index;
                        (total, group.kind)
                    }
                    AggregateOp::Sum => (group.sum, group.kind),
                    AggregateOp::Count => (group.count as f64, MetricKind::Gauge),
                    AggregateOp::Min => (group.min, MetricKind::Gauge),
                    AggregateOp::Max => (group.max, MetricKind::Gauge),
                    AggregateOp::Avg => (group.sum / group.count.max(1) as f64, MetricKind::Gauge),
                };
                emit(Series::new(
                    name.clone(),
                    group.labels.clone(),
                    kind,
                    vec![Sample::new(group.timestamp_ms, value)],
                ));
            }
        }
        if batch_index.is_multiple_of(64) {
            let horizon = self.horizon();
            for (index, group) in self.groups.iter_mut().enumerate() {
                if group.touched == 0 {
                    continue;
                }
                if group.total.is_some() && group.total_batch < horizon {
                    group.total = None;
                }
                if group.touched < horizon {
                    self.group_index.remove(&group.key);
                    // Members still pointing here see a new generation and look again.
                    group.generation = group.generation.wrapping_add(1);
                    group.touched = 0;
                    group.labels = Labels::new();
                    group.output_names = Vec::new();
                    self.free.push(u32::try_from(index).unwrap_or(u32::MAX));
                }
            }
        }
    }
}

impl Processor for AggregateProcessor {
    fn kind(&self) -> &'static str {
        "aggregate"
    }

    fn process(&mut self, batch: Batch) -> Batch {
        self.state.begin_batch();
        let mut out = Vec::with_capacity(batch.series.len() / 4 + 1);
        for series in batch.series {
            self.stats.received(&series.name);
            if !self.selectors.is_empty() && !any_matches(&self.selectors, &series) {
                self.stats.passed(&series.name);
                out.push(series);
                continue;
            }
            let Some(last) = series.last_sample() else {
                self.stats.dropped(&series.name);
                continue;
            };
            self.state.add(&series, last, &self.grouping, &self.outputs);
            self.stats.folded(&series.name);
        }
        let stats = &mut self.stats;
        self.state.drain(&self.outputs, |s| {
            stats.emitted(&s.name);
            out.push(s);
        });
        Batch::new(out)
    }

    fn stats(&self) -> &ProcessorStats {
        &self.stats
    }

    fn reset_stats(&mut self) {
        self.stats.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Label;
    use crate::processor::fold::{CumulativeTracker, Folder};

    /// The layout `aggregate` had before its per-series cache: a `CumulativeTracker` and a
    /// `Folder` keyed by group hash. The processor must give the same outputs.
    struct Reference {
        grouping: Grouping,
        tracker: CumulativeTracker,
        folder: Folder,
    }

    impl Reference {
        fn process(&mut self, batch: &Batch, outputs: &[AggregateOp]) -> Vec<Series> {
            self.tracker.begin_batch();
            for series in &batch.series {
                let Some(last) = series.last_sample() else {
                    continue;
                };
                let increase = if series.is_cumulative() {
                    self.tracker.observe(series.id(), last.value)
                } else {
                    None
                };
                let grouping = &self.grouping;
                self.folder
                    .add(group_key(series, grouping), series, increase, || {
                        let mut labels = series.labels.clone();
                        labels.retain(|l| grouping.keeps(l.name));
                        (series.name.clone(), labels)
                    });
            }
            let mut out = Vec::new();
            self.folder.drain(outputs, |s| out.push(s));
            out
        }
    }

    fn sorted(mut series: Vec<Series>) -> Vec<String> {
        let mut lines: Vec<String> = series
            .drain(..)
            .map(|s| {
                let sample = s.samples[0];
                format!(
                    "{s} {:?} {} {:x}",
                    s.kind,
                    sample.timestamp_ms,
                    sample.value.to_bits()
                )
            })
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn same_outputs_as_tracker_plus_folder_under_churn_resets_nan_and_expiry() {
        let idle = 5;
        let outputs = vec![
            AggregateOp::Sum,
            AggregateOp::Count,
            AggregateOp::Min,
            AggregateOp::Max,
            AggregateOp::Avg,
        ];
        let grouping = Grouping::Without(vec![Sym::from("pod")]);
        let mut processor = AggregateConfig {
            match_selectors: Vec::new(),
            by: None,
            without: Some(vec!["pod".into()]),
            outputs: outputs.clone(),
        }
        .build()
        .unwrap();
        processor.state = GroupState::new(idle);
        let mut reference = Reference {
            grouping,
            tracker: CumulativeTracker::new(idle),
            folder: Folder::new(idle),
        };
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % bound
        };
        let mut values = std::collections::HashMap::new();
        for batch_index in 0..400i64 {
            let mut series = Vec::new();
            // Whole groups go quiet for longer than the horizon now and then.
            let quiet_group = (batch_index / 97 % 4) as u64;
            for metric in ["requests_total", "temperature", "latency_bucket"] {
                for job in 0..4u64 {
                    if batch_index % 97 < 40 && job == quiet_group {
                        continue;
                    }
                    for pod in 0..6u64 {
                        if next(3) == 0 {
                            continue;
                        }
                        let value = values.entry((metric, job, pod)).or_insert(0.0f64);
                        *value = match next(20) {
                            0 => 0.0,
                            1 => f64::NAN,
                            _ => *value + next(10) as f64,
                        };
                        let mut labels = vec![
                            Label::new(Sym::from("job"), Sym::from(format!("j{job}"))),
                            Label::new(Sym::from("pod"), Sym::from(format!("p{pod}"))),
                        ];
                        if metric.ends_with("_bucket") {
                            labels.push(Label::new(Sym::from("le"), Sym::from("+Inf")));
                        }
                        series.push(Series::new(
                            Sym::from(metric),
                            Labels::from_unsorted(labels),
                            MetricKind::from_prometheus_name(metric),
                            vec![Sample::new(batch_index * 1000 + next(5) as i64, *value)],
                        ));
                    }
                }
            }
            let batch = Batch::new(series);
            let want = sorted(reference.process(&batch, &outputs));
            let got = sorted(processor.process(batch).series);
            assert_eq!(got, want, "batch {batch_index}");
        }
        // Idle groups were freed and their slots reused.
        assert!(processor.state.groups.len() <= 3 * 4);
        assert!(processor.state.groups.iter().any(|g| g.generation >= 2));
    }
}
