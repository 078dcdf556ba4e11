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

/// One label as an owned pair of symbols: a convenient way to build a [`Labels`] from
/// values held elsewhere (configuration, tests). Series do not store labels this way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// Label name, e.g. `pod`.
    pub name: Sym,
    /// Label value (an empty value means the label is absent).
    pub value: Sym,
}

impl Label {
    /// Builds a label from two symbols.
    pub fn new(name: Sym, value: Sym) -> Self {
        Self { name, value }
    }
}

/// One label of a [`Labels`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelRef<'a> {
    /// Label name, e.g. `pod`.
    pub name: &'a str,
    /// Label value, never empty.
    pub value: &'a str,
}

/// Appends the length prefix of a label name or value: six bits per byte, low bits first,
/// `0x40` set on every byte but the last. Every byte is ASCII, so a [`Labels`] buffer stays
/// a valid `String` and its names and values are sliced out of it without copying.
fn push_len(buf: &mut String, mut len: usize) {
    loop {
        let low = (len & 0x3f) as u8;
        len >>= 6;
        if len == 0 {
            buf.push(char::from(low));
            return;
        }
        buf.push(char::from(low | 0x40));
    }
}

/// [`push_len`] into a byte buffer (for decoders that check UTF-8 once at the end).
#[inline]
pub(crate) fn push_len_bytes(buf: &mut Vec<u8>, mut len: usize) {
    loop {
        let low = (len & 0x3f) as u8;
        len >>= 6;
        if len == 0 {
            buf.push(low);
            return;
        }
        buf.push(low | 0x40);
    }
}

/// Reads a length written by [`push_len`] at `*pos`, advancing `pos`.
#[inline(always)]
fn read_len(bytes: &[u8], pos: &mut usize) -> Option<usize> {
    let first = *bytes.get(*pos)?;
    *pos += 1;
    if first & 0x40 == 0 {
        return Some(usize::from(first));
    }
    read_len_continued(bytes, pos, first)
}

#[inline(never)]
fn read_len_continued(bytes: &[u8], pos: &mut usize, first: u8) -> Option<usize> {
    let mut len = usize::from(first & 0x3f);
    let mut shift = 6;
    loop {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        len |= usize::from(byte & 0x3f).checked_shl(shift)?;
        if byte & 0x40 == 0 {
            return Some(len);
        }
        shift += 6;
    }
}

/// Appends one encoded label (name and value) to a [`Labels`] buffer.
#[inline]
fn push_label(buf: &mut String, name: &str, value: &str) {
    push_len(buf, name.len());
    buf.push_str(name);
    push_len(buf, value.len());
    buf.push_str(value);
}

/// Bytes one label takes in a [`Labels`] buffer.
fn encoded_label_len(name: &str, value: &str) -> usize {
    fn len_of_len(mut len: usize) -> usize {
        let mut bytes = 1;
        while len >= 64 {
            len >>= 6;
            bytes += 1;
        }
        bytes
    }
    len_of_len(name.len()) + name.len() + len_of_len(value.len()) + value.len()
}

/// A label set sorted by name with unique names and non-empty values, excluding
/// `__name__`.
///
/// Stored as one string: each label is a length-prefixed name then a length-prefixed
/// value, in name order. The encoding is canonical (equal sets have equal bytes), so
/// equality, hashing and the series id work on the bytes directly; a clone is one
/// allocation and a copy, and nothing is reference-counted, so series move between the
/// receiver threads and the engine without shared cache lines (the model of Prometheus'
/// `stringlabels`).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    buf: String,
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|l| (l.name, l.value)))
            .finish()
    }
}

impl Labels {
    /// An empty label set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a label set from arbitrary pairs: sorts, drops empty values and keeps the
    /// last of duplicated names (the way Prometheus' label builder does).
    pub fn from_pairs<N: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Self {
        let mut pairs: Vec<(N, V)> = pairs
            .into_iter()
            .filter(|(n, v)| !v.as_ref().is_empty() && n.as_ref() != METRIC_NAME_LABEL)
            .collect();
        // Stable sort keeps insertion order among equal names; keep the last one.
        pairs.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let mut buf = String::with_capacity(
            pairs
                .iter()
                .map(|(n, v)| encoded_label_len(n.as_ref(), v.as_ref()))
                .sum(),
        );
        for (i, (name, value)) in pairs.iter().enumerate() {
            let overridden = pairs
                .get(i + 1)
                .is_some_and(|(next, _)| next.as_ref() == name.as_ref());
            if !overridden {
                push_label(&mut buf, name.as_ref(), value.as_ref());
            }
        }
        Self { buf }
    }

    /// Takes a buffer encoded as this type stores it (lengths by [`push_len_bytes`], then
    /// the bytes), already checked as UTF-8. `sorted` says the names are in strictly
    /// increasing order and no value is empty; otherwise the set is rebuilt in order
    /// (the last of repeated names wins, as in [`Self::from_pairs`]).
    pub(crate) fn from_encoded(buf: String, sorted: bool) -> Self {
        let labels = Self { buf };
        if sorted {
            return labels;
        }
        let pairs: Vec<LabelRef<'_>> = labels.iter().collect();
        Self::from_pairs(pairs.iter().map(|l| (l.name, l.value)))
    }

    /// Builds a label set from pairs the caller keeps sorted by name, unique and with
    /// non-empty values (a builder that maintains that order); checked in debug builds.
    pub(crate) fn from_sorted_unique<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Self {
        let mut buf =
            String::with_capacity(pairs.clone().map(|(n, v)| encoded_label_len(n, v)).sum());
        let mut previous: Option<&str> = None;
        for (name, value) in pairs {
            debug_assert!(previous.is_none_or(|p| p < name) && !value.is_empty());
            previous = Some(name);
            push_label(&mut buf, name, value);
        }
        Self { buf }
    }

    /// Builds a label set from arbitrary [`Label`]s (see [`Self::from_pairs`]).
    pub fn from_unsorted(labels: Vec<Label>) -> Self {
        Self::from_pairs(labels.iter().map(|l| (&*l.name, &*l.value)))
    }

    /// The labels in name order.
    pub fn iter(&self) -> LabelsIter<'_> {
        LabelsIter {
            buf: &self.buf,
            pos: 0,
        }
    }

    /// Number of labels (counted: the set is not indexed).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there is no label.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The canonical encoding (see the type's docs): what series ids hash.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_bytes()
    }

    /// Bytes held by the encoding.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Sums `f(name length, value length)` over the labels, reading only the length
    /// prefixes (for sizes of encodings, without touching the strings).
    #[inline]
    pub fn sum_lengths(&self, mut f: impl FnMut(usize, usize) -> usize) -> usize {
        let bytes = self.buf.as_bytes();
        let (mut pos, mut sum) = (0, 0);
        while pos < bytes.len() {
            let Some(name) = read_len(bytes, &mut pos) else {
                break;
            };
            pos += name;
            let Some(value) = read_len(bytes, &mut pos) else {
                break;
            };
            pos += value;
            sum += f(name, value);
        }
        sum
    }

    /// Value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        for label in self.iter() {
            match label.name.cmp(name) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return Some(label.value),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }

    /// Whether label `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Finds `name`: `Ok(range of its encoding)` or `Err(where it would go)`.
    fn locate(&self, name: &str) -> Result<std::ops::Range<usize>, usize> {
        let mut iter = self.iter();
        loop {
            let start = iter.pos;
            let Some(label) = iter.next() else {
                return Err(self.buf.len());
            };
            match label.name.cmp(name) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return Ok(start..iter.pos),
                std::cmp::Ordering::Greater => return Err(start),
            }
        }
    }

    /// Sets `name` to `value` (removes it when `value` is empty; `__name__` is ignored).
    pub fn set(&mut self, name: &str, value: &str) {
        if name == METRIC_NAME_LABEL {
            return;
        }
        if value.is_empty() {
            self.remove(name);
            return;
        }
        let mut encoded = String::with_capacity(encoded_label_len(name, value));
        push_label(&mut encoded, name, value);
        match self.locate(name) {
            Ok(range) => self.buf.replace_range(range, &encoded),
            Err(at) => self.buf.insert_str(at, &encoded),
        }
    }

    /// Removes label `name` if present.
    pub fn remove(&mut self, name: &str) {
        if let Ok(range) = self.locate(name) {
            self.buf.drain(range);
        }
    }

    /// Keeps only the labels for which `keep` returns true (in place, no allocation).
    pub fn retain(&mut self, mut keep: impl FnMut(LabelRef<'_>) -> bool) {
        let mut pos = 0;
        while pos < self.buf.len() {
            let mut iter = LabelsIter {
                buf: &self.buf,
                pos,
            };
            let Some(label) = iter.next() else {
                // Unreachable for a well-formed buffer; never loop forever.
                self.buf.truncate(pos);
                return;
            };
            let end = iter.pos;
            if keep(label) {
                pos = end;
            } else {
                self.buf.drain(pos..end);
            }
        }
    }

    /// Keeps only the labels whose name `keep` accepts (in place, no allocation; values
    /// are not looked at, which makes it cheaper than [`Self::retain`]).
    pub fn retain_names(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let mut start = 0;
        while start < self.buf.len() {
            let bytes = self.buf.as_bytes();
            let mut pos = start;
            let name_len = read_len(bytes, &mut pos);
            let name = name_len.map(|len| pos..pos + len);
            let end = name.clone().and_then(|name| {
                let mut pos = name.end;
                read_len(bytes, &mut pos).map(|len| pos + len)
            });
            let (Some(name), Some(end)) = (name, end.filter(|end| *end <= bytes.len())) else {
                // Unreachable for a well-formed buffer; never loop forever.
                self.buf.truncate(start);
                return;
            };
            if self.buf.get(name).is_some_and(&mut keep) {
                start = end;
            } else {
                self.buf.drain(start..end);
            }
        }
    }

    /// Empties the set, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = LabelRef<'a>;
    type IntoIter = LabelsIter<'a>;

    fn into_iter(self) -> LabelsIter<'a> {
        self.iter()
    }
}

/// Iterates the labels of a [`Labels`] in name order.
#[derive(Debug, Clone)]
pub struct LabelsIter<'a> {
    buf: &'a str,
    pos: usize,
}

impl<'a> Iterator for LabelsIter<'a> {
    type Item = LabelRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<LabelRef<'a>> {
        let bytes = self.buf.as_bytes();
        if self.pos >= bytes.len() {
            return None;
        }
        let mut pos = self.pos;
        let name_len = read_len(bytes, &mut pos)?;
        let name = self.buf.get(pos..pos + name_len)?;
        pos += name_len;
        let value_len = read_len(bytes, &mut pos)?;
        let value = self.buf.get(pos..pos + value_len)?;
        self.pos = pos + value_len;
        Some(LabelRef { name, value })
    }
}

/// Builds a [`Labels`] from pairs that usually arrive sorted (as decoders see them),
/// without an intermediate vector; out-of-order or repeated names fall back to a sort.
#[derive(Debug, Default)]
pub struct LabelsWriter {
    buf: String,
    last_name: std::ops::Range<usize>,
    sorted: bool,
}

impl LabelsWriter {
    /// A writer with room for `bytes` of encoded labels.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: String::with_capacity(bytes),
            last_name: 0..0,
            sorted: true,
        }
    }

    /// Appends a label; empty values and `__name__` are skipped.
    #[inline]
    pub fn push(&mut self, name: &str, value: &str) {
        if value.is_empty() || name == METRIC_NAME_LABEL {
            return;
        }
        if !self.buf.is_empty() && self.buf.get(self.last_name.clone()).unwrap_or("") >= name {
            self.sorted = false;
        }
        push_len(&mut self.buf, name.len());
        let start = self.buf.len();
        self.buf.push_str(name);
        self.last_name = start..self.buf.len();
        push_len(&mut self.buf, value.len());
        self.buf.push_str(value);
    }

    /// The label set.
    pub fn finish(self) -> Labels {
        let labels = Labels { buf: self.buf };
        if self.sorted {
            labels
        } else {
            let pairs: Vec<LabelRef<'_>> = labels.iter().collect();
            Labels::from_pairs(pairs.iter().map(|l| (l.name, l.value)))
        }
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
#[inline]
pub fn series_id(name: &str, labels: &Labels) -> SeriesId {
    SeriesId(hash_name_and_encoded_labels(name, labels.as_bytes()))
}

/// xxh3 of the labels' canonical encoding (see [`Labels`]), seeded with the xxh3 of the
/// name: two one-shot hashes over bytes already in place, no copying. The encoding is
/// length-prefixed, so `a="bc"` and `ab="c"` hash apart.
#[inline]
pub fn hash_name_and_encoded_labels(name: &str, encoded_labels: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(
        encoded_labels,
        xxhash_rust::xxh3::xxh3_64(name.as_bytes()),
    )
}

/// Hashes `name` and `labels` (sorted by name, as a [`Labels`] holds them) exactly as
/// [`series_id`] hashes a series with those labels, encoding them into a reused
/// per-thread buffer. For ids of label subsets (groups) without building a [`Labels`].
pub fn hash_name_and_labels<'a>(
    name: &str,
    labels: impl Iterator<Item = (&'a str, &'a str)>,
) -> u64 {
    fn fill<'a>(buffer: &mut String, labels: impl Iterator<Item = (&'a str, &'a str)>) {
        buffer.clear();
        for (label, value) in labels {
            push_label(buffer, label, value);
        }
    }
    thread_local! {
        static BUFFER: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(1024));
    }
    BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => {
            fill(&mut buffer, labels);
            hash_name_and_encoded_labels(name, buffer.as_bytes())
        }
        // Only reachable if a caller re-entered from inside `labels`; stay correct.
        Err(_) => {
            let mut buffer = String::new();
            fill(&mut buffer, labels);
            hash_name_and_encoded_labels(name, buffer.as_bytes())
        }
    })
}

/// The samples of a series in one batch. Usually one (a scrape, a remote write request),
/// held inline in the series: no allocation of its own.
pub type Samples = smallvec::SmallVec<[Sample; 1]>;

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
    pub samples: Samples,
}

impl Series {
    /// Builds a series.
    pub fn new(name: Sym, labels: Labels, kind: MetricKind, samples: impl Into<Samples>) -> Self {
        Self {
            name,
            labels,
            kind,
            samples: samples.into(),
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
            self.labels.get(name)
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
            write!(f, "{}={:?}", label.name, label.value)?;
        }
        f.write_str("}")
    }
}

/// Computes series ids, hashing each metric name once per run of series that share its
/// symbol (batches keep a metric's series together).
#[derive(Debug, Default)]
pub struct SeriesIds {
    last: Option<(Sym, u64)>,
}

impl SeriesIds {
    /// The id of `series` (equal to [`Series::id`]).
    #[inline]
    pub fn id(&mut self, series: &Series) -> SeriesId {
        let name_hash = match &self.last {
            Some((name, hash)) if Arc::ptr_eq(name, &series.name) => *hash,
            _ => {
                let hash = xxhash_rust::xxh3::xxh3_64(series.name.as_bytes());
                self.last = Some((series.name.clone(), hash));
                hash
            }
        };
        SeriesId(xxhash_rust::xxh3::xxh3_64_with_seed(
            series.labels.as_bytes(),
            name_hash,
        ))
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
        assert_ne!(series_id("m", &a), series_id("n", &a));
    }

    #[test]
    fn a_series_stays_small() {
        // Queued batches and the engine's working set are counted in series: name
        // (16 bytes), label string (24), one inline sample (24 with the spill length), kind.
        assert!(
            std::mem::size_of::<Series>() <= 72,
            "{}",
            std::mem::size_of::<Series>()
        );
    }

    #[test]
    fn cached_name_hashes_give_the_same_ids() {
        let a = Series::new(
            sym("a"),
            Labels::from_pairs([("x", "1")]),
            MetricKind::Gauge,
            vec![],
        );
        let b = Series::new(
            sym("b"),
            Labels::from_pairs([("x", "1")]),
            MetricKind::Gauge,
            vec![],
        );
        let mut ids = SeriesIds::default();
        for s in [&a, &a, &b, &a] {
            assert_eq!(ids.id(s), s.id());
        }
    }

    #[test]
    fn hashing_pairs_equals_hashing_the_label_set() {
        let labels = Labels::from_pairs([
            ("job", "api".to_string()),
            ("pod", "p".repeat(300)),
            ("zone", "zoné".to_string()),
        ]);
        let pairs = labels.iter().map(|l| (l.name, l.value));
        assert_eq!(
            hash_name_and_labels("requests_total", pairs),
            series_id("requests_total", &labels).0
        );
    }

    #[test]
    fn long_names_and_values_round_trip_through_the_encoding() {
        for len in [0usize, 1, 63, 64, 65, 4095, 4096, 4097, 300_000] {
            let value = "v".repeat(len.max(1));
            let name = "n".repeat(len.max(1));
            let labels = Labels::from_pairs([(name.as_str(), value.as_str()), ("a", "b")]);
            let got: Vec<(String, String)> = labels
                .iter()
                .map(|l| (l.name.to_string(), l.value.to_string()))
                .collect();
            assert_eq!(
                got,
                vec![("a".into(), "b".into()), (name.clone(), value.clone())]
            );
            assert_eq!(labels.get(&name), Some(value.as_str()));
        }
    }

    #[test]
    fn set_remove_and_retain_keep_the_set_sorted_and_canonical() {
        let mut labels = Labels::from_pairs([("b", "2"), ("d", "4")]);
        labels.set("c", "3");
        labels.set("a", "1");
        labels.set("e", "5");
        labels.set("b", "two");
        assert_eq!(
            labels,
            Labels::from_pairs([("e", "5"), ("a", "1"), ("c", "3"), ("b", "two"), ("d", "4")])
        );
        labels.remove("c");
        labels.remove("zz");
        labels.retain(|l| l.name != "a");
        labels.retain_names(|name| name != "e");
        assert_eq!(labels, Labels::from_pairs([("b", "two"), ("d", "4")]));
        assert_eq!(labels.len(), 2);
        labels.set("__name__", "x");
        assert_eq!(labels.len(), 2);
        labels.retain(|_| false);
        assert!(labels.is_empty());
    }

    #[test]
    fn the_writer_sorts_only_when_it_must() {
        let mut writer = LabelsWriter::with_capacity(0);
        for (n, v) in [("a", "1"), ("c", "3"), ("b", "2"), ("a", "9"), ("e", "")] {
            writer.push(n, v);
        }
        assert_eq!(
            writer.finish(),
            Labels::from_pairs([("a", "9"), ("b", "2"), ("c", "3")])
        );
        let mut writer = LabelsWriter::with_capacity(0);
        writer.push("__name__", "m");
        writer.push("a", "1");
        writer.push("b", "2");
        assert_eq!(
            writer.finish(),
            Labels::from_pairs([("a", "1"), ("b", "2")])
        );
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
        labels.set("b", "2");
        assert_eq!(labels.get("b"), Some("2"));
        labels.set("a", "");
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
