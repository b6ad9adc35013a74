//! SCRAM (RFC 5802, RFC 7677) and PLAIN (RFC 4616) on the server side.
//!
//! Owns: the credential a user is stored as ([`Credential`]: salt, iteration count,
//! StoredKey, ServerKey — never the password or the salted password), the server's
//! two-round SCRAM exchange ([`ScramExchange`]) and the check of a PLAIN password
//! against a stored SCRAM credential.
//!
//! Invariants: proofs and keys are compared in constant time; the client's final
//! nonce must end with the combined nonce the server sent (Kafka's check, which older
//! librdkafka releases need: they prefix their own nonce once more); an unknown user runs the
//! same exchange against a fake credential derived from a per-process secret and fails
//! at the proof, so answers do not tell which users exist; every message is bounded
//! ([`SCRAM_MESSAGE_BYTES_MAX`]) before it is parsed. Channel binding is refused
//! (Kafka does not support it either).
//!
//! Never: keeps a password, logs a secret, or reads a file (the store is `users`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Longest SCRAM or PLAIN message read from a client.
pub const SCRAM_MESSAGE_BYTES_MAX: usize = 4096;
/// Fewest PBKDF2 iterations a stored credential may have (Kafka's minimum).
pub const ITERATIONS_MIN: u32 = 4096;
/// Most PBKDF2 iterations a stored credential may have (Kafka's maximum): bounds the
/// work one authentication costs the broker.
pub const ITERATIONS_MAX: u32 = 16384;
/// Iterations of credentials corelog creates itself.
pub const ITERATIONS_DEFAULT: u32 = 8192;
/// Salt bytes of credentials corelog creates.
pub const SALT_BYTES: usize = 32;
/// Longest salt accepted from a credential upsert or the store.
pub const SALT_BYTES_MAX: usize = 1024;

/// A SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mechanism {
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    /// Both SCRAM mechanisms, strongest first.
    pub const ALL: [Mechanism; 2] = [Mechanism::ScramSha512, Mechanism::ScramSha256];

    /// The SASL name (`SCRAM-SHA-256`).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism with SASL name `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The number Kafka's AlterUserScramCredentials uses (1 = SHA-256, 2 = SHA-512).
    pub fn kafka_type(self) -> i8 {
        match self {
            Mechanism::ScramSha256 => 1,
            Mechanism::ScramSha512 => 2,
        }
    }

    /// The mechanism Kafka numbers `kind`.
    pub fn from_kafka_type(kind: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.kafka_type() == kind)
    }

    /// The hash output size in bytes (the size of every key).
    pub fn key_bytes(self) -> usize {
        match self {
            Mechanism::ScramSha256 => 32,
            Mechanism::ScramSha512 => 64,
        }
    }

    fn hmac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::ScramSha256 => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
            Mechanism::ScramSha512 => {
                let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::ScramSha256 => Sha256::digest(bytes).to_vec(),
            Mechanism::ScramSha512 => Sha512::digest(bytes).to_vec(),
        }
    }

    /// `Hi(password, salt, iterations)`: PBKDF2 with this mechanism's HMAC.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0; self.key_bytes()];
        match self {
            Mechanism::ScramSha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            Mechanism::ScramSha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a user's SCRAM credential for one mechanism is stored as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub mechanism: Mechanism,
    /// Base64 of the salt.
    pub salt: String,
    pub iterations: u32,
    /// Base64 of `H(ClientKey)`.
    pub stored_key: String,
    /// Base64 of `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: String,
}

/// Why a credential or an exchange was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("iterations {0} outside {ITERATIONS_MIN}..={ITERATIONS_MAX}")]
    Iterations(u32),
    #[error("invalid stored credential: {0}")]
    Stored(&'static str),
}

impl Credential {
    /// A new credential for `password` with a random salt.
    pub fn new(mechanism: Mechanism, password: &[u8], iterations: u32) -> Result<Self, ScramError> {
        let salt: [u8; SALT_BYTES] = rand::random();
        let salted = mechanism.salted_password(password, &salt, Self::check_iterations(iterations)?);
        Self::from_salted(mechanism, &salt, iterations, &salted)
    }

    /// The credential of an already salted password (what Kafka's
    /// AlterUserScramCredentials carries).
    pub fn from_salted(
        mechanism: Mechanism,
        salt: &[u8],
        iterations: u32,
        salted_password: &[u8],
    ) -> Result<Self, ScramError> {
        Self::check_iterations(iterations)?;
        if salt.is_empty() || salt.len() > SALT_BYTES_MAX {
            return Err(ScramError::Stored("salt length"));
        }
        if salted_password.len() != mechanism.key_bytes() {
            return Err(ScramError::Stored("salted password length"));
        }
        let client_key = mechanism.hmac(salted_password, b"Client Key");
        Ok(Self {
            mechanism,
            salt: B64.encode(salt),
            iterations,
            stored_key: B64.encode(mechanism.hash(&client_key)),
            server_key: B64.encode(mechanism.hmac(salted_password, b"Server Key")),
        })
    }

    fn check_iterations(iterations: u32) -> Result<u32, ScramError> {
        if (ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            Ok(iterations)
        } else {
            Err(ScramError::Iterations(iterations))
        }
    }

    /// The decoded parts, checked: what a credential read from disk must pass before
    /// it is used (a file can lie).
    pub fn keys(&self) -> Result<Keys, ScramError> {
        Self::check_iterations(self.iterations)?;
        let salt = B64.decode(&self.salt).map_err(|_| ScramError::Stored("salt is not base64"))?;
        let stored_key = B64.decode(&self.stored_key).map_err(|_| ScramError::Stored("stored key"))?;
        let server_key = B64.decode(&self.server_key).map_err(|_| ScramError::Stored("server key"))?;
        let n = self.mechanism.key_bytes();
        if salt.is_empty() || salt.len() > SALT_BYTES_MAX || stored_key.len() != n || server_key.len() != n {
            return Err(ScramError::Stored("field lengths"));
        }
        Ok(Keys { mechanism: self.mechanism, salt, iterations: self.iterations, stored_key, server_key })
    }

    /// Whether `password` is this credential's password (PLAIN over a SCRAM store).
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let Ok(keys) = self.keys() else { return false };
        let salted = keys.mechanism.salted_password(password, &keys.salt, keys.iterations);
        let client_key = keys.mechanism.hmac(&salted, b"Client Key");
        bool::from(keys.mechanism.hash(&client_key).ct_eq(&keys.stored_key))
    }
}

/// A credential's decoded keys.
#[derive(Debug, Clone)]
pub struct Keys {
    mechanism: Mechanism,
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// Where the server's SCRAM exchange with one client stands.
#[derive(Debug)]
pub enum ScramExchange {
    /// Waiting for the client-first message.
    Start { mechanism: Mechanism },
    /// Sent server-first; waiting for client-final.
    Challenged {
        user: String,
        keys: Keys,
        /// The user exists (otherwise the keys are fake and the proof must fail).
        known: bool,
        nonce: String,
        gs2_header: String,
        auth_prefix: String,
    },
    /// Finished (either way); no more messages are accepted.
    Done,
}

/// What one step of an exchange produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this message and wait for the next.
    Continue(Vec<u8>),
    /// Authenticated as `user`; send this final message.
    Authenticated { user: String, message: Vec<u8> },
}

impl ScramExchange {
    pub fn new(mechanism: Mechanism) -> Self {
        ScramExchange::Start { mechanism }
    }

    /// Takes the client's next message. `lookup` gives the stored credential of a user
    /// for this mechanism; `fake_secret` seeds the fake credential of unknown users.
    pub fn step(
        &mut self,
        message: &[u8],
        lookup: impl FnOnce(&str) -> Option<Credential>,
        fake_secret: &[u8],
        server_nonce: &str,
    ) -> Result<Step, ScramError> {
        if message.len() > SCRAM_MESSAGE_BYTES_MAX {
            return Err(ScramError::Malformed("message too long"));
        }
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        match std::mem::replace(self, ScramExchange::Done) {
            ScramExchange::Start { mechanism } => {
                let first = parse_client_first(text)?;
                let stored =
                    lookup(&first.user).and_then(|c| c.keys().ok().filter(|k| k.mechanism == mechanism));
                let known = stored.is_some();
                let keys = stored.unwrap_or_else(|| fake_keys(mechanism, fake_secret, &first.user));
                let nonce = format!("{}{}", first.nonce, server_nonce);
                let server_first = format!("r={nonce},s={},i={}", B64.encode(&keys.salt), keys.iterations);
                *self = ScramExchange::Challenged {
                    user: first.user,
                    keys,
                    known,
                    nonce,
                    gs2_header: first.gs2_header,
                    auth_prefix: format!("{},{server_first}", first.bare),
                };
                Ok(Step::Continue(server_first.into_bytes()))
            }
            ScramExchange::Challenged { user, keys, known, nonce, gs2_header, auth_prefix } => {
                let (without_proof, proof) =
                    text.rsplit_once(",p=").ok_or(ScramError::Malformed("no proof"))?;
                let mut fields = without_proof.split(',');
                let binding =
                    fields.next().and_then(|f| f.strip_prefix("c=")).ok_or(ScramError::Malformed("c="))?;
                let echoed =
                    fields.next().and_then(|f| f.strip_prefix("r=")).ok_or(ScramError::Malformed("r="))?;
                if B64.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
                    return Err(ScramError::Malformed("channel binding data differs from the GS2 header"));
                }
                // Kafka's rule: the echoed nonce must end with the combined one
                // (librdkafka before 2.x, still Debian's, echoes the client nonce twice).
                if !echoed.ends_with(&nonce) {
                    return Err(ScramError::Malformed("nonce differs"));
                }
                let proof = B64.decode(proof).map_err(|_| ScramError::Malformed("proof is not base64"))?;
                let mechanism = keys.mechanism;
                if proof.len() != mechanism.key_bytes() {
                    return Err(ScramError::InvalidCredentials);
                }
                let auth_message = format!("{auth_prefix},{without_proof}");
                let signature = mechanism.hmac(&keys.stored_key, auth_message.as_bytes());
                let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
                let matches = bool::from(mechanism.hash(&client_key).ct_eq(&keys.stored_key));
                if !(matches && known) {
                    return Err(ScramError::InvalidCredentials);
                }
                let server_signature = mechanism.hmac(&keys.server_key, auth_message.as_bytes());
                Ok(Step::Authenticated {
                    user,
                    message: format!("v={}", B64.encode(server_signature)).into_bytes(),
                })
            }
            ScramExchange::Done => Err(ScramError::Malformed("exchange already finished")),
        }
    }
}

struct ClientFirst {
    gs2_header: String,
    bare: String,
    user: String,
    nonce: String,
}

fn parse_client_first(text: &str) -> Result<ClientFirst, ScramError> {
    // gs2-header: cbind-flag "," [authzid] ","
    let (flag, rest) = text.split_once(',').ok_or(ScramError::Malformed("no GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("GS2 flag")),
    }
    let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("no GS2 header"))?;
    let gs2_header = format!("{flag},{authzid},");
    let mut user = None;
    let mut nonce = None;
    for (i, field) in bare.split(',').enumerate() {
        match (i, field.split_once('=')) {
            (0, Some(("m", _))) => return Err(ScramError::Malformed("mandatory extension")),
            (0, Some(("n", name))) => user = Some(sasl_name(name)?),
            (1, Some(("r", value))) => nonce = Some(value.to_string()),
            (0 | 1, _) => return Err(ScramError::Malformed("expected n= then r=")),
            _ => {} // optional extensions (Kafka's tokenauth): ignored
        }
    }
    let user = user.ok_or(ScramError::Malformed("no user"))?;
    let nonce = nonce.filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','));
    let nonce = nonce.ok_or(ScramError::Malformed("nonce"))?;
    if let Some(authzid) = authzid.strip_prefix("a=") {
        if sasl_name(authzid)? != user {
            return Err(ScramError::Malformed("authorization id differs from the user"));
        }
    } else if !authzid.is_empty() {
        return Err(ScramError::Malformed("authorization id"));
    }
    Ok(ClientFirst { gs2_header, bare: bare.to_string(), user, nonce })
}

/// Decodes a SCRAM `saslname` (`=2C` is `,`, `=3D` is `=`).
fn sasl_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("user name escape")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::Malformed("empty user"));
    }
    Ok(out)
}

/// A credential for a user that does not exist: stable per user and process, so
/// asking twice gives the same salt.
fn fake_keys(mechanism: Mechanism, secret: &[u8], user: &str) -> Keys {
    let salt = mechanism.hmac(secret, user.as_bytes());
    let stored_key = mechanism.hmac(secret, &salt);
    Keys {
        mechanism,
        salt: salt[..SALT_BYTES.min(salt.len())].to_vec(),
        iterations: ITERATIONS_DEFAULT,
        server_key: stored_key.clone(),
        stored_key,
    }
}

/// Parses a PLAIN message (`authzid NUL authcid NUL password`) into user and password;
/// an authzid other than empty or the user is refused (Kafka does the same).
pub fn parse_plain(message: &[u8]) -> Result<(String, Vec<u8>), ScramError> {
    if message.len() > SCRAM_MESSAGE_BYTES_MAX {
        return Err(ScramError::Malformed("message too long"));
    }
    let mut parts = message.splitn(3, |b| *b == 0);
    let (Some(authzid), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ScramError::Malformed("PLAIN needs three NUL-separated fields"));
    };
    let user = std::str::from_utf8(user).map_err(|_| ScramError::Malformed("user is not UTF-8"))?;
    if user.is_empty() || password.is_empty() {
        return Err(ScramError::Malformed("empty user or password"));
    }
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Err(ScramError::Malformed("authorization id differs from the user"));
    }
    Ok((user.to_string(), password.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange, run through the server side.
    #[test]
    fn rfc7677_sha256_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let mechanism = Mechanism::ScramSha256;
        let salted = mechanism.salted_password(b"pencil", &salt, 4096);
        let credential = Credential::from_salted(mechanism, &salt, 4096, &salted).unwrap();
        let mut exchange = ScramExchange::new(mechanism);
        let first = exchange
            .step(
                b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                |_| Some(credential.clone()),
                b"secret",
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            )
            .unwrap();
        assert_eq!(
            first,
            Step::Continue(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                    .to_vec()
            )
        );
        let last = exchange
            .step(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                |_| None,
                b"secret",
                "",
            )
            .unwrap();
        assert_eq!(
            last,
            Step::Authenticated {
                user: "user".into(),
                message: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
            }
        );
        assert!(
            exchange.step(b"again", |_| None, b"", "").is_err(),
            "a finished exchange takes nothing more"
        );
    }

    #[test]
    fn a_wrong_proof_and_an_unknown_user_fail_the_same_way() {
        let credential = Credential::new(Mechanism::ScramSha512, b"right", ITERATIONS_MIN).unwrap();
        for (user, known) in [("alice", true), ("mallory", false)] {
            let mut exchange = ScramExchange::new(Mechanism::ScramSha512);
            let lookup = |name: &str| (known && name == "alice").then(|| credential.clone());
            let Step::Continue(server_first) =
                exchange.step(format!("n,,n={user},r=abc").as_bytes(), lookup, b"secret", "def").unwrap()
            else {
                panic!("first step continues")
            };
            let server_first = String::from_utf8(server_first).unwrap();
            assert!(server_first.starts_with("r=abcdef,s="), "{server_first}");
            let proof = B64.encode([0u8; 64]);
            let error =
                exchange.step(format!("c=biws,r=abcdef,p={proof}").as_bytes(), |_| None, b"secret", "");
            assert_eq!(error, Err(ScramError::InvalidCredentials));
        }
    }

    #[test]
    fn client_messages_that_lie_are_refused() {
        let credential = Credential::new(Mechanism::ScramSha256, b"pw", ITERATIONS_MIN).unwrap();
        for bad in [
            &b"p=tls-unique,,n=u,r=x"[..],
            b"n,,r=x,n=u",
            b"n,,n=,r=x",
            b"n,,n=u=ZZ,r=x",
            b"n,,n=u,r=",
            b"n,a=other,n=u,r=x",
            b"n,,m=ext,n=u,r=x",
            b"\xff\xfe",
        ] {
            let mut exchange = ScramExchange::new(Mechanism::ScramSha256);
            assert!(exchange.step(bad, |_| Some(credential.clone()), b"s", "n").is_err(), "{bad:?}");
        }
        let mut exchange = ScramExchange::new(Mechanism::ScramSha256);
        exchange.step(b"n,,n=u,r=x", |_| Some(credential.clone()), b"s", "n").unwrap();
        let proof = B64.encode([0u8; 32]);
        // A nonce other than the combined one, and a binding other than the header.
        assert_eq!(
            exchange.step(format!("c=biws,r=xm,p={proof}").as_bytes(), |_| None, b"s", ""),
            Err(ScramError::Malformed("nonce differs"))
        );
        let mut too_long = b"n,,n=u,r=".to_vec();
        too_long.resize(SCRAM_MESSAGE_BYTES_MAX + 1, b'a');
        assert!(ScramExchange::new(Mechanism::ScramSha256).step(&too_long, |_| None, b"s", "n").is_err());
    }

    #[test]
    fn plain_checks_a_password_against_a_scram_credential() {
        let credential = Credential::new(Mechanism::ScramSha256, b"hunter2", ITERATIONS_MIN).unwrap();
        assert!(credential.verify_password(b"hunter2"));
        assert!(!credential.verify_password(b"hunter3"));
        assert_eq!(parse_plain(b"\0bob\0hunter2").unwrap(), ("bob".into(), b"hunter2".to_vec()));
        assert_eq!(parse_plain(b"bob\0bob\0pw").unwrap().0, "bob");
        assert!(parse_plain(b"eve\0bob\0pw").is_err());
        assert!(parse_plain(b"\0bob").is_err());
        assert!(parse_plain(b"\0\0pw").is_err());
    }

    #[test]
    fn stored_credentials_that_lie_are_refused() {
        let good = Credential::new(Mechanism::ScramSha512, b"pw", ITERATIONS_MIN).unwrap();
        assert!(good.keys().is_ok());
        let mut short_key = good.clone();
        short_key.stored_key = B64.encode([1u8; 32]);
        assert!(short_key.keys().is_err());
        let mut huge_iterations = good.clone();
        huge_iterations.iterations = 1 << 30;
        assert_eq!(huge_iterations.keys().unwrap_err(), ScramError::Iterations(1 << 30));
        assert!(!huge_iterations.verify_password(b"pw"), "never runs a billion iterations");
        assert!(Credential::new(Mechanism::ScramSha256, b"pw", 100).is_err());
    }
}
