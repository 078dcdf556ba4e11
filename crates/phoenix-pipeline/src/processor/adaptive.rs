//! `adaptive`: keep what is interesting, fold the stable rest.
//!
//! A series unit is kept individually when one of its series is anomalous (its rate for
//! counters, its value for gauges, deviates from an exponentially weighted moving baseline
//! by more than `z_threshold` deviations), when it carries errors (matches an error
//! selector and has a non-zero increase or value), or, optionally, when it ranks among the
//! `keep_top_k` per family or within a global `budget` of stable units. Kept units stay for
//! `hold_batches` after their last trigger. The stable rest is aggregated `without` the
//! listed labels (or folded into one `other` series per metric), counters staying
//! monotonic.

use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};

use super::fold::{AggregateOp, CumulativeTracker, Folder};
use super::topk::{family_hash, select_top, INCUMBENT_BONUS};
use super::{
    kept_labels, parse_selectors, syms, unit_id, FieldError, Processor, ProcessorStats,
    DEFAULT_KEEP_LABELS, FOLDED_LABEL,
};
use crate::model::{Batch, Labels, Series, SeriesId, Sym};
use crate::selector::{any_matches, Selector};

fn default_z_threshold() -> f64 {
    3.0
}
fn default_alpha() -> f64 {
    0.2
}
fn default_warmup_batches() -> u32 {
    3
}
fn default_hold_batches() -> u32 {
    10
}
fn default_min_relative_deviation() -> f64 {
    0.1
}
fn default_error_selectors() -> Vec<String> {
    vec![
        r#"{status=~"5.."}"#.to_string(),
        r#"{code=~"5.."}"#.to_string(),
        r#"{__name__=~".*(error|errors|fail|failed|failures|exception|exceptions).*"}"#.to_string(),
    ]
}
fn default_keep_labels() -> Vec<String> {
    DEFAULT_KEEP_LABELS.iter().map(|s| s.to_string()).collect()
}

/// Configuration of `adaptive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// Deviations from the baseline that make a sample anomalous.
    #[serde(default = "default_z_threshold")]
    pub z_threshold: f64,
    /// Weight of a new sample in the moving baseline, in (0, 1].
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Samples a series needs before it can be judged anomalous.
    #[serde(default = "default_warmup_batches")]
    pub warmup_batches: u32,
    /// Batches a unit stays kept after its last trigger.
    #[serde(default = "default_hold_batches")]
    pub hold_batches: u32,
    /// Floor of the deviation as a share of the baseline mean (quiets flat series).
    #[serde(default = "default_min_relative_deviation")]
    pub min_relative_deviation: f64,
    /// Selectors of error-carrying series.
    #[serde(default = "default_error_selectors")]
    pub error_selectors: Vec<String>,
    /// Only matching series are considered (all when empty); others pass.
    #[serde(default, rename = "match")]
    pub match_selectors: Vec<String>,
    /// Stable units kept individually per family, by score (the hybrid mode).
    #[serde(default)]
    pub keep_top_k: Option<usize>,
    /// Stable units kept individually over all families, by score.
    #[serde(default)]
    pub budget: Option<usize>,
    /// Labels removed when aggregating the stable rest; empty folds into `other`.
    #[serde(default)]
    pub without: Vec<String>,
    /// Labels kept on folded series and ignored when forming units.
    #[serde(default = "default_keep_labels")]
    pub keep_labels: Vec<String>,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            z_threshold: default_z_threshold(),
            alpha: default_alpha(),
            warmup_batches: default_warmup_batches(),
            hold_batches: default_hold_batches(),
            min_relative_deviation: default_min_relative_deviation(),
            error_selectors: default_error_selectors(),
            match_selectors: Vec::new(),
            keep_top_k: None,
            budget: None,
            without: Vec::new(),
            keep_labels: default_keep_labels(),
        }
    }
}

impl AdaptiveConfig {
    /// Validates and builds the processor.
    pub fn build(&self) -> Result<AdaptiveProcessor, Vec<FieldError>> {
        let mut errors = Vec::new();
        if !(self.z_threshold > 0.0 && self.z_threshold.is_finite()) {
            errors.push(FieldError::new("z_threshold", "must be greater than 0"));
        }
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            errors.push(FieldError::new(
                "alpha",
                "must be greater than 0 and at most 1",
            ));
        }
        if !(self.min_relative_deviation >= 0.0 && self.min_relative_deviation.is_finite()) {
            errors.push(FieldError::new(
                "min_relative_deviation",
                "must be 0 or more",
            ));
        }
        if self.keep_top_k == Some(0) {
            errors.push(FieldError::new("keep_top_k", "must be greater than 0"));
        }
        if self.budget == Some(0) {
            errors.push(FieldError::new("budget", "must be greater than 0"));
        }
        if self.keep_top_k.is_some() && self.budget.is_some() {
            errors.push(FieldError::new(
                "budget",
                "set either keep_top_k or budget, not both",
            ));
        }
        let (error_names, error_labels): (Vec<Selector>, Vec<Selector>) =
            parse_selectors("error_selectors", &self.error_selectors, &mut errors)
                .into_iter()
                .partition(|s| {
                    s.matchers()
                        .iter()
                        .all(|m| m.name == crate::model::METRIC_NAME_LABEL)
                });
        let selectors = parse_selectors("match", &self.match_selectors, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(AdaptiveProcessor {
            config: self.clone(),
            error_names,
            error_name_cache: HashMap::default(),
            error_labels,
            selectors,
            keep_labels: syms(&self.keep_labels),
            without: syms(&self.without),
            baselines: HashMap::default(),
            units: HashMap::default(),
            tracker: CumulativeTracker::default(),
            folder: Folder::default(),
            batch_index: 0,
            stats: ProcessorStats::default(),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Baseline {
    mean: f64,
    variance: f64,
    samples: u32,
    last_timestamp_ms: i64,
    batch_index: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct UnitState {
    score: f64,
    kept: bool,
    ever_kept: bool,
    hold_until_batch: u64,
    batch_index: u64,
}

/// The running `adaptive`.
#[derive(Debug)]
pub struct AdaptiveProcessor {
    config: AdaptiveConfig,
    /// Error selectors on the metric name alone, answered once per name (the cache).
    error_names: Vec<Selector>,
    error_name_cache: HashMap<Sym, bool, ahash::RandomState>,
    /// Error selectors on other labels, run per series.
    error_labels: Vec<Selector>,
    selectors: Vec<Selector>,
    keep_labels: Vec<Sym>,
    without: Vec<Sym>,
    baselines: HashMap<SeriesId, Baseline, ahash::RandomState>,
    units: HashMap<u64, UnitState, ahash::RandomState>,
    tracker: CumulativeTracker,
    folder: Folder,
    batch_index: u64,
    stats: ProcessorStats,
}

/// Keeps adaptive group ids apart from other processors' groups.
const ADAPTIVE_GROUP_SALT: u64 = 0x6164_6170;

/// Batches a series may stay unseen before its baseline is forgotten.
const IDLE_BATCHES_BEFORE_EXPIRY: u64 = 100;

/// Metric names whose error-selector answer is remembered before the cache starts over.
const ERROR_NAME_CACHE_CAPACITY: usize = 10_000;

impl AdaptiveProcessor {
    /// Updates the baseline of one series with `signal` and says whether it was anomalous.
    fn observe(&mut self, id: SeriesId, signal: f64, timestamp_ms: i64) -> bool {
        let config = &self.config;
        let batch_index = self.batch_index;
        let Some(baseline) = self.baselines.get_mut(&id) else {
            self.baselines.insert(
                id,
                Baseline {
                    mean: signal,
                    variance: 0.0,
                    samples: 1,
                    last_timestamp_ms: timestamp_ms,
                    batch_index,
                },
            );
            return false;
        };
        if baseline.samples == 0 {
            baseline.mean = signal;
            baseline.samples = 1;
            baseline.last_timestamp_ms = timestamp_ms;
            baseline.batch_index = batch_index;
            return false;
        }
        let deviation = (signal - baseline.mean).abs();
        let scale = baseline
            .variance
            .sqrt()
            .max(config.min_relative_deviation * baseline.mean.abs())
            .max(1e-9);
        let anomalous =
            baseline.samples >= config.warmup_batches && deviation / scale > config.z_threshold;
        // Anomalous samples move the baseline less, so a burst stays visible.
        let alpha = if anomalous {
            config.alpha / 4.0
        } else {
            config.alpha
        };
        let diff = signal - baseline.mean;
        baseline.mean += alpha * diff;
        baseline.variance = (1.0 - alpha) * (baseline.variance + alpha * diff * diff);
        baseline.samples = baseline.samples.saturating_add(1);
        baseline.last_timestamp_ms = timestamp_ms;
        baseline.batch_index = batch_index;
        anomalous
    }

    fn last_timestamp_ms(&self, id: SeriesId) -> Option<i64> {
        self.baselines.get(&id).map(|b| b.last_timestamp_ms)
    }

    /// Whether an error selector matches the series: those on the metric name alone are
    /// answered from the per-name cache (a regex over every series' name was ~6 % of the
    /// processor's time), the others run.
    fn matches_error(&mut self, series: &Series) -> bool {
        if !self.error_names.is_empty() {
            let by_name = match self.error_name_cache.get(&series.name) {
                Some(matched) => *matched,
                None => {
                    if self.error_name_cache.len() >= ERROR_NAME_CACHE_CAPACITY {
                        self.error_name_cache.clear();
                    }
                    let matched = any_matches(&self.error_names, series);
                    self.error_name_cache.insert(series.name.clone(), matched);
                    matched
                }
            };
            if by_name {
                return true;
            }
        }
        any_matches(&self.error_labels, series)
    }
}

fn stable_group_key(series: &Series, without: &[Sym]) -> u64 {
    crate::model::hash_name_and_labels(
        &series.name,
        series
            .labels
            .iter()
            .filter(|l| !crate::processor::contains_name(without, l.name))
            .map(|l| (l.name, l.value)),
    )
}

impl Processor for AdaptiveProcessor {
    fn kind(&self) -> &'static str {
        "adaptive"
    }

    fn process(&mut self, batch: Batch) -> Batch {
        self.batch_index += 1;
        self.tracker.begin_batch();
        let batch_index = self.batch_index;
        let hold = u64::from(self.config.hold_batches);
        let mut out = Vec::with_capacity(batch.series.len() / 4 + 1);
        let mut considered: Vec<(Series, u64, Option<f64>)> =
            Vec::with_capacity(batch.series.len());
        let mut unit_rows: HashMap<u64, (u64, f64), ahash::RandomState> = HashMap::default();
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
            let id = series.id();
            let unit = unit_id(&series, &self.keep_labels);
            let (increase, signal) = if series.is_cumulative() {
                let previous_ms = self.last_timestamp_ms(id);
                let increase = self.tracker.observe(id, last.value);
                let signal = match (increase, previous_ms) {
                    (Some(increase), Some(previous_ms)) if last.timestamp_ms > previous_ms => {
                        Some(increase * 1000.0 / (last.timestamp_ms - previous_ms) as f64)
                    }
                    (Some(increase), _) => Some(increase),
                    (None, _) => None,
                };
                (increase, signal)
            } else if last.value.is_nan() {
                (None, None)
            } else {
                (None, Some(last.value))
            };
            let anomalous = match signal {
                Some(signal) => self.observe(id, signal, last.timestamp_ms),
                None => {
                    // Register the series so its next sample has a time reference.
                    if !self.baselines.contains_key(&id) && series.is_cumulative() {
                        self.baselines.insert(
                            id,
                            Baseline {
                                mean: 0.0,
                                variance: 0.0,
                                samples: 0,
                                last_timestamp_ms: last.timestamp_ms,
                                batch_index,
                            },
                        );
                    }
                    false
                }
            };
            let nonzero = match increase {
                Some(increase) => increase > 0.0,
                None => !series.is_cumulative() && last.value != 0.0 && !last.value.is_nan(),
            };
            let carries_error = nonzero && self.matches_error(&series);
            let state = self.units.entry(unit).or_default();
            if anomalous || carries_error {
                state.hold_until_batch = batch_index + hold;
            }
            state.batch_index = batch_index;
            let contribution = match increase {
                Some(increase) => increase,
                None if series.is_cumulative() => 0.0,
                None => last.value.abs(),
            };
            let row = unit_rows.entry(unit).or_insert((family_hash(&series), 0.0));
            row.1 += if contribution.is_nan() {
                0.0
            } else {
                contribution
            };
            considered.push((series, unit, increase));
        }

        // Units kept for a trigger, then by rank among the stable rest.
        let mut kept: HashSet<u64, ahash::RandomState> = HashSet::default();
        let mut stable_rows = Vec::new();
        for (unit, (family, contribution)) in &unit_rows {
            let state = self.units.entry(*unit).or_default();
            state.score = state.score * 0.5 + contribution;
            if state.hold_until_batch >= batch_index {
                kept.insert(*unit);
            } else {
                let bonus = if state.kept { INCUMBENT_BONUS } else { 1.0 };
                stable_rows.push((*family, *unit, state.score * bonus));
            }
        }
        if let Some(k) = self.config.keep_top_k {
            kept.extend(select_top(&mut stable_rows, k));
        } else if let Some(budget) = self.config.budget {
            stable_rows.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.1.cmp(&b.1)));
            kept.extend(stable_rows.iter().take(budget).map(|r| r.1));
        }

        let mut promoted: HashSet<u64, ahash::RandomState> = HashSet::default();
        for unit in unit_rows.keys() {
            if let Some(state) = self.units.get_mut(unit) {
                let now_kept = kept.contains(unit);
                if now_kept && !state.ever_kept {
                    promoted.insert(*unit);
                }
                state.kept = now_kept;
                state.ever_kept |= now_kept;
            }
        }
        for (series, unit, increase) in considered {
            let is_kept = kept.contains(&unit);
            if is_kept && !(promoted.contains(&unit) && increase.is_some()) {
                self.stats.passed(&series.name);
                out.push(series);
                continue;
            }
            // The group's labels are built only when the group is new (most series join
            // one that exists): `make` runs once per group, not once per series.
            let without = &self.without;
            let (group, other_labels) = if without.is_empty() {
                let kept_set = kept_labels(&series.labels, &self.keep_labels);
                let group =
                    crate::model::series_id(&series.name, &kept_set).0 ^ ADAPTIVE_GROUP_SALT;
                (group, Some(kept_set))
            } else {
                (stable_group_key(&series, without), None)
            };
            let make = || {
                let labels = match other_labels {
                    Some(mut labels) => {
                        labels.set(FOLDED_LABEL, "other");
                        labels
                    }
                    None => {
                        let mut labels: Labels = series.labels.clone();
                        labels.retain(|l| !crate::processor::contains_name(without, l.name));
                        labels.set(FOLDED_LABEL, "aggregated");
                        labels
                    }
                };
                (series.name.clone(), labels)
            };
            if is_kept {
                // Just promoted: its last increase stays with the group it leaves.
                if let Some(increase) = increase {
                    self.folder.add_increase(group, &series, increase, make);
                }
                self.stats.passed(&series.name);
                out.push(series);
                continue;
            }
            self.stats.folded(&series.name);
            self.folder.add(group, &series, increase, make);
        }
        let stats = &mut self.stats;
        self.folder.drain(&[AggregateOp::Sum], |s| {
            stats.emitted(&s.name);
            out.push(s);
        });
        if batch_index.is_multiple_of(64) {
            let horizon = batch_index.saturating_sub(IDLE_BATCHES_BEFORE_EXPIRY);
            self.baselines.retain(|_, b| b.batch_index >= horizon);
            self.units.retain(|_, u| u.batch_index >= horizon);
        }
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
    use crate::model::{MetricKind, Sample};

    fn counter(name: &str, pod: &str, status: Option<&str>, value: f64, ts: i64) -> Series {
        let mut pairs = vec![("pod", pod)];
        pairs.extend(status.map(|s| ("status", s)));
        Series::new(
            Sym::from(name),
            Labels::from_pairs(pairs),
            MetricKind::Counter,
            vec![Sample::new(ts, value)],
        )
    }

    /// Pods of the batch's series still carrying their own `pod` label (kept individually).
    fn kept_pods(batch: &Batch) -> Vec<String> {
        let mut pods: Vec<String> = batch
            .series
            .iter()
            .filter_map(|s| s.label("pod").map(|p| format!("{}/{p}", s.name)))
            .collect();
        pods.sort();
        pods
    }

    #[test]
    fn error_carrying_series_are_kept_by_label_and_by_name_only_while_they_increase() {
        let mut adaptive = AdaptiveConfig {
            without: vec!["pod".into()],
            ..AdaptiveConfig::default()
        }
        .build()
        .unwrap();
        // Same increase every batch for everyone: nothing is anomalous, only errors stand out.
        for tick in 0..4_i64 {
            let grow = 10.0 * tick as f64;
            let ts = 1_700_000_000_000 + tick * 15_000;
            let batch = Batch::new(vec![
                counter("http_requests_total", "a", Some("200"), 100.0 + grow, ts),
                counter("http_requests_total", "b", Some("200"), 100.0 + grow, ts),
                counter("http_requests_total", "e", Some("500"), 100.0 + grow, ts),
                counter("http_requests_total", "f", Some("503"), 100.0, ts),
                counter("job_failures_total", "g", None, 100.0 + grow, ts),
                counter("job_failures_total", "h", None, 100.0, ts),
            ]);
            let out = adaptive.process(batch);
            let kept = kept_pods(&out);
            if tick == 0 {
                // No increase yet: nothing carries an error, everything is folded.
                assert!(kept.is_empty(), "{kept:?}");
            } else {
                // The 5xx series that grows (label selector) and the `failures` counter
                // that grows (name selector, answered from the cache after the first
                // batch) are kept; the ones that do not grow are folded.
                assert_eq!(
                    kept,
                    ["http_requests_total/e", "job_failures_total/g"],
                    "tick {tick}"
                );
            }
        }
        assert_eq!(adaptive.error_name_cache.len(), 2);
        assert_eq!(adaptive.error_names.len(), 1);
        assert_eq!(adaptive.error_labels.len(), 2);
    }
}
