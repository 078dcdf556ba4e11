//! `sample`: deterministic hash-based series sampling.
//!
//! A series is kept when the xxh3 hash of its unit (family and labels minus `le` and
//! `quantile`, so histograms stay whole) falls under `rate`. The hash depends only on the
//! series, so every host keeps the same series.

use serde::{Deserialize, Serialize};

use super::{
    parse_selectors, syms, unit_id, FieldError, Processor, ProcessorStats, DEFAULT_KEEP_LABELS,
};
use crate::model::{Batch, Sym};
use crate::selector::{any_matches, Selector};

/// Resolution of the sampling rate.
const RATE_BUCKETS: u64 = 1_000_000;

/// Configuration of `sample`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Share of series kept, in (0, 1].
    pub rate: f64,
    /// Only series matching one of these are sampled (all when empty).
    #[serde(default, rename = "match")]
    pub match_selectors: Vec<String>,
}

impl SampleConfig {
    /// Validates and builds the processor.
    pub fn build(&self) -> Result<SampleProcessor, Vec<FieldError>> {
        let mut errors = Vec::new();
        if !(self.rate > 0.0 && self.rate <= 1.0) {
            errors.push(FieldError::new(
                "rate",
                "must be greater than 0 and at most 1",
            ));
        }
        let selectors = parse_selectors("match", &self.match_selectors, &mut errors);
        if errors.is_empty() {
            Ok(SampleProcessor {
                threshold: (self.rate * RATE_BUCKETS as f64).round() as u64,
                selectors,
                keep_labels: syms(
                    &DEFAULT_KEEP_LABELS
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                ),
                stats: ProcessorStats::default(),
            })
        } else {
            Err(errors)
        }
    }
}

/// The running `sample`.
#[derive(Debug)]
pub struct SampleProcessor {
    threshold: u64,
    selectors: Vec<Selector>,
    keep_labels: Vec<Sym>,
    stats: ProcessorStats,
}

impl Processor for SampleProcessor {
    fn kind(&self) -> &'static str {
        "sample"
    }

    fn process(&mut self, mut batch: Batch) -> Batch {
        let (threshold, selectors, keep_labels, stats) = (
            self.threshold,
            &self.selectors,
            &self.keep_labels,
            &mut self.stats,
        );
        batch.series.retain(|series| {
            stats.received(&series.name);
            let subject = selectors.is_empty() || any_matches(selectors, series);
            let keep = !subject || unit_id(series, keep_labels) % RATE_BUCKETS < threshold;
            if keep {
                stats.passed(&series.name);
            } else {
                stats.dropped(&series.name);
            }
            keep
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
