//! Label statistics of a pipeline's input over one KPI interval: per metric its distinct
//! series, per label name a HyperLogLog++ sketch of the distinct values and one of the series
//! identities with that label removed (what `aggregate without: [label]` would leave), its
//! top values by series (space-saving), and series by breakdown labels (`namespace`,
//! `service`). The API merges the sketches of many hosts.
//!
//! It only sees each series once per interval (the KPI meter calls it on a series' first
//! sighting), and only in the intervals it is asked to collect, so its cost is per distinct
//! series, not per sample. Memory is bounded by caps on metrics, labels per metric and
//! groups per metric; what a cap cut is counted and reported.

use cardinality_estimator::CardinalityEstimator;
use hashbrown::{HashMap, HashSet};

use crate::model::{Series, Sym};

/// A mergeable distinct-count sketch (the same type and hash the API merges with).
pub type DistinctSketch = CardinalityEstimator<str>;

/// Most breakdown labels a collector groups by.
pub const MAX_BREAKDOWN_LABELS: usize = 4;

/// What to collect and how much memory it may take.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelStatsConfig {
    /// Collect during one interval out of this many (1: every interval).
    pub every_intervals: u32,
    /// Metrics tracked at most; series of further metrics are counted in `series_cut`.
    pub max_metrics: usize,
    /// Label names tracked per metric at most.
    pub max_labels_per_metric: usize,
    /// Top values reported per label.
    pub top_values: usize,
    /// Breakdown groups per metric at most.
    pub max_groups_per_metric: usize,
    /// Labels to break series down by (at most [`MAX_BREAKDOWN_LABELS`]).
    pub breakdown_labels: Vec<String>,
}

impl Default for LabelStatsConfig {
    fn default() -> Self {
        Self {
            every_intervals: 1,
            max_metrics: 1_000,
            max_labels_per_metric: 32,
            top_values: 10,
            max_groups_per_metric: 1_000,
            breakdown_labels: vec!["namespace".into(), "service".into()],
        }
    }
}

/// One label's statistics (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelStatsEntry {
    pub name: String,
    pub series: u64,
    pub values: DistinctSketch,
    pub without: DistinctSketch,
    /// `(value, series)`, most first.
    pub top_values: Vec<(String, u64)>,
}

/// One metric's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricStats {
    pub metric: String,
    pub series: u64,
    pub labels: Vec<LabelStatsEntry>,
    pub labels_cut: u64,
    /// `(breakdown values, series)`; `""` for an absent label.
    pub groups: Vec<(Vec<String>, u64)>,
    pub groups_cut_series: u64,
}

/// One interval's statistics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LabelStats {
    pub breakdown_labels: Vec<String>,
    /// Largest first by series.
    pub metrics: Vec<MetricStats>,
    pub metrics_cut: u64,
    pub series_cut: u64,
}

/// Space-saving top-k: exact while a label has at most `capacity` values, otherwise the
/// counts of the heavy values are upper bounds (Metwally et al.).
#[derive(Debug, Default)]
struct TopValues {
    /// Values and counts; a replaced value reuses its string's allocation.
    entries: Vec<(String, u64)>,
}

impl TopValues {
    fn add(&mut self, value: &str, capacity: usize) {
        if let Some(e) = self.entries.iter_mut().find(|(v, _)| v == value) {
            e.1 += 1;
            return;
        }
        if self.entries.len() < capacity {
            self.entries.push((value.to_string(), 1));
            return;
        }
        if let Some(min) = self.entries.iter_mut().min_by_key(|(_, c)| *c) {
            min.0.clear();
            min.0.push_str(value);
            min.1 += 1;
        }
    }
}

#[derive(Debug)]
struct LabelAcc {
    name: Sym,
    /// Seed for the value hashes: the name's own hash.
    name_hash: u64,
    series: u64,
    values: DistinctSketch,
    without: DistinctSketch,
    top: TopValues,
}

/// The breakdown labels' values of a group of series.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
struct GroupKey([Option<Sym>; MAX_BREAKDOWN_LABELS]);

/// A [`GroupKey`] borrowed from a series, to look groups up without allocating. Hashes
/// exactly like the owned key (`Option<&str>` and `Option<Arc<str>>` hash alike).
#[derive(Hash)]
struct GroupKeyRef<'a>([Option<&'a str>; MAX_BREAKDOWN_LABELS]);

impl hashbrown::Equivalent<GroupKey> for GroupKeyRef<'_> {
    fn equivalent(&self, key: &GroupKey) -> bool {
        self.0.iter().zip(&key.0).all(|(a, b)| *a == b.as_deref())
    }
}

#[derive(Debug, Default)]
struct MetricAcc {
    series: u64,
    labels: Vec<LabelAcc>,
    cut_labels: HashSet<Sym, ahash::RandomState>,
    groups: HashMap<GroupKey, u64, ahash::RandomState>,
    groups_cut_series: u64,
}

/// Mixes a sum of label hashes into a well-spread 64-bit hash (the murmur3 finaliser).
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Collects [`LabelStats`] over the series it is shown.
#[derive(Debug)]
pub struct LabelStatsCollector {
    config: LabelStatsConfig,
    breakdown: Vec<Sym>,
    index: HashMap<Sym, usize, ahash::RandomState>,
    metrics: Vec<MetricAcc>,
    cut_metrics: HashSet<Sym, ahash::RandomState>,
    series_cut: u64,
    /// The last metric looked up (`(name, index)`): batches keep a metric's series together.
    last: Option<(Sym, usize)>,
    /// Scratch: per-label hashes of the series being observed.
    hashes: Vec<u64>,
    /// Intervals finished so far (decides which ones collect).
    intervals: u64,
}

impl LabelStatsCollector {
    /// A collector; the breakdown labels beyond [`MAX_BREAKDOWN_LABELS`] are ignored.
    pub fn new(mut config: LabelStatsConfig) -> Self {
        config.breakdown_labels.truncate(MAX_BREAKDOWN_LABELS);
        config.top_values = config.top_values.max(1);
        Self {
            breakdown: config
                .breakdown_labels
                .iter()
                .map(|s| Sym::from(s.as_str()))
                .collect(),
            config,
            index: HashMap::default(),
            metrics: Vec::new(),
            cut_metrics: HashSet::default(),
            series_cut: 0,
            last: None,
            hashes: Vec::new(),
            intervals: 0,
        }
    }

    /// Whether the current interval collects.
    pub fn collecting(&self) -> bool {
        self.config.every_intervals > 0
            && self
                .intervals
                .is_multiple_of(u64::from(self.config.every_intervals))
    }

    fn metric_index(&mut self, name: &Sym) -> Option<usize> {
        if let Some((last, i)) = &self.last {
            if std::sync::Arc::ptr_eq(last, name) {
                return Some(*i);
            }
        }
        let i = match self.index.get(name) {
            Some(i) => *i,
            None => {
                if self.metrics.len() >= self.config.max_metrics {
                    if !self.cut_metrics.contains(name) {
                        self.cut_metrics.insert(name.clone());
                    }
                    return None;
                }
                self.metrics.push(MetricAcc::default());
                self.index.insert(name.clone(), self.metrics.len() - 1);
                self.metrics.len() - 1
            }
        };
        self.last = Some((name.clone(), i));
        Some(i)
    }

    /// Counts one series (call once per distinct series per interval).
    pub fn observe(&mut self, series: &Series) {
        let Some(index) = self.metric_index(&series.name) else {
            self.series_cut += 1;
            return;
        };
        let top_capacity = self.config.top_values * 2;
        let max_labels = self.config.max_labels_per_metric;
        let max_groups = self.config.max_groups_per_metric;
        let metric = &mut self.metrics[index];
        metric.series += 1;
        // Per-label hashes; their wrapping sum identifies the label set, and the sum less
        // one label's hash identifies the series with that label aggregated away.
        self.hashes.clear();
        let mut total = 0u64;
        let mut slots: [usize; 64] = [usize::MAX; 64];
        for (k, label) in series.labels.iter().enumerate() {
            // A metric's series carry the same label names in the same (sorted) order, so
            // the k-th label is usually the k-th accumulator: checked first.
            let hinted = metric
                .labels
                .get(k)
                .is_some_and(|l| *l.name == *label.name)
                .then_some(k);
            let slot = match hinted
                .or_else(|| metric.labels.iter().position(|l| *l.name == *label.name))
            {
                Some(slot) => slot,
                None if metric.labels.len() < max_labels => {
                    metric.labels.push(LabelAcc {
                        name: Sym::from(label.name),
                        name_hash: xxhash_rust::xxh3::xxh3_64(label.name.as_bytes()),
                        series: 0,
                        values: DistinctSketch::new(),
                        without: DistinctSketch::new(),
                        top: TopValues::default(),
                    });
                    metric.labels.len() - 1
                }
                None => {
                    if !metric.cut_labels.contains(label.name) {
                        metric.cut_labels.insert(Sym::from(label.name));
                    }
                    usize::MAX
                }
            };
            let name_hash = match metric.labels.get(slot) {
                Some(l) => l.name_hash,
                None => xxhash_rust::xxh3::xxh3_64(label.name.as_bytes()),
            };
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(label.value.as_bytes(), name_hash);
            self.hashes.push(h);
            total = total.wrapping_add(h);
            if let Some(s) = slots.get_mut(k) {
                *s = slot;
            }
        }
        for (k, label) in series.labels.iter().enumerate() {
            let slot = slots.get(k).copied().unwrap_or(usize::MAX);
            let Some(acc) = metric.labels.get_mut(slot) else {
                continue;
            };
            acc.series += 1;
            acc.values.insert(label.value);
            acc.without
                .insert_hash(mix(total.wrapping_sub(self.hashes[k])));
            acc.top.add(label.value, top_capacity);
        }
        if !self.breakdown.is_empty() {
            let mut key = GroupKeyRef(Default::default());
            for (slot, name) in key.0.iter_mut().zip(&self.breakdown) {
                *slot = series.labels.get(name);
            }
            if let Some(count) = metric.groups.get_mut(&key) {
                *count += 1;
            } else if metric.groups.len() < max_groups {
                metric
                    .groups
                    .insert(GroupKey(key.0.map(|v| v.map(Sym::from))), 1);
            } else {
                metric.groups_cut_series += 1;
            }
        }
    }

    /// Ends an interval: the statistics collected in it (`None` when it did not collect),
    /// then starts afresh.
    pub fn finish_interval(&mut self) -> Option<LabelStats> {
        let collected = self.collecting();
        self.intervals += 1;
        if !collected {
            return None;
        }
        let names: Vec<(Sym, usize)> = self.index.drain().collect();
        let mut metrics_acc = std::mem::take(&mut self.metrics);
        let top_values = self.config.top_values;
        let mut metrics: Vec<MetricStats> = names
            .into_iter()
            .filter_map(|(name, i)| {
                let acc = std::mem::take(metrics_acc.get_mut(i)?);
                let mut groups: Vec<(Vec<String>, u64)> = acc
                    .groups
                    .into_iter()
                    .map(|(key, series)| {
                        let values = key
                            .0
                            .iter()
                            .take(self.breakdown.len())
                            .map(|v| v.as_deref().unwrap_or("").to_string())
                            .collect();
                        (values, series)
                    })
                    .collect();
                groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                Some(MetricStats {
                    metric: name.to_string(),
                    series: acc.series,
                    labels: acc
                        .labels
                        .into_iter()
                        .map(|l| {
                            let mut top: Vec<(String, u64)> = l.top.entries;
                            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                            top.truncate(top_values);
                            LabelStatsEntry {
                                name: l.name.to_string(),
                                series: l.series,
                                values: l.values,
                                without: l.without,
                                top_values: top,
                            }
                        })
                        .collect(),
                    labels_cut: acc.cut_labels.len() as u64,
                    groups,
                    groups_cut_series: acc.groups_cut_series,
                })
            })
            .collect();
        metrics.sort_by(|a, b| {
            b.series
                .cmp(&a.series)
                .then_with(|| a.metric.cmp(&b.metric))
        });
        let stats = LabelStats {
            breakdown_labels: self.config.breakdown_labels.clone(),
            metrics,
            metrics_cut: self.cut_metrics.len() as u64,
            series_cut: self.series_cut,
        };
        self.cut_metrics.clear();
        self.series_cut = 0;
        self.last = None;
        Some(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Label, Labels, MetricKind, Sample};

    fn series(metric: &str, labels: &[(&str, &str)]) -> Series {
        Series::new(
            Sym::from(metric),
            Labels::from_unsorted(
                labels
                    .iter()
                    .map(|(n, v)| Label::new(Sym::from(*n), Sym::from(*v)))
                    .collect(),
            ),
            MetricKind::Gauge,
            vec![Sample::new(1, 1.0)],
        )
    }

    #[test]
    fn counts_series_values_what_aggregation_leaves_and_groups() {
        let mut c = LabelStatsCollector::new(LabelStatsConfig::default());
        // 3 namespaces × 4 pods × 5 paths = 60 series.
        for ns in 0..3 {
            for pod in 0..4 {
                for path in 0..5 {
                    c.observe(&series(
                        "http_requests_total",
                        &[
                            ("namespace", &format!("ns{ns}")),
                            ("pod", &format!("ns{ns}-pod{pod}")),
                            ("path", &format!("/p{path}")),
                        ],
                    ));
                }
            }
        }
        let stats = c.finish_interval().unwrap();
        let m = &stats.metrics[0];
        assert_eq!(m.series, 60);
        let label = |n: &str| m.labels.iter().find(|l| l.name == n).unwrap();
        assert_eq!(label("pod").values.estimate(), 12);
        assert_eq!(label("path").values.estimate(), 5);
        // Without `pod`: 3 namespaces × 5 paths; without `path`: 12 pods.
        assert_eq!(label("pod").without.estimate(), 15);
        assert_eq!(label("path").without.estimate(), 12);
        assert_eq!(label("namespace").top_values[0].1, 20);
        assert_eq!(m.groups.len(), 3);
        assert_eq!(m.groups[0].0, vec!["ns0".to_string(), String::new()]);
        assert_eq!(m.groups[0].1, 20);
    }

    #[test]
    fn caps_bound_memory_and_count_what_they_cut() {
        let mut c = LabelStatsCollector::new(LabelStatsConfig {
            max_metrics: 1,
            max_labels_per_metric: 1,
            max_groups_per_metric: 1,
            ..LabelStatsConfig::default()
        });
        c.observe(&series("a", &[("namespace", "x"), ("pod", "1")]));
        c.observe(&series("a", &[("namespace", "y"), ("pod", "2")]));
        c.observe(&series("b", &[("pod", "1")]));
        let stats = c.finish_interval().unwrap();
        assert_eq!((stats.metrics_cut, stats.series_cut), (1, 1));
        let m = &stats.metrics[0];
        assert_eq!((m.labels.len(), m.labels_cut), (1, 1));
        assert_eq!(m.groups_cut_series, 1);
    }

    #[test]
    fn collects_only_every_n_intervals() {
        let mut c = LabelStatsCollector::new(LabelStatsConfig {
            every_intervals: 3,
            ..LabelStatsConfig::default()
        });
        let collected: Vec<bool> = (0..6)
            .map(|_| {
                let on = c.collecting();
                if on {
                    c.observe(&series("a", &[("pod", "1")]));
                }
                c.finish_interval().is_some()
            })
            .collect();
        assert_eq!(collected, [true, false, false, true, false, false]);
    }

    #[test]
    fn top_values_are_exact_while_few_and_bounded_when_many() {
        let mut top = TopValues::default();
        for v in ["a", "b", "a", "c", "a", "b"] {
            top.add(v, 4);
        }
        let mut e = top.entries.clone();
        e.sort_by_key(|x| std::cmp::Reverse(x.1));
        assert_eq!((&*e[0].0, e[0].1), ("a", 3));
        for i in 0..100 {
            top.add(&format!("x{i}"), 4);
        }
        assert_eq!(top.entries.len(), 4);
    }
}
