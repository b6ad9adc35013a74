//! TLS, SASL and ACLs against a real `corelog serve`, with clients we did not write:
//! confluent-kafka (librdkafka) over SASL_SSL with SCRAM-SHA-512 and SCRAM-SHA-256,
//! kcat over SASL_SSL with PLAIN, kafka-python over SSL with a client certificate, and
//! confluent-kafka's AdminClient for ACLs. The certificates are made by the `openssl`
//! CLI for each test; users and ACLs by `corelog users` / `corelog acl`.
//!
//! Then a hostile client on the SASL_SSL listener before it authenticated: nothing but
//! ApiVersions, SaslHandshake and SaslAuthenticate is served, frames are bounded, and
//! a silent connection is closed.

mod common;

use common::wire::{self, Wire};
use common::{free_address, run_python, script, Server};
use kafka_protocol::messages::{
    list_offsets_request, GroupId, HeartbeatRequest, HeartbeatResponse, InitProducerIdRequest,
    InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataResponse,
};
use kafka_protocol::messages::{
    metadata_request, ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, MetadataRequest,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::messages::{produce_request, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `corelog` binary.
fn corelog() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corelog"))
}

/// Runs `corelog ARGS` with `stdin`, asserting success.
fn corelog_ok(args: &[&str], stdin: &str) -> String {
    let (ok, stdout, stderr) = common::corelog_with_stdin(args, stdin);
    assert!(ok, "corelog {args:?}: {stderr}");
    stdout
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate
/// with subject `O=corelog, CN=writer`, all made by the `openssl` CLI.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl CLI");
            assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        };
        std::fs::write(dir.join("server.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
            .unwrap();
        let key = ["-newkey", "rsa:2048", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &key,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=corelog test CA"],
            ]
            .concat(),
        );
        for (name, subject, extensions) in
            [("server", "/CN=localhost", "server.cnf"), ("client", "/O=corelog/CN=writer", "client.cnf")]
        {
            let (keyfile, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
            openssl(&[&["req"][..], &key, &["-keyout", &keyfile, "-out", &csr, "-subj", subject]].concat());
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                extensions,
            ]);
        }
        Self { dir: dir.to_path_buf() }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

/// The three listeners of a broker under test.
struct Listeners {
    plaintext: SocketAddr,
    sasl_ssl: SocketAddr,
    ssl: SocketAddr,
}

impl Listeners {
    fn new() -> Self {
        Self { plaintext: free_address(), sasl_ssl: free_address(), ssl: free_address() }
    }

    fn flag(&self) -> String {
        format!("PLAINTEXT://{},SASL_SSL://{},SSL://{}", self.plaintext, self.sasl_ssl, self.ssl)
    }
}

fn start(data: &Path, pki: &Pki, listeners: &Listeners, extra: &[&str]) -> Server {
    let (cert, key, ca) = (pki.path("server.pem"), pki.path("server.key"), pki.path("ca.pem"));
    let flags =
        ["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca, "--super-users", "User:admin"];
    Server::start_listeners(data, &listeners.flag(), listeners.sasl_ssl, &[&flags[..], extra].concat())
}

fn secure(action: &str, args: serde_json::Value) -> serde_json::Value {
    run_python(&[script("secure_clients.py").to_str().unwrap(), action, &args.to_string()])
}

fn sasl(listeners: &Listeners, pki: &Pki, mechanism: &str, user: &str, password: &str) -> serde_json::Value {
    json!({
        "brokers": listeners.sasl_ssl.to_string(), "ca": pki.path("ca.pem"),
        "mechanism": mechanism, "user": user, "password": password,
    })
}

fn with(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

/// kcat over SASL_SSL with PLAIN: `-P` lines in, or `-C` lines out.
fn kcat(
    listeners: &Listeners,
    pki: &Pki,
    user: &str,
    password: &str,
    args: &[&str],
    stdin: &str,
) -> (bool, String) {
    // Debian's kcat with Debian's librdkafka (cargo's library path would hand it the
    // workspace's build instead).
    let mut child = Command::new("kcat")
        .env_remove("LD_LIBRARY_PATH")
        .args(["-b", &listeners.sasl_ssl.to_string()])
        .args(["-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=PLAIN"])
        .args(["-X", &format!("sasl.username={user}"), "-X", &format!("sasl.password={password}")])
        .args(["-X", &format!("ssl.ca.location={}", pki.path("ca.pem"))])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat (ci.sh installs it)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn ints(value: &serde_json::Value) -> Vec<i64> {
    value.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

#[test]
fn unmodified_clients_authenticate_over_tls_and_sasl_and_acls_hold_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    for (user, mechanism) in [
        ("admin", None),
        ("alice", Some("SCRAM-SHA-512")),
        ("bob", Some("SCRAM-SHA-256")),
        ("carol", None),
        ("mallory", None),
    ] {
        let mut args = vec!["users", "add", "--data-dir", data_arg, "--user", user];
        if let Some(m) = mechanism {
            args.extend(["--mechanism", m]);
        }
        corelog_ok(&args, &format!("{user}-password\n"));
    }
    let acl = |args: &[&str]| corelog_ok(&[&["acl", "add", "--data-dir", data_arg][..], args].concat(), "");
    let ops = |names: &[&'static str]| names.iter().flat_map(|n| ["--operation", *n]).collect::<Vec<_>>();
    acl(&[
        &["--principal", "User:alice", "--topic", "pay", "--prefixed"][..],
        &ops(&["Write", "Read", "Create"]),
    ]
    .concat());
    acl(&[&["--principal", "User:alice", "--group", "pay-readers"][..], &ops(&["Read"])].concat());
    acl(&["--principal", "User:*", "--topic", "payments.secret", "--operation", "Read", "--deny"]);
    acl(&[&["--principal", "User:bob", "--topic", "ledger"][..], &ops(&["All"])].concat());
    acl(&["--principal", "User:bob", "--group", "ledger-", "--prefixed", "--operation", "Read"]);
    acl(&[&["--principal", "User:carol", "--topic", "kcat"][..], &ops(&["Write", "Read", "Create"])].concat());
    acl(&[
        &["--principal", "User:CN=writer,O=corelog", "--topic", "mtls"][..],
        &ops(&["Write", "Read", "Create"]),
    ]
    .concat());
    assert!(!std::fs::read_to_string(data.join("users.json")).unwrap().contains("alice-password"));

    let listeners = Listeners::new();
    let server = start(&data, &pki, &listeners, &[]);
    let alice = sasl(&listeners, &pki, "SCRAM-SHA-512", "alice", "alice-password");
    let bob = sasl(&listeners, &pki, "SCRAM-SHA-256", "bob", "bob-password");
    let mallory = sasl(&listeners, &pki, "SCRAM-SHA-512", "mallory", "mallory-password");
    let admin = sasl(&listeners, &pki, "SCRAM-SHA-256", "admin", "admin-password");

    // SCRAM-SHA-512 and SCRAM-SHA-256 with confluent-kafka: produce and read back in a group.
    let run = secure(
        "roundtrip",
        with(alice.clone(), json!({"topic": "payments", "group": "pay-readers", "n": 200})),
    );
    assert_eq!((run["delivered"].as_i64(), run["errors"].as_array().unwrap().len()), (Some(200), 0), "{run}");
    assert_eq!(ints(&run["read"]), (0..200).collect::<Vec<_>>(), "{run}");
    let run =
        secure("roundtrip", with(bob.clone(), json!({"topic": "ledger", "group": "ledger-1", "n": 50})));
    assert_eq!(ints(&run["read"]), (0..50).collect::<Vec<_>>(), "{run}");

    // kcat with PLAIN over SASL_SSL.
    let (ok, out) =
        kcat(&listeners, &pki, "carol", "carol-password", &["-P", "-t", "kcat"], "one\ntwo\nthree\n");
    assert!(ok, "{out}");
    let (ok, out) = kcat(&listeners, &pki, "carol", "carol-password", &["-C", "-t", "kcat", "-e", "-q"], "");
    assert!(ok, "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["one", "two", "three"]);

    // kafka-python over SSL with a client certificate: the subject is the principal.
    let run = secure(
        "mtls",
        json!({"brokers": listeners.ssl.to_string(), "ca": pki.path("ca.pem"), "cert": pki.path("client.pem"),
               "key": pki.path("client.key"), "topic": "mtls", "n": 20}),
    );
    assert_eq!(ints(&run["offsets"]), (0..20).collect::<Vec<_>>(), "{run}");
    assert_eq!(ints(&run["read"]), (0..20).collect::<Vec<_>>(), "{run}");

    // corelog's own tools speak SASL_SSL too: produce, consume, gen, land.
    let password_file = |user: &str| {
        let path = dir.path().join(format!("{user}.password"));
        std::fs::write(&path, format!("{user}-password\n")).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (alice_file, admin_file, ca) = (password_file("alice"), password_file("admin"), pki.path("ca.pem"));
    let sasl_ssl = listeners.sasl_ssl.to_string();
    let flags = |user: &'static str, file: &str| -> Vec<String> {
        [
            "--brokers",
            &sasl_ssl,
            "--security-protocol",
            "SASL_SSL",
            "--sasl-username",
            user,
            "--sasl-password-file",
            file,
            "--tls-ca",
            &ca,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let tool = |command: &[&str], security: &[String], stdin: &str| {
        let args: Vec<&str> = command.iter().copied().chain(security.iter().map(String::as_str)).collect();
        corelog_ok(&args, stdin)
    };
    tool(&["produce", "--topic", "pay.cli"], &flags("alice", &alice_file), "a\nb\nc\n");
    let read = tool(
        &["consume", "--topic", "pay.cli", "--count", "3", "--group", "pay-readers"],
        &flags("alice", &alice_file),
        "",
    );
    assert_eq!(read, "a\nb\nc\n");
    tool(&["gen", "--topic", "pay.gen", "--rate", "200", "--seconds", "1"], &flags("alice", &alice_file), "");
    let landed = dir.path().join("landed");
    tool(
        &["land", "--once", "--topics", "pay.cli", "--out", landed.to_str().unwrap()],
        &flags("admin", &admin_file),
        "",
    );
    let files = walk(&landed).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).count();
    assert!(files >= 1, "land over SASL_SSL wrote Parquet");
    let refused = corelog()
        .args(["produce", "--topic", "pay.cli"])
        .args(flags("alice", &admin_file))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"x\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(!refused.status.success(), "a wrong password fails the tool");

    // A principal without ACLs gets Kafka's authorization errors.
    let denied = |who: &serde_json::Value, topic: &str, group: &str| {
        secure("denied", with(who.clone(), json!({"topic": topic, "group": group})))
    };
    let refused = denied(&mallory, "payments", "mallory-group");
    assert_eq!(refused["produce"], "TOPIC_AUTHORIZATION_FAILED", "{refused}");
    let seen = |value: &serde_json::Value, name: &str| value.as_array().unwrap().iter().any(|e| e == name);
    assert!(seen(&refused["join"], "GROUP_AUTHORIZATION_FAILED"), "{refused}");
    // On the wire, as mallory: Fetch, ListOffsets, Metadata and the group APIs.
    let mut wire = authenticated(listeners.sasl_ssl, &pki.path("ca.pem"), "mallory", "mallory-password");
    assert_eq!(wire.fetch("payments", 0, 0, 1 << 20).0, 29, "TOPIC_AUTHORIZATION_FAILED");
    let offsets: ListOffsetsResponse = wire.call(
        ApiKey::ListOffsets,
        5,
        &ListOffsetsRequest::default().with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(wire::topic("payments"))
            .with_partitions(
                vec![list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1)],
            )]),
    );
    assert_eq!(offsets.topics[0].partitions[0].error_code, 29);
    let named = MetadataRequest::default().with_topics(Some(vec![
        metadata_request::MetadataRequestTopic::default().with_name(Some(wire::topic("payments"))),
    ]));
    let metadata: MetadataResponse = wire.call(ApiKey::Metadata, 9, &named);
    assert_eq!(metadata.topics[0].error_code, 29, "a named topic the principal may not describe");
    let all: MetadataResponse = wire.call(ApiKey::Metadata, 9, &MetadataRequest::default().with_topics(None));
    assert!(all.topics.is_empty(), "no topic is listed to a principal without ACLs");
    let heartbeat: HeartbeatResponse = wire.call(
        ApiKey::Heartbeat,
        4,
        &HeartbeatRequest::default().with_group_id(GroupId(StrBytes::from_static_str("pay-readers"))),
    );
    assert_eq!(heartbeat.error_code, 30, "GROUP_AUTHORIZATION_FAILED");
    let init: InitProducerIdResponse =
        wire.call(ApiKey::InitProducerId, 4, &InitProducerIdRequest::default().with_transactional_id(None));
    assert_eq!(init.error_code, 31, "CLUSTER_AUTHORIZATION_FAILED: idempotence needs a Write somewhere");
    assert_eq!(refused["create"], "TOPIC_AUTHORIZATION_FAILED", "{refused}");
    // Prefixed ACLs cover what they prefix and nothing else; Deny wins over Allow.
    let outside = denied(&alice, "orders", "pay-readers");
    assert_eq!(outside["produce"], "TOPIC_AUTHORIZATION_FAILED", "{outside}");
    let run = secure(
        "roundtrip",
        with(alice.clone(), json!({"topic": "payments.secret", "group": "pay-readers", "n": 3})),
    );
    assert_eq!(run["delivered"], 3, "Write on pay* is allowed: {run}");
    assert_eq!(
        run["read_errors"][0], "TOPIC_AUTHORIZATION_FAILED",
        "the Read Deny wins over pay*'s Allow: {run}"
    );
    // Metadata lists only what the principal may describe.
    let seen = secure("topics", alice.clone());
    let seen: Vec<&str> = seen["topics"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(seen.contains(&"payments") && !seen.contains(&"ledger") && !seen.contains(&"kcat"), "{seen:?}");

    // ACLs through confluent-kafka's AdminClient, as a super user.
    let acls =
        secure("admin_acls", with(admin.clone(), json!({"topic": "audit", "principal": "User:mallory"})));
    assert_eq!(acls["described"], json!(["audit-x:LITERAL:DENY", "audit:PREFIXED:ALLOW"]), "{acls}");
    assert_eq!(acls["deleted"], 1, "{acls}");
    let refused =
        secure("admin_acls", with(mallory.clone(), json!({"topic": "audit", "principal": "User:mallory"})));
    assert_eq!(refused["error"], "CLUSTER_AUTHORIZATION_FAILED", "{refused}");

    // SCRAM users through the AdminClient: a super user adds one, who then logs in.
    let dave = json!({"new_user": "dave", "new_password": "dave-password"});
    let added = secure("admin_users", with(admin.clone(), dave.clone()));
    assert_eq!(added["described"], json!([["SCRAM_SHA_256", 8192]]), "{added}");
    let refused = secure("admin_users", with(mallory.clone(), dave.clone()));
    assert_eq!(refused["error"], "CLUSTER_AUTHORIZATION_FAILED", "{refused}");
    let dave = sasl(&listeners, &pki, "SCRAM-SHA-256", "dave", "dave-password");
    assert_eq!(secure("topics", dave.clone())["topics"], json!([]), "dave logs in and may describe nothing");

    // Credentials and ACLs survive a restart.
    let (stopped, log) = server.stop();
    assert!(stopped, "{log}");
    let metrics = free_address();
    let server = start(&data, &pki, &listeners, &["--metrics", &metrics.to_string()]);
    let run = secure(
        "roundtrip",
        with(alice.clone(), json!({"topic": "payments", "group": "pay-readers", "n": 200, "start": 1000})),
    );
    assert_eq!(
        ints(&run["read"]),
        (1000..1200).collect::<Vec<_>>(),
        "the group resumes after its commit: {run}"
    );
    let refused = denied(&mallory, "payments", "mallory-group");
    assert_eq!(refused["produce"], "TOPIC_AUTHORIZATION_FAILED", "{refused}");
    let listed = corelog_ok(&["acl", "list", "--data-dir", data_arg, "--principal", "User:mallory"], "");
    assert_eq!(
        listed, "User:mallory Allow Read Topic:Prefixed:audit from *\n",
        "the AdminClient's ACL is durable"
    );

    // Beside an authenticating listener, a PLAINTEXT connection is User:ANONYMOUS and
    // is authorized like anyone else: no ACL, nothing listed, nothing written.
    let mut anonymous = Wire::connect(listeners.plaintext);
    let all: MetadataResponse =
        anonymous.call(ApiKey::Metadata, 9, &MetadataRequest::default().with_topics(None));
    assert!(all.topics.is_empty(), "ANONYMOUS describes nothing");
    let request = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![
        produce_request::TopicProduceData::default().with_name(wire::topic("payments")).with_partition_data(
            vec![produce_request::PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(bytes::Bytes::from_static(&[0; 61])))],
        ),
    ]);
    let produced: ProduceResponse = anonymous.call(ApiKey::Produce, 9, &request);
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 29, "TOPIC_AUTHORIZATION_FAILED");

    // Nothing is readable from the TLS port in plaintext.
    let mut raw = TcpStream::connect(listeners.sasl_ssl).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&wire::frame(ApiKey::ApiVersions, 3, 7, &ApiVersionsRequest::default())).unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(answer.is_empty() || answer[0] == 0x15, "a TLS alert or nothing, not a Kafka answer: {answer:?}");

    // A wrong password is refused, and logged with the peer address.
    let wrong = secure("wrong_password", with(alice.clone(), json!({"password": "not-it"})));
    assert_eq!(wrong["error"], "_AUTHENTICATION", "{wrong}");
    assert!(wrong["message"].as_str().unwrap().contains("invalid credentials"), "{wrong}");
    let log = server.log();
    assert!(log.contains("authentication failed") && log.contains("peer=127.0.0.1:"), "{log}");
    // Metrics count authentications by mechanism and result, and denials.
    let text = common::scrape(metrics);
    let count = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        count("corelog_kafka_authentications_total{mechanism=\"SCRAM-SHA-512\",result=\"ok\"}") >= 1.0,
        "{text}"
    );
    assert!(
        count("corelog_kafka_authentications_total{mechanism=\"SCRAM-SHA-512\",result=\"failed\"}") >= 1.0
    );
    assert!(count("corelog_kafka_authorization_denied_total{resource=\"topic\"}") >= 1.0, "{text}");
}

/// A TLS session to `address` authenticated with SASL PLAIN.
fn authenticated(
    address: SocketAddr,
    ca: &str,
    user: &str,
    password: &str,
) -> Wire<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut wire = Wire::over(tls(address, ca));
    let handshake: SaslHandshakeResponse = wire.call(
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    assert_eq!(handshake.error_code, 0);
    let token = format!("\0{user}\0{password}");
    let answer: SaslAuthenticateResponse = wire.call(
        ApiKey::SaslAuthenticate,
        2,
        &SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::from(token.into_bytes())),
    );
    assert_eq!(answer.error_code, 0, "{answer:?}");
    wire
}

/// A TLS session to `address` trusting `ca`.
fn tls(address: SocketAddr, ca: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

/// Whether the broker closed the session (EOF, reset or a TLS close) without another
/// answer.
fn closed<S: Read>(stream: &mut S) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn before_authentication_a_sasl_ssl_listener_serves_only_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pki = Pki::new(&dir.path().join("pki"));
    corelog_ok(
        &["users", "add", "--data-dir", data.to_str().unwrap(), "--user", "admin"],
        "admin-password\n",
    );
    let listeners = Listeners::new();
    let server = start(&data, &pki, &listeners, &[]);
    let ca = pki.path("ca.pem");
    // A connection that says nothing after TLS is closed at the authentication deadline.
    let mut silent = tls(listeners.sasl_ssl, &ca);
    silent.write_all(&[]).unwrap();
    silent.flush().unwrap();
    let silent_since = Instant::now();

    // ApiVersions is answered, and lists the SASL APIs.
    let mut wire = Wire::over(tls(listeners.sasl_ssl, &ca));
    let versions: ApiVersionsResponse = wire.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert!(versions.api_keys.iter().any(|k| k.api_key == ApiKey::SaslAuthenticate as i16));
    // Everything else closes the connection unanswered: the hostile suite's requests
    // (a Produce, a Metadata that would create topics, a CreateTopics) included.
    let produce = Wire::over(tls(listeners.sasl_ssl, &ca)).call_raw(
        ApiKey::Produce,
        9,
        &kafka_protocol::messages::ProduceRequest::default().with_acks(-1).with_topic_data(vec![
            kafka_protocol::messages::produce_request::TopicProduceData::default()
                .with_name(wire::topic("stolen"))
                .with_partition_data(vec![
                    kafka_protocol::messages::produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(bytes::Bytes::from_static(&[0; 70]))),
                ]),
        ]),
    );
    assert!(produce.is_err(), "Produce before authentication is not answered");
    let metadata = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default()
            .with_name(Some(wire::topic("created-unauthenticated")))]));
    assert!(Wire::over(tls(listeners.sasl_ssl, &ca)).call_raw(ApiKey::Metadata, 9, &metadata).is_err());
    assert!(Wire::over(tls(listeners.sasl_ssl, &ca))
        .call_raw(ApiKey::CreateTopics, 5, &CreateTopicsRequest::default())
        .is_err());
    // A frame beyond the pre-authentication bound closes the connection before it is read.
    let mut big = tls(listeners.sasl_ssl, &ca);
    big.write_all(&(1i32 << 20).to_be_bytes()).unwrap();
    big.flush().unwrap();
    assert!(closed(&mut big), "a 1 MiB frame before authentication");
    // SaslAuthenticate before a handshake: ILLEGAL_SASL_STATE, then closed.
    let mut wire = Wire::over(tls(listeners.sasl_ssl, &ca));
    let answer: SaslAuthenticateResponse = wire.call(
        ApiKey::SaslAuthenticate,
        2,
        &SaslAuthenticateRequest::default()
            .with_auth_bytes(bytes::Bytes::from_static(b"\0admin\0admin-password")),
    );
    assert_eq!(answer.error_code, 34, "ILLEGAL_SASL_STATE");
    assert!(closed(&mut wire.stream));
    // An unknown mechanism: UNSUPPORTED_SASL_MECHANISM with the enabled ones, then closed.
    let mut wire = Wire::over(tls(listeners.sasl_ssl, &ca));
    let handshake: SaslHandshakeResponse = wire.call(
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("GSSAPI")),
    );
    assert_eq!(handshake.error_code, 33, "UNSUPPORTED_SASL_MECHANISM");
    let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
    assert_eq!(offered, ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]);
    assert!(closed(&mut wire.stream));
    // SCRAM messages that lie fail authentication and close the connection.
    for lie in [&b"p=tls-unique,,n=admin,r=abc"[..], b"n,,n=admin", b"n,,r=abc,n=admin", &[0xff; 64]] {
        let mut wire = Wire::over(tls(listeners.sasl_ssl, &ca));
        let _: SaslHandshakeResponse = wire.call(
            ApiKey::SaslHandshake,
            1,
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("SCRAM-SHA-256")),
        );
        let answer: SaslAuthenticateResponse = wire.call(
            ApiKey::SaslAuthenticate,
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::copy_from_slice(lie)),
        );
        assert_eq!(answer.error_code, 58, "SASL_AUTHENTICATION_FAILED for {lie:?}");
        assert!(closed(&mut wire.stream));
    }
    // PLAIN with the right password authenticates, then requests are served, while 200
    // connections hang in their TLS handshake and 50 sessions sit unauthenticated.
    let stalled: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(listeners.sasl_ssl).unwrap()).collect();
    let idle: Vec<_> = (0..50).map(|_| Wire::over(tls(listeners.sasl_ssl, &ca))).collect();
    let served_since = Instant::now();
    let mut wire = Wire::over(tls(listeners.sasl_ssl, &ca));
    let _: SaslHandshakeResponse = wire.call(
        ApiKey::SaslHandshake,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    let answer: SaslAuthenticateResponse = wire.call(
        ApiKey::SaslAuthenticate,
        2,
        &SaslAuthenticateRequest::default()
            .with_auth_bytes(bytes::Bytes::from_static(b"\0admin\0admin-password")),
    );
    assert_eq!(answer.error_code, 0, "{answer:?}");
    let metadata: kafka_protocol::messages::MetadataResponse =
        wire.call(ApiKey::Metadata, 9, &MetadataRequest::default().with_topics(None));
    let names: Vec<String> =
        metadata.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect();
    assert!(names.is_empty(), "nothing was created before authentication: {names:?}");
    let served = served_since.elapsed();
    assert!(served < Duration::from_secs(2), "served in {served:?} beside 250 unauthenticated connections");
    drop((stalled, idle));
    // Failed attempts from one address are limited: past ten a minute, even the right
    // password is refused.
    for attempt in 0..12 {
        let mut wire = Wire::over(tls(listeners.sasl_ssl, &ca));
        let _: SaslHandshakeResponse = wire.call(
            ApiKey::SaslHandshake,
            1,
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
        );
        let password: &[u8] = if attempt < 11 { b"\0admin\0wrong" } else { b"\0admin\0admin-password" };
        let answer: SaslAuthenticateResponse = wire.call(
            ApiKey::SaslAuthenticate,
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::copy_from_slice(password)),
        );
        assert_eq!(answer.error_code, 58, "attempt {attempt}");
        if attempt == 11 {
            let message = answer.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default();
            assert!(message.contains("too many failed attempts"), "{message}");
        }
    }
    assert!(closed(&mut silent), "the silent connection is closed");
    let waited = silent_since.elapsed();
    assert!(waited < Duration::from_secs(14), "closed at the 10 s authentication deadline, not {waited:?}");
    drop(server);
}
