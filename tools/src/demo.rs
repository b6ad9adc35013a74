//! `corelog demo`: the whole loop on one machine, embedded, with progress bars and a
//! report.
//!
//! In a temporary data directory:
//! 1. **stream** — the engine opens on all cores with the fraud query
//!    (`queries/fraud.toml`); a producer offers payments at a fixed rate (open loop,
//!    planted fraud rings, a few late events) with event time running
//!    `--compression` times faster than the wall clock, so a minute of demo holds
//!    minutes of windows; decisions are read back as they become durable and their
//!    latency measured from each triggering event's creation; a lander lands the
//!    payments and the query's window results to Parquet at the same time;
//! 2. **batch** — `hourly`, `rings` and `reconcile` run over the landed files;
//! 3. **feedback** — the rings go to the `denylist` topic, the query reloads it
//!    without a restart, and a short follow-up stream shows ring members' payments
//!    being denied.
//!
//! The demo checks itself: a shadow copy of the query operator runs in the producer
//! over the same events (same code as the engine, no I/O), so the report's figures
//! must agree with it exactly: decisions, windows that late events changed
//! (reconcile's corrections), and rings found against rings planted.

use crate::gen::wait_until;
use crate::payments::{partition_for, Generator, Payment, Plan, RING_USER_BASE};
use anyhow::{ensure, Context, Result};
use engine::batch::{BatchBuilder, BatchView};
use engine::query::deny::DenySet;
use engine::query::window::{Event, Operator, Output};
use engine::query::QueryDef;
use engine::{Engine, EngineConfig, FlushMode, Pending};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The fraud query the demo runs (the repository's `queries/fraud.toml`).
pub const FRAUD_QUERY: &str = include_str!("../../queries/fraud.toml");
/// The payments schema the lander uses (the repository's `schemas/payments.toml`).
pub const PAYMENTS_SCHEMA: &str = include_str!("../../schemas/payments.toml");
/// Batches in flight per partition.
pub const IN_FLIGHT_PER_PARTITION: usize = 8;
/// A partition's open batch is appended at least this often (like `linger.ms`).
pub const LINGER_US: u64 = 1_000;
/// The lander's `max_lag` in the demo.
pub const LANDING_LAG_MS_MAX: u64 = 5_000;
/// The demo's lander waits this long between steps once caught up (its `--poll`):
/// landing lag is bounded by `max_lag` plus this (docs/LANDER.md).
pub const LANDING_POLL_MS: u64 = 100;
/// Longest the demo waits for the query or the lander to catch up.
pub const CATCH_UP_TIMEOUT_MS: u64 = 60_000;

/// What the demo runs.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Wall seconds of the main stream.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Offered payments per wall second (open loop).
    #[arg(long, default_value_t = 40_000.0)]
    pub rate: f64,
    /// Event time runs this many times faster than the wall clock.
    #[arg(long, default_value_t = 12.0)]
    pub compression: f64,
    /// Ordinary users (Zipf 1.1).
    #[arg(long, default_value_t = 20_000)]
    pub users: u64,
    /// Fraud rings planted.
    #[arg(long, default_value_t = 4)]
    pub rings: u64,
    /// Users per ring.
    #[arg(long, default_value_t = 5)]
    pub ring_size: u64,
    /// Fraction of payments from ring members.
    #[arg(long, default_value_t = 0.01)]
    pub ring_share: f64,
    /// Fraction of payments sent late (40 s of event time behind).
    #[arg(long, default_value_t = 0.002)]
    pub late_fraction: f64,
    /// Wall seconds of the follow-up stream after the deny-list is fed back.
    #[arg(long, default_value_t = 3.0)]
    pub follow_up_seconds: f64,
    /// Partitions of the `payments` topic (default: 4 per shard).
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Shard threads (default: all cores).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Durability of acknowledged appends: group, always or os.
    #[arg(long, default_value_t = FlushMode::Group)]
    pub flush: FlushMode,
    /// Most payments per RecordBatch.
    #[arg(long, default_value_t = 500)]
    pub batch_records: usize,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep the data here (a new or empty directory) instead of a temporary one.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// How late a late event is, in event time.
pub const LATE_BY_MS: i64 = 40_000;

/// The figures the demo reports.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Shards the engine ran.
    pub shards: usize,
    /// Partitions of `payments`.
    pub partitions: u32,
    /// Main stream: payments appended, late ones, ring-member ones, wall time, bytes.
    pub events: u64,
    /// Late payments in the main stream.
    pub late_events: u64,
    /// Ring-member payments in the main stream.
    pub ring_events: u64,
    /// Wall time of the main stream.
    pub stream_time: Duration,
    /// Bytes appended (batch bytes), both streams.
    pub appended_bytes: u64,
    /// Event time covered by the main stream.
    pub event_time_span: Duration,
    /// Decisions by rule name, both streams.
    pub decisions: Vec<(String, u64)>,
    /// Window results the query emitted.
    pub windows: u64,
    /// Decision latency, event creation to readable: p50, p99, max (µs), and samples.
    pub latency_us: (u64, u64, u64, u64),
    /// fdatasyncs completed and their mean duration.
    pub fsyncs: (u64, Duration),
    /// Records landed (payments and window results), files, bytes, wall time to catch up.
    pub landed: (u64, u64, u64, Duration),
    /// Landing lag samples: p50 and max (s).
    pub landing_lag_s: (f64, f64),
    /// hourly: rows, groups, wall time.
    pub hourly: (u64, usize, Duration),
    /// rings: found, planted, wall time.
    pub rings: (usize, u64, Duration),
    /// reconcile: closed windows compared, corrected, late event-window contributions, wall time.
    pub reconcile: (usize, usize, i64, Duration),
    /// Windows late events changed, by the shadow operator.
    pub expected_corrections: usize,
    /// Deny-list ids fed back.
    pub deny_ids: usize,
    /// Follow-up stream: payments, ring-member payments, ring payments denied.
    pub follow_up: (u64, u64, u64),
    /// A sample decision.
    pub sample: String,
}

/// Maps wall time to the demo's compressed event time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    start_ms: i64,
    compression: f64,
}

impl Clock {
    fn event_ms(&self, at: Instant) -> i64 {
        self.start_ms + (at.duration_since(self.start).as_secs_f64() * 1e3 * self.compression) as i64
    }

    /// Wall-clock latency of something observed at `now` for an event created at `ts_ms`.
    fn latency_us(&self, ts_ms: i64, now: Instant) -> u64 {
        let now_ms =
            self.start_ms as f64 + now.duration_since(self.start).as_secs_f64() * 1e3 * self.compression;
        ((now_ms - ts_ms as f64).max(0.0) * 1e3 / self.compression) as u64
    }
}

/// The query operator over the same events, per partition, to check the engine by.
struct Shadow {
    def: Arc<QueryDef>,
    operators: Vec<Operator>,
    deny: DenySet,
    /// Windows a dropped (late) event missed: (partition, start, key).
    missed: BTreeSet<(u32, i64, String)>,
    /// Latest window end emitted per partition.
    closed_through: Vec<i64>,
    decisions: u64,
    denied_offsets: u64,
    out: Vec<Output>,
}

impl Shadow {
    fn new(def: Arc<QueryDef>, partitions: u32) -> Self {
        Self {
            operators: (0..partitions).map(|_| Operator::new(def.clone())).collect(),
            def,
            deny: DenySet::default(),
            missed: BTreeSet::new(),
            closed_through: vec![i64::MIN; partitions as usize],
            decisions: 0,
            denied_offsets: 0,
            out: Vec::new(),
        }
    }

    fn process(&mut self, partition: u32, offset: i64, payment: &Payment, key: &str) {
        let card = format!("c{}", payment.card);
        let device = format!("d{}", payment.device);
        let event = Event {
            offset,
            key,
            time_ms: payment.ts,
            value: payment.amount_cents as i64,
            distinct: Some(&card),
        };
        let operator = &mut self.operators[partition as usize];
        let watermark = operator.watermark_ms();
        let size_ms = self.def.window.size_ms;
        for start in self.def.window.starts(payment.ts).filter(|s| s + size_ms <= watermark) {
            self.missed.insert((partition, start, key.to_string()));
        }
        operator.process(&event, &[Some(&card), Some(&device)], &self.deny, &mut self.out);
        let mut denied = false;
        for output in self.out.drain(..) {
            match output {
                Output::Window(w) => {
                    let bound = &mut self.closed_through[partition as usize];
                    *bound = (*bound).max(w.end_ms);
                }
                Output::Decision(d) => {
                    self.decisions += 1;
                    denied |= d.window.is_none();
                }
            }
        }
        self.denied_offsets += u64::from(denied);
    }

    /// Windows late events changed among those the stream closed.
    fn expected_corrections(&self) -> usize {
        let size_ms = self.def.window.size_ms;
        self.missed.iter().filter(|(p, start, _)| start + size_ms <= self.closed_through[*p as usize]).count()
    }
}

/// Reads a topic's partitions as they grow (one thread each, woken by appends).
struct DecisionReaders {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<DecisionTally>>>,
    count: Arc<AtomicU64>,
}

#[derive(Default)]
struct DecisionTally {
    by_rule: std::collections::BTreeMap<String, u64>,
    latency_us: Option<Histogram<u64>>,
    sample: String,
    denied_offsets: BTreeSet<(u32, i64)>,
}

impl DecisionReaders {
    fn start(engine: &Arc<Engine>, topic: &str, partitions: u32, clock: Clock) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let threads = (0..partitions)
            .map(|partition| {
                let (engine, stop, count, topic) =
                    (engine.clone(), stop.clone(), count.clone(), topic.to_string());
                std::thread::spawn(move || read_decisions(&engine, &topic, partition, clock, &stop, &count))
            })
            .collect();
        Self { stop, threads, count }
    }

    fn finish(self) -> Result<DecisionTally> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = DecisionTally { latency_us: Some(Histogram::new(3)?), ..DecisionTally::default() };
        for thread in self.threads {
            let tally = thread.join().map_err(|_| anyhow::anyhow!("decision reader panicked"))??;
            for (rule, n) in tally.by_rule {
                *total.by_rule.entry(rule).or_default() += n;
            }
            if let (Some(all), Some(part)) = (&mut total.latency_us, &tally.latency_us) {
                all.add(part)?;
            }
            if total.sample.is_empty() {
                total.sample = tally.sample;
            }
            total.denied_offsets.extend(tally.denied_offsets);
        }
        Ok(total)
    }
}

fn read_decisions(
    engine: &Engine,
    topic: &str,
    partition: u32,
    clock: Clock,
    stop: &AtomicBool,
    count: &AtomicU64,
) -> Result<DecisionTally> {
    let mut tally = DecisionTally { latency_us: Some(Histogram::new(3)?), ..DecisionTally::default() };
    let mut offset = 0;
    while !stop.load(Ordering::Relaxed) {
        let high_watermark = engine.wait_for(topic, partition, offset, 100).wait()?;
        if high_watermark <= offset {
            continue;
        }
        let fetched = engine.read(topic, partition, offset, 1 << 20).wait()?;
        let now = Instant::now();
        let mut bytes = &fetched.bytes[..];
        while !bytes.is_empty() {
            let view = BatchView::parse(bytes)?;
            for record in view.records()? {
                let value: serde_json::Value = serde_json::from_slice(record.value.unwrap_or_default())?;
                let rule = value["rule"].as_str().unwrap_or("?").to_string();
                if value["denied"].is_string() {
                    tally.denied_offsets.insert((partition, value["offset"].as_i64().unwrap_or(-1)));
                }
                if let (Some(ts), Some(histogram)) = (value["ts"].as_i64(), &mut tally.latency_us) {
                    histogram.record(clock.latency_us(ts, now))?;
                }
                *tally.by_rule.entry(rule).or_default() += 1;
                if tally.sample.is_empty() {
                    tally.sample = String::from_utf8_lossy(record.value.unwrap_or_default()).into_owned();
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            bytes = &bytes[view.len()..];
        }
        offset = fetched.next_offset;
    }
    Ok(tally)
}

/// One open-loop stream: what it sent.
#[derive(Debug, Default)]
struct StreamStats {
    events: u64,
    late: u64,
    ring: u64,
    bytes: u64,
}

type InFlight = VecDeque<Pending<engine::AppendResult>>;

struct Producer<'a> {
    engine: &'a Engine,
    partitions: u32,
    batch_records: usize,
    builders: Vec<BatchBuilder>,
    in_flight: Vec<InFlight>,
    next_offsets: Vec<i64>,
    stats: StreamStats,
}

impl<'a> Producer<'a> {
    fn new(engine: &'a Engine, partitions: u32, batch_records: usize) -> Result<Self> {
        let next_offsets = (0..partitions)
            .map(|p| engine.partition_info("payments", p).wait().map(|i| i.next_offset))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            engine,
            partitions,
            batch_records,
            builders: (0..partitions).map(|_| BatchBuilder::with_capacity(256 << 10)).collect(),
            in_flight: (0..partitions).map(|_| VecDeque::new()).collect(),
            next_offsets,
            stats: StreamStats::default(),
        })
    }

    /// Sends `rate × seconds` payments on schedule; every one also goes to `shadow`.
    fn stream(
        &mut self,
        generator: &mut Generator,
        clock: Clock,
        rate: f64,
        seconds: f64,
        shadow: &mut Shadow,
        bar: &ProgressBar,
    ) -> Result<()> {
        let total = (rate * seconds).round() as u64;
        let started = Instant::now();
        let mut last_flush = started;
        let (mut key, mut value) = (Vec::new(), Vec::new());
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if due > Instant::now() && last_flush.elapsed() >= Duration::from_micros(LINGER_US) {
                self.flush_all()?;
                last_flush = Instant::now();
            }
            wait_until(due);
            let payment = generator.next_payment_at(clock.event_ms(due));
            payment.key(&mut key);
            payment.json(&mut value);
            let partition = partition_for(&key, self.partitions);
            let offset = self.next_offsets[partition as usize];
            self.next_offsets[partition as usize] += 1;
            shadow.process(partition, offset, &payment, std::str::from_utf8(&key).expect("ascii key"));
            self.builders[partition as usize].push(engine::now_ms(), Some(&key), Some(&value));
            self.stats.events += 1;
            self.stats.late += u64::from(payment.late);
            self.stats.ring += u64::from(payment.ring);
            if self.builders[partition as usize].record_count() >= self.batch_records {
                self.submit(partition as usize)?;
            }
            if i % 1024 == 0 {
                bar.set_position(self.stats.events);
            }
        }
        self.flush_all()?;
        for queue in &mut self.in_flight {
            while let Some(pending) = queue.pop_front() {
                pending.wait().context("append")?;
            }
        }
        bar.set_position(self.stats.events);
        Ok(())
    }

    fn flush_all(&mut self) -> Result<()> {
        for partition in 0..self.partitions as usize {
            if self.builders[partition].record_count() > 0 {
                self.submit(partition)?;
            }
        }
        Ok(())
    }

    fn submit(&mut self, partition: usize) -> Result<()> {
        let batch = self.builders[partition].finish();
        self.stats.bytes += batch.len() as u64;
        let queue = &mut self.in_flight[partition];
        if queue.len() >= IN_FLIGHT_PER_PARTITION {
            queue.pop_front().expect("non-empty").wait().context("append")?;
        }
        queue.push_back(self.engine.append("payments", partition as u32, batch));
        Ok(())
    }
}

/// Waits until the query has processed (and made durable the outputs of) every
/// payment appended so far.
fn wait_for_query(engine: &Engine, partitions: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
    let ends: Vec<i64> = (0..partitions)
        .map(|p| engine.partition_info("payments", p).wait().map(|i| i.high_watermark))
        .collect::<Result<_, _>>()?;
    loop {
        let progress = engine.query_progress("fraud").context("the fraud query runs")?;
        if progress.iter().zip(&ends).all(|(done, end)| done >= end) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the fraud query did not catch up: {progress:?} of {ends:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
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

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// The lander, stepping in its own thread until told to finish.
fn land_in_background(
    data_dir: &Path,
    lake: &Path,
    schemas: &Path,
    stop: &AtomicBool,
) -> Result<(lander::Progress, Vec<f64>)> {
    let config = lander::LanderConfig {
        topics: Some(vec!["payments".into(), "fraud.agg".into()]),
        schemas_dir: Some(schemas.to_path_buf()),
        max_lag_ms: LANDING_LAG_MS_MAX,
        workers: 1,
        ..lander::LanderConfig::default()
    };
    let output = lander::Output::open(lake.to_str().context("lake path")?)?;
    let mut lander = lander::Lander::new(lander::SegmentSource::new(data_dir)?, output, config);
    let mut lag_samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let caught_up = lander.step(false)?;
        lander.update_lag();
        lag_samples.push(lander.progress().lag_seconds);
        if caught_up {
            std::thread::sleep(Duration::from_millis(LANDING_POLL_MS));
        }
    }
    while !lander.step(false)? {}
    lander.flush()?;
    Ok((lander.progress().clone(), lag_samples))
}

/// Runs the demo and prints its report.
pub fn run(args: &DemoArgs) -> Result<DemoReport> {
    ensure!(
        args.seconds > 0.0 && args.rate > 0.0 && args.compression >= 1.0,
        "--seconds and --rate must be positive, --compression at least 1"
    );
    ensure!(args.batch_records > 0 && args.users > 0, "--batch-records and --users must be positive");
    ensure!(
        args.rings > 0 && args.ring_size >= batch::rings::MIN_RING_SIZE_DEFAULT as u64,
        "--rings must be positive and --ring-size at least {}",
        batch::rings::MIN_RING_SIZE_DEFAULT
    );
    ensure!(
        (0.0..=1.0).contains(&args.late_fraction) && (0.0..1.0).contains(&args.ring_share),
        "--late-fraction and --ring-share are fractions"
    );
    if let Some(dir) = &args.data_dir {
        let used = std::fs::read_dir(dir).map(|mut entries| entries.next().is_some()).unwrap_or(false);
        ensure!(
            !used,
            "--data-dir {}: give a new or empty directory (the demo checks itself from a clean start)",
            dir.display()
        );
    }
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| temp.path().join("data"));
    let work = temp.path().join("work");
    let schemas = work.join("schemas");
    std::fs::create_dir_all(&schemas)?;
    std::fs::write(schemas.join("payments.toml"), PAYMENTS_SCHEMA)?;
    let lake = work.join("lake");

    let def = QueryDef::parse(FRAUD_QUERY, "queries/fraud.toml")?;
    let mut config = EngineConfig::new(&data_dir);
    config.flush = args.flush;
    if let Some(cores) = args.cores {
        ensure!(cores > 0, "--cores must be positive");
        config.shards = cores;
    }
    let shards = config.shards;
    let partitions = args.partitions.unwrap_or(4 * shards as u32);
    ensure!(partitions > 0, "--partitions must be positive");
    config.auto_create_partitions = Some(partitions);
    config.queries = vec![def.clone()];
    let engine = Arc::new(Engine::open(config).context("opening the engine")?);
    let partitions = engine.partition_count("payments").expect("the query created its source");
    eprintln!(
        "corelog demo: {shards} shards, payments with {partitions} partitions, flush={}, query fraud ({} ms windows), data in {}",
        args.flush,
        def.window.size_ms,
        data_dir.display()
    );

    let clock = Clock { start: Instant::now(), start_ms: engine::now_ms(), compression: args.compression };
    let plan = Plan {
        rings: args.rings,
        ring_size: args.ring_size,
        ring_share: args.ring_share,
        late_fraction: args.late_fraction,
        late_by_ms: LATE_BY_MS,
        ..Plan::ordinary(args.users, 1.1)
    };
    let mut generator = Generator::with_plan(args.seed, plan, clock.start_ms, 0);
    let mut shadow = Shadow::new(Arc::new(def.clone()), partitions);
    let readers = DecisionReaders::start(&engine, &def.decisions_topic(), partitions, clock);
    let mut producer = Producer::new(&engine, partitions, args.batch_records)?;
    let (syncs_before, sync_time_before) = engine::fsync_stats();
    let stop_landing = AtomicBool::new(false);

    // 1. The stream, landed as it goes.
    let (landing, stream_time, main) = std::thread::scope(|scope| -> Result<_> {
        let landing = scope.spawn(|| land_in_background(&data_dir, &lake, &schemas, &stop_landing));
        let bar = bar(
            (args.rate * args.seconds) as u64,
            "stream    {bar:40} {human_pos}/{human_len} payments {per_sec} {msg}",
        );
        let ticker = {
            let (bar, count) = (bar.clone(), readers.count.clone());
            let stop = Arc::new(AtomicBool::new(false));
            let stopping = stop.clone();
            (
                scope.spawn(move || {
                    while !stopping.load(Ordering::Relaxed) {
                        bar.set_message(format!("{} decisions", thousands(count.load(Ordering::Relaxed))));
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }),
                stop,
            )
        };
        let started = Instant::now();
        let streamed = producer.stream(&mut generator, clock, args.rate, args.seconds, &mut shadow, &bar);
        let stream_time = started.elapsed();
        ticker.1.store(true, Ordering::Relaxed);
        let _ = ticker.0.join();
        bar.finish_and_clear();
        streamed?;
        wait_for_query(&engine, partitions)?;
        let landed_started = Instant::now();
        stop_landing.store(true, Ordering::Relaxed);
        let landing = landing.join().map_err(|_| anyhow::anyhow!("lander panicked"))??;
        Ok((
            (landing.0, landing.1, landed_started.elapsed()),
            stream_time,
            std::mem::take(&mut producer.stats),
        ))
    })?;
    let expected_corrections = shadow.expected_corrections();
    let main_decisions = shadow.decisions;

    // 2. Batch over the landed files.
    let scheduler = batch::Scheduler::new(batch::SchedulerConfig::default());
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(100));
    let stages = batch::Progress::default;
    use batch::Job as _;
    spinner.set_message("batch: hourly");
    let started = Instant::now();
    let hourly_job = batch::hourly::HourlyJob {
        input: lake.clone(),
        topic: "payments".into(),
        output: work.join("batch"),
        from_ms: None,
        to_ms: None,
        salts: batch::hourly::SKEW_SALTS_DEFAULT,
    };
    let (hourly, ()) = hourly_job.run(&scheduler, &stages(), &mut |_, _| {})?;
    let hourly_time = started.elapsed();
    spinner.set_message("batch: rings");
    let started = Instant::now();
    let rings_job = batch::rings::RingsJob {
        input: lake.clone(),
        topic: "payments".into(),
        output: work.join("batch"),
        min_ring_size: batch::rings::MIN_RING_SIZE_DEFAULT,
        from_ms: None,
        to_ms: None,
    };
    let (_, rings) = rings_job.run(&scheduler, &stages(), &mut |_, _| {})?;
    let rings_time = started.elapsed();
    spinner.set_message("batch: reconcile");
    let started = Instant::now();
    let reconcile_job = batch::reconcile::ReconcileJob {
        input: lake.clone(),
        output: work.join("batch"),
        query: def.clone(),
    };
    let (_, reconciled) = reconcile_job.run(&scheduler, &stages(), &mut |_, _| {})?;
    let reconcile_time = started.elapsed();
    spinner.finish_and_clear();

    // 3. Feed the rings back as the query's deny-list and stream a little more.
    let deny = engine.deny_list("fraud").context("the fraud query has a deny-list")?;
    let generation = deny.generation();
    let mut ids = Vec::new();
    let mut builder = BatchBuilder::default();
    for ring in &rings {
        for id in ring.users.iter().chain(&ring.cards).chain(&ring.devices) {
            let value =
                serde_json::json!({"ring_id": ring.ring_id, "id": id, "ring_users": ring.users.len()});
            builder.push(engine::now_ms(), Some(id.as_bytes()), Some(value.to_string().as_bytes()));
            ids.push(id.clone());
        }
    }
    engine.append("denylist", 0, builder.finish()).wait()?;
    let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
    while deny.generation() == generation {
        ensure!(Instant::now() < deadline, "the query never loaded the deny-list");
        std::thread::sleep(Duration::from_millis(10));
    }
    shadow.deny = DenySet::from_ids(ids.iter().cloned());
    let denied_before = shadow.denied_offsets;
    let follow_bar = bar(
        (args.rate * args.follow_up_seconds) as u64,
        "follow-up {bar:40} {human_pos}/{human_len} payments {per_sec} (deny-list loaded)",
    );
    let mut follow_generator =
        Generator::with_plan(args.seed + 1, Plan { late_fraction: 0.0, ..plan }, clock.start_ms, 0);
    producer.stream(
        &mut follow_generator,
        clock,
        args.rate,
        args.follow_up_seconds,
        &mut shadow,
        &follow_bar,
    )?;
    follow_bar.finish_and_clear();
    wait_for_query(&engine, partitions)?;
    let follow_up = std::mem::take(&mut producer.stats);
    let (syncs_after, sync_time_after) = engine::fsync_stats();
    let tally = readers.finish()?;
    let windows: u64 = (0..partitions)
        .map(|p| engine.partition_info(&def.agg_topic(), p).wait().map(|i| i.high_watermark as u64))
        .sum::<Result<u64, _>>()?;
    drop(producer);
    Arc::try_unwrap(engine).map_err(|_| anyhow::anyhow!("engine still shared"))?.shutdown()?;

    let latency = tally.latency_us.as_ref().expect("a histogram");
    let mut lag = landing.1.clone();
    lag.sort_by(f64::total_cmp);
    let syncs = syncs_after - syncs_before;
    let report = DemoReport {
        shards,
        partitions,
        events: main.events,
        late_events: main.late,
        ring_events: main.ring,
        stream_time,
        appended_bytes: main.bytes + follow_up.bytes,
        event_time_span: stream_time.mul_f64(args.compression),
        decisions: tally.by_rule.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        windows,
        latency_us: (
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.max(),
            latency.len(),
        ),
        fsyncs: (
            syncs,
            (sync_time_after - sync_time_before).checked_div(syncs.max(1) as u32).unwrap_or_default(),
        ),
        landed: (landing.0.records, landing.0.files, landing.0.bytes, landing.2),
        landing_lag_s: (lag.get(lag.len() / 2).copied().unwrap_or(0.0), lag.last().copied().unwrap_or(0.0)),
        hourly: (hourly.rows, hourly.groups, hourly_time),
        rings: (rings.len(), args.rings, rings_time),
        reconcile: (
            reconciled.compared,
            reconciled.changed_by_late + reconciled.missing,
            reconciled.late_events,
            reconcile_time,
        ),
        expected_corrections,
        deny_ids: ids.len(),
        follow_up: (follow_up.events, follow_up.ring, tally.denied_offsets.len() as u64),
        sample: tally.sample.clone(),
    };
    print_report(&report, args, &data_dir, args.data_dir.is_none());

    let decisions: u64 = report.decisions.iter().map(|(_, n)| n).sum();
    ensure!(
        decisions > 0 && decisions == shadow.decisions,
        "decisions {decisions}, the shadow operator made {}",
        shadow.decisions
    );
    ensure!(main_decisions > 0, "the main stream made no decision");
    let planted: BTreeSet<Vec<String>> = (0..args.rings)
        .map(|r| {
            (0..args.ring_size).map(|j| format!("u{}", RING_USER_BASE + r * args.ring_size + j)).collect()
        })
        .collect();
    let found: BTreeSet<Vec<String>> = rings.iter().map(|r| r.users.clone()).collect();
    ensure!(found == planted, "rings found {found:?}, planted {planted:?}");
    ensure!(
        report.reconcile.1 == expected_corrections && reconciled.mismatched == 0,
        "reconcile corrected {} windows ({} mismatched); late events changed {expected_corrections}",
        report.reconcile.1,
        reconciled.mismatched
    );
    ensure!(
        report.follow_up.2 == shadow.denied_offsets - denied_before && report.follow_up.2 > 0,
        "{} ring payments denied in the follow-up, the shadow denied {}",
        report.follow_up.2,
        shadow.denied_offsets - denied_before
    );
    ensure!(report.landed.0 >= main.events, "landed {} of {} payments", report.landed.0, main.events);
    ensure!(
        report.hourly.0 == main.events,
        "hourly aggregated {} of {} payments",
        report.hourly.0,
        main.events
    );
    Ok(report)
}

fn print_report(report: &DemoReport, args: &DemoArgs, data_dir: &Path, temporary: bool) {
    let seconds = report.stream_time.as_secs_f64();
    println!("corelog demo report");
    println!(
        "  engine      {} shards, {} partitions, flush={}, query fraud: 10 s windows, 2 s lateness, 4 rules",
        report.shards, report.partitions, args.flush
    );
    println!(
        "  stream      {} payments in {seconds:.1} s ({:.0}/s offered open-loop, {:.1} min of event time at {}x), {:.1} MB appended",
        thousands(report.events),
        args.rate,
        report.event_time_span.as_secs_f64() / 60.0,
        args.compression,
        report.appended_bytes as f64 / 1e6
    );
    println!(
        "  planted     {} rings of {} users ({} payments), {} late payments ({} s of event time late)",
        args.rings,
        args.ring_size,
        thousands(report.ring_events),
        thousands(report.late_events),
        LATE_BY_MS / 1000
    );
    let decisions: u64 = report.decisions.iter().map(|(_, n)| n).sum();
    let by_rule: Vec<String> =
        report.decisions.iter().map(|(rule, n)| format!("{rule} {}", thousands(*n))).collect();
    println!(
        "  decisions   {} ({}); {} window results",
        thousands(decisions),
        by_rule.join(", "),
        thousands(report.windows)
    );
    let (p50, p99, max, samples) = report.latency_us;
    println!(
        "  latency     event creation -> decision readable: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} decisions)",
        p50 as f64 / 1e3,
        p99 as f64 / 1e3,
        max as f64 / 1e3,
        thousands(samples)
    );
    println!(
        "  fdatasync   {} group commits, mean {:.2} ms",
        thousands(report.fsyncs.0),
        report.fsyncs.1.as_secs_f64() * 1e3
    );
    let (records, files, bytes, catch_up) = report.landed;
    println!(
        "  landed      {} records (payments, fraud.agg) to {} Parquet files ({:.1} MB), lag p50 {:.1} s, max {:.1} s (bound {:.1} s: max-lag + poll), caught up {:.2} s after the stream",
        thousands(records),
        files,
        bytes as f64 / 1e6,
        report.landing_lag_s.0,
        report.landing_lag_s.1,
        (LANDING_LAG_MS_MAX + LANDING_POLL_MS) as f64 / 1000.0,
        catch_up.as_secs_f64()
    );
    let (rows, groups, hourly) = report.hourly;
    println!(
        "  hourly      {} payments -> {} merchant/country/hour groups in {:.2} s",
        thousands(rows),
        thousands(groups as u64),
        hourly.as_secs_f64()
    );
    let (found, planted, rings) = report.rings;
    println!("  rings       {found} fraud rings found of {planted} planted in {:.2} s", rings.as_secs_f64());
    let (compared, corrected, late, reconcile) = report.reconcile;
    println!(
        "  reconcile   {} closed windows compared, {} corrected by batch (late events: {} event-window contributions the stream dropped) in {:.2} s",
        thousands(compared as u64),
        thousands(corrected as u64),
        thousands(late as u64),
        reconcile.as_secs_f64()
    );
    let (follow, ring, denied) = report.follow_up;
    println!(
        "  feedback    {} deny-list ids loaded by the running query; follow-up {} payments, {} from ring members, {} denied",
        report.deny_ids,
        thousands(follow),
        thousands(ring),
        thousands(denied)
    );
    println!("  decision    {}", report.sample);
    println!("  data dir    {}{}", data_dir.display(), if temporary { " (removed)" } else { "" });
}
