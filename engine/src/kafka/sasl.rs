//! Who a connection is: the TLS handshake (and a client certificate's principal) and,
//! on SASL listeners, the SaslHandshake/SaslAuthenticate exchange that must finish
//! before any request other than ApiVersions is served.
//!
//! Before authentication a connection is bounded more tightly than after: frames of at
//! most [`security::PRE_AUTH_FRAME_BYTES_MAX`] bytes, one request at a time, and
//! [`security::AUTHENTICATION_TIMEOUT_MS`] in all; any other request closes it (Kafka
//! does the same). A failed authentication is answered with SASL_AUTHENTICATION_FAILED
//! after [`security::AUTH_FAILURE_DELAY_MS`], logged with the peer address, counted
//! per address (past [`security::AUTH_FAILURES_PER_WINDOW`] an address is refused
//! without a password check), and closes the connection.
//!
//! SaslHandshake v0 is listed because librdkafka requires it before it uses SASL at
//! all; every client we know then sends v1 and SaslAuthenticate. A client that stays
//! on v0 sends raw SASL tokens without a Kafka header, which do not decode as a
//! request and close the connection.
//!
//! Never: logs a password or a SCRAM proof, or serves data before authentication.

use super::api::{encode, Answer};
use crate::types::now_ms;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;
use security::{SaslSession, SaslStep, Security, SecurityProtocol};
use std::net::SocketAddr;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) protocol: SecurityProtocol,
    pub(super) peer: SocketAddr,
    /// `User:NAME`, the certificate's `User:<DN>`, or `User:ANONYMOUS`.
    pub(super) principal: String,
}

impl Session {
    pub(super) fn new(protocol: SecurityProtocol, peer: SocketAddr) -> Self {
        Self { protocol, peer, principal: security::ANONYMOUS.to_string() }
    }
}

/// A connection's SASL exchange before it authenticated.
#[derive(Debug, Default)]
pub(super) struct Authenticating {
    exchange: Option<SaslSession>,
}

/// What a request before authentication led to.
pub(super) enum Outcome {
    /// Answer and read the next request.
    Continue(i16, BytesMut),
    /// Answer; the connection is now `principal`.
    Authenticated(i16, BytesMut, String),
    /// Answer (after the failure delay) and close, for `reason`.
    Failed(i16, BytesMut, String),
}

fn decode_error(api_key: ApiKey, version: i16) -> impl Fn(anyhow::Error) -> String {
    move |e| format!("malformed {api_key:?} v{version}: {e:#}")
}

/// SaslHandshake before authentication: picks the mechanism, or names the enabled ones.
pub(super) fn handshake(
    security: &Security,
    session: &Session,
    state: &mut Authenticating,
    version: i16,
    body: &mut Bytes,
) -> Result<Outcome, String> {
    let request =
        SaslHandshakeRequest::decode(body, version).map_err(decode_error(ApiKey::SaslHandshake, version))?;
    let offered = security.mechanisms(session.protocol);
    let names = offered.iter().map(|m| StrBytes::from_static_str(m.name())).collect();
    let response = SaslHandshakeResponse::default().with_mechanisms(names);
    if state.exchange.is_some() {
        let response = response.with_error_code(ResponseError::IllegalSaslState.code());
        return Ok(Outcome::Failed(version, encode(&response, version)?, "a second SaslHandshake".into()));
    }
    match security.start_sasl(session.protocol, &request.mechanism) {
        Ok(exchange) => {
            state.exchange = Some(exchange);
            Ok(Outcome::Continue(version, encode(&response, version)?))
        }
        Err(_) => {
            let response = response.with_error_code(ResponseError::UnsupportedSaslMechanism.code());
            let reason =
                format!("SASL mechanism {:?} is not enabled on this listener", request.mechanism.as_str());
            Ok(Outcome::Failed(version, encode(&response, version)?, reason))
        }
    }
}

/// SaslAuthenticate before authentication: one token of the exchange. The check runs
/// on the runtime's blocking pool, not the shard: PLAIN derives the salted password
/// (thousands of PBKDF2 rounds, milliseconds), which must not stall the shard's appends.
pub(super) async fn authenticate(
    security: &std::sync::Arc<Security>,
    session: &Session,
    state: &mut Authenticating,
    version: i16,
    body: &mut Bytes,
) -> Result<Outcome, String> {
    let request = SaslAuthenticateRequest::decode(body, version)
        .map_err(decode_error(ApiKey::SaslAuthenticate, version))?;
    let failed = |message: &str, reason: String| -> Result<Outcome, String> {
        let response = SaslAuthenticateResponse::default()
            .with_error_code(ResponseError::SaslAuthenticationFailed.code())
            .with_error_message(Some(StrBytes::from_string(message.to_string())));
        Ok(Outcome::Failed(version, encode(&response, version)?, reason))
    };
    let Some(mut exchange) = state.exchange.take() else {
        let response =
            SaslAuthenticateResponse::default().with_error_code(ResponseError::IllegalSaslState.code());
        return Ok(Outcome::Failed(
            version,
            encode(&response, version)?,
            "SaslAuthenticate before SaslHandshake".into(),
        ));
    };
    let now = now_ms();
    let mechanism = exchange.mechanism().name();
    let ip = session.peer.ip();
    if !security.may_attempt(ip, now) {
        metrics::counter!("corelog_kafka_authentications_total", "mechanism" => mechanism, "result" => "limited")
            .increment(1);
        return failed(
            "Authentication failed: too many failed attempts from this address, retry later",
            format!("{ip} is over {} failed authentications a minute", security::AUTH_FAILURES_PER_WINDOW),
        );
    }
    let checker = security.clone();
    let token = request.auth_bytes;
    let (exchange, step) = tokio::task::spawn_blocking(move || {
        let step = checker.authenticate(&mut exchange, &token, now);
        (exchange, step)
    })
    .await
    .map_err(|e| format!("authentication task failed: {e}"))?;
    state.exchange = Some(exchange);
    match step {
        SaslStep::Continue(message) => {
            let response = SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(message));
            Ok(Outcome::Continue(version, encode(&response, version)?))
        }
        SaslStep::Done { principal, message } => {
            metrics::counter!("corelog_kafka_authentications_total", "mechanism" => mechanism, "result" => "ok")
                .increment(1);
            let response = SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(message));
            Ok(Outcome::Authenticated(version, encode(&response, version)?, principal))
        }
        SaslStep::Failed(reason) => {
            security.record_failure(ip, now);
            metrics::counter!("corelog_kafka_authentications_total", "mechanism" => mechanism, "result" => "failed")
                .increment(1);
            failed(
                &format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"),
                reason,
            )
        }
    }
}

/// SaslHandshake once a connection is past authentication, or on a listener without
/// SASL: an illegal state (Kafka's answer), with the connection kept.
pub(super) async fn serve_sasl_handshake(call: &super::api::Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    SaslHandshakeRequest::decode(body, version).map_err(decode_error(ApiKey::SaslHandshake, version))?;
    let response = SaslHandshakeResponse::default().with_error_code(ResponseError::IllegalSaslState.code());
    super::api::respond(&response, version)
}

/// SaslAuthenticate once a connection is past authentication, or without SASL.
pub(super) async fn serve_sasl_authenticate(call: &super::api::Call<'_>, body: &mut Bytes) -> Answer {
    let version = call.version;
    SaslAuthenticateRequest::decode(body, version)
        .map_err(decode_error(ApiKey::SaslAuthenticate, version))?;
    let response =
        SaslAuthenticateResponse::default().with_error_code(ResponseError::IllegalSaslState.code());
    super::api::respond(&response, version)
}
