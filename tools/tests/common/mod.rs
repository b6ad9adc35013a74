//! Shared helpers for the tests that run a real `corelog serve` process and real
//! clients against it.
#![allow(dead_code)] // each test binary uses its own subset

pub mod wire;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a broker may take to start listening.
pub const START_TIMEOUT_MS: u64 = 20_000;

/// A free port on 127.0.0.1 (released before the broker binds it).
pub fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A `corelog serve` child process; killed when dropped. Its stderr goes to
/// `<data dir>/serve.log`.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts `corelog serve --cores 2` on a free port with `extra` flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(dir, free_address(), extra)
    }

    /// Starts it on `address` (a restart keeps the clients' bootstrap address).
    pub fn start_at(dir: &Path, address: SocketAddr, extra: &[&str]) -> Self {
        let mut args = vec!["--listen".to_string(), address.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::start_with(dir, address, &args)
    }

    /// Starts it with `--listeners LISTENERS` and `extra` flags, waiting for `first`
    /// (one of the listeners' addresses) to accept connections.
    pub fn start_listeners(dir: &Path, listeners: &str, first: SocketAddr, extra: &[&str]) -> Self {
        let mut args = vec!["--listeners".to_string(), listeners.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::start_with(dir, first, &args)
    }

    fn start_with(dir: &Path, address: SocketAddr, extra: &[String]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join("serve.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
            .args(["serve", "--data-dir", dir.to_str().unwrap(), "--cores", "2"])
            .args(extra)
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap())
            .spawn()
            .expect("start corelog serve");
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        while TcpStream::connect(address).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "corelog serve exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "corelog serve did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, address, log }
    }

    /// The bootstrap address clients use.
    pub fn brokers(&self) -> String {
        self.address.to_string()
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's anonymous resident memory (`RssAnon`), in bytes: what its own
    /// allocations hold, without the page-cache pages its segment mappings touch.
    pub fn rss_anon_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).expect("RssAnon in /proc status");
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    /// What the broker wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then whether it exited successfully and its log.
    pub fn stop(mut self) -> (bool, String) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let status = self.child.wait().unwrap();
        (status.success(), self.log())
    }

    /// SIGKILL and wait.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter with the client libraries: `CORELOG_PYTHON`, else the
/// `target/py` environment `ci.sh` creates.
pub fn python() -> PathBuf {
    std::env::var_os("CORELOG_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python"))
}

/// A script under `tests/python`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(name)
}

/// Runs a Python script that prints one JSON object, and returns it.
pub fn run_python(args: &[&str]) -> serde_json::Value {
    let interpreter = python();
    let output = Command::new(&interpreter).args(args).stderr(Stdio::piped()).output().unwrap_or_else(|e| {
        panic!("{}: {e} (run ./ci.sh to install the Python clients)", interpreter.display())
    });
    assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e})"))
}

/// A moto S3 server (from `target/py`, installed by ci.sh) on a free port.
pub struct Moto {
    child: std::process::Child,
    /// Its URL.
    pub endpoint: String,
}

impl Moto {
    /// Starts it.
    pub fn start() -> Self {
        let address = free_address();
        let server = python().with_file_name("moto_server");
        let child = std::process::Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &address.port().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (run ./ci.sh to install moto)", server.display()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(address).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self { child, endpoint: format!("http://{address}") }
    }

    /// The `AWS_*` environment that points object_store at it.
    pub fn env(&self) -> [(&'static str, &str); 5] {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `corelog inspect` on a data directory and fails with its problem lines unless
/// every file is intact.
pub fn assert_inspect_clean(data_dir: &Path, context: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["inspect", data_dir.to_str().unwrap()])
        .output()
        .expect("run corelog inspect");
    assert!(
        output.status.success(),
        "{context}: inspect found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.starts_with("problem"))
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `corelog ARGS` with `stdin`: (success, stdout, stderr).
pub fn corelog_with_stdin(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The Prometheus text a broker serves at `address` (`--metrics`).
pub fn scrape(address: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).expect("metrics endpoint listening");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}
