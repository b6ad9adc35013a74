//! Specifications of idempotent-producer state across restarts: a retry after a
//! restart is still a duplicate, a gap is still refused, whether the state comes from
//! a snapshot, a torn snapshot's predecessor, or a scan of the whole log.

use bytes::BytesMut;
use engine::batch::BatchBuilder;
use engine::log::LogConfig;
use engine::producers::snapshot_path;
use engine::producers::SequenceError;
use engine::{AppendResult, Engine, EngineConfig, EngineError, FlushMode};
use std::path::{Path, PathBuf};

const PRODUCER: i64 = 4242;

fn idempotent(epoch: i16, sequence: i32, records: usize) -> BytesMut {
    let mut builder = BatchBuilder::default();
    builder.producer(PRODUCER, epoch, sequence);
    for i in 0..records {
        builder.push(1, None, Some(format!("{sequence}-{i}-{}", "x".repeat(200)).as_bytes()));
    }
    builder.finish()
}

fn open(dir: &Path, segment_bytes: u64) -> Engine {
    let log = LogConfig { segment_bytes, ..LogConfig::default() };
    Engine::open(EngineConfig {
        shards: 1,
        flush: FlushMode::Group,
        pin_threads: false,
        log,
        ..EngineConfig::new(dir)
    })
    .unwrap()
}

fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir.join("idem-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snapshot"))
        .collect();
    found.sort();
    found
}

/// Appends `batches` batches of 3 records (sequences 0, 3, 6, ...) and returns their results.
fn produce(engine: &Engine, batches: i32) -> Vec<AppendResult> {
    (0..batches).map(|i| engine.append("idem", 0, idempotent(0, i * 3, 3)).wait().unwrap()).collect()
}

/// After a restart: the last batch's retry is answered with its offsets and appends
/// nothing, a gap is refused, and the next sequence is accepted.
fn assert_state_survived(engine: &Engine, results: &[AppendResult]) {
    let last = results.len() as i32 - 1;
    let end = results.last().unwrap().next_offset;
    assert_eq!(engine.append("idem", 0, idempotent(0, last * 3, 3)).wait().unwrap(), results[last as usize]);
    assert_eq!(engine.partition_info("idem", 0).wait().unwrap().next_offset, end, "the retry appended");
    match engine.append("idem", 0, idempotent(0, last * 3 + 7, 1)).wait() {
        Err(EngineError::Sequence(SequenceError::OutOfOrderSequence { expected, .. })) => {
            assert_eq!(expected, (last + 1) * 3)
        }
        other => panic!("a gap after the restart was not refused: {other:?}"),
    }
    assert_eq!(engine.append("idem", 0, idempotent(0, (last + 1) * 3, 1)).wait().unwrap().base_offset, end);
}

#[test]
fn given_a_clean_restart_when_a_producer_retries_then_it_gets_its_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), 1 << 20);
    engine.create_topic("idem", 1).unwrap();
    let results = produce(&engine, 10);
    engine.shutdown().unwrap();
    assert_eq!(
        snapshots(dir.path()),
        vec![snapshot_path(&dir.path().join("idem-0"), 30)],
        "a clean close snapshots the end of the log"
    );
    let engine = open(dir.path(), 1 << 20);
    assert_state_survived(&engine, &results);
    engine.shutdown().unwrap();
}

#[test]
fn given_no_snapshot_and_an_unclean_stop_then_the_state_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: the scan crosses several of them.
    let engine = open(dir.path(), 4096);
    engine.create_topic("idem", 1).unwrap();
    let results = produce(&engine, 40);
    engine.shutdown().unwrap();
    for snapshot in snapshots(dir.path()) {
        std::fs::remove_file(snapshot).unwrap();
    }
    std::fs::remove_file(dir.path().join(engine::CLEAN_MARKER_FILE)).unwrap();
    let engine = open(dir.path(), 4096);
    assert_state_survived(&engine, &results);
    engine.shutdown().unwrap();
}

#[test]
fn given_rolls_then_two_snapshots_are_kept_and_a_torn_newest_one_falls_back_to_the_older() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), 4096);
    engine.create_topic("idem", 1).unwrap();
    let results = produce(&engine, 40);
    let partition = dir.path().join("idem-0");
    let kept = snapshots(dir.path());
    assert_eq!(kept.len(), 2, "rolls snapshot, and only the newest two are kept: {kept:?}");
    engine.shutdown().unwrap();
    // Tear the snapshot the clean close wrote, and plant one past the end of the log
    // (as if its batches were lost in a crash).
    let newest = snapshots(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let beyond = snapshot_path(&partition, 1_000_000);
    std::fs::copy(kept.last().unwrap(), &beyond).unwrap();
    let engine = open(dir.path(), 4096);
    assert!(!beyond.exists(), "a snapshot past the end of the log is deleted");
    assert_state_survived(&engine, &results);
    engine.shutdown().unwrap();
}

#[test]
fn given_a_producer_that_bumped_its_epoch_when_restarted_then_the_old_epoch_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), 1 << 20);
    engine.create_topic("idem", 1).unwrap();
    produce(&engine, 3);
    engine.append("idem", 0, idempotent(1, 0, 2)).wait().unwrap();
    engine.shutdown().unwrap();
    std::fs::remove_file(dir.path().join(engine::CLEAN_MARKER_FILE)).unwrap();
    let engine = open(dir.path(), 1 << 20);
    assert!(matches!(
        engine.append("idem", 0, idempotent(0, 9, 1)).wait(),
        Err(EngineError::Sequence(SequenceError::InvalidProducerEpoch { current: 1, found: 0, .. }))
    ));
    assert_eq!(engine.append("idem", 0, idempotent(1, 2, 1)).wait().unwrap().base_offset, 11);
    engine.shutdown().unwrap();
}
