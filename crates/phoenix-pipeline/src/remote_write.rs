//! Prometheus remote write v1: a hand-written decoder and encoder for the hot path, and
//! prost-derived reference messages for tests and benchmarks.
//!
//! The decoder reads a snappy-compressed `WriteRequest` into buffers that are reused from
//! one request to the next: labels become byte ranges into the decompressed body, samples
//! land in one flat vector, and nothing is allocated per sample or per label. Converting
//! the view into a [`Batch`] interns the strings. Every malformed input yields a
//! [`DecodeError`], never a panic (a property test feeds it arbitrary bytes).

use std::ops::Range;

use crate::model::{Batch, Interner, LabelsWriter, MetricKind, Sample, Series, METRIC_NAME_LABEL};

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
    /// A body or count does not fit the 32-bit offsets the decoder uses.
    #[error("request larger than 4 GiB")]
    Overflow,
}

/// A label as byte ranges into the decoded body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelRef {
    name_start: u32,
    name_end: u32,
    value_start: u32,
    value_end: u32,
}

/// A series as ranges into the decoder's label and sample vectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRef {
    /// Range into [`WriteRequestView::labels`].
    pub labels: Range<u32>,
    /// Range into [`WriteRequestView::samples`].
    pub samples: Range<u32>,
}

/// Reusable buffers for one decoded request.
#[derive(Debug, Default, Clone)]
pub struct DecodedWriteRequest {
    labels: Vec<LabelRef>,
    series: Vec<SeriesRef>,
    samples: Vec<Sample>,
    metadata: Vec<(LabelRef, i32)>,
    /// Native histograms seen and skipped (v1 float samples only are supported).
    pub histograms_skipped: usize,
    /// Exemplars seen and skipped.
    pub exemplars_skipped: usize,
}

impl DecodedWriteRequest {
    fn clear(&mut self) {
        self.labels.clear();
        self.series.clear();
        self.samples.clear();
        self.metadata.clear();
        self.histograms_skipped = 0;
        self.exemplars_skipped = 0;
    }
}

/// A borrowed view of a decoded request.
#[derive(Debug, Clone, Copy)]
pub struct WriteRequestView<'a> {
    body: &'a [u8],
    decoded: &'a DecodedWriteRequest,
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

impl<'a> WriteRequestView<'a> {
    fn bytes_at(&self, start: u32, end: u32) -> &'a [u8] {
        &self.body[start as usize..end as usize]
    }

    fn str_at(&self, start: u32, end: u32) -> &'a str {
        // Metadata names are validated as UTF-8 by the parser; never panics regardless.
        std::str::from_utf8(self.bytes_at(start, end)).unwrap_or_default()
    }

    /// Number of series.
    pub fn series_count(&self) -> usize {
        self.decoded.series.len()
    }

    /// Number of samples.
    pub fn sample_count(&self) -> usize {
        self.decoded.samples.len()
    }

    /// The series references.
    pub fn series(&self) -> &'a [SeriesRef] {
        &self.decoded.series
    }

    /// The labels of one series as `(name, value)` byte pairs, not yet checked for
    /// UTF-8 (interning checks them, see [`Self::append_to_batch`]).
    pub fn label_bytes(
        &self,
        series: &SeriesRef,
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        let range = series.labels.start as usize..series.labels.end as usize;
        self.decoded.labels[range].iter().map(move |l| {
            (
                self.bytes_at(l.name_start, l.name_end),
                self.bytes_at(l.value_start, l.value_end),
            )
        })
    }

    /// The samples of one series.
    pub fn samples(&self, series: &SeriesRef) -> &'a [Sample] {
        &self.decoded.samples[series.samples.start as usize..series.samples.end as usize]
    }

    /// `(metric family name, metric type)` pairs from the request's metadata.
    pub fn metadata(&self) -> impl Iterator<Item = (&'a str, i32)> + '_ {
        self.decoded
            .metadata
            .iter()
            .map(|(l, t)| (self.str_at(l.name_start, l.name_end), *t))
    }

    /// Appends the request's series to `batch`, checking strings for UTF-8 and interning
    /// metric names. Series without a `__name__` label are skipped and their count
    /// returned.
    pub fn append_to_batch(
        &self,
        interner: &mut Interner,
        batch: &mut Batch,
    ) -> Result<usize, DecodeError> {
        let mut family_kinds: Vec<(&str, MetricKind)> = Vec::new();
        for (family, metric_type) in self.metadata() {
            if let Some(kind) = kind_from_metadata(metric_type) {
                family_kinds.push((family, kind));
            }
        }
        let mut skipped_without_name = 0;
        batch.series.reserve(self.series_count());
        for series_ref in self.series() {
            let range = series_ref.labels.start as usize..series_ref.labels.end as usize;
            let labels = &self.decoded.labels[range];
            let span = self.label_span(labels);
            let mut writer = LabelsWriter::with_capacity(span.as_ref().map_or(0, |s| s.1.len()));
            let mut name: Option<&str> = None;
            for l in labels {
                let (label_name, label_value) = match &span {
                    Some((base, text)) => (
                        text.get((l.name_start - base) as usize..(l.name_end - base) as usize),
                        text.get((l.value_start - base) as usize..(l.value_end - base) as usize),
                    ),
                    None => (
                        std::str::from_utf8(self.bytes_at(l.name_start, l.name_end)).ok(),
                        std::str::from_utf8(self.bytes_at(l.value_start, l.value_end)).ok(),
                    ),
                };
                let (Some(label_name), Some(label_value)) = (label_name, label_value) else {
                    return Err(DecodeError::Utf8 {
                        offset: l.name_start as usize,
                    });
                };
                if label_name == METRIC_NAME_LABEL {
                    name = Some(label_value);
                } else {
                    writer.push(label_name, label_value);
                }
            }
            let Some(name) = name.filter(|n| !n.is_empty()) else {
                skipped_without_name += 1;
                continue;
            };
            // Neighbouring series usually share their metric: reuse its symbol and kind.
            let (name, kind) = match batch.series.last() {
                Some(previous) if &*previous.name == name => (previous.name.clone(), previous.kind),
                _ => {
                    let kind = family_kinds
                        .iter()
                        .find(|(family, _)| family_matches(family, name))
                        .map(|(_, kind)| *kind)
                        .unwrap_or_else(|| MetricKind::from_prometheus_name(name));
                    (interner.intern(name), kind)
                }
            };
            batch.series.push(Series::new(
                name,
                writer.finish(),
                kind,
                self.samples(series_ref).to_vec(),
            ));
        }
        Ok(skipped_without_name)
    }

    /// The bytes from a series' first label to the end of its last, as one string when
    /// they are valid UTF-8 (with the offset of its first byte): one check for the whole
    /// series instead of one per name and value. Every name and value in it is bounded by
    /// protobuf key or length bytes, which are ASCII, so slicing the checked string at
    /// their bounds yields them, valid. `None` (a non-ASCII length byte, a field between
    /// the labels, a bad string) makes the caller check each string alone.
    fn label_span(&self, labels: &[LabelRef]) -> Option<(u32, &'a str)> {
        let first = labels.first()?;
        let last = labels.last()?;
        let start = first.name_start.min(first.value_start);
        let end = last.value_end.max(last.name_end);
        if start > end {
            return None;
        }
        let text = std::str::from_utf8(self.bytes_at(start, end)).ok()?;
        Some((start, text))
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

/// Decodes snappy-compressed remote write bodies into reused buffers.
#[derive(Debug)]
pub struct RemoteWriteDecoder {
    snappy: snap::raw::Decoder,
    body: Vec<u8>,
    decoded: DecodedWriteRequest,
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
            decoded: DecodedWriteRequest::default(),
            max_decompressed_bytes,
        }
    }

    /// Decompresses and decodes one request; the view borrows the decoder's buffers.
    pub fn decode(&mut self, compressed: &[u8]) -> Result<WriteRequestView<'_>, DecodeError> {
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
        parse_write_request(&self.body, &mut self.decoded)?;
        Ok(WriteRequestView {
            body: &self.body,
            decoded: &self.decoded,
        })
    }

    /// Decodes an uncompressed protobuf body (copied into the decoder's buffer).
    pub fn decode_uncompressed(
        &mut self,
        body: &[u8],
    ) -> Result<WriteRequestView<'_>, DecodeError> {
        self.body.clear();
        self.body.extend_from_slice(body);
        parse_write_request(&self.body, &mut self.decoded)?;
        Ok(WriteRequestView {
            body: &self.body,
            decoded: &self.decoded,
        })
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

    #[inline]
    fn varint(&mut self) -> Result<u64, DecodeError> {
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

fn to_u32(value: usize) -> Result<u32, DecodeError> {
    u32::try_from(value).map_err(|_| DecodeError::Overflow)
}

fn check_utf8(buf: &[u8], range: &Range<usize>) -> Result<(), DecodeError> {
    std::str::from_utf8(&buf[range.clone()])
        .map(drop)
        .map_err(|_| DecodeError::Utf8 {
            offset: range.start,
        })
}

/// Parses an uncompressed `WriteRequest` into `out` (cleared first).
pub fn parse_write_request(buf: &[u8], out: &mut DecodedWriteRequest) -> Result<(), DecodeError> {
    out.clear();
    to_u32(buf.len())?;
    let mut reader = Reader::new(buf, 0);
    while reader.pos < buf.len() {
        let (field, wire_type) = reader.key()?;
        match field {
            1 => {
                reader.expect(field, wire_type, WIRE_LEN)?;
                let range = reader.len_delimited()?;
                parse_time_series(buf, range, out)?;
            }
            3 => {
                reader.expect(field, wire_type, WIRE_LEN)?;
                let range = reader.len_delimited()?;
                parse_metadata(buf, range, out)?;
            }
            _ => reader.skip(field, wire_type)?,
        }
    }
    Ok(())
}

fn parse_time_series(
    buf: &[u8],
    range: Range<usize>,
    out: &mut DecodedWriteRequest,
) -> Result<(), DecodeError> {
    let labels_start = to_u32(out.labels.len())?;
    let samples_start = to_u32(out.samples.len())?;
    let mut reader = Reader::new(&buf[..range.end], range.start);
    while reader.pos < range.end {
        let (field, wire_type) = reader.key()?;
        match field {
            1 => {
                reader.expect(field, wire_type, WIRE_LEN)?;
                let label = reader.len_delimited()?;
                out.labels.push(parse_label(buf, label)?);
            }
            2 => {
                reader.expect(field, wire_type, WIRE_LEN)?;
                let sample = reader.len_delimited()?;
                out.samples.push(parse_sample(buf, sample)?);
            }
            3 => {
                reader.skip(field, wire_type)?;
                out.exemplars_skipped += 1;
            }
            4 => {
                reader.skip(field, wire_type)?;
                out.histograms_skipped += 1;
            }
            _ => reader.skip(field, wire_type)?,
        }
    }
    out.series.push(SeriesRef {
        labels: labels_start..to_u32(out.labels.len())?,
        samples: samples_start..to_u32(out.samples.len())?,
    });
    Ok(())
}

#[inline]
fn parse_label(buf: &[u8], range: Range<usize>) -> Result<LabelRef, DecodeError> {
    let mut reader = Reader::new(&buf[..range.end], range.start);
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
    // UTF-8 is checked when the label is interned (see `append_to_batch`).
    Ok(LabelRef {
        name_start: to_u32(name.start)?,
        name_end: to_u32(name.end)?,
        value_start: to_u32(value.start)?,
        value_end: to_u32(value.end)?,
    })
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

fn parse_metadata(
    buf: &[u8],
    range: Range<usize>,
    out: &mut DecodedWriteRequest,
) -> Result<(), DecodeError> {
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
    check_utf8(buf, &family)?;
    let family_ref = LabelRef {
        name_start: to_u32(family.start)?,
        name_end: to_u32(family.end)?,
        value_start: 0,
        value_end: 0,
    };
    out.metadata.push((family_ref, metric_type));
    Ok(())
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
    let mut len = field(METRIC_NAME_LABEL.len(), series.name.len());
    for l in series.labels.iter() {
        len += field(l.name.len(), l.value.len());
    }
    for sample in &series.samples {
        let l = sample_len(sample);
        len += 1 + varint_len(l as u64) + l;
    }
    (1 + varint_len(len as u64) + len) as u64
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
        out.push(0x0a);
        put_varint(out, series_body_len(s, extra) as u64);
        for_each_label_pair(s, extra, |name, value| {
            out.push(0x0a);
            put_varint(out, label_len(name, value) as u64);
            put_string_field(out, 0x0a, name);
            put_string_field(out, 0x12, value);
        });
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
                    .collect(),
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
            samples.iter().map(|(t, v)| Sample::new(*t, *v)).collect(),
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
        let view = decoder.decode(&compressed).unwrap();
        let mut batch = Batch::default();
        let mut interner = Interner::new();
        assert_eq!(view.append_to_batch(&mut interner, &mut batch), Ok(0));
        assert_eq!(batch.series.len(), series.len());
        for (got, want) in batch.series.iter().zip(&series) {
            assert!(got.same_bits(want), "{got} != {want}");
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
            .decode(&compressed)
            .unwrap()
            .append_to_batch(&mut interner, &mut batch)
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
        let view = decoder
            .decode_uncompressed(&request.encode_to_vec())
            .unwrap();
        let mut batch = Batch::default();
        view.append_to_batch(&mut Interner::new(), &mut batch)
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
        let view = decoder
            .decode_uncompressed(&request.encode_to_vec())
            .unwrap();
        let mut batch = Batch::default();
        assert_eq!(
            view.append_to_batch(&mut Interner::new(), &mut batch),
            Ok(1)
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let mut decoder = RemoteWriteDecoder::default();
        assert!(matches!(
            decoder.decode(b"\xff\xff\xff"),
            Err(DecodeError::Snappy(_))
        ));
        // Field 1, length 5, but only 1 byte follows.
        assert!(matches!(
            decoder.decode_uncompressed(&[0x0a, 0x05, 0x00]),
            Err(DecodeError::Truncated { .. })
        ));
        // Field 1 with varint wire type.
        assert!(matches!(
            decoder.decode_uncompressed(&[0x08, 0x01]),
            Err(DecodeError::WireType { .. })
        ));
        // A label whose name is invalid UTF-8: refused when interned.
        let view = decoder
            .decode_uncompressed(&[0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0xff])
            .unwrap();
        assert!(matches!(
            view.append_to_batch(&mut Interner::new(), &mut Batch::default()),
            Err(DecodeError::Utf8 { .. })
        ));
    }

    #[test]
    fn oversized_bodies_are_refused_before_allocation() {
        let big = vec![b'a'; 1000];
        let compressed = snap::raw::Encoder::new().compress_vec(&big).unwrap();
        let mut decoder = RemoteWriteDecoder::new(100);
        assert_eq!(
            decoder.decode(&compressed).unwrap_err(),
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
