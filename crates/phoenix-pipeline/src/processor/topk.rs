//! `topk`: per metric family, keep the K series units contributing most over a window and
//! fold the rest into one `other` series per metric (per `le`/`quantile`), so totals hold.
//!
//! A unit is a series without its `le`/`quantile` labels, so a histogram is kept or folded
//! whole. Its score decays exponentially with the configured window: counters score by
//! their increase, gauges by their absolute value. Ties break on the unit hash, so the
//! choice is deterministic.

use std::time::Duration;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use super::fold::{AggregateOp, CumulativeTracker, Folder};
use super::{
    family_name, kept_labels, parse_selectors, syms, unit_id, FieldError, Processor,
    ProcessorStats, DEFAULT_KEEP_LABELS, FOLDED_LABEL,
};
use crate::model::{Batch, Series, Sym};
use crate::selector::{any_matches, Selector};

fn default_window() -> Duration {
    Duration::from_secs(300)
}

fn default_keep_labels() -> Vec<String> {
    DEFAULT_KEEP_LABELS.iter().map(|s| s.to_string()).collect()
}

/// Configuration of `topk`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopkConfig {
    /// Units kept per metric family.
    pub k: usize,
    /// Scoring window (exponential decay time constant).
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// Only matching series are ranked (all when empty); others pass.
    #[serde(default, rename = "match")]
    pub match_selectors: Vec<String>,
    /// Labels kept on the `other` series and ignored when forming units.
    #[serde(default = "default_keep_labels")]
    pub keep_labels: Vec<String>,
}

impl TopkConfig {
    /// Validates and builds the processor.
    pub fn build(&self) -> Result<TopkProcessor, Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.k == 0 {
            errors.push(FieldError::new("k", "must be greater than 0"));
        }
        if self.window.is_zero() {
            errors.push(FieldError::new("window", "must be greater than 0"));
        }
        let selectors = parse_selectors("match", &self.match_selectors, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(TopkProcessor {
            k: self.k,
            window_ms: self.window.as_millis().max(1) as f64,
            selectors,
            keep_labels: syms(&self.keep_labels),
            units: HashMap::default(),
            tracker: CumulativeTracker::default(),
            folder: Folder::default(),
            batch_index: 0,
            stats: ProcessorStats::default(),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct UnitScore {
    score: f64,
    in_top: bool,
    ever_top: bool,
    last_timestamp_ms: i64,
    batch_index: u64,
}

/// The running `topk`.
#[derive(Debug)]
pub struct TopkProcessor {
    k: usize,
    window_ms: f64,
    selectors: Vec<Selector>,
    keep_labels: Vec<Sym>,
    units: HashMap<u64, UnitScore, ahash::RandomState>,
    tracker: CumulativeTracker,
    folder: Folder,
    batch_index: u64,
    stats: ProcessorStats,
}

/// Score multiplier of units already in the top: a challenger must beat an incumbent by
/// this factor, so near-equal units do not flap between `other` and the top (every flap
/// would make a backend count some increase twice).
pub(crate) const INCUMBENT_BONUS: f64 = 1.5;

/// Keeps `other` group ids apart from other processors' groups.
const OTHER_GROUP_SALT: u64 = 0x006f_7468_6572;

/// Batches a unit may stay unseen before its score is forgotten.
const IDLE_BATCHES_BEFORE_EXPIRY: u64 = 100;

impl TopkProcessor {
    /// Whether a unit is currently among the top K (for tests and the adaptive processor).
    pub fn unit_count(&self) -> usize {
        self.units.len()
    }
}

/// Picks the top `k` units per family from `(family_hash, unit, score)` rows.
pub(crate) fn select_top(
    rows: &mut [(u64, u64, f64)],
    k: usize,
) -> hashbrown::HashSet<u64, ahash::RandomState> {
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.total_cmp(&a.2)).then(a.1.cmp(&b.1)));
    let mut top = hashbrown::HashSet::default();
    let mut current_family = None;
    let mut taken = 0;
    for (family, unit, _) in rows.iter() {
        if current_family != Some(*family) {
            current_family = Some(*family);
            taken = 0;
        }
        if taken < k {
            top.insert(*unit);
            taken += 1;
        }
    }
    top
}

pub(crate) fn family_hash(series: &Series) -> u64 {
    xxhash_rust::xxh3::xxh3_64(family_name(series).as_bytes())
}

impl Processor for TopkProcessor {
    fn kind(&self) -> &'static str {
        "topk"
    }

    fn process(&mut self, batch: Batch) -> Batch {
        self.batch_index += 1;
        self.tracker.begin_batch();
        let mut out = Vec::with_capacity(batch.series.len() / 2 + 1);
        let mut ranked: Vec<(Series, u64, Option<f64>)> = Vec::with_capacity(batch.series.len());
        let mut contributions: HashMap<u64, (u64, f64, i64), ahash::RandomState> =
            HashMap::default();
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
            let unit = unit_id(&series, &self.keep_labels);
            let (increase, contribution) = if series.is_cumulative() {
                let increase = self.tracker.observe(series.id(), last.value);
                (increase, increase.unwrap_or(0.0))
            } else {
                (
                    None,
                    if last.value.is_nan() {
                        0.0
                    } else {
                        last.value.abs()
                    },
                )
            };
            let entry =
                contributions
                    .entry(unit)
                    .or_insert((family_hash(&series), 0.0, last.timestamp_ms));
            entry.1 += contribution;
            entry.2 = entry.2.max(last.timestamp_ms);
            ranked.push((series, unit, increase));
        }
        let mut rows = Vec::with_capacity(contributions.len());
        for (unit, (family, contribution, timestamp_ms)) in contributions {
            let batch_index = self.batch_index;
            let window_ms = self.window_ms;
            let state = self.units.entry(unit).or_insert(UnitScore {
                score: 0.0,
                in_top: false,
                ever_top: false,
                last_timestamp_ms: timestamp_ms,
                batch_index,
            });
            let elapsed_ms = (timestamp_ms - state.last_timestamp_ms).max(0) as f64;
            state.score = state.score * (-elapsed_ms / window_ms).exp() + contribution;
            state.last_timestamp_ms = timestamp_ms;
            state.batch_index = batch_index;
            let incumbent_bonus = if state.in_top { INCUMBENT_BONUS } else { 1.0 };
            rows.push((family, unit, state.score * incumbent_bonus));
        }
        let top = select_top(&mut rows, self.k);
        let mut promoted: hashbrown::HashSet<u64, ahash::RandomState> =
            hashbrown::HashSet::default();
        for (_, unit, _) in &rows {
            if let Some(state) = self.units.get_mut(unit) {
                let now_top = top.contains(unit);
                if now_top && !state.ever_top {
                    promoted.insert(*unit);
                }
                state.in_top = now_top;
                state.ever_top |= now_top;
            }
        }
        for (series, unit, increase) in ranked {
            let keep_labels = &self.keep_labels;
            let group = {
                let kept = kept_labels(&series.labels, keep_labels);
                crate::model::series_id(&series.name, &kept).0 ^ OTHER_GROUP_SALT
            };
            let make = || {
                let mut labels = kept_labels(&series.labels, keep_labels);
                labels.set(FOLDED_LABEL, "other");
                (series.name.clone(), labels)
            };
            if top.contains(&unit) {
                // First promotion: the backend sees a new series and counts no increase
                // for it yet, so this batch's increase stays with `other`.
                if let (true, Some(increase)) = (promoted.contains(&unit), increase) {
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
        if self.batch_index.is_multiple_of(64) {
            let horizon = self.batch_index.saturating_sub(IDLE_BATCHES_BEFORE_EXPIRY);
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
