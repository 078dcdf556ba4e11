//! `aggregate`: folds series into groups `by` (or `without`) labels.
//!
//! Outputs sum (keeping the metric name), count, min, max and avg (`<name>:<op>`). `le` and
//! `quantile` always stay on the groups unless listed in `without`, so histogram buckets
//! merge per bucket. Cumulative sums stay monotonic across series churn (see
//! [`super::fold`]). One sample per group per batch, stamped with the newest member's time.

use serde::{Deserialize, Serialize};

use super::fold::{AggregateOp, CumulativeTracker, Folder};
use super::{parse_selectors, FieldError, Processor, ProcessorStats, DEFAULT_KEEP_LABELS};
use crate::model::{Batch, Labels, Series, Sym};
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
    fn keeps(&self, name: &Sym) -> bool {
        match self {
            Self::By(by) => by.contains(name),
            Self::Without(without) => !without.contains(name),
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
                tracker: CumulativeTracker::default(),
                folder: Folder::default(),
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
    tracker: CumulativeTracker,
    folder: Folder,
    stats: ProcessorStats,
}

fn group_key(series: &Series, grouping: &Grouping) -> u64 {
    crate::model::hash_name_and_labels(
        &series.name,
        series
            .labels
            .iter()
            .filter(|l| grouping.keeps(&l.name))
            .map(|l| (&*l.name, &*l.value)),
    )
}

impl Processor for AggregateProcessor {
    fn kind(&self) -> &'static str {
        "aggregate"
    }

    fn process(&mut self, batch: Batch) -> Batch {
        self.tracker.begin_batch();
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
            let increase = if series.is_cumulative() {
                self.tracker.observe(series.id(), last.value)
            } else {
                None
            };
            let grouping = &self.grouping;
            self.folder
                .add(group_key(&series, grouping), &series, increase, || {
                    // Only the kept labels are cloned (still sorted and unique).
                    let kept: Vec<_> = series
                        .labels
                        .iter()
                        .filter(|l| grouping.keeps(&l.name))
                        .cloned()
                        .collect();
                    let labels = Labels::from_sorted(kept).unwrap_or_else(Labels::from_unsorted);
                    (series.name.clone(), labels)
                });
            self.stats.folded(&series.name);
        }
        let stats = &mut self.stats;
        self.folder.drain(&self.outputs, |s| {
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
