//! What the KPI meter remembers of every series it has seen, in a table built for a
//! million series: 20 bytes per entry, no pointer, any capacity (not only powers of two).
//!
//! Per series the meter needs its id, the last cumulative value (to turn counters into
//! increases), the batch it was last seen in (to forget it when idle) and the interval it
//! was last counted in (to count distinct series). A general hash map stores 24 bytes plus
//! a control byte, in tables whose capacity doubles, so between 44 % and 87 % full: about
//! 50 bytes per series. This table stores 20 bytes (five `u32`s, no padding) with linear
//! probing in shards whose capacity grows by half at 80 % load (about 30 bytes per series),
//! and looks up a batch's ids after touching all of their slots first, so the cache misses
//! of a batch overlap instead of following one another.

/// Shards, selected by the id's low bits; only one shard grows at a time, so the table
/// never holds two full copies of itself.
const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
/// Capacity of a shard on first use.
const MIN_CAPACITY: usize = 16;
/// A shard grows (by half) when an insert would take it past this load.
const MAX_LOAD_PERCENT: usize = 80;
/// Each batch, one shard in this many batches is swept of idle series: every shard is
/// swept once per `SHARDS * SWEEP_EVERY_BATCHES` batches (512), well within the 16-bit
/// batch stamps' range.
const SWEEP_EVERY_BATCHES: u32 = 8;
/// Ids whose slots are read ahead of their lookups (see [`SeenTable::prefetch`]).
pub const LOOKAHEAD: usize = 16;

/// One entry: id (0 = empty), the last cumulative value's bits and a stamp holding the
/// batch (low 16 bits) and interval (high 16 bits) it was last seen in, both wrapping.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    id_lo: u32,
    id_hi: u32,
    value_lo: u32,
    value_hi: u32,
    stamp: u32,
}

impl Slot {
    #[inline]
    fn id(&self) -> u64 {
        u64::from(self.id_hi) << 32 | u64::from(self.id_lo)
    }

    #[inline]
    fn value(&self) -> f64 {
        f64::from_bits(u64::from(self.value_hi) << 32 | u64::from(self.value_lo))
    }

    #[inline]
    fn set_value(&mut self, value: f64) {
        let bits = value.to_bits();
        self.value_lo = bits as u32;
        self.value_hi = (bits >> 32) as u32;
    }

    #[inline]
    fn batch(&self) -> u16 {
        self.stamp as u16
    }

    #[inline]
    fn interval(&self) -> u16 {
        (self.stamp >> 16) as u16
    }

    #[inline]
    fn set_stamp(&mut self, batch: u16, interval: u16) {
        self.stamp = u32::from(interval) << 16 | u32::from(batch);
    }
}

#[derive(Debug, Default)]
struct Shard {
    slots: Vec<Slot>,
    len: usize,
}

impl Shard {
    /// Where `id`'s probe sequence starts: the id's high bits scaled to the capacity
    /// (the low bits chose the shard).
    #[inline]
    fn home(&self, id: u64) -> usize {
        ((u128::from(id) * self.slots.len() as u128) >> 64) as usize
    }

    /// The slot holding `id`, or the empty slot where it belongs. The table is never
    /// full (see [`Self::reserve_one`]), so the probe ends.
    #[inline]
    fn find(&self, id: u64) -> usize {
        let capacity = self.slots.len();
        let mut index = self.home(id);
        loop {
            match self.slots.get(index) {
                Some(slot) if slot.id() == id || slot.id_lo | slot.id_hi == 0 => return index,
                Some(_) => {}
                None => return index,
            }
            index += 1;
            if index == capacity {
                index = 0;
            }
        }
    }

    /// Makes room for one more entry.
    fn reserve_one(&mut self) {
        let capacity = self.slots.len();
        if (self.len + 1) * 100 > capacity * MAX_LOAD_PERCENT {
            let grown = (capacity + capacity / 2).max(MIN_CAPACITY);
            self.rebuild(grown, |_| true);
        }
    }

    /// Moves the entries `keep` accepts into a table of `capacity` slots.
    fn rebuild(&mut self, capacity: usize, mut keep: impl FnMut(&Slot) -> bool) {
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); capacity]);
        self.len = 0;
        for slot in old.iter().filter(|s| s.id_lo | s.id_hi != 0) {
            if keep(slot) {
                let index = self.find(slot.id());
                if let Some(target) = self.slots.get_mut(index) {
                    *target = *slot;
                    self.len += 1;
                }
            }
        }
    }
}

/// The contribution of one series to its metric's total in a batch (see
/// [`SeenTable::observe`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// A gauge's value, or a cumulative series' increase since it was last seen.
    pub contribution: f64,
    /// Whether the series was not yet counted in this interval.
    pub new_in_interval: bool,
}

/// The per-series memory of the KPI meter (see the module docs).
#[derive(Debug)]
pub struct SeenTable {
    shards: Vec<Shard>,
    batch: u32,
    interval: u32,
    idle_batches_before_expiry: u16,
    distinct_in_interval: u64,
}

impl SeenTable {
    /// An empty table forgetting series unseen for more than `idle_batches_before_expiry`
    /// batches (at most 60,000: stamps are 16 bits wide).
    pub fn new(idle_batches_before_expiry: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            batch: 0,
            interval: 0,
            idle_batches_before_expiry: idle_batches_before_expiry.min(60_000) as u16,
            distinct_in_interval: 0,
        }
    }

    /// Series remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots allocated (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.slots.len()).sum()
    }

    /// Distinct series counted since the last [`Self::start_interval`].
    pub fn distinct_in_interval(&self) -> u64 {
        self.distinct_in_interval
    }

    /// Starts counting distinct series afresh (values and idle clocks carry on).
    pub fn start_interval(&mut self) {
        self.interval = self.interval.wrapping_add(1);
        self.distinct_in_interval = 0;
        // The 16-bit interval stamp of a series idle for 65,536 intervals would read as
        // current again: twice per wrap, mark every older stamp as the previous interval.
        if self.interval & 0x7fff == 0 {
            let (current, previous) = (self.interval as u16, self.interval.wrapping_sub(1) as u16);
            for shard in &mut self.shards {
                for slot in shard.slots.iter_mut().filter(|s| s.id_lo | s.id_hi != 0) {
                    if slot.interval() != current {
                        slot.set_stamp(slot.batch(), previous);
                    }
                }
            }
        }
    }

    /// Starts a batch: advances the batch clock and sweeps one shard of idle series when
    /// its turn comes. Series counted in the current interval are kept, so they are never
    /// counted twice.
    pub fn start_batch(&mut self) {
        self.batch = self.batch.wrapping_add(1);
        if !self.batch.is_multiple_of(SWEEP_EVERY_BATCHES) {
            return;
        }
        let turn = (self.batch / SWEEP_EVERY_BATCHES) as usize % SHARDS;
        let (now, interval, horizon) = (
            self.batch as u16,
            self.interval as u16,
            self.idle_batches_before_expiry,
        );
        let Some(shard) = self.shards.get_mut(turn) else {
            return;
        };
        let keep = |s: &Slot| now.wrapping_sub(s.batch()) <= horizon || s.interval() == interval;
        let survivors = shard
            .slots
            .iter()
            .filter(|s| s.id_lo | s.id_hi != 0 && keep(s))
            .count();
        if survivors == shard.len {
            return;
        }
        let capacity = if survivors == 0 {
            0
        } else {
            (survivors * 100 / 60).max(MIN_CAPACITY)
        };
        shard.rebuild(capacity, keep);
    }

    #[inline]
    fn locate(id: u64) -> (usize, u64) {
        // 0 marks an empty slot; the one id that is 0 shares its entry with id 1.
        let id = id.max(1);
        ((id as usize) & (SHARDS - 1), id)
    }

    /// Reads the slot where `id`'s lookup will start, so that a batch's misses overlap.
    #[inline]
    fn touch(&self, id: u64) -> u32 {
        let (shard, id) = Self::locate(id);
        self.shards
            .get(shard)
            .and_then(|s| s.slots.get(s.home(id)))
            .map_or(0, |slot| slot.id_lo)
    }

    /// Counts series `id` in this interval and returns its contribution to its metric's
    /// total: a gauge's value, a cumulative series' reset-aware increase (none the first
    /// time; NaN staleness markers count as no increase).
    #[inline]
    pub fn observe(&mut self, id: u64, cumulative: bool, value: f64) -> Observation {
        let (shard_index, id) = Self::locate(id);
        let (batch, interval) = (self.batch as u16, self.interval as u16);
        let Some(shard) = self.shards.get_mut(shard_index) else {
            return Observation {
                contribution: 0.0,
                new_in_interval: false,
            };
        };
        let mut index = if shard.slots.is_empty() {
            usize::MAX
        } else {
            shard.find(id)
        };
        let occupied = shard.slots.get(index).is_some_and(|s| s.id() == id);
        if !occupied {
            shard.reserve_one();
            index = shard.find(id);
            if let Some(slot) = shard.slots.get_mut(index) {
                *slot = Slot {
                    id_lo: id as u32,
                    id_hi: (id >> 32) as u32,
                    ..Slot::default()
                };
                slot.set_value(f64::NAN);
                // Never the current interval: counted just below.
                slot.set_stamp(batch, interval.wrapping_sub(1));
                shard.len += 1;
            }
        }
        let Some(slot) = shard.slots.get_mut(index) else {
            return Observation {
                contribution: 0.0,
                new_in_interval: false,
            };
        };
        let new_in_interval = slot.interval() != interval;
        if new_in_interval {
            self.distinct_in_interval += 1;
        }
        slot.set_stamp(batch, interval);
        let contribution = if value.is_nan() {
            0.0
        } else if !cumulative {
            value
        } else {
            let previous = slot.value();
            slot.set_value(value);
            if previous.is_nan() {
                0.0
            } else if value >= previous {
                value - previous
            } else {
                // A reset: the counter restarted from zero.
                value
            }
        };
        Observation {
            contribution,
            new_in_interval,
        }
    }

    /// Reads the slots where the lookups of `ids` will start, so that their cache misses
    /// are in flight together; call it on the next few ([`LOOKAHEAD`]) ids of a batch
    /// before observing them.
    #[inline]
    pub fn prefetch(&self, ids: &[u64]) {
        let mut touched = 0u32;
        for id in ids {
            touched ^= self.touch(*id);
        }
        std::hint::black_box(touched);
    }

    /// Observes a batch of ids (see [`Self::observe`]) after [`Self::start_batch`]:
    /// `visit(i, observation)` for every `i` where `cumulative_value(i)` gives series
    /// `i`'s kind and last value (`None` skips it).
    #[cfg(test)]
    fn observe_batch(
        &mut self,
        ids: &[u64],
        mut cumulative_value: impl FnMut(usize) -> Option<(bool, f64)>,
        mut visit: impl FnMut(usize, Observation),
    ) {
        self.start_batch();
        for (chunk_index, chunk) in ids.chunks(LOOKAHEAD).enumerate() {
            self.prefetch(chunk);
            for (offset, id) in chunk.iter().enumerate() {
                let i = chunk_index * LOOKAHEAD + offset;
                if let Some((cumulative, value)) = cumulative_value(i) {
                    visit(i, self.observe(*id, cumulative, value));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_series_per_interval_and_turns_counters_into_increases() {
        let mut table = SeenTable::new(1_000);
        table.start_batch();
        let first = table.observe(7, true, 10.0);
        assert_eq!(first.contribution, 0.0);
        assert!(first.new_in_interval);
        assert_eq!(table.observe(8, false, 2.5).contribution, 2.5);
        table.start_batch();
        let again = table.observe(7, true, 12.0);
        assert_eq!((again.contribution, again.new_in_interval), (2.0, false));
        // A reset counts the new value as the increase; NaN counts nothing.
        assert_eq!(table.observe(7, true, 3.0).contribution, 3.0);
        assert_eq!(table.observe(7, true, f64::NAN).contribution, 0.0);
        assert_eq!(table.observe(7, true, 4.0).contribution, 1.0);
        assert_eq!(table.distinct_in_interval(), 2);
        table.start_interval();
        assert_eq!(table.distinct_in_interval(), 0);
        assert!(table.observe(8, false, 1.0).new_in_interval);
        assert_eq!(table.distinct_in_interval(), 1);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_million_ids_are_all_found_again_and_the_table_stays_compact() {
        let mut table = SeenTable::new(60_000);
        let ids: Vec<u64> = (0..1_000_000u64)
            .map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
            .collect();
        for chunk in ids.chunks(2_000) {
            table.observe_batch(
                chunk,
                |_| Some((true, 1.0)),
                |_, o| assert!(o.new_in_interval),
            );
        }
        assert_eq!(table.len(), 1_000_000);
        assert_eq!(table.distinct_in_interval(), 1_000_000);
        for chunk in ids.chunks(2_000) {
            table.observe_batch(
                chunk,
                |_| Some((true, 3.0)),
                |_, o| {
                    assert!(!o.new_in_interval);
                    assert_eq!(o.contribution, 2.0);
                },
            );
        }
        let bytes_per_series = table.capacity() * std::mem::size_of::<Slot>() / table.len();
        assert_eq!(std::mem::size_of::<Slot>(), 20);
        assert!(
            bytes_per_series <= 34,
            "{bytes_per_series} bytes per series"
        );
    }

    #[test]
    fn idle_series_are_forgotten_after_the_horizon_unless_counted_in_this_interval() {
        let mut table = SeenTable::new(100);
        table.start_batch();
        table.observe(1, true, 5.0);
        table.observe(2, true, 5.0);
        table.start_interval();
        // Series 2 keeps coming; series 1 goes idle.
        for _ in 0..(100 + SHARDS as u32 * SWEEP_EVERY_BATCHES * 2) {
            table.start_batch();
            table.observe(2, true, 5.0);
        }
        assert_eq!(table.len(), 1);
        // Forgotten: seen again, it counts no increase (its old value is gone).
        table.start_batch();
        assert_eq!(table.observe(1, true, 9.0).contribution, 0.0);
        // Counted in the current interval: kept however long it idles.
        table.start_interval();
        table.observe(3, true, 1.0);
        for _ in 0..(100 + SHARDS as u32 * SWEEP_EVERY_BATCHES * 2) {
            table.start_batch();
        }
        assert_eq!(table.observe(3, true, 2.0).contribution, 1.0);
        assert!(!table.observe(3, true, 2.0).new_in_interval);
    }

    #[test]
    fn interval_stamps_survive_the_16_bit_wrap() {
        let mut table = SeenTable::new(60_000);
        table.start_batch();
        table.observe(42, false, 1.0);
        for _ in 0..65_536 {
            table.start_interval();
        }
        // Idle for 65,536 intervals (and few batches): its stamp must not read as current.
        assert!(table.observe(42, false, 1.0).new_in_interval);
        assert_eq!(table.distinct_in_interval(), 1);
    }
}
