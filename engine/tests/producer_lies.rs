//! Producer state rebuilt from bytes that lie while passing their checksums: a batch
//! header whose record count disagrees with its offsets (CRC recomputed; recovery's
//! frame check cuts it), and a snapshot (CRC valid) that claims a producer's batches
//! sit past the log's (the header scan rebuilds that producer). Recovery must neither
//! panic nor trust them.

use bytes::BytesMut;
use engine::batch::BatchBuilder;
use engine::log::{LogConfig, PartitionLog};
use engine::producers::{ProducerStates, Sequenced};
use engine::AppendResult;
use std::os::unix::fs::FileExt;

const NOW_MS: i64 = 1_700_000_000_000;
/// Byte offsets in a RecordBatch v2 header.
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;
const RECORD_COUNT_AT: usize = 57;

fn batch(producer_id: i64, sequence: i32, records: i32) -> BytesMut {
    let mut builder = BatchBuilder::default();
    builder.producer(producer_id, 0, sequence);
    for i in 0..records {
        builder.push(NOW_MS + i64::from(i), Some(b"k"), Some(b"v"));
    }
    builder.finish()
}

fn config() -> LogConfig {
    LogConfig { retention_ms: None, cache_window_bytes: 0, ..LogConfig::default() }
}

#[test]
fn given_a_stored_batch_whose_record_count_lies_under_a_valid_crc_then_recovery_cuts_it_and_producer_state_never_sees_it(
) {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(), true, NOW_MS).unwrap();
    log.append_sync(batch(7, 0, 3), NOW_MS).unwrap();
    let end = log.size_bytes();
    drop(log);
    // A batch the disk hands back with record_count 0 (its offsets say 2): CRC fixed up.
    let mut lie = batch(8, 0, 2);
    engine::batch::assign_base_offset(&mut lie, 3);
    lie[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&0i32.to_be_bytes());
    let crc = crc32c::crc32c(&lie[CRC_FROM..]);
    lie[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    let file =
        std::fs::OpenOptions::new().write(true).open(dir.path().join(format!("{:020}.log", 0))).unwrap();
    file.write_all_at(&lie, end).unwrap();
    drop(file);
    let (log, _) = PartitionLog::open(dir.path(), config(), false, NOW_MS).unwrap();
    assert_eq!(log.next_offset(), 3, "recovery's frame check cuts the lie before producer state sees it");
    let (states, _) = ProducerStates::recover(&log).expect("rebuilt, not a panic");
    assert_eq!(
        states.check(7, 0, 0).unwrap(),
        Sequenced::Duplicate(AppendResult { base_offset: 0, next_offset: 3 })
    );
    assert_eq!(states.check(8, 0, 5).unwrap(), Sequenced::Append, "the lying batch is not remembered");
}

#[test]
fn given_a_snapshot_that_puts_a_producer_past_the_log_then_its_state_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = PartitionLog::open(dir.path(), config(), true, NOW_MS).unwrap();
    // A snapshot at offset 0 (valid CRC) claiming producer 7's batch sits at 500..505.
    let mut lie = ProducerStates::default();
    lie.remember(7, 0, 0, 5, AppendResult { base_offset: 500, next_offset: 505 });
    lie.write_snapshot(&log, 0).unwrap();
    log.append_sync(batch(7, 0, 3), NOW_MS).unwrap();
    log.append_sync(batch(7, 3, 2), NOW_MS).unwrap();
    let (states, _) = ProducerStates::recover(&log).expect("rebuilt, not a panic");
    assert_eq!(
        states.check(7, 0, 3).unwrap(),
        Sequenced::Duplicate(AppendResult { base_offset: 3, next_offset: 5 }),
        "the log's batches, not the snapshot's claim"
    );
    assert!(states.check(7, 0, 9).is_err(), "the next sequence is 5, as the log says");
}
