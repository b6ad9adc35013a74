//! `corelog batch hourly` and `daily` as real processes over Parquet landed by
//! `corelog land`: results equal DuckDB's SQL over the same files; a hot key is detected
//! and salted, and salting, an injected slow worker (with speculation) and injected task
//! failures (with retries) all leave the output files byte-identical; `rings` finds
//! planted rings.

use corelog_tools::payments::{partition_for, Generator};
use engine::batch::BatchBuilder;
use engine::{Engine, EngineConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

const EVENTS: u64 = 60_000;
const PARTITIONS: u32 = 3;

fn corelog(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_corelog")).args(args).output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Appends payments over six hours of event time, plus `extra` JSON values, and lands
/// them with the repo schema.
fn landed_payments(dir: &Path, extra: &[String]) -> PathBuf {
    let data = dir.join("data");
    let mut config = EngineConfig::new(&data);
    config.shards = 2;
    config.pin_threads = false;
    config.log.retention_ms = None;
    let engine = Engine::open(config).unwrap();
    engine.create_topic("payments", PARTITIONS).unwrap();
    // 21:00 UTC to 03:00: six hours over two days.
    let mut generator = Generator::new(11, 5_000, 1.1, 1_764_018_000_000, 6 * 3_600_000_000 / EVENTS);
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut batches: Vec<BatchBuilder> = (0..PARTITIONS).map(|_| BatchBuilder::default()).collect();
    for n in 0..EVENTS {
        let payment = generator.next_payment();
        key.clear();
        value.clear();
        payment.key(&mut key);
        payment.json(&mut value);
        batches[partition_for(&key, PARTITIONS) as usize].push(payment.ts, Some(&key), Some(&value));
        if n % 1000 == 999 {
            for (p, batch) in batches.iter_mut().enumerate() {
                if batch.record_count() > 0 {
                    engine.append("payments", p as u32, batch.finish()).wait().unwrap();
                    *batch = BatchBuilder::default();
                }
            }
        }
    }
    for (n, chunk) in extra.chunks(500).enumerate() {
        let mut batch = BatchBuilder::default();
        for value in chunk {
            batch.push(1_764_018_000_000, None, Some(value.as_bytes()));
        }
        engine.append("payments", n as u32 % PARTITIONS, batch.finish()).wait().unwrap();
    }
    engine.shutdown().unwrap();
    let out = dir.join("landed");
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let (ok, log) = corelog(&[
        "land",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--schemas",
        schemas.to_str().unwrap(),
        "--once",
    ]);
    assert!(ok, "{log}");
    out
}

/// Every file under `root`, by path relative to it, with its bytes.
fn relative_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push((path.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn stage_column(log: &str, stage: &str, column: usize) -> u64 {
    let line =
        log.lines().find(|l| l.starts_with(stage)).unwrap_or_else(|| panic!("no {stage} row in {log}"));
    line.split_whitespace().nth(column).unwrap().parse().unwrap()
}

#[test]
fn given_landed_payments_with_a_hot_key_when_hourly_runs_then_it_equals_duckdb_whatever_the_scheduling() {
    let dir = tempfile::tempdir().unwrap();
    // A hot key: 6,000 more payments of one merchant in one country and hour.
    let hot: Vec<String> = (0..6_000)
        .map(|n: i64| {
            format!(
                r#"{{"event_id":"h{n}","ts":{},"user_id":"u{n}","card_id":"c{n}","device_id":"d{n}","merchant_id":"mHOT","amount_cents":{},"currency":"USD","country":"US"}}"#,
                1_764_018_000_000 + n,
                100 + n * 7 % 5_000
            )
        })
        .collect();
    let landed = landed_payments(dir.path(), &hot);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args =
            vec!["batch", "hourly", "--input", landed.to_str().unwrap(), "--output", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let (ok, log) = corelog(&args);
        assert!(ok, "{log}");
        (out, log)
    };
    let (plain, log) = run("plain", &["--workers", "2", "--speculation", "off"]);
    println!("{log}");
    let report = common::run_python(&[
        common::script("rollup_check.py").to_str().unwrap(),
        "hourly",
        landed.to_str().unwrap(),
        plain.to_str().unwrap(),
    ]);
    assert_eq!(report["expected_rows"], EVENTS + 6_000, "{report}");
    assert_eq!(report["expected_groups"], report["our_groups"], "{report}");
    assert_eq!(report["exact_mismatches"], 0, "count, sum, min, max equal DuckDB's: {report}");
    assert!(
        log.contains("hot keys salted") && log.contains("hottest mHOT/US"),
        "the hot key was detected: {log}"
    );
    assert_eq!(report["p50_outside_accuracy"], 0, "{report}");
    assert_eq!(report["p99_outside_accuracy"], 0, "{report}");
    let expected = relative_files(&plain);
    assert_eq!(expected.len(), 6, "one file per event-time hour");

    // daily rolls the hourly output up (merging sketches) and equals DuckDB per day.
    let daily = dir.path().join("daily");
    let (ok, log) =
        corelog(&["batch", "daily", "--input", plain.to_str().unwrap(), "--output", daily.to_str().unwrap()]);
    assert!(ok, "{log}");
    assert_eq!(relative_files(&daily).len(), 2, "the six hours span two days");
    let report = common::run_python(&[
        common::script("rollup_check.py").to_str().unwrap(),
        "daily",
        landed.to_str().unwrap(),
        daily.to_str().unwrap(),
    ]);
    assert_eq!(report["expected_rows"], EVENTS + 6_000, "{report}");
    assert_eq!(report["expected_groups"], report["our_groups"], "{report}");
    assert_eq!(report["exact_mismatches"], 0, "{report}");
    assert_eq!(report["p50_outside_accuracy"], 0, "{report}");
    assert_eq!(report["p99_outside_accuracy"], 0, "{report}");

    let (slow, log) =
        run("slow", &["--workers", "2", "--inject-slow-worker", "0", "--speculation-min-runtime-ms", "10"]);
    println!("{log}");
    // Which stage's straggler gets speculated depends on which tasks the slow worker
    // happened to take (the other worker steals the rest); one must be, and win.
    let all_stages = |column| -> u64 {
        ["scan", "aggregate", "unsalt", "write"]
            .iter()
            .filter(|stage| log.lines().any(|line| line.starts_with(**stage)))
            .map(|stage| stage_column(&log, stage, column))
            .sum()
    };
    assert!(all_stages(4) > 0, "a straggler on the slow worker was speculated: {log}");
    assert!(all_stages(5) > 0, "a speculative copy won: {log}");
    assert_eq!(relative_files(&slow), expected, "speculation leaves the output byte-identical");

    let (unsalted, log) = run("unsalted", &["--workers", "2", "--skew", "off"]);
    assert!(!log.contains("hot keys salted"), "{log}");
    assert_eq!(relative_files(&unsalted), expected, "salting leaves the output byte-identical");

    let (flaky, log) = run("flaky", &["--workers", "2", "--inject-task-failure-rate", "0.2", "--seed", "7"]);
    println!("{log}");
    assert!(
        stage_column(&log, "scan", 3) + stage_column(&log, "aggregate", 3) > 0,
        "failed tasks were retried: {log}"
    );
    assert_eq!(relative_files(&flaky), expected, "retries leave the output byte-identical");
}

#[test]
fn given_bad_arguments_when_batch_runs_then_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, log) =
        corelog(&["batch", "hourly", "--input", dir.path().to_str().unwrap(), "--output", "/tmp/x"]);
    assert!(!ok && log.contains("no landed topic"), "{log}");
    let (ok, log) = corelog(&["batch", "reconcile", "--input", "a", "--output", "b"]);
    assert!(!ok && log.contains("reconcile needs --query"), "{log}");
    let (ok, log) =
        corelog(&["batch", "reconcile", "--input", "a", "--output", "b", "--query", "/nonexistent.toml"]);
    assert!(!ok && log.contains("/nonexistent.toml") && log.trim().lines().count() == 1, "{log}");
    let (ok, log) = corelog(&["batch", "sometimes", "--input", "a", "--output", "b"]);
    assert!(!ok && log.contains("invalid value"), "{log}");
    let (ok, log) =
        corelog(&["batch", "daily", "--input", dir.path().to_str().unwrap(), "--output", "/tmp/x"]);
    assert!(!ok && log.contains("no hourly/"), "{log}");
}

fn ring_payment(user: &str, card: &str, device: &str) -> String {
    format!(
        r#"{{"event_id":"x","ts":1764018000000,"user_id":"{user}","card_id":"{card}","device_id":"{device}","merchant_id":"m1","amount_cents":100,"currency":"USD","country":"US"}}"#
    )
}

#[test]
fn given_planted_rings_when_rings_runs_then_it_finds_each_and_no_smaller_group() {
    let mut extra = Vec::new();
    let mut planted: Vec<Vec<String>> = Vec::new();
    // Rings of 4..=8 users chained through shared cards; devices are personal.
    for (ring, size) in (4..=8).enumerate() {
        let users: Vec<String> = (0..size).map(|j| format!("ring{ring}u{j}")).collect();
        for (j, user) in users.iter().enumerate() {
            extra.push(ring_payment(user, &format!("ring{ring}c{j}"), &format!("ring{ring}d{j}")));
            extra.push(ring_payment(user, &format!("ring{ring}c{}", j + 1), &format!("ring{ring}d{j}")));
        }
        let mut sorted = users.clone();
        sorted.sort();
        planted.push(sorted);
    }
    // Households: 2 users sharing a device, 3 users sharing a card. Not rings at 4.
    for pair in 0..10 {
        for j in 0..2 {
            extra.push(ring_payment(
                &format!("pair{pair}u{j}"),
                &format!("pair{pair}c{j}"),
                &format!("pair{pair}d"),
            ));
        }
    }
    for triple in 0..3 {
        for j in 0..3 {
            extra.push(ring_payment(
                &format!("tri{triple}u{j}"),
                &format!("tri{triple}c"),
                &format!("tri{triple}d{j}"),
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let landed = landed_payments(dir.path(), &extra);
    let out = dir.path().join("rings");
    let server = common::Server::start(&dir.path().join("broker"), &[]);
    let (ok, log) = corelog(&[
        "batch",
        "rings",
        "--input",
        landed.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--workers",
        "2",
        "--brokers",
        &server.brokers(),
    ]);
    assert!(ok, "{log}");
    assert!(log.contains("5 rings (30 users)"), "{log}");
    // The deny-list was also produced to the `denylist` topic, one record per member.
    let members = 30 + (4..=8).map(|size| size + 1).sum::<usize>() + 30;
    let consumed = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["consume", "--brokers", &server.brokers(), "--topic", "denylist", "--from", "earliest"])
        .args(["--count", &members.to_string()])
        .output()
        .unwrap();
    assert!(consumed.status.success(), "{}", String::from_utf8_lossy(&consumed.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&consumed.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), members);
    let mut published: Vec<String> =
        lines.iter().filter(|v| v["kind"] == "user").map(|v| v["id"].as_str().unwrap().to_string()).collect();
    published.sort();
    let mut planted_users: Vec<String> = planted.iter().flatten().cloned().collect();
    planted_users.sort();
    assert_eq!(published, planted_users, "every ring user is on the published deny-list");
    server.stop();
    // Read the deny-list back: users per ring id.
    let file = std::fs::File::open(out.join("rings/part-00000.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut found: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    let mut cards = 0;
    for batch in reader {
        use arrow_array::cast::AsArray;
        let batch = batch.unwrap();
        let ring = batch.column_by_name("ring_id").unwrap().as_string::<i32>().clone();
        let kind = batch.column_by_name("kind").unwrap().as_string::<i32>().clone();
        let id = batch.column_by_name("id").unwrap().as_string::<i32>().clone();
        for i in 0..batch.num_rows() {
            match kind.value(i) {
                "user" => found.entry(ring.value(i).to_string()).or_default().push(id.value(i).to_string()),
                "card" => cards += 1,
                _ => {}
            }
        }
    }
    let mut found: Vec<Vec<String>> = found.into_values().collect();
    found.sort();
    planted.sort();
    assert_eq!(found, planted, "every planted ring, nothing else");
    assert_eq!(cards, (4..=8).map(|size| size + 1).sum::<usize>(), "each ring's cards are on the deny-list");
}

#[test]
fn given_landed_payments_in_s3_when_hourly_runs_from_s3_to_s3_then_it_writes_what_a_local_run_writes() {
    let moto = common::Moto::start();
    let s3 = common::script("s3.py");
    let s3 = s3.to_str().unwrap();
    common::run_python(&[s3, &moto.endpoint, "create", "lake"]);
    let dir = tempfile::tempdir().unwrap();
    let local = landed_payments(dir.path(), &[]);
    let with_env = |args: &[&str]| {
        let output =
            Command::new(env!("CARGO_BIN_EXE_corelog")).args(args).envs(moto.env()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{args:?}: {stderr}");
        stderr
    };
    let data = dir.path().join("data");
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    with_env(
        &["land", "--data-dir", data.to_str().unwrap(), "--out", "s3://lake/landed"]
            .into_iter()
            .chain(["--schemas", schemas.to_str().unwrap(), "--once"])
            .collect::<Vec<_>>(),
    );
    let log = with_env(&["batch", "hourly", "--input", "s3://lake/landed", "--output", "s3://lake/out"]);
    assert!(log.contains("Parquet objects copied from s3://lake/landed"), "{log}");
    let out = dir.path().join("local-out");
    let (ok, log) =
        corelog(&["batch", "hourly", "--input", local.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(ok, "{log}");
    let downloaded = dir.path().join("downloaded");
    common::run_python(&[s3, &moto.endpoint, "download", "lake", "out/", downloaded.to_str().unwrap()]);
    let remote = relative_files(&downloaded.join("out"));
    assert!(!remote.is_empty());
    assert_eq!(remote, relative_files(&out), "the same hourly files, byte for byte");
}
