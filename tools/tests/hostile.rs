//! A hostile client against a real `corelog serve`: raw-socket requests that are well
//! formed, CRC-valid and lie (counts, deltas, lengths, varints, timestamps, header
//! keys, attribute bits, codecs, repeated and negative partitions, huge byte limits),
//! half-sent frames, clients that never read, connection, topic and partition floods.
//!
//! After every case: the answer carries Kafka's error code for the lie; a new
//! connection is answered within [`SERVED_WITHIN`]; the partition the case aimed at
//! takes an honest append; the broker's anonymous RSS is under [`RSS_ANON_BOUND`];
//! and `corelog inspect` finds the data directory intact. At the end the broker
//! stops cleanly, restarts, and still holds what was acknowledged.

mod common;

use bytes::{Bytes, BytesMut};
use common::wire::{self, Wire};
use common::Server;
use engine::batch::BatchBuilder;
use engine::lies::{Field, RawBatch, RawRecord};
use kafka_protocol::messages::{
    create_topics_request, fetch_request, join_group_request, list_offsets_request, metadata_request,
    offset_commit_request, ApiKey, ApiVersionsRequest, CreateTopicsRequest, CreateTopicsResponse,
    FetchRequest, FetchResponse, GroupId, JoinGroupRequest, JoinGroupResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A new connection must be answered this soon after every case.
const SERVED_WITHIN: Duration = Duration::from_secs(1);
/// The broker's own memory (RssAnon) stays under this in every case. Its memory budget
/// is set to 256 MiB below; the rest is code, shards' rings and tasks.
const RSS_ANON_BOUND: u64 = 768 << 20;
/// Once every hostile connection is gone, the broker's own memory falls back under this.
const RSS_ANON_IDLE_BOUND: u64 = 256 << 20;
const MEMORY_BUDGET: &str = "268435456";
const MAX_PARTITIONS: u32 = 400;

const NONE: i16 = 0;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_GROUP_ID: i16 = 24;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_PARTITIONS: i16 = 37;
const POLICY_VIOLATION: i16 = 44;
const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
const INVALID_RECORD: i16 = 87;

struct Suite {
    server: Server,
    data: PathBuf,
    cases: Vec<&'static str>,
    rss_max: u64,
}

fn now_ms() -> i64 {
    engine::now_ms()
}

fn honest_batch(records: usize) -> Bytes {
    let mut builder = BatchBuilder::default();
    for i in 0..records {
        builder.push(
            now_ms(),
            Some(format!("k{i}").as_bytes()),
            Some(format!("honest value {i}").as_bytes()),
        );
    }
    Bytes::from(builder.finish().to_vec())
}

/// An honest structure of `n` records to lie with.
fn raw(n: usize) -> RawBatch {
    let base = now_ms();
    RawBatch {
        attributes: 0,
        base_timestamp: base,
        max_timestamp: base + n as i64 - 1,
        record_count: n as i32,
        last_offset_delta: n as i32 - 1,
        records: (0..n)
            .map(|i| RawRecord {
                attributes: 0,
                timestamp_delta: i as i64,
                offset_delta: i as i64,
                key: Field::Bytes(format!("key{i}").into_bytes()),
                value: Field::Bytes(format!("value {i}").into_bytes()),
                headers: vec![(Field::Bytes(b"h".to_vec()), Field::Bytes(b"v".to_vec()))],
                length_adjust: 0,
                overlong_offset_delta: None,
                trailing: Vec::new(),
            })
            .collect(),
        trailing: Vec::new(),
    }
}

fn lie(n: usize, f: impl FnOnce(&mut RawBatch)) -> Bytes {
    let mut batch = raw(n);
    f(&mut batch);
    assert!(!batch.is_valid(), "the case must lie");
    Bytes::from(batch.encode().to_vec())
}

/// Rewrites the CRC after a header edit.
fn recrc(mut bytes: BytesMut) -> Bytes {
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes.to_vec())
}

impl Suite {
    fn start(data: &Path) -> Self {
        let server = Server::start(
            data,
            &[
                "--memory-budget-bytes",
                MEMORY_BUDGET,
                "--max-partitions",
                &MAX_PARTITIONS.to_string(),
                "--retention",
                "0",
            ],
        );
        let suite = Self { server, data: data.to_path_buf(), cases: Vec::new(), rss_max: 0 };
        let mut wire = suite.wire();
        assert_eq!(wire.produce("hostile", 0, honest_batch(3)).0, NONE);
        suite
    }

    fn wire(&self) -> Wire {
        Wire::connect(self.server.address)
    }

    /// The checks every case ends with.
    fn after(&mut self, case: &'static str, topic: &str, partition: i32) {
        let context = format!("after case {} ({case})", self.cases.len() + 1);
        // Others are served within a second.
        let started = Instant::now();
        let mut stream =
            TcpStream::connect(self.server.address).unwrap_or_else(|e| panic!("{context}: connect: {e}"));
        stream.set_read_timeout(Some(SERVED_WITHIN)).unwrap();
        stream.write_all(&wire::frame(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default())).unwrap();
        let mut size = [0u8; 4];
        stream
            .read_exact(&mut size)
            .unwrap_or_else(|e| panic!("{context}: no answer within {SERVED_WITHIN:?}: {e}"));
        assert!(started.elapsed() <= SERVED_WITHIN + Duration::from_millis(200), "{context}: slow answer");
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut body).unwrap();
        drop(stream);
        // The partition takes an honest append.
        let mut wire = self.wire();
        let (error, _) = wire.produce(topic, partition.max(0), honest_batch(2));
        assert_eq!(error, NONE, "{context}: {topic}-{partition} refuses an honest append");
        // Memory stays bounded.
        let rss = self.server.rss_anon_bytes();
        self.rss_max = self.rss_max.max(rss);
        assert!(rss < RSS_ANON_BOUND, "{context}: RssAnon {} MiB", rss >> 20);
        // The files are intact.
        inspect(&self.data, &context);
        self.cases.push(case);
    }

    /// Produces a lie to `hostile`-0 and checks the code; the log is unchanged.
    fn refuse(&mut self, case: &'static str, records: Bytes, expected: i16) {
        let mut wire = self.wire();
        let (_, end_before, _) = wire.fetch("hostile", 0, 0, 1);
        let (error, base_offset) = wire.produce("hostile", 0, records);
        assert_eq!((error, base_offset), (expected, -1), "case {case}");
        let (_, end_after, _) = wire.fetch("hostile", 0, 0, 1);
        assert_eq!(end_after, end_before, "case {case}: a refused batch never touches the log");
        self.after(case, "hostile", 0);
    }
}

fn inspect(data: &Path, context: &str) {
    common::assert_inspect_clean(data, context);
}

fn fetch_request(topic: &str, partitions: &[(i32, i64)], max_bytes: i32, partition_max: i32) -> FetchRequest {
    FetchRequest::default().with_max_wait_ms(0).with_max_bytes(max_bytes).with_topics(vec![
        fetch_request::FetchTopic::default().with_topic(wire::topic(topic)).with_partitions(
            partitions
                .iter()
                .map(|&(partition, offset)| {
                    fetch_request::FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(partition_max)
                })
                .collect(),
        ),
    ])
}

fn list_offsets(wire: &mut Wire, topic: &str, partition: i32, timestamp: i64) -> (i16, i64, i64) {
    let request =
        ListOffsetsRequest::default().with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(wire::topic(topic))
            .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(timestamp)])]);
    let response: ListOffsetsResponse = wire.call(ApiKey::ListOffsets, 7, &request);
    let p = &response.topics[0].partitions[0];
    (p.error_code, p.offset, p.timestamp)
}

fn create_topics(wire: &mut Wire, topics: &[(&str, i32)]) -> Vec<i16> {
    let request = CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(
        topics
            .iter()
            .map(|(name, partitions)| {
                create_topics_request::CreatableTopic::default()
                    .with_name(wire::topic(name))
                    .with_num_partitions(*partitions)
                    .with_replication_factor(1)
            })
            .collect(),
    );
    let response: CreateTopicsResponse = wire.call(ApiKey::CreateTopics, 7, &request);
    response.topics.iter().map(|t| t.error_code).collect()
}

fn commit(
    wire: &mut Wire,
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(StrBytes::from_string(member.to_string()))
        .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(wire::topic(topic))
            .with_partitions(vec![offset_commit_request::OffsetCommitRequestPartition::default()
                .with_partition_index(partition)
                .with_committed_offset(offset)])]);
    let response: OffsetCommitResponse = wire.call(ApiKey::OffsetCommit, 8, &request);
    response.topics[0].partitions[0].error_code
}

fn committed(wire: &mut Wire, group: &str, topic: &str, partition: i32) -> i64 {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![
            kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(wire::topic(topic))
                .with_partition_indexes(vec![partition]),
        ]));
    let response: OffsetFetchResponse = wire.call(ApiKey::OffsetFetch, 7, &request);
    response.topics[0].partitions[0].committed_offset
}

/// A raw frame of `size` declared bytes of which only `sent` are sent.
fn half_frame(size: i32, sent: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + sent);
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 9]); // Produce v9 header start
    frame.resize(4 + sent, 0x41);
    frame
}

/// Whether the broker closed `stream` (EOF or reset) within a few seconds.
fn closed_by_broker(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_)) && stream.read(&mut byte).map_or(true, |n| n == 0)
}

#[test]
fn a_hostile_client_gets_kafkas_errors_and_the_broker_keeps_serving_bounded_and_intact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut suite = Suite::start(&data);

    // ---- Produce: CRC-valid batches whose fields lie.
    suite.refuse(
        "record_count i32::MAX",
        lie(3, |b| {
            b.record_count = i32::MAX;
            b.last_offset_delta = i32::MAX - 1;
        }),
        INVALID_RECORD,
    );
    suite.refuse(
        "record_count 0",
        lie(3, |b| {
            b.record_count = 0;
            b.last_offset_delta = -1;
        }),
        CORRUPT_MESSAGE,
    );
    suite.refuse(
        "record_count above the records present",
        lie(3, |b| {
            b.record_count = 4;
            b.last_offset_delta = 3;
        }),
        INVALID_RECORD,
    );
    suite.refuse(
        "record_count below the records present",
        lie(3, |b| {
            b.record_count = 2;
            b.last_offset_delta = 1;
        }),
        INVALID_RECORD,
    );
    suite.refuse(
        "last_offset_delta disagrees with the count",
        lie(3, |b| b.last_offset_delta = 7),
        CORRUPT_MESSAGE,
    );
    suite.refuse(
        "offset delta 2,000,000,000",
        lie(3, |b| b.records[1].offset_delta = 2_000_000_000),
        INVALID_RECORD,
    );
    suite.refuse(
        "decreasing offset deltas",
        lie(3, |b| {
            b.records[0].offset_delta = 2;
            b.records[2].offset_delta = 0;
        }),
        INVALID_RECORD,
    );
    suite.refuse("repeated offset deltas", lie(3, |b| b.records[2].offset_delta = 1), INVALID_RECORD);
    suite.refuse(
        "header key not UTF-8",
        lie(2, |b| b.records[1].headers[0].0 = Field::Bytes(vec![0xc3, 0x28])),
        INVALID_RECORD,
    );
    suite.refuse("null header key", lie(2, |b| b.records[0].headers[0].0 = Field::Null), INVALID_RECORD);
    suite.refuse(
        "key length -2",
        lie(2, |b| b.records[0].key = Field::Lying(-2, b"k".to_vec())),
        INVALID_RECORD,
    );
    suite.refuse(
        "value length past the record",
        lie(2, |b| b.records[1].value = Field::Lying(1 << 20, b"v".to_vec())),
        INVALID_RECORD,
    );
    suite.refuse(
        "record length past the batch",
        lie(2, |b| b.records[1].length_adjust = 1000),
        INVALID_RECORD,
    );
    suite.refuse("record length short", lie(2, |b| b.records[0].length_adjust = -1), INVALID_RECORD);
    suite.refuse(
        "over-long varint",
        lie(2, |b| b.records[0].overlong_offset_delta = Some(7)),
        INVALID_RECORD,
    );
    suite.refuse(
        "bytes inside a record after its headers",
        lie(2, |b| b.records[0].trailing = vec![0, 0]),
        INVALID_RECORD,
    );
    suite.refuse("bytes after the last record", lie(2, |b| b.trailing = vec![1, 2, 3]), INVALID_RECORD);
    suite.refuse("max_timestamp not the largest", lie(3, |b| b.max_timestamp += 1), INVALID_RECORD);
    suite.refuse(
        "timestamp delta overflows",
        lie(2, |b| {
            b.records[1].timestamp_delta = i64::MAX;
        }),
        INVALID_RECORD,
    );
    suite.refuse("control batch from a client", lie(1, |b| b.attributes |= 0x20), INVALID_RECORD);
    suite.refuse("transactional batch", lie(1, |b| b.attributes |= 0x10), INVALID_RECORD);
    suite.refuse("codec 6", lie(1, |b| b.attributes |= 6), UNSUPPORTED_COMPRESSION_TYPE);
    let bomb = Bytes::from(
        engine::lies::kafka_encoded(
            kafka_protocol::records::Compression::Zstd,
            now_ms(),
            vec![(None, Some(Bytes::from(vec![0u8; 96 << 20])))],
        )
        .to_vec(),
    );
    assert!(bomb.len() < 1 << 20, "a small bomb ({} bytes)", bomb.len());
    suite.refuse("zstd bomb of 96 MiB of zeros", bomb, INVALID_RECORD);
    let mut bad_crc = BytesMut::from(&honest_batch(2)[..]);
    bad_crc[30] ^= 1;
    suite.refuse("CRC mismatch", Bytes::from(bad_crc.to_vec()), CORRUPT_MESSAGE);
    let mut magic = BytesMut::from(&honest_batch(2)[..]);
    magic[16] = 1;
    suite.refuse("magic 1", recrc(magic), CORRUPT_MESSAGE);
    let mut long = BytesMut::from(&honest_batch(2)[..]);
    let declared = i32::from_be_bytes(long[8..12].try_into().unwrap()) + 100;
    long[8..12].copy_from_slice(&declared.to_be_bytes());
    suite.refuse("batch_length past the records field", Bytes::from(long.to_vec()), CORRUPT_MESSAGE);
    let mut short = BytesMut::from(&honest_batch(2)[..]);
    short[8..12].copy_from_slice(&10i32.to_be_bytes());
    suite.refuse("batch_length below a header", Bytes::from(short.to_vec()), CORRUPT_MESSAGE);
    let huge = {
        let mut builder = BatchBuilder::with_capacity(9 << 20);
        builder.push(now_ms(), None, Some(&vec![7u8; 9 << 20]));
        Bytes::from(builder.finish().to_vec())
    };
    suite.refuse("a 9 MiB batch (above the 8 MiB batch limit)", huge, MESSAGE_TOO_LARGE);

    // ---- Produce to partitions that do not exist.
    let mut wire = suite.wire();
    assert_eq!(wire.produce("hostile", -1, honest_batch(1)).0, UNKNOWN_TOPIC_OR_PARTITION);
    suite.after("produce to partition -1", "hostile", 0);
    let mut wire = suite.wire();
    assert_eq!(wire.produce("hostile", 999, honest_batch(1)).0, UNKNOWN_TOPIC_OR_PARTITION);
    suite.after("produce to partition 999", "hostile", 0);

    // ---- Fetch and ListOffsets lies.
    let mut wire = suite.wire();
    let started = Instant::now();
    let repeated: Vec<(i32, i64)> = (0..20_000).map(|_| (0, 0)).collect();
    let response: FetchResponse =
        wire.call(ApiKey::Fetch, 11, &fetch_request("hostile", &repeated, i32::MAX, i32::MAX));
    assert_eq!(response.responses[0].partitions.len(), 1, "a repeated partition is read once");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    suite.after("fetch naming one partition 20,000 times with i32::MAX bytes", "hostile", 0);
    let mut wire = suite.wire();
    assert_eq!(wire.fetch("hostile", -1, 0, 1 << 20).0, UNKNOWN_TOPIC_OR_PARTITION);
    suite.after("fetch partition -1", "hostile", 0);
    let mut wire = suite.wire();
    assert_eq!(wire.fetch("hostile", 0, -5, 1 << 20).0, OFFSET_OUT_OF_RANGE);
    suite.after("fetch offset -5", "hostile", 0);
    let mut wire = suite.wire();
    assert_eq!(list_offsets(&mut wire, "hostile", -1, -1).0, UNKNOWN_TOPIC_OR_PARTITION);
    suite.after("list offsets of partition -1", "hostile", 0);
    let mut wire = suite.wire();
    let newest = now_ms() + 3_600_000;
    let mut builder = BatchBuilder::default();
    builder.push(newest - 5, None, Some(b"a"));
    builder.push(newest, None, Some(b"b"));
    builder.push(newest - 9, None, Some(b"c"));
    let (error, base) = wire.produce("hostile", 0, Bytes::from(builder.finish().to_vec()));
    assert_eq!(error, NONE);
    assert_eq!(
        list_offsets(&mut wire, "hostile", 0, -3),
        (NONE, base + 1, newest),
        "-3 is the max-timestamp record"
    );
    assert_eq!(list_offsets(&mut wire, "hostile", 0, newest + 1), (NONE, -1, -1));
    suite.after("list offsets -3 and a timestamp past every record", "hostile", 0);

    // ---- Fetch budgets: the request's max_bytes and only the first partition over it.
    let mut wire = suite.wire();
    assert_eq!(create_topics(&mut wire, &[("budget", 2)]), vec![NONE]);
    for partition in 0..2 {
        for _ in 0..4 {
            assert_eq!(wire.produce("budget", partition, honest_batch(50)).0, NONE);
        }
    }
    let response: FetchResponse =
        wire.call(ApiKey::Fetch, 11, &fetch_request("budget", &[(0, 0), (1, 0)], 100, i32::MAX));
    let sizes: Vec<usize> =
        response.responses[0].partitions.iter().map(|p| p.records.as_ref().map_or(0, Bytes::len)).collect();
    assert!(
        sizes[0] > 100 && sizes[1] == 0,
        "first partition one batch over the budget, the second none: {sizes:?}"
    );
    suite.after("fetch max_bytes 100 over two partitions", "budget", 1);
    let mut wire = suite.wire();
    assert_eq!(create_topics(&mut wire, &[("firstempty", 2)]), vec![NONE]);
    assert_eq!(wire.produce("firstempty", 1, honest_batch(50)).0, NONE);
    let response: FetchResponse =
        wire.call(ApiKey::Fetch, 11, &fetch_request("firstempty", &[(0, 0), (1, 0)], 100, 100));
    let sizes: Vec<usize> =
        response.responses[0].partitions.iter().map(|p| p.records.as_ref().map_or(0, Bytes::len)).collect();
    assert!(sizes[0] == 0 && sizes[1] > 100, "the first non-empty partition may exceed its share: {sizes:?}");
    suite.after("fetch whose first non-empty partition holds a batch above every limit", "firstempty", 1);

    // ---- Frames: sizes that lie, half frames, unknown keys.
    for (case, frame) in [
        ("frame size -1", (-1i32).to_be_bytes().to_vec()),
        ("frame size above --max-request-bytes", (200i32 << 20).to_be_bytes().to_vec()),
        ("unknown API key", {
            let mut f = vec![0, 0, 0, 8, 0x7f, 0x7f, 0, 0, 0, 0, 0, 1];
            f.truncate(12);
            f
        }),
        ("unsupported Produce version", {
            let mut f = 10i32.to_be_bytes().to_vec();
            f.extend_from_slice(&[0, 0, 0, 99, 0, 0, 0, 1, 0xff, 0xff]);
            f
        }),
    ] {
        let mut stream = TcpStream::connect(suite.server.address).unwrap();
        stream.write_all(&frame).unwrap();
        assert!(closed_by_broker(&mut stream), "case {case}: the connection is closed");
        suite.after(case, "hostile", 0);
    }
    // One connection declares 100 MB and sends 2 KB, and stays.
    let mut slow = TcpStream::connect(suite.server.address).unwrap();
    slow.write_all(&half_frame(100_000_000, 2048)).unwrap();
    suite.after("a half-sent 100 MB frame", "hostile", 0);
    // 2,000 of them (4 MB sent in all).
    let floods: Vec<TcpStream> = (0..2000)
        .map(|_| {
            let mut stream = TcpStream::connect(suite.server.address).unwrap();
            stream.write_all(&half_frame(100_000_000, 2048)).unwrap();
            stream
        })
        .collect();
    suite.after("2,000 connections each with a half-sent 100 MB frame", "hostile", 0);
    drop(floods);
    drop(slow);

    // ---- Clients that pipeline big fetches and never read.
    let mut wire = suite.wire();
    assert_eq!(create_topics(&mut wire, &[("big", 1)]), vec![NONE]);
    let mebibyte = {
        let mut builder = BatchBuilder::with_capacity(1 << 20);
        for i in 0..16 {
            builder.push(now_ms(), None, Some(&vec![b'a' + i as u8; 64 << 10]));
        }
        Bytes::from(builder.finish().to_vec())
    };
    for _ in 0..64 {
        assert_eq!(wire.produce("big", 0, mebibyte.clone()).0, NONE);
    }
    let big_fetch = wire::frame(ApiKey::Fetch, 11, 1, &fetch_request("big", &[(0, 0)], i32::MAX, i32::MAX));
    let stuck: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = TcpStream::connect(suite.server.address).unwrap();
            stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            for _ in 0..16 {
                if stream.write_all(&big_fetch).is_err() {
                    break;
                }
            }
            stream
        })
        .collect();
    // Watch the broker for a while with the readers stuck: memory stays bounded.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let rss = suite.server.rss_anon_bytes();
        assert!(rss < RSS_ANON_BOUND, "RssAnon {} MiB with non-reading clients", rss >> 20);
        std::thread::sleep(Duration::from_millis(100));
    }
    suite.after("4 clients pipelining 16 fetches of 64 MiB each without reading", "big", 0);
    drop(stuck);

    // ---- Topics and partitions: floods, limits, invalid requests.
    let mut wire = suite.wire();
    let codes = create_topics(
        &mut wire,
        &(0..9)
            .map(|i| (["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8"][i], 10_000))
            .collect::<Vec<_>>(),
    );
    assert!(codes.iter().all(|&c| c == INVALID_PARTITIONS || c == POLICY_VIOLATION), "{codes:?}");
    suite.after("CreateTopics of 9 x 10,000 partitions", "hostile", 0);
    let mut wire = suite.wire();
    assert_eq!(create_topics(&mut wire, &[("huge", (MAX_PARTITIONS + 1) as i32)]), vec![POLICY_VIOLATION]);
    suite.after("CreateTopics past --max-partitions", "hostile", 0);
    let mut wire = suite.wire();
    assert_eq!(create_topics(&mut wire, &[("negative", -5)]), vec![INVALID_PARTITIONS]);
    suite.after("CreateTopics with -5 partitions", "hostile", 0);
    let mut wire = suite.wire();
    assert_eq!(create_topics(&mut wire, &[("bad/name", 1)]), vec![INVALID_TOPIC_EXCEPTION]);
    suite.after("CreateTopics with an invalid name", "hostile", 0);
    let mut wire = suite.wire();
    let names: Vec<_> = (0..100_000)
        .map(|i| {
            metadata_request::MetadataRequestTopic::default()
                .with_name(Some(wire::topic(&format!("flood{i}"))))
        })
        .collect();
    let started = Instant::now();
    let response: MetadataResponse = wire.call(
        ApiKey::Metadata,
        9,
        &MetadataRequest::default().with_topics(Some(names)).with_allow_auto_topic_creation(true),
    );
    let created = response.topics.iter().filter(|t| t.error_code == NONE).count();
    let limited = response.topics.iter().filter(|t| t.error_code == POLICY_VIOLATION).count();
    assert_eq!(created + limited, 100_000, "every flooded name answered");
    assert!(created < MAX_PARTITIONS as usize && limited > 99_000, "created {created}, limited {limited}");
    println!(
        "metadata flood of 100,000 names: {created} created, {limited} refused in {:?}",
        started.elapsed()
    );
    let descriptors = std::fs::read_dir(format!("/proc/{}/fd", suite.server.pid())).unwrap().count();
    assert!(descriptors < 8 * MAX_PARTITIONS as usize, "{descriptors} descriptors open");
    suite.after("Metadata auto-creating 100,000 topics", "hostile", 0);

    // ---- Groups.
    let mut wire = suite.wire();
    assert_eq!(commit(&mut wire, "g", -1, "", "hostile", 7, 5), UNKNOWN_TOPIC_OR_PARTITION);
    assert_eq!(commit(&mut wire, "g", -1, "", "nope", 0, 5), UNKNOWN_TOPIC_OR_PARTITION);
    suite.after("OffsetCommit to partitions that do not exist", "hostile", 0);
    let mut wire = suite.wire();
    assert_eq!(commit(&mut wire, &"x".repeat(300), -1, "", "hostile", 0, 1), INVALID_GROUP_ID);
    suite.after("OffsetCommit with a 300-byte group id", "hostile", 0);
    let mut member = suite.wire();
    let join = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("live")))
        .with_session_timeout_ms(30_000)
        .with_rebalance_timeout_ms(30_000)
        .with_member_id(StrBytes::from_static_str(""))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default()
            .with_name(StrBytes::from_static_str("range"))
            .with_metadata(Bytes::new())]);
    let joined: JoinGroupResponse = member.call(ApiKey::JoinGroup, 7, &join);
    assert_eq!(joined.error_code, NONE);
    let synced: SyncGroupResponse = member.call(
        ApiKey::SyncGroup,
        5,
        &SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("live")))
            .with_generation_id(joined.generation_id)
            .with_member_id(joined.member_id.clone()),
    );
    assert_eq!(synced.error_code, NONE);
    assert_eq!(commit(&mut member, "live", joined.generation_id, &joined.member_id, "hostile", 0, 2), NONE);
    let mut intruder = suite.wire();
    assert_eq!(commit(&mut intruder, "live", -1, "", "hostile", 0, 0), UNKNOWN_MEMBER_ID);
    assert_eq!(committed(&mut intruder, "live", "hostile", 0), 2, "the live member's offset stands");
    suite.after("generation -1 commit over a live member's offsets", "hostile", 0);

    // ---- Connections past --max-connections (a broker of its own).
    {
        let small = dir.path().join("small");
        let limited = Server::start(&small, &["--max-connections", "16"]);
        // Each of 16 connections is answered. The start-up probe's connection may hold
        // a slot for a moment after it closed: a refused one is retried (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut open: Vec<Wire> = Vec::new();
        while open.len() < 16 {
            let mut wire = Wire::connect(limited.address);
            if wire.call_raw(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).is_ok() {
                open.push(wire);
            } else {
                assert!(Instant::now() < deadline, "only {} of 16 connections were served", open.len());
            }
        }
        let mut extra = TcpStream::connect(limited.address).unwrap();
        assert!(closed_by_broker(&mut extra), "the 17th connection is closed");
        assert!(limited.log().contains("--max-connections"), "the broker says why");
        drop(open.pop());
        // The slot comes back: a new connection is served (awaited, bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut stream = TcpStream::connect(limited.address).unwrap();
            stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            stream
                .write_all(&wire::frame(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default()))
                .unwrap();
            let mut size = [0u8; 4];
            if stream.read_exact(&mut size).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "a freed slot is never reused");
        }
        suite.after("connections past --max-connections", "hostile", 0);
    }

    // ---- Memory is given back once the load is gone (every hostile connection closed).
    let deadline = Instant::now() + Duration::from_secs(10);
    let returned = loop {
        let rss = suite.server.rss_anon_bytes();
        if rss < RSS_ANON_IDLE_BOUND || Instant::now() > deadline {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("RssAnon after the load went: {} MiB (peak {} MiB)", returned >> 20, suite.rss_max >> 20);
    assert!(returned < RSS_ANON_IDLE_BOUND, "RssAnon stays at {} MiB after the load went", returned >> 20);

    // ---- The end: a clean stop, intact files, a restart that serves what was acked.
    let mut wire = suite.wire();
    let before = wire.fetch_all("hostile", 0);
    let address = suite.server.address;
    let Suite { server, data, cases, rss_max } = suite;
    let (stopped, log) = server.stop();
    assert!(stopped, "clean stop: {log}");
    inspect(&data, "after the stop");
    let server = Server::start_at(
        &data,
        address,
        &["--max-partitions", &MAX_PARTITIONS.to_string(), "--retention", "0"],
    );
    let mut wire = Wire::connect(server.address);
    assert_eq!(wire.fetch_all("hostile", 0), before, "the restart serves what was acknowledged");
    assert_eq!(wire.produce("hostile", 0, honest_batch(1)).0, NONE);
    println!(
        "{} hostile cases; broker RssAnon peaked at {} MiB (bound {} MiB)",
        cases.len(),
        rss_max >> 20,
        RSS_ANON_BOUND >> 20
    );
    assert!(cases.len() >= 40, "{} cases", cases.len());
}
