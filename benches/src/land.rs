//! `corelog-bench land`: the lander's rate and landing lag.
//!
//! * **Throughput**: generated payments (JSON, the repository's `schemas/payments.toml`)
//!   are appended to an embedded engine, then one lander lands them all (decode,
//!   extract typed columns, zstd Parquet, fsynced puts). Reference in the same run:
//!   DuckDB (Python package, `target/py` from `./ci.sh`, or `CORELOG_PYTHON`) reading
//!   the same values as NDJSON and writing zstd Parquet with the same typed columns —
//!   a vectorised, multi-threaded columnar writer doing the same work.
//! * **Landing lag**: payments appended at a fixed rate while a lander runs with
//!   `max_lag`; a watcher polls the manifests, and each event's lag is the time from
//!   its append to the manifest that covers it. Reference: the configured bound
//!   (`max_lag + poll`); a ratio below 1 means the bound holds.

use crate::report::Figure;
use anyhow::{bail, Context, Result};
use corelog_tools::payments::{partition_for, Generator};
use engine::batch::BatchBuilder;
use engine::{Engine, EngineConfig};
use lander::{Lander, LanderConfig, Output, SegmentSource};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 4;
const BATCH_EVENTS: usize = 500;
const LAG_MAX_MS: u64 = 1000;
const POLL_MS: u64 = 50;

/// Flags of `corelog-bench land`.
#[derive(Debug, Clone, clap::Args)]
pub struct LandArgs {
    /// Finish in under a minute (fewer events, shorter lag run).
    #[arg(long)]
    pub quick: bool,
}

pub(crate) fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

pub(crate) fn python() -> PathBuf {
    std::env::var_os("CORELOG_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python"))
}

fn open_engine(dir: &Path) -> Result<Engine> {
    let mut config = EngineConfig::new(dir);
    config.log.retention_ms = None;
    let engine = Engine::open(config)?;
    engine.create_topic("payments", PARTITIONS)?;
    Ok(engine)
}

/// Appends `events` payments (optionally paced at `rate` events/s) and returns the
/// value bytes and, per partition, (next offset, append time) after each batch.
fn append(
    engine: &Engine,
    events: u64,
    rate: Option<u64>,
    mut on_batch: impl FnMut(u32, i64, Instant),
    mut on_value: impl FnMut(&[u8]),
) -> Result<u64> {
    let mut generator = Generator::new(7, 100_000, 1.1, engine::now_ms(), 50);
    let mut builders: Vec<(BatchBuilder, usize)> =
        (0..PARTITIONS).map(|_| (BatchBuilder::default(), 0)).collect();
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut bytes = 0u64;
    let start = Instant::now();
    for n in 0..events {
        let mut payment = generator.next_payment();
        payment.ts = engine::now_ms();
        key.clear();
        value.clear();
        payment.key(&mut key);
        payment.json(&mut value);
        bytes += value.len() as u64;
        on_value(&value);
        let p = partition_for(&key, PARTITIONS);
        let (builder, count) = &mut builders[p as usize];
        builder.push(payment.ts, Some(&key), Some(&value));
        *count += 1;
        if *count == BATCH_EVENTS || n == events - 1 {
            for (partition, (builder, count)) in builders.iter_mut().enumerate() {
                if *count == 0 {
                    continue;
                }
                let ack = engine.append("payments", partition as u32, builder.finish()).wait()?;
                on_batch(partition as u32, ack.base_offset + *count as i64, Instant::now());
                *builder = BatchBuilder::default();
                *count = 0;
            }
            if let Some(rate) = rate {
                let due = start + Duration::from_secs_f64((n + 1) as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
    Ok(bytes)
}

fn duckdb_reference(ndjson: &Path, out: &Path) -> Result<f64> {
    let script = r#"
import duckdb, sys, time
src, dst = sys.argv[1], sys.argv[2]
con = duckdb.connect()
t = time.perf_counter()
con.execute(f"""copy (select * from read_json('{src}', format='newline_delimited', columns={{
  'event_id':'varchar','ts':'bigint','user_id':'varchar','card_id':'varchar','device_id':'varchar',
  'merchant_id':'varchar','amount_cents':'bigint','currency':'varchar','country':'varchar'}}))
  to '{dst}' (format parquet, compression zstd)""")
print(time.perf_counter() - t)
"#;
    let output = Command::new(python())
        .args(["-c", script, ndjson.to_str().context("path")?, out.to_str().context("path")?])
        .output()
        .context("running python with duckdb (run ./ci.sh to create target/py)")?;
    if !output.status.success() {
        bail!("duckdb reference failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

fn throughput(args: &LandArgs, dir: &Path, figures: &mut Vec<Figure>) -> Result<()> {
    let events: u64 = if args.quick { 400_000 } else { 2_000_000 };
    let data = dir.join("data");
    let engine = open_engine(&data)?;
    let ndjson_path = dir.join("events.ndjson");
    let mut ndjson = std::io::BufWriter::new(std::fs::File::create(&ndjson_path)?);
    let bytes = append(
        &engine,
        events,
        None,
        |_, _, _| {},
        |value| {
            use std::io::Write;
            let _ = ndjson.write_all(value).and_then(|()| ndjson.write_all(b"\n"));
        },
    )?;
    drop(ndjson);
    engine.shutdown()?;
    let config = LanderConfig { schemas_dir: Some(schemas_dir()), ..LanderConfig::default() };
    let out = dir.join("out");
    let mut lander =
        Lander::new(SegmentSource::new(&data)?, Output::open(out.to_str().context("path")?)?, config);
    let start = Instant::now();
    while !lander.step(false)? {}
    lander.flush()?;
    let seconds = start.elapsed().as_secs_f64();
    let landed = lander.progress().records;
    if landed != events {
        bail!("landed {landed} of {events} events");
    }
    let reference = match duckdb_reference(&ndjson_path, &dir.join("duckdb.parquet")) {
        Ok(seconds) => Some(seconds),
        Err(error) => {
            eprintln!("note: {error:#}; figures print without ratios");
            None
        }
    };
    let mut emit = |name: &str, value: f64, unit: &str, reference: Option<f64>| {
        let figure = Figure {
            scenario: "land".into(),
            name: name.into(),
            value,
            unit: unit.into(),
            reference: reference.map(|r| ("duckdb-copy-parquet".to_string(), r)),
        };
        println!("{}", figure.line());
        figures.push(figure);
    };
    eprintln!(
        "landed {events} events ({:.0} MB of JSON) in {seconds:.2} s into {} files",
        bytes as f64 / 1e6,
        lander.progress().files
    );
    emit("events_per_s", events as f64 / seconds, "ev/s", reference.map(|r| events as f64 / r));
    emit("json_mb_per_s", bytes as f64 / 1e6 / seconds, "MB/s", reference.map(|r| bytes as f64 / 1e6 / r));
    Ok(())
}

fn lag(args: &LandArgs, dir: &Path, figures: &mut Vec<Figure>) -> Result<()> {
    let rate: u64 = 50_000;
    let seconds: u64 = if args.quick { 8 } else { 30 };
    let data = dir.join("lag-data");
    let out = dir.join("lag-out");
    let engine = open_engine(&data)?;
    let stop = AtomicBool::new(false);
    let config =
        LanderConfig { schemas_dir: Some(schemas_dir()), max_lag_ms: LAG_MAX_MS, ..LanderConfig::default() };
    let mut lander =
        Lander::new(SegmentSource::new(&data)?, Output::open(out.to_str().context("path")?)?, config);
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    std::thread::scope(|scope| -> Result<()> {
        let landing = scope.spawn(|| -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                if lander.step(false)? {
                    std::thread::sleep(Duration::from_millis(POLL_MS));
                }
            }
            lander.flush()?;
            Ok(())
        });
        // (partition, next offset after the batch, append time), in append order.
        let mut appended: Vec<(u32, i64, Instant)> = Vec::new();
        append(&engine, rate * seconds, Some(rate), |p, next, at| appended.push((p, next, at)), |_| {})?;
        std::thread::sleep(Duration::from_millis(LAG_MAX_MS + 2 * POLL_MS));
        stop.store(true, Ordering::Relaxed);
        landing.join().map_err(|_| anyhow::anyhow!("lander thread panicked"))??;
        // An event's lag: the modification time of the part file holding its batch's
        // last offset (written just before the manifest that covers it) minus the
        // batch's append time.
        let mut covered: Vec<Vec<(i64, std::time::SystemTime)>> = vec![Vec::new(); PARTITIONS as usize];
        let mut dirs = vec![out.join("payments")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir)?.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if let Some((p, _, last)) =
                    lander::parse_part_name(&entry.file_name().to_string_lossy())
                {
                    covered[p as usize].push((last, entry.metadata()?.modified()?));
                }
            }
        }
        for files in &mut covered {
            files.sort();
        }
        let now_instant = Instant::now();
        let now_system = std::time::SystemTime::now();
        for (p, next, appended_at) in appended {
            let files = &covered[p as usize];
            let Some((_, landed)) = files.get(files.partition_point(|(last, _)| *last < next - 1)) else {
                bail!(
                    "partition {p}: offset {} never landed (landed through {:?}, {} files)",
                    next - 1,
                    files.last().map(|f| f.0),
                    files.len()
                );
            };
            let appended_system = now_system - now_instant.duration_since(appended_at);
            let lag = landed.duration_since(appended_system).unwrap_or_default();
            histogram.record((lag.as_millis() as u64).max(1))?;
        }
        Ok(())
    })?;
    engine.shutdown()?;
    let bound = (LAG_MAX_MS + POLL_MS) as f64;
    for (name, quantile) in [("lag_p50", 0.5), ("lag_p99", 0.99)] {
        let figure = Figure {
            scenario: "land-lag-50k".into(),
            name: name.into(),
            value: histogram.value_at_quantile(quantile) as f64,
            unit: "ms".into(),
            reference: Some(("max-lag+poll".into(), bound)),
        };
        println!("{}", figure.line());
        figures.push(figure);
    }
    Ok(())
}

/// Runs the scenario.
pub fn bench(args: &LandArgs) -> Result<Vec<Figure>> {
    let dir = tempfile::Builder::new().prefix("corelog-bench-land").tempdir_in(crate::report::bench_dir())?;
    let mut figures = Vec::new();
    throughput(args, dir.path(), &mut figures)?;
    lag(args, dir.path(), &mut figures)?;
    Ok(figures)
}
