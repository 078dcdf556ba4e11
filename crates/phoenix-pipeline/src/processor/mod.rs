//! Processors: the components that filter, rewrite and reduce batches of series.
//!
//! Each processor is built once from its validated configuration and then works batch by
//! batch, counting per metric how many series it received, passed unchanged, dropped and
//! folded into a new series (plus how many series it emitted of its own). The folding
//! machinery shared by `aggregate`, `topk`, `cardinality_limit` and `adaptive` lives in
//! [`fold`]: it keeps folded counters monotonic while their members come and go.

pub mod adaptive;
pub mod aggregate;
pub mod cardinality;
pub mod filter;
pub mod fold;
pub mod relabel;
pub mod sample;
pub mod topk;

use std::fmt;

use hashbrown::HashMap;

use crate::model::{Batch, Labels, Series, Sym};

/// Per-metric counts of what a processor did, in series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricCounts {
    /// Series received.
    pub received: u64,
    /// Series passed through individually.
    pub passed: u64,
    /// Series removed (filtered, sampled out, relabel-dropped).
    pub dropped: u64,
    /// Series merged into an aggregate, `other` or overflow series.
    pub folded: u64,
    /// Series the processor created (aggregates, `other`, overflow).
    pub emitted: u64,
}

impl MetricCounts {
    fn add(&mut self, other: &MetricCounts) {
        self.received += other.received;
        self.passed += other.passed;
        self.dropped += other.dropped;
        self.folded += other.folded;
        self.emitted += other.emitted;
    }
}

/// What a processor did, per metric name (the input metric name; emitted series count
/// under their own name).
///
/// Batches hold the series of one metric next to each other, so the counts of the current
/// run of one metric (recognised by its interned name's address) are kept aside and folded
/// into the map when the metric changes: no string hashing per series.
#[derive(Debug, Clone, Default)]
pub struct ProcessorStats {
    per_metric: HashMap<Sym, MetricCounts, ahash::RandomState>,
    run: Option<(Sym, MetricCounts)>,
}

impl ProcessorStats {
    fn entry(&mut self, metric: &Sym) -> &mut MetricCounts {
        let same_run = matches!(&self.run, Some((m, _)) if std::sync::Arc::ptr_eq(m, metric));
        if !same_run {
            self.fold_run();
        }
        &mut self
            .run
            .get_or_insert_with(|| (metric.clone(), MetricCounts::default()))
            .1
    }

    fn fold_run(&mut self) {
        if let Some((metric, counts)) = self.run.take() {
            // Looked up by `&str`: no reference-count traffic on the common hit.
            self.per_metric
                .entry_ref(&*metric)
                .or_default()
                .add(&counts);
        }
    }

    /// Records one received series.
    pub fn received(&mut self, metric: &Sym) {
        self.entry(metric).received += 1;
    }
    /// Records one series passed through.
    pub fn passed(&mut self, metric: &Sym) {
        self.entry(metric).passed += 1;
    }
    /// Records one dropped series.
    pub fn dropped(&mut self, metric: &Sym) {
        self.entry(metric).dropped += 1;
    }
    /// Records one folded series.
    pub fn folded(&mut self, metric: &Sym) {
        self.entry(metric).folded += 1;
    }
    /// Records one emitted series.
    pub fn emitted(&mut self, metric: &Sym) {
        self.entry(metric).emitted += 1;
    }

    /// Counts for one metric.
    pub fn metric(&self, metric: &str) -> MetricCounts {
        let mut counts = self.per_metric.get(metric).copied().unwrap_or_default();
        if let Some((m, run)) = &self.run {
            if &**m == metric {
                counts.add(run);
            }
        }
        counts
    }

    /// `(metric, counts)` of every metric, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Sym, MetricCounts)> {
        let mut all: HashMap<Sym, MetricCounts, ahash::RandomState> = self.per_metric.clone();
        if let Some((metric, run)) = &self.run {
            all.entry_ref(&**metric).or_default().add(run);
        }
        all.into_iter()
    }

    /// Counts summed over all metrics.
    pub fn total(&self) -> MetricCounts {
        let mut total = MetricCounts::default();
        for counts in self.per_metric.values() {
            total.add(counts);
        }
        if let Some((_, run)) = &self.run {
            total.add(run);
        }
        total
    }

    /// Forgets everything (between KPI intervals).
    pub fn reset(&mut self) {
        self.per_metric.clear();
        self.run = None;
    }
}

/// A running processor.
pub trait Processor: Send + fmt::Debug {
    /// The processor type (`topk`, `filter`, ...).
    fn kind(&self) -> &'static str;
    /// Processes one batch.
    fn process(&mut self, batch: Batch) -> Batch;
    /// What it did so far.
    fn stats(&self) -> &ProcessorStats;
    /// Resets its counts (not its state).
    fn reset_stats(&mut self);
}

/// Labels that stay on folded series by default: folding must not merge histogram buckets
/// or summary quantiles with each other.
pub const DEFAULT_KEEP_LABELS: &[&str] = &["le", "quantile"];

/// The label marking series the engine created by folding others.
pub const FOLDED_LABEL: &str = "phoenix_folded";

/// The metric family of a series: histogram and summary components share one.
pub fn family_name(series: &Series) -> &str {
    use crate::model::MetricKind::*;
    let name: &str = &series.name;
    if matches!(series.kind, Histogram | Summary | ExponentialHistogram) {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(stripped) = name.strip_suffix(suffix) {
                return stripped;
            }
        }
    }
    name
}

/// Identity of the "unit" a series belongs to: its family and labels minus `keep_labels`
/// (so all buckets of one histogram series move together).
pub fn unit_id(series: &Series, keep_labels: &[Sym]) -> u64 {
    crate::model::hash_name_and_labels(
        family_name(series),
        series
            .labels
            .iter()
            .filter(|l| !crate::processor::contains_name(keep_labels, l.name))
            .map(|l| (l.name, l.value)),
    )
}

/// The labels of `series` that are in `keep_labels`.
pub fn kept_labels(labels: &Labels, keep_labels: &[Sym]) -> Labels {
    let mut kept = labels.clone();
    kept.retain(|l| crate::processor::contains_name(keep_labels, l.name));
    kept
}

/// Whether `name` is one of `names`.
#[inline]
pub fn contains_name(names: &[Sym], name: &str) -> bool {
    names.iter().any(|n| **n == *name)
}

/// Turns label name strings into symbols.
pub fn syms(names: &[String]) -> Vec<Sym> {
    names.iter().map(|n| Sym::from(n.as_str())).collect()
}

/// A configuration field that failed validation, relative to the processor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Field path inside the processor config, e.g. `k` or `keep[1]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// Builds an error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses a list of selectors, collecting one error per bad entry under `field[i]`.
pub fn parse_selectors(
    field: &str,
    sources: &[String],
    errors: &mut Vec<FieldError>,
) -> Vec<crate::selector::Selector> {
    let mut selectors = Vec::with_capacity(sources.len());
    for (i, source) in sources.iter().enumerate() {
        match crate::selector::Selector::parse(source) {
            Ok(selector) => selectors.push(selector),
            Err(e) => errors.push(FieldError::new(format!("{field}[{i}]"), e.to_string())),
        }
    }
    selectors
}
