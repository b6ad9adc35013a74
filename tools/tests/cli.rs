//! The `corelog` binary as a user runs it: exit codes, reports, one-line errors.

use engine::batch::BatchBuilder;
use engine::log::{LogConfig, PartitionLog};
use std::process::Command;

fn corelog(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_corelog")).args(args).output().expect("run corelog");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn number_after(report: &str, label: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in {report}"));
    let digits: String = line.trim_start()[label.len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .collect();
    digits.replace(',', "").parse().unwrap()
}

/// The demo checks itself against a shadow copy of the query operator (decisions,
/// corrections, rings, denied payments) and exits non-zero when a figure disagrees;
/// here its report is also read the way a newcomer reads it.
#[test]
fn demo_runs_the_whole_loop_and_its_report_is_consistent() {
    let args =
        ["demo", "--seconds", "4", "--rate", "8000", "--follow-up-seconds", "1", "--late-fraction", "0.01"];
    let (ok, stdout, stderr) = corelog(&args);
    assert!(ok, "demo failed: {stderr}\n{stdout}");
    let payments = number_after(&stdout, "stream");
    assert_eq!(payments, 32_000, "{stdout}");
    assert!(number_after(&stdout, "decisions") > 0, "{stdout}");
    assert!(number_after(&stdout, "landed") >= payments, "{stdout}");
    assert_eq!(number_after(&stdout, "hourly"), payments, "{stdout}");
    assert_eq!(number_after(&stdout, "rings"), 4, "{stdout}");
    assert!(stdout.contains("4 fraud rings found of 4 planted"), "{stdout}");
    let planted = stdout.lines().find(|l| l.contains("late payments")).unwrap();
    let late = planted.split(", ").nth(1).and_then(|s| s.split(' ').next()).unwrap();
    assert!(late.replace(',', "").parse::<u64>().unwrap() > 0, "{stdout}");
    assert!(number_after(&stdout, "reconcile") > 0, "{stdout}");
    let decision = stdout.lines().find(|l| l.trim_start().starts_with("decision ")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(decision.trim_start()["decision".len()..].trim()).unwrap();
    assert_eq!(json["query"], "fraud");
    assert!(json["ts"].as_i64().unwrap() > 0);
}

#[test]
fn demo_rejects_bad_flags_with_one_line() {
    let (ok, _, stderr) = corelog(&["demo", "--flush", "sometimes"]);
    assert!(!ok);
    assert!(stderr.contains("unknown flush mode"), "{stderr}");
    let (ok, _, stderr) = corelog(&["demo", "--rate", "0"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let used = tempfile::tempdir().unwrap();
    std::fs::write(used.path().join("something"), "x").unwrap();
    let (ok, _, stderr) = corelog(&["demo", "--data-dir", used.path().to_str().unwrap()]);
    assert!(!ok && stderr.contains("new or empty directory"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

fn write_partition(dir: &std::path::Path) {
    let (mut log, _) =
        PartitionLog::open(dir, LogConfig { retention_ms: None, ..Default::default() }, false, 0).unwrap();
    for i in 0..20 {
        let mut builder = BatchBuilder::default();
        for j in 0..50 {
            builder.push(1000 + i * 100 + j, Some(b"key"), Some(format!("value-{i}-{j}").as_bytes()));
        }
        log.append_sync(builder.finish(), 0).unwrap();
    }
    log.close().unwrap();
}

#[test]
fn inspect_reports_intact_files_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    write_partition(dir.path());
    let (ok, stdout, stderr) = corelog(&["inspect", dir.path().to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("summary: 3 files, 20 intact batches, 0 problems"), "{stdout}");
    let log = dir.path().join(format!("{:020}.log", 0));
    let (ok, stdout, _) = corelog(&["inspect", "--records", log.to_str().unwrap()]);
    assert!(ok);
    assert!(stdout.contains("offset 999 ts 2949 key key value value-19-49"), "{stdout}");
    // Zeros the engine filled past the data are reported as such, not as damage; bytes
    // after them are damage.
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.resize(bytes.len() + 8192, 0);
    std::fs::write(&log, &bytes).unwrap();
    let (ok, stdout, stderr) = corelog(&["inspect", dir.path().to_str().unwrap()]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("8192 bytes of zeros preallocated past the data (not data)"), "{stdout}");
    assert!(stdout.contains("summary: 3 files, 20 intact batches, 0 problems"), "{stdout}");
    *bytes.last_mut().unwrap() = 1;
    std::fs::write(&log, &bytes).unwrap();
    let (ok, stdout, _) = corelog(&["inspect", log.to_str().unwrap()]);
    assert!(!ok && stdout.contains("corrupt at byte"), "{stdout}");
}

#[test]
fn inspect_finds_corruption_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    write_partition(dir.path());
    let log = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&log).unwrap();
    let index = dir.path().join(format!("{:020}.index", 0));
    let entries = engine::segment::decode_index(&std::fs::read(&index).unwrap());
    let indexed_batch = entries[1].position as usize;
    bytes[indexed_batch + 40] ^= 0x01; // inside the CRC-covered header of an indexed batch
    std::fs::write(&log, &bytes).unwrap();
    let (ok, stdout, stderr) = corelog(&["inspect", log.to_str().unwrap()]);
    assert!(!ok);
    assert!(stdout.contains("problem:") && stdout.contains("corrupt at byte"), "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let (ok, stdout, _) = corelog(&["inspect", index.to_str().unwrap()]);
    assert!(!ok, "an index entry now points at a corrupt batch: {stdout}");
}

#[test]
fn inspect_reads_the_topic_id_and_reports_one_that_lies() {
    let dir = tempfile::tempdir().unwrap();
    write_partition(dir.path());
    let id = engine::partition_meta::TopicId::random();
    engine::partition_meta::write(dir.path(), id).unwrap();
    let (ok, stdout, _) = corelog(&["inspect", dir.path().to_str().unwrap()]);
    assert!(ok && stdout.contains(&format!("topic id {id}")), "{stdout}");
    let file = dir.path().join(engine::partition_meta::PARTITION_META_FILE);
    std::fs::write(&file, "version: 0\ntopic_id: 00000000-0000-0000-0000-000000000000\n").unwrap();
    let (ok, stdout, _) = corelog(&["inspect", dir.path().to_str().unwrap()]);
    assert!(!ok && stdout.contains("problem:") && stdout.contains("nil UUID"), "{stdout}");
}

#[test]
fn inspect_of_a_missing_path_is_a_one_line_error() {
    let (ok, _, stderr) = corelog(&["inspect", "/nonexistent/00000000000000000000.log"]);
    assert!(!ok);
    assert!(stderr.starts_with("corelog: error:") && stderr.trim().lines().count() == 1, "{stderr}");
}

#[test]
fn serve_refuses_insecure_listeners_beyond_loopback_and_bad_security_setups_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for (flags, reason) in [
        (vec!["--listen", "0.0.0.0:0"], "--allow-insecure-listener"),
        (vec!["--listeners", "SASL_PLAINTEXT://0.0.0.0:0"], "--allow-insecure-listener"),
        (vec!["--listeners", "SASL_SSL://127.0.0.1:0"], "needs --tls-cert and --tls-key"),
        (vec!["--listeners", "HTTP://127.0.0.1:0"], "protocol must be"),
        (vec!["--listeners", "PLAINTEXT://127.0.0.1:0", "--super-users", "admin"], "is not User:NAME"),
    ] {
        let (ok, _, stderr) = corelog(&[&["serve", "--data-dir", data, "--cores", "1"][..], &flags].concat());
        assert!(!ok, "{flags:?} must be refused");
        assert!(stderr.contains(reason), "{flags:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{flags:?}: one line: {stderr}");
    }
}

#[test]
fn users_and_acl_commands_refuse_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for args in [
        vec!["users", "add", "--data-dir", data, "--user", "bad,name"],
        vec!["users", "add", "--data-dir", data, "--user", "corelog-internal"],
        vec!["users", "add", "--data-dir", data, "--user", "u", "--mechanism", "MD5"],
        vec!["users", "remove", "--data-dir", data, "--user", "nobody"],
        vec!["acl", "add", "--data-dir", data, "--principal", "User:a", "--topic", "t"],
        vec!["acl", "add", "--data-dir", data, "--principal", "alice", "--topic", "t", "--operation", "Read"],
        vec!["acl", "add", "--data-dir", data, "--principal", "User:a", "--operation", "Read"],
    ] {
        let (ok, _, stderr) = corelog(&args);
        assert!(!ok, "{args:?} must be refused");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: one line: {stderr}");
    }
}
