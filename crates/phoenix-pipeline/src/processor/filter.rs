//! `filter`: keeps or drops series by PromQL-style selectors.
//!
//! A series passes when it matches at least one `keep` selector (or `keep` is empty) and
//! no `drop` selector.

use serde::{Deserialize, Serialize};

use super::{parse_selectors, FieldError, Processor, ProcessorStats};
use crate::model::Batch;
use crate::selector::{any_matches, Selector};

/// Configuration of `filter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Series must match one of these (all series when empty).
    #[serde(default)]
    pub keep: Vec<String>,
    /// Series matching one of these are dropped.
    #[serde(default)]
    pub drop: Vec<String>,
}

impl FilterConfig {
    /// Validates and builds the processor.
    pub fn build(&self) -> Result<FilterProcessor, Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.keep.is_empty() && self.drop.is_empty() {
            errors.push(FieldError::new(
                "keep",
                "either keep or drop must list a selector",
            ));
        }
        let keep = parse_selectors("keep", &self.keep, &mut errors);
        let drop = parse_selectors("drop", &self.drop, &mut errors);
        if errors.is_empty() {
            Ok(FilterProcessor {
                keep,
                drop,
                stats: ProcessorStats::default(),
            })
        } else {
            Err(errors)
        }
    }
}

/// The running `filter`.
#[derive(Debug)]
pub struct FilterProcessor {
    keep: Vec<Selector>,
    drop: Vec<Selector>,
    stats: ProcessorStats,
}

impl Processor for FilterProcessor {
    fn kind(&self) -> &'static str {
        "filter"
    }

    fn process(&mut self, mut batch: Batch) -> Batch {
        let stats = &mut self.stats;
        let (keep, drop) = (&self.keep, &self.drop);
        batch.series.retain(|series| {
            stats.received(&series.name);
            let pass = (keep.is_empty() || any_matches(keep, series)) && !any_matches(drop, series);
            if pass {
                stats.passed(&series.name);
            } else {
                stats.dropped(&series.name);
            }
            pass
        });
        batch
    }

    fn stats(&self) -> &ProcessorStats {
        &self.stats
    }

    fn reset_stats(&mut self) {
        self.stats.reset();
    }
}
