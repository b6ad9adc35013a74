//! Connections: the SO_REUSEPORT listeners of each shard (one per configured
//! listener, each with its security protocol), the connection limit, TLS and SASL
//! before anything else (`sasl`), framing bounded by the memory budgets and timeouts,
//! pipelining with responses in request order.

use super::api::*;
use super::produce::*;
use super::sasl::{self, Authenticating, Outcome, Session};
use super::LISTEN_BACKLOG;
use crate::shard::Shard;
use bytes::BytesMut;
use kafka_protocol::messages::{ApiKey, ProduceRequest};
use kafka_protocol::protocol::Decodable;
use security::{Listener, SecurityProtocol};
use std::net::SocketAddr;
use std::rc::Rc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

/// Accepts connections of `listener` until the shard stops, serving each on its own
/// task.
pub(crate) async fn accept_loop(shard: Rc<Shard>, socket: TcpListener, listener: Listener) {
    let bound = socket.local_addr().ok();
    loop {
        match socket.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = ConnectionSlot::take(&shard) else {
                    refuse_connection(&shard, peer);
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // Clients are told to come back to the address they reached (a
                // listener on 0.0.0.0 has no address of its own to advertise).
                let advertised =
                    bound.filter(|a| !a.ip().is_unspecified()).or_else(|| stream.local_addr().ok());
                let shard = shard.clone();
                tokio_uring::spawn(async move {
                    let _slot = slot;
                    if let Err(reason) = connect(shard, stream, peer, advertised, listener.protocol).await {
                        tracing::info!(%peer, %listener, "closing Kafka connection: {reason}");
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
pub(super) struct ConnectionSlot(Rc<Shard>);

impl ConnectionSlot {
    pub(super) fn take(shard: &Rc<Shard>) -> Option<Self> {
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
pub(super) fn refuse_connection(shard: &Rc<Shard>, peer: SocketAddr) {
    metrics::counter!("corelog_kafka_connections_refused_total").increment(1);
    thread_local! { static LAST_LOG_MS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) }; }
    let now = crate::types::now_ms();
    if LAST_LOG_MS.with(|last| now - last.replace(now) >= 1000) {
        tracing::warn!(%peer, limit = shard.config.max_connections, "connection refused: the broker is at --max-connections");
    }
}

/// A response frame ready to write, with the memory budget it holds until written.
pub(super) struct Outgoing {
    bytes: BytesMut,
    _budget: Option<Held>,
}

/// Response bytes held in the connection's and the broker's budgets.
pub(super) type Held = (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit);

impl From<BytesMut> for Outgoing {
    fn from(bytes: BytesMut) -> Self {
        Self { bytes, _budget: None }
    }
}

/// Runs TLS (when the listener has it) and serves the connection. On SSL listeners a
/// verified client certificate's subject becomes the principal.
async fn connect(
    shard: Rc<Shard>,
    stream: TcpStream,
    peer: SocketAddr,
    advertised: Option<SocketAddr>,
    protocol: SecurityProtocol,
) -> Result<(), String> {
    let mut session = Session::new(protocol, peer);
    let Some(config) = shard.catalog.security.tls_config(protocol) else {
        let (reader, writer) = stream.into_split();
        return serve(shard, reader, writer, advertised, session).await;
    };
    let handshake = std::time::Duration::from_millis(security::tls::TLS_HANDSHAKE_TIMEOUT_MS);
    let accepted =
        tokio::time::timeout(handshake, tokio_rustls::TlsAcceptor::from(config).accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        failed => {
            metrics::counter!("corelog_kafka_tls_handshake_failures_total").increment(1);
            return Err(match failed {
                Err(_) => format!("no TLS handshake within {} ms", security::tls::TLS_HANDSHAKE_TIMEOUT_MS),
                Ok(Err(error)) => format!("TLS handshake failed: {error}"),
                Ok(Ok(_)) => unreachable!("matched above"),
            });
        }
    };
    if protocol == SecurityProtocol::Ssl {
        if let Some(certificate) = stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            session.principal = security::tls::certificate_principal(certificate)
                .ok_or("the client certificate has no subject to name a principal")?;
            metrics::counter!("corelog_kafka_authentications_total", "mechanism" => "SSL", "result" => "ok")
                .increment(1);
        }
    }
    let (reader, writer) = tokio::io::split(stream);
    serve(shard, reader, writer, advertised, session).await
}

pub(super) async fn serve<R, W>(
    shard: Rc<Shard>,
    reader: R,
    mut writer: W,
    advertised: Option<SocketAddr>,
    session: Session,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
{
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
    let read = read_requests(&shard, reader, advertised, responses, session).await;
    // The reader stopped (end of stream or bad input): answer what was accepted, then close.
    let written = written.await.map_err(|e| format!("writer task failed: {e}"))?;
    read.and(written)
}

/// A response being computed: the encoded frame, or none for acks=0.
pub(super) type Responding = tokio::task::JoinHandle<Result<Option<Outgoing>, String>>;

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
/// before the next frame is read, so appends keep the connection's order. On a SASL
/// listener the connection authenticates first ([`authenticate`]).
pub(super) async fn read_requests<R: AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    mut reader: R,
    advertised: Option<SocketAddr>,
    responses: tokio::sync::mpsc::Sender<Responding>,
    mut session: Session,
) -> Result<(), String> {
    if session.protocol.sasl() {
        match authenticate(shard, &mut reader, &responses, &mut session).await? {
            true => tracing::debug!(peer = %session.peer, principal = %session.principal, "authenticated"),
            false => return Ok(()),
        }
    }
    let session = Rc::new(session);
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
            let body = frame.clone();
            let request = ProduceRequest::decode(&mut frame, version)
                .map_err(|e| format!("malformed Produce v{version}: {e:#}"))?;
            // Nothing but the request may still share the body (see `own_records`).
            drop((frame, header));
            let request = own_records(request, body);
            let acks = request.acks;
            let submitted = produce_submit(shard, &session, request).await;
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
            let session = session.clone();
            tokio_uring::spawn(async move {
                let _permit = permit;
                let budget =
                    Budget { connection: responses_budget, broker: shard.catalog.response_memory.clone() };
                let call = Call {
                    shard: &shard,
                    version,
                    advertised,
                    client_id: &client_id,
                    budget: &budget,
                    session: &session,
                };
                let answer = handle(&call, api_key, &mut frame).await?;
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
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    reader: &mut R,
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
pub(super) struct Budget {
    connection: std::sync::Arc<tokio::sync::Semaphore>,
    broker: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Budget {
    /// Waits until `bytes` (clamped to the connection's share) fit both budgets.
    pub(super) async fn take(&self, bytes: usize) -> Option<Held> {
        let bytes = bytes.clamp(1, RESPONSE_BYTES_PER_CONNECTION_MAX) as u32;
        let connection = self.connection.clone().acquire_many_owned(bytes).await.ok()?;
        let broker = self.broker.clone().acquire_many_owned(bytes).await.ok()?;
        Some((connection, broker))
    }
}

/// Serves a SASL listener's connection until it authenticated: ApiVersions,
/// SaslHandshake and SaslAuthenticate one at a time, in frames of at most
/// [`security::PRE_AUTH_FRAME_BYTES_MAX`], within [`security::AUTHENTICATION_TIMEOUT_MS`];
/// any other request closes the connection. Returns whether it authenticated (false:
/// the client closed first).
async fn authenticate<R: AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    reader: &mut R,
    responses: &tokio::sync::mpsc::Sender<Responding>,
    session: &mut Session,
) -> Result<bool, String> {
    let security = shard.catalog.security.clone();
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(security::AUTHENTICATION_TIMEOUT_MS);
    let late = || format!("not authenticated within {} ms", security::AUTHENTICATION_TIMEOUT_MS);
    let mut state = Authenticating::default();
    loop {
        let size = match tokio::time::timeout_at(deadline, reader.read_i32()).await {
            Err(_) => return Err(late()),
            Ok(Ok(size)) => size,
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Ok(Err(error)) => return Err(error.to_string()),
        };
        let max = security::PRE_AUTH_FRAME_BYTES_MAX;
        if size < 8 || size as usize > max {
            return Err(format!("frame of {size} bytes before authentication (outside 8..={max})"));
        }
        let (frame, _memory) = tokio::time::timeout_at(deadline, read_frame(shard, reader, size as usize))
            .await
            .map_err(|_| late())??;
        let mut frame = frame.freeze();
        let (api_key, version, header) = decode_header(&mut frame)?;
        metrics::counter!("corelog_kafka_requests_total", "api" => api_name(api_key)).increment(1);
        let outcome = match api_key {
            ApiKey::ApiVersions => {
                let (version, body) = api_versions_answer(version, &mut frame)?;
                Outcome::Continue(version, body)
            }
            ApiKey::SaslHandshake => sasl::handshake(&security, session, &mut state, version, &mut frame)?,
            ApiKey::SaslAuthenticate => {
                sasl::authenticate(&security, session, &mut state, version, &mut frame).await?
            }
            other => return Err(format!("{other:?} request before authentication")),
        };
        let (version, body, result) = match outcome {
            Outcome::Continue(version, body) => (version, body, None),
            Outcome::Authenticated(version, body, principal) => (version, body, Some(Ok(principal))),
            Outcome::Failed(version, body, reason) => {
                tracing::warn!(peer = %session.peer, listener = %session.protocol, "authentication failed: {reason}");
                tokio::time::sleep(std::time::Duration::from_millis(security::AUTH_FAILURE_DELAY_MS)).await;
                (version, body, Some(Err(reason)))
            }
        };
        let outgoing: Outgoing = response_frame(api_key, version, header.correlation_id, &body)?.into();
        let answered = tokio_uring::spawn(async move { Ok(Some(outgoing)) });
        if responses.send(answered).await.is_err() {
            return Ok(false);
        }
        match result {
            None => {}
            Some(Ok(principal)) => {
                session.principal = principal;
                return Ok(true);
            }
            Some(Err(reason)) => return Err(format!("authentication failed: {reason}")),
        }
    }
}
