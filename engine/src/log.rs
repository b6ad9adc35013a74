//! A partition's log: an ordered run of segments, appends, reads up to the high
//! watermark, lookups by offset and timestamp, recovery and retention.
//!
//! `PartitionLog` is plain single-threaded state: it is owned by exactly one shard and
//! never shared. It decides *where* bytes go (offset assignment, segment roll) and
//! hands the write to its owner as an [`AppendPlan`]; the shard performs the write
//! through io_uring and publishes the high watermark once the flush mode says the
//! bytes are durable. [`PartitionLog::append_sync`] does the same with blocking calls
//! for tools and tests.
//!
//! Invariants:
//! * segments are contiguous: each one's base offset is its predecessor's next offset;
//! * `log_start_offset <= high_watermark <= next_offset`, all non-decreasing except
//!   that recovery may lower `next_offset` to the last intact batch;
//! * the high watermark is published with `Release` and read with `Acquire`, and it only
//!   ever names offsets whose bytes were written (and synced, per flush mode);
//! * readers never see a byte at or past the high watermark;
//! * after a sealed segment is found corrupt the partition is read-only, and reads stop
//!   at the last intact offset before the damage.

use crate::batch::{BatchError, BatchHeader, BatchView};
use crate::disk::{Disk, DiskFile, OsDisk};
use crate::segment::{self, CacheAdvice, CacheHint, OpenMode, Retired, Segment, SegmentError};
use crate::watermark::HighWatermark;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zerocopy::FromBytes;

/// Default segment size (`--segment-bytes`).
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 << 20;
/// Default largest batch accepted (Kafka's `message.max.bytes` is 1 MiB; we allow 8).
pub const BATCH_BYTES_MAX_DEFAULT: usize = 8 << 20;

/// Per-partition log settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll the active segment when it would exceed this size.
    pub segment_bytes: u64,
    /// Roll the active segment when it is older than this (ms).
    pub segment_ms: Option<i64>,
    /// Delete sealed segments whose newest record is older than this (ms).
    pub retention_ms: Option<i64>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Page-cache window: at most about this many of the newest log bytes stay in the
    /// page cache. Writeback of bytes more than half of it behind the end is started,
    /// and bytes more than all of it behind the end are dropped from the cache, so a
    /// steady append stream recycles its own pages instead of growing the cache (on
    /// virtual machines a growing cache is much slower than a recycled one). Reads of
    /// older bytes come from disk. 0 leaves the cache to the kernel.
    pub cache_window_bytes: u64,
    /// Largest batch accepted.
    pub batch_bytes_max: usize,
    /// Write zeros ahead of the active segment's tail while appends take the
    /// synced-write path (see `prealloc`), so their syncs skip the journal commit. Off
    /// by default: it lowers the median synced append but raises its p99 on the
    /// development VM (docs/ENGINE.md, "Zero-filled space ahead of the tail").
    pub preallocate: bool,
}

/// Default [`LogConfig::cache_window_bytes`] (`--cache-window-bytes`).
pub const CACHE_WINDOW_BYTES_DEFAULT: u64 = 64 << 20;
/// Page-cache hints cover whole stretches aligned to this: a multiple of 2 MiB because
/// the page cache may hold large folios (up to 2 MiB) and a folio only leaves the
/// cache when a hint covers all of it; 8 MiB so that the cost of dropping pages (it
/// drains per-CPU page lists on every core) is paid once per 8 MiB appended.
pub const CACHE_HINT_STEP_BYTES: u64 = 8 << 20;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_ms: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            cache_window_bytes: CACHE_WINDOW_BYTES_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            preallocate: false,
        }
    }
}

impl LogConfig {
    fn map_len(&self) -> u64 {
        self.segment_bytes + self.batch_bytes_max as u64
    }
}

/// Why an append was refused. Nothing was written when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The bytes are not one valid RecordBatch v2.
    #[error("corrupt batch: {0}")]
    Corrupt(#[from] BatchError),
    /// More (or fewer) bytes than the one batch they hold.
    #[error("expected exactly one batch of {batch} bytes, got {given}")]
    NotOneBatch {
        /// Length of the first batch.
        batch: usize,
        /// Bytes given.
        given: usize,
    },
    /// The batch exceeds the configured maximum.
    #[error("batch of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Batch size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The partition is read-only after corruption or a failed write.
    #[error("partition is read-only: {0}")]
    ReadOnly(String),
    /// Creating a segment failed.
    #[error(transparent)]
    Storage(#[from] SegmentError),
}

/// Why a read was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The offset is below the log start or above the high watermark.
    #[error("offset {offset} out of range {log_start_offset}..={high_watermark}")]
    OffsetOutOfRange {
        /// Requested offset.
        offset: i64,
        /// First offset kept.
        log_start_offset: i64,
        /// High watermark.
        high_watermark: i64,
    },
    /// A stored batch failed its checks on read.
    #[error("corrupt batch at offset {offset}: {reason}")]
    Corrupt {
        /// First offset that could not be served.
        offset: i64,
        /// What the check found.
        reason: String,
    },
}

/// Where an append goes; the shard writes `bytes` at `position` of `file`.
#[derive(Debug)]
pub struct AppendPlan {
    /// Offset assigned to the first record.
    pub base_offset: i64,
    /// Offset after the last record.
    pub next_offset: i64,
    /// The active segment's log file.
    pub file: Arc<DiskFile>,
    /// Write position in that file.
    pub position: u64,
    /// The batch with its base offset stamped.
    pub bytes: BytesMut,
    /// When the append rolled the log: the sealed segment's file, which needs one more
    /// sync before offsets in it are durable. The partition's directory then needs a
    /// sync too (it names the new segment) before this append is durable.
    pub sealed_file: Option<Arc<DiskFile>>,
}

/// Bytes read from the log, zero-copy.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Whole batches, straight from the mapped segment.
    pub bytes: Bytes,
    /// Offset after the last returned batch (the requested offset when empty).
    pub next_offset: i64,
    /// High watermark at the time of the read.
    pub high_watermark: i64,
    /// First offset kept.
    pub log_start_offset: i64,
}

/// What opening a partition found.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Segments opened.
    pub segments: usize,
    /// Bytes cut from the active segment's torn or corrupt tail.
    pub truncated_bytes: u64,
    /// Why the tail was cut.
    pub truncated_reason: Option<String>,
    /// Corruption found in a sealed segment (the partition is read-only past it).
    pub sealed_corruption: Option<String>,
    /// Offset after the last good batch.
    pub next_offset: i64,
    /// Segments deleted because they followed a torn or missing tail.
    pub deleted_segments: usize,
}

/// How [`PartitionLog::open_with`] treats what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The previous run shut down cleanly: trust the indexes, check the tails.
    Clean,
    /// The previous run stopped without a clean shutdown.
    Unclean {
        /// Segments whose log file was last modified before this time (ms since the
        /// epoch) were durable before that run started and are checked as sealed;
        /// `None` recovers every segment.
        written_since_ms: Option<i64>,
    },
}

/// One partition's log.
#[derive(Debug)]
pub struct PartitionLog {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    config: LogConfig,
    segments: VecDeque<Segment>,
    high_watermark: Arc<HighWatermark>,
    read_only: Option<String>,
    retain_floor: Option<i64>,
    /// Where page-cache writeback was last started and where pages were last dropped.
    cache_written_back: CacheCursor,
    cache_dropped: CacheCursor,
}

/// A position in the log for page-cache hints: (segment base offset, byte position).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CacheCursor {
    base_offset: i64,
    position: u64,
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`. `clean` says the previous run shut down
    /// cleanly; otherwise every segment is recovered as [`PartitionLog::open_with`]
    /// does for [`Recovery::Unclean`] with no time bound.
    pub fn open(
        dir: &Path,
        config: LogConfig,
        clean: bool,
        now_ms: i64,
    ) -> Result<(Self, RecoveryReport), SegmentError> {
        let recovery = if clean { Recovery::Clean } else { Recovery::Unclean { written_since_ms: None } };
        Self::open_with(dir, config, recovery, now_ms)
    }

    /// Opens (or creates) the log in `dir`, recovering it as `recovery` says.
    ///
    /// After an unclean stop every segment the stopped run may have written (all of
    /// them, or those modified since `written_since_ms`) is scanned whole, batch by
    /// batch with CRCs, and the first torn, short or corrupt batch ends the log: that
    /// segment is truncated there and every later segment is deleted. Nothing past it
    /// was ever acknowledged, since the high watermark only passes bytes that were all
    /// written (and synced). A segment that does not start where its predecessor ends
    /// (a roll after a write that never landed) or a zero-length one is handled the
    /// same way. What recovery keeps is fsynced (files and directory) before it is
    /// published as the high watermark. Older segments are checked as sealed ones: a
    /// bad batch there is corruption, and the partition becomes read-only past it.
    pub fn open_with(
        dir: &Path,
        config: LogConfig,
        recovery: Recovery,
        now_ms: i64,
    ) -> Result<(Self, RecoveryReport), SegmentError> {
        Self::open_on(OsDisk::shared(), dir, config, recovery, now_ms)
    }

    /// [`PartitionLog::open_with`] on `disk`: every durable operation of this log goes
    /// through it (the simulator's disk under simulation).
    pub fn open_on(
        disk: Arc<dyn Disk>,
        dir: &Path,
        config: LogConfig,
        recovery: Recovery,
        now_ms: i64,
    ) -> Result<(Self, RecoveryReport), SegmentError> {
        assert!(config.segment_bytes > 0 && config.segment_bytes <= segment::SEGMENT_BYTES_MAX);
        let dir_error = |source| SegmentError::Io { path: dir.to_path_buf(), source };
        disk.create_dir_all(dir).map_err(dir_error)?;
        let listed = disk.list(dir).map_err(dir_error)?;
        // Files of segments retention retired before a crash let them be unlinked:
        // they are no longer part of the log. One that cannot be removed stays (it is
        // never read as log) rather than keep the partition from opening.
        for path in listed.iter().filter(|path| segment::is_retired_name(path)) {
            match segment::remove_if_present(&*disk, path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a retired segment's file a crash left")
                }
                Err(error) => tracing::warn!("a retired segment's file a crash left stays: {error}"),
            }
        }
        let mut bases: Vec<i64> = listed.iter().filter_map(|path| segment::parse_log_name(path)).collect();
        bases.sort_unstable();
        let mut report = RecoveryReport::default();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut read_only = None;
        let mut recovered_any = false;
        let mut cut_from = None;
        for (i, &base) in bases.iter().enumerate() {
            let active = i + 1 == bases.len();
            let recover = match recovery {
                Recovery::Clean => false,
                Recovery::Unclean { written_since_ms: None } => true,
                Recovery::Unclean { written_since_ms: Some(since) } => {
                    active || segment::log_mtime_ms(&*disk, dir, base) >= since
                }
            };
            let mode = match (active, recover) {
                (_, true) => OpenMode::Rebuild,
                (false, false) => OpenMode::Sealed,
                (true, false) => OpenMode::Active,
            };
            let expected_base = segments.back().map(Segment::next_offset);
            if let Some(expected) = expected_base.filter(|&e| e != base) {
                let reason = format!("segment {base} does not follow offset {expected}");
                if recover || recovered_any {
                    tracing::warn!("{}: {reason}: later segments dropped", dir.display());
                    report.truncated_reason.get_or_insert(reason);
                    cut_from = Some(i);
                } else {
                    tracing::error!("{}: {reason}, partition read-only", dir.display());
                    read_only = Some(reason);
                }
                break;
            }
            let (segment, scan) = Segment::open(&disk, dir, base, config.map_len(), mode)?;
            recovered_any |= recover;
            if let Some((position, error)) = &scan.error {
                let file_len = scan.len;
                let reason = format!("{}: at byte {position}: {error}", segment.path("log").display());
                if mode != OpenMode::Sealed {
                    report.truncated_bytes += file_len.saturating_sub(scan.valid_end);
                    report.truncated_reason = Some(reason);
                    tracing::warn!(
                        truncated = report.truncated_bytes,
                        "recovered torn tail: {}",
                        report.truncated_reason.as_deref().unwrap_or("")
                    );
                    segments.push_back(segment);
                    cut_from = Some(i + 1);
                    break;
                }
                tracing::error!("sealed segment corrupt, partition read-only: {reason}");
                report.sealed_corruption = Some(reason.clone());
                read_only = Some(reason);
                segments.push_back(segment);
                break;
            }
            segments.push_back(segment);
        }
        if let Some(from) = cut_from {
            for &base in &bases[from..] {
                segment::delete_files(&*disk, dir, base)?;
                report.deleted_segments += 1;
            }
        }
        if recovered_any {
            // What recovery keeps becomes the durable prefix: make it so before it is
            // published (a killed process leaves written but unsynced pages behind).
            for segment in &segments {
                segment
                    .log_file()
                    .sync_data()
                    .map_err(|source| SegmentError::Io { path: segment.path("log"), source })?;
            }
            segment::sync_dir_on(&*disk, dir)?;
        }
        if segments.is_empty() {
            segments.push_back(Segment::create(&disk, dir, 0, config.map_len(), now_ms)?);
            segment::sync_dir_on(&*disk, dir)?;
        }
        let mut log = Self {
            disk,
            dir: dir.to_path_buf(),
            config,
            segments,
            high_watermark: Arc::new(HighWatermark::new(0)),
            read_only,
            retain_floor: None,
            cache_written_back: CacheCursor::default(),
            cache_dropped: CacheCursor::default(),
        };
        // Whatever the previous run left cached stays to the kernel: hints start at the end.
        let end = log.cache_point(0);
        (log.cache_written_back, log.cache_dropped) = (end, end);
        report.segments = log.segments.len();
        report.next_offset = log.next_offset();
        log.high_watermark.publish(log.next_offset());
        let sealed_count = log.segments.len() - 1;
        for segment in &mut log.segments {
            segment.flush_indexes_sync()?;
        }
        log.segments.iter_mut().take(sealed_count).for_each(Segment::release_index_files);
        Ok((log, report))
    }

    fn active(&self) -> &Segment {
        self.segments.back().expect("a log always has an active segment")
    }

    /// The active segment's base offset and size (bytes placed).
    pub fn active_extent(&self) -> (i64, u64) {
        let active = self.active();
        (active.base_offset(), active.size())
    }

    /// The active segment's file length (`fstat`): longer than its size when zeros were
    /// filled past the data (see `prealloc`).
    pub fn active_file_len(&self) -> std::io::Result<u64> {
        self.active().log_file().len()
    }

    /// The directory holding this partition's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The disk every durable operation of this log goes through.
    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }
    /// The settings in force.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }
    /// Offset the next append gets.
    pub fn next_offset(&self) -> i64 {
        self.active().next_offset()
    }
    /// First offset kept.
    pub fn log_start_offset(&self) -> i64 {
        self.segments.front().expect("non-empty").base_offset()
    }
    /// The last durable offset + 1, as published to readers.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load()
    }
    /// A handle readers on other threads may poll.
    pub fn high_watermark_handle(&self) -> Arc<HighWatermark> {
        self.high_watermark.clone()
    }
    /// Why the partition refuses appends, if it does.
    pub fn read_only_reason(&self) -> Option<&str> {
        self.read_only.as_deref()
    }
    /// Marks the partition read-only (after a failed write).
    pub fn set_read_only(&mut self, reason: String) {
        self.read_only.get_or_insert(reason);
    }
    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
    /// Total bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::size).sum()
    }
    /// Retention never deletes a segment holding offsets at or past `floor`
    /// (the lander's landed offset).
    pub fn set_retain_floor(&mut self, floor: Option<i64>) {
        self.retain_floor = floor;
    }

    /// Publishes `offset` as the new high watermark (monotonic).
    pub fn publish_high_watermark(&self, offset: i64) {
        assert!(offset <= self.next_offset(), "high watermark {offset} past log end {}", self.next_offset());
        self.high_watermark.publish(offset);
    }

    /// Validates `bytes` as one batch, rolls the segment when needed, assigns offsets
    /// and returns where to write it. Index entries are kept in memory until
    /// [`PartitionLog::flush_indexes`].
    pub fn append(&mut self, mut bytes: BytesMut, now_ms: i64) -> Result<AppendPlan, AppendError> {
        if let Some(reason) = &self.read_only {
            return Err(AppendError::ReadOnly(reason.clone()));
        }
        let (record_count, max_timestamp) = {
            let view = BatchView::parse(&bytes)?;
            if view.len() != bytes.len() {
                return Err(AppendError::NotOneBatch { batch: view.len(), given: bytes.len() });
            }
            if bytes.len() > self.config.batch_bytes_max {
                return Err(AppendError::TooLarge { size: bytes.len(), max: self.config.batch_bytes_max });
            }
            crate::batch::validate_records(&view)?;
            (view.record_count(), view.max_timestamp())
        };
        let roll = self.should_roll(bytes.len() as u64, now_ms) || self.offsets_overflow(record_count);
        let sealed_file = if roll { Some(self.roll(now_ms)?) } else { None };
        let active = self.segments.back_mut().expect("non-empty");
        let base_offset = active.next_offset();
        let position = active.assign(&mut bytes, record_count, max_timestamp);
        Ok(AppendPlan {
            base_offset,
            next_offset: active.next_offset(),
            file: active.log_file().clone(),
            position,
            bytes,
            sealed_file,
        })
    }

    /// True when `record_count` more offsets would not fit the active segment: index
    /// entries hold offsets relative to the segment's base as u32 (Kafka rolls for the
    /// same reason). Never true for an empty segment.
    fn offsets_overflow(&self, record_count: u32) -> bool {
        let active = self.active();
        let last_relative = active.next_offset() - active.base_offset() + i64::from(record_count) - 1;
        active.size() > 0 && last_relative > i64::from(u32::MAX)
    }

    fn should_roll(&self, len: u64, now_ms: i64) -> bool {
        let active = self.active();
        if active.size() == 0 {
            return false;
        }
        let full = active.size() + len > self.config.segment_bytes;
        let old = self.config.segment_ms.is_some_and(|ms| now_ms - active.created_ms() >= ms);
        full || old
    }

    /// Seals the active segment and starts a new one; returns the sealed file. The
    /// directory entry of the new segment is not yet durable (see [`Segment::create`]).
    fn roll(&mut self, now_ms: i64) -> Result<Arc<DiskFile>, SegmentError> {
        let sealed = self.segments.back_mut().expect("non-empty");
        sealed.flush_indexes_sync()?;
        sealed.release_index_files();
        let sealed_file = sealed.log_file().clone();
        let base = sealed.next_offset();
        self.segments.push_back(Segment::create(&self.disk, &self.dir, base, self.config.map_len(), now_ms)?);
        Ok(sealed_file)
    }

    /// Rolls the active segment if it is older than `segment_ms` (called on a timer).
    /// After a roll the directory needs a sync before appends to the new segment are
    /// durable, as with [`AppendPlan::sealed_file`].
    pub fn roll_if_old(&mut self, now_ms: i64) -> Result<Option<Arc<DiskFile>>, SegmentError> {
        if self.read_only.is_none()
            && self.should_roll(0, now_ms)
            && self.high_watermark() == self.next_offset()
        {
            return self.roll(now_ms).map(Some);
        }
        Ok(None)
    }

    /// Writes in-memory index entries of the active segment to its index files.
    pub fn flush_indexes(&mut self) -> Result<(), SegmentError> {
        self.segments.back_mut().expect("non-empty").flush_indexes_sync()
    }

    /// Appends with blocking writes and one fdatasync, then publishes the high
    /// watermark. For tools and tests; shards use [`PartitionLog::append`].
    pub fn append_sync(&mut self, bytes: BytesMut, now_ms: i64) -> Result<(i64, i64), AppendError> {
        let plan = self.append(bytes, now_ms)?;
        let io = |source| AppendError::Storage(SegmentError::Io { path: self.dir.clone(), source });
        if let Some(sealed) = &plan.sealed_file {
            sealed.sync_data().map_err(io)?;
            self.disk.sync_dir(&self.dir).map_err(io)?;
        }
        plan.file.write_all_at(&plan.bytes, plan.position).map_err(io)?;
        plan.file.sync_data().map_err(io)?;
        self.flush_indexes()?;
        self.publish_high_watermark(plan.next_offset);
        for hint in self.trim_cache() {
            hint.apply();
        }
        Ok((plan.base_offset, plan.next_offset))
    }

    fn segment_for(&self, offset: i64) -> Option<&Segment> {
        let at = self.segments.partition_point(|s| s.base_offset() <= offset);
        at.checked_sub(1).map(|i| &self.segments[i])
    }

    /// The page-cache window (see [`LogConfig::cache_window_bytes`]) after bytes were
    /// written: hints to start writeback of bytes more than half the window behind the
    /// end and to drop bytes more than the whole window behind it. Cheap when there is
    /// nothing new to do; the shard calls it after writes complete.
    ///
    /// Returns the hints to apply ([`CacheHint::apply`]); usually none.
    #[must_use = "the hints do nothing until applied"]
    pub fn trim_cache(&mut self) -> Vec<CacheHint> {
        let window = self.config.cache_window_bytes;
        let mut hints = Vec::new();
        if window == 0 {
            return hints;
        }
        let target = self.cache_point(window / 2);
        self.cache_written_back =
            self.advise_between(self.cache_written_back, target, CacheAdvice::StartWriteback, &mut hints);
        let target = self.cache_point(window);
        self.cache_dropped = self.advise_between(self.cache_dropped, target, CacheAdvice::Drop, &mut hints);
        hints
    }

    /// The log position `behind` bytes before the end (the start of the log if shorter).
    fn cache_point(&self, behind: u64) -> CacheCursor {
        let mut left = behind;
        for segment in self.segments.iter().rev() {
            if segment.size() >= left {
                let position = segment.size() - left;
                let position = position - position % CACHE_HINT_STEP_BYTES;
                return CacheCursor { base_offset: segment.base_offset(), position };
            }
            left -= segment.size();
        }
        let first = self.segments.front().expect("a log always has an active segment");
        CacheCursor { base_offset: first.base_offset(), position: 0 }
    }

    /// Collects hints for `from..to` segment by segment when `to` is past `from`
    /// (targets move in [`CACHE_HINT_STEP_BYTES`] steps, so most calls add nothing);
    /// returns the new cursor.
    fn advise_between(
        &self,
        from: CacheCursor,
        to: CacheCursor,
        advice: CacheAdvice,
        hints: &mut Vec<CacheHint>,
    ) -> CacheCursor {
        if to.base_offset < from.base_offset
            || to.base_offset == from.base_offset && to.position <= from.position
        {
            return from;
        }
        for segment in &self.segments {
            let base = segment.base_offset();
            if base < from.base_offset || base > to.base_offset {
                continue;
            }
            let start = if base == from.base_offset { from.position } else { 0 };
            let end = if base == to.base_offset { to.position } else { segment.size() };
            hints.extend(segment.cache_hint(start, end, advice));
        }
        to
    }

    /// Calls `visit` with the header of every batch that ends after `from`, in offset
    /// order up to the high watermark, reading headers in place (no CRC check: the
    /// bytes below the watermark were validated when appended or recovered). Used to
    /// rebuild state kept beside the log, such as idempotent producers'.
    pub fn for_each_header(&self, from: i64, mut visit: impl FnMut(&BatchHeader)) -> Result<(), ReadError> {
        let high_watermark = self.high_watermark();
        let from = from.max(self.log_start_offset());
        let first = self.segments.partition_point(|s| s.next_offset() <= from);
        for segment in self.segments.iter().skip(first) {
            let window = segment.slice(0, segment.size());
            let mut position =
                if segment.base_offset() <= from { segment.lookup_position(from) as usize } else { 0 };
            let mut scanned_through = segment.base_offset().max(from);
            while position < window.len() && scanned_through < high_watermark {
                let corrupt = |reason: String| ReadError::Corrupt { offset: scanned_through, reason };
                let len = match crate::batch::frame_len(&window[position..]) {
                    Some(Ok(len)) if position + len <= window.len() => len,
                    Some(Err(error)) => return Err(corrupt(error.to_string())),
                    _ => return Err(corrupt(format!("frame cut at byte {position}"))),
                };
                let (header, _) = BatchHeader::ref_from_prefix(&window[position..])
                    .map_err(|_| corrupt(format!("header cut at byte {position}")))?;
                scanned_through = header.base_offset.get() + i64::from(header.last_offset_delta.get()) + 1;
                if scanned_through > from {
                    visit(header);
                }
                position += len;
            }
            if scanned_through >= high_watermark {
                break;
            }
        }
        Ok(())
    }

    /// Reads whole batches starting with the one holding `offset`, up to `max_bytes`
    /// (at least one batch when any is available), never past the high watermark and
    /// never across a segment boundary. Every returned batch is CRC-checked.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Fetched, ReadError> {
        self.read_bounded(offset, max_bytes, true)
    }

    /// As [`PartitionLog::read`]; with `first_may_exceed` false, a first batch larger
    /// than `max_bytes` is not returned either (the read is empty).
    pub fn read_bounded(
        &self,
        offset: i64,
        max_bytes: usize,
        first_may_exceed: bool,
    ) -> Result<Fetched, ReadError> {
        let high_watermark = self.high_watermark();
        let log_start_offset = self.log_start_offset();
        if offset < log_start_offset || offset > high_watermark {
            return Err(ReadError::OffsetOutOfRange { offset, log_start_offset, high_watermark });
        }
        let empty = Fetched { bytes: Bytes::new(), next_offset: offset, high_watermark, log_start_offset };
        if offset == high_watermark {
            return Ok(empty);
        }
        let Some(segment) = self.segment_for(offset) else { return Ok(empty) };
        let window = segment.slice(0, segment.size());
        // Bytes past the high watermark may be placed but not yet written (zeros, or
        // past the end of the file, where touching the mapping is SIGBUS): a frame is
        // only looked at when the batch before it ends below the high watermark. The
        // first frame holds offsets below `offset`, which is below the watermark.
        let mut position = segment.lookup_position(offset) as usize;
        let mut start = None;
        let mut next_offset = offset;
        let mut scanned_through = offset;
        while position < window.len() && scanned_through < high_watermark {
            let view = BatchView::parse(&window[position..])
                .map_err(|e| ReadError::Corrupt { offset: scanned_through, reason: e.to_string() })?;
            scanned_through = view.next_offset();
            if view.next_offset() <= offset {
                position += view.len();
                continue;
            }
            let first = *start.get_or_insert(position);
            let oversized = position + view.len() - first > max_bytes;
            if oversized && (position > first || !first_may_exceed) {
                if position == first {
                    start = None;
                }
                break;
            }
            position += view.len();
            next_offset = view.next_offset();
        }
        assert!(next_offset <= high_watermark, "read past the high watermark");
        let Some(first) = start else { return Ok(empty) };
        Ok(Fetched { bytes: window.slice(first..position), next_offset, high_watermark, log_start_offset })
    }

    /// The first offset whose record timestamp is >= `timestamp`, with that timestamp,
    /// or `None` when every record is older. Compressed batches answer with their base
    /// offset and max timestamp. Like [`PartitionLog::read`], never looks at a frame
    /// at or past the high watermark.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Option<(i64, i64)> {
        let high_watermark = self.high_watermark();
        let segment = self
            .segments
            .iter()
            .find(|s| s.max_timestamp() >= timestamp && s.base_offset() < high_watermark)?;
        let window = segment.slice(0, segment.size());
        let mut position = segment.lookup_time_position(timestamp, high_watermark - 1) as usize;
        while position < window.len() {
            let view = BatchView::parse(&window[position..]).ok()?;
            if view.base_offset() >= high_watermark {
                return None;
            }
            if view.max_timestamp() >= timestamp {
                let record = view
                    .records()
                    .ok()
                    .and_then(|records| records.into_iter().find(|r| r.timestamp >= timestamp))
                    .map(|r| (r.offset, r.timestamp));
                return Some(record.unwrap_or((view.base_offset(), view.max_timestamp())));
            }
            if view.next_offset() >= high_watermark {
                return None;
            }
            position += view.len();
        }
        None
    }

    /// The record with the largest timestamp below the high watermark, as (offset,
    /// timestamp): what ListOffsets answers for timestamp -3 (KIP-734). Segments are
    /// visited by descending maximum timestamp and the walk stops once no unvisited
    /// segment can hold a larger one; only batch headers are read, then the records of
    /// the winning batch (a compressed one answers with its last offset).
    pub fn max_timestamp_offset(&self) -> Option<(i64, i64)> {
        let high_watermark = self.high_watermark();
        let mut order: Vec<&Segment> =
            self.segments.iter().filter(|s| s.base_offset() < high_watermark).collect();
        order.sort_by_key(|s| std::cmp::Reverse(s.max_timestamp()));
        let mut best: Option<(i64, u64, &Segment)> = None;
        for segment in order {
            if best.as_ref().is_some_and(|(ts, ..)| *ts >= segment.max_timestamp()) {
                break;
            }
            let window = segment.slice(0, segment.size());
            let mut position = 0usize;
            let mut next = segment.base_offset();
            while position < window.len() && next < high_watermark {
                let Some(Ok(len)) = crate::batch::frame_len(&window[position..]) else { break };
                let Ok((header, _)) = BatchHeader::ref_from_prefix(&window[position..]) else { break };
                if best.as_ref().is_none_or(|(ts, ..)| header.max_timestamp.get() > *ts) {
                    best = Some((header.max_timestamp.get(), position as u64, segment));
                }
                next = header.base_offset.get() + i64::from(header.last_offset_delta.get()) + 1;
                position += len;
            }
        }
        let (timestamp, position, segment) = best?;
        let window = segment.slice(0, segment.size());
        let view = BatchView::parse(&window[position as usize..]).ok()?;
        let offset = view
            .records()
            .ok()
            .and_then(|records| records.into_iter().find(|r| r.timestamp == timestamp).map(|r| r.offset))
            .unwrap_or(view.last_offset());
        Some((offset, timestamp))
    }

    /// Retires whole sealed segments past retention (time, size), never the active
    /// one, never one holding offsets at or past the high watermark or the retain
    /// floor: their files are renamed out of the log (durably: the directory is synced)
    /// and returned for the caller to unlink ([`Retired::delete`]), off the thread that
    /// appends when unlinking is slow (see [`Retired`]).
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<Vec<Retired>, SegmentError> {
        let mut deleted = Vec::new();
        let mut total = self.size_bytes();
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let expired = self.config.retention_ms.is_some_and(|ms| oldest.max_timestamp() < now_ms - ms);
            let oversized = self.config.retention_bytes.is_some_and(|max| total - oldest.size() >= max);
            let durable = oldest.next_offset() <= self.high_watermark();
            let landed = self.retain_floor.is_none_or(|floor| oldest.next_offset() <= floor);
            if !((expired || oversized) && durable && landed) {
                break;
            }
            let oldest = self.segments.pop_front().expect("len > 1");
            total -= oldest.size();
            deleted.push(oldest.retire()?);
        }
        if !deleted.is_empty() {
            segment::sync_dir_on(&*self.disk, &self.dir)?;
        }
        Ok(deleted)
    }

    /// Cuts the log back to `offset` after a failed write or sync (`offset` is the
    /// high watermark: everything below it is durable). Segments starting at or past
    /// it are deleted, the one holding it is truncated where the batch starting at
    /// `offset` began and re-scanned, and what is left is synced (files, directory)
    /// before the partition takes appends again. The read-only mark is cleared only
    /// when all of that succeeded and the kept bytes scan clean.
    pub fn truncate_to(&mut self, offset: i64) -> Result<(), SegmentError> {
        assert!(offset <= self.high_watermark(), "truncation below durable data");
        let dir_error = |source| SegmentError::Io { path: self.dir.clone(), source };
        // Each step leaves the in-memory log whole when it fails, so a heal that fails
        // on a still-failing disk can be tried again (found by corelog-sim, seed 179).
        while self.segments.len() > 1 && self.segments.back().is_some_and(|s| s.base_offset() >= offset) {
            let base = self.segments.back().expect("len > 1").base_offset();
            segment::delete_files(&*self.disk, &self.dir, base)?;
            self.segments.pop_back();
        }
        let last = self.segments.back().expect("a log always has a segment");
        let (base, position) = (last.base_offset(), last.position_of(offset));
        let log_file = last.log_file().clone();
        log_file.set_len(position).map_err(dir_error)?;
        log_file.sync_all().map_err(dir_error)?;
        drop(log_file);
        let (segment, scan) =
            Segment::open(&self.disk, &self.dir, base, self.config.map_len(), OpenMode::Rebuild)?;
        *self.segments.back_mut().expect("a log always has a segment") = segment;
        for segment in &mut self.segments {
            segment.flush_indexes_sync()?;
            segment.log_file().sync_data().map_err(dir_error)?;
        }
        segment::sync_dir_on(&*self.disk, &self.dir)?;
        if let Some((position, error)) = scan.error {
            return Err(SegmentError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(format!("kept bytes do not scan at {position}: {error}")),
            });
        }
        assert_eq!(self.next_offset(), offset, "truncation ends the log at the durable offset");
        let end = self.cache_point(0);
        (self.cache_written_back, self.cache_dropped) = (end, end);
        self.read_only = None;
        Ok(())
    }

    /// Cuts the zeros filled past the data of sealed segments (see `prealloc`), except
    /// segment `filling`'s, which a fill may still be writing to. Nothing is cut in a
    /// read-only partition: a sealed segment's bytes past a corrupt batch are evidence.
    /// Returns the bytes cut.
    pub fn trim_sealed(&mut self, filling: Option<i64>) -> Result<u64, SegmentError> {
        if self.read_only.is_some() {
            return Ok(0);
        }
        let sealed = self.segments.len() - 1;
        let mut cut = 0;
        for segment in self.segments.iter_mut().take(sealed) {
            if Some(segment.base_offset()) != filling {
                cut += segment.trim_tail()?;
            }
        }
        Ok(cut)
    }

    /// Flushes indexes and syncs every segment: the state a clean shutdown leaves.
    pub fn close(&mut self) -> Result<(), SegmentError> {
        for segment in &mut self.segments {
            segment.flush_indexes_sync()?;
        }
        // Sealed segments too: with `--flush os` nothing synced them, and the next
        // unclean open trusts segments last written before this run's end.
        for segment in &self.segments {
            segment
                .log_file()
                .sync_all()
                .map_err(|source| SegmentError::Io { path: segment.path("log"), source })?;
        }
        // And the directory: a segment rolled since the last sync is named only there,
        // and after a clean open nothing syncs it before the first append is
        // acknowledged (found by corelog-sim, seed 168).
        segment::sync_dir_on(&*self.disk, &self.dir)
    }
}
