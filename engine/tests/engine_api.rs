//! Specifications of the embedded API on real shard threads and real files.

use bytes::BytesMut;
use engine::batch::{BatchBuilder, BatchView};
use engine::producers::SequenceError;
use engine::{Engine, EngineConfig, EngineError, FlushMode, TopicPartition};
use std::time::{Duration, Instant};

fn batch(records: usize, tag: &str) -> BytesMut {
    let mut builder = BatchBuilder::default();
    for i in 0..records {
        builder.push(
            1_700_000_000_000 + i as i64,
            Some(tag.as_bytes()),
            Some(format!("{tag}-{i}").as_bytes()),
        );
    }
    builder.finish()
}

fn config(dir: &std::path::Path, shards: usize, flush: FlushMode) -> EngineConfig {
    EngineConfig { shards, flush, pin_threads: false, ..EngineConfig::new(dir) }
}

#[test]
fn given_an_engine_when_appending_and_reading_then_offsets_are_contiguous_and_bytes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    engine.create_topic("events", 3).unwrap();
    let pending: Vec<_> =
        (0..30).map(|i| engine.append("events", i % 3, batch(5, &format!("b{i}")))).collect();
    let results: Vec<_> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
    for partition in 0..3 {
        let mut offsets: Vec<_> =
            results.iter().skip(partition).step_by(3).map(|r| (r.base_offset, r.next_offset)).collect();
        offsets.sort();
        assert_eq!(offsets.first().unwrap().0, 0);
        assert!(offsets.windows(2).all(|w| w[0].1 == w[1].0), "contiguous: {offsets:?}");
        let info = engine.partition_info("events", partition as u32).wait().unwrap();
        assert_eq!((info.log_start_offset, info.high_watermark, info.next_offset), (0, 50, 50));
    }
    let fetched = engine.read("events", 1, 0, 1 << 20).wait().unwrap();
    let mut position = 0;
    let mut count = 0;
    while position < fetched.bytes.len() {
        let view = BatchView::parse(&fetched.bytes[position..]).unwrap();
        let records = view.records().unwrap();
        assert_eq!(records.len(), 5);
        assert_eq!(view.base_offset(), count * 5);
        position += view.len();
        count += 1;
    }
    assert_eq!(count, 10);
    assert_eq!(fetched.next_offset, 50);
    assert_eq!(
        engine.offset_for_timestamp("events", 0, 1_700_000_000_003).wait().unwrap(),
        Some((3, 1_700_000_000_003))
    );
    engine.shutdown().unwrap();
}

#[test]
fn given_clean_shutdown_when_reopened_then_marker_consumed_and_data_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
        engine.create_topic("t", 2).unwrap();
        engine.append("t", 1, batch(3, "x")).wait().unwrap();
        engine.shutdown().unwrap();
    }
    assert!(dir.path().join(engine::CLEAN_MARKER_FILE).exists());
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    assert!(!dir.path().join(engine::CLEAN_MARKER_FILE).exists(), "marker removed on open");
    assert_eq!(engine.topics().get("t"), Some(&2));
    assert_eq!(engine.partition_info("t", 1).wait().unwrap().high_watermark, 3);
    assert_eq!(engine.append("t", 1, batch(2, "y")).wait().unwrap().base_offset, 3);
}

#[test]
fn given_two_shards_when_requests_enter_through_the_non_owner_then_they_cross_the_rings() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    engine.create_topic("routed", 4).unwrap();
    let mut crossed = 0;
    for partition in 0..4u32 {
        let owner = TopicPartition::new("routed", partition).owner(2);
        let entry = 1 - owner;
        crossed += 1;
        let pending: Vec<_> = (0..50)
            .map(|i| engine.via(entry).append("routed", partition, batch(2, &format!("{partition}-{i}"))))
            .collect();
        let mut ends: Vec<_> = pending.into_iter().map(|p| p.wait().unwrap().next_offset).collect();
        ends.sort();
        assert_eq!(ends.last(), Some(&100));
        let fetched = engine.via(entry).read("routed", partition, 0, 1 << 20).wait().unwrap();
        assert_eq!(fetched.next_offset, 100);
        let owner_read = engine.via(owner).read("routed", partition, 0, 1 << 20).wait().unwrap();
        assert_eq!(fetched.bytes, owner_read.bytes, "same bytes whichever shard serves");
    }
    assert_eq!(crossed, 4);
    let owners: std::collections::BTreeSet<_> =
        (0..4).map(|p| TopicPartition::new("routed", p).owner(2)).collect();
    assert_eq!(owners.len(), 2, "partitions spread over both shards");
}

#[test]
fn given_each_flush_mode_when_appending_concurrently_then_every_ack_is_readable() {
    for flush in [FlushMode::Group, FlushMode::Always, FlushMode::Os] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(config(dir.path(), 2, flush)).unwrap();
        engine.create_topic("f", 2).unwrap();
        let (syncs_before, _) = engine::fsync_stats();
        let pending: Vec<_> = (0..400).map(|i| engine.append("f", i % 2, batch(1, "r"))).collect();
        let acks: Vec<_> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
        let (syncs_after, _) = engine::fsync_stats();
        for partition in 0..2 {
            let info = engine.partition_info("f", partition).wait().unwrap();
            assert_eq!(info.high_watermark, 200, "{flush}");
        }
        assert!(acks.iter().all(|a| a.next_offset == a.base_offset + 1));
        match flush {
            FlushMode::Os => {}
            FlushMode::Always => assert!(syncs_after - syncs_before >= 400, "one sync per append"),
            FlushMode::Group => assert!(syncs_after - syncs_before < 400, "group commit shares syncs"),
        }
    }
}

#[test]
fn given_one_append_at_a_time_when_flushing_by_group_then_each_is_one_synced_write_and_survives_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 1, FlushMode::Group);
    config.log.segment_bytes = 1024;
    let engine = Engine::open(config.clone()).unwrap();
    engine.create_topic("s", 1).unwrap();
    let synced_before = engine::synced_write_count();
    let mut next_offset = 0;
    for i in 0..60 {
        let ack = engine.append("s", 0, batch(4, &format!("s{i}"))).wait().unwrap();
        assert_eq!((ack.base_offset, ack.next_offset), (next_offset, next_offset + 4));
        next_offset = ack.next_offset;
        let info = engine.partition_info("s", 0).wait().unwrap();
        assert_eq!(info.high_watermark, next_offset, "acknowledged means published");
    }
    let info = engine.partition_info("s", 0).wait().unwrap();
    assert!(info.segments > 5, "the appends rolled the log: {info:?}");
    let synced = engine::synced_write_count() - synced_before;
    // An append that rolls the log syncs the sealed segment and the directory too, so
    // it takes the plain path; every other one finds the partition durable.
    assert!(synced >= 60 - info.segments as u64 && synced < 60, "{synced} synced writes, {info:?}");
    let pending: Vec<_> = (0..200).map(|i| engine.append("s", 0, batch(1, &format!("c{i}")))).collect();
    for pending in pending {
        pending.wait().unwrap();
    }
    assert!(engine::synced_write_count() - synced_before < 60 + 200, "a burst shares syncs");
    engine.shutdown().unwrap();

    let engine = Engine::open(config).unwrap();
    let info = engine.partition_info("s", 0).wait().unwrap();
    assert_eq!((info.log_start_offset, info.high_watermark), (0, 440));
    let mut offset = 0;
    while offset < 440 {
        let fetched = engine.read("s", 0, offset, 1 << 20).wait().unwrap();
        let mut position = 0;
        while position < fetched.bytes.len() {
            // parse checks the CRC.
            let view = BatchView::parse(&fetched.bytes[position..]).unwrap();
            assert_eq!(view.base_offset(), offset);
            offset += i64::from(view.record_count());
            position += view.len();
        }
    }
    engine.shutdown().unwrap();
}

#[test]
fn given_bad_requests_then_precise_errors_and_the_log_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    engine.create_topic("ok", 1).unwrap();
    let mut corrupt = batch(2, "c");
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x10;
    assert!(matches!(engine.append("ok", 0, corrupt).wait(), Err(EngineError::Append(_))));
    assert!(matches!(engine.append("ok", 7, batch(1, "x")).wait(), Err(EngineError::UnknownPartition(_))));
    assert!(matches!(engine.append("nope", 0, batch(1, "x")).wait(), Err(EngineError::UnknownPartition(_))));
    assert!(matches!(engine.create_topic("bad/name", 1), Err(EngineError::InvalidTopic(_))));
    assert!(matches!(engine.create_topic("zero", 0), Err(EngineError::InvalidTopic(_))));
    assert!(matches!(engine.create_topic("ok", 1), Err(EngineError::TopicExists(_))));
    assert!(matches!(engine.read("ok", 0, 5, 100).wait(), Err(EngineError::Read(_))));
    assert_eq!(engine.partition_info("ok", 0).wait().unwrap().next_offset, 0);
    assert_eq!(engine.append("ok", 0, batch(1, "x")).wait().unwrap().base_offset, 0);
}

#[test]
fn given_an_open_data_dir_when_opened_again_then_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _engine = Engine::open(config(dir.path(), 1, FlushMode::Group)).unwrap();
    match Engine::open(config(dir.path(), 1, FlushMode::Group)) {
        Err(EngineError::DataDir { reason, .. }) => assert!(reason.contains("in use"), "{reason}"),
        other => panic!("expected a lock error, got {other:?}"),
    }
}

#[test]
fn given_a_long_poll_when_data_arrives_then_it_wakes_and_otherwise_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    engine.create_topic("lp", 1).unwrap();
    let started = Instant::now();
    assert_eq!(engine.wait_for("lp", 0, 0, 50).wait().unwrap(), 0);
    assert!(started.elapsed() >= Duration::from_millis(45), "waited for the timeout");
    let waiter = engine.wait_for("lp", 0, 0, 30_000);
    std::thread::sleep(Duration::from_millis(20));
    engine.append("lp", 0, batch(4, "w")).wait().unwrap();
    assert_eq!(waiter.wait().unwrap(), 4);
}

#[test]
fn given_segment_age_and_retention_when_the_shard_maintains_then_old_segments_roll_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let log = engine::log::LogConfig {
        segment_ms: Some(50),
        retention_ms: Some(60_000),
        ..engine::log::LogConfig::default()
    };
    let config = EngineConfig { log, maintenance_interval_ms: 20, ..config(dir.path(), 2, FlushMode::Group) };
    let engine = Engine::open(config).unwrap();
    engine.create_topic("aged", 1).unwrap();
    // Records an hour old: once their segment is sealed (by age), retention deletes it.
    let mut builder = BatchBuilder::default();
    builder.push(engine::now_ms() - 3_600_000, None, Some(b"old"));
    engine.append("aged", 0, builder.finish()).wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = engine.partition_info("aged", 0).wait().unwrap();
        if info.log_start_offset == 1 || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(info.log_start_offset, 1, "the aged segment rolled and was deleted: {info:?}");
    assert_eq!((info.high_watermark, info.segments), (1, 1));
    assert!(!dir.path().join("aged-0").join(format!("{:020}.log", 0)).exists());
    // Its renamed files are unlinked by the deletion thread, not the shard.
    let renamed = dir.path().join("aged-0").join(format!("{:020}.log.deleted", 0));
    while renamed.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!renamed.exists(), "the deletion thread unlinked the retired segment");
    let mut builder = BatchBuilder::default();
    builder.push(engine::now_ms(), None, Some(b"new"));
    assert_eq!(engine.append("aged", 0, builder.finish()).wait().unwrap().base_offset, 1);
    assert!(matches!(engine.read("aged", 0, 0, 100).wait(), Err(EngineError::Read(_))));
}

#[test]
fn given_preallocation_when_appends_are_synced_one_by_one_then_zeros_are_filled_ahead_and_cut_from_sealed_segments(
) {
    let dir = tempfile::tempdir().unwrap();
    let log = engine::log::LogConfig {
        segment_bytes: 256 << 10,
        retention_ms: None,
        preallocate: true,
        ..engine::log::LogConfig::default()
    };
    let config = EngineConfig { log, maintenance_interval_ms: 20, ..config(dir.path(), 1, FlushMode::Group) };
    let engine = Engine::open(config.clone()).unwrap();
    engine.create_topic("filled", 1).unwrap();
    let value = vec![b'x'; 4000];
    let mut next = 0;
    for _ in 0..200 {
        let mut builder = BatchBuilder::default();
        builder.push(engine::now_ms(), None, Some(&value));
        next = engine.append("filled", 0, builder.finish()).wait().unwrap().next_offset;
    }
    assert!(engine::fill_stats().0 > 0, "one append at a time takes the synced-write path, which fills");
    let partition = dir.path().join("filled-0");
    let segments = || {
        let mut files: Vec<(i64, Vec<u8>)> = std::fs::read_dir(&partition)
            .unwrap()
            .filter_map(|e| {
                let path = e.unwrap().path();
                Some((engine::segment::parse_log_name(&path)?, std::fs::read(&path).unwrap()))
            })
            .collect();
        files.sort();
        files
    };
    // Every segment reads as batches then (perhaps) zeros; the sealed ones lose their
    // zeros at a maintenance tick.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let files = segments();
        assert!(files.len() >= 3, "rolled: {} segments", files.len());
        let mut expected = 0;
        let mut trimmed = true;
        for (i, (base, bytes)) in files.iter().enumerate() {
            let scan = engine::segment::scan_batches(bytes, 0, *base, |_, _| {});
            assert!(scan.error.is_none() && *base == expected, "segment {base}: {:?}", scan.error);
            expected = scan.next_offset;
            trimmed &= i + 1 == files.len() || scan.zero_tail == 0;
        }
        assert_eq!(expected, next);
        if trimmed {
            break;
        }
        assert!(Instant::now() < deadline, "sealed segments keep their zeros");
        std::thread::sleep(Duration::from_millis(20));
    }
    engine.shutdown().unwrap();
    let engine = Engine::open(config).unwrap();
    let info = engine.partition_info("filled", 0).wait().unwrap();
    assert_eq!(info.high_watermark, next);
    let mut builder = BatchBuilder::default();
    builder.push(engine::now_ms(), None, Some(b"after"));
    assert_eq!(engine.append("filled", 0, builder.finish()).wait().unwrap().base_offset, next);
}

#[test]
fn given_an_idempotent_producer_then_retries_are_deduplicated_and_gaps_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    engine.create_topic("idem", 1).unwrap();
    let idempotent = |epoch: i16, sequence: i32, records: usize| {
        let mut builder = BatchBuilder::default();
        builder.producer(77, epoch, sequence);
        for i in 0..records {
            builder.push(1, None, Some(format!("{sequence}-{i}").as_bytes()));
        }
        builder.finish()
    };
    let first = engine.append("idem", 0, idempotent(0, 0, 3)).wait().unwrap();
    let second = engine.append("idem", 0, idempotent(0, 3, 2)).wait().unwrap();
    assert_eq!((first.base_offset, second.base_offset), (0, 3));
    // A retry of either batch answers with its original offsets and appends nothing.
    assert_eq!(engine.append("idem", 0, idempotent(0, 0, 3)).wait().unwrap(), first);
    assert_eq!(engine.append("idem", 0, idempotent(0, 3, 2)).wait().unwrap(), second);
    assert_eq!(engine.partition_info("idem", 0).wait().unwrap().next_offset, 5);
    // A gap is refused; so is an older epoch; a newer epoch starts over.
    match engine.append("idem", 0, idempotent(0, 9, 1)).wait() {
        Err(EngineError::Sequence(SequenceError::OutOfOrderSequence { expected: 5, found: 9, .. })) => {}
        other => panic!("expected an out-of-order error, got {other:?}"),
    }
    assert_eq!(engine.append("idem", 0, idempotent(1, 0, 1)).wait().unwrap().base_offset, 5);
    assert!(matches!(
        engine.append("idem", 0, idempotent(0, 5, 1)).wait(),
        Err(EngineError::Sequence(SequenceError::InvalidProducerEpoch { .. }))
    ));
    assert_eq!(engine.partition_info("idem", 0).wait().unwrap().next_offset, 6);
}

#[test]
fn given_a_deleted_topic_then_its_files_are_gone_and_the_name_can_be_reused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    engine.create_topic("gone", 3).unwrap();
    engine.append("gone", 2, batch(4, "x")).wait().unwrap();
    let kept = engine.read("gone", 2, 0, 1 << 20).wait().unwrap();
    engine.delete_topic("gone").unwrap();
    assert!(!engine.topics().contains_key("gone"));
    assert!((0..3).all(|p| !dir.path().join(format!("gone-{p}")).exists()));
    assert!(matches!(engine.append("gone", 2, batch(1, "y")).wait(), Err(EngineError::UnknownPartition(_))));
    assert!(engine::batch::BatchView::parse(&kept.bytes).is_ok(), "fetched bytes outlive the files");
    assert!(matches!(engine.delete_topic("gone"), Err(EngineError::UnknownPartition(_))));
    engine.create_topic("gone", 1).unwrap();
    assert_eq!(engine.append("gone", 0, batch(1, "z")).wait().unwrap().base_offset, 0);
    drop(engine);
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    assert_eq!(engine.topics().get("gone"), Some(&1), "the deletion and re-creation are durable");
}

#[test]
fn given_topic_ids_then_each_topic_gets_its_own_and_a_directory_of_another_topic_of_the_name_is_not_served() {
    use engine::partition_meta::{self, TopicId};
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join(engine::META_FILE);
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    engine.create_topic("t", 2).unwrap();
    engine.append("t", 1, batch(3, "a")).wait().unwrap();
    engine.delete_topic("t").unwrap();
    engine.create_topic("t", 2).unwrap();
    engine.append("t", 1, batch(3, "b")).wait().unwrap();
    drop(engine);
    let ids: Vec<TopicId> =
        (0..2).map(|p| partition_meta::read(&dir.path().join(format!("t-{p}"))).unwrap().unwrap()).collect();
    assert_eq!(ids[0], ids[1], "every partition carries its topic's id");
    let text = std::fs::read_to_string(&meta).unwrap();
    assert_eq!(text, format!("corelog-data-dir 1\ntopic t 2 {}\n", ids[0]));

    // A metadata file from before ids existed: the topic gets an id, its data stays.
    std::fs::write(&meta, "corelog-data-dir 1\ntopic t 2\n").unwrap();
    for p in 0..2 {
        std::fs::remove_file(dir.path().join(format!("t-{p}")).join(partition_meta::PARTITION_META_FILE))
            .unwrap();
    }
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    assert_eq!(engine.read("t", 1, 0, 1 << 20).wait().unwrap().high_watermark, 3, "adopted, not discarded");
    drop(engine);
    let adopted = partition_meta::read(&dir.path().join("t-1")).unwrap().unwrap();
    assert!(std::fs::read_to_string(&meta).unwrap().contains(&format!("topic t 2 {adopted}\n")));

    // The metadata names a newer topic "t" than the one whose files are there (a crash
    // between recording the new topic and clearing the old one's files).
    let newer = TopicId::random();
    std::fs::write(&meta, format!("corelog-data-dir 1\ntopic t 2 {newer}\n")).unwrap();
    let engine = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap();
    assert_eq!(
        engine.read("t", 1, 0, 1 << 20).wait().unwrap().high_watermark,
        0,
        "the old topic's records are not served"
    );
    assert_eq!(engine.append("t", 1, batch(1, "c")).wait().unwrap().base_offset, 0);
    drop(engine);
    assert_eq!(partition_meta::read(&dir.path().join("t-1")).unwrap(), Some(newer));

    // A partition.metadata that lies is refused with the path, not guessed at.
    std::fs::write(
        dir.path().join("t-0").join(partition_meta::PARTITION_META_FILE),
        "version: 0\ntopic_id: nope\n",
    )
    .unwrap();
    let error = Engine::open(config(dir.path(), 2, FlushMode::Group)).unwrap_err().to_string();
    assert!(error.contains("t-0") && error.contains("topic id"), "{error}");
}
