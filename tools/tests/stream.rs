//! Stream queries through a real `corelog serve --queries`, fed by `corelog gen` and
//! read back by kafka-python: the `<query>.agg` and `<query>.decisions` topics hold
//! exactly what the query operator computes over the events the consumer sees, and a
//! deny-list Parquet file rewritten while the broker runs takes effect without a
//! restart.

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use engine::query::deny::DenySet;
use engine::query::window::{Event, Operator, Output};
use engine::query::QueryDef;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{run_python, script, Server};

const RING0_CARD: &str = "c4000000000";
const RING1_CARD: &str = "c4000000001";

fn query(deny_path: &Path) -> String {
    format!(
        r#"name = "fraud"
           source = "payments"
           key = "user_id"
           event_time = "ts"
           value = "amount_cents"
           distinct = "card_id"
           window = {{ size = "1s", slide = "500ms", lateness = "200ms" }}
           deny_list = {{ path = "{}" }}
           [[rule]]
           name = "velocity"
           when = "count > 5 within 1s"
           [[rule]]
           name = "denied-card"
           when = "card_id in denylist""#,
        deny_path.display()
    )
}

fn write_deny_list(path: &Path, ids: &[&str]) {
    let ids: ArrayRef = Arc::new(StringArray::from(ids.to_vec()));
    let batch = RecordBatch::try_from_iter([("id", ids)]).unwrap();
    let temp = path.with_extension("tmp");
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&temp).unwrap(), batch.schema(), None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn wait_for_log(server: &Server, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.log().matches(needle).count() < times {
        assert!(Instant::now() < deadline, "never saw {needle:?} {times}x in:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn gen(brokers: &str, seed: &str, seconds: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["gen", "--brokers", brokers, "--rate", "3000", "--seconds", seconds, "--users", "300"])
        .args(["--rings", "2", "--ring-share", "0.05", "--late-fraction", "0.03", "--late-by", "3s"])
        .args(["--seed", seed])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A record as read back: partition, offset, JSON value.
type Read = (u32, i64, serde_json::Value);

/// Every record of `topic`.
fn read(brokers: &str, topic: &str) -> Vec<Read> {
    let records = run_python(&[script("read_topic.py").to_str().unwrap(), brokers, topic]);
    records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_u64().unwrap() as u32,
                r[1].as_i64().unwrap(),
                serde_json::from_str(r[2].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// Waits until the query has consumed every source record (its lag gauge would do; the
/// decisions topic stops growing is enough here) and returns agg and decisions.
fn settled(brokers: &str) -> (Vec<Read>, Vec<Read>) {
    let mut last = (0, 0);
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let (agg, decisions) = (read(brokers, "fraud.agg"), read(brokers, "fraud.decisions"));
        if (agg.len(), decisions.len()) == last {
            return (agg, decisions);
        }
        last = (agg.len(), decisions.len());
    }
}

#[test]
fn given_serve_with_a_query_when_gen_offers_payments_then_kafka_clients_read_what_the_operator_computes() {
    let dir = tempfile::tempdir().unwrap();
    let (queries, deny_path) = (dir.path().join("queries"), dir.path().join("deny.parquet"));
    std::fs::create_dir_all(&queries).unwrap();
    write_deny_list(&deny_path, &[RING0_CARD]);
    std::fs::write(queries.join("fraud.toml"), query(&deny_path)).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--queries", queries.to_str().unwrap(), "--default-partitions", "3"],
    );
    wait_for_log(&server, "ids", 1);
    let brokers = server.brokers();
    gen(&brokers, "7", "3");
    let (agg, decisions) = settled(&brokers);
    let payments = read(&brokers, "payments");
    assert_eq!(payments.len(), 9000);

    let def = Arc::new(QueryDef::parse(&query(&deny_path), "test").unwrap());
    let deny = DenySet::from_ids([RING0_CARD.to_string()]);
    let mut late = 0;
    for partition in 0..3u32 {
        let mut operator = Operator::new(def.clone());
        let mut expected = Vec::new();
        for (_, offset, value) in payments.iter().filter(|r| r.0 == partition) {
            let event = Event {
                offset: *offset,
                key: value["user_id"].as_str().unwrap(),
                time_ms: value["ts"].as_i64().unwrap(),
                value: value["amount_cents"].as_i64().unwrap(),
                distinct: value["card_id"].as_str(),
            };
            operator.process(&event, &[value["card_id"].as_str()], &deny, &mut expected);
        }
        late += operator.stats().late_events;
        let windows: Vec<(String, i64, u64, i64, i64)> = expected
            .iter()
            .filter_map(|o| match o {
                Output::Window(w) => Some((w.key.to_string(), w.start_ms, w.count, w.sum, w.trigger_offset)),
                Output::Decision(_) => None,
            })
            .collect();
        let got: Vec<(String, i64, u64, i64, i64)> = agg
            .iter()
            .filter(|r| r.0 == partition)
            .map(|(_, _, v)| {
                (
                    v["key"].as_str().unwrap().to_string(),
                    v["window_start"].as_i64().unwrap(),
                    v["count"].as_u64().unwrap(),
                    v["sum"].as_i64().unwrap(),
                    v["offset"].as_i64().unwrap(),
                )
            })
            .collect();
        assert!(windows.len() > 100, "partition {partition}: {} windows", windows.len());
        assert_eq!(got, windows, "partition {partition}: window results");
        let fired: BTreeSet<(String, i64)> = expected
            .iter()
            .filter_map(|o| match o {
                Output::Decision(d) => Some((def.rules[d.rule].name.clone(), d.trigger_offset)),
                Output::Window(_) => None,
            })
            .collect();
        let got: BTreeSet<(String, i64)> = decisions
            .iter()
            .filter(|r| r.0 == partition)
            .map(|(_, _, v)| (v["rule"].as_str().unwrap().to_string(), v["offset"].as_i64().unwrap()))
            .collect();
        assert_eq!(got, fired, "partition {partition}: decisions");
    }
    assert!(late > 0, "late events reach the query");
    let denied: BTreeSet<&str> = decisions.iter().filter_map(|r| r.2["denied"].as_str()).collect();
    assert_eq!(denied, BTreeSet::from([RING0_CARD]));

    // A new deny-list: ring 1's card instead of ring 0's, picked up without a restart.
    write_deny_list(&deny_path, &[RING1_CARD]);
    wait_for_log(&server, "ids", 2);
    gen(&brokers, "8", "1");
    let (_, after) = settled(&brokers);
    let new: Vec<&str> =
        after[..].iter().filter(|r| !decisions.contains(r)).filter_map(|r| r.2["denied"].as_str()).collect();
    assert!(!new.is_empty(), "decisions from the new list");
    assert!(new.iter().all(|id| *id == RING1_CARD), "only the new list applies: {new:?}");
    let (clean, log) = server.stop();
    assert!(clean, "{log}");
}
