//! The engine's data directory as a [`Source`]: segment files read through read-only
//! mappings ([`engine::segment::FollowedSegment`]), followed by polling.
//!
//! Invariants:
//! * nothing under the data directory is ever written here;
//! * only batches found complete (CRC-checked) *before* an `fdatasync` of the segment
//!   are handed out, so nothing handed out can be taken back by a power loss (the
//!   file's length bounds nothing: the engine fills zeros ahead of its tail);
//! * zeros after the last batch are the end of the data, like the end of the file;
//!   batch headers are read with `pread` before any mapped byte of the batch is
//!   touched, so the engine may cut a sealed segment's zeros under the reader;
//! * a log that ends before the offset asked for (already read or landed: the topic
//!   was re-created, or the engine cut its log back) is an error, never a silent wait;
//! * a CRC-valid batch that breaks the record rules or does not decode is handed to
//!   the lander as [`Quarantined`] (bytes and reason), never skipped silently;
//! * every batch is CRC-checked and must carry the next expected offset; a batch that
//!   fails is the tail still being written and is retried on the next read (with a
//!   fresh look at the file's length), unless the next segment already starts past it
//!   and the stop persists for [`CORRUPTION_GRACE_MS`], which is corruption and an error;
//!   so is a sealed segment whose data (before its end of file or its zeros) ends short
//!   of its successor's base offset for that long: offsets are missing, and the reader
//!   says so instead of waiting for them;
//! * the reader moves to the next segment only when it starts exactly at the offset
//!   after the last batch read (a segment is sealed once its successor exists, but its
//!   last write may still be in flight when the successor appears);
//! * every segment file opened is tied to its topic's incarnation: the partition's
//!   `partition.metadata` is read right after the file is opened (a topic delete
//!   renames the directory away first), and when its topic id is not the one this
//!   source handed out records of, the read hands out nothing and reports the new id
//!   ([`ReadOutcome::topic_id`]): records of two topics of one name never mix.

use crate::source::{decode_checked, LandRecord, Quarantined, ReadOutcome, Source, SourceError};
use engine::batch::{BatchView, BATCH_HEADER_BYTES};
use engine::partition_meta::TopicId;
use engine::segment::{parse_log_name, FollowedSegment};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a scan may stay stopped at one position of a segment that has a successor
/// before the segment is reported corrupt (a write in flight at a roll finishes far
/// sooner).
pub const CORRUPTION_GRACE_MS: u64 = 5_000;

/// Where a reader stands in one partition.
#[derive(Debug)]
struct Cursor {
    segment: FollowedSegment,
    /// File position of the next batch to read.
    position: u64,
    /// Offset the batch at `position` must start with.
    next_offset: i64,
    /// End of the complete batches found before the last sync: durable.
    durable_len: u64,
    /// The last scan stopped at a batch it could not accept (a write in progress):
    /// the next read must look at the file's length again.
    stalled: bool,
    /// The last look for complete batches stopped at the bytes it was asked for, not
    /// at the end of the data: more may follow `durable_len`.
    capped: bool,
    /// Since when a scan has stopped at `position` while a later segment exists.
    stuck_since: Option<(u64, Instant)>,
    /// The topic id the partition directory carried once the file was open (`None`
    /// for a directory from before ids existed).
    topic_id: Option<TopicId>,
    /// Position and CRC of the last batch read: if the file no longer holds that batch
    /// there, the engine cut the log back and wrote it again under the reader.
    last_batch: Option<(u64, u32)>,
}

/// Where a batch header keeps its CRC.
const CRC_BYTES: std::ops::Range<u64> = 17..21;

impl Cursor {
    /// A cursor at the start of the segment based at `base`.
    fn open(data_dir: &Path, topic: &str, partition: u32, base: i64) -> Result<Self, SourceError> {
        let path = partition_dir(data_dir, topic, partition)
            .join(format!("{}.log", engine::segment::file_stem(base)));
        let segment = FollowedSegment::open(&path)?;
        let topic_id = read_topic_id(data_dir, topic, partition)?;
        Ok(Self {
            segment,
            position: 0,
            next_offset: base,
            durable_len: 0,
            stalled: false,
            capped: false,
            stuck_since: None,
            topic_id,
            last_batch: None,
        })
    }
}

/// The topic id in the partition directory now (`None` without one).
fn read_topic_id(data_dir: &Path, topic: &str, partition: u32) -> Result<Option<TopicId>, SourceError> {
    let dir = partition_dir(data_dir, topic, partition);
    engine::partition_meta::read(&dir).map_err(|reason| SourceError::Io {
        path: dir.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
    })
}

/// Reads partitions from an engine data directory.
#[derive(Debug)]
pub struct SegmentSource {
    data_dir: PathBuf,
    cursors: HashMap<(String, u32), Cursor>,
    /// The incarnation each partition's records were handed out from.
    incarnations: HashMap<(String, u32), TopicId>,
    quarantined: Vec<Quarantined>,
    /// How long a stop before a successor's base may last ([`CORRUPTION_GRACE_MS`]).
    corruption_grace: Duration,
}

impl SegmentSource {
    /// A source over `data_dir` (which must exist).
    pub fn new(data_dir: &Path) -> Result<Self, SourceError> {
        if !data_dir.is_dir() {
            return Err(SourceError::Io {
                path: data_dir.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "data directory does not exist"),
            });
        }
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            cursors: HashMap::new(),
            incarnations: HashMap::new(),
            quarantined: Vec::new(),
            corruption_grace: Duration::from_millis(CORRUPTION_GRACE_MS),
        })
    }

    /// The same source with another grace period before a sealed segment that stops
    /// short of its successor is reported corrupt (tests use a short one).
    pub fn with_corruption_grace(mut self, grace: Duration) -> Self {
        self.corruption_grace = grace;
        self
    }

    fn open_cursor(&self, topic: &str, partition: u32, base: i64) -> Result<Cursor, SourceError> {
        Cursor::open(&self.data_dir, topic, partition, base)
    }

    /// Positions a cursor at the batch holding `from` (or the first batch after it).
    /// Returns the skipped range when `from` was deleted by retention.
    fn seek(&mut self, topic: &str, partition: u32, from: i64) -> Result<Option<(i64, i64)>, SourceError> {
        let key = (topic.to_string(), partition);
        if self.cursors.get(&key).is_some_and(|c| c.next_offset <= from && c.segment.base_offset() <= from) {
            // Continue forward from the cursor (the usual case: `from` is where it stopped).
            return Ok(None);
        }
        self.cursors.remove(&key);
        let bases = segment_bases(&self.data_dir, topic, partition)?;
        let Some(&first) = bases.first() else { return Ok(None) };
        let (base, skipped) = match bases.iter().rev().find(|b| **b <= from) {
            Some(base) => (*base, None),
            None => (first, Some((from, first))),
        };
        let cursor = self.open_cursor(topic, partition, base)?;
        self.cursors.insert(key, cursor);
        Ok(skipped)
    }

    /// Whether `found` (the id a newly opened file's directory carries) is another
    /// incarnation than the one this partition's records came from; records the first
    /// id seen.
    fn replaced(&mut self, topic: &str, partition: u32, found: Option<TopicId>) -> bool {
        let Some(found) = found else { return false };
        let key = (topic.to_string(), partition);
        match self.incarnations.insert(key, found) {
            Some(before) if before != found => {
                tracing::info!(topic, partition, %before, %found, "the topic was deleted and created again");
                true
            }
            _ => false,
        }
    }

    /// Whether the partition directory now carries another id than `was` (the id of the
    /// files being read): the topic was replaced under the reader.
    fn replaced_since(
        &mut self,
        topic: &str,
        partition: u32,
        was: Option<TopicId>,
    ) -> Result<bool, SourceError> {
        let now = read_topic_id(&self.data_dir, topic, partition)?;
        Ok(now.is_some() && now != was && self.replaced(topic, partition, now))
    }

    /// The read outcome that reports a replaced topic: nothing handed out (records this
    /// read added are taken back), the cursor dropped.
    fn report_replaced(
        &mut self,
        topic: &str,
        partition: u32,
        from: i64,
        out: &mut Vec<LandRecord>,
        out_len: usize,
    ) -> ReadOutcome {
        out.truncate(out_len);
        self.cursors.remove(&(topic.to_string(), partition));
        self.quarantined.retain(|q| q.topic != topic || q.partition != partition);
        let topic_id = self.incarnations.get(&(topic.to_string(), partition)).copied();
        ReadOutcome { next_offset: from, caught_up: false, skipped: None, topic_id }
    }
}

fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

/// Base offsets of the partition's segments, ascending.
fn segment_bases(data_dir: &Path, topic: &str, partition: u32) -> Result<Vec<i64>, SourceError> {
    let dir = partition_dir(data_dir, topic, partition);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(SourceError::Io { path: dir.display().to_string(), source }),
    };
    let mut bases: Vec<i64> = entries.flatten().filter_map(|e| parse_log_name(&e.path())).collect();
    bases.sort_unstable();
    Ok(bases)
}

impl Source for SegmentSource {
    fn topics(&mut self) -> Result<Vec<(String, u32)>, SourceError> {
        let io = |source| SourceError::Io { path: self.data_dir.display().to_string(), source };
        let mut partitions: HashMap<String, u32> = HashMap::new();
        for entry in std::fs::read_dir(&self.data_dir).map_err(io)?.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((topic, partition)) = name.rsplit_once('-') else { continue };
            let Ok(partition) = partition.parse::<u32>() else { continue };
            if topic.is_empty() || topic.starts_with("__") || !entry.path().is_dir() {
                continue;
            }
            let count = partitions.entry(topic.to_string()).or_default();
            *count = (*count).max(partition + 1);
        }
        let mut topics: Vec<_> = partitions.into_iter().collect();
        topics.sort();
        Ok(topics)
    }

    fn read(
        &mut self,
        topic: &str,
        partition: u32,
        from: i64,
        bytes_max: usize,
        out: &mut Vec<LandRecord>,
    ) -> Result<ReadOutcome, SourceError> {
        let asked = from;
        let out_len = out.len();
        let skipped = self.seek(topic, partition, from)?;
        let key = (topic.to_string(), partition);
        let opened = self.cursors.get(&key).map(|c| c.topic_id);
        if let Some(found) = opened {
            if self.replaced(topic, partition, found) {
                return Ok(self.report_replaced(topic, partition, asked, out, out_len));
            }
        }
        let from = skipped.map_or(from, |(_, to)| to);
        let topic_id = self.incarnations.get(&key).copied();
        let Some(cursor) = self.cursors.get_mut(&key) else {
            return Ok(ReadOutcome { next_offset: from, caught_up: true, skipped, topic_id });
        };
        let mut bytes_read = 0usize;
        loop {
            let mut stalled = None;
            if cursor.position >= cursor.durable_len || cursor.stalled {
                let len = cursor.segment.current_len()?;
                let wanted = (bytes_max - bytes_read).max(1) as u64;
                let found = cursor.segment.complete_end(cursor.position, cursor.next_offset, len, wanted);
                cursor.segment.sync()?;
                (cursor.durable_len, stalled, cursor.capped) = (found.end, found.why, found.capped);
                cursor.stalled = false;
                let rewritten = len >= cursor.position
                    && cursor.last_batch.is_some_and(|(at, crc)| {
                        let stored = cursor.segment.slice(at + CRC_BYTES.start, at + CRC_BYTES.end);
                        stored[..] != crc.to_be_bytes()
                    });
                if len < cursor.position || rewritten {
                    // The file shrank under us: the topic was replaced, or the engine
                    // cut the log back (recovery after a crash, or healing after a
                    // storage failure) past bytes already read.
                    let (id, base, next) =
                        (cursor.topic_id, cursor.segment.base_offset(), cursor.next_offset);
                    if self.replaced_since(topic, partition, id)? {
                        return Ok(self.report_replaced(topic, partition, asked, out, out_len));
                    }
                    return Err(SourceError::LogEndsEarly {
                        topic: topic.to_string(),
                        partition,
                        end: base,
                        expected: next,
                    });
                }
            }
            let end = cursor.durable_len;
            while cursor.position < end && bytes_read < bytes_max {
                let bytes = cursor.segment.slice(cursor.position, end);
                let view = match BatchView::parse(&bytes) {
                    Ok(view) if view.base_offset() == cursor.next_offset => view,
                    Ok(view) => {
                        stalled = Some(format!(
                            "offset {} where {} was expected",
                            view.base_offset(),
                            cursor.next_offset
                        ));
                        break;
                    }
                    Err(error) => {
                        stalled = Some(error.to_string());
                        break;
                    }
                };
                let len = view.len();
                let (next, last) = (view.next_offset(), view.last_offset());
                if last >= from {
                    let batch = cursor.segment.slice(cursor.position, cursor.position + len as u64);
                    if let Err(reason) = decode_checked(topic, partition, &view, batch.clone(), from, out) {
                        self.quarantined.push(Quarantined {
                            topic: topic.to_string(),
                            partition,
                            first_offset: view.base_offset(),
                            last_offset: last,
                            bytes: batch,
                            reason,
                        });
                    }
                    bytes_read += len;
                }
                cursor.last_batch = Some((cursor.position, view.crc()));
                cursor.position += len as u64;
                cursor.next_offset = next;
            }
            cursor.stalled = stalled.is_some();
            let next_offset = cursor.next_offset.max(from);
            if bytes_read >= bytes_max {
                return Ok(ReadOutcome { next_offset, caught_up: false, skipped, topic_id });
            }
            if cursor.capped && stalled.is_none() && cursor.position >= end {
                continue; // batches before `from` were walked: look for more
            }
            // End of the durable bytes of this segment: move on only to a successor that
            // starts exactly where this one ended.
            let bases = segment_bases(&self.data_dir, topic, partition)?;
            let successor = bases.iter().copied().find(|b| *b > cursor.segment.base_offset());
            match successor {
                Some(base) if base == cursor.next_offset && (cursor.position >= end || stalled.is_some()) => {
                    // Every offset of this segment is read (the successor starts right
                    // after it); bytes past the last batch can hold no further offsets.
                    // Look past the end first: the last write may have landed since.
                    let len = cursor.segment.current_len()?;
                    if stalled.is_none() && cursor.segment.frame_at(end, len).is_some() {
                        continue;
                    }
                    let next = Cursor::open(&self.data_dir, topic, partition, base)?;
                    if next.topic_id.is_some() && next.topic_id != cursor.topic_id {
                        let found = next.topic_id;
                        self.replaced(topic, partition, found);
                        return Ok(self.report_replaced(topic, partition, asked, out, out_len));
                    }
                    *cursor = next;
                }
                Some(base) if base > cursor.next_offset && (stalled.is_some() || cursor.position >= end) => {
                    // The sealed segment stops (at a batch that does not check, or where
                    // its data ends: end of file or zeros) short of its successor's base.
                    // Either its last write is still landing (it can be in flight when
                    // the engine rolls) or offsets are missing: only a stop that
                    // persists at one position is corruption, never a silent wait.
                    let since = match cursor.stuck_since {
                        Some((position, since)) if position == cursor.position => since,
                        _ => {
                            cursor.stuck_since = Some((cursor.position, Instant::now()));
                            return Ok(ReadOutcome { next_offset, caught_up: true, skipped, topic_id });
                        }
                    };
                    if since.elapsed() < self.corruption_grace {
                        return Ok(ReadOutcome { next_offset, caught_up: true, skipped, topic_id });
                    }
                    let why = stalled.unwrap_or_else(|| {
                        format!("its data ends there, before offset {base} where the next segment starts")
                    });
                    return Err(SourceError::Corrupt {
                        topic: topic.to_string(),
                        partition,
                        offset: cursor.next_offset,
                        reason: format!(
                            "sealed segment {} stops at position {}: {why}",
                            cursor.segment.path().display(),
                            cursor.position,
                        ),
                    });
                }
                None if stalled.is_none() && cursor.position >= end && cursor.next_offset < from => {
                    // The whole log is read and it ends before `from`, which was read
                    // or landed before: the topic was replaced, or the log cut back.
                    // Never wait there silently.
                    let (id, end) = (cursor.topic_id, cursor.next_offset);
                    if self.replaced_since(topic, partition, id)? {
                        return Ok(self.report_replaced(topic, partition, asked, out, out_len));
                    }
                    return Err(SourceError::LogEndsEarly {
                        topic: topic.to_string(),
                        partition,
                        end,
                        expected: from,
                    });
                }
                None if stalled.is_none() && cursor.position >= end => {
                    // Caught up at the end of the last segment: unless the topic was
                    // replaced under the reader (a new log that may already be longer
                    // than this one), in which case nothing more comes from this file.
                    let id = cursor.topic_id;
                    if self.replaced_since(topic, partition, id)? {
                        return Ok(self.report_replaced(topic, partition, asked, out, out_len));
                    }
                    return Ok(ReadOutcome { next_offset, caught_up: true, skipped, topic_id });
                }
                _ => return Ok(ReadOutcome { next_offset, caught_up: true, skipped, topic_id }),
            }
        }
    }

    fn forget(&mut self, topic: &str, partition: u32) {
        self.cursors.remove(&(topic.to_string(), partition));
    }

    fn take_quarantined(&mut self) -> Vec<Quarantined> {
        std::mem::take(&mut self.quarantined)
    }

    fn end_offset(&mut self, topic: &str, partition: u32) -> Result<i64, SourceError> {
        let bases = segment_bases(&self.data_dir, topic, partition)?;
        let Some(&last) = bases.last() else { return Ok(0) };
        let path = partition_dir(&self.data_dir, topic, partition)
            .join(format!("{}.log", engine::segment::file_stem(last)));
        let segment = FollowedSegment::open(&path)?;
        let len = segment.current_len()?;
        // Walk frame headers only (no CRC): an estimate for lag reports.
        let (mut position, mut end) = (0u64, last);
        while let Some(frame) = segment.frame_at(position, len) {
            if frame < BATCH_HEADER_BYTES {
                break;
            }
            let header = segment.slice(position, position + BATCH_HEADER_BYTES as u64);
            let base = i64::from_be_bytes(header[0..8].try_into().expect("8 bytes"));
            let delta = i32::from_be_bytes(header[23..27].try_into().expect("4 bytes"));
            end = base + i64::from(delta) + 1;
            position += frame as u64;
        }
        Ok(end)
    }
}
