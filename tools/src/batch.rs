//! `corelog batch JOB`: runs a batch job over landed Parquet with progress bars per
//! stage and a summary table.

use anyhow::{bail, Context, Result};
use batch::hourly::HourlyJob;
use batch::{Injection, Scheduler, SchedulerConfig, Speculation, StageProgress};
use batch::{Job as _, JobReport};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Jobs this build runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Job {
    /// Per merchant and country per event-time hour: count, sum, min, max, p50, p99 of amount_cents.
    Hourly,
    /// Rollup of `hourly` output (--input is an hourly --output) to days.
    Daily,
    /// Fraud rings: connected components of the user–card–device graph, as a deny-list.
    Rings,
    /// Recompute a stream query's windows (--query) and correct what late events changed.
    Reconcile,
}

/// on|off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Flags of `corelog batch` (DESIGN.md's CLI contract).
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// The job.
    pub job: Job,
    /// The lander's output: a directory or an object-store URL (`s3://bucket/prefix`,
    /// configured from `AWS_*`) holding `<topic>/dt=…/hr=…`.
    #[arg(long)]
    pub input: PathBuf,
    /// Where the job writes (`OUTPUT/<job>/dt=…`): a directory or an object-store URL.
    #[arg(long)]
    pub output: PathBuf,
    /// Topic to read.
    #[arg(long, default_value = "payments")]
    pub topic: String,
    /// Worker threads (default: cores + 1, so one stalled worker never idles a core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Speculative copies of straggling tasks.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub speculation: Switch,
    /// Speculation: straggler past this multiple of the median task time.
    #[arg(long, default_value_t = 3.0)]
    pub speculation_multiplier: f64,
    /// Speculation: fraction of tasks finished before it starts.
    #[arg(long, default_value_t = 0.9)]
    pub speculation_quantile: f64,
    /// Speculation: never for tasks that ran less than this (ms).
    #[arg(long, default_value_t = 100)]
    pub speculation_min_runtime_ms: u64,
    /// Retries of a failed task before the job fails.
    #[arg(long, default_value_t = batch::scheduler::RETRIES_MAX_DEFAULT)]
    pub retries: u32,
    /// Only event times at or after this (ms since the epoch).
    #[arg(long)]
    pub from: Option<i64>,
    /// Only event times before this (ms since the epoch).
    #[arg(long)]
    pub to: Option<i64>,
    /// FAILURE INJECTION (tests, benches): make this worker slow.
    #[arg(long)]
    pub inject_slow_worker: Option<usize>,
    /// FAILURE INJECTION (tests, benches): fail this fraction of task attempts.
    #[arg(long, default_value_t = 0.0)]
    pub inject_task_failure_rate: f64,
    /// Seed of injected failures.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// hourly: salt hot keys (share above 5× the median key) over `--skew-salts` sub-keys.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub skew: Switch,
    /// hourly: sub-keys per hot key.
    #[arg(long, default_value_t = batch::hourly::SKEW_SALTS_DEFAULT)]
    pub skew_salts: usize,
    /// rings: also produce the deny-list to `--deny-topic` on this broker (HOST:PORT).
    #[arg(long)]
    pub brokers: Option<String>,
    /// rings: topic the deny-list is produced to with `--brokers`.
    #[arg(long, default_value = "denylist")]
    pub deny_topic: String,
    /// rings: TLS and SASL for `--brokers`.
    #[command(flatten)]
    pub security: crate::client::ClientSecurity,
    /// rings: smallest component reported, in users.
    #[arg(long, default_value_t = batch::rings::MIN_RING_SIZE_DEFAULT)]
    pub min_ring_size: usize,
    /// reconcile: the stream query's definition (its source and `<name>.agg` must be landed in --input).
    #[arg(long)]
    pub query: Option<PathBuf>,
}

fn scheduler(args: &BatchArgs) -> Result<Scheduler> {
    let workers = args.workers.unwrap_or_else(batch::scheduler::default_workers);
    if workers == 0 {
        bail!("--workers must be positive");
    }
    if !(0.0..1.0).contains(&args.inject_task_failure_rate) {
        bail!("--inject-task-failure-rate must be in [0, 1)");
    }
    if args.inject_slow_worker.is_some_and(|w| w >= workers) {
        bail!("--inject-slow-worker must name one of the {workers} workers");
    }
    if !(args.speculation_quantile > 0.0
        && args.speculation_quantile <= 1.0
        && args.speculation_multiplier >= 1.0)
    {
        bail!("--speculation-quantile must be in (0, 1] and --speculation-multiplier at least 1");
    }
    Ok(Scheduler::new(SchedulerConfig {
        workers,
        speculation: (args.speculation == Switch::On).then_some(Speculation {
            multiplier: args.speculation_multiplier,
            quantile: args.speculation_quantile,
            min_runtime_ms: args.speculation_min_runtime_ms,
        }),
        retries_max: args.retries,
        inject: Injection {
            slow_worker: args.inject_slow_worker,
            task_failure_rate: args.inject_task_failure_rate,
            seed: args.seed,
        },
    }))
}

fn is_remote(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.contains("://") && !s.starts_with("file://"))
}

/// Copies every Parquet object under `url` (not the lander's `_landed/` manifests or
/// staging files) into `dir`, keeping relative paths.
fn download(url: &str, dir: &Path) -> Result<usize> {
    let store = lander::Output::open(url).with_context(|| format!("opening {url}"))?;
    let mut copied = 0;
    for relative in store.list("")? {
        let hidden = relative.split('/').any(|part| part.starts_with('_') || part.starts_with('.'));
        if hidden || !relative.ends_with(".parquet") {
            continue;
        }
        let bytes = store.get(&relative)?.with_context(|| format!("{url}/{relative} vanished"))?;
        let path = dir.join(&relative);
        std::fs::create_dir_all(path.parent().expect("a file under dir"))?;
        std::fs::write(&path, &bytes)?;
        copied += 1;
    }
    Ok(copied)
}

/// Puts every file under `dir` to `url` at the same relative path (each put atomic).
fn upload(dir: &Path, url: &str) -> Result<usize> {
    let store = lander::Output::open(url).with_context(|| format!("opening {url}"))?;
    let files = batch::morsel::parquet_files(dir)?;
    for file in &files {
        let relative = file.strip_prefix(dir).expect("under dir").to_string_lossy().replace('\\', "/");
        store.put(&relative, bytes::Bytes::from(std::fs::read(file)?))?;
    }
    Ok(files.len())
}

/// Runs the job, showing progress on a terminal; returns its report. An `s3://…` (or
/// other object-store) `--input` is copied to a local cache first, an object-store
/// `--output` is written locally and then put object by object.
pub fn run(args: &BatchArgs) -> Result<JobReport> {
    if !is_remote(&args.input) && !is_remote(&args.output) {
        return run_local(args);
    }
    let cache = tempfile::tempdir().context("creating a local cache directory")?;
    let mut local = args.clone();
    if is_remote(&args.input) {
        local.input = cache.path().join("input");
        let url = args.input.to_string_lossy();
        let copied = download(&url, &local.input)?;
        eprintln!("corelog batch: {copied} Parquet objects copied from {url}");
    }
    if is_remote(&args.output) {
        local.output = cache.path().join("output");
    }
    let report = run_local(&local)?;
    if is_remote(&args.output) {
        let url = args.output.to_string_lossy();
        let put = upload(&local.output, &url)?;
        eprintln!("corelog batch: {put} files put to {url}");
    }
    Ok(report)
}

fn run_local(args: &BatchArgs) -> Result<JobReport> {
    match args.job {
        Job::Hourly | Job::Rings if !args.input.join(&args.topic).is_dir() => {
            bail!("{}: no landed topic {:?} (run corelog land first)", args.input.display(), args.topic)
        }
        Job::Daily if !args.input.join("hourly").is_dir() => {
            bail!("{}: no hourly/ directory (run corelog batch hourly first)", args.input.display())
        }
        _ => {}
    }
    let query = match (args.job, &args.query) {
        (Job::Reconcile, None) => bail!("reconcile needs --query FILE (the stream query's TOML)"),
        (Job::Reconcile, Some(path)) => {
            let query = engine::query::QueryDef::load(path)?;
            for topic in [query.source.clone(), query.agg_topic()] {
                if !args.input.join(&topic).is_dir() {
                    bail!(
                        "{}: no landed topic {topic:?} (land it with corelog land first)",
                        args.input.display()
                    );
                }
            }
            Some(query)
        }
        _ => None,
    };
    let scheduler = scheduler(args)?;
    let progress: [StageProgress; batch::hourly::STAGES_MAX] = Default::default();
    let stages: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());
    let finished = AtomicBool::new(false);
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} tasks {msg}")
        .expect("valid progress template")
        .progress_chars("=> ");
    let job = HourlyJob {
        input: args.input.clone(),
        topic: args.topic.clone(),
        output: args.output.clone(),
        from_ms: args.from,
        to_ms: args.to,
        salts: if args.skew == Switch::On { args.skew_salts } else { 0 },
    };
    let report = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut shown: Vec<indicatif::ProgressBar> = Vec::new();
            loop {
                let done = finished.load(Ordering::Acquire);
                for (name, tasks) in stages.lock().expect("stages lock").iter().skip(shown.len()) {
                    let bar = bars.add(indicatif::ProgressBar::new(*tasks as u64));
                    bar.set_style(style.clone());
                    bar.set_prefix(name.clone());
                    shown.push(bar);
                }
                for (i, bar) in shown.iter().enumerate() {
                    let p = &progress[i];
                    bar.set_position(p.done.load(Ordering::Relaxed) as u64);
                    bar.set_message(format!(
                        "stolen {} speculated {}",
                        p.stolen.load(Ordering::Relaxed),
                        p.speculated.load(Ordering::Relaxed)
                    ));
                }
                if done {
                    shown.iter().for_each(indicatif::ProgressBar::finish);
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut on_stage = |name: &str, tasks: usize| {
            stages.lock().expect("stages lock").push((name.to_string(), tasks));
        };
        let result = match args.job {
            Job::Hourly => job.run(&scheduler, &progress, &mut on_stage).map(|(r, ())| (r, Vec::new())),
            Job::Daily => {
                let daily = batch::daily::DailyJob { input: args.input.clone(), output: args.output.clone() };
                daily.run(&scheduler, &progress, &mut on_stage).map(|(r, ())| (r, Vec::new()))
            }
            Job::Rings => {
                let rings = batch::rings::RingsJob {
                    input: args.input.clone(),
                    topic: args.topic.clone(),
                    output: args.output.clone(),
                    min_ring_size: args.min_ring_size,
                    from_ms: args.from,
                    to_ms: args.to,
                };
                rings.run(&scheduler, &progress, &mut on_stage).map(|(report, found)| {
                    let users: usize = found.iter().map(|r| r.users.len()).sum();
                    eprintln!(
                        "corelog batch rings: {} rings ({users} users) of at least {} users",
                        found.len(),
                        args.min_ring_size
                    );
                    (report, found)
                })
            }
            Job::Reconcile => {
                let job = batch::reconcile::ReconcileJob {
                    input: args.input.clone(),
                    output: args.output.clone(),
                    query: query.clone().expect("checked above"),
                };
                job.run(&scheduler, &progress, &mut on_stage).map(|(report, found)| {
                    print_reconciliation(&job.query.name, &found);
                    (report, Vec::new())
                })
            }
        };
        finished.store(true, Ordering::Release);
        result
    })
    .with_context(|| format!("{:?} job", args.job))?;
    let (report, rings) = report;
    print_summary(&report, &mut std::io::stderr().lock())?;
    if let (Job::Rings, Some(brokers)) = (args.job, &args.brokers) {
        let sent = publish_deny_list(brokers, &args.security, &args.deny_topic, &rings)?;
        eprintln!(
            "corelog batch rings: {sent} deny-list records produced to {:?} on {brokers}",
            args.deny_topic
        );
    }
    Ok(report)
}

/// Produces one record per ring member to `topic`: key = the member's id, value =
/// `{"ring_id":…,"kind":"user|card|device","id":…,"ring_users":N}` (what a stream
/// query's deny-list loads).
pub fn publish_deny_list(
    brokers: &str,
    security: &crate::client::ClientSecurity,
    topic: &str,
    rings: &[batch::rings::Ring],
) -> Result<u64> {
    let records = rings.iter().flat_map(|ring| {
        [("user", &ring.users), ("card", &ring.cards), ("device", &ring.devices)].into_iter().flat_map(
            move |(kind, members)| {
                members.iter().map(move |id| {
                    let value = serde_json::json!({
                        "ring_id": ring.ring_id, "kind": kind, "id": id, "ring_users": ring.users.len()
                    });
                    Ok((Some(id.clone()), value.to_string()))
                })
            },
        )
    });
    crate::client::produce_records(brokers, security, topic, records)
        .with_context(|| format!("producing the deny-list to {topic:?} on {brokers}"))
}

/// What `reconcile` found, then the first corrections.
pub fn print_reconciliation(query: &str, found: &batch::reconcile::Reconciliation) {
    eprintln!(
        "corelog batch reconcile {query}: {} closed windows compared, {} equal, {} corrected by late events \
         ({} changed, {} missing: every event late; {} late event-window contributions), {} mismatched",
        found.compared,
        found.equal,
        found.changed_by_late + found.missing,
        found.changed_by_late,
        found.missing,
        found.late_events,
        found.mismatched
    );
    for c in found.corrections.iter().take(5) {
        let stream = c.stream.map_or("none".to_string(), |s| format!("count {} sum {}", s.count, s.sum));
        eprintln!(
            "  partition {} key {} window {}..{}: stream {stream}, batch count {} sum {} ({})",
            c.partition, c.key, c.start_ms, c.end_ms, c.batch.count, c.batch.sum, c.reason
        );
    }
}

/// The summary table.
pub fn print_summary(report: &JobReport, out: &mut dyn Write) -> std::io::Result<()> {
    let plan = &report.plan;
    writeln!(
        out,
        "corelog batch: {} files, {} row groups ({} pruned by statistics, {} split), {} morsels",
        plan.files,
        plan.row_groups,
        plan.row_groups_pruned,
        plan.row_groups_split,
        plan.morsels.len()
    )?;
    writeln!(
        out,
        "{:<10} {:>6} {:>7} {:>8} {:>11} {:>5} {:>10} {:>9}",
        "stage", "tasks", "stolen", "retried", "speculated", "won", "wasted", "time"
    )?;
    for stage in &report.stages {
        writeln!(
            out,
            "{:<10} {:>6} {:>7} {:>8} {:>11} {:>5} {:>8.0}ms {:>7.0}ms",
            stage.stage,
            stage.tasks,
            stage.stolen,
            stage.retried,
            stage.speculated,
            stage.speculation_won,
            stage.wasted.as_secs_f64() * 1e3,
            stage.elapsed.as_secs_f64() * 1e3
        )?;
    }
    if let Some(hottest) = report.hot_keys.first() {
        writeln!(
            out,
            "skew: {} hot keys salted over {} sub-keys; hottest {} with {} sampled rows",
            report.hot_keys.len(),
            report.salts,
            hottest.key,
            hottest.rows
        )?;
    }
    writeln!(
        out,
        "rows {} (skipped {} without merchant/country/amount), groups {}, files {}",
        report.rows,
        report.bad_rows,
        report.groups,
        report.files.len()
    )
}
