//! Crash safety with real processes: a child appends in one flush mode and prints every
//! acknowledgement; the parent SIGKILLs it at a random (seeded) moment, over and over
//! on the same directory (64 KiB segments, so kills land during rolls). Between kills
//! the parent sometimes lets the next child recover the directory itself and sometimes
//! reopens it: then every acknowledged batch must be present with identical bytes, every
//! partition must read cleanly to its high watermark and take a new append.
//!
//! With one append in flight per thread the appends take the synced-write path, so the
//! shard fills zeros ahead of every segment's tail (`engine::prealloc`) and kills land
//! during fills and their syncs, and during cuts of sealed segments' zeros.
//!
//! The child is this same test binary re-executed with `CORELOG_CRASH_CHILD` set.
//! Replay a failure with `CORELOG_CRASH_SEED=<seed>`.

use bytes::BytesMut;
use engine::batch::{BatchBuilder, BatchView};
use engine::{Engine, EngineConfig, FlushMode};
use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const TOPIC: &str = "crash";
const PARTITIONS: u32 = 4;
/// Longest a child may take to recover the directory and start appending.
const CHILD_START_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGKILLs per flush mode.
const ROUNDS: u32 = 7;
/// Appends each child thread keeps in flight (group commit).
const IN_FLIGHT_PER_THREAD: usize = 32;

/// The batch a child appends for (round, partition, sequence): derivable by the parent.
fn batch_for(round: u32, partition: u32, sequence: u64) -> BytesMut {
    let mut builder = BatchBuilder::default();
    let records = 1 + (sequence % 7) as usize;
    for i in 0..records {
        let value = format!("r{round}-p{partition}-s{sequence}-i{i}-").repeat(1 + (sequence % 13) as usize);
        builder.push(
            1_700_000_000_000 + sequence as i64,
            Some(format!("k{sequence}").as_bytes()),
            Some(value.as_bytes()),
        );
    }
    builder.finish()
}

/// Size retention per partition in the retention variant: a few 64 KiB segments, so
/// maintenance retires segments (renames them `*.deleted`, the deletion thread unlinks
/// them) among the kills.
const RETENTION_BYTES: u64 = 128 << 10;

fn engine_config(dir: &Path, flush: FlushMode, retention_bytes: Option<u64>) -> EngineConfig {
    EngineConfig {
        shards: 2,
        flush,
        pin_threads: false,
        // Maintenance ticks (retention, cuts of sealed segments' zeros) land among the kills.
        maintenance_interval_ms: 50,
        log: engine::log::LogConfig {
            segment_bytes: 64 << 10,
            retention_ms: None,
            retention_bytes,
            preallocate: true,
            ..Default::default()
        },
        ..EngineConfig::new(dir)
    }
}

/// Child: appends forever from two threads, `in_flight` appends each, printing `ack
/// round partition sequence base next`, and `fills N` (the zero fills so far) every
/// 64 acknowledgements.
fn child(dir: &Path, round: u32, flush: FlushMode, in_flight_max: usize, retention_bytes: Option<u64>) {
    let engine = Engine::open(engine_config(dir, flush, retention_bytes)).expect("child opens the engine");
    if engine.partition_count(TOPIC).is_none() {
        engine.create_topic(TOPIC, PARTITIONS).expect("create topic");
    }
    println!("ready");
    std::thread::scope(|scope| {
        for thread in 0..2u32 {
            let engine = &engine;
            scope.spawn(move || {
                let mut in_flight = std::collections::VecDeque::new();
                for sequence in 0u64.. {
                    let partition = thread * 2 + (sequence % 2) as u32;
                    let pending = engine.append(TOPIC, partition, batch_for(round, partition, sequence));
                    in_flight.push_back((partition, sequence, pending));
                    if in_flight.len() >= in_flight_max {
                        let (partition, sequence, pending) = in_flight.pop_front().unwrap();
                        let ack = pending.wait().expect("append acknowledged");
                        let mut out = std::io::stdout().lock();
                        writeln!(
                            out,
                            "ack {round} {partition} {sequence} {} {}",
                            ack.base_offset, ack.next_offset
                        )
                        .unwrap();
                        if sequence % 64 == 0 {
                            writeln!(out, "fills {}", engine::fill_stats().0).unwrap();
                        }
                        out.flush().unwrap();
                    }
                }
            });
        }
    });
}

#[test]
fn crash_child_entry_point() {
    // Runs only when re-executed by the parent test below.
    if let (Ok(dir), Ok(round)) = (std::env::var("CORELOG_CRASH_CHILD"), std::env::var("CORELOG_CRASH_ROUND"))
    {
        let flush = std::env::var("CORELOG_CRASH_FLUSH").unwrap().parse().unwrap();
        let in_flight = std::env::var("CORELOG_CRASH_IN_FLIGHT").unwrap().parse().unwrap();
        let retention = std::env::var("CORELOG_CRASH_RETENTION").ok().map(|b| b.parse().unwrap());
        child(Path::new(&dir), round.parse().unwrap(), flush, in_flight, retention);
    }
}

struct Ack {
    round: u32,
    partition: u32,
    sequence: u64,
    base_offset: i64,
    next_offset: i64,
}

/// Runs a child, SIGKILLs it `kill_after` into appending; its acknowledgements and the
/// most zero fills it reported.
fn run_child_and_kill(
    dir: &Path,
    round: u32,
    flush: FlushMode,
    in_flight: usize,
    retention_bytes: Option<u64>,
    kill_after: Duration,
) -> (Vec<Ack>, u64) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_entry_point", "--nocapture", "--test-threads=1"])
        .env("CORELOG_CRASH_CHILD", dir)
        .env("CORELOG_CRASH_ROUND", round.to_string())
        .env("CORELOG_CRASH_FLUSH", flush.to_string())
        .env("CORELOG_CRASH_IN_FLIGHT", in_flight.to_string())
        .envs(retention_bytes.map(|bytes| ("CORELOG_CRASH_RETENTION", bytes.to_string())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let (started, started_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        let mut fills = 0u64;
        let mut ready = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !ready && line.ends_with("ready") {
                ready = true;
                let _ = started.send(());
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let ["fills", count] = fields.as_slice() {
                fills = fills.max(count.parse().unwrap());
            }
            if let ["ack", round, partition, sequence, base, next] = fields.as_slice() {
                acks.push(Ack {
                    round: round.parse().unwrap(),
                    partition: partition.parse().unwrap(),
                    sequence: sequence.parse().unwrap(),
                    base_offset: base.parse().unwrap(),
                    next_offset: next.parse().unwrap(),
                });
            }
        }
        (ready, acks, fills)
    });
    // The kill lands `kill_after` into appending, whatever recovery took (recovering a
    // directory the last child filled fast, with `--flush os`, can take a while).
    let opened = started_rx.recv_timeout(CHILD_START_TIMEOUT);
    if opened.is_ok() {
        std::thread::sleep(kill_after);
    }
    child.kill().expect("SIGKILL the child");
    child.wait().unwrap();
    let (ready, acks, fills) = reader.join().unwrap();
    assert!(ready, "the child started (round {round})");
    (acks, fills)
}

fn seed() -> u64 {
    let seed =
        std::env::var("CORELOG_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("crash test seed {seed} (replay with CORELOG_CRASH_SEED={seed})");
    seed
}

/// Opens the directory as a restart would and checks every acknowledged batch (those
/// retention has not deleted), that every partition reads from its log start to its
/// high watermark and takes an append.
fn verify(
    dir: &Path,
    (flush, retention_bytes): (FlushMode, Option<u64>),
    all_acks: &mut Vec<Ack>,
    seed: u64,
    round: u32,
) -> (Engine, Vec<i64>) {
    let context = format!("seed {seed}, flush {flush}, after kill {round}");
    // The checking open runs no retention of its own, so what it reads stays put.
    let engine =
        Engine::open(engine_config(dir, flush, None)).unwrap_or_else(|e| panic!("{context}: reopen: {e}"));
    for partition in 0..PARTITIONS {
        let files = std::fs::read_dir(dir.join(format!("{TOPIC}-{partition}"))).unwrap();
        let left: Vec<_> = files
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".deleted"))
            .collect();
        assert!(left.is_empty(), "{context}: the open removes retired segments' files: {left:?}");
    }
    let log_starts: Vec<i64> = (0..PARTITIONS)
        .map(|partition| engine.partition_info(TOPIC, partition).wait().unwrap().log_start_offset)
        .collect();
    assert!(
        retention_bytes.is_some() || log_starts.iter().all(|&start| start == 0),
        "{context}: nothing is deleted without retention"
    );
    for ack in all_acks.iter().filter(|ack| ack.base_offset >= log_starts[ack.partition as usize]) {
        let fetched = engine.read(TOPIC, ack.partition, ack.base_offset, 1).wait().unwrap_or_else(|e| {
            panic!("{context}: acknowledged batch at {}:{} missing: {e}", ack.partition, ack.base_offset)
        });
        let view = BatchView::parse(&fetched.bytes).unwrap();
        assert_eq!((view.base_offset(), view.next_offset()), (ack.base_offset, ack.next_offset), "{context}");
        let expected = batch_for(ack.round, ack.partition, ack.sequence);
        assert_eq!(
            &view.bytes()[16..],
            &expected[16..],
            "{context}: bytes of {}:{}",
            ack.partition,
            ack.base_offset
        );
    }
    for partition in 0..PARTITIONS {
        let info = engine.partition_info(TOPIC, partition).wait().unwrap();
        let high_watermark = info.high_watermark;
        let mut offset = info.log_start_offset;
        while offset < high_watermark {
            let fetched = engine.read(TOPIC, partition, offset, 1 << 20).wait().unwrap();
            assert!(fetched.next_offset > offset, "{context}: progress");
            offset = fetched.next_offset;
        }
        // A partition that cannot take appends after a restart is data loss too.
        let sequence = u64::MAX - u64::from(partition);
        let ack = engine
            .append(TOPIC, partition, batch_for(round, partition, sequence))
            .wait()
            .unwrap_or_else(|e| panic!("{context}: partition {partition} refuses appends: {e}"));
        assert_eq!(ack.base_offset, high_watermark, "{context}: the append goes at the end");
        all_acks.push(Ack {
            round,
            partition,
            sequence,
            base_offset: ack.base_offset,
            next_offset: ack.next_offset,
        });
    }
    (engine, log_starts)
}

/// What [`kill_repeatedly`] saw: the zero fills the children reported, and each
/// partition's log start at the last open.
struct Killed {
    fills: u64,
    log_starts: Vec<i64>,
}

/// Kills children appending with `in_flight` appends per thread [`ROUNDS`] times.
fn kill_repeatedly(flush: FlushMode, in_flight: usize, retention_bytes: Option<u64>) -> Killed {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut all_acks = Vec::new();
    let mut fills = 0;
    let mut log_starts = Vec::new();
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(rng.gen_range(150..600));
        let (acks, filled) =
            run_child_and_kill(dir.path(), round, flush, in_flight, retention_bytes, kill_after);
        all_acks.extend(acks);
        fills += filled;
        // Half the time the next child recovers what this one left, so kills follow
        // kills with no clean open between them; always after the last one.
        if round + 1 == ROUNDS || rng.gen_bool(0.5) {
            let engine;
            (engine, log_starts) = verify(dir.path(), (flush, retention_bytes), &mut all_acks, seed, round);
            engine.shutdown().unwrap();
            // Leave the next round an unclean directory most of the time.
            if rng.gen_bool(0.7) {
                std::fs::remove_file(dir.path().join(engine::CLEAN_MARKER_FILE)).unwrap();
            }
        }
    }
    if retention_bytes.is_none() {
        let rolled = std::fs::read_dir(dir.path().join(format!("{TOPIC}-0")))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
            .count();
        assert!(rolled > ROUNDS as usize, "seed {seed}: kills landed among rolls ({rolled} segments)");
    }
    assert!(all_acks.len() > 100, "seed {seed}: the children made progress ({} acks)", all_acks.len());
    assert!(all_acks.iter().any(|a| a.round == ROUNDS - 1));
    Killed { fills, log_starts }
}

#[test]
fn given_repeated_sigkills_during_rolls_with_group_flush_then_acknowledged_batches_survive_and_appends_resume(
) {
    kill_repeatedly(FlushMode::Group, IN_FLIGHT_PER_THREAD, None);
}

#[test]
fn given_repeated_sigkills_while_zeros_are_filled_ahead_of_the_tail_then_acknowledged_batches_survive_and_appends_resume(
) {
    let fills = kill_repeatedly(FlushMode::Group, 1, None).fills;
    assert!(fills > 0, "one append in flight takes the synced-write path, which fills ahead");
}

#[test]
fn given_repeated_sigkills_while_retention_deletes_segments_then_retained_acknowledged_batches_survive_and_appends_resume(
) {
    let killed = kill_repeatedly(FlushMode::Group, IN_FLIGHT_PER_THREAD, Some(RETENTION_BYTES));
    assert!(
        killed.log_starts.iter().any(|&start| start > 0),
        "retention deleted segments among the kills: log starts {:?}",
        killed.log_starts
    );
}

#[test]
fn given_repeated_sigkills_during_rolls_with_always_flush_then_acknowledged_batches_survive_and_appends_resume(
) {
    kill_repeatedly(FlushMode::Always, IN_FLIGHT_PER_THREAD, None);
}

#[test]
fn given_repeated_sigkills_during_rolls_with_os_flush_then_acknowledged_batches_survive_and_appends_resume() {
    kill_repeatedly(FlushMode::Os, IN_FLIGHT_PER_THREAD, None);
}
