//! TLS configuration (rustls with the `ring` provider) from PEM files, and the
//! principal of a client certificate.
//!
//! Owns: building the listeners' [`rustls::ServerConfig`]s — one that asks for no
//! client certificate (SASL_SSL, and SSL without `--tls-client-ca`) and one that
//! requires a certificate signed by the client CA (SSL with `--tls-client-ca`: mutual
//! TLS) — and mapping a verified certificate's subject to `User:<RFC 2253 DN>`, as
//! Kafka's default `ssl.principal.mapping.rules` does (`User:CN=writer,O=corelog`).
//!
//! Never: accepts an unverified client certificate as a principal (rustls verified it
//! against the client CA before this module sees it).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Longest a TLS handshake may take before the connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// A TLS configuration failure (named file and reason).
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct TlsError {
    what: &'static str,
    path: String,
    reason: String,
}

fn tls_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError { what, path: path.display().to_string(), reason: reason.to_string() }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(what, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error(what, path, e))?;
    if certs.is_empty() {
        return Err(tls_error(what, path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The server's TLS configurations.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    /// No client certificate asked (SASL_SSL; SSL without a client CA).
    pub server_auth: Arc<rustls::ServerConfig>,
    /// A client certificate required and verified (SSL with a client CA).
    pub mutual: Option<Arc<rustls::ServerConfig>>,
}

impl TlsConfigs {
    /// Loads the certificate chain and key, and the client CA if given.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let chain = certificates(cert, "--tls-cert")?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error("--tls-key", key, e))?;
        let builder = || {
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
        };
        let server_auth = builder()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_error("--tls-cert/--tls-key", cert, e))?;
        let mutual = match client_ca {
            None => None,
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in certificates(path, "--tls-client-ca")? {
                    roots.add(ca).map_err(|e| tls_error("--tls-client-ca", path, e))?;
                }
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| tls_error("--tls-client-ca", path, e))?;
                let config = builder()
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain, key)
                    .map_err(|e| tls_error("--tls-cert/--tls-key", cert, e))?;
                Some(Arc::new(config))
            }
        };
        Ok(Self { server_auth: Arc::new(server_auth), mutual })
    }
}

/// `User:<subject DN in RFC 2253 order>` of a DER certificate (the first of a verified
/// client chain).
pub fn certificate_principal(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for rdn in cert.subject().iter().collect::<Vec<_>>().into_iter().rev() {
        let attributes: Vec<String> = rdn
            .iter()
            .map(|attribute| {
                let oid = attribute.attr_type();
                let name = x509_parser::objects::oid2abbrev(oid, registry)
                    .map(str::to_string)
                    .unwrap_or_else(|_| oid.to_id_string());
                let value = attribute.as_str().map(escape_dn).unwrap_or_else(|_| "#".into());
                format!("{name}={value}")
            })
            .collect();
        parts.push(attributes.join("+"));
    }
    (!parts.is_empty()).then(|| format!("User:{}", parts.join(",")))
}

/// RFC 2253 escaping of an attribute value.
fn escape_dn(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let edge = (i == 0 && (c == ' ' || c == '#')) || (i + 1 == value.chars().count() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn("a,b"), "a\\,b");
        assert_eq!(escape_dn(" x "), "\\ x\\ ");
        assert_eq!(escape_dn("plain"), "plain");
    }

    #[test]
    fn missing_or_empty_pem_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = TlsConfigs::load(&empty, &empty, None).unwrap_err().to_string();
        assert!(error.contains("--tls-cert") && error.contains("no certificate"), "{error}");
        let error = TlsConfigs::load(&dir.path().join("nope"), &empty, None).unwrap_err().to_string();
        assert!(error.contains("nope"), "{error}");
    }
}
