//! `relabel`: Prometheus `relabel_configs` applied to every series (see [`crate::relabel`]).
//! Series the rules make identical within a batch are dropped after the first, counted.

use serde::{Deserialize, Serialize};

use super::{FieldError, Processor, ProcessorStats};
use crate::model::Batch;
use crate::relabel::{relabel_series_cached, NameMatchCache, RelabelConfig, RelabelRule};

/// Configuration of `relabel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelabelProcessorConfig {
    /// The rules, applied in order.
    pub rules: Vec<RelabelConfig>,
}

impl RelabelProcessorConfig {
    /// Validates and builds the processor.
    pub fn build(&self) -> Result<RelabelProcessor, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        if self.rules.is_empty() {
            errors.push(FieldError::new("rules", "must list at least one rule"));
        }
        for (i, config) in self.rules.iter().enumerate() {
            match RelabelRule::new(config.clone()) {
                Ok(rule) => rules.push(rule),
                Err(e) => errors.push(FieldError::new(
                    format!("rules[{i}].{}", e.field),
                    e.message,
                )),
            }
        }
        if errors.is_empty() {
            Ok(RelabelProcessor {
                rules,
                cache: NameMatchCache::default(),
                seen: hashbrown::HashSet::default(),
                stats: ProcessorStats::default(),
            })
        } else {
            Err(errors)
        }
    }
}

/// The running `relabel`.
#[derive(Debug)]
pub struct RelabelProcessor {
    rules: Vec<RelabelRule>,
    cache: NameMatchCache,
    /// Ids kept in the current batch; emptied, not freed, between batches.
    seen: hashbrown::HashSet<crate::model::SeriesId, ahash::RandomState>,
    stats: ProcessorStats,
}

impl Processor for RelabelProcessor {
    fn kind(&self) -> &'static str {
        "relabel"
    }

    fn process(&mut self, mut batch: Batch) -> Batch {
        let (rules, cache, seen, stats) = (
            &self.rules,
            &mut self.cache,
            &mut self.seen,
            &mut self.stats,
        );
        // Rules may make two series identical (e.g. `labeldrop` of the label telling them
        // apart). Like Prometheus' storage, keep the first and drop the rest (counted), so
        // later stages never see two values for one series in a batch.
        // A set sized for an unusually large batch is not kept at that size.
        if seen.capacity() > 4 * batch.series.len().max(1 << 14) {
            *seen = hashbrown::HashSet::default();
        }
        seen.clear();
        seen.reserve(batch.series.len());
        let mut ids = crate::model::SeriesIds::default();
        batch.series.retain_mut(|series| {
            let metric = series.name.clone();
            stats.received(&metric);
            let keep = relabel_series_cached(rules, series, cache) && seen.insert(ids.id(series));
            if keep {
                stats.passed(&metric);
            } else {
                stats.dropped(&metric);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Label, Labels, MetricKind, Sample, Series, Sym};

    #[test]
    fn series_made_identical_by_the_rules_are_kept_once_and_counted() {
        let config: RelabelProcessorConfig =
            serde_yaml::from_str("rules: [{action: labeldrop, regex: pod}]").unwrap();
        let mut processor = config.build().unwrap();
        let series = |pod: &str, v: f64| {
            Series::new(
                Sym::from("requests_total"),
                Labels::from_unsorted(vec![
                    Label::new(Sym::from("pod"), Sym::from(pod)),
                    Label::new(Sym::from("job"), Sym::from("api")),
                ]),
                MetricKind::Counter,
                vec![Sample::new(1, v)],
            )
        };
        let out = processor.process(Batch::new(vec![series("a", 1.0), series("b", 2.0)]));
        assert_eq!(out.len(), 1);
        assert_eq!(out.series[0].samples[0].value, 1.0);
        let counts = processor.stats().metric("requests_total");
        assert_eq!((counts.received, counts.passed, counts.dropped), (2, 1, 1));
    }
}
