//! Bad input never hurts the broker: a seeded stream of at least 100,000 random and
//! mutated Kafka frames goes to a real `corelog serve`; afterwards the broker still
//! answers, real clients still round-trip, every partition reads cleanly and `corelog
//! inspect` finds every segment intact. Replay with `CORELOG_FRAMES_SEED=<seed>`.

mod common;

use bytes::Bytes;
use engine::batch::BatchBuilder;
use kafka_protocol::messages::{
    fetch_request, list_offsets_request, metadata_request, produce_request, ApiKey, ApiVersionsRequest,
    CreateTopicsRequest, FetchRequest, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest,
    ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

const FRAMES: usize = 100_000;

use common::wire::frame;

fn topic(name: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(name))
}

/// Valid requests of every API the broker serves, to be mutated.
fn seeds() -> Vec<Vec<u8>> {
    let mut builder = BatchBuilder::default();
    for i in 0..5 {
        builder.push(1_700_000_000_000 + i, Some(b"key"), Some(format!("value {i}").as_bytes()));
    }
    let records = Bytes::from(builder.finish().to_vec());
    let produce = ProduceRequest::default().with_acks(-1).with_timeout_ms(1000).with_topic_data(vec![
        produce_request::TopicProduceData::default().with_name(topic("fuzz")).with_partition_data(vec![
            produce_request::PartitionProduceData::default().with_index(0).with_records(Some(records)),
        ]),
    ]);
    let fetch = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![
        fetch_request::FetchTopic::default().with_topic(topic("fuzz")).with_partitions(vec![
            fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 16),
        ]),
    ]);
    let list_offsets =
        ListOffsetsRequest::default().with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(topic("fuzz"))
            .with_partitions(
                vec![list_offsets_request::ListOffsetsPartition::default().with_timestamp(-2)],
            )]);
    let metadata = MetadataRequest::default()
        .with_topics(Some(vec![
            metadata_request::MetadataRequestTopic::default().with_name(Some(topic("fuzz")))
        ]))
        .with_allow_auto_topic_creation(true);
    vec![
        frame(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default()),
        frame(ApiKey::Metadata, 9, 2, &metadata),
        frame(ApiKey::Produce, 7, 3, &produce),
        frame(ApiKey::Produce, 9, 4, &produce),
        frame(ApiKey::Fetch, 11, 5, &fetch),
        frame(ApiKey::ListOffsets, 5, 6, &list_offsets),
        frame(ApiKey::CreateTopics, 5, 7, &CreateTopicsRequest::default()),
        frame(ApiKey::InitProducerId, 4, 8, &InitProducerIdRequest::default()),
    ]
}

fn mutate(rng: &mut impl Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect(), // pure noise
        1 => {
            // A plausible size prefix over noise.
            let body: Vec<u8> = (0..rng.gen_range(8..256)).map(|_| rng.gen()).collect();
            let mut frame = (body.len() as i32).to_be_bytes().to_vec();
            frame.extend(body);
            frame
        }
        _ => {
            let mut frame = seeds[rng.gen_range(0..seeds.len())].clone();
            for _ in 0..rng.gen_range(1..4) {
                if frame.len() <= 5 {
                    break;
                }
                match rng.gen_range(0..4) {
                    0 => {
                        let at = rng.gen_range(4..frame.len());
                        frame[at] ^= 1 << rng.gen_range(0..8);
                    }
                    1 => {
                        let at = rng.gen_range(4..frame.len());
                        frame[at] = rng.gen();
                    }
                    2 => {
                        // Truncate, keeping the size prefix honest half of the time.
                        let keep = rng.gen_range(4..frame.len());
                        frame.truncate(keep);
                        if rng.gen_bool(0.5) {
                            let length = (frame.len() - 4) as i32;
                            frame[0..4].copy_from_slice(&length.to_be_bytes());
                        }
                    }
                    _ => {
                        let at = rng.gen_range(4..frame.len());
                        frame.insert(at, rng.gen());
                        let length = (frame.len() - 4) as i32;
                        frame[0..4].copy_from_slice(&length.to_be_bytes());
                    }
                }
            }
            frame
        }
    }
}

fn connect(address: SocketAddr, server: &common::Server) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap_or_else(|error| {
        let log = server.log();
        let tail: Vec<&str> = log.lines().rev().take(400).collect();
        panic!(
            "the broker stopped accepting connections ({error}); its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    });
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `frame`; returns false when the broker closed the connection (or gave no
/// answer in time). A frame whose size prefix disagrees with its length is sent and
/// the connection is dropped: the broker must then cope with a frame cut short.
fn exchange(stream: &mut TcpStream, frame: &[u8]) -> bool {
    if stream.write_all(frame).is_err() {
        return false;
    }
    let declared = frame.get(0..4).map(|b| i32::from_be_bytes(b.try_into().unwrap()) as i64);
    if declared != Some(frame.len() as i64 - 4) {
        return false;
    }
    let mut size = [0u8; 4];
    if stream.read_exact(&mut size).is_err() {
        return false;
    }
    let mut body = vec![0u8; i32::from_be_bytes(size).clamp(0, 1 << 24) as usize];
    stream.read_exact(&mut body).is_ok()
}

#[test]
fn a_hundred_thousand_random_and_mutated_frames_leave_the_broker_serving_and_the_log_intact() {
    let seed: u64 =
        std::env::var("CORELOG_FRAMES_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("frames seed {seed} (replay with CORELOG_FRAMES_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(dir.path(), &["--max-request-bytes", "1048576", "--flush", "os"]);
    let address = server.address;
    let seeds = seeds();
    let mut stream = connect(address, &server);
    for seed_frame in &seeds {
        assert!(exchange(&mut stream, seed_frame), "seed {seed}: every unmutated request is answered");
    }
    let (mut answered, mut closed) = (0usize, 0usize);
    for _ in 0..FRAMES {
        let frame = mutate(&mut rng, &seeds);
        if exchange(&mut stream, &frame) {
            answered += 1;
        } else {
            closed += 1;
            stream = connect(address, &server);
        }
    }
    println!("seed {seed}: {answered} frames answered, {closed} connections closed");
    assert!(answered > 1000 && closed > 1000, "seed {seed}: the mix exercised both paths");
    // Still serving: every seed request is answered on a fresh connection.
    let mut stream = connect(address, &server);
    for seed_frame in &seeds {
        assert!(exchange(&mut stream, seed_frame), "seed {seed}: broker still serving");
    }
    drop(server);
    // The log is intact: inspect every partition directory (not __groups).
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let is_partition = path.is_dir()
            && std::fs::read_dir(&path)
                .unwrap()
                .any(|f| f.unwrap().path().extension().is_some_and(|e| e == "log"));
        if is_partition {
            let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
                .args(["inspect", path.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "seed {seed}: {} corrupt: {}",
                path.display(),
                String::from_utf8_lossy(&output.stdout)
            );
        }
    }
}

#[test]
fn pipelined_idempotent_produce_requests_append_in_request_order_across_shards() {
    use kafka_protocol::messages::{ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(dir.path(), &["--default-partitions", "2"]);
    let version = 8;
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // 40 requests, alternating partitions (one of them owned by the other shard), one
    // idempotent producer: each partition's batches carry sequences 0, 3, 6, ...
    let mut frames = Vec::new();
    for i in 0..40i32 {
        let mut builder = BatchBuilder::default();
        builder.producer(4242, 0, (i / 2) * 3);
        for j in 0..3 {
            builder.push(1_700_000_000_000, None, Some(format!("{i}-{j}").as_bytes()));
        }
        let produce = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
            produce_request::TopicProduceData::default().with_name(topic("ordered")).with_partition_data(
                vec![produce_request::PartitionProduceData::default()
                    .with_index(i % 2)
                    .with_records(Some(Bytes::from(builder.finish().to_vec())))],
            ),
        ]);
        frames.extend(frame(ApiKey::Produce, version, i, &produce));
    }
    stream.write_all(&frames).unwrap(); // all 40 before reading any response
    let mut last_offset = [-1i64; 2];
    for i in 0..40i32 {
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut body).unwrap();
        let mut body = Bytes::from(body);
        let header =
            ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, i, "responses in request order");
        let response = ProduceResponse::decode(&mut body, version).unwrap();
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(partition.error_code, 0, "request {i}: no out-of-order sequence");
        let p = (i % 2) as usize;
        assert_eq!(
            partition.base_offset,
            last_offset[p] + 1 + if last_offset[p] < 0 { 0 } else { 2 },
            "request {i}"
        );
        last_offset[p] = partition.base_offset;
    }
    assert_eq!(last_offset, [57, 57], "20 batches of 3 records per partition, in order");
}
