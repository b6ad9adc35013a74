//! A real full disk: `corelog serve` on a small tmpfs the test mounts (the tests run as
//! root, CI too). Produces fill it; while it is full every produce is answered
//! KAFKA_STORAGE_ERROR (56) and the broker keeps serving; once space is freed, appends
//! resume by themselves, with no restart; the log then holds exactly the acknowledged
//! batches, and after a clean stop `corelog inspect` finds every file intact.

mod common;

use bytes::Bytes;
use common::wire::Wire;
use engine::batch::BatchBuilder;
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KAFKA_STORAGE_ERROR: i16 = 56;
const TMPFS_BYTES: u64 = 4 << 20;
const BALLAST_BYTES: usize = 1 << 20;
/// How long appends may take to resume once space is free (the broker retries on its
/// 1 s maintenance tick).
const RESUME_DEADLINE: Duration = Duration::from_secs(15);

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", dir.to_str().unwrap()])
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root (the test command runs as root)");
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn batch(id: u64) -> Bytes {
    let mut builder = BatchBuilder::default();
    for i in 0..8 {
        let value = format!("payment {id}.{i} ").repeat(40);
        builder.push(
            1_700_000_000_000 + id as i64,
            Some(format!("user{id}").as_bytes()),
            Some(value.as_bytes()),
        );
    }
    Bytes::from(builder.finish().to_vec())
}

fn from_attributes(bytes: &Bytes) -> Vec<u8> {
    bytes[21..].to_vec()
}

#[test]
fn given_a_full_disk_then_produces_fail_with_56_and_resume_without_a_restart_once_space_is_freed() {
    let mount = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(mount.path(), TMPFS_BYTES);
    let ballast = mount.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; BALLAST_BYTES]).unwrap();
    let data = mount.path().join("data");
    let server = common::Server::start(&data, &["--segment-bytes", "262144", "--retention", "0"]);
    let mut wire = Wire::connect(server.address);
    let mut acked: Vec<(i64, u64)> = Vec::new();
    let mut refused = 0;
    let mut id = 0u64;
    // Fill the disk: produce until a run of refusals.
    while refused < 5 {
        assert!(id < 10_000, "the disk never filled");
        let (error, base_offset) = wire.produce("full", 0, batch(id));
        match error {
            0 => {
                acked.push((base_offset, id));
                refused = 0;
            }
            KAFKA_STORAGE_ERROR => refused += 1,
            other => panic!("produce {id} answered {other}"),
        }
        id += 1;
    }
    assert!(acked.len() > 20, "the disk took some data first ({} batches)", acked.len());
    // Full, and still serving: another connection gets metadata.
    let mut other = Wire::connect(server.address);
    let metadata: MetadataResponse =
        other.call(ApiKey::Metadata, 9, &MetadataRequest::default().with_topics(None));
    assert!(metadata.topics.iter().any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "full")));
    assert_eq!(wire.produce("full", 0, batch(id)).0, KAFKA_STORAGE_ERROR, "still full, still refused");
    id += 1;
    // Free space; appends resume by themselves.
    std::fs::remove_file(&ballast).unwrap();
    let started = Instant::now();
    loop {
        let (error, base_offset) = wire.produce("full", 0, batch(id));
        if error == 0 {
            acked.push((base_offset, id));
            id += 1;
            break;
        }
        assert_eq!(error, KAFKA_STORAGE_ERROR);
        assert!(started.elapsed() < RESUME_DEADLINE, "appends did not resume within {RESUME_DEADLINE:?}");
        id += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..10 {
        let (error, base_offset) = wire.produce("full", 0, batch(id));
        assert_eq!(error, 0, "appends keep going after space was freed");
        acked.push((base_offset, id));
        id += 1;
    }
    // Exactly what was acknowledged, in order, nothing refused in between.
    let stored = wire.fetch_all("full", 0);
    let expected: Vec<(i64, Vec<u8>)> =
        acked.iter().map(|&(base, id)| (base, from_attributes(&batch(id)))).collect();
    assert_eq!(stored.len(), expected.len(), "batches in the log vs acknowledged");
    for (found, wanted) in stored.iter().zip(&expected) {
        assert_eq!(found, wanted, "batch at {}", wanted.0);
    }
    let (stopped, log) = server.stop();
    assert!(stopped, "clean stop: {log}");
    assert!(log.contains("healed"), "the broker says the partition healed: {log}");
    common::assert_inspect_clean(&data, "after a clean stop");
}
