//! `corelog demo`: the embedded engine end to end, with a progress bar and a report.
//!
//! In a temporary data directory: open the engine on all cores, append generated
//! payments events to several partitions from producer threads (pipelined, a bounded
//! window of batches in flight per partition), read everything back zero-copy and
//! CRC-checked, land the log as hour-partitioned Parquet (the lander, exactly once,
//! typed columns from the payments schema), run the batch jobs `hourly` and `rings` on
//! the landed files, and report what happened and how fast. The stream-query issue
//! grows it into the full tour (decisions, planted rings, reconcile).

use anyhow::{ensure, Context, Result};
use engine::batch::{BatchBuilder, BatchView};
use engine::{Engine, EngineConfig, FlushMode, Pending};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::payments::{partition_for, Generator};

/// Batches in flight per partition per producer thread.
pub const IN_FLIGHT_PER_PARTITION: usize = 4;
/// Most bytes one read returns.
pub const READ_BYTES_MAX: usize = 1 << 20;

/// What the demo runs.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Payments events to append.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Partitions of the `payments` topic (default: 4 per shard).
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Shard threads (default: all cores).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Durability of acknowledged appends: group, always or os.
    #[arg(long, default_value_t = FlushMode::Group)]
    pub flush: FlushMode,
    /// Records per RecordBatch.
    #[arg(long, default_value_t = 500)]
    pub batch_records: usize,
    /// Producer threads.
    #[arg(long, default_value_t = 2)]
    pub producers: usize,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep the data here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The figures the demo reports.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Shards the engine ran.
    pub shards: usize,
    /// Partitions written.
    pub partitions: u32,
    /// Events acknowledged.
    pub appended_events: u64,
    /// Bytes acknowledged (batch bytes).
    pub appended_bytes: u64,
    /// Wall time of the append phase.
    pub append_time: Duration,
    /// Per-batch append latency (submit to durable ack), µs: p50, p99, max.
    pub append_latency_us: (u64, u64, u64),
    /// fdatasyncs completed and their mean duration.
    pub fsyncs: (u64, Duration),
    /// Events read back.
    pub read_events: u64,
    /// Wall time of the read phase.
    pub read_time: Duration,
    /// A sample event.
    pub sample: String,
    /// Records landed, Parquet files, bytes, wall time.
    pub landed: (u64, u64, u64, Duration),
    /// hourly: rows, groups, files, wall time.
    pub hourly: (u64, usize, usize, Duration),
    /// rings: rings found, wall time.
    pub rings: (usize, Duration),
}

/// The payments schema the lander uses (the repository's `schemas/payments.toml`).
pub const PAYMENTS_SCHEMA: &str = include_str!("../../schemas/payments.toml");

/// Lands the engine's data dir to `lake` and runs `hourly` and `rings` over it.
fn lake(data_dir: &std::path::Path, work: &std::path::Path, events: u64) -> Result<DemoReportLake> {
    let schemas = work.join("schemas");
    std::fs::create_dir_all(&schemas)?;
    std::fs::write(schemas.join("payments.toml"), PAYMENTS_SCHEMA)?;
    let lake = work.join("lake");
    let bar = ProgressBar::new(events);
    bar.set_style(
        ProgressStyle::with_template("landing   {bar:40} {human_pos}/{human_len} events {per_sec}")
            .expect("valid template"),
    );
    let config = lander::LanderConfig { schemas_dir: Some(schemas), ..lander::LanderConfig::default() };
    let output = lander::Output::open(lake.to_str().context("lake path")?)?;
    let mut lander = lander::Lander::new(lander::SegmentSource::new(data_dir)?, output, config);
    let started = Instant::now();
    loop {
        let caught_up = lander.step(false)?;
        bar.set_position(lander.manifests().map(|m| m.next_offset as u64).sum());
        if caught_up {
            break;
        }
    }
    lander.flush()?;
    let landed_time = started.elapsed();
    bar.finish_and_clear();
    let progress = lander.progress().clone();

    let scheduler = batch::Scheduler::new(batch::SchedulerConfig::default());
    let stages: [batch::StageProgress; batch::hourly::STAGES_MAX] = Default::default();
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("batch: hourly, rings");
    spinner.enable_steady_tick(Duration::from_millis(100));
    let job = batch::hourly::HourlyJob {
        input: lake.clone(),
        topic: "payments".into(),
        output: work.join("batch"),
        from_ms: None,
        to_ms: None,
    };
    let started = Instant::now();
    let hourly =
        batch::hourly::run(&job, &scheduler, &stages, batch::hourly::SKEW_SALTS_DEFAULT, &mut |_, _| {})?;
    let hourly_time = started.elapsed();
    let rings_job = batch::rings::RingsJob {
        input: lake,
        topic: "payments".into(),
        output: work.join("batch"),
        min_ring_size: batch::rings::MIN_RING_SIZE_DEFAULT,
        from_ms: None,
        to_ms: None,
    };
    let stages: [batch::StageProgress; batch::hourly::STAGES_MAX] = Default::default();
    let started = Instant::now();
    let (_, rings) = batch::rings::run(&rings_job, &scheduler, &stages, &mut |_, _| {})?;
    let rings_time = started.elapsed();
    spinner.finish_and_clear();
    Ok(DemoReportLake {
        landed: (progress.records, progress.files, progress.bytes, landed_time),
        hourly: (hourly.rows, hourly.groups, hourly.files.len(), hourly_time),
        rings: (rings.len(), rings_time),
    })
}

struct DemoReportLake {
    landed: (u64, u64, u64, Duration),
    hourly: (u64, usize, usize, Duration),
    rings: (usize, Duration),
}

struct ProducerResult {
    events: u64,
    bytes: u64,
    latency_us: Histogram<u64>,
}

fn produce(
    engine: &Engine,
    args: &DemoArgs,
    partitions: u32,
    thread: usize,
    bar: &ProgressBar,
) -> Result<ProducerResult> {
    let share = args.events / args.producers as u64
        + u64::from((thread as u64) < args.events % args.producers as u64);
    let mut generator = Generator::new(args.seed + thread as u64, 100_000, 1.1, engine::now_ms(), 50);
    let mut builders: Vec<BatchBuilder> =
        (0..partitions).map(|_| BatchBuilder::with_capacity(256 << 10)).collect();
    let mut in_flight: Vec<InFlight> = (0..partitions).map(|_| VecDeque::new()).collect();
    let mut result = ProducerResult { events: 0, bytes: 0, latency_us: Histogram::new(3)? };
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for _ in 0..share {
        let payment = generator.next_payment();
        payment.key(&mut key);
        payment.json(&mut value);
        let partition = partition_for(&key, partitions) as usize;
        builders[partition].push(payment.ts, Some(&key), Some(&value));
        if builders[partition].record_count() >= args.batch_records {
            submit(engine, partition, &mut builders[partition], &mut in_flight[partition], &mut result, bar)?;
        }
    }
    for (partition, builder) in builders.iter_mut().enumerate() {
        if builder.record_count() > 0 {
            submit(engine, partition, builder, &mut in_flight[partition], &mut result, bar)?;
        }
    }
    for queue in &mut in_flight {
        while let Some(entry) = queue.pop_front() {
            settle(entry, &mut result, bar)?;
        }
    }
    Ok(result)
}

type InFlight = VecDeque<(Instant, Pending<engine::AppendResult>)>;

fn submit(
    engine: &Engine,
    partition: usize,
    builder: &mut BatchBuilder,
    in_flight: &mut InFlight,
    result: &mut ProducerResult,
    bar: &ProgressBar,
) -> Result<()> {
    let batch = builder.finish();
    result.bytes += batch.len() as u64;
    if in_flight.len() >= IN_FLIGHT_PER_PARTITION {
        settle(in_flight.pop_front().expect("non-empty"), result, bar)?;
    }
    in_flight.push_back((Instant::now(), engine.append("payments", partition as u32, batch)));
    Ok(())
}

fn settle(
    (started, pending): (Instant, Pending<engine::AppendResult>),
    result: &mut ProducerResult,
    bar: &ProgressBar,
) -> Result<()> {
    let ack = pending.wait().context("append")?;
    result.latency_us.record(started.elapsed().as_micros() as u64)?;
    let records = (ack.next_offset - ack.base_offset) as u64;
    result.events += records;
    bar.inc(records);
    Ok(())
}

/// Runs the demo and prints its report.
pub fn run(args: &DemoArgs) -> Result<DemoReport> {
    ensure!(
        args.events > 0 && args.batch_records > 0 && args.producers > 0,
        "events, batch size and producers must be positive"
    );
    let temp = tempfile::tempdir().context("creating a temporary data directory")?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let mut config = EngineConfig::new(&data_dir);
    config.flush = args.flush;
    if let Some(cores) = args.cores {
        ensure!(cores > 0, "--cores must be positive");
        config.shards = cores;
    }
    let engine = Engine::open(config).context("opening the engine")?;
    let shards = engine.shard_count();
    let partitions = args.partitions.unwrap_or(4 * shards as u32);
    if engine.partition_count("payments").is_none() {
        engine.create_topic("payments", partitions)?;
    }
    let partitions = engine.partition_count("payments").expect("created above");
    let starts: Vec<i64> = (0..partitions)
        .map(|p| engine.partition_info("payments", p).wait().map(|i| i.high_watermark))
        .collect::<Result<_, _>>()?;
    eprintln!(
        "corelog demo: {shards} shards, topic payments with {partitions} partitions, flush={}, data in {}",
        args.flush,
        data_dir.display()
    );

    let bar = ProgressBar::new(args.events);
    bar.set_style(
        ProgressStyle::with_template("appending {bar:40} {human_pos}/{human_len} events {per_sec} eta {eta}")
            .expect("valid template"),
    );
    let (syncs_before, sync_time_before) = engine::fsync_stats();
    let started = Instant::now();
    let results: Vec<Result<ProducerResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.producers)
            .map(|t| {
                scope.spawn({
                    let (engine, bar) = (&engine, &bar);
                    move || produce(engine, args, partitions, t, bar)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("producer thread")).collect()
    });
    let append_time = started.elapsed();
    bar.finish_and_clear();
    let (syncs_after, sync_time_after) = engine::fsync_stats();
    let mut latency_us = Histogram::<u64>::new(3)?;
    let (mut appended_events, mut appended_bytes) = (0, 0);
    for result in results {
        let result = result?;
        appended_events += result.events;
        appended_bytes += result.bytes;
        latency_us.add(&result.latency_us)?;
    }

    let read_bar = ProgressBar::new(appended_events);
    read_bar.set_style(
        ProgressStyle::with_template("reading   {bar:40} {human_pos}/{human_len} events {per_sec}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let mut read_events = 0u64;
    let mut sample = String::new();
    for partition in 0..partitions {
        let mut offset = starts[partition as usize];
        let high_watermark = engine.partition_info("payments", partition).wait()?.high_watermark;
        while offset < high_watermark {
            let fetched = engine.read("payments", partition, offset, READ_BYTES_MAX).wait()?;
            let mut position = 0;
            while position < fetched.bytes.len() {
                let view = BatchView::parse(&fetched.bytes[position..])?;
                if sample.is_empty() {
                    let records = view.records()?;
                    sample = String::from_utf8_lossy(records[0].value.unwrap_or_default()).into_owned();
                }
                read_events += u64::from(view.record_count());
                read_bar.inc(u64::from(view.record_count()));
                position += view.len();
            }
            ensure!(fetched.next_offset > offset, "read made no progress at {partition}:{offset}");
            offset = fetched.next_offset;
        }
    }
    let read_time = started.elapsed();
    read_bar.finish_and_clear();
    engine.shutdown()?;
    let lake_dir = tempfile::tempdir().context("creating a temporary lake directory")?;
    let lake = lake(&data_dir, lake_dir.path(), appended_events)?;

    let syncs = syncs_after - syncs_before;
    let sync_mean = (sync_time_after - sync_time_before).checked_div(syncs.max(1) as u32).unwrap_or_default();
    let report = DemoReport {
        shards,
        partitions,
        appended_events,
        appended_bytes,
        append_time,
        append_latency_us: (
            latency_us.value_at_quantile(0.5),
            latency_us.value_at_quantile(0.99),
            latency_us.max(),
        ),
        fsyncs: (syncs, sync_mean),
        read_events,
        read_time,
        sample,
        landed: lake.landed,
        hourly: lake.hourly,
        rings: lake.rings,
    };
    print_report(&report, args, &data_dir, args.data_dir.is_none());
    ensure!(
        report.appended_events == args.events,
        "appended {} of {} events",
        report.appended_events,
        args.events
    );
    ensure!(
        report.landed.0 >= report.appended_events && report.hourly.0 >= report.appended_events,
        "landed {} and aggregated {} of {} events",
        report.landed.0,
        report.hourly.0,
        report.appended_events
    );
    ensure!(
        report.read_events == report.appended_events,
        "read back {} of {} events",
        report.read_events,
        report.appended_events
    );
    Ok(report)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_report(report: &DemoReport, args: &DemoArgs, data_dir: &std::path::Path, temporary: bool) {
    let seconds = report.append_time.as_secs_f64();
    let read_seconds = report.read_time.as_secs_f64();
    let megabytes = report.appended_bytes as f64 / 1e6;
    println!("corelog demo report");
    println!(
        "  engine      {} shards, {} partitions, flush={}",
        report.shards, report.partitions, args.flush
    );
    println!(
        "  appended    {} events ({megabytes:.1} MB) in {seconds:.2} s: {:.2} M events/s, {:.0} MB/s",
        thousands(report.appended_events),
        report.appended_events as f64 / seconds / 1e6,
        megabytes / seconds
    );
    let (p50, p99, max) = report.append_latency_us;
    println!(
        "  latency     per {}-event batch, submit to durable ack: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.batch_records,
        p50 as f64 / 1e3,
        p99 as f64 / 1e3,
        max as f64 / 1e3
    );
    println!(
        "  fdatasync   {} group commits, mean {:.2} ms",
        thousands(report.fsyncs.0),
        report.fsyncs.1.as_secs_f64() * 1e3
    );
    println!(
        "  read back   {} events in {read_seconds:.2} s (zero-copy, CRC-checked): {:.2} M events/s",
        thousands(report.read_events),
        report.read_events as f64 / read_seconds / 1e6
    );
    let (records, files, bytes, landed) = report.landed;
    println!(
        "  landed      {} events to {} Parquet files ({:.1} MB, zstd) in {:.2} s: {:.2} M events/s, exactly once",
        thousands(records),
        files,
        bytes as f64 / 1e6,
        landed.as_secs_f64(),
        records as f64 / landed.as_secs_f64() / 1e6
    );
    let (rows, groups, hour_files, hourly) = report.hourly;
    println!(
        "  hourly      {} rows -> {} merchant/country/hour groups in {} hour file{} in {:.2} s (count, sum, min, max, p50, p99)",
        thousands(rows),
        thousands(groups as u64),
        hour_files,
        if hour_files == 1 { "" } else { "s" },
        hourly.as_secs_f64()
    );
    println!(
        "  rings       {} fraud rings of 4+ users in {:.2} s (planted rings arrive with `corelog gen`)",
        report.rings.0,
        report.rings.1.as_secs_f64()
    );
    println!("  sample      {}", report.sample);
    println!("  data dir    {}{}", data_dir.display(), if temporary { " (removed)" } else { "" });
}
