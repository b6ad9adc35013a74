//! The API table: which Kafka APIs and versions corelog serves, how a request frame is
//! decoded and dispatched to its handler, and how a response frame is built.

use super::codes::*;
use super::net::{Budget, Held};
use super::{admin, fetch, groups, sasl, topics};
use crate::shard::Shard;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    api_versions_response, ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use std::net::SocketAddr;
use std::rc::Rc;

/// What a handler is given besides the request body.
pub(super) struct Call<'a> {
    pub(super) shard: &'a Rc<Shard>,
    /// The request's API version.
    pub(super) version: i16,
    /// The address clients are told to connect to (Metadata, FindCoordinator).
    pub(super) advertised: Option<SocketAddr>,
    pub(super) client_id: &'a str,
    /// Where the response's bytes are counted until written.
    pub(super) budget: &'a Budget,
    /// Who sent the request.
    pub(super) session: &'a super::sasl::Session,
}

/// A handler's answer: the response (the version it is encoded in, its body, and the
/// budget its bytes hold until written), or `None` when no response is due (acks=0).
pub(super) type Answer = Result<Option<(i16, BytesMut, Option<Held>)>, String>;

/// Declares the APIs corelog serves, in one place: the versions of each and its
/// handler. `ordered` APIs are answered by the connection itself in two phases (their
/// effects are submitted before the next request is read: Produce); the others are
/// dispatched by [`handle`] and may run concurrently with later requests. Adding an API
/// is one line here plus its handler.
macro_rules! api_table {
    (
        ordered { $($okey:ident $omin:literal ..= $omax:literal),* $(,)? }
        concurrent { $($key:ident $min:literal ..= $max:literal => $handler:path),* $(,)? }
    ) => {
        /// API keys and the version ranges corelog serves (what librdkafka 2.x negotiates).
        pub(super) const SUPPORTED: &[(ApiKey, i16, i16)] =
            &[$((ApiKey::$okey, $omin, $omax),)* $((ApiKey::$key, $min, $max),)*];

        /// A static label for an API key (metrics).
        pub(super) fn api_name(api_key: ApiKey) -> &'static str {
            match api_key {
                $(ApiKey::$okey => stringify!($okey),)*
                $(ApiKey::$key => stringify!($key),)*
                _ => "other",
            }
        }

        /// Decodes and answers one request of a concurrent API with its handler.
        pub(super) async fn handle(call: &Call<'_>, api_key: ApiKey, body: &mut Bytes) -> Answer {
            match api_key {
                $(ApiKey::$key => $handler(call, body).await,)*
                other => Err(format!("{other:?} is not dispatched here")),
            }
        }
    };
}

api_table! {
    ordered {
        Produce 3..=9,
    }
    concurrent {
        ApiVersions 0..=3 => serve_api_versions,
        Metadata 1..=12 => topics::serve_metadata,
        CreateTopics 2..=7 => topics::serve_create_topics,
        DeleteTopics 1..=6 => topics::serve_delete_topics,
        InitProducerId 0..=4 => topics::serve_init_producer_id,
        Fetch 4..=12 => fetch::serve_fetch,
        ListOffsets 1..=7 => fetch::serve_list_offsets,
        FindCoordinator 0..=4 => groups::serve_find_coordinator,
        JoinGroup 0..=7 => groups::serve_join_group,
        SyncGroup 0..=5 => groups::serve_sync_group,
        Heartbeat 0..=4 => groups::serve_heartbeat,
        LeaveGroup 0..=4 => groups::serve_leave_group,
        OffsetCommit 2..=8 => groups::serve_offset_commit,
        OffsetFetch 1..=7 => groups::serve_offset_fetch,
        SaslHandshake 0..=1 => sasl::serve_sasl_handshake,
        SaslAuthenticate 0..=2 => sasl::serve_sasl_authenticate,
        DescribeAcls 1..=3 => admin::serve_describe_acls,
        CreateAcls 1..=3 => admin::serve_create_acls,
        DeleteAcls 1..=3 => admin::serve_delete_acls,
        DescribeUserScramCredentials 0..=0 => admin::serve_describe_user_scram_credentials,
        AlterUserScramCredentials 0..=0 => admin::serve_alter_user_scram_credentials,
    }
}

/// Whether corelog serves `version` of `api_key`.
pub(super) fn supported(api_key: ApiKey, version: i16) -> bool {
    SUPPORTED.iter().any(|(key, min, max)| *key == api_key && (*min..=*max).contains(&version))
}

/// The message decode error of `api_key` v`version`.
pub(super) fn malformed(api_key: ApiKey, version: i16) -> impl Fn(anyhow::Error) -> String {
    move |e| format!("malformed {api_key:?} v{version}: {e:#}")
}

/// ApiVersions: every API and version range of [`SUPPORTED`]. An unknown version is
/// answered in v0 with the error, as Kafka does.
async fn serve_api_versions(call: &Call<'_>, body: &mut Bytes) -> Answer {
    let (version, body) = api_versions_answer(call.version, body)?;
    Ok(Some((version, body, None)))
}

/// The ApiVersions answer to a v`version` request: the version it is encoded in and
/// its body (also served before authentication).
pub(super) fn api_versions_answer(version: i16, body: &mut Bytes) -> Result<(i16, BytesMut), String> {
    if !supported(ApiKey::ApiVersions, version) {
        let response = ApiVersionsResponse::default()
            .with_error_code(code::UNSUPPORTED_VERSION)
            .with_api_keys(api_versions());
        return Ok((0, encode(&response, 0)?));
    }
    let _request =
        ApiVersionsRequest::decode(body, version).map_err(malformed(ApiKey::ApiVersions, version))?;
    Ok((version, encode(&ApiVersionsResponse::default().with_api_keys(api_versions()), version)?))
}

pub(super) fn record_latency(api: &'static str, started: std::time::Instant) {
    metrics::histogram!("corelog_kafka_request_seconds", "api" => api)
        .record(started.elapsed().as_secs_f64());
}

/// The whole response frame: size, header for `version`, body.
pub(super) fn response_frame(
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

/// Decodes a request header from the front of `frame` (a frame without its size
/// prefix) and checks that corelog serves the API and version.
pub(super) fn decode_header(frame: &mut Bytes) -> Result<(ApiKey, i16, RequestHeader), String> {
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

/// The answer of a handler whose response holds no record bytes: `message` encoded in
/// the request's version.
pub(super) fn respond(message: &impl Encodable, version: i16) -> Answer {
    Ok(Some((version, encode(message, version)?, None)))
}

pub(super) fn encode(message: &impl Encodable, version: i16) -> Result<BytesMut, String> {
    let mut body = BytesMut::new();
    message.encode(&mut body, version).map_err(|e| format!("encoding a response: {e}"))?;
    Ok(body)
}

/// The ApiVersions entries of [`SUPPORTED`].
pub(super) fn api_versions() -> Vec<api_versions_response::ApiVersion> {
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
