//! The `fio` reference: sequential write bandwidth (O_DIRECT, io_uring) and
//! write+fdatasync latency on the same file system, run in the same process run as
//! the figure it is compared with. The harness never installs fio; when it is missing
//! it says how to get it and the figures print without a ratio.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Sequential-write bandwidth and fdatasync latency percentiles.
#[derive(Debug, Clone, Copy)]
pub struct FioReference {
    /// Sequential write bandwidth, bytes/s.
    pub seq_write_bytes_per_s: f64,
    /// fdatasync latency p50, ns.
    pub fdatasync_p50_ns: f64,
    /// fdatasync latency p99, ns.
    pub fdatasync_p99_ns: f64,
}

/// True when `fio` is on PATH; otherwise prints how to install it.
pub fn available() -> bool {
    let found = Command::new("fio").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("note: fio not found; install it with `apt-get install fio` to get reference ratios");
    }
    found
}

fn run_json(args: &[String]) -> Result<serde_json::Value> {
    let output =
        Command::new("fio").args(args).arg("--output-format=json").output().context("running fio")?;
    if !output.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    serde_json::from_slice(&output.stdout).context("parsing fio's JSON")
}

/// Runs both fio jobs in `dir` (same file system as the engine's data). The sync job
/// makes `sync_count` writes of `sync_block_bytes`, each followed by `fdatasync`: as
/// many as the engine's latency run appends, so both percentiles come from runs of the
/// same length (a longer run meets more of the disk's rare slow flushes).
pub fn measure(
    dir: &Path,
    block_bytes: usize,
    size_bytes: u64,
    sync_block_bytes: usize,
    sync_count: u64,
) -> Result<FioReference> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("fio-seqwrite.dat");
    let seq = run_json(&[
        "--name=seqwrite".into(),
        format!("--filename={}", file.display()),
        "--rw=write".into(),
        format!("--bs={block_bytes}"),
        format!("--size={size_bytes}"),
        "--direct=1".into(),
        "--ioengine=io_uring".into(),
        "--iodepth=8".into(),
    ])?;
    let _ = std::fs::remove_file(&file);
    let seq_write_bytes_per_s = seq["jobs"][0]["write"]["bw_bytes"].as_f64().context("fio bw_bytes")?;
    let file = dir.join("fio-fdatasync.dat");
    let sync = run_json(&[
        "--name=fdatasync".into(),
        format!("--filename={}", file.display()),
        "--rw=write".into(),
        format!("--bs={sync_block_bytes}"),
        format!("--size={}", sync_block_bytes as u64 * sync_count),
        "--ioengine=psync".into(),
        "--fdatasync=1".into(),
    ])?;
    let _ = std::fs::remove_file(&file);
    let percentiles = &sync["jobs"][0]["sync"]["lat_ns"]["percentile"];
    Ok(FioReference {
        seq_write_bytes_per_s,
        fdatasync_p50_ns: percentiles["50.000000"].as_f64().context("fio sync p50")?,
        fdatasync_p99_ns: percentiles["99.000000"].as_f64().context("fio sync p99")?,
    })
}

/// What the disk gives a broker that makes every write durable at a given load: `files`
/// fio jobs, each writing `bytes_per_s` in `block_bytes` writes paced by the clock, every
/// write followed by `fdatasync`, for `seconds` after a first uncounted `warm_up` (the
/// broker's paced run has one too). Returns fdatasync latency (p50, p99) in
/// ns: a floor for acks=all produce latency at that load on this machine, whatever the
/// broker does above the file system.
pub fn paced_sync(
    dir: &Path,
    files: usize,
    bytes_per_s: u64,
    block_bytes: usize,
    (seconds, warm_up): (u64, std::time::Duration),
) -> Result<(f64, f64)> {
    assert!(files > 0 && block_bytes > 0 && seconds > 0);
    std::fs::create_dir_all(dir)?;
    let sync = run_json(&[
        "--name=paced".into(),
        format!("--directory={}", dir.display()),
        format!("--numjobs={files}"),
        "--rw=write".into(),
        format!("--bs={block_bytes}"),
        format!("--rate={bytes_per_s}"),
        format!("--size={}", bytes_per_s * seconds * 2),
        format!("--runtime={seconds}"),
        format!("--ramp_time={}", warm_up.as_secs()),
        "--time_based".into(),
        "--ioengine=psync".into(),
        "--fdatasync=1".into(),
        "--group_reporting".into(),
    ]);
    if let Ok(entries) = std::fs::read_dir(dir) {
        entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("paced.")).for_each(|e| {
            let _ = std::fs::remove_file(e.path());
        });
    }
    let percentiles = &sync?["jobs"][0]["sync"]["lat_ns"]["percentile"];
    Ok((
        percentiles["50.000000"].as_f64().context("fio sync p50")?,
        percentiles["99.000000"].as_f64().context("fio sync p99")?,
    ))
}
