//! Storage faults fail closed and heal: EIO and ENOSPC on writes and syncs, and short
//! writes, injected through `engine::fault` (the layer every shard write and sync
//! passes) into a running engine while appends are in flight.
//!
//! After every scenario: the log below the high watermark holds exactly the batches
//! that were acknowledged, in order (a failed byte is never published, and nothing a
//! client was refused stays in the log); appends resume by themselves once the fault
//! is gone, with no restart; a clean reopen finds the same log.

use bytes::BytesMut;
use engine::batch::{BatchBuilder, BatchView};
use engine::fault::{Fault, FaultKind, FaultOp};
use engine::{Engine, EngineConfig, FlushMode};
use std::path::Path;
use std::time::{Duration, Instant};

const TOPIC: &str = "faults";
/// How long a healed partition may take to take appends again (maintenance runs every
/// 10 ms here).
const HEAL_DEADLINE: Duration = Duration::from_secs(10);

fn batch(id: u64) -> BytesMut {
    let mut builder = BatchBuilder::default();
    for i in 0..1 + id % 4 {
        builder.push(
            1_700_000_000_000 + id as i64,
            Some(format!("id{id}").as_bytes()),
            Some(format!("value {id}.{i} ").repeat(30).as_bytes()),
        );
    }
    builder.finish()
}

fn config(dir: &Path, flush: FlushMode) -> EngineConfig {
    EngineConfig {
        shards: 1,
        flush,
        pin_threads: false,
        maintenance_interval_ms: 10,
        log: engine::log::LogConfig { segment_bytes: 16 << 10, retention_ms: None, ..Default::default() },
        ..EngineConfig::new(dir)
    }
}

/// The log from 0 to the high watermark as (base offset, bytes after the base offset
/// and length fields) per batch.
fn log_contents(engine: &Engine) -> Vec<(i64, Vec<u8>)> {
    let high_watermark = engine.partition_info(TOPIC, 0).wait().unwrap().high_watermark;
    let mut batches = Vec::new();
    let mut offset = 0;
    while offset < high_watermark {
        let fetched = engine.read(TOPIC, 0, offset, 1 << 20).wait().unwrap();
        let mut rest = &fetched.bytes[..];
        while !rest.is_empty() {
            let view = BatchView::parse(rest).unwrap();
            batches.push((view.base_offset(), view.bytes()[16..].to_vec()));
            rest = &rest[view.len()..];
        }
        offset = fetched.next_offset;
    }
    batches
}

fn assert_log_is_exactly(engine: &Engine, acked: &[(i64, u64)], context: &str) {
    let contents = log_contents(engine);
    let expected: Vec<(i64, Vec<u8>)> =
        acked.iter().map(|&(base, id)| (base, batch(id)[16..].to_vec())).collect();
    assert_eq!(contents.len(), expected.len(), "{context}: batches below the high watermark vs acknowledged");
    for (found, wanted) in contents.iter().zip(&expected) {
        assert_eq!(found, wanted, "{context}: batch at {}", wanted.0);
    }
}

/// Appends `ids` all at once (in flight together) and returns what each got.
fn append_all(
    engine: &Engine,
    ids: std::ops::Range<u64>,
) -> Vec<(u64, Result<engine::AppendResult, engine::EngineError>)> {
    let pending: Vec<_> = ids.map(|id| (id, engine.append(TOPIC, 0, batch(id)))).collect();
    pending.into_iter().map(|(id, p)| (id, p.wait())).collect()
}

fn scenario(op: FaultOp, kind: FaultKind, flush: FlushMode, skip: u64, times: u64) {
    let context = format!("{op:?} {kind:?} under --flush {flush}, skip {skip}, times {times}");
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), flush)).unwrap();
    engine.create_topic(TOPIC, 1).unwrap();
    let mut acked: Vec<(i64, u64)> = Vec::new();
    let mut next_id = 0;
    for (id, result) in append_all(&engine, 0..20) {
        acked.push((result.unwrap().base_offset, id));
        next_id = id + 1;
    }
    let heals_before = engine::heal_count();
    let scope = dir.path().to_string_lossy().into_owned();
    engine::fault::inject(Fault { path_contains: scope.clone(), op, kind, skip, times });
    let mut refused = 0;
    for _ in 0..4 {
        for (id, result) in append_all(&engine, next_id..next_id + 25) {
            match result {
                Ok(ack) => acked.push((ack.base_offset, id)),
                Err(error) => {
                    assert!(
                        matches!(error, engine::EngineError::Storage(_) | engine::EngineError::Append(_)),
                        "{context}: {error}"
                    );
                    refused += 1;
                }
            }
            next_id = id + 1;
        }
    }
    assert!(refused > 0, "{context}: the fault hit an append");
    engine::fault::clear(&scope);
    acked.sort_unstable();
    // Appends resume by themselves: no restart, no operator.
    let started = Instant::now();
    let resumed = loop {
        match engine.append(TOPIC, 0, batch(next_id)).wait() {
            Ok(ack) => break ack,
            Err(error) => {
                assert!(
                    started.elapsed() < HEAL_DEADLINE,
                    "{context}: still refusing after {HEAL_DEADLINE:?}: {error}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    assert!(engine::heal_count() > heals_before, "{context}: the partition healed");
    acked.push((resumed.base_offset, next_id));
    assert_log_is_exactly(&engine, &acked, &context);
    let end = acked
        .last()
        .map_or(0, |&(base, id)| base + i64::from(BatchView::parse(&batch(id)).unwrap().record_count()));
    assert_eq!(engine.partition_info(TOPIC, 0).wait().unwrap().high_watermark, end, "{context}");
    engine.shutdown().unwrap();
    let engine = Engine::open(config(dir.path(), flush)).unwrap();
    assert_log_is_exactly(&engine, &acked, &format!("{context}, after a clean reopen"));
    engine.shutdown().unwrap();
}

#[test]
fn given_eio_on_writes_then_nothing_failed_is_published_and_appends_resume() {
    for flush in [FlushMode::Group, FlushMode::Always] {
        scenario(FaultOp::Write, FaultKind::Eio, flush, 3, 2);
    }
}

#[test]
fn given_enospc_on_writes_then_nothing_failed_is_published_and_appends_resume() {
    for flush in [FlushMode::Group, FlushMode::Always, FlushMode::Os] {
        scenario(FaultOp::Write, FaultKind::NoSpace, flush, 5, 40);
    }
}

#[test]
fn given_short_writes_then_the_half_written_batch_is_cut_and_appends_resume() {
    for flush in [FlushMode::Group, FlushMode::Os] {
        scenario(FaultOp::Write, FaultKind::Short, flush, 2, 3);
    }
}

#[test]
fn given_eio_on_fdatasync_then_later_successful_syncs_publish_nothing_until_healed() {
    for flush in [FlushMode::Group, FlushMode::Always] {
        scenario(FaultOp::Sync, FaultKind::Eio, flush, 1, 1);
    }
}

#[test]
fn given_enospc_on_fdatasync_then_nothing_failed_is_published_and_appends_resume() {
    for flush in [FlushMode::Group, FlushMode::Always] {
        scenario(FaultOp::Sync, FaultKind::NoSpace, flush, 4, 6);
    }
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Every segment keeps its log file open (as Kafka's do): one descriptor per roll is
/// the design. `--flush os` used to keep two more per roll (a sealed file and the
/// directory queued for a sync that never runs in that mode).
#[test]
fn given_flush_os_when_segments_roll_many_times_then_it_holds_no_more_descriptors_than_group() {
    let mut growth = Vec::new();
    for flush in [FlushMode::Os, FlushMode::Group] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(config(dir.path(), flush)).unwrap();
        engine.create_topic(TOPIC, 1).unwrap();
        for id in 0..20 {
            engine.append(TOPIC, 0, batch(id)).wait().unwrap();
        }
        let before = open_descriptors();
        let segments_before = engine.partition_info(TOPIC, 0).wait().unwrap().segments;
        for id in 20..2500 {
            engine.append(TOPIC, 0, batch(id)).wait().unwrap();
        }
        let rolls = engine.partition_info(TOPIC, 0).wait().unwrap().segments - segments_before;
        let after = open_descriptors();
        assert!(rolls > 100, "--flush {flush}: the log rolled ({rolls} times)");
        assert!(
            after <= before + rolls + 4,
            "--flush {flush}: {before} descriptors before {rolls} rolls, {after} after"
        );
        growth.push((after as i64 - before as i64) - rolls as i64);
        engine.shutdown().unwrap();
    }
    assert!(growth[0] <= growth[1] + 4, "descriptors beyond one per segment, os vs group: {growth:?}");
}
