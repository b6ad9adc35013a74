//! Idempotent producers: what each partition remembers of them, and how that survives
//! a restart.
//!
//! A partition keeps, per producer id, the epoch and the last
//! [`PRODUCER_BATCHES_REMEMBERED`] batches (first and last sequence, offsets), for at
//! most [`PRODUCERS_PER_PARTITION_MAX`] producers, and checks every idempotent batch against them with Kafka's rules: the next batch
//! follows the last one; a retry of one of the remembered batches is a duplicate and
//! is answered with its original offsets; a newer epoch starts over; an older epoch or
//! a gap is refused. A producer the partition has no state for is accepted at any
//! sequence (Kafka's behaviour since KIP-360, so expired producers can resume).
//!
//! **Durability.** The state is a function of the log: every batch header carries its
//! producer id, epoch and base sequence. On open it is rebuilt from the newest valid
//! *snapshot* (`<offset:020>.snapshot` in the partition directory, the state of every
//! producer after all batches below `offset`) plus a header-only scan of the log from
//! that offset to the end. Snapshots are written when a segment rolls and on a clean
//! close, so a restart scans at most the active segment. They are not fsynced: a torn
//! snapshot fails its CRC and the next older one is used (two are kept), and with none
//! the whole log is scanned. A snapshot past the recovered end of the log (its batches
//! were lost in a crash, or cut by a heal) is deleted, and the deletion is synced before
//! the log can grow past it again, so a stale snapshot never comes back to answer a new
//! batch as a duplicate. The format is in `docs/FORMATS.md`.
//!
//! Invariant: after [`ProducerStates::recover`], the state equals what the running
//! partition had for the same log prefix: both are built by the same `remember` from
//! the same batches in offset order.

use crate::batch::BatchHeader;
use crate::disk::Disk;
use crate::log::PartitionLog;
use crate::types::AppendResult;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

/// Batches of one idempotent producer remembered for duplicate detection (Kafka keeps 5).
pub const PRODUCER_BATCHES_REMEMBERED: usize = 5;
/// Producers one partition remembers; a new one past this evicts the one whose last
/// batch is oldest (Kafka expires producers by time, `producer.id.expiration.ms`; a
/// count bounds memory whatever the rate of new producer ids).
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;
/// Snapshots kept per partition (the newest ones).
pub const SNAPSHOTS_KEPT: usize = 2;
/// First bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"CLPS";
/// Snapshot format version.
pub const SNAPSHOT_VERSION: u16 = 1;
const SNAPSHOT_EXTENSION: &str = "snapshot";

/// What a partition remembers of one producer: its epoch and its last batches as
/// (first sequence, last sequence, result), oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ProducerState {
    epoch: i16,
    recent: VecDeque<(i32, i32, AppendResult)>,
}

/// The verdict on an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequenced {
    /// The next batch (or a producer without state): append it.
    Append,
    /// A retry of a batch already placed: answer with its result.
    Duplicate(AppendResult),
}

/// A batch an idempotent producer may not append (Kafka's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// The batch does not follow the producer's previous one (a gap).
    #[error("out-of-order sequence {found} from producer {producer_id} (expected {expected})")]
    OutOfOrderSequence {
        /// The producer.
        producer_id: i64,
        /// The next sequence the partition expects.
        expected: i32,
        /// The batch's base sequence.
        found: i32,
    },
    /// The producer's epoch is older than one already seen.
    #[error("producer {producer_id} epoch {found} is older than {current}")]
    InvalidProducerEpoch {
        /// The producer.
        producer_id: i64,
        /// The newest epoch seen.
        current: i16,
        /// The batch's epoch.
        found: i16,
    },
}

/// Why a snapshot file was not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The snapshot file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid snapshot (torn write, corruption, other version).
    #[error("invalid producer snapshot: {0}")]
    Invalid(&'static str),
}

/// Idempotent-producer state of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerState>,
}

/// What [`ProducerStates::recover`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerRecovery {
    /// Offset of the snapshot loaded, if any.
    pub snapshot_offset: Option<i64>,
    /// Batches read from the log after it.
    pub scanned_batches: u64,
    /// Snapshot files ignored (torn or corrupt) or deleted (past the log's end).
    pub discarded_snapshots: usize,
}

impl ProducerStates {
    /// Number of producers with state.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// True when no producer has state.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Checks a batch's sequence against the producer's state.
    pub fn check(
        &self,
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
    ) -> Result<Sequenced, SequenceError> {
        let Some(state) = self.producers.get(&producer_id) else { return Ok(Sequenced::Append) };
        if epoch < state.epoch {
            return Err(SequenceError::InvalidProducerEpoch {
                producer_id,
                current: state.epoch,
                found: epoch,
            });
        }
        if epoch > state.epoch {
            return Ok(Sequenced::Append);
        }
        if let Some((_, _, result)) = state.recent.iter().find(|(first, _, _)| *first == base_sequence) {
            return Ok(Sequenced::Duplicate(*result));
        }
        let expected = state.recent.back().map_or(0, |(_, last, _)| last.wrapping_add(1) & i32::MAX);
        if base_sequence != expected {
            return Err(SequenceError::OutOfOrderSequence { producer_id, expected, found: base_sequence });
        }
        Ok(Sequenced::Append)
    }

    /// Records a batch placed in the log.
    pub fn remember(
        &mut self,
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        records: i32,
        result: AppendResult,
    ) {
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= PRODUCERS_PER_PARTITION_MAX {
            // Forget the producer whose last batch is oldest. A forgotten producer is
            // accepted at any sequence when it returns (KIP-360), like an expired one.
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(id, state)| {
                    (state.recent.back().map_or(i64::MIN, |(.., r)| r.next_offset), **id)
                })
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.producers.remove(&oldest);
            }
        }
        assert!(records > 0, "a batch holds at least one record");
        assert!(
            result.next_offset - result.base_offset >= i64::from(records),
            "{records} records in {result:?}"
        );
        let state = self.producers.entry(producer_id).or_default();
        if epoch != state.epoch {
            *state = ProducerState { epoch, recent: VecDeque::new() };
        }
        if let Some((.., last)) = state.recent.back() {
            // Batches are remembered in log order: a producer's batch never lands
            // below its previous one.
            assert!(
                result.base_offset >= last.next_offset,
                "producer {producer_id}: batch at {result:?} below its previous one at {last:?}"
            );
        }
        let last = base_sequence.wrapping_add(records - 1) & i32::MAX;
        state.recent.push_back((base_sequence, last, result));
        if state.recent.len() > PRODUCER_BATCHES_REMEMBERED {
            state.recent.pop_front();
        }
    }

    /// Records a batch read back from the log (recovery); non-idempotent batches are
    /// skipped.
    pub fn observe(&mut self, header: &BatchHeader) {
        let producer_id = header.producer_id.get();
        if producer_id < 0 {
            return;
        }
        let base_offset = header.base_offset.get();
        let next_offset = base_offset + i64::from(header.last_offset_delta.get()) + 1;
        let records = header.record_count.get();
        let result = AppendResult { base_offset, next_offset };
        // Bytes from disk (and a snapshot) may lie while passing their checksums:
        // what `remember` asserts for the live path is checked here instead.
        if records <= 0 || next_offset - base_offset < i64::from(records) {
            tracing::warn!(
                producer_id,
                ?result,
                records,
                "batch header with inconsistent counts: not remembered"
            );
            return;
        }
        let stale = self
            .producers
            .get(&producer_id)
            .and_then(|state| state.recent.back())
            .is_some_and(|(.., last)| base_offset < last.next_offset);
        if stale {
            tracing::warn!(producer_id, ?result, "producer state ahead of the log: rebuilt from the log");
            self.producers.remove(&producer_id);
        }
        self.remember(producer_id, header.producer_epoch.get(), header.base_sequence.get(), records, result);
    }

    /// The snapshot bytes for the state after every batch below `offset`:
    /// magic, version, offset, producer count, then per producer its id, epoch, batch
    /// count and batches (first sequence, last sequence, base offset, next offset), all
    /// big-endian, then a CRC32C of everything before it. Producers are sorted by id
    /// so equal states give equal bytes.
    pub fn encode(&self, offset: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(22 + self.producers.len() * (11 + 24 * PRODUCER_BATCHES_REMEMBERED));
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<_> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let state = &self.producers[&id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&state.epoch.to_be_bytes());
            out.push(state.recent.len() as u8);
            for (first, last, result) in &state.recent {
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&last.to_be_bytes());
                out.extend_from_slice(&result.base_offset.to_be_bytes());
                out.extend_from_slice(&result.next_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses [`ProducerStates::encode`]'s bytes into (offset, state).
    pub fn decode(bytes: &[u8]) -> Result<(i64, Self), SnapshotError> {
        let invalid = SnapshotError::Invalid;
        let (body, crc) = bytes.split_at_checked(bytes.len().wrapping_sub(4)).ok_or(invalid("too short"))?;
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return Err(invalid("CRC mismatch"));
        }
        let mut reader = Reader(body);
        if reader.take::<4>()? != *SNAPSHOT_MAGIC {
            return Err(invalid("bad magic"));
        }
        if u16::from_be_bytes(reader.take()?) != SNAPSHOT_VERSION {
            return Err(invalid("unknown version"));
        }
        let offset = i64::from_be_bytes(reader.take()?);
        let count = u32::from_be_bytes(reader.take()?);
        let mut states = Self::default();
        for _ in 0..count {
            let id = i64::from_be_bytes(reader.take()?);
            let epoch = i16::from_be_bytes(reader.take()?);
            let [batches] = reader.take::<1>()?;
            if usize::from(batches) > PRODUCER_BATCHES_REMEMBERED {
                return Err(invalid("too many batches for a producer"));
            }
            let mut recent = VecDeque::with_capacity(usize::from(batches));
            for _ in 0..batches {
                let first = i32::from_be_bytes(reader.take()?);
                let last = i32::from_be_bytes(reader.take()?);
                let base_offset = i64::from_be_bytes(reader.take()?);
                let next_offset = i64::from_be_bytes(reader.take()?);
                recent.push_back((first, last, AppendResult { base_offset, next_offset }));
            }
            if states.producers.insert(id, ProducerState { epoch, recent }).is_some() {
                return Err(invalid("producer listed twice"));
            }
        }
        if !reader.0.is_empty() {
            return Err(invalid("trailing bytes"));
        }
        Ok((offset, states))
    }

    /// Writes the snapshot for `offset` into `dir` (temporary file, then rename) and
    /// deletes all but the [`SNAPSHOTS_KEPT`] newest. Not fsynced (see the module doc).
    pub fn write_snapshot(&self, log: &PartitionLog, offset: i64) -> std::io::Result<()> {
        let (disk, dir) = (&**log.disk(), log.dir());
        let path = snapshot_path(dir, offset);
        let temporary = path.with_extension("snapshot.tmp");
        let file = disk.open(&temporary, true)?;
        disk.write_at(&file, &temporary, &self.encode(offset), 0)?;
        disk.rename(&temporary, &path)?;
        let offsets = snapshot_offsets(disk, dir)?;
        for &old in offsets.iter().rev().skip(SNAPSHOTS_KEPT) {
            disk.remove(&snapshot_path(dir, old))?;
        }
        Ok(())
    }

    /// Rebuilds the state of `log`'s partition: the newest valid snapshot at or below
    /// the log's end, then every batch header after it. Deletes snapshots past the end.
    pub fn recover(log: &PartitionLog) -> Result<(Self, ProducerRecovery), String> {
        let (disk, dir) = (&**log.disk(), log.dir());
        let end = log.next_offset();
        let mut report = ProducerRecovery::default();
        if crate::plant::armed(crate::plant::Plant::ForgetProducerSequences) {
            return Ok((Self::default(), report)); // planted bug: nothing rebuilt
        }
        let mut offsets = snapshot_offsets(disk, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut loaded = None;
        let mut removed_past_end = false;
        while let Some(offset) = offsets.pop() {
            let path = snapshot_path(dir, offset);
            if offset > end {
                disk.remove(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                report.discarded_snapshots += 1;
                removed_past_end = true;
                continue;
            }
            let parsed = disk
                .read(&path)
                .map_err(|source| SnapshotError::Io { path: path.clone(), source })
                .and_then(|bytes| ProducerStates::decode(&bytes));
            match parsed {
                Ok((stored, states)) if stored == offset => {
                    loaded = Some((offset, states));
                    break;
                }
                Ok(_) => tracing::warn!("{}: offset does not match its name; ignored", path.display()),
                Err(error) => tracing::warn!("{}: {error}; ignored", path.display()),
            }
            report.discarded_snapshots += 1;
        }
        if removed_past_end {
            // The removal must be durable before the log grows past those offsets
            // again: a snapshot of the lost history coming back after a later crash
            // would answer its batches as duplicates (found by corelog-sim, seed 546).
            disk.sync_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let (from, mut states) = match loaded {
            Some((offset, states)) => {
                report.snapshot_offset = Some(offset);
                (offset, states)
            }
            None => (log.log_start_offset(), Self::default()),
        };
        // A snapshot older than the log start may name producers whose last batch
        // retention has deleted since: they are forgotten, as Kafka forgets producers
        // below the log start, and accepted at any sequence when they return (KIP-360),
        // instead of being refused against a stale sequence (found by corelog-sim,
        // seed 2796).
        let log_start = log.log_start_offset();
        states
            .producers
            .retain(|_, state| state.recent.back().is_some_and(|(.., r)| r.next_offset > log_start));
        log.for_each_header(from, |header| {
            states.observe(header);
            report.scanned_batches += 1;
        })
        .map_err(|e| format!("{}: rebuilding producer state: {e}", dir.display()))?;
        Ok((states, report))
    }
}

/// `<dir>/<offset:020>.snapshot`.
pub fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{}.{SNAPSHOT_EXTENSION}", crate::segment::file_stem(offset)))
}

/// Offsets of the snapshot files in `dir`, ascending.
fn snapshot_offsets(disk: &dyn Disk, dir: &Path) -> std::io::Result<Vec<i64>> {
    let mut offsets = Vec::new();
    for path in disk.list(dir)? {
        if path.to_str().is_some_and(|p| p.ends_with(".snapshot.tmp")) {
            disk.remove(&path)?; // a write cut short
            continue;
        }
        if path.extension().is_some_and(|e| e == SNAPSHOT_EXTENSION) {
            if let Some(offset) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()) {
                offsets.push(offset);
            }
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(SnapshotError::Invalid("cut short"))?;
        self.0 = rest;
        Ok(*head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(base_offset: i64, records: i64) -> AppendResult {
        AppendResult { base_offset, next_offset: base_offset + records }
    }

    fn sample() -> ProducerStates {
        let mut states = ProducerStates::default();
        for i in 0..8 {
            states.remember(7, 0, i * 3, 3, result(i64::from(i) * 3, 3));
        }
        states.remember(9, 2, i32::MAX - 1, 4, result(100, 4));
        states
    }

    #[test]
    fn given_a_state_when_encoded_then_decoding_gives_it_back() {
        let states = sample();
        assert_eq!(states.producers[&7].recent.len(), PRODUCER_BATCHES_REMEMBERED);
        let bytes = states.encode(104);
        assert_eq!(ProducerStates::decode(&bytes).unwrap(), (104, states));
    }

    #[test]
    fn given_a_damaged_snapshot_then_decode_refuses_it() {
        let bytes = sample().encode(104);
        for cut in 0..bytes.len() {
            assert!(ProducerStates::decode(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(ProducerStates::decode(&flipped).is_err(), "flip at {at} accepted");
        }
    }

    #[test]
    fn given_sequences_then_kafkas_rules_apply() {
        let states = sample();
        assert_eq!(states.check(7, 0, 24).unwrap(), Sequenced::Append);
        assert_eq!(states.check(7, 0, 21).unwrap(), Sequenced::Duplicate(result(21, 3)));
        assert!(matches!(states.check(7, 0, 0), Err(SequenceError::OutOfOrderSequence { expected: 24, .. })));
        assert_eq!(states.check(7, 1, 0).unwrap(), Sequenced::Append);
        assert!(matches!(states.check(9, 1, 0), Err(SequenceError::InvalidProducerEpoch { .. })));
        // Sequences wrap past i32::MAX to 0.
        assert_eq!(states.check(9, 2, 2).unwrap(), Sequenced::Append);
        assert_eq!(
            states.check(11, 0, 12345).unwrap(),
            Sequenced::Append,
            "unknown producers start anywhere"
        );
    }

    #[test]
    fn given_more_producers_than_the_bound_then_the_one_with_the_oldest_batch_is_forgotten() {
        let mut states = ProducerStates::default();
        for id in 0..PRODUCERS_PER_PARTITION_MAX as i64 {
            states.remember(id, 0, 0, 1, result(1000 + id, 1));
        }
        // Producer 0 writes again: producer 1's batch is now the oldest.
        states.remember(0, 0, 1, 1, result(50_000, 1));
        states.remember(-7 + 1_000_000, 0, 0, 1, result(60_000, 1));
        assert_eq!(states.producers.len(), PRODUCERS_PER_PARTITION_MAX);
        assert!(!states.producers.contains_key(&1), "the producer with the oldest batch is forgotten");
        assert!(states.producers.contains_key(&0));
        assert_eq!(
            states.check(1, 0, 77).unwrap(),
            Sequenced::Append,
            "a forgotten producer resumes anywhere"
        );
    }
}
