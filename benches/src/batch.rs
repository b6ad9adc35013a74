//! `corelog-bench batch`: the `hourly` job against DuckDB, and the scheduler under a
//! straggler and a hot key.
//!
//! Payments (20 million, 1 million with `--quick`; 24 hours of event time, 8
//! partitions) are appended to an embedded engine
//! and landed with the repository's schema. Then, in the same run:
//! Timed figures other than the straggler run are the median of three runs.
//! * `batch-hourly`: rows/s of `hourly` on all cores against DuckDB (Python package
//!   from `target/py`) running the same aggregation in SQL over the same files and
//!   writing it to Parquet (`quantile_disc` for the percentiles);
//! * `batch-straggler`: `hourly` with one injected slow worker, with speculation,
//!   against the same run without speculation (ratio < 1: speculation helps), and
//!   against the clean run (issue target: ≤ 1.3);
//! * `batch-skew`: the same data plus a hot key (10% of all rows in one merchant,
//!   country and hour), with salting against without, and against the uniform run
//!   scaled to the same row count (issue target: ≤ 1.25).

use crate::report::Figure;
use anyhow::{bail, Context, Result};
use batch::hourly::{HourlyJob, SKEW_SALTS_DEFAULT, STAGES_MAX};
use batch::{Injection, Scheduler, SchedulerConfig, Speculation, StageProgress};
use corelog_tools::payments::{partition_for, Generator};
use engine::batch::BatchBuilder;
use engine::{Engine, EngineConfig};
use lander::{Lander, LanderConfig, Output, SegmentSource};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const PARTITIONS: u32 = 8;
const START_MS: i64 = 1_764_000_000_000;

/// Flags of `corelog-bench batch`.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// Finish in under a minute (1 million rows instead of 20 million).
    #[arg(long)]
    pub quick: bool,
}

/// Appends `events` payments (and `hot` more for one key) and lands them to `out`.
fn landed(dir: &Path, events: u64, hot: u64) -> Result<std::path::PathBuf> {
    let data = dir.join("data");
    let mut config = EngineConfig::new(&data);
    config.log.retention_ms = None;
    let engine = Engine::open(config)?;
    engine.create_topic("payments", PARTITIONS)?;
    let mut generator = Generator::new(3, 200_000, 1.1, START_MS, 24 * 3_600_000_000 / events);
    let mut batches: Vec<BatchBuilder> = (0..PARTITIONS).map(|_| BatchBuilder::default()).collect();
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for n in 0..events + hot {
        key.clear();
        value.clear();
        let mut payment = generator.next_payment();
        payment.key(&mut key);
        if n >= events {
            payment.merchant = 999_999;
            payment.country = 0;
            payment.ts = START_MS + (n % 3_600_000) as i64;
        }
        payment.json(&mut value);
        let p = partition_for(&key, PARTITIONS) as usize;
        batches[p].push(payment.ts, Some(&key), Some(&value));
        if batches[p].record_count() == 1000 {
            engine.append("payments", p as u32, batches[p].finish()).wait()?;
            batches[p] = BatchBuilder::default();
        }
    }
    for (p, batch) in batches.iter_mut().enumerate() {
        if batch.record_count() > 0 {
            engine.append("payments", p as u32, batch.finish()).wait()?;
        }
    }
    engine.shutdown()?;
    let out = dir.join("landed");
    let config = LanderConfig { schemas_dir: Some(crate::land::schemas_dir()), ..LanderConfig::default() };
    let mut lander =
        Lander::new(SegmentSource::new(&data)?, Output::open(out.to_str().context("path")?)?, config);
    while !lander.step(false)? {}
    lander.flush()?;
    Ok(out)
}

fn hourly(input: &Path, output: &Path, speculation: bool, slow: bool, salts: usize) -> Result<(f64, u64)> {
    let scheduler = Scheduler::new(SchedulerConfig {
        speculation: speculation.then(Speculation::default),
        inject: Injection { slow_worker: slow.then_some(0), ..Injection::default() },
        ..SchedulerConfig::default()
    });
    let job = HourlyJob {
        input: input.to_path_buf(),
        topic: "payments".into(),
        output: output.to_path_buf(),
        from_ms: None,
        to_ms: None,
        salts,
    };
    let progress: [StageProgress; STAGES_MAX] = Default::default();
    let start = Instant::now();
    let (report, ()) = batch::Job::run(&job, &scheduler, &progress, &mut |_, _| {})?;
    let seconds = start.elapsed().as_secs_f64();
    let speculated: u64 = report.stages.iter().map(|s| s.speculation_won).sum();
    eprintln!(
        "hourly: {} rows in {seconds:.2} s (speculation {speculation}, slow worker {slow}, salts {salts}): {} hot keys, {speculated} speculative wins",
        report.rows,
        report.hot_keys.len()
    );
    Ok((seconds, report.rows))
}

fn duckdb_hourly(input: &Path, output: &Path) -> Result<f64> {
    let script = r#"
import duckdb, sys, time
src, dst = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
t = time.perf_counter()
con.execute(f"""copy (
  select epoch_ms(coalesce(ts, "timestamp")) // 3600000 as hour, merchant_id, country, count(*) as n,
         sum(amount_cents) as s, min(amount_cents) as lo, max(amount_cents) as hi,
         quantile_disc(amount_cents, 0.5) as p50, quantile_disc(amount_cents, 0.99) as p99
  from read_parquet('{src}/payments/*/*/*.parquet')
  where merchant_id is not null and country is not null and amount_cents is not null
  group by all) to '{dst}' (format parquet, compression zstd)""")
print(time.perf_counter() - t)
"#;
    let output = Command::new(crate::land::python())
        .args(["-c", script, input.to_str().context("path")?, output.to_str().context("path")?])
        .output()
        .context("running python with duckdb (run ./ci.sh to create target/py)")?;
    if !output.status.success() {
        bail!("duckdb reference failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let seconds = stdout.lines().last().unwrap_or_default().trim();
    seconds.parse().with_context(|| format!("duckdb printed {stdout:?}"))
}

/// Median seconds of three DuckDB runs.
fn duckdb_median(input: &Path, output: &Path) -> Result<f64> {
    let mut runs =
        [duckdb_hourly(input, output)?, duckdb_hourly(input, output)?, duckdb_hourly(input, output)?];
    runs.sort_by(f64::total_cmp);
    Ok(runs[1])
}

/// Median seconds of three runs of `hourly` (rows from the last).
fn hourly_median(
    input: &Path,
    output: &Path,
    speculation: bool,
    slow: bool,
    salts: usize,
) -> Result<(f64, u64)> {
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(hourly(input, output, speculation, slow, salts)?);
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(runs[1])
}

/// Runs the scenario.
pub fn bench(args: &BatchArgs) -> Result<Vec<Figure>> {
    let dir = tempfile::Builder::new().prefix("corelog-bench-batch").tempdir_in(crate::report::bench_dir())?;
    let events: u64 = if args.quick { 1_000_000 } else { 20_000_000 };
    let mut figures = Vec::new();
    let mut emit = |scenario: &str, name: &str, value: f64, unit: &str, reference: Option<(&str, f64)>| {
        let figure = Figure {
            scenario: scenario.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            reference: reference.map(|(n, v)| (n.to_string(), v)),
        };
        println!("{}", figure.line());
        figures.push(figure);
    };
    let plain = landed(&dir.path().join("plain"), events, 0)?;
    let (seconds, rows) =
        hourly_median(&plain, &dir.path().join("out-hourly"), true, false, SKEW_SALTS_DEFAULT)?;
    let reference = match duckdb_median(&plain, &dir.path().join("duckdb.parquet")) {
        Ok(s) => Some(("duckdb-sql", rows as f64 / s / 1e6)),
        Err(error) => {
            eprintln!("note: {error:#}; figures print without ratios");
            None
        }
    };
    emit("batch-hourly", "rows_per_s", rows as f64 / seconds / 1e6, "M/s", reference);

    let (without, _) = hourly(&plain, &dir.path().join("out-slow-nospec"), false, true, SKEW_SALTS_DEFAULT)?;
    let (with, _) = hourly(&plain, &dir.path().join("out-slow-spec"), true, true, SKEW_SALTS_DEFAULT)?;
    emit("batch-straggler", "seconds", with, "s", Some(("no-speculation", without)));
    emit("batch-straggler", "vs_clean", with, "s", Some(("clean-run", seconds)));

    let skewed = landed(&dir.path().join("skewed"), events, events / 10)?;
    let (unsalted, _) = hourly_median(&skewed, &dir.path().join("out-skew-off"), true, false, 0)?;
    let (salted, _) =
        hourly_median(&skewed, &dir.path().join("out-skew-on"), true, false, SKEW_SALTS_DEFAULT)?;
    emit("batch-skew", "seconds", salted, "s", Some(("no-salting", unsalted)));
    // The skewed data has 10% more rows; compare time per row with the uniform run.
    let per_row = salted * events as f64 / (events + events / 10) as f64;
    emit("batch-skew", "vs_uniform_per_row", per_row, "s", Some(("uniform", seconds)));
    Ok(figures)
}
