//! Crash safety through the Kafka protocol: confluent-kafka produces with acks=all while
//! `corelog serve` (256 KiB segments of 1.5 KB messages, so kills land during rolls; every flush mode) is
//! SIGKILLed six times, each a random (seeded) moment after the log rolled again, and
//! restarted; the producer must get
//! every message acknowledged across the restarts (a partition that cannot take
//! appends after a restart fails it); afterwards
//! every acknowledged message is readable at its acknowledged offset, in order per
//! partition, with no gaps, and no message is stored twice (the producer is idempotent
//! and the broker rebuilds its producer state on restart). Replay with `CORELOG_KAFKA_CRASH_SEED=<seed>`.

use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader};
mod common;

use common::Server;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 6;

#[test]
fn acknowledged_messages_survive_sigkills_of_the_broker_during_rolls_with_group_flush() {
    kill_repeatedly("group");
}

#[test]
fn acknowledged_messages_survive_sigkills_of_the_broker_during_rolls_with_always_flush() {
    kill_repeatedly("always");
}

#[test]
fn acknowledged_messages_survive_sigkills_of_the_broker_during_rolls_with_os_flush() {
    kill_repeatedly("os");
}

fn kill_repeatedly(flush: &str) {
    let seed: u64 = std::env::var("CORELOG_KAFKA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("kafka crash seed {seed} (replay with CORELOG_KAFKA_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--default-partitions", "3", "--segment-bytes", "262144", "--flush", flush];
    let mut server = Server::start(dir.path(), &flags);
    let address = server.address;
    let script = common::script("acked_producer.py");
    let mut producer = Command::new(common::python())
        .args([script.to_str().unwrap(), &address.to_string(), "crash", "120", "1500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python with confluent-kafka (run ./ci.sh)");
    let stdout = producer.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let fields: Vec<i64> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
                (fields.len() == 3).then(|| (fields[0], fields[1], fields[2]))
            })
            .collect::<Vec<_>>()
    });
    // Each kill lands a random time after the log rolled again since the last one, so
    // every round kills a log that is rolling, however fast this machine appends.
    let segments = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("crash-0")).map_or(0, |entries| {
            entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "log")).count()
        })
    };
    let mut at_last_kill = segments(dir.path());
    for round in 0..ROUNDS {
        let deadline = Instant::now() + Duration::from_secs(60);
        while segments(dir.path()) <= at_last_kill {
            assert!(Instant::now() < deadline, "seed {seed}: no roll within 60 s before kill {round}");
            std::thread::sleep(Duration::from_millis(10)); // polling the directory for the roll
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
        server.kill(); // SIGKILL
        at_last_kill = segments(dir.path());
        server = Server::start_at(dir.path(), address, &flags);
    }
    // Stop producing (SIGTERM: the producer flushes what it sent and exits).
    let stopped = Command::new("kill").args(["-TERM", &producer.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    assert!(producer.wait().unwrap().success(), "seed {seed}: the producer flushed everything");
    let acked = reader.join().unwrap();
    assert!(acked.len() > 500, "seed {seed}: the producer made progress ({} acks)", acked.len());
    server.kill();

    // Reopen the data directory embedded and check every acknowledgement.
    let engine = engine::Engine::open(engine::EngineConfig {
        pin_threads: false,
        ..engine::EngineConfig::new(dir.path())
    })
    .unwrap();
    for partition in 0..3u32 {
        let mut mine: Vec<(i64, i64)> =
            acked.iter().filter(|a| a.0 == i64::from(partition)).map(|a| (a.1, a.2)).collect();
        mine.sort_unstable();
        assert!(
            mine.windows(2).all(|w| w[0].1 < w[1].1),
            "seed {seed}: acknowledged values in order in partition {partition}"
        );
        let high_watermark = engine.partition_info("crash", partition).wait().unwrap().high_watermark;
        let mut stored = std::collections::BTreeMap::new();
        let mut offset = 0;
        while offset < high_watermark {
            let fetched = engine.read("crash", partition, offset, 1 << 20).wait().unwrap();
            let mut position = 0;
            while position < fetched.bytes.len() {
                let view = engine::batch::BatchView::parse(&fetched.bytes[position..]).unwrap();
                for record in view.records().unwrap() {
                    let value: serde_json::Value = serde_json::from_slice(record.value.unwrap()).unwrap();
                    stored.insert(record.offset, value["n"].as_i64().unwrap());
                }
                position += view.len();
            }
            offset = fetched.next_offset;
        }
        assert_eq!(stored.len() as i64, high_watermark, "seed {seed}: no gaps in partition {partition}");
        // The producer is idempotent and its state outlives the broker: a retry of a
        // batch that was durable before a kill is answered, not appended again.
        let mut seen = std::collections::HashMap::new();
        for (offset, n) in &stored {
            if let Some(first) = seen.insert(*n, *offset) {
                panic!(
                    "seed {seed}: value {n} stored twice in partition {partition}, at {first} and {offset}"
                );
            }
        }
        for (offset, n) in mine {
            assert_eq!(
                stored.get(&offset),
                Some(&n),
                "seed {seed}: acknowledged {partition}:{offset} holds {n}"
            );
        }
    }
}
