//! A bounded on-disk FIFO of records, shared by the KPI buffer and the remote-write buffer.
//!
//! Records are appended to numbered segment files as `magic | len | crc32c | payload`
//! (little-endian `u32`s; the checksum covers `len` and the payload). A ledger file records
//! the position up to which records were delivered (written with a rename, so it is either
//! the old or the new position). On open, a torn tail (a record cut short by a crash) is
//! detected, dropped and counted; a corrupt record in the middle is skipped by scanning for
//! the next valid header, and counted; everything else is replayed in order. When the
//! queue holds `max_bytes`, new records are refused and counted (the oldest are never
//! silently lost).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

const MAGIC: u32 = 0x3158_4850; // "PHX1" little-endian
const HEADER_BYTES: u64 = 12;
/// Largest record accepted (a bigger length field is corruption).
pub const MAX_RECORD_BYTES: u64 = 64 * 1024 * 1024;
const LEDGER: &str = "ledger";

/// Why the queue could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A file operation failed.
    #[error("disk queue {dir}: {source}")]
    Io {
        /// The queue directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The record does not fit: the queue is full (counted as dropped).
    #[error("disk queue is full ({pending_bytes} of {max_bytes} bytes)")]
    Full {
        /// Bytes waiting.
        pending_bytes: u64,
        /// The bound.
        max_bytes: u64,
    },
    /// One record larger than [`MAX_RECORD_BYTES`].
    #[error("record of {0} bytes is too large")]
    TooLarge(usize),
}

/// Counters of one queue, readable without the lock (for `/metrics` and heartbeats).
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Records accepted.
    pub pushed_records: AtomicU64,
    /// Records delivered and committed.
    pub committed_records: AtomicU64,
    /// Records refused because the queue was full.
    pub dropped_records: AtomicU64,
    /// Bytes of those.
    pub dropped_bytes: AtomicU64,
    /// Corrupt regions skipped (each may span several records).
    pub corrupt_regions: AtomicU64,
    /// Bytes skipped in them.
    pub corrupt_bytes: AtomicU64,
    /// Bytes of torn tails dropped at open.
    pub torn_tail_bytes: AtomicU64,
    /// Bytes waiting (from the committed position to the end).
    pub pending_bytes: AtomicU64,
    /// Records waiting.
    pub pending_records: AtomicU64,
}

impl QueueStats {
    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A position in the queue: segment number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// Segment number.
    pub segment: u64,
    /// Offset in it.
    pub offset: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    segment_max_bytes: u64,
    /// Size of every segment file (the last one is being written).
    segments: BTreeMap<u64, u64>,
    writer: File,
    write: Position,
    /// Next record to hand out.
    read: Position,
    /// Delivered up to here (the ledger).
    committed: Position,
    /// Bytes and records handed out since the last commit.
    read_bytes: u64,
    read_records: u64,
    /// Reader handle on a segment.
    reader: Option<(u64, File)>,
}

/// The queue. Push from any thread; one consumer reads with [`DiskQueue::next`] and
/// confirms with [`DiskQueue::commit`].
#[derive(Debug)]
pub struct DiskQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    stats: Arc<QueueStats>,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

fn encode_header(payload: &[u8]) -> [u8; 12] {
    let len = payload.len() as u32;
    let mut crc = crc32c::crc32c(&len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    let mut header = [0u8; 12];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..12].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What is at an offset of a segment.
enum Slot {
    /// A valid record: payload and total size.
    Record(Vec<u8>, u64),
    /// Not a valid record.
    Invalid,
    /// The segment ends before a whole record.
    Short,
}

fn read_slot(file: &File, offset: u64, size: u64) -> std::io::Result<Slot> {
    if offset + HEADER_BYTES > size {
        return Ok(Slot::Short);
    }
    let mut header = [0u8; 12];
    file.read_exact_at(&mut header, offset)?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if magic != MAGIC || u64::from(len) > MAX_RECORD_BYTES {
        return Ok(Slot::Invalid);
    }
    let total = HEADER_BYTES + u64::from(len);
    if offset + total > size {
        return Ok(Slot::Short);
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, offset + HEADER_BYTES)?;
    let expected = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &payload);
    if expected != crc {
        return Ok(Slot::Invalid);
    }
    Ok(Slot::Record(payload, total))
}

/// The offset of the next valid record at or after `from`, if any.
fn resync(file: &File, from: u64, size: u64) -> std::io::Result<Option<u64>> {
    let magic = MAGIC.to_le_bytes();
    let mut offset = from;
    let mut buf = vec![0u8; 64 * 1024];
    while offset + HEADER_BYTES <= size {
        let n = ((size - offset) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], offset)?;
        let mut i = 0;
        while i + 4 <= n {
            if buf[i..i + 4] == magic {
                if let Slot::Record(..) = read_slot(file, offset + i as u64, size)? {
                    return Ok(Some(offset + i as u64));
                }
            }
            i += 1;
        }
        // Keep the last 3 bytes: a magic may straddle the chunk boundary.
        offset += (n.saturating_sub(3)).max(1) as u64;
    }
    Ok(None)
}

fn read_ledger(dir: &Path) -> Option<Position> {
    let bytes = std::fs::read(dir.join(LEDGER)).ok()?;
    if bytes.len() != 20 {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
    if crc32c::crc32c(&bytes[..16]) != crc {
        return None;
    }
    Some(Position {
        segment: u64::from_le_bytes(bytes[0..8].try_into().ok()?),
        offset: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
    })
}

fn write_ledger(dir: &Path, position: Position) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&position.segment.to_le_bytes());
    bytes.extend_from_slice(&position.offset.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("ledger.tmp");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(tmp, dir.join(LEDGER))
}

impl DiskQueue {
    /// Opens (or creates) the queue in `dir`, recovering what a crash left.
    pub fn open(
        dir: impl Into<PathBuf>,
        max_bytes: u64,
        segment_max_bytes: u64,
    ) -> Result<Self, QueueError> {
        let dir = dir.into();
        let io = |source| QueueError::Io {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let stats = Arc::new(QueueStats::default());
        let mut segments = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let size = entry.metadata().map_err(io)?.len();
            segments.insert(number, size);
        }
        let first = segments.keys().next().copied().unwrap_or(1);
        let committed = match read_ledger(&dir) {
            Some(p) if segments.contains_key(&p.segment) || segments.is_empty() => p,
            Some(p) if p.segment < first => Position {
                segment: first,
                offset: 0,
            },
            Some(p) => p,
            None => Position {
                segment: first,
                offset: 0,
            },
        };
        // Segments wholly delivered before a crash.
        let stale: Vec<u64> = segments
            .keys()
            .copied()
            .filter(|s| *s < committed.segment)
            .collect();
        for s in stale {
            let _ = std::fs::remove_file(segment_path(&dir, s));
            segments.remove(&s);
        }
        // Scan what is left: count it, skip corruption, cut a torn tail off the last segment.
        let mut pending_bytes = 0u64;
        let mut pending_records = 0u64;
        let last = segments.keys().next_back().copied();
        let numbers: Vec<u64> = segments.keys().copied().collect();
        for number in numbers {
            let path = segment_path(&dir, number);
            let file = File::open(&path).map_err(io)?;
            let size = segments.get(&number).copied().unwrap_or(0);
            let mut offset = if number == committed.segment {
                committed.offset.min(size)
            } else {
                0
            };
            loop {
                match read_slot(&file, offset, size).map_err(io)? {
                    Slot::Record(_, total) => {
                        pending_bytes += total;
                        pending_records += 1;
                        offset += total;
                    }
                    Slot::Invalid | Slot::Short if offset >= size => break,
                    Slot::Invalid | Slot::Short => {
                        match resync(&file, offset + 1, size).map_err(io)? {
                            Some(next) => {
                                // Counted as corrupt when the reader skips it.
                                pending_bytes += next - offset;
                                offset = next;
                            }
                            None if Some(number) == last => {
                                // A torn tail: drop it so new records follow the last good one.
                                stats
                                    .torn_tail_bytes
                                    .fetch_add(size - offset, Ordering::Relaxed);
                                let f = OpenOptions::new().write(true).open(&path).map_err(io)?;
                                f.set_len(offset).map_err(io)?;
                                segments.insert(number, offset);
                                break;
                            }
                            None => {
                                pending_bytes += size - offset;
                                break;
                            }
                        }
                    }
                }
            }
        }
        let (write_segment, write_offset) = match segments.iter().next_back() {
            Some((n, size)) => (*n, *size),
            None => (committed.segment.max(1), 0),
        };
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&dir, write_segment))
            .map_err(io)?;
        segments.entry(write_segment).or_insert(write_offset);
        let committed = if segments.contains_key(&committed.segment) {
            committed
        } else {
            Position {
                segment: write_segment,
                offset: 0,
            }
        };
        stats.pending_bytes.store(pending_bytes, Ordering::Relaxed);
        stats
            .pending_records
            .store(pending_records, Ordering::Relaxed);
        Ok(Self {
            inner: Mutex::new(Inner {
                dir,
                max_bytes,
                segment_max_bytes,
                segments,
                writer,
                write: Position {
                    segment: write_segment,
                    offset: write_offset,
                },
                read: committed,
                committed,
                read_bytes: 0,
                read_records: 0,
                reader: None,
            }),
            notify: Notify::new(),
            stats,
        })
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }

    /// Appends one record, or refuses it (and counts it) when the queue is full.
    pub fn push(&self, payload: &[u8]) -> Result<(), QueueError> {
        let total = HEADER_BYTES + payload.len() as u64;
        if payload.len() as u64 > MAX_RECORD_BYTES {
            return Err(QueueError::TooLarge(payload.len()));
        }
        let mut inner = self.inner.lock();
        let pending = QueueStats::get(&self.stats.pending_bytes);
        if pending + total > inner.max_bytes {
            self.stats.dropped_records.fetch_add(1, Ordering::Relaxed);
            self.stats.dropped_bytes.fetch_add(total, Ordering::Relaxed);
            return Err(QueueError::Full {
                pending_bytes: pending,
                max_bytes: inner.max_bytes,
            });
        }
        let dir = inner.dir.clone();
        let io = |source| QueueError::Io {
            dir: dir.clone(),
            source,
        };
        if inner.write.offset > 0 && inner.write.offset + total > inner.segment_max_bytes {
            let next = inner.write.segment + 1;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment_path(&inner.dir, next))
                .map_err(io)?;
            // The finished segment's data reaches the disk before the next one starts.
            let _ = inner.writer.sync_data();
            inner.writer = file;
            inner.write = Position {
                segment: next,
                offset: 0,
            };
            inner.segments.insert(next, 0);
        }
        let mut record = Vec::with_capacity(total as usize);
        record.extend_from_slice(&encode_header(payload));
        record.extend_from_slice(payload);
        if let Err(e) = inner.writer.write_all(&record) {
            // A partial write would be a torn record in the middle: cut it off.
            let offset = inner.write.offset;
            let _ = inner.writer.set_len(offset);
            return Err(io(e));
        }
        inner.write.offset += total;
        let (segment, offset) = (inner.write.segment, inner.write.offset);
        inner.segments.insert(segment, offset);
        drop(inner);
        self.stats.pushed_records.fetch_add(1, Ordering::Relaxed);
        self.stats.pending_bytes.fetch_add(total, Ordering::Relaxed);
        self.stats.pending_records.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
        Ok(())
    }

    /// The next record after those already handed out, or `None` when there is none yet.
    /// Records stay in the queue until [`DiskQueue::commit`].
    pub fn next(&self) -> Result<Option<Vec<u8>>, QueueError> {
        let mut inner = self.inner.lock();
        let dir = inner.dir.clone();
        let io = |source| QueueError::Io {
            dir: dir.clone(),
            source,
        };
        loop {
            let segment = inner.read.segment;
            let Some(size) = inner.segments.get(&segment).copied() else {
                // The read segment is gone (already delivered): go to the next one.
                match inner.segments.range(segment + 1..).next() {
                    Some((next, _)) => {
                        inner.read = Position {
                            segment: *next,
                            offset: 0,
                        };
                        continue;
                    }
                    None => return Ok(None),
                }
            };
            if inner.read.offset >= size {
                if segment >= inner.write.segment {
                    return Ok(None);
                }
                inner.read = Position {
                    segment: segment + 1,
                    offset: 0,
                };
                continue;
            }
            if inner.reader.as_ref().map(|(n, _)| *n) != Some(segment) {
                let file = File::open(segment_path(&inner.dir, segment)).map_err(io)?;
                inner.reader = Some((segment, file));
            }
            let offset = inner.read.offset;
            let slot = match &inner.reader {
                Some((_, file)) => read_slot(file, offset, size).map_err(io)?,
                None => return Ok(None),
            };
            match slot {
                Slot::Record(payload, total) => {
                    inner.read.offset += total;
                    inner.read_bytes += total;
                    inner.read_records += 1;
                    return Ok(Some(payload));
                }
                Slot::Invalid | Slot::Short => {
                    let next = match &inner.reader {
                        Some((_, file)) => resync(file, offset + 1, size).map_err(io)?,
                        None => None,
                    };
                    let skip_to = next.unwrap_or(size);
                    self.stats.corrupt_regions.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .corrupt_bytes
                        .fetch_add(skip_to - offset, Ordering::Relaxed);
                    tracing::warn!(
                        dir = %inner.dir.display(),
                        segment,
                        offset,
                        skipped_bytes = skip_to - offset,
                        "corrupt record in disk queue skipped"
                    );
                    inner.read.offset = skip_to;
                    inner.read_bytes += skip_to - offset;
                }
            }
        }
    }

    /// Marks every record handed out so far as delivered: persists the position and
    /// deletes finished segments.
    pub fn commit(&self) -> Result<(), QueueError> {
        let mut inner = self.inner.lock();
        if inner.read == inner.committed {
            return Ok(());
        }
        let dir = inner.dir.clone();
        write_ledger(&dir, inner.read).map_err(|source| QueueError::Io {
            dir: dir.clone(),
            source,
        })?;
        inner.committed = inner.read;
        let done: Vec<u64> = inner
            .segments
            .range(..inner.committed.segment)
            .map(|(n, _)| *n)
            .collect();
        for n in done {
            let _ = std::fs::remove_file(segment_path(&dir, n));
            inner.segments.remove(&n);
            if inner.reader.as_ref().map(|(r, _)| *r) == Some(n) {
                inner.reader = None;
            }
        }
        let (bytes, records) = (inner.read_bytes, inner.read_records);
        inner.read_bytes = 0;
        inner.read_records = 0;
        drop(inner);
        let _ = self
            .stats
            .pending_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
        let _ =
            self.stats
                .pending_records
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(records))
                });
        self.stats
            .committed_records
            .fetch_add(records, Ordering::Relaxed);
        Ok(())
    }

    /// Hands out again, on the next [`DiskQueue::next`], every record not yet committed.
    pub fn rewind(&self) {
        let mut inner = self.inner.lock();
        inner.read = inner.committed;
        inner.read_bytes = 0;
        inner.read_records = 0;
    }

    /// Forces written records to the disk.
    pub fn sync(&self) -> Result<(), QueueError> {
        let inner = self.inner.lock();
        inner.writer.sync_data().map_err(|source| QueueError::Io {
            dir: inner.dir.clone(),
            source,
        })
    }

    /// Waits until a record may be available.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Bytes waiting.
    pub fn pending_bytes(&self) -> u64 {
        QueueStats::get(&self.stats.pending_bytes)
    }

    /// Records waiting.
    pub fn pending_records(&self) -> u64 {
        QueueStats::get(&self.stats.pending_records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &DiskQueue) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(r) = q.next().unwrap() {
            out.push(r);
        }
        q.commit().unwrap();
        out
    }

    fn records(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("record-{i}-{}", "x".repeat(i % 50)).into_bytes())
            .collect()
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let q = DiskQueue::open(dir.path(), 1 << 20, 256).unwrap();
        let all = records(40);
        for r in &all[..25] {
            q.push(r).unwrap();
        }
        assert_eq!(drain(&q)[..], all[..25]);
        for r in &all[25..] {
            q.push(r).unwrap();
        }
        // Handed out but not committed: replayed after a restart.
        assert_eq!(q.next().unwrap().as_deref(), Some(&all[25][..]));
        drop(q);
        let q = DiskQueue::open(dir.path(), 1 << 20, 256).unwrap();
        assert_eq!(q.pending_records(), 15);
        assert_eq!(drain(&q)[..], all[25..]);
        assert_eq!(q.pending_bytes(), 0);
        let segments = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg")
            })
            .count();
        assert!(segments <= 1, "{segments} segments left after delivery");
    }

    #[test]
    fn a_torn_tail_is_dropped_and_counted_and_new_records_follow() {
        let dir = tempfile::tempdir().unwrap();
        let q = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        for r in records(3) {
            q.push(&r).unwrap();
        }
        drop(q);
        let seg = segment_path(dir.path(), 1);
        let len = std::fs::metadata(&seg).unwrap().len();
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(len - 4).unwrap();
        let q = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert!(QueueStats::get(&q.stats().torn_tail_bytes) > 0);
        q.push(b"after").unwrap();
        let got = drain(&q);
        let mut expected = records(2);
        expected.push(b"after".to_vec());
        assert_eq!(got, expected);
    }

    #[test]
    fn a_corrupt_record_is_skipped_and_counted_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let q = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let all = records(5);
        for r in &all {
            q.push(r).unwrap();
        }
        drop(q);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&seg).unwrap();
        // Flip a payload byte of the second record.
        let second = HEADER_BYTES as usize + all[0].len();
        bytes[second + HEADER_BYTES as usize + 2] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let q = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let got = drain(&q);
        let expected: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, r)| r.clone())
            .collect();
        assert_eq!(got, expected);
        assert!(QueueStats::get(&q.stats().corrupt_regions) >= 1);
    }

    #[test]
    fn a_full_queue_refuses_and_counts_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let q = DiskQueue::open(dir.path(), 100, 1 << 20).unwrap();
        q.push(&[1u8; 50]).unwrap();
        assert!(matches!(q.push(&[2u8; 50]), Err(QueueError::Full { .. })));
        assert_eq!(QueueStats::get(&q.stats().dropped_records), 1);
        assert_eq!(drain(&q), vec![vec![1u8; 50]]);
        q.push(&[3u8; 50]).unwrap();
    }

    #[test]
    fn rewind_hands_out_uncommitted_records_again() {
        let dir = tempfile::tempdir().unwrap();
        let q = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        q.push(b"a").unwrap();
        q.push(b"b").unwrap();
        assert_eq!(q.next().unwrap().unwrap(), b"a");
        q.rewind();
        assert_eq!(drain(&q), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    proptest::proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics_and_replays_valid_records(
            garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            cut in 0usize..200,
        ) {
            let dir = tempfile::tempdir().unwrap();
            {
                let q = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
                q.push(b"first").unwrap();
            }
            let seg = segment_path(dir.path(), 1);
            let mut bytes = std::fs::read(&seg).unwrap();
            bytes.extend_from_slice(&garbage);
            bytes.truncate(bytes.len().saturating_sub(cut).max(17));
            std::fs::write(&seg, &bytes).unwrap();
            let q = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            let got = drain(&q);
            proptest::prop_assert_eq!(&got[0], &b"first".to_vec());
        }
    }
}
