//! The Kafka wire protocol: every shard accepts connections on the same address
//! (SO_REUSEPORT, so the kernel spreads connections over shards) and serves them on its
//! own thread. Requests for partitions another shard owns cross the mesh
//! ([`Shard::route`]) and come back.
//!
//! Message codecs are the `kafka-protocol` crate's; record bytes pass through untouched
//! (a produced batch goes to the log as is, a fetch answers with mapped segment bytes).
//!
//! Framing: a request is a big-endian `i32` size, then a request header and body; a
//! frame larger than `max_request_bytes` or one that does not decode closes the
//! connection with a log line (Kafka does the same for malformed frames). Up to
//! [`PIPELINE_DEPTH`] requests (and [`PIPELINE_BYTES_MAX`] bytes of them) of one
//! connection are handled at once; responses go
//! out in request order, and a produce request's batches are sent to their owners
//! before the next request is read, so appends keep the connection's order.
//! `acks=0` produce requests get no response.
//!
//! APIs so far: ApiVersions, Metadata (with auto-creation), Produce (idempotent
//! producers' sequences checked per partition), Fetch (long poll), ListOffsets,
//! CreateTopics, InitProducerId (no transactions). The rest of the list
//! (DeleteTopics, consumer groups, committed offsets) follows.

use crate::batch::{self, BatchError};
use crate::error::EngineError;
use crate::log::{AppendError, ReadError};
use crate::shard::{AckLevel, Reply, Request, Shard};
use crate::types::TopicPartition;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::{join_all, select_all};
use kafka_protocol::messages::{
    api_versions_response, create_topics_response, delete_topics_response, fetch_response,
    find_coordinator_response, join_group_response, leave_group_response, list_offsets_response,
    metadata_response, offset_commit_response, offset_fetch_response, produce_response, ApiKey,
    ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, FetchRequest, FetchResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse, InitProducerIdRequest,
    InitProducerIdResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse,
    ProducerId, RequestHeader, ResponseHeader, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::net::SocketAddr;
use std::rc::Rc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The one broker id corelog answers as.
pub const NODE_ID: i32 = 0;
/// Backlog of each shard's listening socket.
pub const LISTEN_BACKLOG: i32 = 1024;
/// Longest a fetch may wait for `min_bytes`.
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;

/// Kafka error codes corelog answers with.
mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
}

/// API keys and the version ranges corelog serves (what librdkafka 2.x negotiates).
const SUPPORTED: [(ApiKey, i16, i16); 15] = [
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::InitProducerId, 0, 4),
];

fn supported(api_key: ApiKey, version: i16) -> bool {
    SUPPORTED.iter().any(|(key, min, max)| *key == api_key && (*min..=*max).contains(&version))
}

/// Binds a non-blocking SO_REUSEPORT listener on `address` for the calling shard.
pub(crate) fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections until the shard stops, serving each on its own task.
pub(crate) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let advertised = listener.local_addr().ok();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = ConnectionSlot::take(&shard) else {
                    refuse_connection(&shard, peer);
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shard = shard.clone();
                tokio_uring::spawn(async move {
                    let _slot = slot;
                    if let Err(reason) = serve(shard, stream, advertised).await {
                        tracing::info!(%peer, "closing Kafka connection: {reason}");
                    }
                });
            }
            Err(error) => {
                tracing::warn!("accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        if shard.stopping() {
            return;
        }
    }
}

/// One of the broker's [`crate::EngineConfig::max_connections`] connection slots,
/// given back when the connection ends.
struct ConnectionSlot(Rc<Shard>);

impl ConnectionSlot {
    fn take(shard: &Rc<Shard>) -> Option<Self> {
        let open = shard.catalog.connections.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if open >= shard.config.max_connections {
            shard.catalog.connections.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("corelog_kafka_connections").increment(1.0);
        Some(Self(shard.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.catalog.connections.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        metrics::gauge!("corelog_kafka_connections").decrement(1.0);
    }
}

/// Closes a connection over the limit, saying so at most once a second per shard.
fn refuse_connection(shard: &Rc<Shard>, peer: SocketAddr) {
    metrics::counter!("corelog_kafka_connections_refused_total").increment(1);
    thread_local! { static LAST_LOG_MS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) }; }
    let now = crate::types::now_ms();
    if LAST_LOG_MS.with(|last| now - last.replace(now) >= 1000) {
        tracing::warn!(%peer, limit = shard.config.max_connections, "connection refused: the broker is at --max-connections");
    }
}

/// A response frame ready to write, with the memory budget it holds until written.
struct Outgoing {
    bytes: BytesMut,
    _budget: Option<Held>,
}

/// Response bytes held in the connection's and the broker's budgets.
type Held = (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit);

impl From<BytesMut> for Outgoing {
    fn from(bytes: BytesMut) -> Self {
        Self { bytes, _budget: None }
    }
}

async fn serve(shard: Rc<Shard>, stream: TcpStream, advertised: Option<SocketAddr>) -> Result<(), String> {
    let (reader, mut writer) = stream.into_split();
    let (responses, mut pending) = tokio::sync::mpsc::channel::<Responding>(PIPELINE_DEPTH);
    let written = tokio_uring::spawn(async move {
        while let Some(response) = pending.recv().await {
            // None: acks=0, no response.
            if let Some(outgoing) = response.await.map_err(|e| format!("request task failed: {e}"))?? {
                let timeout = std::time::Duration::from_millis(RESPONSE_WRITE_TIMEOUT_MS);
                tokio::time::timeout(timeout, writer.write_all(&outgoing.bytes))
                    .await
                    .map_err(|_| format!("the client read no response for {RESPONSE_WRITE_TIMEOUT_MS} ms"))?
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok::<(), String>(())
    });
    let read = read_requests(&shard, reader, advertised, responses).await;
    // The reader stopped (end of stream or bad input): answer what was accepted, then close.
    let written = written.await.map_err(|e| format!("writer task failed: {e}"))?;
    read.and(written)
}

/// A response being computed: the encoded frame, or none for acks=0.
type Responding = tokio::task::JoinHandle<Result<Option<Outgoing>, String>>;

/// Requests of one connection handled at once; their responses still go out in order.
pub const PIPELINE_DEPTH: usize = 64;
/// Request bytes one connection may have in flight (at least one maximal frame).
pub const PIPELINE_BYTES_MAX: usize = 64 << 20;
/// Response bytes one connection may have encoded and not yet written (a client that
/// does not read its responses stalls only itself once this is reached).
pub const RESPONSE_BYTES_PER_CONNECTION_MAX: usize = 64 << 20;
/// Longest a connection may stay silent between requests (Kafka's
/// `connections.max.idle.ms`).
pub const CONNECTION_IDLE_MS: u64 = 600_000;
/// Longest a response may take to be written (a client that stops reading is closed).
pub const RESPONSE_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Longest the rest of a frame may take to arrive once its size was read.
pub const FRAME_READ_TIMEOUT_MS: u64 = 30_000;
/// A frame's first bytes are taken from the broker's memory budget in a chunk of this
/// size, later ones in chunks as large as what already arrived, so a frame that
/// declares a large size and sends little holds little.
pub const FRAME_CHUNK_BYTES: usize = 64 << 10;

/// Reads frames and starts handling each; produce requests are submitted (phase one)
/// before the next frame is read, so appends keep the connection's order.
async fn read_requests(
    shard: &Rc<Shard>,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    advertised: Option<SocketAddr>,
    responses: tokio::sync::mpsc::Sender<Responding>,
) -> Result<(), String> {
    let max = shard.config.max_request_bytes;
    let budget_bytes = PIPELINE_BYTES_MAX.max(max);
    let in_flight_bytes = std::sync::Arc::new(tokio::sync::Semaphore::new(budget_bytes));
    let response_bytes = std::sync::Arc::new(tokio::sync::Semaphore::new(RESPONSE_BYTES_PER_CONNECTION_MAX));
    let idle = std::time::Duration::from_millis(CONNECTION_IDLE_MS);
    loop {
        let size = match tokio::time::timeout(idle, reader.read_i32()).await {
            Err(_) => return Err(format!("idle for {CONNECTION_IDLE_MS} ms")),
            Ok(Ok(size)) => size,
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(error)) => return Err(error.to_string()),
        };
        if size < 8 || size as usize > max {
            return Err(format!("frame of {size} bytes outside 8..={max}"));
        }
        // Bound the bytes of requests in flight, not only their number.
        let permit =
            in_flight_bytes.clone().acquire_many_owned(size as u32).await.map_err(|e| e.to_string())?;
        let (frame, memory) = read_frame(shard, &mut reader, size as usize).await?;
        let permit = (permit, memory);
        let mut frame = frame.freeze();
        let (api_key, version, header) = decode_header(&mut frame)?;
        let api = api_name(api_key);
        metrics::counter!("corelog_kafka_requests_total", "api" => api).increment(1);
        metrics::counter!("corelog_kafka_request_bytes_total", "api" => api).increment(size as u64 + 4);
        let started = std::time::Instant::now();
        let correlation_id = header.correlation_id;
        let responses_budget = response_bytes.clone();
        let task = if api_key == ApiKey::Produce {
            let request = ProduceRequest::decode(&mut frame, version)
                .map_err(|e| format!("malformed Produce v{version}: {e:#}"))?;
            let acks = request.acks;
            let submitted = produce_submit(shard, request).await;
            tokio_uring::spawn(async move {
                let _permit = permit;
                let response = produce_finish(submitted).await;
                let body = encode(&response, version)?;
                record_latency(api, started);
                Ok(if acks == 0 {
                    None
                } else {
                    Some(response_frame(api_key, version, correlation_id, &body)?.into())
                })
            })
        } else {
            let shard = shard.clone();
            let client_id = header.client_id.as_ref().map_or(String::new(), |c| c.to_string());
            tokio_uring::spawn(async move {
                let _permit = permit;
                let budget =
                    Budget { connection: responses_budget, broker: shard.catalog.response_memory.clone() };
                let answer =
                    handle(&shard, api_key, version, &mut frame, advertised, &client_id, &budget).await?;
                record_latency(api, started);
                answer
                    .map(|(response_version, body, held)| {
                        response_frame(api_key, response_version, correlation_id, &body)
                            .map(|bytes| Outgoing { bytes, _budget: held })
                    })
                    .transpose()
            })
        };
        if responses.send(task).await.is_err() {
            return Ok(()); // the writer stopped: the connection is closing
        }
    }
}

/// Reads the `size` bytes of a frame, taking them from the broker's memory budget as
/// they arrive, within [`FRAME_READ_TIMEOUT_MS`]: the frame is read in chunks of
/// [`FRAME_CHUNK_BYTES`], then of as much as already arrived (so a frame that declares
/// a large size and sends little holds little), each allocated exactly after its
/// budget was granted; several chunks are joined into one buffer at the end (its bytes
/// counted too while both exist). Returns the frame and the budget it holds.
async fn read_frame(
    shard: &Rc<Shard>,
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    size: usize,
) -> Result<(BytesMut, tokio::sync::OwnedSemaphorePermit), String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(FRAME_READ_TIMEOUT_MS);
    let take = |bytes: usize| {
        let permits = shard.catalog.memory.clone().acquire_many_owned(bytes as u32);
        async move {
            tokio::time::timeout_at(deadline, permits)
                .await
                .map_err(|_| {
                    format!("no memory budget for a frame of {size} bytes within {FRAME_READ_TIMEOUT_MS} ms")
                })?
                .map_err(|e| e.to_string())
        }
    };
    let mut chunks: Vec<BytesMut> = Vec::new();
    let mut received = 0;
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    while received < size {
        let len = (size - received).min(FRAME_CHUNK_BYTES.max(received));
        let more = take(len).await?;
        match &mut held {
            Some(held) => held.merge(more),
            None => held = Some(more),
        }
        // Read straight into uninitialised capacity: zeroing a frame only to overwrite
        // it was a visible share of a busy shard's time (`memset` in `perf`).
        let mut chunk = BytesMut::with_capacity(len);
        let mut limited = (&mut *reader).take(len as u64);
        while chunk.len() < len {
            let read = tokio::time::timeout_at(deadline, limited.read_buf(&mut chunk))
                .await
                .map_err(|_| {
                    format!("a frame of {size} bytes did not arrive within {FRAME_READ_TIMEOUT_MS} ms")
                })?
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return Err(format!("connection closed inside a frame of {size} bytes"));
            }
        }
        received += len;
        chunks.push(chunk);
    }
    let held = held.expect("a frame has at least 8 bytes");
    if chunks.len() == 1 {
        return Ok((chunks.pop().expect("one chunk"), held));
    }
    let joined_budget = take(size).await?;
    let mut frame = BytesMut::with_capacity(size);
    for chunk in chunks {
        frame.extend_from_slice(&chunk);
    }
    // The chunks are gone: only the joined frame's share stays held.
    drop(held);
    Ok((frame, joined_budget))
}

/// Where a response's bytes are counted until written: the connection's share and the
/// broker's memory budget.
struct Budget {
    connection: std::sync::Arc<tokio::sync::Semaphore>,
    broker: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Budget {
    /// Waits until `bytes` (clamped to the connection's share) fit both budgets.
    async fn take(&self, bytes: usize) -> Option<Held> {
        let bytes = bytes.clamp(1, RESPONSE_BYTES_PER_CONNECTION_MAX) as u32;
        let connection = self.connection.clone().acquire_many_owned(bytes).await.ok()?;
        let broker = self.broker.clone().acquire_many_owned(bytes).await.ok()?;
        Some((connection, broker))
    }
}

fn record_latency(api: &'static str, started: std::time::Instant) {
    metrics::histogram!("corelog_kafka_request_seconds", "api" => api)
        .record(started.elapsed().as_secs_f64());
}

/// The whole response frame: size, header for `version`, body.
fn response_frame(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &[u8],
) -> Result<BytesMut, String> {
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, api_key.response_header_version(version))
        .map_err(|e| e.to_string())?;
    out.extend_from_slice(body);
    metrics::counter!("corelog_kafka_response_bytes_total", "api" => api_name(api_key))
        .increment(out.len() as u64);
    let length = (out.len() - 4) as i32;
    out[0..4].copy_from_slice(&length.to_be_bytes());
    Ok(out)
}

/// A static label for an API key.
fn api_name(api_key: ApiKey) -> &'static str {
    match api_key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        _ => "other",
    }
}

/// Decodes a request header from the front of `frame` (a frame without its size
/// prefix) and checks that corelog serves the API and version.
fn decode_header(frame: &mut Bytes) -> Result<(ApiKey, i16, RequestHeader), String> {
    if frame.len() < 4 {
        return Err("frame shorter than a request header".into());
    }
    let api_key = ApiKey::try_from(frame.clone().get_i16()).map_err(|_| "unknown API key".to_string())?;
    let version = frame.clone().slice(2..).get_i16();
    if !supported(api_key, version) && api_key != ApiKey::ApiVersions {
        return Err(format!("unsupported {api_key:?} v{version}"));
    }
    let header = RequestHeader::decode(frame, api_key.request_header_version(version))
        .map_err(|e| format!("bad request header: {e}"))?;
    Ok((api_key, version, header))
}

/// Decodes a whole request frame (without its size prefix) the way the broker does
/// before handling it: header, API/version check, body. For fuzzing and tests: bad
/// input is an `Err`, never a panic or an abort.
pub fn decode_request(frame: &[u8]) -> Result<kafka_protocol::messages::RequestKind, String> {
    let mut frame = Bytes::copy_from_slice(frame);
    let (api_key, version, _) = decode_header(&mut frame)?;
    if !supported(api_key, version) {
        return Err(format!("unsupported {api_key:?} v{version}"));
    }
    kafka_protocol::messages::RequestKind::decode(api_key, &mut frame, version).map_err(|e| format!("{e:#}"))
}

fn encode(message: &impl Encodable, version: i16) -> Result<BytesMut, String> {
    let mut body = BytesMut::new();
    message.encode(&mut body, version).map_err(|e| format!("encoding a response: {e}"))?;
    Ok(body)
}

/// Decodes and answers one request; `None` when no response is due (acks=0).
async fn handle(
    shard: &Rc<Shard>,
    api_key: ApiKey,
    version: i16,
    body: &mut Bytes,
    advertised: Option<SocketAddr>,
    client_id: &str,
    budget: &Budget,
) -> Result<Option<(i16, BytesMut, Option<Held>)>, String> {
    let bad = |e: anyhow::Error| format!("malformed {api_key:?} v{version}: {e:#}");
    let encoded = match api_key {
        ApiKey::ApiVersions => {
            if !supported(api_key, version) {
                // Kafka answers an unknown ApiVersions version in v0 with the error.
                let response = ApiVersionsResponse::default()
                    .with_error_code(code::UNSUPPORTED_VERSION)
                    .with_api_keys(api_versions());
                return Ok(Some((0, encode(&response, 0)?, None)));
            }
            let _request = ApiVersionsRequest::decode(body, version).map_err(bad)?;
            encode(&ApiVersionsResponse::default().with_api_keys(api_versions()), version)?
        }
        ApiKey::Metadata => {
            let request = MetadataRequest::decode(body, version).map_err(bad)?;
            let mut response = metadata(shard, request, advertised).await;
            if version < 2 {
                response.cluster_id = None;
            }
            encode(&response, version)?
        }
        ApiKey::Fetch => {
            let request = FetchRequest::decode(body, version).map_err(bad)?;
            let mut response = fetch(shard, request).await;
            if version < 5 {
                for partition in response.responses.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
                    partition.log_start_offset = -1;
                }
            }
            // The records are still zero-copy slices of the log: count them against the
            // budgets before encoding copies them, and until the frame is written.
            let partitions = response.responses.iter().flat_map(|t| t.partitions.iter());
            let estimate: usize = partitions.map(|p| p.records.as_ref().map_or(0, Bytes::len) + 64).sum();
            let held = budget.take(estimate + 1024).await;
            return Ok(Some((version, encode(&response, version)?, held)));
        }
        ApiKey::ListOffsets => {
            let request = ListOffsetsRequest::decode(body, version).map_err(bad)?;
            encode(&list_offsets(shard, request).await, version)?
        }
        ApiKey::CreateTopics => {
            let request = CreateTopicsRequest::decode(body, version).map_err(bad)?;
            let mut response = create_topics(shard, request).await;
            if version < 5 {
                for topic in &mut response.topics {
                    topic.num_partitions = -1;
                    topic.replication_factor = -1;
                }
            }
            encode(&response, version)?
        }
        ApiKey::DeleteTopics => {
            let request = DeleteTopicsRequest::decode(body, version).map_err(bad)?;
            let names: Vec<String> = if version >= 6 {
                request.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect()
            } else {
                request.topic_names.iter().map(|n| n.0.to_string()).collect()
            };
            let mut responses = Vec::with_capacity(names.len());
            for name in names {
                let error_code = match shard.catalog.remove(&name) {
                    Ok(partitions) => {
                        let deleted =
                            join_all((0..partitions).map(|p| {
                                shard.route(Request::DeletePartition(TopicPartition::new(&name, p)))
                            }))
                            .await;
                        deleted.iter().find_map(|r| r.as_ref().err()).map_or(code::NONE, error_code)
                    }
                    Err(error) => error_code(&error),
                };
                responses.push(
                    delete_topics_response::DeletableTopicResult::default()
                        .with_name(Some(topic_name(&name)))
                        .with_error_code(error_code),
                );
            }
            encode(&DeleteTopicsResponse::default().with_responses(responses), version)?
        }
        ApiKey::InitProducerId => {
            let request = InitProducerIdRequest::decode(body, version).map_err(bad)?;
            let response = if request.transactional_id.is_some() {
                // Transactions are not supported: there is no transaction coordinator.
                InitProducerIdResponse::default().with_error_code(code::COORDINATOR_NOT_AVAILABLE)
            } else {
                InitProducerIdResponse::default()
                    .with_producer_id(ProducerId(shard.catalog.allocate_producer_id()))
                    .with_producer_epoch(0)
            };
            encode(&response, version)?
        }
        ApiKey::FindCoordinator => {
            let request = FindCoordinatorRequest::decode(body, version).map_err(bad)?;
            encode(&find_coordinator(shard, request, version, advertised), version)?
        }
        ApiKey::JoinGroup => {
            let request = JoinGroupRequest::decode(body, version).map_err(bad)?;
            encode(&join_group(shard, request, version, client_id).await, version)?
        }
        ApiKey::SyncGroup => {
            let request = SyncGroupRequest::decode(body, version).map_err(bad)?;
            let assignments =
                request.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
            let (error_code, assignment) = shard
                .catalog
                .groups
                .sync(&request.group_id.0, request.generation_id, &request.member_id, assignments)
                .await;
            let mut response =
                SyncGroupResponse::default().with_error_code(error_code).with_assignment(assignment);
            if version >= 5 {
                response = response
                    .with_protocol_type(request.protocol_type)
                    .with_protocol_name(request.protocol_name);
            }
            encode(&response, version)?
        }
        ApiKey::Heartbeat => {
            let request = HeartbeatRequest::decode(body, version).map_err(bad)?;
            let error_code = shard.catalog.groups.heartbeat(
                &request.group_id.0,
                request.generation_id,
                &request.member_id,
            );
            encode(&HeartbeatResponse::default().with_error_code(error_code), version)?
        }
        ApiKey::LeaveGroup => {
            let request = LeaveGroupRequest::decode(body, version).map_err(bad)?;
            let ids: Vec<String> = if version >= 3 {
                request.members.iter().map(|m| m.member_id.to_string()).collect()
            } else {
                vec![request.member_id.to_string()]
            };
            let errors = shard.catalog.groups.leave(&request.group_id.0, &ids);
            let members = ids
                .iter()
                .zip(&errors)
                .map(|(id, error)| {
                    leave_group_response::MemberResponse::default()
                        .with_member_id(StrBytes::from_string(id.clone()))
                        .with_error_code(*error)
                })
                .collect();
            let response = if version >= 3 {
                LeaveGroupResponse::default().with_members(members)
            } else {
                LeaveGroupResponse::default().with_error_code(errors[0])
            };
            encode(&response, version)?
        }
        ApiKey::OffsetCommit => {
            let request = OffsetCommitRequest::decode(body, version).map_err(bad)?;
            let response = offset_commit(shard, &request);
            record_lag(shard, &request).await;
            encode(&response, version)?
        }
        ApiKey::OffsetFetch => {
            let request = OffsetFetchRequest::decode(body, version).map_err(bad)?;
            encode(&offset_fetch(shard, request), version)?
        }
        other => return Err(format!("unsupported API {other:?}")),
    };
    Ok(Some((version, encoded, None)))
}

fn api_versions() -> Vec<api_versions_response::ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            api_versions_response::ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect()
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Creates `topic` with the auto-create partition count, if allowed; returns its
/// partition count.
async fn ensure_topic(shard: &Rc<Shard>, topic: &str, allow_create: bool) -> Result<u32, i16> {
    if let Some(count) = shard.catalog.partition_count(topic) {
        return Ok(count);
    }
    let Some(partitions) = shard.config.auto_create_partitions.filter(|_| allow_create) else {
        return Err(code::UNKNOWN_TOPIC_OR_PARTITION);
    };
    match shard.catalog.add(topic, partitions) {
        Ok(()) | Err(EngineError::TopicExists(_)) => {}
        Err(EngineError::InvalidTopic(_)) => return Err(code::INVALID_TOPIC_EXCEPTION),
        Err(error) => return Err(error_code(&error)),
    }
    let opened = join_all(
        (0..partitions).map(|p| shard.route(Request::CreatePartition(TopicPartition::new(topic, p)))),
    )
    .await;
    if opened.iter().any(Result::is_err) {
        return Err(code::KAFKA_STORAGE_ERROR);
    }
    Ok(shard.catalog.partition_count(topic).unwrap_or(partitions))
}

async fn metadata(
    shard: &Rc<Shard>,
    request: MetadataRequest,
    advertised: Option<SocketAddr>,
) -> MetadataResponse {
    let address = advertised.or(shard.config.listen);
    let broker = metadata_response::MetadataResponseBroker::default()
        .with_node_id(BrokerId(NODE_ID))
        .with_host(StrBytes::from_string(address.map_or("127.0.0.1".into(), |a| a.ip().to_string())))
        .with_port(address.map_or(9092, |a| i32::from(a.port())));
    let names: Vec<String> = match &request.topics {
        None => shard.catalog.topics().into_keys().collect(),
        Some(topics) => topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect(),
    };
    let mut topics = Vec::with_capacity(names.len());
    for name in names {
        let topic = metadata_response::MetadataResponseTopic::default().with_name(Some(topic_name(&name)));
        let topic = match ensure_topic(shard, &name, request.allow_auto_topic_creation).await {
            Ok(count) => topic
                .with_topic_id(shard.catalog.topic_id(&name).map_or_else(Default::default, |id| id.0))
                .with_partitions(
                    (0..count as i32)
                        .map(|p| {
                            metadata_response::MetadataResponsePartition::default()
                                .with_partition_index(p)
                                .with_leader_id(BrokerId(NODE_ID))
                                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                                .with_isr_nodes(vec![BrokerId(NODE_ID)])
                        })
                        .collect(),
                ),
            Err(error) => topic.with_error_code(error),
        };
        topics.push(topic);
    }
    MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(Some(StrBytes::from_static_str("corelog")))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics)
}

fn error_code(error: &EngineError) -> i16 {
    match error {
        EngineError::UnknownPartition(_) => code::UNKNOWN_TOPIC_OR_PARTITION,
        EngineError::Append(AppendError::Corrupt(BatchError::UnsupportedCompression(_))) => {
            code::UNSUPPORTED_COMPRESSION_TYPE
        }
        EngineError::Append(AppendError::Corrupt(error)) if error.is_invalid_record() => code::INVALID_RECORD,
        EngineError::Append(AppendError::Corrupt(_) | AppendError::NotOneBatch { .. }) => {
            code::CORRUPT_MESSAGE
        }
        EngineError::Append(AppendError::TooLarge { .. }) => code::MESSAGE_TOO_LARGE,
        EngineError::Append(AppendError::ReadOnly(_) | AppendError::Storage(_)) | EngineError::Storage(_) => {
            code::KAFKA_STORAGE_ERROR
        }
        EngineError::Read(ReadError::OffsetOutOfRange { .. }) => code::OFFSET_OUT_OF_RANGE,
        EngineError::Read(ReadError::Corrupt { .. }) => code::KAFKA_STORAGE_ERROR,
        EngineError::OutOfOrderSequence { .. } => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        EngineError::InvalidProducerEpoch { .. } => code::INVALID_PRODUCER_EPOCH,
        EngineError::TopicExists(_) => code::TOPIC_ALREADY_EXISTS,
        EngineError::PartitionLimit { .. } => code::POLICY_VIOLATION,
        _ => code::UNKNOWN_SERVER_ERROR,
    }
}

/// One partition of a produce request after its batches were submitted.
enum PartitionSubmitted {
    /// Refused before submission (unknown partition, malformed records).
    Refused(i16),
    /// Every batch sent to the owner, in order; replies pending.
    Sent(Vec<tokio::sync::oneshot::Receiver<crate::shard::Response>>),
}

/// Phase one of a produce: topics ensured, then every batch of every partition sent
/// to its owner, in request order. A connection completes this phase for one request
/// before it reads the next, so pipelined requests append in the order sent.
async fn produce_submit(
    shard: &Rc<Shard>,
    request: ProduceRequest,
) -> Vec<(TopicName, Vec<(i32, PartitionSubmitted)>)> {
    // acks=all (-1) waits for the flush mode's durability; acks=1 and acks=0 for the write.
    let ack = if request.acks == -1 { AckLevel::Durable } else { AckLevel::Written };
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let known = match shard.query_writing(&name) {
            // Only the query writes its sinks (one writer, no gap in `seq`).
            Some(_) => Err(code::TOPIC_AUTHORIZATION_FAILED),
            None => ensure_topic(shard, &name, true).await,
        };
        let partitions = topic
            .partition_data
            .into_iter()
            .map(|partition| {
                let index = partition.index;
                let submitted = match known {
                    Err(code) => PartitionSubmitted::Refused(code),
                    Ok(count) if index < 0 || index as u32 >= count => {
                        PartitionSubmitted::Refused(code::UNKNOWN_TOPIC_OR_PARTITION)
                    }
                    Ok(_) => submit_batches(
                        shard,
                        TopicPartition::new(&name, index as u32),
                        partition.records,
                        ack,
                    ),
                };
                (index, submitted)
            })
            .collect();
        topics.push((topic.name, partitions));
    }
    topics
}

/// Splits one partition's records into batches (all framed correctly, or none is
/// sent) and sends each to the owner.
fn submit_batches(
    shard: &Rc<Shard>,
    tp: TopicPartition,
    records: Option<Bytes>,
    ack: AckLevel,
) -> PartitionSubmitted {
    let Some(mut rest) = records else { return PartitionSubmitted::Refused(code::CORRUPT_MESSAGE) };
    let mut frames = Vec::new();
    while !rest.is_empty() {
        match batch::frame_len(&rest) {
            Some(Ok(len)) if len <= rest.len() => frames.push(rest.split_to(len)),
            _ => return PartitionSubmitted::Refused(code::CORRUPT_MESSAGE),
        }
    }
    let sent = frames
        .into_iter()
        .map(|frame| {
            let batch = frame.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            shard.submit(Request::Append { tp: tp.clone(), batch, ack })
        })
        .collect();
    PartitionSubmitted::Sent(sent)
}

/// Phase two: waits for every reply and builds the response (first base offset per
/// partition, or the first failure's error code).
async fn produce_finish(topics: Vec<(TopicName, Vec<(i32, PartitionSubmitted)>)>) -> ProduceResponse {
    let mut responses = Vec::with_capacity(topics.len());
    for (name, partitions) in topics {
        let results = join_all(partitions.into_iter().map(|(index, submitted)| async move {
            let (error_code, base_offset) = match submitted {
                PartitionSubmitted::Refused(code) => (code, -1),
                PartitionSubmitted::Sent(replies) => {
                    let mut outcome = (code::NONE, -1);
                    for reply in replies {
                        match reply.await.unwrap_or(Err(EngineError::ShuttingDown)) {
                            Ok(Reply::Appended(result)) if outcome == (code::NONE, -1) => {
                                outcome.1 = result.base_offset
                            }
                            Ok(Reply::Appended(_)) => {}
                            Ok(other) => unreachable!("append answered {other:?}"),
                            Err(error) if outcome.0 == code::NONE => outcome = (error_code(&error), -1),
                            Err(_) => {}
                        }
                    }
                    outcome
                }
            };
            let message = (error_code == code::TOPIC_AUTHORIZATION_FAILED).then(|| {
                StrBytes::from_static_str("this topic is a stream query's output: only the query writes it")
            });
            produce_response::PartitionProduceResponse::default()
                .with_index(index)
                .with_error_code(error_code)
                .with_error_message(message)
                .with_base_offset(base_offset)
                .with_log_append_time_ms(-1)
        }))
        .await;
        responses.push(
            produce_response::TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(results),
        );
    }
    ProduceResponse::default().with_responses(responses)
}

struct FetchSlot {
    topic: usize,
    tp: TopicPartition,
    offset: i64,
    max_bytes: usize,
    /// Only the first partition of a Fetch may return a batch above its budget.
    strict: bool,
}

async fn read_partition(shard: &Rc<Shard>, slot: &FetchSlot) -> fetch_response::PartitionData {
    let partition = fetch_response::PartitionData::default().with_partition_index(slot.tp.partition as i32);
    if slot.max_bytes == 0 && slot.strict {
        // No budget left for it: only offsets, no read (and no work).
        let partition = match shard.route(Request::Info(slot.tp.clone())).await {
            Ok(Reply::Info(info)) => partition
                .with_high_watermark(info.high_watermark)
                .with_last_stable_offset(info.high_watermark)
                .with_log_start_offset(info.log_start_offset)
                .with_records(Some(Bytes::new())),
            Ok(other) => unreachable!("info answered {other:?}"),
            Err(error) => partition.with_error_code(error_code(&error)).with_high_watermark(-1),
        };
        return partition;
    }
    let request = Request::Read {
        tp: slot.tp.clone(),
        offset: slot.offset,
        max_bytes: slot.max_bytes,
        strict: slot.strict,
    };
    match shard.route(request).await {
        Ok(Reply::Read(fetched)) => partition
            .with_high_watermark(fetched.high_watermark)
            .with_last_stable_offset(fetched.high_watermark)
            .with_log_start_offset(fetched.log_start_offset)
            .with_records(Some(fetched.bytes)),
        Ok(other) => unreachable!("read answered {other:?}"),
        Err(error) => {
            let code = error_code(&error);
            let info = match shard.route(Request::Info(slot.tp.clone())).await {
                Ok(Reply::Info(info)) => Some(info),
                _ => None,
            };
            partition
                .with_error_code(code)
                .with_high_watermark(info.map_or(-1, |i| i.high_watermark))
                .with_log_start_offset(info.map_or(-1, |i| i.log_start_offset))
        }
    }
}

/// Kafka's `fetch.max.bytes` default: the most record bytes one Fetch response holds
/// (plus at most one batch, when the first partition's first batch is larger).
pub const FETCH_RESPONSE_BYTES_MAX: usize = 55 << 20;

/// Partitions one Fetch may name; later ones are not read.
pub const FETCH_PARTITIONS_MAX: usize = 10_000;

/// Plans the reads of a Fetch the way Kafka's broker does: partitions in request order,
/// each read bounded by its `partition_max_bytes` and by what is left of the request's
/// `max_bytes` (itself capped at [`FETCH_RESPONSE_BYTES_MAX`]); only the first non-empty
/// partition may return a batch above its share (the first one here, the others through
/// [`read_slots`]), so a consumer always progresses. A partition
/// named again in the same request, or beyond [`FETCH_PARTITIONS_MAX`], is answered once
/// and never read twice. Negative partition indexes are answered
/// UNKNOWN_TOPIC_OR_PARTITION.
fn plan_fetch(request: &FetchRequest) -> (Vec<FetchSlot>, Vec<(usize, i32)>) {
    let mut slots = Vec::new();
    let mut unknown = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut left = (request.max_bytes.max(0) as usize).min(FETCH_RESPONSE_BYTES_MAX);
    for (topic_index, topic) in request.topics.iter().enumerate() {
        for partition in &topic.partitions {
            if partition.partition < 0 {
                unknown.push((topic_index, partition.partition));
                continue;
            }
            let tp = TopicPartition::new(&topic.topic.0, partition.partition as u32);
            if slots.len() >= FETCH_PARTITIONS_MAX || !seen.insert(tp.clone()) {
                continue;
            }
            let max_bytes = (partition.partition_max_bytes.max(0) as usize).min(left);
            left -= max_bytes;
            let strict = !slots.is_empty();
            slots.push(FetchSlot {
                topic: topic_index,
                tp,
                offset: partition.fetch_offset,
                max_bytes,
                strict,
            });
        }
    }
    (slots, unknown)
}

/// Reads every slot at once. When nothing came back but some partition has a batch
/// larger than its share, that partition (the first such) is read again allowed to
/// exceed it: Kafka lets the first *non-empty* partition of a Fetch exceed its limits,
/// so a consumer whose first-listed partitions are caught up still progresses.
async fn read_slots(shard: &Rc<Shard>, slots: &[FetchSlot]) -> Vec<fetch_response::PartitionData> {
    let mut partitions = join_all(slots.iter().map(|slot| read_partition(shard, slot))).await;
    let empty = |p: &fetch_response::PartitionData| p.records.as_ref().is_none_or(Bytes::is_empty);
    if partitions.iter().all(empty) {
        let oversized = slots.iter().zip(&partitions).position(|(slot, p)| {
            slot.strict && p.error_code == code::NONE && p.high_watermark > slot.offset && empty(p)
        });
        if let Some(at) = oversized {
            let slot = &slots[at];
            let retry = FetchSlot {
                topic: slot.topic,
                tp: slot.tp.clone(),
                offset: slot.offset,
                max_bytes: slot.max_bytes,
                strict: false,
            };
            partitions[at] = read_partition(shard, &retry).await;
        }
    }
    partitions
}

async fn fetch(shard: &Rc<Shard>, request: FetchRequest) -> FetchResponse {
    let (slots, unknown) = plan_fetch(&request);
    let mut partitions = read_slots(shard, &slots).await;
    let bytes: usize = partitions.iter().map(|p| p.records.as_ref().map_or(0, Bytes::len)).sum();
    let wait_ms = (request.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX);
    if bytes < request.min_bytes.max(1) as usize && wait_ms > 0 && !slots.is_empty() {
        let waits = slots.iter().map(|slot| {
            Box::pin(shard.route(Request::WaitFor {
                tp: slot.tp.clone(),
                offset: slot.offset,
                timeout_ms: wait_ms,
            }))
        });
        let _ = select_all(waits).await;
        partitions = read_slots(shard, &slots).await;
    }
    let mut responses: Vec<fetch_response::FetchableTopicResponse> = request
        .topics
        .iter()
        .map(|t| fetch_response::FetchableTopicResponse::default().with_topic(t.topic.clone()))
        .collect();
    for (slot, partition) in slots.iter().zip(partitions) {
        responses[slot.topic].partitions.push(partition);
    }
    for (topic, index) in unknown {
        responses[topic].partitions.push(
            fetch_response::PartitionData::default()
                .with_partition_index(index)
                .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION)
                .with_high_watermark(-1),
        );
    }
    FetchResponse::default().with_responses(responses)
}

async fn list_offsets(shard: &Rc<Shard>, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let response = list_offsets_response::ListOffsetsPartitionResponse::default()
                .with_partition_index(partition.partition_index);
            if partition.partition_index < 0 {
                partitions.push(
                    response
                        .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION)
                        .with_timestamp(-1)
                        .with_offset(-1),
                );
                continue;
            }
            let tp = TopicPartition::new(&topic.name.0, partition.partition_index as u32);
            let answer = match partition.timestamp {
                // -3: the offset of the record with the largest timestamp (KIP-734).
                -3 => max_timestamp_offset(shard, tp).await,
                -1 | -2 => shard.route(Request::Info(tp)).await.map(|reply| match reply {
                    Reply::Info(info) if partition.timestamp == -1 => (-1, info.high_watermark),
                    Reply::Info(info) => (-1, info.log_start_offset),
                    other => unreachable!("info answered {other:?}"),
                }),
                timestamp => {
                    shard.route(Request::OffsetForTimestamp { tp, timestamp }).await.map(
                        |reply| match reply {
                            Reply::Offset(Some((offset, timestamp))) => (timestamp, offset),
                            Reply::Offset(None) => (-1, -1),
                            other => unreachable!("offset lookup answered {other:?}"),
                        },
                    )
                }
            };
            partitions.push(match answer {
                Ok((timestamp, offset)) => response.with_timestamp(timestamp).with_offset(offset),
                Err(error) => response.with_error_code(error_code(&error)).with_timestamp(-1).with_offset(-1),
            });
        }
        topics.push(
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// ListOffsets with timestamp -3: (largest timestamp, offset of its record), or (-1, -1)
/// for an empty partition. Found by a scan of the partition's batch headers, then of
/// the records of the batch that holds it.
async fn max_timestamp_offset(shard: &Rc<Shard>, tp: TopicPartition) -> Result<(i64, i64), EngineError> {
    match shard.route(Request::MaxTimestamp(tp)).await? {
        Reply::Offset(found) => Ok(found.map_or((-1, -1), |(offset, timestamp)| (timestamp, offset))),
        other => unreachable!("max timestamp answered {other:?}"),
    }
}

async fn create_topics(shard: &Rc<Shard>, request: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let partitions = match topic.num_partitions {
            -1 => shard.config.auto_create_partitions.unwrap_or(1) as i32,
            n => n,
        };
        let result = create_topics_response::CreatableTopicResult::default()
            .with_name(topic.name.clone())
            .with_num_partitions(partitions)
            .with_replication_factor(1);
        let outcome = if partitions <= 0 || partitions as u32 > crate::catalog::PARTITIONS_MAX {
            Err((code::INVALID_PARTITIONS, format!("{partitions} partitions")))
        } else if request.validate_only {
            match shard.catalog.partition_count(&name) {
                Some(_) => Err((code::TOPIC_ALREADY_EXISTS, format!("topic {name} already exists"))),
                None => Ok(()),
            }
        } else {
            match shard.catalog.add(&name, partitions as u32) {
                Ok(()) => {
                    let opened = join_all(
                        (0..partitions as u32)
                            .map(|p| shard.route(Request::CreatePartition(TopicPartition::new(&name, p)))),
                    )
                    .await;
                    match opened.into_iter().find_map(Result::err) {
                        Some(error) => Err((error_code(&error), error.to_string())),
                        None => Ok(()),
                    }
                }
                Err(error @ EngineError::InvalidTopic(_)) => {
                    Err((code::INVALID_TOPIC_EXCEPTION, error.to_string()))
                }
                Err(error) => Err((error_code(&error), error.to_string())),
            }
        };
        results.push(match outcome {
            Ok(()) => result,
            Err((error_code, message)) => {
                result.with_error_code(error_code).with_error_message(Some(StrBytes::from_string(message)))
            }
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn find_coordinator(
    shard: &Rc<Shard>,
    request: FindCoordinatorRequest,
    version: i16,
    advertised: Option<SocketAddr>,
) -> FindCoordinatorResponse {
    let address = advertised.or(shard.config.listen);
    let host = StrBytes::from_string(address.map_or("127.0.0.1".into(), |a| a.ip().to_string()));
    let port = address.map_or(9092, |a| i32::from(a.port()));
    let coordinators = request
        .coordinator_keys
        .iter()
        .map(|key| {
            find_coordinator_response::Coordinator::default()
                .with_key(key.clone())
                .with_node_id(BrokerId(NODE_ID))
                .with_host(host.clone())
                .with_port(port)
        })
        .collect();
    if version >= 4 {
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        FindCoordinatorResponse::default().with_node_id(BrokerId(NODE_ID)).with_host(host).with_port(port)
    }
}

async fn join_group(
    shard: &Rc<Shard>,
    request: JoinGroupRequest,
    version: i16,
    client_id: &str,
) -> JoinGroupResponse {
    let join = crate::groups::JoinRequest {
        group: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        client_id: if client_id.is_empty() { "client".into() } else { client_id.to_string() },
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: if request.rebalance_timeout_ms > 0 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
    };
    let result = shard.catalog.groups.join(join).await;
    let protocol_name = match (version, result.protocol) {
        (7.., name) => name.map(StrBytes::from_string),
        (_, name) => Some(StrBytes::from_string(name.unwrap_or_default())),
    };
    let protocol_type = if version >= 7 { result.protocol_type.map(StrBytes::from_string) } else { None };
    JoinGroupResponse::default()
        .with_error_code(result.error_code)
        .with_generation_id(result.generation)
        .with_protocol_type(protocol_type)
        .with_protocol_name(protocol_name)
        .with_leader(StrBytes::from_string(result.leader))
        .with_member_id(StrBytes::from_string(result.member_id))
        .with_members(
            result
                .members
                .into_iter()
                .map(|(id, metadata)| {
                    join_group_response::JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(id))
                        .with_metadata(metadata)
                })
                .collect(),
        )
}

/// Publishes `corelog_consumer_group_lag` (high watermark − committed offset) for the
/// partitions a commit names.
async fn record_lag(shard: &Rc<Shard>, request: &OffsetCommitRequest) {
    for topic in &request.topics {
        for partition in topic.partitions.iter().filter(|p| p.partition_index >= 0) {
            let tp = TopicPartition::new(&topic.name.0, partition.partition_index as u32);
            if let Ok(Reply::Info(info)) = shard.route(Request::Info(tp)).await {
                let lag = (info.high_watermark - partition.committed_offset).max(0);
                metrics::gauge!(
                    "corelog_consumer_group_lag",
                    "group" => request.group_id.0.to_string(),
                    "topic" => topic.name.0.to_string(),
                    "partition" => partition.partition_index.to_string()
                )
                .set(lag as f64);
            }
        }
    }
}

fn offset_commit(shard: &Rc<Shard>, request: &OffsetCommitRequest) -> OffsetCommitResponse {
    let exists = |topic: &str, partition: i32| {
        partition >= 0 && shard.catalog.partition_count(topic).is_some_and(|count| (partition as u32) < count)
    };
    let offsets: Vec<(String, i32, i64, Option<String>)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().filter(|p| exists(&t.name.0, p.partition_index)).map(|p| {
                (
                    t.name.0.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.committed_metadata.as_ref().map(|m| m.to_string()),
                )
            })
        })
        .collect();
    let error_code = shard.catalog.groups.commit(
        &request.group_id.0,
        request.generation_id_or_member_epoch,
        &request.member_id,
        &offsets,
    );
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let code = if exists(&t.name.0, p.partition_index) {
                        error_code
                    } else {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    };
                    offset_commit_response::OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

fn offset_fetch(shard: &Rc<Shard>, request: OffsetFetchRequest) -> OffsetFetchResponse {
    let group = request.group_id.0.to_string();
    let wanted: Vec<(TopicName, Vec<i32>)> = match request.topics {
        Some(topics) => topics.into_iter().map(|t| (t.name, t.partition_indexes)).collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
            for (topic, partition) in shard.catalog.groups.committed_partitions(&group) {
                by_topic.entry(topic).or_default().push(partition);
            }
            by_topic.into_iter().map(|(t, p)| (topic_name(&t), p)).collect()
        }
    };
    let topics = wanted
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|partition| {
                    let committed = shard.catalog.groups.committed(&group, &name.0, partition);
                    offset_fetch_response::OffsetFetchResponsePartition::default()
                        .with_partition_index(partition)
                        .with_committed_offset(committed.as_ref().map_or(-1, |c| c.0))
                        .with_committed_leader_epoch(-1)
                        .with_metadata(Some(StrBytes::from_string(
                            committed.and_then(|c| c.1).unwrap_or_default(),
                        )))
                })
                .collect();
            offset_fetch_response::OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_count_beyond_the_frame_is_an_error_not_an_abort() {
        // Metadata v1, correlation id 7, null client id, then a topics array that
        // claims i32::MAX entries in a frame of a few bytes (the vendored patch).
        let mut frame = vec![0, 3, 0, 1, 0, 0, 0, 7, 0xff, 0xff];
        frame.extend_from_slice(&i32::MAX.to_be_bytes());
        let error = decode_request(&frame).unwrap_err();
        assert!(error.contains("exceeds"), "{error}");
    }

    #[test]
    fn unsupported_versions_and_unknown_keys_are_refused() {
        assert!(decode_request(&[0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff]).unwrap_err().contains("unsupported"));
        assert!(decode_request(&[0x7f, 0x7f, 0, 1, 0, 0, 0, 1]).unwrap_err().contains("unknown API key"));
        assert!(decode_request(&[0, 18]).is_err());
    }
}
