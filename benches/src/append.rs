//! `corelog-bench append`: embedded append throughput and latency against `fio`.
//!
//! Batches are built before the clock starts (the figure is the engine's, not the
//! encoder's); one driver thread keeps a bounded window of appends in flight per
//! partition and counts an append when its durable acknowledgement arrives. The
//! reference is `fio` on the same file system in the same run: sequential O_DIRECT
//! io_uring writes of the same block size for bandwidth, and `psync` writes with
//! `fdatasync=1` for sync latency.
//!
//! `--retention-bytes` runs the engine with size retention, so segments are deleted
//! while the appends run (the latency run then prints its slowest append), and
//! `CORELOG_BENCH_TIMELINE=PATH` writes the latency run's appends (start, latency) to
//! `PATH.append-latency`.

use crate::fio::{self, FioReference};
use crate::report::Figure;
use anyhow::{Context, Result};
use bytes::BytesMut;
use engine::batch::BatchBuilder;
use engine::{Engine, EngineConfig, FlushMode};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Target size of one batch (and fio's block size).
pub const BATCH_BYTES: usize = 256 << 10;
/// Batch size for the latency run.
pub const LATENCY_BATCH_BYTES: usize = 64 << 10;
/// Appends in flight per partition in throughput runs (8 MiB: what a Kafka producer
/// with a few MiB of `buffer.memory` keeps outstanding).
pub const IN_FLIGHT_PER_PARTITION: usize = 32;

/// Options of the append scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct AppendArgs {
    /// Finish in under a minute (smaller runs).
    #[arg(long)]
    pub quick: bool,
    /// Directory for data and fio files (default: target/bench/data).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run only the scenarios whose name contains this text.
    #[arg(long)]
    pub only: Option<String>,
    /// The engine's page-cache window per partition (`--cache-window-bytes` of
    /// `corelog serve`; 0 leaves the cache to the kernel).
    #[arg(long, default_value_t = engine::log::CACHE_WINDOW_BYTES_DEFAULT)]
    pub cache_window_bytes: u64,
    /// Write zeros ahead of the tail while appends are synced one by one
    /// (`--preallocate` of `corelog serve`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub preallocate: bool,
    /// Size retention per partition (`--retention-bytes` of `corelog serve`; none by
    /// default): with it the runs also delete old segments while they append, and the
    /// latency run prints its slowest append.
    #[arg(long)]
    pub retention_bytes: Option<u64>,
}

impl AppendArgs {
    fn wants(&self, scenario: &str) -> bool {
        self.only.as_deref().is_none_or(|only| scenario.contains(only))
    }
}

struct Run {
    bytes_per_s: f64,
    records_per_s: f64,
    latency_ns: Histogram<u64>,
    /// Each append's submission (seconds from the start) and latency (µs), in order.
    timeline: Vec<(f64, u64)>,
}

/// `total_bytes` of copies of one batch, carved out of a single allocation so that no
/// per-batch allocator work (or `munmap` of a freed batch) happens while the clock runs.
fn batches(record_bytes: usize, batch_bytes: usize, total_bytes: u64) -> (Vec<BytesMut>, usize) {
    let mut builder = BatchBuilder::with_capacity(batch_bytes + 4096);
    let value: Vec<u8> = (0..record_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    while builder.len_bytes() + record_bytes + 16 <= batch_bytes {
        builder.push(1_700_000_000_000, None, Some(&value));
    }
    let records = builder.record_count();
    let template = builder.finish();
    let count = (total_bytes / template.len() as u64).max(1) as usize;
    let mut arena = BytesMut::with_capacity(count * template.len());
    for _ in 0..count {
        arena.extend_from_slice(&template);
    }
    ((0..count).map(|_| arena.split_to(template.len())).collect(), records)
}

fn run(
    dir: &Path,
    args: &AppendArgs,
    flush: FlushMode,
    partitions: u32,
    in_flight: usize,
    work: Vec<BytesMut>,
    records_per_batch: usize,
) -> Result<Run> {
    let _ = std::fs::remove_dir_all(dir);
    let mut config = EngineConfig { flush, ..EngineConfig::new(dir) };
    config.log.cache_window_bytes = args.cache_window_bytes;
    config.log.preallocate = args.preallocate;
    config.log.retention_bytes = args.retention_bytes;
    let engine = Engine::open(config).context("opening the engine")?;
    engine.create_topic("bench", partitions)?;
    let total_bytes: u64 = work.iter().map(|b| b.len() as u64).sum();
    let batches = work.len();
    let mut latency_ns = Histogram::<u64>::new(3)?;
    let mut timeline = Vec::with_capacity(batches);
    let mut windows: Vec<VecDeque<(Instant, engine::Pending<engine::AppendResult>)>> =
        (0..partitions).map(|_| VecDeque::new()).collect();
    let started = Instant::now();
    let mut finish = |submitted: Instant, pending: engine::Pending<engine::AppendResult>| -> Result<()> {
        pending.wait()?;
        let nanos = submitted.elapsed().as_nanos() as u64;
        latency_ns.record(nanos)?;
        timeline.push(((submitted - started).as_secs_f64(), nanos / 1_000));
        Ok(())
    };
    for (i, batch) in work.into_iter().enumerate() {
        let partition = (i % partitions as usize) as u32;
        let window = &mut windows[partition as usize];
        if window.len() >= in_flight {
            let (submitted, pending) = window.pop_front().expect("non-empty");
            finish(submitted, pending)?;
        }
        window.push_back((Instant::now(), engine.append("bench", partition, batch)));
    }
    for window in &mut windows {
        while let Some((submitted, pending)) = window.pop_front() {
            finish(submitted, pending)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    engine.shutdown()?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(Run {
        bytes_per_s: total_bytes as f64 / seconds,
        records_per_s: (batches * records_per_batch) as f64 / seconds,
        latency_ns,
        timeline,
    })
}

/// Appends of the latency run (and fdatasyncs of fio's reference for it).
fn latency_appends(args: &AppendArgs) -> u64 {
    if args.quick {
        2_000
    } else {
        10_000
    }
}

/// Runs the scenario and returns its figures (also printed as RESULT lines).
pub fn bench(args: &AppendArgs) -> Result<Vec<Figure>> {
    let base = args.dir.clone().unwrap_or_else(|| crate::report::bench_dir().join("data"));
    std::fs::create_dir_all(&base)?;
    let total_bytes: u64 = if args.quick { 1 << 30 } else { 4 << 30 };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    crate::report::quiesce();
    let reference = if fio::available() {
        let fio_bytes = if args.quick { 512 << 20 } else { 2 << 30 };
        match fio::measure(
            &base.join("fio"),
            BATCH_BYTES,
            fio_bytes,
            LATENCY_BATCH_BYTES,
            latency_appends(args),
        ) {
            Ok(reference) => Some(reference),
            Err(error) => {
                eprintln!("note: fio reference failed ({error:#}); figures print without ratios");
                None
            }
        }
    } else {
        None
    };
    if let Some(FioReference { seq_write_bytes_per_s, fdatasync_p50_ns, fdatasync_p99_ns }) = reference {
        eprintln!(
            "fio on {}: sequential write {:.0} MB/s; write+fdatasync of {} KiB p50 {:.3} ms p99 {:.3} ms",
            base.display(),
            seq_write_bytes_per_s / 1e6,
            LATENCY_BATCH_BYTES >> 10,
            fdatasync_p50_ns / 1e6,
            fdatasync_p99_ns / 1e6
        );
    }
    let fio_mb = reference.map(|r| ("fio-seqwrite".to_string(), r.seq_write_bytes_per_s / 1e6));
    let data = base.join("engine");
    let mut figures = Vec::new();
    let mut emit = |figure: Figure| {
        println!("{}", figure.line());
        figures.push(figure);
    };

    for flush in [FlushMode::Group, FlushMode::Always, FlushMode::Os] {
        if !args.wants(&format!("append-1p-1k-{flush}")) {
            continue;
        }
        let (work, records) = batches(1024, BATCH_BYTES, total_bytes);
        crate::report::quiesce();
        let result = run(&data, args, flush, 1, IN_FLIGHT_PER_PARTITION, work, records)?;
        emit(Figure {
            scenario: format!("append-1p-1k-{flush}"),
            name: "throughput".into(),
            value: result.bytes_per_s / 1e6,
            unit: "MB/s".into(),
            reference: fio_mb.clone(),
        });
    }
    for partitions in 1..=cores as u32 {
        for (label, record_bytes) in [("1k", 1024), ("100b", 100)] {
            let scenario = format!("append-{partitions}p-{label}-group");
            if !args.wants(&scenario) || partitions == 1 && record_bytes == 1024 {
                continue; // 1p-1k-group was measured above
            }
            let (work, records) = batches(record_bytes, BATCH_BYTES, total_bytes);
            crate::report::quiesce();
            let on_disk_record_bytes = work[0].len() as f64 / records as f64;
            let result =
                run(&data, args, FlushMode::Group, partitions, IN_FLIGHT_PER_PARTITION, work, records)?;
            emit(Figure {
                scenario: scenario.clone(),
                name: "throughput".into(),
                value: result.bytes_per_s / 1e6,
                unit: "MB/s".into(),
                reference: fio_mb.clone(),
            });
            if record_bytes == 100 {
                let busy_shards = partitions.min(cores as u32) as f64;
                emit(Figure {
                    scenario,
                    name: "records_per_shard".into(),
                    value: result.records_per_s / busy_shards / 1e6,
                    unit: "M/s".into(),
                    reference: reference.map(|r| {
                        (
                            "fio-seqwrite-records".to_string(),
                            r.seq_write_bytes_per_s / on_disk_record_bytes / busy_shards / 1e6,
                        )
                    }),
                });
            }
        }
    }
    if !args.wants("append-latency-group") {
        return Ok(figures);
    }
    let (work, records) =
        batches(1024, LATENCY_BATCH_BYTES, latency_appends(args) * LATENCY_BATCH_BYTES as u64);
    crate::report::quiesce();
    let result = run(&data, args, FlushMode::Group, 1, 1, work, records)?;
    crate::soak::dump_timeline("append-latency", &result.timeline);
    if args.retention_bytes.is_some() {
        eprintln!(
            "append-latency-group with retention: p99.9 {:.2} ms, max {:.2} ms",
            result.latency_ns.value_at_quantile(0.999) as f64 / 1e6,
            result.latency_ns.max() as f64 / 1e6
        );
    }
    for (name, quantile, fio_ns) in [
        ("p50", 0.5, reference.map(|r| r.fdatasync_p50_ns)),
        ("p99", 0.99, reference.map(|r| r.fdatasync_p99_ns)),
    ] {
        emit(Figure {
            scenario: "append-latency-group".into(),
            name: name.into(),
            value: result.latency_ns.value_at_quantile(quantile) as f64 / 1e6,
            unit: "ms".into(),
            reference: fio_ns.map(|ns| ("fio-write-fdatasync".to_string(), ns / 1e6)),
        });
    }
    Ok(figures)
}
