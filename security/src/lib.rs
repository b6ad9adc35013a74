//! corelog's security: who a client is (TLS, SASL SCRAM and PLAIN) and what it may do
//! (Kafka's ACLs), with users and ACLs stored durably in the data directory.
//!
//! Layout: [`scram`] (credentials and the SCRAM/PLAIN exchanges), [`acl`] (Kafka's ACL
//! model and rule), [`store`] (the users and ACL files, shared with the `corelog users`
//! and `corelog acl` commands), [`tls`] (rustls configurations, certificate
//! principals), and here the broker's view of all of it: [`Security`] (listeners,
//! authentication with per-address failure limits, authorization with super users and
//! the query sinks) and [`SaslSession`] (one connection's SASL state).
//!
//! Rules (Kafka's): when any listener authenticates (SSL, SASL_PLAINTEXT, SASL_SSL),
//! every request is authorized and no matching ACL means deny; on a broker with only
//! PLAINTEXT listeners nothing is authorized (the loopback default). A PLAINTEXT
//! connection's principal is `User:ANONYMOUS`, as is an SSL one without a client
//! certificate. Super users may do anything, except write a query's sink topics:
//! those belong to the query engine's internal principal ([`INTERNAL_PRINCIPAL`]),
//! which acts inside the broker and never over the wire.
//!
//! This crate links neither the engine nor a runtime: it is pure policy and files.

pub mod acl;
pub mod scram;
pub mod store;
pub mod tls;

use acl::{Acls, Operation, ResourceType};
use scram::{Mechanism, ScramExchange, Step};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use store::{Store, Users, Watched};

/// The principal of a connection that did not authenticate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";
/// The principal the in-broker query engine acts as; no client can authenticate as
/// it (the user name is refused by the store).
pub const INTERNAL_PRINCIPAL: &str = "User:corelog-internal";
/// Failed authentications one client address may have in [`AUTH_FAILURE_WINDOW_MS`];
/// past that, its attempts are refused without checking a password.
pub const AUTH_FAILURES_PER_WINDOW: u32 = 10;
/// The window of [`AUTH_FAILURES_PER_WINDOW`].
pub const AUTH_FAILURE_WINDOW_MS: i64 = 60_000;
/// Client addresses whose failures are remembered; when full (and none has expired),
/// addresses not remembered are refused until one expires (fail closed).
pub const AUTH_FAILURE_ADDRESSES_MAX: usize = 65_536;
/// How long a failed authentication's answer is held back (Kafka's
/// `connection.failed.authentication.delay.ms`).
pub const AUTH_FAILURE_DELAY_MS: u64 = 100;
/// Longest a connection on an authenticating listener may take to authenticate.
pub const AUTHENTICATION_TIMEOUT_MS: u64 = 10_000;
/// Largest request frame read before a connection authenticated (Kafka's
/// `sasl.server.max.receive.size`).
pub const PRE_AUTH_FRAME_BYTES_MAX: usize = 512 << 10;

/// A listener's security protocol (Kafka's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Plaintext, Self::Ssl, Self::SaslPlaintext, Self::SaslSsl]
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

impl std::fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One listener: a protocol on an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub protocol: SecurityProtocol,
    pub address: SocketAddr,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.protocol, self.address)
    }
}

/// Parses Kafka's `listeners` syntax: `PLAINTEXT://127.0.0.1:9092,SASL_SSL://0.0.0.0:9093`.
pub fn parse_listeners(text: &str) -> Result<Vec<Listener>, String> {
    let mut listeners = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (protocol, address) = item
            .split_once("://")
            .ok_or_else(|| format!("listener {item:?}: expected PROTOCOL://HOST:PORT"))?;
        let protocol = SecurityProtocol::parse(protocol).ok_or_else(|| {
            format!("listener {item:?}: protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        })?;
        let address: SocketAddr = match address.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}").parse(),
            None => address.parse(),
        }
        .map_err(|e| format!("listener {item:?}: {e} (use an IP address and port)"))?;
        if listeners.iter().any(|l: &Listener| l.address == address) {
            return Err(format!("listener {item:?}: address used twice"));
        }
        listeners.push(Listener { protocol, address });
    }
    if listeners.is_empty() {
        return Err("no listener given".into());
    }
    Ok(listeners)
}

/// What the broker's security is built from (`corelog serve`'s flags).
#[derive(Debug, Clone, Default)]
pub struct SecurityConfig {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// `User:NAME` principals allowed everything (but writing query sinks).
    pub super_users: Vec<String>,
    /// Allow PLAIN on SASL_PLAINTEXT listeners (passwords in the clear).
    pub plain_without_tls: bool,
    /// Allow PLAINTEXT and SASL_PLAINTEXT listeners on non-loopback addresses.
    pub allow_insecure_listener: bool,
}

/// Why the security setup was refused.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// A SASL mechanism a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    Scram(Mechanism),
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::Scram(m) => m.name(),
        }
    }
}

/// The broker's security: listeners' TLS, users, ACLs and their rules.
#[derive(Debug)]
pub struct Security {
    enforce: bool,
    super_users: Vec<String>,
    plain_without_tls: bool,
    tls: Option<tls::TlsConfigs>,
    store: Store,
    users: Watched<Users>,
    acls: Watched<Acls>,
    /// Topics only the query engine may write (the queries' sinks).
    internal_topics: Vec<String>,
    fake_secret: [u8; 32],
    failures: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl Security {
    /// Checks the listeners against the configuration (TLS material present where a
    /// listener needs it, insecure listeners only on loopback unless allowed) and reads
    /// the data directory's users and ACLs.
    pub fn open(
        data_dir: &Path,
        listeners: &[Listener],
        config: &SecurityConfig,
        internal_topics: Vec<String>,
    ) -> Result<Self, SetupError> {
        for listener in listeners {
            if !listener.protocol.tls()
                && !listener.address.ip().is_loopback()
                && !config.allow_insecure_listener
            {
                return Err(SetupError::Invalid(format!(
                    "refusing {listener}: a {} listener on a non-loopback address sends data (and passwords) in the clear; use SSL or SASL_SSL, or pass --allow-insecure-listener",
                    listener.protocol
                )));
            }
        }
        let needs_tls = listeners.iter().any(|l| l.protocol.tls());
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                Some(tls::TlsConfigs::load(cert, key, config.tls_client_ca.as_deref())?)
            }
            (None, None) if !needs_tls => None,
            (None, None) => {
                return Err(SetupError::Invalid(
                    "an SSL or SASL_SSL listener needs --tls-cert and --tls-key".into(),
                ))
            }
            _ => return Err(SetupError::Invalid("--tls-cert and --tls-key go together".into())),
        };
        if config.tls_client_ca.is_some() && !listeners.iter().any(|l| l.protocol == SecurityProtocol::Ssl) {
            return Err(SetupError::Invalid(
                "--tls-client-ca is for SSL listeners (mutual TLS); none is given".into(),
            ));
        }
        for user in &config.super_users {
            if !user.starts_with("User:") || user.len() == 5 {
                return Err(SetupError::Invalid(format!("--super-users: {user:?} is not User:NAME")));
            }
        }
        let store = Store::new(data_dir);
        Ok(Self {
            enforce: listeners.iter().any(|l| l.protocol != SecurityProtocol::Plaintext),
            super_users: config.super_users.clone(),
            plain_without_tls: config.plain_without_tls,
            tls,
            users: Watched::open(store.clone(), store::USERS_FILE, Store::users)?,
            acls: Watched::open(store.clone(), store::ACLS_FILE, Store::acls)?,
            store,
            internal_topics,
            fake_secret: rand::random(),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Whether requests are authorized at all (some listener authenticates).
    pub fn enforced(&self) -> bool {
        self.enforce
    }

    /// The TLS configuration of a `protocol` listener (None for plaintext ones).
    pub fn tls_config(&self, protocol: SecurityProtocol) -> Option<Arc<rustls::ServerConfig>> {
        let tls = self.tls.as_ref()?;
        match protocol {
            SecurityProtocol::Ssl => Some(tls.mutual.clone().unwrap_or_else(|| tls.server_auth.clone())),
            SecurityProtocol::SaslSsl => Some(tls.server_auth.clone()),
            _ => None,
        }
    }

    /// The SASL mechanisms a `protocol` listener offers.
    pub fn mechanisms(&self, protocol: SecurityProtocol) -> Vec<SaslMechanism> {
        let mut out: Vec<SaslMechanism> = Mechanism::ALL.into_iter().map(SaslMechanism::Scram).collect();
        if protocol == SecurityProtocol::SaslSsl || self.plain_without_tls {
            out.push(SaslMechanism::Plain);
        }
        out
    }

    /// Whether `principal` from `host` may do `operation` on resource `name` of `kind`
    /// at `now_ms` (see the crate note for the rules).
    pub fn authorize(
        &self,
        principal: &str,
        host: IpAddr,
        operation: Operation,
        kind: ResourceType,
        name: &str,
        now_ms: i64,
    ) -> bool {
        if !self.enforce {
            return true;
        }
        if kind == ResourceType::Topic
            && matches!(
                operation,
                Operation::Write | Operation::Delete | Operation::Create | Operation::Alter
            )
            && self.internal_topics.iter().any(|t| t == name)
        {
            return principal == INTERNAL_PRINCIPAL;
        }
        if self.is_super_user(principal) {
            return true;
        }
        self.acls.get(now_ms).authorizes(principal, &host.to_string(), operation, kind, name)
    }

    /// Whether `principal` may write some topic (idempotent producers, Kafka's rule).
    pub fn authorize_any_write(&self, principal: &str, host: IpAddr, now_ms: i64) -> bool {
        !self.enforce
            || self.is_super_user(principal)
            || self.acls.get(now_ms).authorizes_any(
                principal,
                &host.to_string(),
                Operation::Write,
                ResourceType::Topic,
            )
    }

    fn is_super_user(&self, principal: &str) -> bool {
        principal == INTERNAL_PRINCIPAL || self.super_users.iter().any(|s| s == principal)
    }

    /// The ACLs now.
    pub fn acls(&self, now_ms: i64) -> Arc<Acls> {
        self.acls.get(now_ms)
    }

    /// The users now.
    pub fn users(&self, now_ms: i64) -> Arc<Users> {
        self.users.get(now_ms)
    }

    /// Changes the ACLs durably (CreateAcls, DeleteAcls).
    pub fn update_acls<T>(
        &self,
        change: impl FnOnce(&mut Acls) -> Result<T, store::StoreError>,
    ) -> Result<T, store::StoreError> {
        let (out, acls) = self.store.update_acls(change)?;
        self.acls.set(acls);
        Ok(out)
    }

    /// Changes the users durably (AlterUserScramCredentials).
    pub fn update_users<T>(
        &self,
        change: impl FnOnce(&mut Users) -> Result<T, store::StoreError>,
    ) -> Result<T, store::StoreError> {
        let (out, users) = self.store.update_users(change)?;
        self.users.set(users);
        Ok(out)
    }

    /// Whether `address` may try to authenticate now (it has not failed
    /// [`AUTH_FAILURES_PER_WINDOW`] times in the window).
    pub fn may_attempt(&self, address: IpAddr, now_ms: i64) -> bool {
        let mut failures = self.failures.lock().expect("failure table lock");
        match failures.get(&address) {
            Some((since, count)) if now_ms - since < AUTH_FAILURE_WINDOW_MS => {
                *count < AUTH_FAILURES_PER_WINDOW
            }
            Some(_) => {
                failures.remove(&address);
                true
            }
            None => failures.len() < AUTH_FAILURE_ADDRESSES_MAX || evict_expired(&mut failures, now_ms),
        }
    }

    /// Counts a failed authentication of `address`.
    pub fn record_failure(&self, address: IpAddr, now_ms: i64) {
        let mut failures = self.failures.lock().expect("failure table lock");
        if failures.len() >= AUTH_FAILURE_ADDRESSES_MAX
            && !failures.contains_key(&address)
            && !evict_expired(&mut failures, now_ms)
        {
            return;
        }
        let entry = failures.entry(address).or_insert((now_ms, 0));
        if now_ms - entry.0 >= AUTH_FAILURE_WINDOW_MS {
            *entry = (now_ms, 0);
        }
        entry.1 += 1;
    }

    /// Starts a SASL exchange for `mechanism` on a `protocol` listener, or names the
    /// enabled mechanisms.
    pub fn start_sasl(
        &self,
        protocol: SecurityProtocol,
        mechanism: &str,
    ) -> Result<SaslSession, Vec<&'static str>> {
        let offered = self.mechanisms(protocol);
        match offered.iter().find(|m| m.name().eq_ignore_ascii_case(mechanism)) {
            Some(SaslMechanism::Plain) => Ok(SaslSession { mechanism: SaslMechanism::Plain, scram: None }),
            Some(SaslMechanism::Scram(m)) => {
                Ok(SaslSession { mechanism: SaslMechanism::Scram(*m), scram: Some(ScramExchange::new(*m)) })
            }
            None => Err(offered.iter().map(|m| m.name()).collect()),
        }
    }

    /// Takes one SaslAuthenticate token of `session`.
    pub fn authenticate(&self, session: &mut SaslSession, token: &[u8], now_ms: i64) -> SaslStep {
        let users = self.users.get(now_ms);
        match (&session.mechanism, &mut session.scram) {
            (SaslMechanism::Plain, _) => match scram::parse_plain(token) {
                Ok((user, password)) => {
                    let verified = users.credentials(&user).any(|c| c.verify_password(&password));
                    if verified {
                        SaslStep::Done { principal: format!("User:{user}"), message: Vec::new() }
                    } else {
                        SaslStep::Failed(format!("invalid credentials for user {user:?} (PLAIN)"))
                    }
                }
                Err(error) => SaslStep::Failed(format!("PLAIN: {error}")),
            },
            (SaslMechanism::Scram(m), Some(exchange)) => {
                let nonce = server_nonce();
                let lookup = |user: &str| users.credential(user, *m).cloned();
                match exchange.step(token, lookup, &self.fake_secret, &nonce) {
                    Ok(Step::Continue(message)) => SaslStep::Continue(message),
                    Ok(Step::Authenticated { user, message }) => {
                        SaslStep::Done { principal: format!("User:{user}"), message }
                    }
                    Err(error) => SaslStep::Failed(format!("{}: {error}", m.name())),
                }
            }
            (SaslMechanism::Scram(_), None) => SaslStep::Failed("SCRAM exchange missing".into()),
        }
    }
}

fn evict_expired(failures: &mut HashMap<IpAddr, (i64, u32)>, now_ms: i64) -> bool {
    failures.retain(|_, (since, _)| now_ms - *since < AUTH_FAILURE_WINDOW_MS);
    failures.len() < AUTH_FAILURE_ADDRESSES_MAX
}

fn server_nonce() -> String {
    use base64::Engine as _;
    let bytes: [u8; 18] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One connection's SASL exchange.
#[derive(Debug)]
pub struct SaslSession {
    mechanism: SaslMechanism,
    scram: Option<ScramExchange>,
}

impl SaslSession {
    pub fn mechanism(&self) -> SaslMechanism {
        self.mechanism
    }
}

/// What one SaslAuthenticate token produced.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslStep {
    /// Send this and expect another token.
    Continue(Vec<u8>),
    /// Authenticated as `principal`; send `message`.
    Done { principal: String, message: Vec<u8> },
    /// Refused (the reason is for the log, not the client).
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(protocol: SecurityProtocol) -> Listener {
        Listener { protocol, address: "127.0.0.1:9092".parse().unwrap() }
    }

    #[test]
    fn listeners_parse_as_kafka_writes_them() {
        let listeners = parse_listeners("PLAINTEXT://127.0.0.1:9092,SASL_SSL://0.0.0.0:9093").unwrap();
        assert_eq!(listeners[1].protocol, SecurityProtocol::SaslSsl);
        assert_eq!(listeners[1].address.port(), 9093);
        assert_eq!(parse_listeners("ssl://localhost:1").unwrap()[0].address.to_string(), "127.0.0.1:1");
        assert!(parse_listeners("HTTP://127.0.0.1:1").is_err());
        assert!(parse_listeners("PLAINTEXT://127.0.0.1:1,SSL://127.0.0.1:1").is_err());
        assert!(parse_listeners("").is_err());
    }

    #[test]
    fn insecure_listeners_beyond_loopback_need_a_flag() {
        let dir = tempfile::tempdir().unwrap();
        let open =
            Listener { protocol: SecurityProtocol::Plaintext, address: "0.0.0.0:9092".parse().unwrap() };
        let error = Security::open(dir.path(), &[open], &SecurityConfig::default(), vec![]).unwrap_err();
        assert!(error.to_string().contains("--allow-insecure-listener"), "{error}");
        let allowed = SecurityConfig { allow_insecure_listener: true, ..SecurityConfig::default() };
        assert!(Security::open(dir.path(), &[open], &allowed, vec![]).is_ok());
        let tls = Security::open(
            dir.path(),
            &[loopback(SecurityProtocol::SaslSsl)],
            &SecurityConfig::default(),
            vec![],
        );
        assert!(tls.unwrap_err().to_string().contains("--tls-cert"));
    }

    #[test]
    fn plaintext_only_brokers_authorize_everything_and_sasl_ones_follow_acls() {
        let dir = tempfile::tempdir().unwrap();
        let config = SecurityConfig { super_users: vec!["User:admin".into()], ..SecurityConfig::default() };
        let open =
            Security::open(dir.path(), &[loopback(SecurityProtocol::Plaintext)], &config, vec![]).unwrap();
        let host: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(open.authorize(ANONYMOUS, host, Operation::Write, ResourceType::Topic, "t", 0));
        let sasl = Security::open(
            dir.path(),
            &[loopback(SecurityProtocol::SaslPlaintext)],
            &config,
            vec!["fraud.decisions".into()],
        )
        .unwrap();
        assert!(!sasl.authorize("User:bob", host, Operation::Write, ResourceType::Topic, "t", 0));
        assert!(sasl.authorize("User:admin", host, Operation::Write, ResourceType::Topic, "t", 0));
        assert!(!sasl.authorize(
            "User:admin",
            host,
            Operation::Write,
            ResourceType::Topic,
            "fraud.decisions",
            0
        ));
        assert!(sasl.authorize(
            "User:admin",
            host,
            Operation::Read,
            ResourceType::Topic,
            "fraud.decisions",
            0
        ));
        assert!(sasl.authorize(
            INTERNAL_PRINCIPAL,
            host,
            Operation::Write,
            ResourceType::Topic,
            "fraud.decisions",
            0
        ));
        assert!(!sasl.mechanisms(SecurityProtocol::SaslPlaintext).contains(&SaslMechanism::Plain));
        assert!(sasl.start_sasl(SecurityProtocol::SaslPlaintext, "PLAIN").is_err());
        assert!(sasl.start_sasl(SecurityProtocol::SaslPlaintext, "SCRAM-SHA-512").is_ok());
    }

    #[test]
    fn failed_authentications_are_limited_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let sasl = Security::open(
            dir.path(),
            &[loopback(SecurityProtocol::SaslPlaintext)],
            &SecurityConfig::default(),
            vec![],
        )
        .unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..AUTH_FAILURES_PER_WINDOW {
            assert!(sasl.may_attempt(a, 1000));
            sasl.record_failure(a, 1000);
        }
        assert!(!sasl.may_attempt(a, 1000));
        assert!(sasl.may_attempt(b, 1000), "another address is not affected");
        assert!(sasl.may_attempt(a, 1000 + AUTH_FAILURE_WINDOW_MS), "the window ends");
    }

    #[test]
    fn plain_and_scram_authenticate_against_the_store() {
        let dir = tempfile::tempdir().unwrap();
        Store::new(dir.path())
            .update_users(|u| {
                u.upsert("alice", scram::Credential::new(Mechanism::ScramSha256, b"pw", 4096).unwrap())
            })
            .unwrap();
        let sasl = Security::open(
            dir.path(),
            &[loopback(SecurityProtocol::SaslSsl)],
            &SecurityConfig::default(),
            vec![],
        );
        // SASL_SSL needs TLS material; authenticate through a SASL_PLAINTEXT broker
        // that allows PLAIN instead.
        assert!(sasl.is_err());
        let config = SecurityConfig { plain_without_tls: true, ..SecurityConfig::default() };
        let sasl = Security::open(dir.path(), &[loopback(SecurityProtocol::SaslPlaintext)], &config, vec![])
            .unwrap();
        let mut session = sasl.start_sasl(SecurityProtocol::SaslPlaintext, "plain").unwrap();
        assert_eq!(
            sasl.authenticate(&mut session, b"\0alice\0pw", 0),
            SaslStep::Done { principal: "User:alice".into(), message: vec![] }
        );
        let mut session = sasl.start_sasl(SecurityProtocol::SaslPlaintext, "PLAIN").unwrap();
        assert!(matches!(sasl.authenticate(&mut session, b"\0alice\0wrong", 0), SaslStep::Failed(_)));
        let error = sasl.start_sasl(SecurityProtocol::SaslPlaintext, "GSSAPI").unwrap_err();
        assert!(error.contains(&"SCRAM-SHA-256") && error.contains(&"PLAIN"));
    }
}
