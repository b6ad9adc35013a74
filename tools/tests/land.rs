//! `corelog land` as a real process: SIGKILLed at random (seeded) moments while it lands
//! a few hundred thousand generated payments that are still being appended, rerun until
//! `--once` finishes; then every offset is in exactly one Parquet file with its value
//! byte-identical to the log (checked with the `parquet` crate), and DuckDB reads the
//! output back. Replay with `CORELOG_LAND_CRASH_SEED=<seed>`.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use corelog_tools::payments::{partition_for, Generator};
use engine::batch::BatchBuilder;
use engine::{Engine, EngineConfig};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

const PARTITIONS: u32 = 3;
const EVENTS: u64 = 300_000;
const BATCH_EVENTS: u64 = 500;
const KILLS: usize = 20;

fn corelog() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corelog"))
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    batch::morsel::parquet_files(dir).unwrap()
}

/// Appends generated payments (6 hours of event time, 1% late by up to 2 hours, 0.1%
/// not JSON) and returns every value by (partition, offset).
fn append_payments(engine: &Engine, seed: u64) -> HashMap<(u32, i64), Vec<u8>> {
    let start_ms = 1_764_000_000_000;
    let step_us = 6 * 3_600_000_000 / EVENTS;
    let mut generator = Generator::new(seed, 10_000, 1.1, start_ms, step_us);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut values = HashMap::new();
    let mut batches: Vec<(BatchBuilder, Vec<Vec<u8>>)> =
        (0..PARTITIONS).map(|_| (BatchBuilder::default(), Vec::new())).collect();
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for n in 0..EVENTS {
        let mut payment = generator.next_payment();
        if rng.gen_bool(0.01) {
            payment.ts -= rng.gen_range(0..2 * 3_600_000);
        }
        key.clear();
        value.clear();
        payment.key(&mut key);
        if n % 1000 == 999 {
            value.extend_from_slice(b"garbage");
        } else {
            payment.json(&mut value);
        }
        let partition = partition_for(&key, PARTITIONS) as usize;
        batches[partition].0.push(payment.ts, Some(&key), Some(&value));
        batches[partition].1.push(value.clone());
        if batches[partition].1.len() as u64 == BATCH_EVENTS || n == EVENTS - 1 {
            for (p, (builder, pending)) in batches.iter_mut().enumerate() {
                if pending.is_empty() {
                    continue;
                }
                let ack = engine.append("payments", p as u32, builder.finish()).wait().unwrap();
                for (i, v) in pending.drain(..).enumerate() {
                    values.insert((p as u32, ack.base_offset + i as i64), v);
                }
                *builder = BatchBuilder::default();
            }
            // Pace the appends over a few seconds so the lander is killed mid-work.
            std::thread::sleep(Duration::from_millis(4));
        }
    }
    values
}

#[test]
fn given_sigkills_while_landing_when_rerun_until_done_then_every_offset_lands_exactly_once() {
    let seed: u64 = std::env::var("CORELOG_LAND_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("land crash seed {seed} (replay with CORELOG_LAND_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    // The repository's schema for the payments event.
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let mut config = EngineConfig::new(&data);
    config.shards = 2;
    config.pin_threads = false;
    config.log.segment_bytes = 8 << 20; // several segments per partition
    config.log.retention_ms = None; // the events are dated 2025: time retention would delete them
    let engine = Engine::open(config).unwrap();
    engine.create_topic("payments", PARTITIONS).unwrap();
    let land_args = |once: bool| {
        let mut args = vec![
            "land".to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--schemas".into(),
            schemas.display().to_string(),
            "--max-lag".into(),
            "30ms".into(),
            "--poll".into(),
            "5ms".into(),
        ];
        if once {
            args.push("--once".into());
        }
        args
    };
    let values = std::thread::scope(|scope| {
        let appender = scope.spawn(|| append_payments(&engine, seed));
        let mut recovered = 0;
        for round in 0..KILLS {
            let mut child = corelog()
                .args(land_args(false))
                .env("RUST_LOG", "lander=info")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.gen_range(10..250)));
            child.kill().unwrap();
            let log = child.wait_with_output().unwrap().stderr;
            let log = String::from_utf8_lossy(&log);
            recovered += log.matches("deleting part past the manifest").count();
            println!("round {round}: killed; {} part files so far", parquet_files(&out).len());
        }
        println!("{recovered} parts of interrupted commits deleted by recovery");
        appender.join().unwrap()
    });
    assert_eq!(values.len() as u64, EVENTS);
    let status = corelog().args(land_args(true)).stderr(Stdio::inherit()).status().unwrap();
    assert!(status.success(), "seed {seed}: corelog land --once failed");

    let mut seen: HashMap<(u32, i64), usize> = HashMap::new();
    let files = parquet_files(&out);
    for ((partition, offset), stored) in landed_values(&out) {
        let key = (partition as u32, offset);
        *seen.entry(key).or_default() += 1;
        assert_eq!(Some(&stored), values.get(&key), "seed {seed}: {key:?} differs");
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "seed {seed}: offsets landed more than once: {twice:?}");
    let missing: Vec<_> = values.keys().filter(|k| !seen.contains_key(k)).take(5).collect();
    assert!(missing.is_empty(), "seed {seed}: offsets never landed: {missing:?}");
    assert_eq!(seen.len() as u64, EVENTS);
    println!("{} part files", files.len());

    // DuckDB reads the Hive layout back: rows, offsets and typed columns agree.
    let expected_amount: i64 = values
        .values()
        .filter_map(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
        .map(|v| v["amount_cents"].as_i64().unwrap())
        .sum();
    let report =
        common::run_python(&[common::script("duckdb_check.py").to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(report["rows"], EVENTS, "{report}");
    assert_eq!(report["distinct_offsets"], EVENTS, "{report}");
    assert_eq!(
        report["typed_null_rows"],
        EVENTS / 1000,
        "garbage values land with null typed columns: {report}"
    );
    assert_eq!(report["amount_sum"], expected_amount, "{report}");
    assert_eq!(report["misplaced_hours"], 0, "every row is in its event hour's directory: {report}");
    for p in 0..PARTITIONS {
        let count = values.keys().filter(|(partition, _)| *partition == p).count() as i64;
        assert_eq!(report["max_offset"][p.to_string()], count - 1, "{report}");
    }
    engine.shutdown().unwrap();
}

#[test]
fn given_bad_arguments_when_landing_then_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let output = corelog()
        .args([
            "land",
            "--data-dir",
            missing.to_str().unwrap(),
            "--out",
            dir.path().join("o").to_str().unwrap(),
            "--once",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("data directory does not exist"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    std::fs::create_dir_all(dir.path().join("data/t-0")).unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::write(
        dir.path().join("schemas/t.toml"),
        "version = 1\n[[field]]\nname = \"x\"\ntype = \"decimal\"\n",
    )
    .unwrap();
    let output = corelog()
        .args(["land", "--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--out", dir.path().join("o").to_str().unwrap(), "--once"])
        .args(["--schemas", dir.path().join("schemas").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("t.toml") && stderr.contains("decimal"), "{stderr}");
}

fn produce(brokers: &str, topic: &str, lines: &[String]) {
    use std::io::Write;
    let mut child = corelog()
        .args(["produce", "--brokers", brokers, "--topic", topic, "--key-field", "user_id"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(lines.join("\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

fn landed_values(out: &Path) -> Vec<((i32, i64), Vec<u8>)> {
    let mut rows = Vec::new();
    for file in parquet_files(out) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let partitions = batch.column_by_name("partition").unwrap().as_primitive::<Int32Type>().clone();
            let offsets = batch.column_by_name("offset").unwrap().as_primitive::<Int64Type>().clone();
            let values = batch.column_by_name("value").unwrap().as_binary::<i32>().clone();
            for i in 0..batch.num_rows() {
                rows.push(((partitions.value(i), offsets.value(i)), values.value(i).to_vec()));
            }
        }
    }
    rows.sort();
    rows
}

#[test]
fn given_a_kafka_protocol_broker_when_landed_with_brokers_then_each_offset_lands_once_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(&dir.path().join("data"), &["--default-partitions", "2"]);
    let out = dir.path().join("out");
    let line = |n: usize| format!(r#"{{"user_id":"u{}","n":{n}}}"#, n % 7);
    let land = || {
        let status = corelog()
            .args(["land", "--brokers", &server.brokers(), "--out", out.to_str().unwrap(), "--once"])
            .args(["--topics", "k"])
            .status()
            .unwrap();
        assert!(status.success());
    };
    produce(&server.brokers(), "k", &(0..300).map(line).collect::<Vec<_>>());
    land();
    assert_eq!(landed_values(&out).len(), 300);
    produce(&server.brokers(), "k", &(300..500).map(line).collect::<Vec<_>>());
    land();
    let rows = landed_values(&out);
    assert_eq!(rows.len(), 500, "the second run lands only what is new");
    let mut keys: Vec<_> = rows.iter().map(|(k, _)| *k).collect();
    keys.dedup();
    assert_eq!(keys.len(), 500, "no offset twice");
    let mut values: Vec<String> = rows.iter().map(|(_, v)| String::from_utf8(v.clone()).unwrap()).collect();
    values.sort();
    let mut expected: Vec<String> = (0..500).map(line).collect();
    expected.sort();
    assert_eq!(values, expected, "values are byte-identical to what was produced");
    for partition in 0..2 {
        let offsets: Vec<i64> =
            rows.iter().filter(|((p, _), _)| *p == partition).map(|((_, o), _)| *o).collect();
        assert_eq!(
            offsets,
            (0..offsets.len() as i64).collect::<Vec<_>>(),
            "partition {partition} has no gaps"
        );
    }
    server.stop();
}

#[test]
fn given_a_topic_re_created_shorter_when_landed_with_brokers_then_the_run_fails_loudly_instead_of_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(&dir.path().join("data"), &["--default-partitions", "1"]);
    let out = dir.path().join("out");
    let land = || {
        corelog()
            .args(["land", "--brokers", &server.brokers(), "--out", out.to_str().unwrap(), "--once"])
            .args(["--topics", "r"])
            .output()
            .unwrap()
    };
    let line = |n: usize| format!(r#"{{"user_id":"u{n}","n":{n}}}"#);
    produce(&server.brokers(), "r", &(0..50).map(line).collect::<Vec<_>>());
    assert!(land().status.success());
    assert_eq!(landed_values(&out).len(), 50);
    let deleted =
        common::run_python(&[common::script("delete_topic.py").to_str().unwrap(), &server.brokers(), "r"]);
    assert_eq!(deleted["deleted"], "r");
    produce(&server.brokers(), "r", &(100..105).map(line).collect::<Vec<_>>());
    let output = land();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a log that ends before what landed is not waited on silently: {stderr}"
    );
    assert!(stderr.contains("ends at offset 5, before 50"), "{stderr}");
    assert_eq!(landed_values(&out).len(), 50, "nothing of the new topic is mixed in");
    server.stop();
}

#[test]
fn given_an_s3_endpoint_when_landed_twice_then_objects_hold_each_offset_once() {
    let moto = common::Moto::start();
    let s3 = common::script("s3.py");
    let s3 = s3.to_str().unwrap();
    common::run_python(&[s3, &moto.endpoint, "create", "lake"]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = EngineConfig::new(&data);
    config.shards = 2;
    config.pin_threads = false;
    let engine = Engine::open(config).unwrap();
    engine.create_topic("t", 2).unwrap();
    let mut expected = Vec::new();
    let mut append = |from: usize, to: usize| {
        for partition in 0..2u32 {
            let mut batch = BatchBuilder::default();
            let values: Vec<String> = (from..to).map(|n| format!(r#"{{"n":{n},"p":{partition}}}"#)).collect();
            for value in &values {
                batch.push(engine::now_ms(), None, Some(value.as_bytes()));
            }
            let ack = engine.append("t", partition, batch.finish()).wait().unwrap();
            for (i, value) in values.into_iter().enumerate() {
                expected.push(((partition as i32, ack.base_offset + i as i64), value.into_bytes()));
            }
        }
    };
    let land = || {
        let output = corelog()
            .args(["land", "--data-dir", data.to_str().unwrap(), "--out", "s3://lake/landed", "--once"])
            .envs(moto.env())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    append(0, 400);
    land();
    append(400, 700);
    // A part of a commit that never reached its manifest: recovery must delete it.
    let first = common::run_python(&[
        s3,
        &moto.endpoint,
        "download",
        "lake",
        "landed/t/",
        dir.path().join("first").to_str().unwrap(),
    ]);
    let part = first["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .find(|k| k.ends_with(".parquet"))
        .unwrap()
        .to_string();
    let stray = format!("{}/part-0-{:020}-{:020}.parquet", part.rsplit_once('/').unwrap().0, 400, 1_000_000);
    common::run_python(&[s3, &moto.endpoint, "copy", "lake", &part, &stray]);
    land();
    let dest = dir.path().join("download");
    let listed =
        common::run_python(&[s3, &moto.endpoint, "download", "lake", "landed/", dest.to_str().unwrap()]);
    let keys: Vec<&str> = listed["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert!(
        keys.contains(&"landed/t/_landed/0.json") && keys.contains(&"landed/t/_landed/1.json"),
        "{keys:?}"
    );
    assert!(!keys.contains(&stray.as_str()), "the stray part was deleted: {keys:?}");
    let manifest = std::fs::read_to_string(dest.join("landed/t/_landed/1.json")).unwrap();
    assert!(manifest.contains(r#""next_offset":700"#), "{manifest}");
    expected.sort();
    assert_eq!(landed_values(&dest), expected, "every offset once, values byte-identical");
    engine.shutdown().unwrap();
}
