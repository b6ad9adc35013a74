//! One segment of a partition's log: `<base_offset:020>.log` with its sparse
//! `.index` and `.timeindex`, laid out exactly as Kafka lays them out.
//!
//! * `.log`: RecordBatch v2 frames back to back, no header (see [`crate::batch`]).
//! * `.index`: 8-byte entries, big-endian `relative_offset: u32` (the *last* offset of
//!   the indexed batch minus the segment's base offset) and `position: u32` (the file
//!   position where that batch starts). One entry once more than
//!   [`INDEX_INTERVAL_BYTES`] of log were written since the previous one.
//! * `.timeindex`: 12-byte entries, big-endian `max_timestamp: i64` so far and the
//!   `relative_offset: u32` of the record holding it; appended with the offset index
//!   whenever the maximum timestamp grew.
//!
//! Ownership: a segment belongs to the shard that owns its partition. Reads are
//! zero-copy: the whole segment is mapped once (`memmap2`) for a length of
//! [`Segment::map_len`], which is at least the largest size the segment may grow to, and
//! readers get `bytes::Bytes` slices that keep the mapping alive. Pages beyond the end of
//! the file are never touched: readers stay below the written size.
//!
//! A log file may be longer than its data: zeros the shard filled ahead of the tail
//! (`prealloc`). An all-zero remainder after the last batch is not data to any reader
//! here ([`scan_batches`], [`FollowedSegment::complete_end`]), and a sealed segment's is
//! cut by [`Segment::trim_tail`].
//!
//! Invariants: `size` is the byte length of the valid prefix of the log; index entries
//! are strictly increasing in offset and position and always point at a batch start
//! below `size`; a segment's offsets lie in `base_offset..next_offset`. Index files
//! are derived data: recovery validates them against the log and rebuilds them when
//! they disagree.

use crate::batch::{self, BatchError, BatchView};
use crate::disk::{Disk, DiskFile};
use bytes::{Bytes, BytesMut};
use memmap2::{Mmap, MmapOptions};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes of log between two offset-index entries (Kafka's `index.interval.bytes`).
pub const INDEX_INTERVAL_BYTES: u64 = 4096;
/// Size of one `.index` entry.
pub const INDEX_ENTRY_BYTES: usize = 8;
/// Size of one `.timeindex` entry.
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;
/// Largest segment: positions are u32 in the index.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;

const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(SEGMENT_BYTES_MAX.is_multiple_of(4096));

/// Errors from segment files.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// An I/O call failed.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file name is not `<20 digits>.log`.
    #[error("{0}: not a segment file name")]
    BadName(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io { path: path.to_path_buf(), source }
}

/// File name stem for a segment starting at `base_offset`.
pub fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

/// Parses `<20 digits>.log` into the base offset.
pub fn parse_log_name(path: &Path) -> Option<i64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok()).flatten()
}

/// A sparse offset-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Last offset of the indexed batch, relative to the segment base.
    pub relative_offset: u32,
    /// File position where the batch starts.
    pub position: u32,
}

/// A time-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeIndexEntry {
    /// Largest timestamp up to this point.
    pub timestamp: i64,
    /// Relative offset of the record with that timestamp (batch last offset here).
    pub relative_offset: u32,
}

/// Result of walking batches over a byte range.
#[derive(Debug, Default)]
pub struct Scan {
    /// Position after the last good batch.
    pub valid_end: u64,
    /// Offset after the last good batch.
    pub next_offset: i64,
    /// Largest timestamp seen, with the last offset of its batch.
    pub max_timestamp: Option<(i64, i64)>,
    /// Number of good batches.
    pub batches: u64,
    /// The first bad batch: position and why. `None` when the bytes end at a batch
    /// boundary or in an all-zero remainder.
    pub error: Option<(u64, ScanError)>,
    /// Length of the bytes walked (the file's length, for a segment being opened).
    pub len: u64,
    /// Bytes after the last good batch that are all zero: space the shard filled ahead
    /// of the tail (`prealloc`), which is not data.
    pub zero_tail: u64,
}

/// Why a scan stopped before the end of the bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The batch is malformed or its CRC does not match.
    #[error("{0}")]
    Batch(#[from] BatchError),
    /// The batch's base offset is not the next expected offset.
    #[error("offset {found} where {expected} was expected")]
    OffsetGap {
        /// Expected base offset.
        expected: i64,
        /// Stored base offset.
        found: i64,
    },
    /// The partition leader epoch field is not the one the engine stamps.
    #[error("leader epoch {0} is not the engine's")]
    LeaderEpoch(i32),
}

/// Walks the batches in `bytes[start..]`, expecting the first to have `next_offset`,
/// and stops at the first one that is torn, corrupt or out of sequence.
/// `on_batch(position, view)` sees every good batch. An all-zero remainder after the
/// last good batch is no error: it is preallocated space ([`Scan::zero_tail`]).
/// (A batch is never all zeros: its length field alone is at least 49.)
pub fn scan_batches(
    bytes: &[u8],
    start: u64,
    next_offset: i64,
    mut on_batch: impl FnMut(u64, &BatchView<'_>),
) -> Scan {
    let mut scan = Scan { valid_end: start, next_offset, len: bytes.len() as u64, ..Scan::default() };
    let mut position = start as usize;
    while position < bytes.len() {
        let result = BatchView::parse(&bytes[position..]).map_err(ScanError::from).and_then(|view| {
            if view.base_offset() != scan.next_offset {
                return Err(ScanError::OffsetGap { expected: scan.next_offset, found: view.base_offset() });
            }
            let epoch = view.header().partition_leader_epoch.get();
            if epoch != batch::LEADER_EPOCH {
                return Err(ScanError::LeaderEpoch(epoch));
            }
            Ok(view)
        });
        match result {
            Ok(view) => {
                on_batch(position as u64, &view);
                if scan.max_timestamp.is_none_or(|(ts, _)| view.max_timestamp() > ts) {
                    scan.max_timestamp = Some((view.max_timestamp(), view.last_offset()));
                }
                position += view.len();
                scan.valid_end = position as u64;
                scan.next_offset = view.next_offset();
                scan.batches += 1;
            }
            Err(error) => {
                if bytes[position..].iter().all(|b| *b == 0) {
                    scan.zero_tail = (bytes.len() - position) as u64;
                } else {
                    scan.error = Some((position as u64, error));
                }
                break;
            }
        }
    }
    scan
}

/// How [`Segment::open`] treats a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// A sealed segment: trust the validated index, check the tail, never truncate.
    Sealed,
    /// The active segment after a clean shutdown: scan from the last index entry and
    /// truncate a bad tail.
    Active,
    /// The active segment after an unclean stop: ignore the index files, scan and
    /// CRC-check every batch, rebuild the indexes, truncate to the last good batch.
    Rebuild,
}

/// Keeps a `Mmap` alive behind `Bytes` slices.
struct MapOwner(Mmap);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Page-cache advice, see [`CacheHint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheAdvice {
    /// Start writing dirty pages back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`).
    StartWriteback,
    /// Drop clean pages (`madvise(MADV_DONTNEED)` on our mapping, then
    /// `posix_fadvise(POSIX_FADV_DONTNEED)`); dirty pages stay.
    Drop,
}

/// Page-cache advice for a page-aligned stretch of one segment's log file; see
/// [`CacheHint::apply`].
#[derive(Debug)]
pub struct CacheHint {
    file: Arc<DiskFile>,
    /// The stretch in the segment's read mapping (keeps the mapping alive).
    mapped: Bytes,
    start: u64,
    advice: CacheAdvice,
}

impl CacheHint {
    /// Bytes of the file the advice covers.
    pub fn bytes(&self) -> u64 {
        self.mapped.len() as u64
    }

    /// Whether the advice drops pages (rather than starting their writeback).
    pub fn drops_pages(&self) -> bool {
        self.advice == CacheAdvice::Drop
    }

    /// Applies the advice. Advisory only: the file's contents never change, and
    /// errors are ignored (the worst outcome is pages staying cached). It may block
    /// (dropping 8 MiB took 1.5-2 ms on the development VM, and drains per-CPU page
    /// lists on every core), so shards hand hints to helper threads rather than apply
    /// them (`io::apply_cache_hints`).
    pub fn apply(&self) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.file.std());
        let len = self.mapped.len();
        match self.advice {
            CacheAdvice::StartWriteback => {
                // SAFETY: a plain syscall on a descriptor we hold; no memory is passed.
                unsafe {
                    libc::sync_file_range(fd, self.start as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE)
                };
            }
            CacheAdvice::Drop => {
                // Pages this process has mapped are not dropped by fadvise: unmap them
                // from our read mapping first. Readers holding slices of the stretch
                // fault the same bytes back in from the file on their next access.
                // SAFETY: `mapped` is a live, page-aligned stretch of a read-only shared
                // file mapping (the segment mapping starts on a page and `start` is a
                // page multiple), kept alive by this hint; MADV_DONTNEED on it discards
                // page-table entries only, never file data.
                unsafe { libc::madvise(self.mapped.as_ptr() as *mut libc::c_void, len, libc::MADV_DONTNEED) };
                // SAFETY: a plain syscall on a descriptor we hold.
                unsafe { libc::posix_fadvise(fd, self.start as i64, len as i64, libc::POSIX_FADV_DONTNEED) };
            }
        }
    }
}

/// One segment: the log file, its mapping and its in-memory indexes.
#[derive(Debug)]
pub struct Segment {
    base_offset: i64,
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    log: Arc<DiskFile>,
    map: Bytes,
    size: u64,
    next_offset: i64,
    max_timestamp: i64,
    created_ms: i64,
    index: Vec<IndexEntry>,
    time_index: Vec<TimeIndexEntry>,
    index_flushed: usize,
    time_index_flushed: usize,
    bytes_since_index: u64,
    /// The `.index` and `.timeindex` files, opened on the first flush and kept while
    /// the segment is active (no open and close per sync on the shard thread).
    index_files: Option<[DiskFile; 2]>,
    /// The log file may be longer than `size` (zeros filled ahead of the tail, see
    /// `prealloc`) until [`Segment::trim_tail`] cuts it.
    may_have_tail: bool,
}

impl Segment {
    /// Path of this segment's file with the given extension.
    pub fn path(&self, extension: &str) -> PathBuf {
        self.dir.join(format!("{}.{extension}", file_stem(self.base_offset)))
    }

    fn map_file(file: &File, path: &Path, map_len: u64) -> Result<Bytes, SegmentError> {
        let len = usize::try_from(map_len.max(1)).expect("segment length fits usize");
        // SAFETY: the mapping is read-only. Only the owning shard writes the file, and
        // only beyond every position a reader is handed; the file is only truncated
        // by recovery before it is mapped, so mapped pages below `size` stay valid.
        let map = unsafe { MmapOptions::new().len(len).map(file) }.map_err(io_error(path))?;
        Ok(Bytes::from_owner(MapOwner(map)))
    }

    /// Creates an empty segment at `base_offset` whose log may grow to `map_len` bytes.
    /// The new files' directory entries are not synced here: the caller makes the
    /// directory durable ([`sync_dir`], or an fsync of it through the shard's io_uring)
    /// before any offset in this segment is acknowledged, so a roll never blocks a shard
    /// thread on a journal commit.
    pub fn create(
        disk: &Arc<dyn Disk>,
        dir: &Path,
        base_offset: i64,
        map_len: u64,
        now_ms: i64,
    ) -> Result<Self, SegmentError> {
        assert!(base_offset >= 0);
        let stem = file_stem(base_offset);
        let log_path = dir.join(format!("{stem}.log"));
        let log = DiskFile::open(disk, &log_path, true).map_err(io_error(&log_path))?;
        for extension in ["index", "timeindex"] {
            let path = dir.join(format!("{stem}.{extension}"));
            disk.open(&path, true).map_err(io_error(&path))?;
        }
        let map = Self::map_file(log.std(), &log_path, map_len)?;
        Ok(Self {
            base_offset,
            dir: dir.to_path_buf(),
            disk: disk.clone(),
            log: Arc::new(log),
            map,
            size: 0,
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            created_ms: now_ms,
            index: Vec::new(),
            time_index: Vec::new(),
            index_flushed: 0,
            time_index_flushed: 0,
            bytes_since_index: 0,
            index_files: None,
            may_have_tail: true,
        })
    }

    /// Opens an existing segment and walks (length, CRC, offsets) the batches after
    /// the last trusted index entry, or all of them with [`OpenMode::Rebuild`].
    /// Returns the segment and what the scan found; see [`OpenMode`] for what happens
    /// to a bad tail.
    pub fn open(
        disk: &Arc<dyn Disk>,
        dir: &Path,
        base_offset: i64,
        map_len: u64,
        mode: OpenMode,
    ) -> Result<(Self, Scan), SegmentError> {
        let stem = file_stem(base_offset);
        let log_path = dir.join(format!("{stem}.log"));
        let log = DiskFile::open(disk, &log_path, false).map_err(io_error(&log_path))?;
        let file_len = log.len().map_err(io_error(&log_path))?;
        let map = Self::map_file(log.std(), &log_path, map_len.max(file_len))?;
        let file_bytes = &map[..file_len as usize];
        let index = match mode {
            OpenMode::Rebuild => Vec::new(),
            OpenMode::Sealed | OpenMode::Active => {
                read_index(&**disk, &dir.join(format!("{stem}.index")), file_bytes, base_offset)
            }
        };
        let time_index = read_time_index(&**disk, &dir.join(format!("{stem}.timeindex")), index.last());
        truncate_file(&**disk, &dir.join(format!("{stem}.index")), (index.len() * INDEX_ENTRY_BYTES) as u64)?;
        truncate_file(
            &**disk,
            &dir.join(format!("{stem}.timeindex")),
            (time_index.len() * TIME_INDEX_ENTRY_BYTES) as u64,
        )?;
        let (start, start_offset) = match index.last() {
            Some(entry) => {
                let view = BatchView::parse(&file_bytes[entry.position as usize..])
                    .expect("read_index keeps only entries at good batches");
                (entry.position as u64, view.base_offset())
            }
            None => (0, base_offset),
        };
        let mut segment = Self {
            base_offset,
            dir: dir.to_path_buf(),
            disk: disk.clone(),
            log: Arc::new(log),
            map: map.clone(),
            size: start,
            next_offset: start_offset,
            max_timestamp: time_index.last().map_or(i64::MIN, |e| e.timestamp),
            created_ms: file_mtime_ms(&**disk, &log_path),
            index_flushed: index.len(),
            time_index_flushed: time_index.len(),
            index,
            time_index,
            bytes_since_index: 0,
            index_files: None,
            may_have_tail: true,
        };
        let mut batches = Vec::new();
        let scan = scan_batches(file_bytes, start, start_offset, |position, view| {
            batches.push((position, view.len() as u64, view.last_offset(), view.max_timestamp()));
        });
        for (position, len, last_offset, max_timestamp) in batches {
            if position == start && !segment.index.is_empty() {
                // Already indexed: account for it without adding an entry.
                segment.size = position + len;
                segment.max_timestamp = segment.max_timestamp.max(max_timestamp);
                segment.bytes_since_index = len;
                continue;
            }
            segment.note_batch(position, len, last_offset, max_timestamp);
        }
        segment.next_offset = scan.next_offset;
        segment.may_have_tail = scan.zero_tail > 0;
        assert_eq!(segment.size, scan.valid_end, "scan and index agree on the valid end");
        if scan.error.is_some() && mode != OpenMode::Sealed {
            if crate::plant::armed(crate::plant::Plant::SkipTornTailTruncation) {
                // Planted bug: the torn tail stays and appends go after it.
                segment.size = file_len;
            } else {
                segment.log.set_len(scan.valid_end).map_err(io_error(&log_path))?;
                segment.log.sync_all().map_err(io_error(&log_path))?;
            }
        }
        Ok((segment, scan))
    }

    /// Records an appended batch at `position` in the in-memory indexes.
    fn note_batch(&mut self, position: u64, len: u64, last_offset: i64, max_timestamp: i64) {
        assert_eq!(position, self.size, "batches are appended at the end");
        if self.bytes_since_index > INDEX_INTERVAL_BYTES {
            let relative_offset = self.relative(last_offset);
            self.index.push(IndexEntry { relative_offset, position: position as u32 });
            if max_timestamp > self.time_index.last().map_or(i64::MIN, |e| e.timestamp) {
                self.time_index.push(TimeIndexEntry { timestamp: max_timestamp, relative_offset });
            }
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += len;
        self.size = position + len;
        self.next_offset = last_offset + 1;
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
    }

    fn relative(&self, offset: i64) -> u32 {
        let relative = offset - self.base_offset;
        assert!(
            (0..=i64::from(u32::MAX)).contains(&relative),
            "offset {offset} outside segment {}",
            self.base_offset
        );
        relative as u32
    }

    /// Reserves space for `batch` at the end of the segment, stamps its base offset and
    /// returns the write position. The caller writes the bytes there.
    pub fn assign(&mut self, batch: &mut BytesMut, record_count: u32, max_timestamp: i64) -> u64 {
        let position = self.size;
        let base_offset = self.next_offset;
        batch::assign_base_offset(batch, base_offset);
        let last_offset = base_offset + i64::from(record_count) - 1;
        self.note_batch(position, batch.len() as u64, last_offset, max_timestamp);
        position
    }

    /// The serialized index entries not yet written to the index files, as
    /// `(index_position, index_bytes, timeindex_position, timeindex_bytes)`; marks them
    /// written.
    pub fn take_unflushed_indexes(&mut self) -> Option<(u64, Vec<u8>, u64, Vec<u8>)> {
        if self.index_flushed == self.index.len() && self.time_index_flushed == self.time_index.len() {
            return None;
        }
        let index_bytes: Vec<u8> = self.index[self.index_flushed..]
            .iter()
            .flat_map(|e| e.relative_offset.to_be_bytes().into_iter().chain(e.position.to_be_bytes()))
            .collect();
        let time_bytes: Vec<u8> = self.time_index[self.time_index_flushed..]
            .iter()
            .flat_map(|e| e.timestamp.to_be_bytes().into_iter().chain(e.relative_offset.to_be_bytes()))
            .collect();
        let positions = (
            (self.index_flushed * INDEX_ENTRY_BYTES) as u64,
            (self.time_index_flushed * TIME_INDEX_ENTRY_BYTES) as u64,
        );
        self.index_flushed = self.index.len();
        self.time_index_flushed = self.time_index.len();
        Some((positions.0, index_bytes, positions.1, time_bytes))
    }

    /// Writes unflushed index entries with plain positional writes (page cache).
    pub fn flush_indexes_sync(&mut self) -> Result<(), SegmentError> {
        if let Some((index_position, index_bytes, time_position, time_bytes)) = self.take_unflushed_indexes()
        {
            if self.index_files.is_none() {
                let open = |extension| {
                    let path = self.path(extension);
                    DiskFile::open(&self.disk, &path, false).map_err(io_error(&path))
                };
                self.index_files = Some([open("index")?, open("timeindex")?]);
            }
            let files = self.index_files.as_ref().expect("opened above");
            for (file, extension, position, bytes) in [
                (&files[0], "index", index_position, index_bytes),
                (&files[1], "timeindex", time_position, time_bytes),
            ] {
                file.write_all_at(&bytes, position)
                    .map_err(|source| SegmentError::Io { path: self.path(extension), source })?;
            }
        }
        Ok(())
    }

    /// Closes the index files [`Segment::flush_indexes_sync`] keeps open (a sealed
    /// segment's indexes change no more; a later flush opens them again).
    pub fn release_index_files(&mut self) {
        self.index_files = None;
    }

    /// Finds the file position from which to scan for `offset`: the start of the
    /// greatest indexed batch whose last offset is below `offset`, else 0.
    pub fn lookup_position(&self, offset: i64) -> u64 {
        let relative = offset.saturating_sub(self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        let at = self.index.partition_point(|e| e.relative_offset < relative);
        if at == 0 {
            0
        } else {
            u64::from(self.index[at - 1].position)
        }
    }

    /// The file position where the batch starting at `offset` begins (the segment's
    /// size when `offset` is its next offset), found by walking batch headers from the
    /// nearest index entry. For cutting the log back to a batch boundary below the
    /// high watermark; panics when `offset` is no batch boundary of this segment.
    pub fn position_of(&self, offset: i64) -> u64 {
        let mut position = self.lookup_position(offset);
        let mut next = if position == 0 { self.base_offset } else { i64::MIN };
        while next != offset {
            assert!(
                position < self.size,
                "offset {offset} is no batch boundary of segment {}",
                self.base_offset
            );
            let view = BatchView::parse(&self.map[position as usize..self.size as usize])
                .expect("bytes below the high watermark were validated");
            if view.base_offset() == offset {
                break;
            }
            next = view.next_offset();
            position += view.len() as u64;
        }
        position
    }

    /// Position from which to scan for the first batch with a timestamp >= `timestamp`,
    /// never that of a batch holding `limit_offset` or later (index entries exist for
    /// batches placed but not yet written).
    pub fn lookup_time_position(&self, timestamp: i64, limit_offset: i64) -> u64 {
        let at = self.time_index.partition_point(|e| e.timestamp < timestamp);
        if at == 0 {
            return 0;
        }
        let offset = self.base_offset + i64::from(self.time_index[at - 1].relative_offset);
        self.lookup_position(offset.min(limit_offset))
    }

    /// The mapped bytes `start..end` (zero-copy). `end` must not exceed the size.
    pub fn slice(&self, start: u64, end: u64) -> Bytes {
        assert!(start <= end && end <= self.size, "slice {start}..{end} beyond size {}", self.size);
        self.map.slice(start as usize..end as usize)
    }

    /// A page-cache hint for bytes `start..end` of the log file, shrunk inward to whole
    /// pages (`None` when no whole page is left). The hint holds the file and the
    /// mapped stretch, so it may be applied later on any thread.
    pub fn cache_hint(&self, start: u64, end: u64, advice: CacheAdvice) -> Option<CacheHint> {
        const PAGE: u64 = 4096;
        let end = end.min(self.size);
        let (start, end) = (start.next_multiple_of(PAGE), end - end % PAGE);
        (start < end).then(|| CacheHint {
            file: self.log.clone(),
            mapped: self.map.slice(start as usize..end as usize),
            start,
            advice,
        })
    }

    /// The log file (shared with the shard's io_uring writes).
    pub fn log_file(&self) -> &Arc<DiskFile> {
        &self.log
    }
    /// First offset.
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }
    /// Offset after the last assigned batch.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }
    /// Bytes assigned (written or being written).
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Largest timestamp in the segment (i64::MIN when empty).
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }
    /// When the segment was created (ms since epoch; file mtime for reopened ones).
    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }
    /// Number of offset-index entries.
    pub fn index_len(&self) -> usize {
        self.index.len()
    }

    /// Cuts the log file to its data when zeros were filled past it (a sealed segment's
    /// preallocated remainder); returns the bytes cut. Only for a segment no fill is
    /// writing to: a fill landing after the cut would lengthen the file again (with
    /// zeros, so harmlessly, but the cut would be lost). Readers never touch the cut
    /// bytes: the engine's stop at `size`, and the lander reads batch headers with
    /// `pread` before it touches mapped bytes (see [`FollowedSegment::frame_at`]).
    /// Not durable until the file is synced, which it need not be: zeros are not data.
    pub fn trim_tail(&mut self) -> Result<u64, SegmentError> {
        if !self.may_have_tail {
            return Ok(0);
        }
        let path = self.path("log");
        let len = self.log.len().map_err(io_error(&path))?;
        if len > self.size {
            self.log.set_len(self.size).map_err(io_error(&path))?;
        }
        self.may_have_tail = false;
        Ok(len.saturating_sub(self.size))
    }

    /// Deletes the segment's files.
    pub fn delete(self) -> Result<(), SegmentError> {
        delete_files(&*self.disk, &self.dir, self.base_offset)
    }

    /// Renames the segment's files to `*.deleted` (missing index files are fine) and
    /// returns it for [`Retired::delete`]. Durable once the directory is synced; if a
    /// crash loses the renames the segment is back whole, as if never retired.
    pub fn retire(self) -> Result<Retired, SegmentError> {
        let mut paths = Vec::with_capacity(3);
        for extension in ["log", "index", "timeindex"] {
            let from = self.path(extension);
            let to = self.dir.join(format!("{}.{extension}{RETIRED_SUFFIX}", file_stem(self.base_offset)));
            match self.disk.rename(&from, &to) {
                Ok(()) => paths.push(to),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound && extension != "log" => {}
                Err(error) => return Err(SegmentError::Io { path: from, source: error }),
            }
        }
        Ok(Retired { segment: self, paths })
    }
}

/// Where [`FollowedSegment::complete_end`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompleteEnd {
    /// End of the last complete batch walked.
    pub end: u64,
    /// Why the walk stopped before the length it was given, when that was not zeros
    /// (a write still landing, or damage).
    pub why: Option<String>,
    /// The walk stopped because it covered the bytes asked for: more batches may follow.
    pub capped: bool,
}

/// Virtual length of a [`FollowedSegment`] mapping: more than any segment can grow to
/// (`SEGMENT_BYTES_MAX` plus one batch, itself far below `SEGMENT_BYTES_MAX`).
pub const FOLLOW_MAP_BYTES: u64 = 1 << 32;

const _: () = assert!(FOLLOW_MAP_BYTES >= 2 * SEGMENT_BYTES_MAX);

/// A read-only view of a segment file that another process (the engine) may still be
/// appending to: what the lander reads. It never writes or truncates the file.
///
/// The file is mapped once for [`FOLLOW_MAP_BYTES`]; [`FollowedSegment::complete_end`]
/// before a [`FollowedSegment::sync`] tells how much of it is safe to read.
#[derive(Debug)]
pub struct FollowedSegment {
    path: PathBuf,
    file: File,
    map: Bytes,
    base_offset: i64,
}

impl FollowedSegment {
    /// Opens `<base_offset:020>.log` read-only.
    pub fn open(path: &Path) -> Result<Self, SegmentError> {
        let base_offset = parse_log_name(path).ok_or_else(|| SegmentError::BadName(path.to_path_buf()))?;
        let file = File::open(path).map_err(io_error(path))?;
        let len = usize::try_from(FOLLOW_MAP_BYTES).expect("64-bit address space");
        // SAFETY: the mapping is read-only and callers only touch bytes of batches whose
        // frame length was read with `pread` (`frame_at`), which lie below the data the
        // engine wrote; zeros past the data, which the engine may cut, are only ever
        // read with `pread`. Below its data the engine truncates a segment only while
        // recovering at open (a torn tail no CRC-checking reader accepted) or while
        // healing a partition after a storage failure (bytes past its watermark). A
        // reader racing such a truncation could fault on the vanished pages; the
        // lander documents this and restarts idempotently.
        let map = unsafe { MmapOptions::new().len(len).map(&file) }.map_err(io_error(path))?;
        Ok(Self { path: path.to_path_buf(), file, map: Bytes::from_owner(MapOwner(map)), base_offset })
    }

    /// Makes every byte the file holds now durable (`fdatasync`, allowed on a read-only
    /// descriptor). A reader that stays within batches it found complete *before* this
    /// call never hands out bytes a power loss could take back: the file may be longer
    /// than its data (zeros filled ahead of the tail), so its length bounds nothing.
    pub fn sync(&self) -> Result<(), SegmentError> {
        self.file.sync_data().map_err(io_error(&self.path))
    }

    /// The file's current length, without syncing it.
    pub fn current_len(&self) -> Result<u64, SegmentError> {
        let len = self.file.metadata().map_err(io_error(&self.path))?.len();
        assert!(len <= FOLLOW_MAP_BYTES, "{}: segment larger than its mapping", self.path.display());
        Ok(len)
    }

    /// The length of the batch frame at `position` when its length field is plausible
    /// and the frame ends within `len` (a length this reader got from
    /// [`FollowedSegment::current_len`]); `None` at zeros, past the end of the file or
    /// at a frame cut short. The length field is read with `pread`, not through the
    /// mapping: the engine may cut zeros past a sealed segment's data at any time, and
    /// touching a mapped page past the end of the file is SIGBUS. A frame whose length
    /// is plausible is a batch the engine wrote, all of it below its data end.
    pub fn frame_at(&self, position: u64, len: u64) -> Option<usize> {
        use std::os::unix::fs::FileExt;
        let mut prefix = [0u8; 12];
        self.file.read_exact_at(&mut prefix, position).ok()?;
        let frame = batch::frame_len(&prefix)?.ok()?;
        (position + frame as u64 <= len).then_some(frame)
    }

    /// Walks the complete batches from `position` (the first must start at
    /// `next_offset`) up to `len`, CRC-checking each, until at least `bytes_min` bytes
    /// are covered or a frame is missing, torn or out of sequence.
    pub fn complete_end(
        &self,
        mut position: u64,
        mut next_offset: i64,
        len: u64,
        bytes_min: u64,
    ) -> CompleteEnd {
        let start = position;
        let stop = |end, why| CompleteEnd { end, why, capped: false };
        while position < len {
            if position - start >= bytes_min {
                return CompleteEnd { end: position, why: None, capped: true };
            }
            let Some(frame) = self.frame_at(position, len) else {
                let zeros = self.prefix(position, len).iter().all(|b| *b == 0);
                return stop(position, (!zeros).then(|| format!("incomplete frame at byte {position}")));
            };
            let bytes = self.slice(position, position + frame as u64);
            match BatchView::parse(&bytes) {
                Ok(view) if view.base_offset() == next_offset => next_offset = view.next_offset(),
                Ok(view) => {
                    let why = format!("offset {} where {next_offset} was expected", view.base_offset());
                    return stop(position, Some(why));
                }
                Err(error) => return stop(position, Some(error.to_string())),
            }
            position += frame as u64;
        }
        stop(position, None)
    }

    /// Up to 12 bytes at `position`, read with `pread` (fewer at the end of the file).
    fn prefix(&self, position: u64, len: u64) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut prefix = vec![0u8; len.saturating_sub(position).min(12) as usize];
        let read = self.file.read_at(&mut prefix, position).unwrap_or(0);
        prefix.truncate(read);
        prefix
    }

    /// Zero-copy bytes `start..end`; `end` must not exceed the end of a batch
    /// [`FollowedSegment::frame_at`] or [`FollowedSegment::complete_end`] found.
    pub fn slice(&self, start: u64, end: u64) -> Bytes {
        assert!(start <= end && end <= FOLLOW_MAP_BYTES);
        self.map.slice(start as usize..end as usize)
    }

    /// The segment's base offset (from its file name).
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Decodes raw `.index` bytes (a trailing partial entry is ignored).
pub fn decode_index(bytes: &[u8]) -> Vec<IndexEntry> {
    bytes
        .chunks_exact(INDEX_ENTRY_BYTES)
        .map(|chunk| IndexEntry {
            relative_offset: u32::from_be_bytes(chunk[0..4].try_into().expect("4 bytes")),
            position: u32::from_be_bytes(chunk[4..8].try_into().expect("4 bytes")),
        })
        .collect()
}

/// Decodes raw `.timeindex` bytes (a trailing partial entry is ignored).
pub fn decode_time_index(bytes: &[u8]) -> Vec<TimeIndexEntry> {
    bytes
        .chunks_exact(TIME_INDEX_ENTRY_BYTES)
        .map(|chunk| TimeIndexEntry {
            timestamp: i64::from_be_bytes(chunk[0..8].try_into().expect("8 bytes")),
            relative_offset: u32::from_be_bytes(chunk[8..12].try_into().expect("4 bytes")),
        })
        .collect()
}

/// Reads `.index`, keeping the longest prefix of entries that are strictly increasing,
/// inside the file and pointing at a valid batch whose last offset matches.
fn read_index(disk: &dyn Disk, path: &Path, log: &[u8], base_offset: i64) -> Vec<IndexEntry> {
    let bytes = disk.read(path).unwrap_or_default();
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / INDEX_ENTRY_BYTES);
    for entry in decode_index(&bytes) {
        let increasing = entries.last().is_none_or(|last| {
            entry.relative_offset > last.relative_offset && entry.position > last.position
        });
        let points_at_batch = BatchView::parse(log.get(entry.position as usize..).unwrap_or_default())
            .is_ok_and(|view| view.last_offset() == base_offset + i64::from(entry.relative_offset));
        if !(increasing && points_at_batch) {
            break;
        }
        entries.push(entry);
    }
    entries
}

/// Reads `.timeindex`, keeping the increasing prefix whose entries do not point past
/// the last trusted offset-index entry.
fn read_time_index(disk: &dyn Disk, path: &Path, last_index: Option<&IndexEntry>) -> Vec<TimeIndexEntry> {
    let Some(last_index) = last_index else { return Vec::new() };
    let bytes = disk.read(path).unwrap_or_default();
    let mut entries: Vec<TimeIndexEntry> = Vec::new();
    for entry in decode_time_index(&bytes) {
        let out_of_order = entries.last().is_some_and(|last| {
            entry.timestamp <= last.timestamp || entry.relative_offset < last.relative_offset
        });
        if out_of_order || entry.relative_offset > last_index.relative_offset {
            break;
        }
        entries.push(entry);
    }
    entries
}

/// Cuts the file at `path` to at most `len` bytes, creating it empty when missing.
fn truncate_file(disk: &dyn Disk, path: &Path, len: u64) -> Result<(), SegmentError> {
    let file = match disk.open(path, false) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => disk.open(path, true),
        opened => opened,
    }
    .map_err(io_error(path))?;
    if file.metadata().map_err(io_error(path))?.len() > len {
        disk.set_len(&file, path, len).map_err(io_error(path))?;
    }
    Ok(())
}

fn file_mtime_ms(disk: &dyn Disk, path: &Path) -> i64 {
    disk.mtime_ms(path).unwrap_or(0)
}

/// Last modification time (ms since the epoch) of segment `base_offset`'s log file in
/// `dir`; `i64::MAX` when it cannot be read (so recovery treats it as recent).
pub fn log_mtime_ms(disk: &dyn Disk, dir: &Path, base_offset: i64) -> i64 {
    disk.mtime_ms(&dir.join(format!("{}.log", file_stem(base_offset)))).unwrap_or(i64::MAX)
}

/// Suffix a retired segment's files carry between [`Segment::retire`] and
/// [`Retired::delete`]; recovery removes files that still carry it (a crash came
/// between the two).
pub const RETIRED_SUFFIX: &str = ".deleted";

/// A segment retention removed from its log: its files renamed to `*.deleted` (no
/// segment name any more, so no recovery takes them for log), not yet unlinked.
///
/// Unlinking is what costs: on a file system mounted with online discard, ext4 discards
/// the freed blocks inside the `unlink` (or the last `close`/`munmap` of the file),
/// about 200 ms for a 256 MiB segment on the development VM, so the shard hands a
/// retired segment to a helper thread (the engine's deletion thread) to delete.
/// The segment's own mapping and descriptor travel with it, so that last close happens
/// there too (a reader still holding mapped bytes closes it wherever it lets go).
#[derive(Debug)]
pub struct Retired {
    segment: Segment,
    paths: Vec<PathBuf>,
}

impl Retired {
    /// First offset of the segment that was retired.
    pub fn base_offset(&self) -> i64 {
        self.segment.base_offset
    }

    /// Unlinks the renamed files (missing ones are fine) and closes the segment.
    pub fn delete(self) -> Result<(), SegmentError> {
        let Self { segment, paths } = self;
        for path in paths {
            remove_if_present(&*segment.disk, &path)?;
        }
        drop(segment);
        Ok(())
    }
}

/// Whether `path` names a retired segment's file (see [`RETIRED_SUFFIX`]).
pub fn is_retired_name(path: &Path) -> bool {
    path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.ends_with(RETIRED_SUFFIX))
}

/// Removes the file at `path`; one that is already gone is fine.
pub fn remove_if_present(disk: &dyn Disk, path: &Path) -> Result<(), SegmentError> {
    match disk.remove(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io_error(path)(error)),
        _ => Ok(()),
    }
}

/// Deletes segment `base_offset`'s files in `dir` (missing ones are fine).
pub fn delete_files(disk: &dyn Disk, dir: &Path, base_offset: i64) -> Result<(), SegmentError> {
    for extension in ["log", "index", "timeindex"] {
        remove_if_present(disk, &dir.join(format!("{}.{extension}", file_stem(base_offset))))?;
    }
    Ok(())
}

/// fsyncs a directory so that created, renamed or deleted entries are durable.
pub fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    sync_dir_on(&crate::disk::OsDisk, dir)
}

/// [`sync_dir`] through `disk`.
pub fn sync_dir_on(disk: &dyn Disk, dir: &Path) -> Result<(), SegmentError> {
    disk.sync_dir(dir).map_err(io_error(dir))
}
