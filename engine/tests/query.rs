//! Stream queries run by the engine: outputs equal the operator's over the same
//! events, restarts (clean, without checkpoints, and SIGKILL of a real process)
//! leave the output topics identical to an uninterrupted run (also when killed while a
//! window close with thousands of keys drains), and a deny-list topic is reloaded
//! without a restart.
//!
//! The killed child is this test binary re-executed with `CORELOG_QUERY_CHILD` (or
//! `CORELOG_QUERY_WIDE_CHILD`) set. Replay a failure with `CORELOG_QUERY_SEED=<seed>`.

use bytes::BytesMut;
use engine::batch::{BatchBuilder, BatchView};
use engine::query::deny::DenySet;
use engine::query::window::{Event, Operator, Output};
use engine::query::QueryDef;
use engine::{Engine, EngineConfig, FlushMode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SOURCE: &str = "payments";
const PARTITIONS: u32 = 2;
const BATCHES: usize = 60;
const EVENTS_PER_BATCH: usize = 50;
const BASE_MS: i64 = 1_700_000_000_000;

fn query_text(checkpoint: &str) -> String {
    format!(
        r#"name = "fraud"
           source = "{SOURCE}"
           key = "user_id"
           event_time = "ts"
           value = "amount_cents"
           distinct = "card_id"
           window = {{ size = "1s", slide = "500ms", lateness = "200ms" }}
           deny_list = {{ topic = "denylist" }}
           checkpoint_interval = "{checkpoint}"
           [[rule]]
           name = "velocity"
           when = "count > 4 within 1s"
           [[rule]]
           when = "card_id in denylist""#
    )
}

fn config(dir: &Path, checkpoint: &str) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.shards = 2;
    config.pin_threads = false;
    config.flush = FlushMode::Group;
    config.auto_create_partitions = Some(PARTITIONS);
    config.queries = vec![QueryDef::parse(&query_text(checkpoint), "test").unwrap()];
    config
}

/// The JSON events of batch `index` of partition `partition`: deterministic, with one
/// event in ten late by up to 900 ms. The last batch carries an event far ahead that
/// closes every window.
fn batch_events(partition: u32, index: usize) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(u64::from(partition) << 32 | index as u64);
    (0..EVENTS_PER_BATCH)
        .map(|i| {
            let n = (index * EVENTS_PER_BATCH + i) as i64;
            let mut ts = BASE_MS + n * 7;
            if rng.gen_ratio(1, 10) {
                ts -= rng.gen_range(0..900);
            }
            if index == BATCHES - 1 && i == EVENTS_PER_BATCH - 1 {
                ts += 60_000;
            }
            format!(
                r#"{{"user_id":"u{}","ts":{ts},"amount_cents":{},"card_id":"c{}","note":{{"x":[1]}}}}"#,
                rng.gen_range(0..6),
                rng.gen_range(1..10_000),
                rng.gen_range(0..20)
            )
        })
        .collect()
}

fn batch(partition: u32, index: usize) -> BytesMut {
    let mut builder = BatchBuilder::default();
    for event in batch_events(partition, index) {
        builder.push(BASE_MS, Some(b"k"), Some(event.as_bytes()));
    }
    builder.finish()
}

/// Every record value of a topic partition, in offset order.
fn values(engine: &Engine, topic: &str, partition: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let fetched = engine.read(topic, partition, offset, 1 << 20).wait().unwrap();
        if fetched.bytes.is_empty() {
            return out;
        }
        let mut bytes = &fetched.bytes[..];
        while !bytes.is_empty() {
            let len = engine::batch::frame_len(bytes).unwrap().unwrap();
            let view = BatchView::parse(&bytes[..len]).unwrap();
            for record in view.records().unwrap() {
                out.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
            }
            bytes = &bytes[len..];
        }
        offset = fetched.next_offset;
    }
}

/// Waits until the agg topic holds a window triggered by the last event of every
/// partition (the far-ahead event closes them all), then returns both sinks.
fn settled_outputs(engine: &Engine) -> Vec<(Vec<String>, Vec<String>)> {
    let last_offset = (BATCHES * EVENTS_PER_BATCH - 1) as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    (0..PARTITIONS)
        .map(|p| loop {
            let agg = values(engine, "fraud.agg", p);
            let done = agg.iter().any(|v| v.ends_with(&format!(r#""offset":{last_offset}}}"#)));
            if done {
                std::thread::sleep(Duration::from_millis(300)); // nothing more may come
                return (values(engine, "fraud.agg", p), values(engine, "fraud.decisions", p));
            }
            assert!(Instant::now() < deadline, "partition {p}: the query never caught up");
            std::thread::sleep(Duration::from_millis(20));
        })
        .collect()
}

fn append_batches(engine: &Engine, partition: u32, range: std::ops::Range<usize>) {
    for index in range {
        engine.append(SOURCE, partition, batch(partition, index)).wait().unwrap();
    }
}

fn uninterrupted(checkpoint: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), checkpoint)).unwrap();
    for p in 0..PARTITIONS {
        append_batches(&engine, p, 0..BATCHES);
    }
    let outputs = settled_outputs(&engine);
    engine.shutdown().unwrap();
    outputs
}

#[test]
fn given_appended_events_when_the_query_runs_then_its_topics_hold_what_the_operator_computes() {
    let outputs = uninterrupted("100ms");
    let def = Arc::new(QueryDef::parse(&query_text("1s"), "test").unwrap());
    for (p, (agg, decisions)) in outputs.iter().enumerate() {
        let mut operator = Operator::new(def.clone());
        let mut expected = Vec::new();
        let events: Vec<String> = (0..BATCHES).flat_map(|i| batch_events(p as u32, i)).collect();
        for (offset, text) in events.iter().enumerate() {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let event = Event {
                offset: offset as i64,
                key: value["user_id"].as_str().unwrap(),
                time_ms: value["ts"].as_i64().unwrap(),
                value: value["amount_cents"].as_i64().unwrap(),
                distinct: value["card_id"].as_str(),
            };
            operator.process(&event, &[value["card_id"].as_str()], &DenySet::default(), &mut expected);
        }
        let windows: Vec<_> =
            expected.iter().filter_map(|o| if let Output::Window(w) = o { Some(w) } else { None }).collect();
        let fired = expected.iter().filter(|o| matches!(o, Output::Decision(_))).count();
        assert!(operator.stats().late_events > 0, "the stream has late events");
        assert!(windows.len() > 50 && fired > 10, "{} windows, {fired} decisions", windows.len());
        assert_eq!(agg.len(), windows.len(), "partition {p}");
        assert_eq!(decisions.len(), fired, "partition {p}");
        for ((seq, text), window) in agg.iter().enumerate().zip(&windows) {
            let got: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(got["seq"], seq as u64 + 1);
            assert_eq!(got["key"], *window.key);
            assert_eq!(got["window_start"], window.start_ms);
            assert_eq!(got["count"], window.count);
            assert_eq!(got["sum"], window.sum);
            assert_eq!(got["min"], window.min);
            assert_eq!(got["max"], window.max);
            assert_eq!(got["distinct"], window.distinct);
            assert_eq!(got["offset"], window.trigger_offset);
            assert_eq!(got["ts"], window.trigger_time_ms);
        }
    }
}

#[test]
fn given_a_clean_restart_mid_stream_when_resumed_then_outputs_equal_an_uninterrupted_run() {
    for checkpoint in ["50ms", "1h"] {
        let expected = uninterrupted(checkpoint);
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(config(dir.path(), checkpoint)).unwrap();
        for p in 0..PARTITIONS {
            append_batches(&engine, p, 0..BATCHES / 2);
        }
        std::thread::sleep(Duration::from_millis(400)); // let the query run and checkpoint
        engine.shutdown().unwrap();
        let engine = Engine::open(config(dir.path(), checkpoint)).unwrap();
        for p in 0..PARTITIONS {
            append_batches(&engine, p, BATCHES / 2..BATCHES);
        }
        let outputs = settled_outputs(&engine);
        engine.shutdown().unwrap();
        assert_eq!(outputs, expected, "checkpoint interval {checkpoint}");
    }
}

const CHILD_ENV: &str = "CORELOG_QUERY_CHILD";

/// The child: appends every batch of both partitions in order, forever restarting
/// nothing; the parent kills it.
#[test]
fn query_child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let engine = Engine::open(config(Path::new(&dir), "20ms")).unwrap();
    let start = |p: u32| {
        let info = engine.partition_info(SOURCE, p).wait().unwrap();
        info.next_offset as usize / EVENTS_PER_BATCH
    };
    let from = [start(0), start(1)];
    for index in 0..BATCHES {
        for p in 0..PARTITIONS {
            if index >= from[p as usize] {
                engine.append(SOURCE, p, batch(p, index)).wait().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(8));
    }
    std::thread::sleep(Duration::from_secs(30));
}

/// The seed of a randomized test (`CORELOG_QUERY_SEED`, else random; printed) and its rng.
fn seeded_rng() -> (u64, SmallRng) {
    let seed: u64 =
        std::env::var("CORELOG_QUERY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("reproduce with CORELOG_QUERY_SEED={seed}");
    (seed, SmallRng::seed_from_u64(seed))
}

#[test]
fn given_a_process_killed_at_random_moments_when_restarted_then_outputs_equal_an_uninterrupted_run() {
    let (seed, mut rng) = seeded_rng();
    let expected = uninterrupted("20ms");
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    for round in 0..4 {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "query_child_process", "--nocapture"])
            .env(CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("round {round}: killed");
    }
    let engine = Engine::open(config(dir.path(), "20ms")).unwrap();
    for p in 0..PARTITIONS {
        let next = engine.partition_info(SOURCE, p).wait().unwrap().next_offset as usize;
        assert_eq!(next % EVENTS_PER_BATCH, 0, "whole batches only");
        append_batches(&engine, p, next / EVENTS_PER_BATCH..BATCHES);
    }
    let outputs = settled_outputs(&engine);
    engine.shutdown().unwrap();
    assert_eq!(outputs, expected, "seed {seed}");
}

#[test]
fn given_a_deny_list_topic_when_a_new_list_is_published_then_the_query_applies_it_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), "1s")).unwrap();
    let deny = engine.deny_list("fraud").unwrap();
    let publish = |records: &[(&str, Option<&str>)]| {
        let mut builder = BatchBuilder::default();
        for (id, value) in records {
            builder.push(BASE_MS, Some(id.as_bytes()), value.map(str::as_bytes));
        }
        engine.append("denylist", 0, builder.finish()).wait().unwrap();
    };
    let wait_generation = |generation: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while deny.generation() < generation {
            assert!(Instant::now() < deadline, "deny-list never reloaded");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let pay = |card: &str, ts: i64| {
        let mut builder = BatchBuilder::default();
        let value = format!(r#"{{"user_id":"u1","ts":{ts},"amount_cents":5,"card_id":"{card}"}}"#);
        builder.push(BASE_MS, None, Some(value.as_bytes()));
        engine.append(SOURCE, 0, builder.finish()).wait().unwrap();
    };
    let denied = |expected: usize| -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<String> = values(&engine, "fraud.decisions", 0)
                .into_iter()
                .filter_map(|v| {
                    serde_json::from_str::<serde_json::Value>(&v).unwrap()["denied"]
                        .as_str()
                        .map(String::from)
                })
                .collect();
            if found.len() >= expected {
                return found;
            }
            assert!(Instant::now() < deadline, "expected {expected} deny decisions, found {found:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    publish(&[("c7", Some(r#"{"ring_id":"u1","kind":"card"}"#))]);
    wait_generation(1);
    pay("c7", BASE_MS);
    pay("c8", BASE_MS + 1);
    assert_eq!(denied(1), ["c7"]);
    publish(&[("c7", None), ("c8", Some("{}"))]); // c7 removed, c8 added
    wait_generation(2);
    pay("c7", BASE_MS + 2);
    pay("c8", BASE_MS + 3);
    assert_eq!(denied(2), ["c7", "c8"]);
    engine.shutdown().unwrap();
}

#[test]
fn given_compressed_batches_when_the_query_reads_them_then_their_events_count_like_any_other() {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), "1s")).unwrap();
    let mut deny = BatchBuilder::default();
    deny.push(BASE_MS, Some(b"c9"), Some(b"{}"));
    engine.append("denylist", 0, deny.finish()).wait().unwrap();
    let list = engine.deny_list("fraud").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while list.generation() == 0 {
        assert!(Instant::now() < deadline, "deny-list never loaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut next_offset = 0;
    for compression in [Compression::Zstd, Compression::Lz4, Compression::Gzip, Compression::Snappy] {
        let records: Vec<Record> = (0..3)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: i as i32 - 1,
                timestamp: BASE_MS,
                key: None,
                value: Some(bytes::Bytes::from(format!(
                    r#"{{"user_id":"u1","ts":{},"amount_cents":5,"card_id":"c9"}}"#,
                    BASE_MS + next_offset + i
                ))),
                headers: Default::default(),
            })
            .collect();
        let mut encoded = BytesMut::new();
        RecordBatchEncoder::encode(&mut encoded, &records, &RecordEncodeOptions { version: 2, compression })
            .unwrap();
        assert_ne!(BatchView::parse(&encoded).unwrap().compression(), 0);
        engine.append(SOURCE, 0, encoded).wait().unwrap();
        next_offset += 3;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let denied: Vec<i64> = values(&engine, "fraud.decisions", 0)
            .iter()
            .map(|v| serde_json::from_str::<serde_json::Value>(v).unwrap())
            .filter(|v| v["denied"] == "c9")
            .map(|v| v["offset"].as_i64().unwrap())
            .collect();
        if denied.len() == 12 {
            assert_eq!(denied, (0..12).collect::<Vec<_>>());
            break;
        }
        assert!(Instant::now() < deadline, "decisions for compressed events: {denied:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    engine.shutdown().unwrap();
}

/// Users per partition in the wide window: the close emits one result per user, one
/// per round (`close_drain = 1`), so it drains over thousands of rounds and a shutdown
/// lands in the middle of it even on a fast disk.
const WIDE_USERS: usize = 3_000;

fn wide_config(dir: &Path) -> EngineConfig {
    let text = format!(
        r#"name = "wide"
           source = "{SOURCE}"
           key = "user_id"
           event_time = "ts"
           value = "amount_cents"
           window = {{ size = "10s" }}
           checkpoint_interval = "5ms"
           close_drain = 1"#
    );
    EngineConfig { queries: vec![QueryDef::parse(&text, "test").unwrap()], ..config(dir, "1h") }
}

/// One event per user in one window, then one event a minute ahead that closes it.
fn append_wide(engine: &Engine, partition: u32) {
    for chunk in 0..WIDE_USERS / 500 {
        let mut builder = BatchBuilder::default();
        for user in chunk * 500..(chunk + 1) * 500 {
            let event =
                format!(r#"{{"user_id":"u{user:05}","ts":{},"amount_cents":{user}}}"#, BASE_MS + user as i64);
            builder.push(BASE_MS, None, Some(event.as_bytes()));
        }
        engine.append(SOURCE, partition, builder.finish()).wait().unwrap();
    }
    let mut builder = BatchBuilder::default();
    let closer = format!(r#"{{"user_id":"z","ts":{},"amount_cents":1}}"#, BASE_MS + 60_000);
    builder.push(BASE_MS, None, Some(closer.as_bytes()));
    engine.append(SOURCE, partition, builder.finish()).wait().unwrap();
}

fn wide_results(engine: &Engine, partition: u32) -> Vec<(u64, String, u64)> {
    values(engine, "wide.agg", partition)
        .iter()
        .map(|text| {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            (
                value["seq"].as_u64().unwrap(),
                value["key"].as_str().unwrap().to_string(),
                value["sum"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits (30 s at most) until the wide close is out in partition 0, then checks that
/// it holds every result once, in key order, numbered without a gap, and that nothing
/// more comes.
fn assert_wide_close_complete(engine: &Engine, context: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while wide_results(engine, 0).len() < WIDE_USERS {
        assert!(Instant::now() < deadline, "{context}: the close never finished after the restart");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100)); // nothing more may come
    let expected: Vec<(u64, String, u64)> =
        (0..WIDE_USERS).map(|user| (user as u64 + 1, format!("u{user:05}"), user as u64)).collect();
    assert_eq!(wide_results(engine, 0), expected, "{context}");
}

/// A window close with thousands of keys drains over many rounds; an engine shut down
/// in the middle of it (with checkpoints every 5 ms) must, after the restart, hold every
/// result once, in key order, numbered without a gap: no checkpoint may claim a close
/// whose results were not all out.
#[test]
fn given_a_shutdown_while_a_wide_window_close_drains_when_restarted_then_every_result_is_there_once() {
    let mut caught_mid_drain = 0;
    for attempt in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(wide_config(dir.path())).unwrap();
        append_wide(&engine, 0);
        // Wait until a third of the close is out (checkpoints are due every 5 ms, so
        // several fell due during the drain), then shut down at once.
        let deadline = Instant::now() + Duration::from_secs(30);
        let before = loop {
            let got = wide_results(&engine, 0).len();
            if got >= WIDE_USERS / 3 {
                break got;
            }
            assert!(Instant::now() < deadline, "attempt {attempt}: the close never started");
            std::thread::yield_now();
        };
        engine.shutdown().unwrap();
        let engine = Engine::open(wide_config(dir.path())).unwrap();
        let partial = wide_results(&engine, 0).len();
        assert!(partial >= before);
        caught_mid_drain += usize::from(partial < WIDE_USERS);
        assert_wide_close_complete(&engine, &format!("attempt {attempt}"));
        engine.shutdown().unwrap();
        if caught_mid_drain >= 2 {
            return;
        }
    }
    panic!("the shutdown never landed while the close was draining ({caught_mid_drain} of 10)");
}

const WIDE_CHILD_ENV: &str = "CORELOG_QUERY_WIDE_CHILD";

/// The child of the wide-close kill test: appends the wide window once (unless a
/// killed predecessor did), then prints how many results the sink holds, over and
/// over, until the parent kills it.
#[test]
fn wide_child_process() {
    use std::io::Write;
    let Ok(dir) = std::env::var(WIDE_CHILD_ENV) else { return };
    let engine = Engine::open(wide_config(Path::new(&dir))).unwrap();
    if engine.partition_info(SOURCE, 0).wait().unwrap().next_offset == 0 {
        append_wide(&engine, 0);
    }
    let mut stdout = std::io::stdout();
    loop {
        writeln!(stdout, "results {}", wide_results(&engine, 0).len()).unwrap();
        stdout.flush().unwrap();
        std::thread::yield_now();
    }
}

/// A process SIGKILLed again and again while a window close with thousands of keys
/// drains (each kill after a further part of it is out), then restarted: the sink
/// holds every result once, in key order, numbered without a gap.
#[test]
fn given_a_process_killed_repeatedly_while_a_wide_close_drains_then_every_result_is_there_once() {
    use std::io::BufRead;
    let (seed, mut rng) = seeded_rng();
    let mut targets: Vec<usize> = (0..5).map(|_| rng.gen_range(1..WIDE_USERS)).collect();
    targets.sort_unstable();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut killed_mid_drain = 0;
    for target in targets {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "wide_child_process", "--nocapture"])
            .env(WIDE_CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        for line in lines {
            let line = line.unwrap();
            let Some(count) = line.strip_prefix("results ") else { continue };
            seen = count.parse().unwrap();
            if seen >= target || Instant::now() > deadline {
                break;
            }
        }
        if seen < target {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{target} results were never out (the child saw {seen}; seed {seed})");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        killed_mid_drain += usize::from(seen < WIDE_USERS);
        eprintln!("killed with {seen} of {WIDE_USERS} results out");
    }
    assert!(killed_mid_drain >= 3, "only {killed_mid_drain} of 5 kills landed while the close drained");
    let engine = Engine::open(wide_config(dir.path())).unwrap();
    assert_wide_close_complete(&engine, &format!("seed {seed}"));
    engine.shutdown().unwrap();
}
