//! Specifications of the partition log: appends, reads, roll, lookups, recovery from
//! torn and corrupt tails, index rebuild, sealed-segment corruption, retention.

use bytes::BytesMut;
use engine::batch::{BatchBuilder, BatchView};
use engine::log::{LogConfig, PartitionLog, ReadError};
use std::path::Path;

const NOW_MS: i64 = 1_700_000_000_000;

fn batch(records: usize, value_bytes: usize, timestamp: i64) -> BytesMut {
    let mut builder = BatchBuilder::default();
    for i in 0..records {
        let value = vec![b'a' + (i % 26) as u8; value_bytes];
        builder.push(timestamp + i as i64, Some(format!("k{i}").as_bytes()), Some(&value));
    }
    builder.finish()
}

fn config() -> LogConfig {
    LogConfig { retention_ms: None, ..LogConfig::default() }
}

fn open(dir: &Path, config: LogConfig, clean: bool) -> PartitionLog {
    PartitionLog::open(dir, config, clean, NOW_MS).expect("open").0
}

/// Reads every batch from offset 0 and returns the concatenated bytes.
fn read_all(log: &PartitionLog) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let fetched = log.read(offset, 1 << 20).expect("read");
        assert!(!fetched.bytes.is_empty(), "progress at offset {offset}");
        out.extend_from_slice(&fetched.bytes);
        offset = fetched.next_offset;
    }
    out
}

/// Appends `count` batches of 3 records and returns (segment file bytes, batch ends).
fn write_log(dir: &Path, count: usize) -> (Vec<u8>, Vec<(usize, i64)>) {
    let mut log = open(dir, config(), false);
    let mut ends = Vec::new();
    let mut position = 0;
    for i in 0..count {
        let bytes = batch(3, 20 + i * 7, NOW_MS + i as i64 * 10);
        position += bytes.len();
        let (_, next) = log.append_sync(bytes, NOW_MS).unwrap();
        ends.push((position, next));
    }
    let file = std::fs::read(dir.join(format!("{:020}.log", 0))).unwrap();
    assert_eq!(file.len(), position);
    (file, ends)
}

#[test]
fn given_appends_when_read_back_then_offsets_and_bytes_match() {
    let dir = tempfile::tempdir().unwrap();
    let (file, ends) = write_log(dir.path(), 5);
    let log = open(dir.path(), config(), true);
    assert_eq!(log.next_offset(), 15);
    assert_eq!(log.high_watermark(), 15);
    assert_eq!(read_all(&log), file);
    // A read from the middle of a batch returns that whole batch first.
    let fetched = log.read(4, 1).unwrap();
    let view = BatchView::parse(&fetched.bytes).unwrap();
    assert_eq!((view.base_offset(), view.last_offset()), (3, 5));
    assert_eq!(fetched.bytes.len(), ends[1].0 - ends[0].0, "max_bytes=1 still returns one batch");
    assert!(log.read(15, 100).unwrap().bytes.is_empty(), "at the high watermark: empty");
    assert!(matches!(log.read(16, 100), Err(ReadError::OffsetOutOfRange { .. })));
}

#[test]
fn given_torn_tail_at_every_byte_when_reopened_then_keeps_exactly_the_intact_prefix() {
    let source = tempfile::tempdir().unwrap();
    let (file, ends) = write_log(source.path(), 5);
    for cut in 0..=file.len() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{:020}.log", 0)), &file[..cut]).unwrap();
        let log = open(dir.path(), config(), false);
        let (kept_bytes, kept_next) =
            ends.iter().rev().find(|(end, _)| *end <= cut).copied().unwrap_or((0, 0));
        assert_eq!(log.next_offset(), kept_next, "cut at {cut}");
        assert_eq!(read_all(&log), &file[..kept_bytes], "cut at {cut}");
        let on_disk = std::fs::read(dir.path().join(format!("{:020}.log", 0))).unwrap();
        // Truncated to the intact prefix, unless what follows it is all zeros (which
        // is preallocated space, kept: a cut inside a batch's leading zero bytes).
        assert_eq!(&on_disk[..kept_bytes], &file[..kept_bytes], "cut {cut}");
        assert!(
            on_disk.len() == kept_bytes || on_disk[kept_bytes..].iter().all(|b| *b == 0),
            "file truncated to the intact prefix (cut {cut}, {} bytes kept)",
            on_disk.len()
        );
    }
}

#[test]
fn given_flipped_byte_anywhere_when_reopened_then_keeps_the_batches_before_it() {
    let source = tempfile::tempdir().unwrap();
    let (file, ends) = write_log(source.path(), 4);
    for flip in 0..file.len() {
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = file.clone();
        damaged[flip] ^= 0xff;
        std::fs::write(dir.path().join(format!("{:020}.log", 0)), &damaged).unwrap();
        let log = open(dir.path(), config(), false);
        let (kept_bytes, kept_next) =
            ends.iter().rev().find(|(end, _)| *end <= flip).copied().unwrap_or((0, 0));
        assert_eq!(log.next_offset(), kept_next, "flip at {flip}");
        assert_eq!(read_all(&log), &file[..kept_bytes], "flip at {flip}");
    }
}

#[test]
fn given_missing_or_garbage_index_when_reopened_then_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let small = LogConfig { segment_bytes: 64 << 10, ..config() };
    {
        let mut log = open(dir.path(), small.clone(), false);
        for i in 0..200 {
            log.append_sync(batch(2, 300, NOW_MS + i), NOW_MS).unwrap();
        }
        log.close().unwrap();
    }
    let index_path = dir.path().join(format!("{:020}.index", 0));
    let index_before = std::fs::read(&index_path).unwrap();
    assert!(index_before.len() >= 8 * 10, "an entry every 4 KiB");
    let expected = read_all(&open(dir.path(), small.clone(), true));
    std::fs::remove_file(&index_path).unwrap();
    let log = open(dir.path(), small.clone(), true);
    assert_eq!(read_all(&log), expected);
    assert!(log.segment_count() > 1);
    drop(log);
    // The sealed first segment's index is rebuilt identically.
    assert_eq!(std::fs::read(&index_path).unwrap(), index_before);
    std::fs::write(&index_path, vec![0xAB; index_before.len()]).unwrap();
    assert_eq!(read_all(&open(dir.path(), small, true)), expected);
}

#[test]
fn given_small_segments_when_appending_then_rolls_and_reopens_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let small = LogConfig { segment_bytes: 1000, ..config() };
    let mut log = open(dir.path(), small.clone(), false);
    let mut expected = Vec::new();
    for i in 0..10 {
        let bytes = batch(2, 100, NOW_MS + i);
        expected.extend_from_slice(&bytes);
        log.append_sync(bytes, NOW_MS).unwrap();
    }
    assert!(log.segment_count() >= 3, "rolled at 1000 bytes: {}", log.segment_count());
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    names.sort();
    assert_eq!(names[0], "00000000000000000000.log");
    assert!(names.iter().all(|n| n.len() == 24));
    let bases: Vec<i64> = names.iter().map(|n| n[..20].parse().unwrap()).collect();
    assert!(bases.windows(2).all(|w| w[0] < w[1]) && bases[1] % 2 == 0);
    drop(log);
    let log = open(dir.path(), small, false);
    assert_eq!(log.next_offset(), 20);
    let mut actual = read_all(&log);
    // Base offsets were stamped on append; compare with the stamped originals.
    let mut position = 0;
    while position < expected.len() {
        let len = BatchView::parse(&actual[position..]).unwrap().len();
        expected[position..position + 8].copy_from_slice(&actual[position..position + 8]);
        expected[position + 12..position + 16].copy_from_slice(&actual[position + 12..position + 16]);
        position += len;
    }
    assert_eq!(std::mem::take(&mut actual), expected);
}

#[test]
fn given_timestamps_when_looked_up_then_first_record_at_or_after_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig { segment_bytes: 2000, ..config() }, false);
    for i in 0..50 {
        log.append_sync(batch(4, 50, NOW_MS + i * 100), NOW_MS).unwrap();
    }
    // Batch i holds timestamps NOW+i*100 .. NOW+i*100+3, offsets 4i..4i+3.
    assert_eq!(log.offset_for_timestamp(NOW_MS + 1), Some((1, NOW_MS + 1)));
    assert_eq!(log.offset_for_timestamp(NOW_MS + 1050), Some((44, NOW_MS + 1100)));
    assert_eq!(log.offset_for_timestamp(NOW_MS + 4902), Some((198, NOW_MS + 4902)));
    assert_eq!(log.offset_for_timestamp(NOW_MS + 4904), None);
    assert_eq!(log.offset_for_timestamp(0), Some((0, NOW_MS)));
}

#[test]
fn given_corrupt_sealed_segment_when_reopened_then_read_only_and_reads_stop_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let small = LogConfig { segment_bytes: 1000, ..config() };
    let mut log = open(dir.path(), small.clone(), false);
    for i in 0..10 {
        log.append_sync(batch(2, 100, NOW_MS + i), NOW_MS).unwrap();
    }
    assert!(log.segment_count() > 2);
    drop(log);
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&first, &bytes).unwrap();
    let (mut log, report) = PartitionLog::open(dir.path(), small, true, NOW_MS).unwrap();
    assert!(report.sealed_corruption.is_some(), "{report:?}");
    assert!(log.read_only_reason().is_some());
    assert_eq!(std::fs::read(&first).unwrap(), bytes, "sealed segment never repaired");
    let served = read_all(&log);
    assert!(served.len() < bytes.len());
    assert!(matches!(
        log.append_sync(batch(1, 1, NOW_MS), NOW_MS),
        Err(engine::log::AppendError::ReadOnly(_))
    ));
}

#[test]
fn given_corruption_after_open_when_read_then_crc_error_not_bad_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), config(), false);
    log.append_sync(batch(3, 100, NOW_MS), NOW_MS).unwrap();
    let path = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(log.read(0, 1 << 20), Err(ReadError::Corrupt { offset: 0, .. })));
}

#[test]
fn given_size_and_time_retention_then_whole_old_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let retained = LogConfig {
        segment_bytes: 1000,
        retention_bytes: Some(2500),
        retention_ms: Some(60_000),
        ..config()
    };
    let mut log = open(dir.path(), retained, false);
    for i in 0..20 {
        log.append_sync(batch(2, 100, NOW_MS + i), NOW_MS).unwrap();
    }
    let before = log.segment_count();
    let retired = log.apply_retention(NOW_MS).unwrap();
    assert!(!retired.is_empty());
    assert_eq!(retired[0].base_offset(), 0, "the oldest segment goes first");
    assert_eq!(log.segment_count(), before - retired.len());
    assert!(log.size_bytes() < 2500 + 1000, "size {}", log.size_bytes());
    assert!(log.log_start_offset() > retired.last().unwrap().base_offset());
    // Renamed out of the log at once; unlinked when the caller deletes them.
    let first = dir.path().join(format!("{:020}.log", 0));
    let renamed = dir.path().join(format!("{:020}.log.deleted", 0));
    assert!(!first.exists() && renamed.exists());
    assert!(matches!(log.read(0, 100), Err(ReadError::OffsetOutOfRange { .. })));
    retired.into_iter().for_each(|r| r.delete().unwrap());
    assert!(!renamed.exists());
    // Time: an hour later everything sealed is older than a minute; the active stays.
    log.set_retain_floor(Some(log.log_start_offset()));
    assert!(
        log.apply_retention(NOW_MS + 3_600_000).unwrap().is_empty(),
        "retain floor holds unlanded segments"
    );
    log.set_retain_floor(None);
    log.apply_retention(NOW_MS + 3_600_000).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.next_offset(), 40);
    assert_eq!(read_all(&log).len() as u64, log.size_bytes());
}

#[test]
fn given_a_crash_between_retiring_and_unlinking_a_segment_when_reopened_then_its_files_go_and_the_log_is_whole(
) {
    let dir = tempfile::tempdir().unwrap();
    let retained = LogConfig { segment_bytes: 1000, retention_bytes: Some(2500), ..config() };
    let mut log = open(dir.path(), retained.clone(), false);
    for i in 0..20 {
        log.append_sync(batch(2, 100, NOW_MS + i), NOW_MS).unwrap();
    }
    let retired = log.apply_retention(NOW_MS).unwrap();
    assert!(!retired.is_empty());
    let (start, next, kept) = (log.log_start_offset(), log.next_offset(), read_all(&log));
    drop(retired); // never unlinked: the process died first
    drop(log);
    let leftovers = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".deleted"))
            .count()
    };
    assert!(leftovers() >= 2, "the retired log and index files are still there");
    let log = open(dir.path(), retained, false);
    assert_eq!(leftovers(), 0, "the open removed them");
    assert_eq!((log.log_start_offset(), log.next_offset()), (start, next));
    assert_eq!(read_all(&log), kept, "nothing retired came back");
}

#[test]
fn given_bad_input_when_appended_then_refused_and_log_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig { batch_bytes_max: 500, ..config() }, false);
    let mut bad_crc = batch(1, 10, NOW_MS);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    assert!(log.append(bad_crc, NOW_MS).is_err());
    let mut two = batch(1, 10, NOW_MS);
    two.extend_from_slice(&batch(1, 10, NOW_MS));
    assert!(log.append(two, NOW_MS).is_err());
    assert!(log.append(batch(5, 200, NOW_MS), NOW_MS).is_err());
    assert!(log.append(BytesMut::from(&b"short"[..]), NOW_MS).is_err());
    assert_eq!(log.next_offset(), 0);
    assert_eq!(log.append_sync(batch(1, 10, NOW_MS), NOW_MS).unwrap(), (0, 1));
}

#[test]
fn given_a_batch_placed_but_not_written_when_read_then_readers_stop_at_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), config(), false);
    let (_, durable_end) = log.append_sync(batch(3, 40, NOW_MS), NOW_MS).unwrap();
    // Placed: offsets and index entries assigned, bytes not written yet. The file
    // ends at the first batch, so touching the mapping past it would be SIGBUS.
    let plan = log.append(batch(2, 5000, NOW_MS + 1000), NOW_MS).unwrap();
    assert_eq!(plan.base_offset, durable_end);
    assert_eq!(log.high_watermark(), durable_end);
    let fetched = log.read(0, 1 << 20).expect("read below the high watermark");
    assert_eq!(fetched.next_offset, durable_end);
    assert!(log.read(durable_end, 1 << 20).unwrap().bytes.is_empty());
    assert_eq!(log.offset_for_timestamp(NOW_MS + 1000), None);
    assert_eq!(log.offset_for_timestamp(NOW_MS + 1), Some((1, NOW_MS + 1)));
}

/// Small segments, `durable` batches appended and synced; returns the log and the
/// durable end.
fn durable_log(dir: &Path, durable: usize) -> (PartitionLog, i64) {
    let small = LogConfig { segment_bytes: 1000, ..config() };
    let mut log = open(dir, small, false);
    let mut end = 0;
    for i in 0..durable {
        end = log.append_sync(batch(2, 100, NOW_MS + i as i64), NOW_MS).unwrap().1;
    }
    (log, end)
}

/// Places batches (offsets assigned, files created at rolls) and writes only those
/// `write` picks, as a process killed with writes in flight leaves them.
fn place(log: &mut PartitionLog, count: usize, write: impl Fn(usize) -> bool) -> Vec<(i64, i64)> {
    let mut placed = Vec::new();
    for i in 0..count {
        let plan = log.append(batch(2, 100, NOW_MS + 100 + i as i64), NOW_MS).unwrap();
        if write(i) {
            plan.file.write_all_at(&plan.bytes, plan.position).unwrap();
        }
        placed.push((plan.base_offset, plan.next_offset));
    }
    placed
}

fn log_files(dir: &Path) -> Vec<(i64, u64)> {
    let mut files: Vec<(i64, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let base = engine::segment::parse_log_name(&path)?;
            Some((base, std::fs::metadata(&path).unwrap().len()))
        })
        .collect();
    files.sort_unstable();
    files
}

/// After an unclean reopen: the durable prefix is intact, the log ends at `end`, no
/// segment file follows the end, and the partition takes an append that survives a
/// clean reopen.
fn assert_recovered_to(dir: &Path, durable_bytes: &[u8], end: i64) {
    let small = LogConfig { segment_bytes: 1000, ..config() };
    let (mut log, report) = PartitionLog::open(dir, small.clone(), false, NOW_MS).unwrap();
    assert_eq!(log.read_only_reason(), None, "{report:?}");
    assert_eq!(log.next_offset(), end, "{report:?}");
    assert_eq!(log.high_watermark(), end);
    assert_eq!(read_all(&log), durable_bytes);
    let last_base = log_files(dir).last().unwrap().0;
    assert!(last_base <= end, "no segment starts past the end: {:?}", log_files(dir));
    let (base, next) = log.append_sync(batch(3, 50, NOW_MS + 9), NOW_MS).expect("appendable after recovery");
    assert_eq!(base, end);
    log.close().unwrap();
    drop(log);
    let log = open(dir, small, true);
    assert_eq!(log.next_offset(), next);
    assert_eq!(&read_all(&log)[..durable_bytes.len()], durable_bytes);
}

#[test]
fn given_a_kill_with_the_last_batch_of_a_sealed_segment_unwritten_and_the_next_segment_written_then_recovery_cuts_at_the_hole(
) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, end) = durable_log(dir.path(), 5);
    let durable_bytes = read_all(&log);
    let segments_before = log.segment_count();
    // The first placed batch is not written; later ones (some in new segments) are.
    let placed = place(&mut log, 8, |i| i != 0);
    assert!(log.segment_count() > segments_before + 1, "placements rolled twice");
    assert_eq!(placed[0].0, end);
    drop(log);
    assert_recovered_to(dir.path(), &durable_bytes, end);
}

#[test]
fn given_a_kill_right_after_a_roll_with_the_sealed_tail_unwritten_then_the_empty_segment_goes_too() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, end) = durable_log(dir.path(), 4);
    let durable_bytes = read_all(&log);
    let segments = log.segment_count();
    // Place until a roll: nothing written, so the sealed tail is a hole and the new
    // segment is a zero-length file that does not follow it.
    let mut placed = 0;
    while log.segment_count() == segments {
        place(&mut log, 1, |_| false);
        placed += 1;
    }
    assert!(placed >= 1);
    let files = log_files(dir.path());
    assert_eq!(files.last().unwrap().1, 0, "{files:?}");
    drop(log);
    assert_recovered_to(dir.path(), &durable_bytes, end);
}

#[test]
fn given_a_kill_after_a_roll_with_nothing_lost_then_the_zero_length_segment_is_kept_and_appendable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = durable_log(dir.path(), 4);
    let segments = log.segment_count();
    let mut end = 0;
    while log.segment_count() == segments {
        end = place(&mut log, 1, |_| true)[0].1;
    }
    // The batch that rolled was written into the new segment; cut it off the file to
    // leave a zero-length segment that follows its predecessor exactly.
    let files = log_files(dir.path());
    let (base, _) = *files.last().unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(format!("{base:020}.log")))
        .unwrap()
        .set_len(0)
        .unwrap();
    let durable_bytes = read_all(&log);
    drop(log);
    assert!(end > base);
    let log = open(dir.path(), LogConfig { segment_bytes: 1000, ..config() }, false);
    let durable_bytes_now = read_all(&log);
    assert!(durable_bytes_now.len() >= durable_bytes.len());
    drop(log);
    assert_recovered_to(dir.path(), &durable_bytes_now, base);
}

#[test]
fn given_holes_in_several_recent_segments_then_recovery_keeps_only_the_prefix_before_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, end) = durable_log(dir.path(), 3);
    let durable_bytes = read_all(&log);
    // Holes every third placement across several rolls.
    place(&mut log, 20, |i| i % 3 != 0);
    drop(log);
    assert_recovered_to(dir.path(), &durable_bytes, end);
}

#[test]
fn given_a_failed_write_when_the_log_is_cut_back_to_the_high_watermark_then_it_takes_appends_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, end) = durable_log(dir.path(), 5);
    let durable_bytes = read_all(&log);
    // Placed and partly written across a roll, then "the disk failed".
    place(&mut log, 9, |i| i % 2 == 1);
    log.set_read_only("write failed: ENOSPC".into());
    assert!(log.append_sync(batch(1, 1, NOW_MS), NOW_MS).is_err());
    log.truncate_to(end).unwrap();
    assert_eq!(log.read_only_reason(), None);
    assert_eq!(log.next_offset(), end);
    assert_eq!(read_all(&log), durable_bytes);
    let (base, next) = log.append_sync(batch(2, 30, NOW_MS), NOW_MS).unwrap();
    assert_eq!(base, end);
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), LogConfig { segment_bytes: 1000, ..config() }, true);
    assert_eq!(log.next_offset(), next);
    assert_eq!(&read_all(&log)[..durable_bytes.len()], &durable_bytes[..]);
}

#[test]
fn given_an_unclean_stop_when_old_segments_were_written_before_the_run_then_corruption_there_is_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = durable_log(dir.path(), 10);
    assert!(log.segment_count() > 2);
    drop(log);
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&first, &bytes).unwrap();
    // Only segments written since a time after the corruption count as the stopped
    // run's: the first one is old, so its bad batch is corruption, not a torn write.
    let recovery = engine::log::Recovery::Unclean { written_since_ms: Some(engine::now_ms() + 3_600_000) };
    let small = LogConfig { segment_bytes: 1000, ..config() };
    let (log, report) = PartitionLog::open_with(dir.path(), small, recovery, NOW_MS).unwrap();
    assert!(report.sealed_corruption.is_some(), "{report:?}");
    assert!(log.read_only_reason().is_some());
    assert_eq!(std::fs::read(&first).unwrap(), bytes, "an old segment is never cut");
}

/// Appends `zeros` zero bytes to the segment file at `path` (what a fill ahead of the
/// tail leaves).
fn add_zeros(path: &Path, zeros: usize) -> u64 {
    let mut bytes = std::fs::read(path).unwrap();
    bytes.resize(bytes.len() + zeros, 0);
    std::fs::write(path, &bytes).unwrap();
    bytes.len() as u64
}

#[test]
fn given_zeros_filled_past_the_data_when_reopened_clean_or_not_then_they_are_no_data_and_appends_overwrite_them(
) {
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (file, ends) = write_log(dir.path(), 4);
        let path = dir.path().join(format!("{:020}.log", 0));
        let filled = add_zeros(&path, 3 * 4096 + 17);
        let (mut log, report) = PartitionLog::open(dir.path(), config(), clean, NOW_MS).unwrap();
        assert_eq!(report.truncated_bytes, 0, "zeros are not a torn tail: {report:?}");
        assert!(report.truncated_reason.is_none() && log.read_only_reason().is_none(), "{report:?}");
        assert_eq!(log.next_offset(), ends.last().unwrap().1);
        assert_eq!(read_all(&log), file);
        assert_eq!(log.active_file_len().unwrap(), filled, "the preallocated space is kept");
        let (base, next) = log.append_sync(batch(2, 50, NOW_MS + 100), NOW_MS).unwrap();
        assert_eq!(base, ends.last().unwrap().1);
        assert_eq!(log.active_file_len().unwrap(), filled, "the append overwrote zeros in place");
        drop(log);
        let log = open(dir.path(), config(), false);
        assert_eq!(log.next_offset(), next, "the append is found before the zeros after a crash");
        assert_eq!(read_all(&log)[..file.len()], file[..]);
    }
}

#[test]
fn given_sealed_segments_with_zeros_past_their_data_then_they_open_as_sealed_and_trimming_cuts_only_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let small = LogConfig { segment_bytes: 1000, ..config() };
    let (log, _) = durable_log(dir.path(), 10);
    assert!(log.segment_count() > 2);
    let expected = read_all(&log);
    drop(log);
    let mut sealed = log_files(dir.path());
    sealed.pop();
    for (base, len) in &sealed {
        let path = dir.path().join(format!("{base:020}.log"));
        assert_eq!(add_zeros(&path, 700), len + 700);
    }
    // Recovered as sealed (old) segments and as the stopped run's segments alike.
    let old = engine::log::Recovery::Unclean { written_since_ms: Some(engine::now_ms() + 3_600_000) };
    for recovery in
        [engine::log::Recovery::Clean, old, engine::log::Recovery::Unclean { written_since_ms: None }]
    {
        let (log, report) = PartitionLog::open_with(dir.path(), small.clone(), recovery, NOW_MS).unwrap();
        assert!(report.sealed_corruption.is_none() && report.truncated_reason.is_none(), "{report:?}");
        assert_eq!(log.read_only_reason(), None);
        assert_eq!(read_all(&log), expected, "{recovery:?}");
    }
    let mut log = open(dir.path(), small.clone(), true);
    assert_eq!(
        log.trim_sealed(Some(sealed[0].0)).unwrap(),
        700 * (sealed.len() as u64 - 1),
        "all but the one filling"
    );
    assert_eq!(log.trim_sealed(None).unwrap(), 700, "then that one");
    assert_eq!(log.trim_sealed(None).unwrap(), 0, "each is cut once");
    assert_eq!(log_files(dir.path())[..sealed.len()], sealed[..], "cut back to their data exactly");
    assert_eq!(read_all(&log), expected);
}

#[test]
fn given_zeros_then_bytes_past_the_data_then_it_is_a_torn_tail_in_the_active_segment_and_corruption_in_a_sealed_one(
) {
    // After the gap: one stray byte, or a lie that passes every batch check on its own
    // (valid CRC, the next expected offset, the engine's leader epoch), as a later
    // write that landed while an earlier one did not would leave it.
    for lie in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (file, ends) = write_log(dir.path(), 3);
        let next = ends.last().unwrap().1;
        let path = dir.path().join(format!("{:020}.log", 0));
        let mut bytes = file.clone();
        bytes.resize(file.len() + 4500, 0);
        if lie {
            let mut valid = batch(2, 30, NOW_MS);
            engine::batch::assign_base_offset(&mut valid, next);
            assert!(BatchView::parse(&valid).is_ok());
            bytes.extend_from_slice(&valid);
        } else {
            bytes.extend_from_slice(&[7; 500]);
        }
        std::fs::write(&path, &bytes).unwrap();
        let (log, report) = PartitionLog::open(dir.path(), config(), false, NOW_MS).unwrap();
        assert_eq!(report.truncated_bytes as usize, bytes.len() - file.len(), "{report:?}");
        assert_eq!(log.next_offset(), next, "nothing after the gap is data (lie: {lie})");
        assert_eq!(log.active_file_len().unwrap(), file.len() as u64);
    }
    // The same bytes in a sealed, old segment: corruption, never cut.
    let small = LogConfig { segment_bytes: 1000, ..config() };
    let dir = tempfile::tempdir().unwrap();
    drop(durable_log(dir.path(), 10));
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let data = bytes.len();
    bytes.resize(data + 300, 0);
    bytes[data + 299] = 1;
    std::fs::write(&first, &bytes).unwrap();
    let (mut log, report) = PartitionLog::open(dir.path(), small, true, NOW_MS).unwrap();
    assert!(report.sealed_corruption.is_some(), "{report:?}");
    assert_eq!(log.trim_sealed(None).unwrap(), 0, "a read-only partition's evidence is kept");
    assert_eq!(std::fs::read(&first).unwrap(), bytes);
}
