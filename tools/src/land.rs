//! `corelog land`: runs a [`lander::Lander`] over an engine data directory until
//! SIGTERM/SIGINT (or, with `--once`, until everything available has landed), with a
//! progress line and Prometheus metrics.

use crate::serve::parse_duration_ms;
use anyhow::{bail, Context, Result};
use lander::{KafkaSource, Lander, LanderConfig, Output, Progress, SegmentSource, Source};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the progress line and lag figures refresh.
pub const PROGRESS_INTERVAL_MS: u64 = 500;

/// Flags of `corelog land` (DESIGN.md's CLI contract).
#[derive(Debug, Clone, clap::Args)]
pub struct LandArgs {
    /// The engine's data directory (read-only; only the retention registration is written).
    #[arg(long, required_unless_present = "brokers", conflicts_with = "brokers")]
    pub data_dir: Option<PathBuf>,
    /// Land from a Kafka-protocol broker instead of segment files (HOST:PORT,...).
    #[arg(long)]
    pub brokers: Option<String>,
    /// TLS and SASL for `--brokers`.
    #[command(flatten)]
    pub security: crate::client::ClientSecurity,
    /// Output: a directory, a file:// URL or an object-store URL.
    #[arg(long)]
    pub out: String,
    /// Topics to land, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub topics: Option<Vec<String>>,
    /// Directory of `<topic>.toml` schemas declaring typed columns and event time.
    #[arg(long)]
    pub schemas: Option<PathBuf>,
    /// Land everything available now, then exit.
    #[arg(long)]
    pub once: bool,
    /// Longest a record waits before it lands (e.g. 60s, 500ms).
    #[arg(long, default_value = "60s")]
    pub max_lag: String,
    /// Close a part file at this many bytes.
    #[arg(long, default_value_t = lander::FILE_BYTES_MAX_DEFAULT)]
    pub file_bytes: usize,
    /// Wait between polls once caught up (bounds the added latency).
    #[arg(long, default_value = "100ms")]
    pub poll: String,
    /// Serve Prometheus metrics (text format) at http://ADDR/metrics.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Threads landing partitions in parallel (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Do not register landed offsets for `corelog serve --retain-until-landed`.
    #[arg(long)]
    pub no_register: bool,
}

/// Runs the lander; returns its final totals.
pub fn run(args: &LandArgs) -> Result<Progress> {
    let max_lag_ms = parse_duration_ms(&args.max_lag)?;
    let poll_ms = parse_duration_ms(&args.poll)?;
    if max_lag_ms <= 0 || poll_ms <= 0 || args.file_bytes == 0 || args.workers == Some(0) {
        bail!("--max-lag, --poll, --file-bytes and --workers must be positive");
    }
    if let Some(address) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .install()
            .with_context(|| format!("serving metrics on {address}"))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let output = Output::open(&args.out)?;
    let mut config = LanderConfig {
        topics: args.topics.clone(),
        schemas_dir: args.schemas.clone(),
        max_lag_ms: max_lag_ms as u64,
        file_bytes_max: args.file_bytes,
        registration: None,
        workers: args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let poll = Duration::from_millis(poll_ms as u64);
    let progress = match (&args.data_dir, &args.brokers) {
        (Some(data_dir), None) => {
            let source = SegmentSource::new(data_dir).context("opening the data directory")?;
            if !args.no_register {
                config.registration = Some((data_dir.clone(), lander::lander_id(&args.out)));
            }
            let mut lander = Lander::new(source, output, config);
            run_until(&mut lander, args.once, poll, &stop)?;
            lander.progress().clone()
        }
        (None, Some(brokers)) => {
            let settings = args.security.settings()?;
            let source =
                KafkaSource::new(brokers, &settings).with_context(|| format!("connecting to {brokers}"))?;
            let mut lander = Lander::new(source, output, config);
            run_until(&mut lander, args.once, poll, &stop)?;
            lander.progress().clone()
        }
        _ => bail!("give exactly one of --data-dir and --brokers"),
    };
    eprintln!(
        "corelog land: landed {} records in {} files ({:.1} MB) from {} partitions; {} bad records, {} offsets skipped, {} batches quarantined, {} partition errors, {} partitions of re-created topics set aside",
        progress.records,
        progress.files,
        progress.bytes as f64 / 1e6,
        progress.partitions,
        progress.bad_records,
        progress.skipped_offsets,
        progress.quarantined_batches,
        progress.partition_errors,
        progress.replaced_partitions
    );
    Ok(progress)
}

/// Steps `lander` until it is caught up (`once`) or `stop` is set, then commits what it
/// read. Shows a progress line on a terminal.
pub fn run_until<S: Source + Send>(
    lander: &mut Lander<S>,
    once: bool,
    poll: Duration,
    stop: &AtomicBool,
) -> Result<()> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} land {elapsed} {msg}")
            .expect("valid progress template"),
    );
    let mut last_progress = Instant::now() - Duration::from_secs(1);
    loop {
        let caught_up = lander.step(false)?;
        if last_progress.elapsed() >= Duration::from_millis(PROGRESS_INTERVAL_MS) {
            lander.update_lag();
            let p = lander.progress();
            bar.set_message(format!(
                "{} records, {} files, lag {} offsets / {:.1} s, {} bad",
                p.records, p.files, p.lag_offsets, p.lag_seconds, p.bad_records
            ));
            bar.tick();
            last_progress = Instant::now();
        }
        if stop.load(Ordering::Relaxed) || (once && caught_up) {
            break;
        }
        if caught_up {
            std::thread::sleep(poll);
        }
    }
    lander.flush()?;
    lander.update_lag();
    bar.finish_and_clear();
    let failed = lander.failed_partitions();
    if once && !failed.is_empty() {
        let lines: Vec<String> = failed.iter().map(|(t, p, why)| format!("{t}-{p}: {why}")).collect();
        anyhow::bail!("{} partitions could not be landed:\n{}", failed.len(), lines.join("\n"));
    }
    Ok(())
}
