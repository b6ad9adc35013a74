//! `corelog batch reconcile` over what a stream query emitted: an embedded engine runs
//! the query over payments with late events, `corelog land` lands the source and the
//! `<query>.agg` topic, and reconcile must correct exactly the windows late events
//! changed (computed here by replaying the operator and recording every window each
//! dropped event missed), with no other difference.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampMillisecondType};
use corelog_tools::payments::{partition_for, Generator, Plan};
use engine::batch::BatchBuilder;
use engine::query::deny::DenySet;
use engine::query::json::extract;
use engine::query::window::Operator;
use engine::query::{EventFields, QueryDef};
use engine::{Engine, EngineConfig};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const PARTITIONS: u32 = 3;
const EVENTS: u64 = 30_000;
const QUERY: &str = r#"
name = "fraud"
source = "payments"
key = "user_id"
event_time = "ts"
value = "amount_cents"
distinct = "card_id"
window = { size = "2s", slide = "1s", lateness = "500ms" }
[[rule]]
when = "count > 3 within 2s"
"#;

fn corelog(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_corelog")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{args:?}: {stderr}");
    stderr
}

/// Sink offsets, once they stop moving.
fn settle(engine: &Engine) {
    let mut last = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(600));
        let now: Vec<i64> = (0..PARTITIONS)
            .flat_map(|p| {
                ["payments", "fraud.agg"].map(|t| engine.partition_info(t, p).wait().unwrap().high_watermark)
            })
            .collect();
        if now == last {
            return;
        }
        last = now;
    }
}

#[test]
fn given_late_events_when_reconciled_then_exactly_the_windows_they_changed_are_corrected() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = EngineConfig::new(&data);
    config.shards = 2;
    config.pin_threads = false;
    config.log.retention_ms = None;
    config.auto_create_partitions = Some(PARTITIONS);
    let def = QueryDef::parse(QUERY, "test").unwrap();
    config.queries = vec![def.clone()];
    let engine = Engine::open(config).unwrap();
    let plan = Plan { late_fraction: 0.02, late_by_ms: 4_000, ..Plan::ordinary(400, 1.1) };
    let mut generator = Generator::with_plan(5, plan, 1_764_018_000_000, 2_000);
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut values: Vec<Vec<String>> = vec![Vec::new(); PARTITIONS as usize];
    let mut batches: Vec<BatchBuilder> = (0..PARTITIONS).map(|_| BatchBuilder::default()).collect();
    for n in 0..EVENTS {
        let payment = generator.next_payment();
        payment.key(&mut key);
        payment.json(&mut value);
        let p = partition_for(&key, PARTITIONS) as usize;
        batches[p].push(payment.ts, Some(&key), Some(&value));
        values[p].push(String::from_utf8(value.clone()).unwrap());
        if n % 300 == 299 || n == EVENTS - 1 {
            for (p, batch) in batches.iter_mut().enumerate().filter(|(_, b)| b.record_count() > 0) {
                engine.append("payments", p as u32, batch.finish()).wait().unwrap();
            }
        }
    }
    settle(&engine);
    engine.shutdown().unwrap();

    // The reference: replay the operator, recording each window a dropped event missed.
    let def_arc = Arc::new(def.clone());
    let fields = EventFields::new(&def);
    let mut expected = BTreeSet::new();
    let mut late_total = 0;
    for (p, events) in values.iter().enumerate() {
        let mut operator = Operator::new(def_arc.clone());
        let mut slots = vec![None; fields.names().len()];
        let mut out = Vec::new();
        let mut missed = Vec::new();
        for (offset, text) in events.iter().enumerate() {
            assert!(extract(text.as_bytes(), fields.names(), &mut slots));
            let event = fields.event(&slots, offset as i64, 0).unwrap();
            let watermark = operator.watermark_ms();
            for start in def.window.starts(event.time_ms).filter(|s| s + def.window.size_ms <= watermark) {
                missed.push((start, event.key.to_string()));
            }
            operator.process(&event, &[], &DenySet::default(), &mut out);
        }
        late_total += operator.stats().late_events;
        // Only windows the stream closed count (reconcile's bound: the last end it emitted).
        let closed_through = out
            .iter()
            .filter_map(|o| match o {
                engine::query::window::Output::Window(w) => Some(w.end_ms),
                _ => None,
            })
            .max()
            .unwrap();
        for (start, key) in missed {
            if start + def.window.size_ms <= closed_through {
                expected.insert((p as i32, start, key));
            }
        }
    }
    assert!(late_total > 100 && expected.len() > 100, "{late_total} late events, {} windows", expected.len());

    let lake = dir.path().join("lake");
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    corelog(
        &["land", "--data-dir", data.to_str().unwrap(), "--out", lake.to_str().unwrap()]
            .into_iter()
            .chain(["--topics", "payments,fraud.agg", "--schemas", schemas.to_str().unwrap(), "--once"])
            .collect::<Vec<_>>(),
    );
    let query_file = dir.path().join("fraud.toml");
    std::fs::write(&query_file, QUERY).unwrap();
    let out = dir.path().join("out");
    let summary = corelog(&[
        "batch",
        "reconcile",
        "--input",
        lake.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--query",
        query_file.to_str().unwrap(),
    ]);
    eprintln!("{summary}");
    assert!(summary.contains(", 0 mismatched"), "{summary}");

    let mut corrected = BTreeSet::new();
    for file in batch::morsel::parquet_files(&out.join("reconcile/fraud")).unwrap() {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let partition = batch.column_by_name("partition").unwrap().as_primitive::<Int32Type>().clone();
            let key = batch.column_by_name("key").unwrap().as_string::<i32>().clone();
            let start = batch
                .column_by_name("window_start")
                .unwrap()
                .as_primitive::<TimestampMillisecondType>()
                .clone();
            let reason = batch.column_by_name("reason").unwrap().as_string::<i32>().clone();
            for i in 0..batch.num_rows() {
                assert_eq!(reason.value(i), "late");
                corrected.insert((partition.value(i), start.value(i), key.value(i).to_string()));
            }
        }
    }
    assert_eq!(corrected, expected, "{summary}");
}
