//! The bugs corelog-sim found, each pinned by a direct test on the simulated disk (a
//! seed's scenario changes whenever the simulator does; these do not).

use bytes::BytesMut;
use engine::batch::BatchBuilder;
use engine::disk::Disk;
use engine::log::{LogConfig, PartitionLog, Recovery};
use engine::producers::{ProducerStates, Sequenced};
use sim::disk::SimDisk;
use std::path::PathBuf;
use std::sync::Arc;

const NOW_MS: i64 = 1_700_000_000_000;

fn batch(producer: Option<(i64, i32)>, records: i32) -> BytesMut {
    let mut builder = BatchBuilder::default();
    if let Some((id, sequence)) = producer {
        builder.producer(id, 0, sequence);
    }
    for i in 0..records {
        builder.push(NOW_MS + i64::from(i), Some(b"k"), Some(&[7u8; 200]));
    }
    builder.finish()
}

fn setup(seed: u64) -> (tempfile::TempDir, Arc<SimDisk>, PathBuf) {
    let scratch = tempfile::tempdir().unwrap();
    let disk = Arc::new(SimDisk::new(&scratch.path().join("disk"), seed).unwrap());
    let dir = disk.root().join("t-0");
    (scratch, disk, dir)
}

fn open(disk: &Arc<SimDisk>, dir: &std::path::Path, config: LogConfig) -> PartitionLog {
    let disk: Arc<dyn Disk> = disk.clone();
    PartitionLog::open_on(disk, dir, config, Recovery::Unclean { written_since_ms: None }, NOW_MS).unwrap().0
}

fn small() -> LogConfig {
    LogConfig { segment_bytes: 1024, cache_window_bytes: 0, retention_ms: None, ..LogConfig::default() }
}

#[test]
fn given_a_heal_that_fails_on_a_failing_disk_then_the_log_stays_whole_and_a_later_heal_works() {
    let (_scratch, disk, dir) = setup(1);
    let mut log = open(&disk, &dir, small());
    log.append_sync(batch(None, 2), NOW_MS).unwrap();
    let placed = log.append(batch(None, 3), NOW_MS).unwrap(); // placed, never written
    placed.file.write_all_at(&placed.bytes[..10], placed.position).unwrap();
    disk.set_faults(1000);
    assert!(log.truncate_to(2).is_err(), "every sync fails");
    assert_eq!((log.log_start_offset(), log.segment_count()), (0, 1), "the log is still whole");
    disk.set_faults(0);
    log.truncate_to(2).unwrap();
    assert_eq!(log.next_offset(), 2);
    assert_eq!(log.append_sync(batch(None, 1), NOW_MS).unwrap(), (2, 3), "appends resume");
}

#[test]
fn given_a_time_based_roll_when_the_log_closes_cleanly_then_the_new_segment_is_durably_named() {
    let (_scratch, disk, dir) = setup(2);
    let mut log = open(&disk, &dir, LogConfig { segment_ms: Some(1), ..small() });
    log.append_sync(batch(None, 2), NOW_MS).unwrap();
    assert!(log.roll_if_old(NOW_MS + 10).unwrap().is_some());
    log.close().unwrap();
    let names = disk.durable_names(&dir);
    assert!(names.iter().any(|p| p.ends_with("00000000000000000002.log")), "{names:?}");
}

#[test]
fn given_a_snapshot_past_the_end_when_producers_recover_then_its_removal_is_durable() {
    let (_scratch, disk, dir) = setup(3);
    let mut log = open(&disk, &dir, small());
    log.append_sync(batch(Some((9, 0)), 2), NOW_MS).unwrap();
    let (states, _) = ProducerStates::recover(&log).unwrap();
    states.write_snapshot(&log, 50).unwrap(); // a snapshot of a history a crash cut
    disk.sync_dir(&dir).unwrap();
    let stale = engine::producers::snapshot_path(&dir, 50);
    assert!(disk.durable_names(&dir).contains(&stale));
    ProducerStates::recover(&log).unwrap();
    assert!(!disk.durable_names(&dir).contains(&stale), "a crash now could bring it back");
}

#[test]
fn given_a_producer_whose_batches_retention_deleted_when_state_is_rebuilt_then_it_is_forgotten() {
    let (_scratch, disk, dir) = setup(4);
    let config = LogConfig { retention_bytes: Some(1), ..small() };
    let mut log = open(&disk, &dir, config.clone());
    log.append_sync(batch(Some((5, 0)), 3), NOW_MS).unwrap(); // producer 5, then never again
    let mut sequence = 0;
    while log.segment_count() < 3 {
        log.append_sync(batch(Some((6, sequence)), 1), NOW_MS).unwrap();
        sequence += 1;
    }
    let (states, _) = ProducerStates::recover(&log).unwrap();
    states.write_snapshot(&log, log.log_start_offset()).unwrap();
    assert!(!log.apply_retention(NOW_MS).unwrap().is_empty());
    let (states, _) = ProducerStates::recover(&log).unwrap();
    assert_eq!(
        states.check(5, 0, 7).unwrap(),
        Sequenced::Append,
        "a producer below the log start is unknown, accepted at any sequence (KIP-360)"
    );
    assert!(states.check(6, 0, sequence + 3).is_err(), "one still in the log keeps its sequence");
}
