//! Interop with Python clients we did not write: confluent-kafka (librdkafka) produces
//! with acks=all and idempotence; kafka-python consumes from earliest and from a
//! timestamp. `ci.sh` installs both into `target/py`; set `CORELOG_PYTHON` to use
//! another interpreter that has them.

mod common;

use common::{run_python, script, Server};
use std::time::Duration;

fn start(dir: &std::path::Path) -> Server {
    Server::start(dir, &["--default-partitions", "4"])
}

#[test]
fn confluent_kafka_produces_idempotently_and_kafka_python_reads_from_earliest_and_from_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let brokers = server.brokers();
    let produce = script("confluent_produce.py");
    let first = run_python(&[produce.to_str().unwrap(), &brokers, "orders", "300", "0"]);
    assert_eq!(first["delivered"], 300, "{first}");
    assert_eq!(first["errors"].as_array().unwrap().len(), 0, "{first}");
    std::thread::sleep(Duration::from_millis(150));
    let boundary_ms = engine::now_ms();
    std::thread::sleep(Duration::from_millis(150));
    let second = run_python(&[produce.to_str().unwrap(), &brokers, "orders", "200", "300"]);
    assert_eq!(second["delivered"], 200, "{second}");
    // Per partition, the acknowledged offsets of both runs are 0..n without gaps.
    for partition in 0..4 {
        let key = partition.to_string();
        let mut offsets: Vec<i64> = [&first, &second]
            .iter()
            .flat_map(|run| run["offsets"][&key].as_array().cloned().unwrap_or_default())
            .map(|o| o.as_i64().unwrap())
            .collect();
        offsets.sort_unstable();
        assert!(
            offsets.iter().enumerate().all(|(i, o)| *o == i as i64),
            "partition {partition}: {offsets:?}"
        );
    }
    let consume = script("kafka_python_consume.py");
    let read = run_python(&[consume.to_str().unwrap(), &brokers, "orders", "500", &boundary_ms.to_string()]);
    let earliest: Vec<i64> =
        read["earliest"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(earliest, (0..500).collect::<Vec<_>>(), "every value exactly once");
    let mut after: Vec<i64> = read["from_time"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["values"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>())
        .collect();
    after.sort_unstable();
    assert_eq!(after, (300..500).collect::<Vec<_>>(), "offsets_for_times lands on the second run: {read}");
}

#[test]
fn two_confluent_consumers_in_a_group_split_partitions_commit_and_hand_over_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let brokers = server.brokers();
    let produced =
        run_python(&[script("confluent_produce.py").to_str().unwrap(), &brokers, "events", "300", "0"]);
    assert_eq!(produced["delivered"], 300);
    let run = run_python(&[
        script("group_consumers.py").to_str().unwrap(),
        &brokers,
        "events",
        "grp",
        "300",
        "200",
    ]);
    let partitions = |key: &str| -> Vec<i64> {
        run[key].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
    };
    let (a, b) = (partitions("assignment_a"), partitions("assignment_b"));
    let mut both: Vec<i64> = a.iter().chain(&b).copied().collect();
    both.sort_unstable();
    assert_eq!(both, vec![0, 1, 2, 3], "the two members split the partitions: {a:?} / {b:?}");
    assert!(!a.is_empty() && !b.is_empty());
    assert_eq!(partitions("final_assignment_a"), vec![0, 1, 2, 3], "after b leaves, a owns everything");
    let values = |who: &str| -> Vec<i64> {
        run["consumed"][who].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
    };
    let uncommitted: Vec<i64> =
        run["uncommitted"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let mut counts = std::collections::BTreeMap::new();
    for value in values("a").into_iter().chain(values("b")) {
        *counts.entry(value).or_insert(0) += 1;
    }
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), (0..500).collect::<Vec<_>>(), "nothing lost");
    let repeated: Vec<i64> =
        counts.iter().filter(|(v, n)| **n > 1 && !uncommitted.contains(v)).map(|(v, _)| *v).collect();
    assert!(repeated.is_empty(), "only records whose commit failed are read again: {repeated:?}");
    // Committed offsets survive a restart.
    let query = [
        script("committed.py").to_str().unwrap().to_string(),
        brokers.clone(),
        "grp".into(),
        "events".into(),
        "4".into(),
    ];
    let query: Vec<&str> = query.iter().map(String::as_str).collect();
    let before = run_python(&query);
    assert!(before.as_object().unwrap().values().all(|o| o.as_i64().unwrap() > 0), "{before}");
    let address = server.address;
    let (clean, log) = server.stop();
    assert!(clean, "clean exit on SIGTERM: {log}");
    let _server = Server::start_at(dir.path(), address, &["--default-partitions", "4"]);
    assert_eq!(run_python(&query), before, "committed offsets are durable");
}

#[test]
fn confluent_admin_client_creates_lists_and_deletes_topics() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let seen = run_python(&[script("admin.py").to_str().unwrap(), &server.brokers()]);
    assert_eq!(seen["created"]["admin-a"], 5, "{seen}");
    assert_eq!(seen["created"]["admin-b"], 2, "{seen}");
    assert_eq!(seen["duplicate"], "TOPIC_ALREADY_EXISTS", "{seen}");
    assert_eq!(seen["after_delete"], serde_json::json!(["admin-b"]), "{seen}");
    assert!(!dir.path().join("admin-a-0").exists());
}
