//! A real `corelog serve` process and a real Kafka client we did not write (`kcat`,
//! librdkafka inside), on 127.0.0.1. `ci.sh` installs kcat.

mod common;

use common::Server;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn kcat(args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed (ci.sh installs it: apt-get install kcat)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    (output.status.success(), output.stdout, String::from_utf8_lossy(&output.stderr).into_owned())
}

fn messages(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| {
            (
                format!("user-{}", i % 37),
                format!("{{\"n\":{i},\"text\":\"héllo wörld {}\"}}", "x".repeat(i % 50)),
            )
        })
        .collect()
}

fn produce(server: &Server, topic: &str, messages: &[(String, String)]) {
    produce_with_acks(server, topic, messages, "all");
}

fn produce_with_acks(server: &Server, topic: &str, messages: &[(String, String)], acks: &str) {
    let input: String = messages.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect();
    let acks = format!("acks={acks}");
    let (ok, _, stderr) =
        kcat(&["-P", "-b", &server.brokers(), "-t", topic, "-K", "\t", "-X", &acks], input.as_bytes());
    assert!(ok, "kcat produce failed: {stderr}");
}

/// Consumes everything: (partition, offset, key, value) per message.
fn consume(server: &Server, topic: &str) -> Vec<(u32, i64, String, String)> {
    let (ok, stdout, stderr) = kcat(
        &["-C", "-b", &server.brokers(), "-t", topic, "-e", "-o", "beginning", "-f", "%p\t%o\t%k\t%s\n"],
        b"",
    );
    assert!(ok, "kcat consume failed: {stderr}");
    String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let mut fields = line.splitn(4, '\t');
            let mut next = || fields.next().unwrap().to_string();
            (next().parse().unwrap(), next().parse().unwrap(), next(), next())
        })
        .collect()
}

#[test]
fn kcat_produces_keyed_messages_to_four_partitions_and_consumes_them_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--default-partitions", "4"]);
    let sent = messages(500);
    produce(&server, "payments", &sent);
    let received = consume(&server, "payments");
    assert_eq!(received.len(), sent.len());
    let mut sent_sorted = sent.clone();
    sent_sorted.sort();
    let mut got: Vec<(String, String)> = received.iter().map(|(_, _, k, v)| (k.clone(), v.clone())).collect();
    got.sort();
    assert_eq!(got, sent_sorted, "byte-identical keys and values");
    for partition in 0..4 {
        let offsets: Vec<i64> = received.iter().filter(|m| m.0 == partition).map(|m| m.1).collect();
        assert!(!offsets.is_empty(), "keys spread over all four partitions");
        assert!(
            offsets.iter().enumerate().all(|(i, o)| *o == i as i64),
            "contiguous offsets from 0 in partition {partition}"
        );
    }
    // One key always lands in one partition, in production order.
    let user_3: Vec<&str> = received.iter().filter(|m| m.2 == "user-3").map(|m| m.3.as_str()).collect();
    let sent_3: Vec<&str> = sent.iter().filter(|m| m.0 == "user-3").map(|m| m.1.as_str()).collect();
    assert_eq!(user_3, sent_3);
    let (ok, stderr) = server.stop();
    assert!(ok, "clean exit on SIGTERM: {stderr}");
    assert!(dir.path().join(engine::CLEAN_MARKER_FILE).exists());
}

#[test]
fn data_survives_a_restart_and_offsets_are_queryable_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--default-partitions", "4"]);
    let sent = messages(100);
    produce_with_acks(&server, "t", &sent, "1"); // acks=1: answered once written
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
    let server = Server::start(dir.path(), &["--default-partitions", "4"]);
    assert_eq!(consume(&server, "t").len(), 100);
    // Every record was stamped with the producer's time: a query for the distant past
    // answers offset 0, one for the future answers the end (-1 in kcat's output).
    let (ok, stdout, stderr) = kcat(&["-Q", "-b", &server.brokers(), "-t", "t:0:1000"], b"");
    assert!(ok, "{stderr}");
    let text = String::from_utf8_lossy(&stdout);
    assert!(text.contains("offset 0"), "{text}");
}

#[test]
fn malformed_and_oversized_frames_close_the_connection_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--default-partitions", "4", "--max-request-bytes", "65536"]);
    let garbage: [&[u8]; 3] = [
        &i32::MAX.to_be_bytes(), // larger than --max-request-bytes
        &[0, 0, 0, 12, 0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], // unknown API key
        &[0, 0, 0, 10, 0, 0, 0, 3, 0, 0, 0, 1, 0xff, 0xff], // Produce v3 body missing
    ];
    for frame in garbage {
        let mut stream = TcpStream::connect(server.address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(frame).unwrap();
        let mut buffer = [0u8; 64];
        assert_eq!(stream.read(&mut buffer).unwrap_or(0), 0, "connection closed without a response");
    }
    let (ok, stdout, stderr) = kcat(&["-L", "-b", &server.brokers()], b"");
    assert!(ok, "{stderr}");
    assert!(String::from_utf8_lossy(&stdout).contains("1 brokers"));
    produce(&server, "after", &messages(3));
    assert_eq!(consume(&server, "after").len(), 3);
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_endpoint_reports_requests_fsyncs_rings_and_group_lag() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_address = common::free_address();
    let metrics = metrics_address.to_string();
    let server = Server::start(dir.path(), &["--default-partitions", "4", "--metrics", &metrics]);
    produce(&server, "observed", &messages(40));
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args([
            "consume",
            "--brokers",
            &server.brokers(),
            "--topic",
            "observed",
            "--group",
            "watchers",
            "--count",
            "40",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = common::scrape(metrics_address);
    assert!(metric(&text, "corelog_kafka_requests_total{api=\"Produce\"}").unwrap_or(0.0) >= 1.0, "{text}");
    assert!(metric(&text, "corelog_kafka_request_bytes_total{api=\"Fetch\"}").unwrap_or(0.0) > 0.0, "{text}");
    assert!(metric(&text, "corelog_fsync_seconds_count").unwrap_or(0.0) >= 1.0, "{text}");
    assert!(text.contains("corelog_ring_drained_entries_bucket"), "{text}");
    assert!(text.contains("corelog_kafka_request_seconds_bucket{api=\"Produce\""), "{text}");
    let lags: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("corelog_consumer_group_lag{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(!lags.is_empty(), "{text}");
    assert!(lags.iter().all(|lag| *lag == 0.0), "everything consumed and committed: {lags:?}");
}
