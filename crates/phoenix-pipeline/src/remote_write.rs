//! Prometheus remote write v1: a hand-written decoder and encoder for the hot path, and
//! prost-derived reference messages for tests and benchmarks.
//!
//! The decoder reads a snappy-compressed `WriteRequest` in one pass straight into a
//! [`Batch`]: the decompression buffer is reused from one request to the next, each series
//! costs one allocation for its labels and one for its samples, and nothing is allocated
//! per label. Every malformed input yields a [`DecodeError`], never a panic (a property
//! test and a fuzz target feed it arbitrary bytes).

use std::ops::Range;

use crate::model::{
    push_len_bytes, Batch, Interner, Labels, MetricKind, Sample, Samples, Series, METRIC_NAME_LABEL,
};

/// Default ceiling on the decompressed size of one request: 64 MiB.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 64 << 20;

/// Why a remote write body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The snappy block is malformed.
    #[error("invalid snappy block: {0}")]
    Snappy(String),
    /// The declared decompressed length exceeds the configured ceiling.
    #[error(
        "decompressed body of {declared_bytes} bytes exceeds the limit of {limit_bytes} bytes"
    )]
    TooLarge {
        /// Length announced by the snappy header.
        declared_bytes: usize,
        /// Configured ceiling.
        limit_bytes: usize,
    },
    /// The protobuf ended in the middle of a value.
    #[error("truncated protobuf at byte {offset}")]
    Truncated {
        /// Offset in the decompressed body.
        offset: usize,
    },
    /// A varint ran over ten bytes.
    #[error("malformed varint at byte {offset}")]
    Varint {
        /// Offset in the decompressed body.
        offset: usize,
    },
    /// A field used a wire type this message does not allow (or a deprecated group).
    #[error("unexpected wire type {wire_type} for field {field} at byte {offset}")]
    WireType {
        /// Field number.
        field: u64,
        /// Wire type found.
        wire_type: u64,
        /// Offset in the decompressed body.
        offset: usize,
    },
    /// A label name or value is not UTF-8.
    #[error("label at byte {offset} is not valid UTF-8")]
    Utf8 {
        /// Offset in the decompressed body.
        offset: usize,
    },
}

/// What a decoded request held besides the series it appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Series appended to the batch.
    pub series: usize,
    /// Series skipped because they had no (or an empty) `__name__` label.
    pub series_without_name: usize,
    /// Native histograms seen and skipped (v1 float samples only are supported).
    pub histograms_skipped: usize,
    /// Exemplars seen and skipped.
    pub exemplars_skipped: usize,
}

/// Metric types carried in remote write metadata.
fn kind_from_metadata(metric_type: i32) -> Option<MetricKind> {
    match metric_type {
        1 => Some(MetricKind::Counter),
        2 => Some(MetricKind::Gauge),
        3 | 4 => Some(MetricKind::Histogram),
        5 => Some(MetricKind::Summary),
        _ => None,
    }
}

/// Whether series `name` belongs to metadata family `family` (histogram and summary
/// families own their `_bucket`, `_sum` and `_count` series).
fn family_matches(family: &str, name: &str) -> bool {
    match name.strip_prefix(family) {
        Some("") => true,
        Some(suffix) => matches!(suffix, "_bucket" | "_sum" | "_count" | "_total"),
        None => false,
    }
}

/// Decodes snappy-compressed remote write bodies straight into [`Batch`]es, reusing its
/// buffers from one request to the next.
///
/// One pass over the protobuf: each series' labels are copied once, as they arrive, into
/// the buffer that becomes its [`crate::model::Labels`], and that buffer is checked as
/// UTF-8 in one call (the length prefixes between its strings are ASCII, so the whole is
/// valid exactly when every name and value is). Metric names are interned; a series with
/// the same name as the one before it reuses its symbol and kind without a lookup.
#[derive(Debug)]
pub struct RemoteWriteDecoder {
    snappy: snap::raw::Decoder,
    body: Vec<u8>,
    metadata: Vec<(Range<usize>, i32)>,
    /// Scratch: the labels of the series being read, copied into an exact-size string
    /// once complete (a series' labels are about half its message).
    labels: Vec<u8>,
    max_decompressed_bytes: usize,
}

impl Default for RemoteWriteDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_DECOMPRESSED_BYTES)
    }
}

impl RemoteWriteDecoder {
    /// A decoder refusing bodies that decompress to more than `max_decompressed_bytes`.
    pub fn new(max_decompressed_bytes: usize) -> Self {
        Self {
            snappy: snap::raw::Decoder::new(),
            body: Vec::new(),
            metadata: Vec::new(),
            labels: Vec::new(),
            max_decompressed_bytes,
        }
    }

    /// Decompresses one request and appends its series to `batch`, interning metric names
    /// in `interner`. On error `batch` is left as it was.
    pub fn decode(
        &mut self,
        compressed: &[u8],
        interner: &mut Interner,
        batch: &mut Batch,
    ) -> Result<DecodeSummary, DecodeError> {
        let declared_bytes = snap::raw::decompress_len(compressed)
            .map_err(|e| DecodeError::Snappy(e.to_string()))?;
        if declared_bytes > self.max_decompressed_bytes {
            return Err(DecodeError::TooLarge {
                declared_bytes,
                limit_bytes: self.max_decompressed_bytes,
            });
        }
        self.body.resize(declared_bytes, 0);
        let written = self
            .snappy
            .decompress(compressed, &mut self.body)
            .map_err(|e| DecodeError::Snappy(e.to_string()))?;
        self.body.truncate(written);
        let body = std::mem::take(&mut self.body);
        let result = self.decode_body(&body, interner, batch);
        self.body = body;
        result
    }

    /// [`Self::decode`] for an uncompressed protobuf body.
    pub fn decode_uncompressed(
        &mut self,
        body: &[u8],
        interner: &mut Interner,
        batch: &mut Batch,
    ) -> Result<DecodeSummary, DecodeError> {
        self.decode_body(body, interner, batch)
    }

    fn decode_body(
        &mut self,
        body: &[u8],
        interner: &mut Interner,
        batch: &mut Batch,
    ) -> Result<DecodeSummary, DecodeError> {
        let first_new = batch.series.len();
        let result = self.parse_write_request(body, interner, batch);
        match result {
            Ok(summary) => {
                self.apply_metadata(body, &mut batch.series[first_new..]);
                Ok(summary)
            }
            Err(e) => {
                batch.series.truncate(first_new);
                Err(e)
            }
        }
    }

    fn parse_write_request(
        &mut self,
        body: &[u8],
        interner: &mut Interner,
        batch: &mut Batch,
    ) -> Result<DecodeSummary, DecodeError> {
        self.metadata.clear();
        let mut summary = DecodeSummary::default();
        let mut reader = Reader::new(body, 0);
        while reader.pos < body.len() {
            let (field, wire_type) = reader.key()?;
            match field {
                1 => {
                    reader.expect(field, wire_type, WIRE_LEN)?;
                    let range = reader.len_delimited()?;
                    parse_time_series(
                        body,
                        range,
                        &mut self.labels,
                        interner,
                        batch,
                        &mut summary,
                    )?;
                }
                3 => {
                    reader.expect(field, wire_type, WIRE_LEN)?;
                    let range = reader.len_delimited()?;
                    self.metadata.push(parse_metadata(body, range)?);
                }
                _ => reader.skip(field, wire_type)?,
            }
        }
        Ok(summary)
    }

    /// Metadata may follow the series it describes: their kinds are set once the whole
    /// request is read.
    fn apply_metadata(&self, body: &[u8], series: &mut [Series]) {
        let families: Vec<(&str, MetricKind)> = self
            .metadata
            .iter()
            .filter_map(|(range, metric_type)| {
                let family = std::str::from_utf8(body.get(range.clone())?).ok()?;
                Some((family, kind_from_metadata(*metric_type)?))
            })
            .collect();
        if families.is_empty() {
            return;
        }
        for s in series {
            if let Some((_, kind)) = families.iter().find(|(f, _)| family_matches(f, &s.name)) {
                s.kind = *kind;
            }
        }
    }
}

/// A cursor over protobuf bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    /// A varint; the one-byte case (keys, short lengths) first.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&byte) if byte < 0x80 => {
                self.pos += 1;
                Ok(u64::from(byte))
            }
            _ => self.varint_slow(),
        }
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(DecodeError::Truncated { offset: self.pos });
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (shift * 7);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(DecodeError::Varint { offset: start })
    }

    #[inline]
    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let end = self.pos + 8;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated { offset: self.pos })?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        self.pos = end;
        Ok(u64::from_le_bytes(array))
    }

    /// Reads a length prefix and returns the byte range it covers.
    #[inline]
    fn len_delimited(&mut self) -> Result<Range<usize>, DecodeError> {
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|end| *end <= self.buf.len())
            .ok_or(DecodeError::Truncated { offset: start })?;
        self.pos = end;
        Ok(start..end)
    }

    fn skip(&mut self, field: u64, wire_type: u64) -> Result<(), DecodeError> {
        match wire_type {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.fixed64().map(drop),
            WIRE_LEN => self.len_delimited().map(drop),
            WIRE_FIXED32 => {
                let end = self.pos + 4;
                if end > self.buf.len() {
                    return Err(DecodeError::Truncated { offset: self.pos });
                }
                self.pos = end;
                Ok(())
            }
            _ => Err(DecodeError::WireType {
                field,
                wire_type,
                offset: self.pos,
            }),
        }
    }

    #[inline]
    fn key(&mut self) -> Result<(u64, u64), DecodeError> {
        let key = self.varint()?;
        Ok((key >> 3, key & 7))
    }

    fn expect(&self, field: u64, wire_type: u64, wanted: u64) -> Result<(), DecodeError> {
        if wire_type == wanted {
            Ok(())
        } else {
            Err(DecodeError::WireType {
                field,
                wire_type,
                offset: self.pos,
            })
        }
    }
}

/// `a < b` for label names, deciding on the first byte when it differs (most names do).
#[inline]
fn name_before(a: &[u8], b: &[u8]) -> bool {
    match (a.first(), b.first()) {
        (Some(x), Some(y)) if x != y => x < y,
        _ => a < b,
    }
}

/// One `TimeSeries`: labels into a fresh label buffer, samples into the series.
fn parse_time_series(
    buf: &[u8],
    range: Range<usize>,
    labels: &mut Vec<u8>,
    interner: &mut Interner,
    batch: &mut Batch,
    summary: &mut DecodeSummary,
) -> Result<(), DecodeError> {
    let mut reader = Reader::new(&buf[..range.end], range.start);
    labels.clear();
    let mut samples = Samples::new();
    let mut name: Option<Range<usize>> = None;
    let mut sorted = true;
    let mut previous_label: Option<Range<usize>> = None;
    while reader.pos < range.end {
        if let Some(label) = short_label(buf, reader.pos, range.end) {
            reader.pos = label.end;
            let name_bytes = &buf[label.name.clone()];
            if name_bytes == METRIC_NAME_LABEL.as_bytes() {
                name = Some(label.value.start + 1..label.value.end);
                continue;
            }
            if previous_label.is_some_and(|p| !name_before(&buf[p], name_bytes)) {
                sorted = false;
            }
            previous_label = Some(label.name.clone());
            // The one-byte protobuf lengths are this crate's length prefixes too: each
            // string is copied with its length byte in one go.
            labels.extend_from_slice(&buf[label.name.start - 1..label.name.end]);
            labels.extend_from_slice(&buf[label.value]);
            continue;
        }
        let (field, wire_type) = reader.key()?;
        match field {
            1 => {
                reader.expect(field, wire_type, WIRE_LEN)?;
                let label = reader.len_delimited()?;
                let (label_name, label_value) = parse_label(buf, label)?;
                let name_bytes = &buf[label_name.clone()];
                if name_bytes == METRIC_NAME_LABEL.as_bytes() {
                    name = Some(label_value);
                } else if !label_value.is_empty() {
                    if previous_label.is_some_and(|p| !name_before(&buf[p], name_bytes)) {
                        sorted = false;
                    }
                    previous_label = Some(label_name);
                    push_len_bytes(labels, name_bytes.len());
                    labels.extend_from_slice(name_bytes);
                    push_len_bytes(labels, label_value.len());
                    labels.extend_from_slice(&buf[label_value]);
                } else if std::str::from_utf8(name_bytes).is_err() {
                    // Not kept, still checked: a bad request is refused whole.
                    return Err(DecodeError::Utf8 {
                        offset: label_name.start,
                    });
                }
            }
            2 => {
                reader.expect(field, wire_type, WIRE_LEN)?;
                let sample = reader.len_delimited()?;
                samples.push(parse_sample(buf, sample)?);
            }
            3 => {
                reader.skip(field, wire_type)?;
                summary.exemplars_skipped += 1;
            }
            4 => {
                reader.skip(field, wire_type)?;
                summary.histograms_skipped += 1;
            }
            _ => reader.skip(field, wire_type)?,
        }
    }
    let utf8 = || DecodeError::Utf8 {
        offset: range.start,
    };
    let labels = std::str::from_utf8(labels).map_err(|_| utf8())?.to_owned();
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        summary.series_without_name += 1;
        return Ok(());
    };
    let name_bytes = &buf[name];
    // Neighbouring series usually share their metric: reuse its symbol and kind.
    let (name, kind) = match batch.series.last() {
        Some(previous) if previous.name.as_bytes() == name_bytes => {
            (previous.name.clone(), previous.kind)
        }
        _ => {
            let name = interner.intern_bytes(name_bytes).map_err(|_| utf8())?;
            let kind = MetricKind::from_prometheus_name(&name);
            (name, kind)
        }
    };
    batch.series.push(Series::new(
        name,
        Labels::from_encoded(labels, sorted),
        kind,
        samples,
    ));
    summary.series += 1;
    Ok(())
}

/// A `TimeSeries.labels` entry in the usual shape, read without the field loop.
struct ShortLabel {
    /// The name's bytes.
    name: Range<usize>,
    /// The value's length byte and bytes.
    value: Range<usize>,
    /// Where the entry ends.
    end: usize,
}

/// The entry at `pos` when it is `0a L 0a n <name> 12 v <value>` with `0 < n, v < 64` (one
/// length byte each, equal to [`crate::model::Labels`]' own length prefix) and ends by
/// `end`; anything else (`None`) goes through the general field loop.
#[inline(always)]
fn short_label(buf: &[u8], pos: usize, end: usize) -> Option<ShortLabel> {
    let header: [u8; 4] = buf.get(pos..pos + 4)?.try_into().ok()?;
    let [0x0a, entry_len, 0x0a, name_len] = header else {
        return None;
    };
    let (entry_len, name_len) = (usize::from(entry_len), usize::from(name_len));
    let value_key = pos + 4 + name_len;
    let [0x12, value_len]: [u8; 2] = buf.get(value_key..value_key + 2)?.try_into().ok()? else {
        return None;
    };
    let value_len = usize::from(value_len);
    let entry_end = pos + 2 + entry_len;
    // A one-byte entry length (below 0x80), and it must be exactly the two strings'.
    let short = entry_len < 0x80
        && (1..64).contains(&name_len)
        && (1..64).contains(&value_len)
        && entry_len == 4 + name_len + value_len
        && entry_end <= end;
    short.then(|| ShortLabel {
        name: pos + 4..value_key,
        value: value_key + 1..entry_end,
        end: entry_end,
    })
}

/// A `Label`: the byte ranges of its name and value. The usual layout (name, then value,
/// each once) is read directly; anything else goes through the general field loop.
#[inline]
fn parse_label(
    buf: &[u8],
    range: Range<usize>,
) -> Result<(Range<usize>, Range<usize>), DecodeError> {
    let mut reader = Reader::new(&buf[..range.end], range.start);
    if buf.get(range.start) == Some(&0x0a) {
        reader.pos += 1;
        let name = reader.len_delimited()?;
        if reader.pos == range.end {
            return Ok((name, range.end..range.end));
        }
        if buf.get(reader.pos) == Some(&0x12) {
            reader.pos += 1;
            let value = reader.len_delimited()?;
            if reader.pos == range.end {
                return Ok((name, value));
            }
        }
        reader.pos = range.start;
    }
    let mut name = range.start..range.start;
    let mut value = range.start..range.start;
    while reader.pos < range.end {
        let (field, wire_type) = reader.key()?;
        match field {
            1 => {
                reader.expect(field, wire_type, WIRE_LEN)?;
                name = reader.len_delimited()?;
            }
            2 => {
                reader.expect(field, wire_type, WIRE_LEN)?;
                value = reader.len_delimited()?;
            }
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok((name, value))
}

#[inline]
fn parse_sample(buf: &[u8], range: Range<usize>) -> Result<Sample, DecodeError> {
    let mut reader = Reader::new(&buf[..range.end], range.start);
    let mut sample = Sample::new(0, 0.0);
    while reader.pos < range.end {
        let (field, wire_type) = reader.key()?;
        match field {
            1 => {
                reader.expect(field, wire_type, WIRE_FIXED64)?;
                sample.value = f64::from_bits(reader.fixed64()?);
            }
            2 => {
                reader.expect(field, wire_type, WIRE_VARINT)?;
                // int64 on the wire is the two's complement bit pattern.
                sample.timestamp_ms = reader.varint()? as i64;
            }
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok(sample)
}

/// A `MetricMetadata`: the family name's range (checked as UTF-8) and its type.
fn parse_metadata(buf: &[u8], range: Range<usize>) -> Result<(Range<usize>, i32), DecodeError> {
    let mut reader = Reader::new(&buf[..range.end], range.start);
    let mut metric_type: i32 = 0;
    let mut family = range.start..range.start;
    while reader.pos < range.end {
        let (field, wire_type) = reader.key()?;
        match field {
            1 => {
                reader.expect(field, wire_type, WIRE_VARINT)?;
                metric_type = reader.varint()? as i32;
            }
            2 => {
                reader.expect(field, wire_type, WIRE_LEN)?;
                family = reader.len_delimited()?;
            }
            _ => reader.skip(field, wire_type)?,
        }
    }
    if std::str::from_utf8(&buf[family.clone()]).is_err() {
        return Err(DecodeError::Utf8 {
            offset: family.start,
        });
    }
    Ok((family, metric_type))
}

// ---------------------------------------------------------------------------------------
// Encoder

#[inline]
fn varint_len(value: u64) -> usize {
    // Number of 7-bit groups, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn string_field_len(value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        1 + varint_len(value.len() as u64) + value.len()
    }
}

fn put_string_field(out: &mut Vec<u8>, key: u8, value: &str) {
    if !value.is_empty() {
        out.push(key);
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value.as_bytes());
    }
}

/// One `Label` entry of a `TimeSeries`; the usual short name and value in four appends.
#[inline]
fn put_label(out: &mut Vec<u8>, name: &str, value: &str) {
    let (n, v) = (name.len(), value.len());
    if n.wrapping_sub(1) < 61 && v.wrapping_sub(1) < 61 {
        // Every length fits one byte: 4 + n + v <= 126.
        out.extend_from_slice(&[0x0a, (4 + n + v) as u8, 0x0a, n as u8]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&[0x12, v as u8]);
        out.extend_from_slice(value.as_bytes());
        return;
    }
    out.push(0x0a);
    put_varint(out, label_len(name, value) as u64);
    put_string_field(out, 0x0a, name);
    put_string_field(out, 0x12, value);
}

fn label_len(name: &str, value: &str) -> usize {
    string_field_len(name) + string_field_len(value)
}

fn sample_len(sample: &Sample) -> usize {
    let value_len = if sample.value.to_bits() == 0 { 0 } else { 9 };
    let ts_len = if sample.timestamp_ms == 0 {
        0
    } else {
        1 + varint_len(sample.timestamp_ms as u64)
    };
    value_len + ts_len
}

fn series_body_len(series: &Series, extra: &[(&str, &str)]) -> usize {
    let mut len = 0;
    for_each_label_pair(series, extra, |name, value| {
        let l = label_len(name, value);
        len += 1 + varint_len(l as u64) + l;
    });
    for sample in &series.samples {
        let l = sample_len(sample);
        len += 1 + varint_len(l as u64) + l;
    }
    len
}

/// Size in bytes of `series` as one `timeseries` entry of an uncompressed remote write
/// v1 `WriteRequest` (field key, length and body, `__name__` included, no extra labels):
/// what [`encode_write_request`] appends for it, computed without encoding. The sum over
/// a batch is the protobuf body's length before snappy, the size a vendor meters as
/// ingest. Label order does not change the size, so the labels are not merged in order.
pub fn encoded_series_len(series: &Series) -> u64 {
    let body = plain_series_body_len(series);
    (1 + varint_len(body as u64) + body) as u64
}

/// The body length of a series' `timeseries` entry without extra labels, from the label
/// length prefixes only (see [`crate::model::Labels::sum_lengths`]).
#[inline]
fn plain_series_body_len(series: &Series) -> usize {
    #[inline]
    fn field(name: usize, value: usize) -> usize {
        // The common case, one-byte lengths: a key and a length byte for the label and
        // for each of its two strings.
        if name.wrapping_sub(1) < 61 && value.wrapping_sub(1) < 61 {
            return 6 + name + value;
        }
        let l = string_len(name) + string_len(value);
        1 + varint_len(l as u64) + l
    }
    #[inline]
    fn string_len(len: usize) -> usize {
        if len == 0 {
            0
        } else {
            1 + varint_len(len as u64) + len
        }
    }
    let mut len =
        field(METRIC_NAME_LABEL.len(), series.name.len()) + series.labels.sum_lengths(field);
    for sample in &series.samples {
        let l = sample_len(sample);
        len += 1 + varint_len(l as u64) + l;
    }
    len
}

/// Visits the wire labels of a series in name order: `__name__` at its sorted place among
/// the (already sorted) labels, with `extra` labels (e.g. `phoenix_variant`) merged in,
/// replacing labels of the same name. Without `extra`, nothing is allocated.
fn for_each_label_pair<'a>(
    series: &'a Series,
    extra: &'a [(&'a str, &'a str)],
    mut visit: impl FnMut(&'a str, &'a str),
) {
    if extra.is_empty() {
        let mut name_pending = true;
        for l in series.labels.iter() {
            if name_pending && l.name > METRIC_NAME_LABEL {
                visit(METRIC_NAME_LABEL, &series.name);
                name_pending = false;
            }
            visit(l.name, l.value);
        }
        if name_pending {
            visit(METRIC_NAME_LABEL, &series.name);
        }
        return;
    }
    let mut merged: Vec<(&'a str, &'a str)> =
        Vec::with_capacity(series.labels.len() + 1 + extra.len());
    merged.push((METRIC_NAME_LABEL, &*series.name));
    merged.extend(series.labels.iter().map(|l| (l.name, l.value)));
    for (name, value) in extra {
        if let Some(existing) = merged.iter_mut().find(|(n, _)| n == name) {
            existing.1 = value;
        } else {
            merged.push((name, value));
        }
    }
    merged.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in merged {
        visit(name, value);
    }
}

/// Appends the protobuf encoding of `WriteRequest{timeseries}` for `series` to `out`,
/// adding the `extra` labels to every series.
pub fn encode_write_request(series: &[Series], extra: &[(&str, &str)], out: &mut Vec<u8>) {
    for s in series {
        let body = if extra.is_empty() {
            plain_series_body_len(s)
        } else {
            series_body_len(s, extra)
        };
        out.reserve(11 + body);
        out.push(0x0a);
        put_varint(out, body as u64);
        for_each_label_pair(s, extra, |name, value| put_label(out, name, value));
        for sample in &s.samples {
            out.push(0x12);
            put_varint(out, sample_len(sample) as u64);
            if sample.value.to_bits() != 0 {
                out.push(0x09);
                out.extend_from_slice(&sample.value.to_bits().to_le_bytes());
            }
            if sample.timestamp_ms != 0 {
                out.push(0x10);
                put_varint(out, sample.timestamp_ms as u64);
            }
        }
    }
}

/// Encodes and snappy-compresses remote write bodies, reusing its buffers.
#[derive(Debug)]
pub struct RemoteWriteEncoder {
    snappy: snap::raw::Encoder,
    proto: Vec<u8>,
}

impl Default for RemoteWriteEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RemoteWriteEncoder {
    /// A new encoder.
    pub fn new() -> Self {
        Self {
            snappy: snap::raw::Encoder::new(),
            proto: Vec::new(),
        }
    }

    /// Returns the snappy-compressed `WriteRequest` for `series`.
    pub fn encode(&mut self, series: &[Series], extra: &[(&str, &str)]) -> Vec<u8> {
        self.proto.clear();
        encode_write_request(series, extra, &mut self.proto);
        let mut compressed = vec![0u8; snap::raw::max_compress_len(self.proto.len())];
        // Compression of a buffer sized by max_compress_len cannot fail; an empty body is
        // the conservative fallback rather than a panic.
        let written = self
            .snappy
            .compress(&self.proto, &mut compressed)
            .unwrap_or(0);
        compressed.truncate(written);
        compressed
    }

    /// Size of the last uncompressed protobuf body, in bytes.
    pub fn last_uncompressed_bytes(&self) -> usize {
        self.proto.len()
    }
}

/// The prost-derived reference messages (remote write v1 `types.proto`/`remote.proto`),
/// used to cross-check the hand-written codec and as the benchmark baseline.
pub mod reference {
    /// `prometheus.WriteRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        /// Field 1.
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
        /// Field 3.
        #[prost(message, repeated, tag = "3")]
        pub metadata: Vec<MetricMetadata>,
    }

    /// `prometheus.TimeSeries` (native histograms omitted: prost skips them).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Field 1.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// Field 2.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
        /// Field 3.
        #[prost(message, repeated, tag = "3")]
        pub exemplars: Vec<Exemplar>,
    }

    /// `prometheus.Label`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        /// Field 1.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Field 2.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `prometheus.Sample`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Field 1.
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Field 2.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }

    /// `prometheus.Exemplar`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Exemplar {
        /// Field 1.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// Field 2.
        #[prost(double, tag = "2")]
        pub value: f64,
        /// Field 3.
        #[prost(int64, tag = "3")]
        pub timestamp: i64,
    }

    /// `prometheus.MetricMetadata`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricMetadata {
        /// Field 1 (`MetricType` enum).
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        /// Field 2.
        #[prost(string, tag = "2")]
        pub metric_family_name: String,
        /// Field 4.
        #[prost(string, tag = "4")]
        pub help: String,
        /// Field 5.
        #[prost(string, tag = "5")]
        pub unit: String,
    }

    /// Builds the reference message for a batch of series (labels with `__name__` first
    /// in name order, the way Prometheus sends them).
    pub fn from_series(series: &[crate::model::Series]) -> WriteRequest {
        WriteRequest {
            timeseries: series
                .iter()
                .map(|s| {
                    let mut labels: Vec<Label> = std::iter::once(Label {
                        name: crate::model::METRIC_NAME_LABEL.to_string(),
                        value: s.name.to_string(),
                    })
                    .chain(s.labels.iter().map(|l| Label {
                        name: l.name.to_string(),
                        value: l.value.to_string(),
                    }))
                    .collect();
                    labels.sort_by(|a, b| a.name.cmp(&b.name));
                    TimeSeries {
                        labels,
                        samples: s
                            .samples
                            .iter()
                            .map(|x| Sample {
                                value: x.value,
                                timestamp: x.timestamp_ms,
                            })
                            .collect(),
                        exemplars: Vec::new(),
                    }
                })
                .collect(),
            metadata: Vec::new(),
        }
    }

    /// Decodes with prost and converts into a batch: the reference path the hand-written
    /// decoder is compared against.
    pub fn decode_to_batch(
        compressed: &[u8],
        interner: &mut crate::model::Interner,
    ) -> Result<crate::model::Batch, super::DecodeError> {
        use prost::Message;
        let body = snap::raw::Decoder::new()
            .decompress_vec(compressed)
            .map_err(|e| super::DecodeError::Snappy(e.to_string()))?;
        let request = WriteRequest::decode(body.as_slice())
            .map_err(|e| super::DecodeError::Snappy(format!("prost: {e}")))?;
        let mut batch = crate::model::Batch::default();
        for ts in request.timeseries {
            let mut name = None;
            let mut labels = Vec::with_capacity(ts.labels.len());
            for l in &ts.labels {
                if l.name == crate::model::METRIC_NAME_LABEL {
                    name = Some(l.value.as_str());
                } else if !l.value.is_empty() {
                    labels.push((l.name.as_str(), l.value.as_str()));
                }
            }
            let Some(name) = name.filter(|n| !n.is_empty()) else {
                continue;
            };
            let kind = crate::model::MetricKind::from_prometheus_name(name);
            batch.series.push(crate::model::Series::new(
                interner.intern(name),
                crate::model::Labels::from_pairs(labels),
                kind,
                ts.samples
                    .iter()
                    .map(|s| crate::model::Sample::new(s.timestamp, s.value))
                    .collect::<crate::model::Samples>(),
            ));
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;
    use prost::Message;
    use std::sync::Arc;

    fn series(name: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
        let labels = Labels::from_pairs(labels.iter().copied());
        Series::new(
            Arc::from(name),
            labels,
            MetricKind::from_prometheus_name(name),
            samples
                .iter()
                .map(|(t, v)| Sample::new(*t, *v))
                .collect::<Vec<_>>(),
        )
    }

    fn sample_batch() -> Vec<Series> {
        vec![
            series(
                "http_requests_total",
                &[("job", "api"), ("code", "200")],
                &[(1_700_000_000_000, 12.0), (1_700_000_015_000, 15.5)],
            ),
            series("up", &[("job", "api")], &[(0, 0.0)]),
            series(
                "temperature",
                &[("room", "ü")],
                &[(-5, -1.25), (7, f64::NAN)],
            ),
        ]
    }

    #[test]
    fn hand_encoder_produces_the_same_bytes_as_prost() {
        let series = sample_batch();
        let mut hand = Vec::new();
        encode_write_request(&series, &[], &mut hand);
        let reference = reference::from_series(&series).encode_to_vec();
        assert_eq!(hand, reference);
    }

    #[test]
    fn hand_decoder_round_trips_what_the_encoder_wrote() {
        let series = sample_batch();
        let compressed = RemoteWriteEncoder::new().encode(&series, &[]);
        let mut decoder = RemoteWriteDecoder::default();
        let mut batch = Batch::default();
        let mut interner = Interner::new();
        let summary = decoder
            .decode(&compressed, &mut interner, &mut batch)
            .unwrap();
        assert_eq!(summary.series_without_name, 0);
        assert_eq!(batch.series.len(), series.len());
        for (got, want) in batch.series.iter().zip(&series) {
            assert!(got.same_bits(want), "{got} != {want}");
        }
    }

    #[test]
    fn labels_of_every_length_round_trip_on_both_decoding_paths() {
        // Short labels (both strings under 64 bytes) take the direct path, the others the
        // field loop; a label set mixing both must come back identical.
        let lengths = [1usize, 2, 61, 62, 63, 64, 65, 124, 127, 128, 129, 300];
        let mut all = Vec::new();
        for &n in &lengths {
            for &v in &lengths {
                let name = format!("{}{}", "n".repeat(n - 1), "x");
                let value = "é".repeat(v.div_ceil(2));
                let short = ("a", "b");
                all.push(series_with(&name, &value, short));
            }
        }
        let compressed = RemoteWriteEncoder::new().encode(&all, &[]);
        let mut batch = Batch::default();
        RemoteWriteDecoder::default()
            .decode(&compressed, &mut Interner::new(), &mut batch)
            .unwrap();
        assert_eq!(batch.len(), all.len());
        for (got, want) in batch.series.iter().zip(&all) {
            assert!(got.same_bits(want), "{got} != {want}");
        }

        fn series_with(name: &str, value: &str, other: (&str, &str)) -> Series {
            series(
                "metric_with_a_name_of_some_length",
                &[(name, value), other, ("zz", value)],
                &[(1, 1.0)],
            )
        }
    }

    #[test]
    fn hand_decoder_agrees_with_prost_decoder() {
        let series = sample_batch();
        let compressed = RemoteWriteEncoder::new().encode(&series, &[]);
        let mut interner = Interner::new();
        let reference = reference::decode_to_batch(&compressed, &mut interner).unwrap();
        let mut decoder = RemoteWriteDecoder::default();
        let mut batch = Batch::default();
        decoder
            .decode(&compressed, &mut interner, &mut batch)
            .unwrap();
        assert_eq!(batch.series.len(), reference.series.len());
        for (a, b) in batch.series.iter().zip(&reference.series) {
            assert!(a.same_bits(b));
        }
    }

    #[test]
    fn extra_labels_are_merged_in_name_order() {
        let series = vec![series("up", &[("job", "a"), ("zone", "z")], &[(1, 1.0)])];
        let mut body = Vec::new();
        encode_write_request(&series, &[("phoenix_variant", "candidate")], &mut body);
        let decoded = reference::WriteRequest::decode(body.as_slice()).unwrap();
        let names: Vec<_> = decoded.timeseries[0]
            .labels
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, vec!["__name__", "job", "phoenix_variant", "zone"]);
    }

    #[test]
    fn metadata_types_override_name_guesses() {
        let request = reference::WriteRequest {
            timeseries: vec![reference::TimeSeries {
                labels: vec![reference::Label {
                    name: "__name__".into(),
                    value: "queue_depth".into(),
                }],
                samples: vec![reference::Sample {
                    value: 1.0,
                    timestamp: 1,
                }],
                exemplars: vec![],
            }],
            metadata: vec![reference::MetricMetadata {
                r#type: 1,
                metric_family_name: "queue_depth".into(),
                help: String::new(),
                unit: String::new(),
            }],
        };
        let mut decoder = RemoteWriteDecoder::default();
        let mut batch = Batch::default();
        decoder
            .decode_uncompressed(&request.encode_to_vec(), &mut Interner::new(), &mut batch)
            .unwrap();
        assert_eq!(batch.series[0].kind, MetricKind::Counter);
    }

    #[test]
    fn series_without_name_are_skipped_and_counted() {
        let request = reference::WriteRequest {
            timeseries: vec![reference::TimeSeries {
                labels: vec![reference::Label {
                    name: "job".into(),
                    value: "x".into(),
                }],
                samples: vec![],
                exemplars: vec![],
            }],
            metadata: vec![],
        };
        let mut decoder = RemoteWriteDecoder::default();
        let mut batch = Batch::default();
        let summary = decoder
            .decode_uncompressed(&request.encode_to_vec(), &mut Interner::new(), &mut batch)
            .unwrap();
        assert_eq!((summary.series, summary.series_without_name), (0, 1));
        assert!(batch.is_empty());
    }

    #[test]
    fn malformed_inputs_are_errors_and_leave_the_batch_as_it_was() {
        let mut decoder = RemoteWriteDecoder::default();
        let mut interner = Interner::new();
        let mut batch = Batch::new(vec![series("kept", &[], &[(1, 1.0)])]);
        let mut decode = |body: &[u8], compressed: bool| {
            if compressed {
                decoder.decode(body, &mut interner, &mut batch)
            } else {
                decoder.decode_uncompressed(body, &mut interner, &mut batch)
            }
        };
        assert!(matches!(
            decode(b"\xff\xff\xff", true),
            Err(DecodeError::Snappy(_))
        ));
        // Field 1, length 5, but only 1 byte follows.
        assert!(matches!(
            decode(&[0x0a, 0x05, 0x00], false),
            Err(DecodeError::Truncated { .. })
        ));
        // Field 1 with varint wire type.
        assert!(matches!(
            decode(&[0x08, 0x01], false),
            Err(DecodeError::WireType { .. })
        ));
        // A label whose name is invalid UTF-8 (and whose value is empty).
        assert!(matches!(
            decode(&[0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0xff], false),
            Err(DecodeError::Utf8 { .. })
        ));
        // A good series, then one whose label value is invalid UTF-8: nothing is added.
        let good = reference::from_series(&[series("up", &[("job", "a")], &[(1, 1.0)])]);
        let mut body = prost::Message::encode_to_vec(&good);
        body.extend_from_slice(&[
            0x0a, 0x10, 0x0a, 0x0e, 0x0a, 0x08, b'_', b'_', b'n', b'a', b'm', b'e', b'_', b'_',
            0x12, 0x02, 0xc3, 0x28,
        ]);
        assert!(matches!(
            decode(&body, false),
            Err(DecodeError::Utf8 { .. })
        ));
        assert_eq!(batch.len(), 1);
        assert_eq!(&*batch.series[0].name, "kept");
    }

    #[test]
    fn unsorted_and_repeated_labels_are_sorted_and_the_last_one_wins() {
        let request = reference::WriteRequest {
            timeseries: vec![reference::TimeSeries {
                labels: [
                    ("", "x"),
                    ("", "y"),
                    ("zone", "z"),
                    ("__name__", "up"),
                    ("job", "a"),
                    ("job", "b"),
                    ("e", ""),
                ]
                .iter()
                .map(|(n, v)| reference::Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
                samples: vec![reference::Sample {
                    value: 1.0,
                    timestamp: 1,
                }],
                exemplars: vec![],
            }],
            metadata: vec![],
        };
        let mut batch = Batch::default();
        RemoteWriteDecoder::default()
            .decode_uncompressed(&request.encode_to_vec(), &mut Interner::new(), &mut batch)
            .unwrap();
        assert_eq!(
            batch.series[0].labels,
            Labels::from_pairs([("", "y"), ("job", "b"), ("zone", "z")])
        );
    }

    #[test]
    fn oversized_bodies_are_refused_before_allocation() {
        let big = vec![b'a'; 1000];
        let compressed = snap::raw::Encoder::new().compress_vec(&big).unwrap();
        let mut decoder = RemoteWriteDecoder::new(100);
        assert_eq!(
            decoder
                .decode(&compressed, &mut Interner::new(), &mut Batch::default())
                .unwrap_err(),
            DecodeError::TooLarge {
                declared_bytes: 1000,
                limit_bytes: 100
            }
        );
    }

    #[test]
    fn encoded_series_len_equals_the_encoders_output_length() {
        let mut batch = sample_batch();
        let long = "v".repeat(200);
        batch.push(series(
            "a_very_long_metric_name_bucket",
            &[("le", "+Inf"), ("pod", &long), ("zone", "eu-west-1a")],
            &(0..40)
                .map(|i| (1_700_000_000_000 + i, i as f64))
                .collect::<Vec<_>>(),
        ));
        batch.push(series("empty_samples", &[("a", "b")], &[]));
        for n in [
            1usize, 59, 60, 61, 62, 63, 64, 120, 127, 128, 129, 16_383, 16_384,
        ] {
            let value = "x".repeat(n);
            batch.push(series(
                &value,
                &[(&value, &value), ("y", &value)],
                &[(1, 1.0)],
            ));
        }
        batch.push(series("", &[], &[(0, 0.0), (i64::MIN, 0.5)]));
        let mut total = 0;
        for s in &batch {
            let mut one = Vec::new();
            encode_write_request(std::slice::from_ref(s), &[], &mut one);
            assert_eq!(encoded_series_len(s), one.len() as u64, "{s}");
            total += encoded_series_len(s);
        }
        let mut all = Vec::new();
        encode_write_request(&batch, &[], &mut all);
        assert_eq!(total, all.len() as u64);
        assert_eq!(all, reference::from_series(&batch).encode_to_vec());
        let mut encoder = RemoteWriteEncoder::new();
        encoder.encode(&batch, &[]);
        assert_eq!(total, encoder.last_uncompressed_bytes() as u64);
    }

    #[test]
    fn varint_len_matches_encoding() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX, 1 << 63] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }
}
