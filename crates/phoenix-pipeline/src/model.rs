//! The series model every receiver produces and every processor consumes.
//!
//! A series is a metric name, a sorted set of interned labels, a kind and its samples.
//! Its identity ([`SeriesId`]) is an xxh3 hash of the name and labels, so maps keyed by
//! series are cheap. Work moves through the engine in [`Batch`]es.

use std::fmt;
use std::sync::Arc;

use hashbrown::HashSet;

/// An interned string: label names, label values and metric names share one allocation
/// per distinct value.
pub type Sym = Arc<str>;

/// The label name Prometheus uses to carry the metric name.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// Interns strings so that each distinct label name or value is allocated once.
///
/// The interner grows without bound; owners that see churn (pods coming and going) should
/// call [`Interner::clear`] at a quiet point, e.g. when it holds more than a set number of
/// entries. Already handed out symbols stay valid.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Sym, ahash::RandomState>,
}

impl Interner {
    /// Creates an empty interner.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the shared symbol for `value`, allocating it on first sight.
    pub fn intern(&mut self, value: &str) -> Sym {
        if let Some(existing) = self.strings.get(value) {
            return existing.clone();
        }
        let sym: Sym = Arc::from(value);
        self.strings.insert(sym.clone());
        sym
    }

    /// Returns the shared symbol for UTF-8 `bytes`. Bytes equal to a string already held
    /// need no UTF-8 validation (the held string is valid); new ones are validated.
    pub fn intern_bytes(&mut self, bytes: &[u8]) -> Result<Sym, std::str::Utf8Error> {
        if let Some(existing) = self.strings.get(&BytesKey(bytes)) {
            return Ok(existing.clone());
        }
        let value = std::str::from_utf8(bytes)?;
        let sym: Sym = Arc::from(value);
        self.strings.insert(sym.clone());
        Ok(sym)
    }

    /// Number of distinct strings held.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Whether the interner holds nothing.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// Forgets every string (symbols already handed out stay valid).
    pub fn clear(&mut self) {
        self.strings.clear();
    }
}

/// Looks up interned strings by their bytes. Hashes exactly like `str` (bytes then
/// `0xff`, the default `Hasher::write_str`), so it finds what `intern` stored.
struct BytesKey<'a>(&'a [u8]);

impl std::hash::Hash for BytesKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.0);
        state.write_u8(0xff);
    }
}

impl hashbrown::Equivalent<Sym> for BytesKey<'_> {
    fn equivalent(&self, key: &Sym) -> bool {
        self.0 == key.as_bytes()
    }
}

/// One label: an interned name and value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// Label name, e.g. `pod`.
    pub name: Sym,
    /// Label value, never empty (an empty value means the label is absent).
    pub value: Sym,
}

impl Label {
    /// Builds a label from two symbols.
    pub fn new(name: Sym, value: Sym) -> Self {
        Self { name, value }
    }
}

/// A label set sorted by name with unique names, excluding `__name__`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// An empty label set.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Builds a label set from arbitrary pairs: sorts, drops empty values and keeps the
    /// last of duplicated names (the way Prometheus' label builder does).
    pub fn from_unsorted(mut labels: Vec<Label>) -> Self {
        labels.retain(|l| !l.value.is_empty() && &*l.name != METRIC_NAME_LABEL);
        // Stable sort keeps insertion order among equal names; keep the last one.
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        let mut deduped: Vec<Label> = Vec::with_capacity(labels.len());
        for label in labels {
            match deduped.last_mut() {
                Some(last) if last.name == label.name => *last = label,
                _ => deduped.push(label),
            }
        }
        Self(deduped)
    }

    /// Builds a label set from pairs already sorted by name, unique and non-empty;
    /// gives the pairs back when they are not.
    pub fn from_sorted(labels: Vec<Label>) -> Result<Self, Vec<Label>> {
        let sorted = labels.windows(2).all(|w| w[0].name < w[1].name);
        let clean = labels
            .iter()
            .all(|l| !l.value.is_empty() && &*l.name != METRIC_NAME_LABEL);
        if sorted && clean {
            Ok(Self(labels))
        } else {
            Err(labels)
        }
    }

    /// The labels in name order.
    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    /// Iterates the labels in name order.
    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no label.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Sym> {
        self.0
            .binary_search_by(|l| (*l.name).cmp(name))
            .ok()
            .map(|i| &self.0[i].value)
    }

    /// Sets `name` to `value` (removes it when `value` is empty).
    pub fn set(&mut self, name: Sym, value: Sym) {
        match self.0.binary_search_by(|l| l.name.cmp(&name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].value = value,
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(i, Label { name, value }),
        }
    }

    /// Removes label `name` if present.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|l| (*l.name).cmp(name)) {
            self.0.remove(i);
        }
    }

    /// Keeps only the labels for which `keep` returns true.
    pub fn retain(&mut self, keep: impl FnMut(&Label) -> bool) {
        self.0.retain(keep);
    }
}

/// The kind of a series, as far as the source told us or its name suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Monotonic cumulative value (Prometheus counter, OTLP monotonic cumulative sum).
    Counter,
    /// Point-in-time value (Prometheus gauge, OTLP gauge, OTLP non-monotonic sum).
    Gauge,
    /// One component series of a classic histogram (`_bucket`, `_sum`, `_count`), or an
    /// OTLP explicit-bucket histogram flattened into such series.
    Histogram,
    /// One component series of a summary (`quantile`-labelled, `_sum`, `_count`).
    Summary,
    /// An OTLP exponential histogram flattened into cumulative series.
    ExponentialHistogram,
    /// The source gave no type and the name suggests none.
    Unknown,
}

/// The OTLP data point kinds, for mapping into [`MetricKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpKind {
    /// `Sum` with its monotonic flag.
    Sum {
        /// Whether the sum is monotonic.
        monotonic: bool,
    },
    /// `Gauge`.
    Gauge,
    /// Explicit-bucket `Histogram`.
    Histogram,
    /// `ExponentialHistogram`.
    ExponentialHistogram,
    /// `Summary`.
    Summary,
}

impl MetricKind {
    /// Maps an OTLP data point kind to the series kind.
    pub fn from_otlp(kind: OtlpKind) -> Self {
        match kind {
            OtlpKind::Sum { monotonic: true } => Self::Counter,
            OtlpKind::Sum { monotonic: false } | OtlpKind::Gauge => Self::Gauge,
            OtlpKind::Histogram => Self::Histogram,
            OtlpKind::ExponentialHistogram => Self::ExponentialHistogram,
            OtlpKind::Summary => Self::Summary,
        }
    }

    /// Guesses the kind from a Prometheus metric name, the way remote write v1 forces us
    /// to (it carries no type on the series).
    pub fn from_prometheus_name(name: &str) -> Self {
        if name.ends_with("_total") {
            Self::Counter
        } else if name.ends_with("_bucket") || name.ends_with("_sum") || name.ends_with("_count") {
            Self::Histogram
        } else {
            Self::Gauge
        }
    }

    /// Whether values only ever grow (except on a reset): counters and the cumulative
    /// components of histograms and summaries (`_bucket`, `_sum`, `_count`; not quantiles).
    pub fn is_cumulative(self, labels: &Labels) -> bool {
        match self {
            Self::Counter | Self::Histogram | Self::ExponentialHistogram => true,
            Self::Summary => labels.get("quantile").is_none(),
            Self::Gauge | Self::Unknown => false,
        }
    }
}

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// Builds a sample.
    pub fn new(timestamp_ms: i64, value: f64) -> Self {
        Self {
            timestamp_ms,
            value,
        }
    }

    /// Bitwise equality (NaN equals NaN with the same payload), for "byte-identical" checks.
    pub fn same_bits(&self, other: &Self) -> bool {
        self.timestamp_ms == other.timestamp_ms && self.value.to_bits() == other.value.to_bits()
    }
}

/// The identity of a series: an xxh3 hash of its name and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub u64);

impl fmt::Display for SeriesId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Hashes a name and labels the way [`Series::id`] does.
pub fn series_id(name: &str, labels: &Labels) -> SeriesId {
    SeriesId(hash_name_and_labels(
        name,
        labels.iter().map(|l| (&*l.name, &*l.value)),
    ))
}

/// xxh3 of `name`, then `0xff name 0xfe value` per label: separators that cannot appear
/// in UTF-8 keep `a="bc"` and `ab="c"` apart. Computed in one shot over a reused
/// per-thread buffer, which gives the digest a streaming hasher fed the same parts would,
/// at a fraction of the cost (the streaming hasher pays per call, and a series makes
/// forty-odd calls).
pub fn hash_name_and_labels<'a>(
    name: &str,
    labels: impl Iterator<Item = (&'a str, &'a str)>,
) -> u64 {
    fn fill<'a>(
        buffer: &mut Vec<u8>,
        name: &str,
        labels: impl Iterator<Item = (&'a str, &'a str)>,
    ) {
        buffer.clear();
        buffer.extend_from_slice(name.as_bytes());
        for (label, value) in labels {
            buffer.push(0xff);
            buffer.extend_from_slice(label.as_bytes());
            buffer.push(0xfe);
            buffer.extend_from_slice(value.as_bytes());
        }
    }
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
    }
    BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            fill(&mut buffer, name, labels);
            xxhash_rust::xxh3::xxh3_64(&buffer)
        }
        // Only reachable if a caller re-entered from inside `labels`; stay correct.
        Err(_) => {
            let mut buffer = Vec::new();
            fill(&mut buffer, name, labels);
            xxhash_rust::xxh3::xxh3_64(&buffer)
        }
    })
}

/// A time series with the samples of one batch.
#[derive(Debug, Clone)]
pub struct Series {
    /// Metric name (the `__name__` label).
    pub name: Sym,
    /// Labels other than `__name__`, sorted.
    pub labels: Labels,
    /// Kind of the series.
    pub kind: MetricKind,
    /// Samples in this batch, oldest first.
    pub samples: Vec<Sample>,
}

impl Series {
    /// Builds a series.
    pub fn new(name: Sym, labels: Labels, kind: MetricKind, samples: Vec<Sample>) -> Self {
        Self {
            name,
            labels,
            kind,
            samples,
        }
    }

    /// The identity hash of name + labels.
    pub fn id(&self) -> SeriesId {
        series_id(&self.name, &self.labels)
    }

    /// Value of a label, with `__name__` answering the metric name.
    pub fn label(&self, name: &str) -> Option<&str> {
        if name == METRIC_NAME_LABEL {
            Some(&self.name)
        } else {
            self.labels.get(name).map(|v| &**v)
        }
    }

    /// The most recent sample of this batch.
    pub fn last_sample(&self) -> Option<Sample> {
        self.samples.last().copied()
    }

    /// Whether the series is cumulative (see [`MetricKind::is_cumulative`]).
    pub fn is_cumulative(&self) -> bool {
        self.kind.is_cumulative(&self.labels)
    }

    /// Bitwise equality of everything: name, labels, kind and sample bits.
    pub fn same_bits(&self, other: &Self) -> bool {
        self.name == other.name
            && self.labels == other.labels
            && self.kind == other.kind
            && self.samples.len() == other.samples.len()
            && self
                .samples
                .iter()
                .zip(&other.samples)
                .all(|(a, b)| a.same_bits(b))
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{", self.name)?;
        for (i, label) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={:?}", label.name, &*label.value)?;
        }
        f.write_str("}")
    }
}

/// A batch of series: the unit of work of every stage.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The series, in no particular order.
    pub series: Vec<Series>,
}

impl Batch {
    /// Wraps series into a batch.
    pub fn new(series: Vec<Series>) -> Self {
        Self { series }
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether the batch has no series.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Total number of samples.
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::Xxh3;

    fn sym(s: &str) -> Sym {
        Arc::from(s)
    }

    #[test]
    fn from_unsorted_sorts_dedups_and_drops_empty_values() {
        let labels = Labels::from_unsorted(vec![
            Label::new(sym("b"), sym("1")),
            Label::new(sym("a"), sym("x")),
            Label::new(sym("b"), sym("2")),
            Label::new(sym("c"), sym("")),
            Label::new(sym("__name__"), sym("m")),
        ]);
        let pairs: Vec<_> = labels
            .iter()
            .map(|l| (l.name.to_string(), l.value.to_string()))
            .collect();
        assert_eq!(
            pairs,
            vec![("a".into(), "x".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn series_id_differs_when_label_boundaries_move() {
        let a = Labels::from_unsorted(vec![Label::new(sym("a"), sym("bc"))]);
        let b = Labels::from_unsorted(vec![Label::new(sym("ab"), sym("c"))]);
        assert_ne!(series_id("m", &a), series_id("m", &b));
        assert_eq!(series_id("m", &a), series_id("m", &a.clone()));
    }

    #[test]
    fn one_shot_series_id_equals_the_streaming_digest() {
        let labels = Labels::from_unsorted(vec![
            Label::new(sym("job"), sym("api")),
            Label::new(sym("pod"), sym(&"p".repeat(300))),
        ]);
        let mut hasher = Xxh3::new();
        hasher.update(b"requests_total");
        for label in labels.iter() {
            hasher.update(&[0xff]);
            hasher.update(label.name.as_bytes());
            hasher.update(&[0xfe]);
            hasher.update(label.value.as_bytes());
        }
        assert_eq!(series_id("requests_total", &labels).0, hasher.digest());
    }

    #[test]
    fn interner_returns_the_same_allocation_for_equal_strings() {
        let mut interner = Interner::new();
        let a = interner.intern("pod");
        let b = interner.intern("pod");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(interner.len(), 1);
    }

    #[test]
    fn intern_bytes_finds_strings_interned_as_str_and_validates_new_ones() {
        let mut interner = Interner::new();
        let a = interner.intern("namespace");
        let b = interner.intern_bytes(b"namespace").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = interner.intern_bytes("zoné".as_bytes()).unwrap();
        assert!(Arc::ptr_eq(&c, &interner.intern("zoné")));
        assert!(interner.intern_bytes(&[0xff, 0xfe]).is_err());
        assert_eq!(interner.len(), 2);
    }

    #[test]
    fn set_with_empty_value_removes_the_label() {
        let mut labels = Labels::from_unsorted(vec![Label::new(sym("a"), sym("1"))]);
        labels.set(sym("b"), sym("2"));
        assert_eq!(labels.get("b").map(|v| &**v), Some("2"));
        labels.set(sym("a"), sym(""));
        assert!(labels.get("a").is_none());
        assert_eq!(labels.len(), 1);
    }

    #[test]
    fn otlp_kinds_map_to_series_kinds() {
        assert_eq!(
            MetricKind::from_otlp(OtlpKind::Sum { monotonic: true }),
            MetricKind::Counter
        );
        assert_eq!(
            MetricKind::from_otlp(OtlpKind::Sum { monotonic: false }),
            MetricKind::Gauge
        );
        assert_eq!(
            MetricKind::from_otlp(OtlpKind::ExponentialHistogram),
            MetricKind::ExponentialHistogram
        );
    }
}
