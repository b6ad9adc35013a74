//! A raw Kafka-protocol connection for tests that must say exactly what they mean
//! (including lies): requests encoded with `kafka-protocol`, one frame at a time,
//! responses decoded with the same crate.
#![allow(dead_code)] // each test binary uses its own subset

use bytes::{Buf, BufMut, Bytes, BytesMut};
use engine::batch::BatchView;
use kafka_protocol::messages::{
    fetch_request, produce_request, ApiKey, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Longest a test waits for one answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One request frame: size prefix, header, body.
pub fn frame(api_key: ApiKey, version: i16, correlation_id: i32, body: &impl Encodable) -> Vec<u8> {
    let mut buffer = BytesMut::new();
    buffer.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("wire-test")))
        .encode(&mut buffer, api_key.request_header_version(version))
        .unwrap();
    body.encode(&mut buffer, version).unwrap();
    let length = (buffer.len() - 4) as i32;
    buffer[0..4].copy_from_slice(&length.to_be_bytes());
    buffer.to_vec()
}

/// A topic name.
pub fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A connection (over TCP, or any byte stream such as a TLS session).
pub struct Wire<S = TcpStream> {
    /// The socket (tests may write raw bytes to it).
    pub stream: S,
    correlation_id: i32,
}

impl<S: Read + Write> Wire<S> {
    /// A connection over an already open stream.
    pub fn over(stream: S) -> Self {
        Self { stream, correlation_id: 0 }
    }
}

impl Wire {
    /// Connects with [`ANSWER_TIMEOUT`] on reads.
    pub fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect(address).expect("connect to the broker");
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self { stream, correlation_id: 0 }
    }
}

impl<S: Read + Write> Wire<S> {
    /// Sends a request and returns the response body bytes (after the header), or the
    /// I/O error that ended the exchange.
    pub fn call_raw(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: &impl Encodable,
    ) -> std::io::Result<Bytes> {
        self.correlation_id += 1;
        let request = frame(api_key, version, self.correlation_id, body);
        self.stream.write_all(&request)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut response = vec![0u8; i32::from_be_bytes(size).clamp(0, 1 << 28) as usize];
        self.stream.read_exact(&mut response)?;
        let mut response = Bytes::from(response);
        let header = ResponseHeader::decode(&mut response, api_key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, self.correlation_id, "answers come in request order");
        Ok(response)
    }

    /// Sends a request and decodes its response.
    pub fn call<R: Decodable>(&mut self, api_key: ApiKey, version: i16, body: &impl Encodable) -> R {
        let mut bytes = self.call_raw(api_key, version, body).expect("an answer");
        let response = R::decode(&mut bytes, version).expect("a decodable answer");
        assert_eq!(bytes.remaining(), 0, "nothing after the response");
        response
    }

    /// Produces `records` (raw RecordBatch bytes, any lies included) to one partition
    /// with acks=all; returns (error code, base offset).
    pub fn produce(&mut self, topic_name: &str, partition: i32, records: Bytes) -> (i16, i64) {
        let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![
            produce_request::TopicProduceData::default().with_name(topic(topic_name)).with_partition_data(
                vec![produce_request::PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(records))],
            ),
        ]);
        let response: ProduceResponse = self.call(ApiKey::Produce, 9, &request);
        let partition = &response.responses[0].partition_responses[0];
        (partition.error_code, partition.base_offset)
    }

    /// One Fetch of one partition from `offset`: (error code, high watermark, batches as
    /// (base offset, bytes from the attributes on)).
    pub fn fetch(
        &mut self,
        topic_name: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
    ) -> (i16, i64, Vec<(i64, Vec<u8>)>) {
        let request =
            FetchRequest::default().with_max_wait_ms(0).with_max_bytes(max_bytes).with_topics(vec![
                fetch_request::FetchTopic::default().with_topic(topic(topic_name)).with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(max_bytes),
                ]),
            ]);
        let response: FetchResponse = self.call(ApiKey::Fetch, 11, &request);
        let data = &response.responses[0].partitions[0];
        let mut batches = Vec::new();
        let mut rest = data.records.clone().unwrap_or_default();
        while !rest.is_empty() {
            let view = BatchView::parse(&rest).expect("fetched batches are whole and valid");
            batches.push((view.base_offset(), view.bytes()[21..].to_vec()));
            let len = view.len();
            rest.advance(len);
        }
        (data.error_code, data.high_watermark, batches)
    }

    /// Every batch of a partition from 0 to its high watermark.
    pub fn fetch_all(&mut self, topic_name: &str, partition: i32) -> Vec<(i64, Vec<u8>)> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let (error, high_watermark, batches) = self.fetch(topic_name, partition, offset, 1 << 20);
            assert_eq!(error, 0, "fetch at {offset}");
            let Some(last) = batches.last() else {
                assert_eq!(offset, high_watermark, "no batches below the high watermark at {offset}");
                return all;
            };
            let view_next = {
                let count = i32::from_be_bytes(last.1[36..40].try_into().unwrap());
                last.0 + i64::from(count)
            };
            all.extend(batches);
            offset = view_next;
            if offset >= high_watermark {
                return all;
            }
        }
    }
}
