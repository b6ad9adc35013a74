//! Zero-filled space ahead of a partition's tail: which stretch of the active
//! segment's file to fill next, and which appends must wait for a fill in flight.
//!
//! **Why.** On ext4 an `fdatasync` after an appending write (a new file size, newly
//! allocated blocks) or into `fallocate`d space (unwritten extents) commits the
//! journal; one after overwriting blocks that are already written and synced does
//! not. So the shard writes zeros a few MiB ahead of the tail and syncs them in the
//! background, and the appends that follow overwrite blocks the disk already holds:
//! their synced writes cost a data write and a cache flush, not a journal commit too
//! (docs/ENGINE.md, "Zero-filled segments", has the figures).
//!
//! [`Preallocation`] is pure bookkeeping, like `commit::GroupCommit`: the shard drives
//! it with io_uring writes and syncs (`shard::Partition`), the simulator with its disk.
//! The life of a fill: [`Preallocation::plan`] after an append is placed, its write
//! of zeros, [`Preallocation::fill_written`], its `fdatasync`, then
//! [`Preallocation::fill_synced`] (or [`Preallocation::fill_failed`] when either
//! failed: the partition fails, since the sync may have taken a writeback error that
//! belonged to an append's bytes).
//!
//! Invariants:
//! * a fill covers only bytes no append was placed at: it starts at or after the
//!   placed end of the active segment when it is planned, and it never reaches past
//!   the segment's size limit;
//! * an append placed over a fill whose write is still in flight is not written
//!   until that write completed ([`Preallocation::must_wait`]), so zeros never land
//!   on an append's bytes;
//! * at most one fill is in flight per partition, and none while the log is cut
//!   back after a failure (the shard heals only when [`Preallocation::is_quiet`]);
//! * fills happen only while appends mostly take the synced-write path (at least one
//!   in [`SYNCED_SHARE_DENOMINATOR`] since the last fill): a partition busy enough for
//!   group commit does not pay for writing its bytes twice.
//!
//! What it never does: I/O, or decide anything about a failed fill (the driver fails
//! the partition). The zeros past a segment's data are not data: recovery, `inspect`,
//! the lander and retention read a segment up to its last batch and treat an all-zero
//! remainder as the end (`segment::scan_batches`).

/// How far past the placed end of the active segment fills reach.
pub const FILL_AHEAD_BYTES: u64 = 512 << 10;
/// A new fill is planned once the filled stretch ahead of the placed end is shorter
/// than this, so fills are about `FILL_AHEAD_BYTES - FILL_LOW_WATER_BYTES` long. Short
/// fills keep the tail short: while a fill's zeros are being written back and its
/// allocation committed, an append's sync waits for that commit too, and the longer
/// the fill the more appends wait (`append-latency-group` p99 with 128 KiB fills
/// 1.5 ms, with 2 MiB fills 6–7 ms; docs/ENGINE.md).
pub const FILL_LOW_WATER_BYTES: u64 = 384 << 10;
/// When the filled stretch is behind the placed end, a fill starts this far past it
/// (an eighth of the segment size at most).
pub const FILL_GAP_BYTES: u64 = 128 << 10;
/// Fills end on this boundary (unless at the segment's limit).
pub const FILL_ALIGN_BYTES: u64 = 4096;
/// At least one append in this many since the last fill must have taken the
/// synced-write path for the next fill to be planned.
pub const SYNCED_SHARE_DENOMINATOR: u64 = 4;

const _: () = assert!(FILL_LOW_WATER_BYTES < FILL_AHEAD_BYTES && FILL_GAP_BYTES < FILL_AHEAD_BYTES);

/// One fill: write zeros at `start..end` of segment `segment`'s log file, then sync it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// Base offset of the segment whose file is filled.
    pub segment: i64,
    /// First byte to zero.
    pub start: u64,
    /// Byte after the last one to zero.
    pub end: u64,
}

impl Fill {
    /// Bytes the fill writes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// True for a fill of nothing (never planned).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// One partition's preallocation state (see the module doc).
#[derive(Debug)]
pub struct Preallocation {
    /// Base offset of the active segment the state describes.
    segment: i64,
    /// Every byte of the active segment's file below this is data or zeros that were
    /// written and synced (as far as this process knows).
    filled: u64,
    /// The fill in flight, and whether its write is still running.
    in_flight: Option<(Fill, bool)>,
    /// Appends placed since the last fill was planned, and how many of them took the
    /// synced-write path.
    appends: u64,
    synced_appends: u64,
}

impl Preallocation {
    /// The state for active segment `segment` whose file is `file_len` long, all of it
    /// written and synced (what an open, a recovery or a cut-back leaves).
    pub fn new(segment: i64, file_len: u64) -> Self {
        Self { segment, filled: file_len, in_flight: None, appends: 0, synced_appends: 0 }
    }

    /// The state of `log` just opened or cut back: its active segment's file is synced
    /// whole (recovery, a clean close and a cut-back all sync it), so every byte of it
    /// counts as filled.
    pub fn of(log: &crate::log::PartitionLog) -> Self {
        let (base, size) = log.active_extent();
        Self::new(base, log.active_file_len().unwrap_or(size))
    }

    /// The log rolled: segment `segment` is active now, with an empty file. A fill in
    /// flight on the sealed segment finishes there and fills nothing here.
    pub fn rolled(&mut self, segment: i64) {
        self.segment = segment;
        self.filled = 0;
    }

    /// An append was placed (`synced`: it takes the synced-write path).
    pub fn noted(&mut self, synced: bool) {
        self.appends += 1;
        self.synced_appends += u64::from(synced);
    }

    /// The fill to start now, if any: none while one is in flight, while the filled
    /// stretch reaches far enough past `placed_end` (the active segment's size), or
    /// while appends mostly go through group commit. `limit` is the largest size the
    /// segment grows to (`segment_bytes`). A fill returned here is in flight.
    pub fn plan(&mut self, segment: i64, placed_end: u64, limit: u64) -> Option<Fill> {
        assert_eq!(segment, self.segment, "a fill is planned for the active segment only");
        let mostly_synced =
            self.appends > 0 && self.synced_appends * SYNCED_SHARE_DENOMINATOR >= self.appends;
        let lead = self.filled.saturating_sub(placed_end);
        if self.in_flight.is_some() || !mostly_synced || lead >= FILL_LOW_WATER_BYTES {
            return None;
        }
        // Behind the tail (a new segment, or appends that outran the fills): start a gap
        // past it, so the next appends are not held up by the fill's write.
        let gap = FILL_GAP_BYTES.min(limit / 8);
        let start = if self.filled >= placed_end { self.filled } else { placed_end + gap };
        let mut end = (placed_end + FILL_AHEAD_BYTES).min(limit);
        if end < limit {
            end -= end % FILL_ALIGN_BYTES;
        }
        if end <= start {
            return None;
        }
        let fill = Fill { segment, start, end };
        self.in_flight = Some((fill, true));
        (self.appends, self.synced_appends) = (0, 0);
        Some(fill)
    }

    /// True when an append placed at `position..end` of `segment` must wait before its
    /// write: a fill's write over those bytes is still running.
    pub fn must_wait(&self, segment: i64, position: u64, end: u64) -> bool {
        if crate::plant::armed(crate::plant::Plant::FillOverAppend) {
            return false;
        }
        self.in_flight.is_some_and(|(fill, writing)| {
            writing && fill.segment == segment && position < fill.end && fill.start < end
        })
    }

    /// The fill's write completed well (its sync comes next).
    pub fn fill_written(&mut self) {
        let (_, writing) = self.in_flight.as_mut().expect("a fill was written that never started");
        *writing = false;
    }

    /// The fill's sync completed well: its zeros are on the disk.
    pub fn fill_synced(&mut self) {
        let (fill, writing) = self.in_flight.take().expect("a fill was synced that never started");
        assert!(!writing, "a fill is synced after its write");
        if fill.segment == self.segment {
            self.filled = self.filled.max(fill.end);
        }
    }

    /// The fill's write or sync failed (the driver fails the partition).
    pub fn fill_failed(&mut self) {
        self.in_flight = None;
    }

    /// No fill is in flight: the log may be cut back, and a sealed segment trimmed.
    pub fn is_quiet(&self) -> bool {
        self.in_flight.is_none()
    }

    /// The segment a fill in flight writes to, if any.
    pub fn filling(&self) -> Option<i64> {
        self.in_flight.map(|(fill, _)| fill.segment)
    }

    /// How far the active segment's file is filled (data or synced zeros).
    pub fn filled(&self) -> u64 {
        self.filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 64 << 20;

    #[test]
    fn a_synced_append_plans_a_fill_ahead_of_the_placed_end_and_it_counts_once_synced() {
        let mut state = Preallocation::new(0, 0);
        state.noted(true);
        let fill = state.plan(0, 1000, LIMIT).expect("nothing is filled ahead");
        assert_eq!((fill.start, fill.end), (1000 + FILL_GAP_BYTES, FILL_AHEAD_BYTES), "a gap past the tail");
        assert!(state.plan(0, 2000, LIMIT).is_none(), "one fill in flight at most");
        assert!(
            state.must_wait(0, fill.start - 10, fill.start + 10),
            "an append over a fill being written waits"
        );
        assert!(!state.must_wait(0, 1000, fill.start), "an append below the fill does not");
        assert!(!state.must_wait(7, fill.start, fill.end), "nor one in another segment");
        state.fill_written();
        assert!(!state.must_wait(0, fill.start, fill.end), "once written, zeros never land again");
        assert_eq!(state.filled(), 0, "not filled before the sync");
        state.fill_synced();
        assert_eq!(state.filled(), FILL_AHEAD_BYTES);
        state.noted(true);
        let lead_enough = FILL_AHEAD_BYTES - FILL_LOW_WATER_BYTES;
        assert!(state.plan(0, lead_enough, LIMIT).is_none(), "the lead is at the low water mark");
        let placed = lead_enough + 1;
        let fill = state.plan(0, placed, LIMIT).expect("under the low water mark");
        assert_eq!(fill.start, FILL_AHEAD_BYTES, "it continues where the filled stretch ends");
        assert_eq!(fill.end, placed + FILL_AHEAD_BYTES - (placed + FILL_AHEAD_BYTES) % FILL_ALIGN_BYTES);
    }

    #[test]
    fn group_committed_appends_do_not_fill_and_a_fill_never_passes_the_limit() {
        let mut state = Preallocation::new(0, 0);
        for _ in 0..SYNCED_SHARE_DENOMINATOR + 1 {
            state.noted(false);
        }
        state.noted(true);
        assert!(state.plan(0, 0, LIMIT).is_none(), "1 synced write in 6: no fill");
        assert!(state.plan(0, 0, LIMIT).is_none());
        let mut state = Preallocation::new(0, 1000);
        state.noted(true);
        let fill = state.plan(0, 1000, 3001).expect("room up to the limit");
        assert_eq!((fill.start, fill.end), (1000, 3001), "ends at the limit, unaligned");
        state.fill_written();
        state.fill_synced();
        state.noted(true);
        assert!(state.plan(0, 3001, 3001).is_none(), "a full segment needs no fill");
        let mut state = Preallocation::new(0, 0);
        state.noted(true);
        let fill = state.plan(0, 1000, 2000).expect("a small segment has a small gap");
        assert_eq!((fill.start, fill.end), (1250, 2000));
    }

    #[test]
    fn a_fill_that_finishes_after_a_roll_fills_nothing_of_the_new_segment() {
        let mut state = Preallocation::new(0, 0);
        state.noted(true);
        state.plan(0, 100, LIMIT).expect("fill");
        state.rolled(500);
        assert!(!state.is_quiet());
        assert_eq!(state.filling(), Some(0));
        state.fill_written();
        state.fill_synced();
        assert_eq!(state.filled(), 0, "the new segment's file is still empty");
        assert!(state.is_quiet());
    }

    #[test]
    fn appends_that_outran_the_fill_move_its_start_past_them() {
        let mut state = Preallocation::new(0, 8192);
        state.noted(true);
        let fill = state.plan(0, 100_000, LIMIT).expect("the filled stretch is behind the tail");
        assert_eq!(fill.start, 100_000 + FILL_GAP_BYTES, "zeros never go where an append was placed");
    }
}
