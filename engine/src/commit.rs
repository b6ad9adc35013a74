//! The group commit's state machine: which written bytes a sync must cover, when a
//! sync may start, and what a finished sync lets the partition publish.
//!
//! [`GroupCommit`] is pure bookkeeping: it does no I/O and knows no runtime. The shard
//! drives it with io_uring writes and syncs (`shard::Partition`), and the simulator
//! drives the same code with a simulated disk (`corelog-sim`). `F` is whatever the
//! driver syncs: an io_uring file in the shard, a simulated file in the simulator.
//!
//! The life of an append: [`GroupCommit::place`] when its offsets are assigned (in
//! offset order), [`GroupCommit::write_ended`] and [`GroupCommit::written`] when its
//! write completes (in any order), then a sync the driver starts from
//! [`GroupCommit::next_sync`] covers it, and [`GroupCommit::sync_done`] names the
//! offset the driver may publish as the high watermark. An append placed when
//! everything before it is durable takes the synced-write path instead (one write
//! with `RWF_DSYNC`, see [`GroupCommit::synced_write_done`]).
//!
//! Invariants, asserted after every step that changes them:
//! * `written_through` grows, and every append below it completed its write;
//! * the ends of written appends awaiting a sync are increasing and at most
//!   `written_through`; no sync is asked past `written_through`;
//! * at most [`SYNCS_IN_FLIGHT_MAX`] syncs (or synced writes) run at once;
//! * an offset is handed out for publishing only once a sync that started after its
//!   bytes were written ended well, with every sealed segment and directory that
//!   offset depends on in that sync.
//!
//! What it never does: decide anything about a failed write or sync (the driver fails
//! the partition and later heals it with a fresh [`GroupCommit::new`]).

use crate::plant::{self, Plant};
use crate::types::FlushMode;
use std::collections::VecDeque;

/// Syncs (or synced writes) one partition runs at once.
pub const SYNCS_IN_FLIGHT_MAX: usize = 2;

/// What the driver does next to make written bytes durable.
#[derive(Debug)]
pub enum FlushStep<F> {
    /// Nothing to do now.
    Idle,
    /// Publish this offset without a sync (`FlushMode::Os`).
    Publish(i64),
    /// Sync these files, then the active segment's file, then call
    /// [`GroupCommit::sync_done`] with `target`.
    Sync {
        /// Offset the sync makes durable.
        target: i64,
        /// Sealed segments and directories that must be synced too.
        files: Vec<F>,
    },
}

/// One partition's group commit (see the module doc).
#[derive(Debug)]
pub struct GroupCommit<F> {
    /// Appends placed but not yet written, in offset order: (next_offset, written).
    writing: VecDeque<(i64, bool)>,
    /// Every append below this offset is written.
    written_through: i64,
    /// Ends of written appends not yet synced.
    unsynced_ends: VecDeque<i64>,
    /// Syncs started and not yet finished (at most [`SYNCS_IN_FLIGHT_MAX`]).
    syncs_in_flight: usize,
    /// Writes submitted and not yet completed (a failed partition heals only at 0).
    writes_in_flight: usize,
    /// Largest target of any sync started so far.
    sync_requested_through: i64,
    /// Targets of the syncs (and synced writes) started and not yet published, in the
    /// order they started (so increasing), with whether each ended well. A sync that
    /// ends well publishes only once every sync started before it did too: after a
    /// failed writeback Linux reports the error to one sync, and a later sync on the
    /// same file may succeed and even complete first (found by corelog-sim, seed 268).
    sync_order: VecDeque<(i64, bool)>,
    /// Sealed segment files that may hold unsynced data, and directories whose new
    /// entries are not yet durable, with the offset a sync must cover to clean them.
    dirty_sealed: Vec<(i64, F)>,
}

impl<F: Clone> GroupCommit<F> {
    /// The state of a log durable through `offset`, with nothing in flight.
    pub fn new(offset: i64) -> Self {
        Self {
            writing: VecDeque::new(),
            written_through: offset,
            unsynced_ends: VecDeque::new(),
            syncs_in_flight: 0,
            writes_in_flight: 0,
            sync_requested_through: offset,
            sync_order: VecDeque::new(),
            dirty_sealed: Vec::new(),
        }
    }

    /// An append ending at `next_offset` was placed and its write is about to be
    /// submitted. True when it takes the synced-write path: nothing before it is
    /// unwritten or unsynced (the synced write counts as a sync in flight, so none
    /// starts beside it).
    pub fn place(&mut self, next_offset: i64, mode: FlushMode) -> bool {
        let last = self.writing.back().map_or(self.written_through, |(end, _)| *end);
        assert!(next_offset > last, "append placed at {next_offset} after {last}");
        let synced_write = mode != FlushMode::Os && self.is_durable_through_end();
        if synced_write {
            self.sync_started(next_offset);
        }
        self.writing.push_back((next_offset, false));
        self.writes_in_flight += 1;
        synced_write
    }

    /// A roll at `base_offset`: the sealed segment's file and the directory (which
    /// names the new segment) join the next sync. A sync already running when the roll
    /// happened may have `base_offset` as its target: it synced the sealed file (then
    /// the active one), so it may clean that entry, but not the directory's, whose new
    /// entry it never saw. Only a sync covering an offset of the new segment started
    /// after the roll.
    pub fn rolled(&mut self, base_offset: i64, sealed: F, dir: F) {
        if !plant::armed(Plant::RollWithoutSync) {
            self.dirty_sealed.push((base_offset, sealed));
        }
        self.dirty_sealed.push((base_offset + 1, dir));
    }

    /// A write ended, whatever its outcome.
    pub fn write_ended(&mut self) {
        self.writes_in_flight =
            self.writes_in_flight.checked_sub(1).expect("a write ended that never started");
    }

    /// The write of the append ending at `next_offset` completed. Returns the offset
    /// below which everything is written.
    pub fn written(&mut self, next_offset: i64) -> i64 {
        let entry = self.writing.iter_mut().find(|(end, _)| *end == next_offset);
        entry.expect("every written append was placed").1 = true;
        while let Some(&(end, true)) = self.writing.front() {
            self.writing.pop_front();
            assert!(end > self.written_through, "writes complete in offset order once contiguous");
            self.written_through = end;
            self.unsynced_ends.push_back(end);
        }
        self.assert_invariants();
        self.written_through
    }

    /// A synced write of the append ending at `next_offset` ended well
    /// ([`GroupCommit::sync_ended`] was called); `whole` when all of it went in the
    /// synced write (a short one finished with a plain write and falls back to group
    /// commit). Returns the offset to publish, if any.
    pub fn synced_write_done(&mut self, next_offset: i64, whole: bool) -> Option<i64> {
        if whole {
            // No later append is covered: only this one's bytes were synced.
            self.sync_requested_through = self.sync_requested_through.max(next_offset);
        }
        self.written(next_offset);
        if !whole {
            let at = self.sync_order.iter().position(|(target, done)| *target == next_offset && !done);
            self.sync_order.remove(at.expect("a synced write is in the sync order"));
            return self.publishable();
        }
        self.unsynced_ends.retain(|end| *end > next_offset);
        self.mark_synced(next_offset)
    }

    /// The next step: a sync when written bytes are not yet covered by one and fewer
    /// than [`SYNCS_IN_FLIGHT_MAX`] are running (group commit), a publish in
    /// `FlushMode::Os`, or nothing. A sync returned here is counted as started.
    pub fn next_sync(&mut self, mode: FlushMode) -> FlushStep<F> {
        let requested = self.sync_requested_through;
        let uncovered = self.unsynced_ends.iter().find(|end| **end > requested).copied();
        let publish_unsynced = mode == FlushMode::Os || plant::armed(Plant::PublishBeforeSync);
        let target = match (mode, uncovered) {
            _ if publish_unsynced => {
                self.unsynced_ends.clear();
                return FlushStep::Publish(self.written_through);
            }
            (_, None) => return FlushStep::Idle,
            _ if self.syncs_in_flight >= SYNCS_IN_FLIGHT_MAX => return FlushStep::Idle,
            (FlushMode::Always, Some(end)) => end,
            (_, Some(_)) => self.written_through,
        };
        assert!(target > requested && target <= self.written_through, "a sync covers only written bytes");
        self.sync_started(target);
        self.sync_requested_through = target;
        self.assert_invariants();
        FlushStep::Sync { target, files: self.dirty_sealed.iter().map(|(_, file)| file.clone()).collect() }
    }

    /// A sync from [`GroupCommit::next_sync`] (or a synced write) ended, whatever its
    /// outcome.
    pub fn sync_ended(&mut self) {
        self.syncs_in_flight = self.syncs_in_flight.checked_sub(1).expect("a sync ended that never started");
    }

    /// The sync with `target` ended well ([`GroupCommit::sync_ended`] was called):
    /// everything through `target` is durable. Returns the offset to publish, if any:
    /// none while a sync started before this one has not ended well (a failed one
    /// never does; the partition then fails and heals with a fresh state).
    pub fn sync_done(&mut self, target: i64) -> Option<i64> {
        assert!(target <= self.sync_requested_through, "sync to {target} was never asked");
        while self.unsynced_ends.front().is_some_and(|end| *end <= target) {
            self.unsynced_ends.pop_front();
        }
        self.dirty_sealed.retain(|(end, _)| *end > target);
        self.assert_invariants();
        self.mark_synced(target)
    }

    fn mark_synced(&mut self, target: i64) -> Option<i64> {
        let entry = self.sync_order.iter_mut().find(|(t, done)| *t == target && !done);
        entry.expect("a sync that ended was started").1 = true;
        self.publishable()
    }

    /// Pops the syncs that ended well in start order; the last target popped.
    fn publishable(&mut self) -> Option<i64> {
        let mut publish = None;
        while let Some(&(target, true)) = self.sync_order.front() {
            self.sync_order.pop_front();
            publish = Some(target);
        }
        if let Some(target) = publish {
            assert!(
                target <= self.written_through,
                "publishing {target} past the written {}",
                self.written_through
            );
        }
        publish
    }

    /// Every append below this offset is written.
    pub fn written_through(&self) -> i64 {
        self.written_through
    }

    /// Syncs (or synced writes) running.
    pub fn syncs_in_flight(&self) -> usize {
        self.syncs_in_flight
    }

    /// Writes running.
    pub fn writes_in_flight(&self) -> usize {
        self.writes_in_flight
    }

    /// No write and no sync is running (a failed partition may heal).
    pub fn is_quiet(&self) -> bool {
        self.syncs_in_flight == 0 && self.writes_in_flight == 0
    }

    /// Nothing is placed but unwritten, written but unsynced, or syncing.
    pub fn is_idle(&self) -> bool {
        self.syncs_in_flight == 0 && self.writing.is_empty() && self.unsynced_ends.is_empty()
    }

    /// Nothing placed is unwritten, nothing written is unsynced and no sync runs: every
    /// byte of the log is durable.
    pub fn is_durable_through_end(&self) -> bool {
        self.is_idle() && self.dirty_sealed.is_empty()
    }

    /// A sync (or a synced write) to `target` starts: at most [`SYNCS_IN_FLIGHT_MAX`]
    /// at once, targets increasing.
    fn sync_started(&mut self, target: i64) {
        if let Some(&(last, _)) = self.sync_order.back() {
            assert!(target > last, "sync to {target} started after one to {last}");
        }
        self.sync_order.push_back((target, false));
        self.syncs_in_flight += 1;
        assert!(self.syncs_in_flight <= SYNCS_IN_FLIGHT_MAX, "{} syncs in flight", self.syncs_in_flight);
    }

    /// What every step keeps: the ends of written appends awaiting a sync are
    /// increasing and written, and no sync was asked past what is written.
    fn assert_invariants(&self) {
        if let (Some(first), Some(last)) = (self.unsynced_ends.front(), self.unsynced_ends.back()) {
            assert!(first <= last, "unsynced ends out of order: {first} before {last}");
            assert!(
                *last <= self.written_through,
                "unsynced end {last} past the written {}",
                self.written_through
            );
        }
        assert!(
            self.sync_requested_through <= self.written_through,
            "a sync was asked through {} with only {} written",
            self.sync_requested_through,
            self.written_through
        );
    }
}

/// A sync failed: true when the (planted) bug of retrying it and trusting the retry is
/// armed. Without the plant the driver fails the partition: after a failed writeback
/// Linux reports the error once, so a retry's success proves nothing.
pub fn retry_failed_sync() -> bool {
    plant::armed(Plant::TrustFailedFsync)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_covers_what_was_written_and_publishes_its_target() {
        let mut commit: GroupCommit<()> = GroupCommit::new(0);
        assert!(commit.place(5, FlushMode::Group), "first append after a durable end is a synced write");
        assert!(!commit.place(9, FlushMode::Group));
        commit.write_ended();
        assert_eq!(commit.written(9), 0, "9 is written but 5 is not: nothing contiguous");
        commit.write_ended();
        commit.sync_ended();
        assert_eq!(commit.synced_write_done(5, true), Some(5));
        let FlushStep::Sync { target, files } = commit.next_sync(FlushMode::Group) else {
            panic!("the written 5..9 needs a sync")
        };
        assert_eq!((target, files.len()), (9, 0));
        assert!(matches!(commit.next_sync(FlushMode::Group), FlushStep::Idle), "9 is already covered");
        commit.sync_ended();
        assert_eq!(commit.sync_done(target), Some(9));
        assert!(commit.is_durable_through_end());
    }

    #[test]
    fn a_sync_that_ends_well_waits_for_every_sync_started_before_it() {
        let mut commit: GroupCommit<()> = GroupCommit::new(0);
        assert!(commit.place(3, FlushMode::Group));
        assert!(!commit.place(5, FlushMode::Group));
        assert!(!commit.place(8, FlushMode::Group));
        commit.write_ended();
        commit.sync_ended();
        assert_eq!(commit.synced_write_done(3, true), Some(3));
        commit.write_ended();
        commit.written(5);
        let FlushStep::Sync { target: first, .. } = commit.next_sync(FlushMode::Group) else { panic!() };
        commit.write_ended();
        commit.written(8);
        let FlushStep::Sync { target: second, .. } = commit.next_sync(FlushMode::Group) else { panic!() };
        assert_eq!((first, second), (5, 8));
        commit.sync_ended();
        assert_eq!(commit.sync_done(second), None, "the sync to 5 may yet fail");
        commit.sync_ended();
        assert_eq!(commit.sync_done(first), Some(8), "both ended well: 8 is durable");
        assert!(commit.is_durable_through_end());
    }

    #[test]
    fn a_roll_keeps_the_sealed_file_and_directory_dirty_until_a_later_sync() {
        let mut commit: GroupCommit<&str> = GroupCommit::new(0);
        commit.place(4, FlushMode::Group);
        commit.write_ended();
        commit.sync_ended();
        commit.synced_write_done(4, true);
        commit.rolled(4, "sealed", "dir");
        commit.place(6, FlushMode::Group);
        commit.write_ended();
        commit.written(6);
        let FlushStep::Sync { target, files } = commit.next_sync(FlushMode::Group) else { panic!() };
        assert_eq!((target, files), (6, vec!["sealed", "dir"]));
        commit.sync_ended();
        commit.sync_done(6);
        assert!(commit.is_durable_through_end());
    }

    #[test]
    #[should_panic(expected = "syncs in flight")]
    fn more_syncs_than_the_limit_is_a_bug() {
        let mut commit: GroupCommit<()> = GroupCommit::new(0);
        for target in 1..=SYNCS_IN_FLIGHT_MAX as i64 + 1 {
            commit.sync_started(target);
        }
    }
}
