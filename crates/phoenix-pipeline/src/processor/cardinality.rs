//! `cardinality_limit`: a per-metric ceiling on active series.
//!
//! The first `limit` series of a metric are admitted and pass; later ones are folded into
//! one overflow series per metric (`phoenix_folded="overflow"`), counted, never silently
//! lost. A series unseen for `stale_after` frees its slot. With the default empty
//! `keep_labels`, a metric never has more than `limit + 1` output series.

use std::time::Duration;

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use super::fold::{AggregateOp, CumulativeTracker, Folder};
use super::{
    kept_labels, parse_selectors, syms, FieldError, Processor, ProcessorStats, FOLDED_LABEL,
};
use crate::model::{Batch, SeriesId, Sym};
use crate::selector::{any_matches, Selector};

fn default_stale_after() -> Duration {
    Duration::from_secs(600)
}

/// Configuration of `cardinality_limit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardinalityLimitConfig {
    /// Maximum admitted series per metric name.
    pub limit: usize,
    /// A series unseen this long frees its slot.
    #[serde(default = "default_stale_after", with = "humantime_serde")]
    pub stale_after: Duration,
    /// Only matching series are limited (all when empty); others pass.
    #[serde(default, rename = "match")]
    pub match_selectors: Vec<String>,
    /// Labels kept on the overflow series (none by default: exactly one per metric).
    #[serde(default)]
    pub keep_labels: Vec<String>,
}

impl CardinalityLimitConfig {
    /// Validates and builds the processor.
    pub fn build(&self) -> Result<CardinalityLimitProcessor, Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.limit == 0 {
            errors.push(FieldError::new("limit", "must be greater than 0"));
        }
        if self.stale_after.is_zero() {
            errors.push(FieldError::new("stale_after", "must be greater than 0"));
        }
        let selectors = parse_selectors("match", &self.match_selectors, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CardinalityLimitProcessor {
            limit: self.limit,
            stale_after_ms: i64::try_from(self.stale_after.as_millis()).unwrap_or(i64::MAX),
            selectors,
            keep_labels: syms(&self.keep_labels),
            admitted: HashMap::default(),
            tracker: CumulativeTracker::default(),
            folder: Folder::default(),
            batch_index: 0,
            overflow_series_total: 0,
            stats: ProcessorStats::default(),
        })
    }
}

/// The running `cardinality_limit`.
#[derive(Debug)]
pub struct CardinalityLimitProcessor {
    limit: usize,
    stale_after_ms: i64,
    selectors: Vec<Selector>,
    keep_labels: Vec<Sym>,
    admitted: HashMap<Sym, HashMap<SeriesId, i64, ahash::RandomState>, ahash::RandomState>,
    tracker: CumulativeTracker,
    folder: Folder,
    batch_index: u64,
    overflow_series_total: u64,
    stats: ProcessorStats,
}

impl CardinalityLimitProcessor {
    /// Series folded into overflow since start (over all batches).
    pub fn overflow_series_total(&self) -> u64 {
        self.overflow_series_total
    }
}

impl Processor for CardinalityLimitProcessor {
    fn kind(&self) -> &'static str {
        "cardinality_limit"
    }

    fn process(&mut self, batch: Batch) -> Batch {
        self.batch_index += 1;
        self.tracker.begin_batch();
        let mut newest_ms = i64::MIN;
        let mut out = Vec::with_capacity(batch.series.len());
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
            newest_ms = newest_ms.max(last.timestamp_ms);
            let id = series.id();
            let increase = if series.is_cumulative() {
                self.tracker.observe(id, last.value)
            } else {
                None
            };
            let admitted = self.admitted.entry(series.name.clone()).or_default();
            let admit = if let Some(seen) = admitted.get_mut(&id) {
                *seen = (*seen).max(last.timestamp_ms);
                true
            } else if admitted.len() < self.limit {
                admitted.insert(id, last.timestamp_ms);
                true
            } else {
                false
            };
            if admit {
                self.stats.passed(&series.name);
                out.push(series);
                continue;
            }
            self.stats.folded(&series.name);
            self.overflow_series_total += 1;
            let keep_labels = &self.keep_labels;
            let kept = kept_labels(&series.labels, keep_labels);
            let group = crate::model::series_id(&series.name, &kept).0 ^ 0x6f76_6572_666c; // "overfl"
            self.folder.add(group, &series, increase, || {
                let mut labels = kept;
                labels.set(FOLDED_LABEL, "overflow");
                (series.name.clone(), labels)
            });
        }
        let stats = &mut self.stats;
        self.folder.drain(&[AggregateOp::Sum], |s| {
            stats.emitted(&s.name);
            out.push(s);
        });
        if newest_ms != i64::MIN {
            let horizon = newest_ms.saturating_sub(self.stale_after_ms);
            for set in self.admitted.values_mut() {
                set.retain(|_, seen| *seen >= horizon);
            }
            self.admitted.retain(|_, set| !set.is_empty());
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
