//! # lander — segments to hour-partitioned Parquet, exactly once
//!
//! The batch path's entry. A [`Lander`] tails a [`Source`] (the engine's segment files
//! through read-only mappings, or a Kafka-protocol broker) and writes Parquet part files
//! to an [`Output`] (`object_store`: a local directory or an object-store URL):
//!
//! ```text
//! OUT/<topic>/dt=YYYY-MM-DD/hr=HH/part-<partition>-<first_offset:020>-<last_offset:020>.parquet
//! OUT/<topic>/_landed/<partition>.json        the manifest: first offset not landed
//! ```
//!
//! partitioned by event time (the schema's `event_time` field, else the record
//! timestamp), UTC. Columns: see [`part`]; typed columns: see [`schema`].
//!
//! ## Exactly once
//! Per partition, records are buffered into one open part per event-time hour. A
//! **commit** finishes every open part, puts each (durable and atomic, see
//! [`output`]), and only then replaces the partition's [`Manifest`] with `next_offset`
//! = the first offset not in those parts. On start, recovery deletes every part file of
//! the partition whose first offset is at or past the manifest's `next_offset` (they
//! belong to a commit that never finished) and resumes reading at `next_offset`. So a
//! kill at any instant leaves every offset in exactly one file once the lander has run
//! again: committed parts have offsets below `next_offset`, uncommitted ones are
//! deleted and re-landed. Files of one commit have disjoint offsets, so their names
//! never collide.
//!
//! ## Rotation
//! A commit happens when a record's event-time hour is later than every hour seen so
//! far in the partition (the hour boundary; late records go to a part of their own
//! hour, a new file, never a rewrite), when a part reaches `file_bytes_max`, when the
//! oldest buffered record has waited 90% of `max_lag` less the time until the
//! partition's next chance to commit ([`commit_after`]; its wait counts from the read
//! before the one that found it), so quiet partitions land and lag stays within
//! `max_lag` plus a poll, and at the end of `--once` or a clean stop.
//!
//! ## A topic deleted and created again
//! A topic that is deleted and created under the same name is a new topic: its offsets
//! start at 0 again. The source reports each read's topic id ([`ReadOutcome::topic_id`]);
//! when it is not the manifest's, the lander commits what it read of the old topic,
//! moves the old topic's part files, quarantined batches and a copy of its manifest to
//! `OUT/_replaced/<topic>/<old topic id>/` (same relative paths; see [`REPLACED_DIR`]),
//! and lands the new topic from offset 0 under a fresh manifest. Nothing of either is
//! deleted, and globs over `OUT/<topic>/` see only the current topic. A crash part-way
//! repeats the move on the next read (the manifest still names the old id).
//!
//! Invariants: the lander never writes under the engine's data directory except its
//! registration file ([`engine::landed`]); a manifest only moves forward; offsets
//! within a part increase. This crate has no `unsafe` code.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod kafka;
pub mod manifest;
pub mod output;
pub mod part;
pub mod schema;
pub mod segments;
pub mod source;

pub use kafka::KafkaSource;
pub use manifest::Manifest;
pub use output::{Output, OutputError};
pub use segments::SegmentSource;
pub use source::{LandRecord, ReadOutcome, Source, SourceError};

use arrow_schema::SchemaRef;
use chrono::{DateTime, Datelike, Timelike};
use part::PartBuilder;
use schema::{TopicSchema, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Directory under the output root that keeps what landed of topics that were deleted
/// and created again: `OUT/_replaced/<topic>/<old topic id>/…`.
pub const REPLACED_DIR: &str = "_replaced";
/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;
/// A partition commits once its oldest buffered record has waited this fraction of
/// `max_lag`, less the time until the partition's next chance to commit (see
/// [`commit_after`]), leaving the rest for the commit itself (encode, fsynced puts).
pub const LAG_COMMIT_FRACTION: f64 = 0.9;
/// However long its worker's commits take, a partition's rows wait at least this
/// fraction of `max_lag` before they commit on age, so slow commits make files at most
/// four times as frequent, not one per step.
pub const LAG_COMMIT_FLOOR_FRACTION: f64 = 0.25;
/// Default `--max-lag`.
pub const MAX_LAG_MS_DEFAULT: u64 = 60_000;
/// Default size at which a part file is closed.
pub const FILE_BYTES_MAX_DEFAULT: usize = 128 << 20;
/// Bytes read from a source per call.
pub const READ_BYTES_MAX: usize = 4 << 20;
/// Reads of one partition per [`Lander::step`] before moving to the next partition.
pub const READS_PER_STEP_MAX: usize = 16;
/// Default wait between polls of a caught-up source.
pub const POLL_MS_DEFAULT: u64 = 100;
/// How often [`Lander::step`] looks for new topics and partitions.
pub const DISCOVERY_INTERVAL_MS: u64 = 1000;

/// Errors from landing.
#[derive(Debug, thiserror::Error)]
pub enum LandError {
    /// The source failed.
    #[error("{0}")]
    Source(#[from] SourceError),
    /// The output failed.
    #[error("{0}")]
    Output(#[from] OutputError),
    /// A schema file is bad.
    #[error("{0}")]
    Schema(#[from] schema::SchemaError),
    /// Encoding Parquet failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A stored manifest is unusable.
    #[error("{path}: {reason}")]
    Manifest {
        /// The manifest.
        path: String,
        /// Why.
        reason: String,
    },
    /// Writing the retention registration failed.
    #[error("registration: {0}")]
    Registration(std::io::Error),
}

/// What to land and how.
#[derive(Debug, Clone)]
pub struct LanderConfig {
    /// Topics to land; `None` lands every topic the source has.
    pub topics: Option<Vec<String>>,
    /// Directory of `<topic>.toml` schemas.
    pub schemas_dir: Option<PathBuf>,
    /// Longest a read record waits before it lands.
    pub max_lag_ms: u64,
    /// Size at which an open part file is closed.
    pub file_bytes_max: usize,
    /// Register landed offsets under this data dir with this lander id (the retention
    /// handshake with an engine reading the same data dir).
    pub registration: Option<(PathBuf, String)>,
    /// Threads landing partitions in parallel (each partition on one thread per step).
    pub workers: usize,
}

impl Default for LanderConfig {
    fn default() -> Self {
        Self {
            topics: None,
            schemas_dir: None,
            max_lag_ms: MAX_LAG_MS_DEFAULT,
            file_bytes_max: FILE_BYTES_MAX_DEFAULT,
            registration: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Totals and lag, for progress lines and reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Partitions being landed.
    pub partitions: usize,
    /// Records landed (committed) by this process.
    pub records: u64,
    /// Records with bad typed values (landed with nulls).
    pub bad_records: u64,
    /// Part files written by this process.
    pub files: u64,
    /// Parquet bytes written by this process.
    pub bytes: u64,
    /// Offsets deleted by retention before they could land.
    pub skipped_offsets: u64,
    /// Batches that pass their CRC but cannot be landed, kept whole under
    /// `OUT/<topic>/_quarantine/<partition>/` with the reason.
    pub quarantined_batches: u64,
    /// Partition steps that failed (the partition is retried; the others go on).
    pub partition_errors: u64,
    /// Partitions found replaced (topic deleted and created again), whose landed files
    /// were set aside under [`REPLACED_DIR`].
    pub replaced_partitions: u64,
    /// Offsets in the source not yet landed (sum over partitions).
    pub lag_offsets: i64,
    /// Age of the oldest record read but not landed, seconds.
    pub lag_seconds: f64,
    /// Whether every partition is read to its end.
    pub caught_up: bool,
}

impl Progress {
    /// Adds another worker's counters (records, bad records, files, bytes, skipped).
    fn add(&mut self, other: &Progress) {
        self.records += other.records;
        self.bad_records += other.bad_records;
        self.files += other.files;
        self.bytes += other.bytes;
        self.skipped_offsets += other.skipped_offsets;
        self.quarantined_batches += other.quarantined_batches;
        self.partition_errors += other.partition_errors;
        self.replaced_partitions += other.replaced_partitions;
    }
}

#[derive(Debug)]
struct PartitionState {
    topic: String,
    partition: u32,
    manifest: Manifest,
    /// Next offset to read from the source.
    read_next: i64,
    /// Open parts by event-time hour.
    open: BTreeMap<i64, PartBuilder>,
    /// Latest event-time hour seen since the lander started.
    hour_max: Option<i64>,
    /// Since when the oldest open row may have been waiting: the start of the read
    /// before the one that found it (it was appended after that read looked, or it was
    /// already waiting then), so a slow step counts against the row's lag too.
    buffered_since: Option<Instant>,
    /// When the last read of this partition started, and the time between the last two.
    read_at: Option<Instant>,
    read_gap: Duration,
    /// How long this partition's last commit took (encode and puts).
    commit_cost: Duration,
    /// Record timestamp of the oldest open row.
    oldest_open_ms: Option<i64>,
    caught_up: bool,
    end_offset: i64,
    /// Why the last step of this partition failed, if it did.
    failed: Option<String>,
}

impl PartitionState {
    /// A partition about to be read from its manifest's `next_offset`.
    fn new(manifest: Manifest) -> Self {
        Self {
            topic: manifest.topic.clone(),
            partition: manifest.partition,
            read_next: manifest.next_offset,
            manifest,
            open: BTreeMap::new(),
            hour_max: None,
            buffered_since: None,
            read_at: None,
            read_gap: Duration::ZERO,
            commit_cost: Duration::ZERO,
            oldest_open_ms: None,
            caught_up: false,
            end_offset: 0,
            failed: None,
        }
    }
}

/// A lander over one source and one output.
pub struct Lander<S: Source> {
    source: Mutex<S>,
    output: Output,
    config: LanderConfig,
    schemas: HashMap<String, (TopicSchema, SchemaRef)>,
    partitions: BTreeMap<(String, u32), PartitionState>,
    progress: Progress,
    registered: Option<engine::landed::Registration>,
    discovered_at: Option<Instant>,
}

impl<S: Source> std::fmt::Debug for Lander<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lander")
            .field("output", &self.output)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

/// `<topic>/dt=YYYY-MM-DD/hr=HH/part-<partition>-<first:020>-<last:020>.parquet`.
pub fn part_path(topic: &str, partition: u32, hour: i64, first_offset: i64, last_offset: i64) -> String {
    let time = DateTime::from_timestamp_millis(hour * HOUR_MS).expect("hour within chrono's range");
    format!(
        "{topic}/dt={:04}-{:02}-{:02}/hr={:02}/part-{partition}-{first_offset:020}-{last_offset:020}.parquet",
        time.year(),
        time.month(),
        time.day(),
        time.hour()
    )
}

/// Parses a part file name (the last path component) into partition, first and last
/// offset.
pub fn parse_part_name(name: &str) -> Option<(u32, i64, i64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut fields = rest.split('-');
    let partition = fields.next()?.parse().ok()?;
    let first = fields.next().filter(|f| f.len() == 20)?.parse().ok()?;
    let last = fields.next().filter(|f| f.len() == 20)?.parse().ok()?;
    fields.next().is_none().then_some((partition, first, last))
}

fn clamp_event_ms(ms: i64) -> i64 {
    // Hours chrono can print as four-digit years: 0000-01-01 .. 9999-12-31.
    ms.clamp(-62_167_219_200_000, 253_402_300_799_999)
}

impl<S: Source + Send> Lander<S> {
    /// A lander; nothing is read or recovered until the first [`Lander::step`].
    pub fn new(source: S, output: Output, config: LanderConfig) -> Self {
        Self {
            source: Mutex::new(source),
            output,
            config,
            schemas: HashMap::new(),
            partitions: BTreeMap::new(),
            progress: Progress::default(),
            registered: None,
            discovered_at: None,
        }
    }

    /// Totals so far.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The manifest of every partition being landed.
    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.partitions.values().map(|p| &p.manifest)
    }

    /// Finds new topics and partitions and recovers them.
    fn discover(&mut self) -> Result<(), LandError> {
        if self.discovered_at.is_some_and(|at| at.elapsed() < Duration::from_millis(DISCOVERY_INTERVAL_MS)) {
            return Ok(());
        }
        self.discovered_at = Some(Instant::now());
        let topics = self.source.get_mut().expect("source lock").topics()?;
        for (topic, count) in topics {
            if self.config.topics.as_ref().is_some_and(|wanted| !wanted.contains(&topic)) {
                continue;
            }
            let known = self.partitions.range((topic.clone(), 0)..=(topic.clone(), u32::MAX)).count() as u32;
            if known >= count {
                continue;
            }
            if !self.schemas.contains_key(&topic) {
                let schema = TopicSchema::load(self.config.schemas_dir.as_deref(), &topic)?;
                let arrow = part::arrow_schema(&schema);
                self.schemas.insert(topic.clone(), (schema, arrow));
            }
            let listing = self.output.list(&topic)?;
            let removed = self.output.remove_staging_files(&topic)?;
            if removed > 0 {
                tracing::info!(topic, removed, "removed staging files of interrupted puts");
            }
            for partition in 0..count {
                if !self.partitions.contains_key(&(topic.clone(), partition)) {
                    let state = self.recover(&topic, partition, &listing)?;
                    self.partitions.insert((topic.clone(), partition), state);
                }
            }
        }
        self.progress.partitions = self.partitions.len();
        Ok(())
    }

    /// Reads the partition's manifest and deletes part files past it.
    fn recover(
        &mut self,
        topic: &str,
        partition: u32,
        listing: &[String],
    ) -> Result<PartitionState, LandError> {
        let manifest_path = Manifest::path(topic, partition);
        let manifest = match self.output.get(&manifest_path)? {
            Some(bytes) => Manifest::decode(&bytes, topic, partition)
                .map_err(|reason| LandError::Manifest { path: manifest_path.clone(), reason })?,
            None => Manifest::empty(topic, partition, None),
        };
        for path in listing {
            let name = path.rsplit('/').next().unwrap_or_default();
            let Some((p, first, _last)) = parse_part_name(name) else { continue };
            if p == partition && first >= manifest.next_offset {
                tracing::info!(path, next_offset = manifest.next_offset, "deleting part past the manifest");
                self.output.delete(path)?;
            }
        }
        Ok(PartitionState::new(manifest))
    }

    /// One pass: discover partitions (at most every [`DISCOVERY_INTERVAL_MS`]), read what
    /// is available (bounded per partition) on `workers` threads, and commit where a
    /// rotation rule says so. With `finish`, commits everything read. Returns whether
    /// every partition is caught up.
    pub fn step(&mut self, finish: bool) -> Result<bool, LandError> {
        self.discover()?;
        let states: Vec<((String, u32), PartitionState)> =
            std::mem::take(&mut self.partitions).into_iter().collect();
        let workers = self.config.workers.clamp(1, states.len().max(1));
        let mut groups: Vec<Vec<((String, u32), PartitionState)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for (i, state) in states.into_iter().enumerate() {
            groups[i % workers].push(state);
        }
        let (source, output, config, schemas) = (&self.source, &self.output, &self.config, &self.schemas);
        let run_group = |mut group: Vec<((String, u32), PartitionState)>| {
            let mut worker = Worker::new(source, output, config, schemas);
            // This worker's commits run one after another: a row waits for all of them.
            worker.commit_queue = group.iter().map(|(_, state)| state.commit_cost).sum();
            let mut result = Ok(());
            for (_, state) in &mut group {
                // One partition's failure stops only that partition: it is reported,
                // counted and retried on the next step while the others go on.
                match worker.land_partition(state, finish) {
                    Ok(()) => state.failed = None,
                    Err(error) => {
                        let message = error.to_string();
                        if state.failed.as_deref() != Some(&message) {
                            tracing::error!(
                                topic = state.topic,
                                partition = state.partition,
                                "landing failed: {message}"
                            );
                        }
                        metrics::counter!("lander_partition_errors").increment(1);
                        worker.progress.partition_errors += 1;
                        state.caught_up = false;
                        state.failed = Some(message);
                        if finish {
                            result = Err(error);
                        }
                    }
                }
            }
            // A failed partition is retried on the next step; it does not hold up
            // whether the others are caught up (see `Lander::failed_partitions`).
            let all_caught_up = group.iter().all(|(_, state)| state.caught_up || state.failed.is_some());
            (group, worker.progress, result.map(|_| all_caught_up))
        };
        let outcomes: Vec<_> = if workers == 1 {
            groups.into_iter().map(run_group).collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = groups.into_iter().map(|g| scope.spawn(|| run_group(g))).collect();
                handles.into_iter().map(|h| h.join().expect("lander worker thread")).collect()
            })
        };
        let mut all_caught_up = true;
        let mut first_error = None;
        for (group, progress, result) in outcomes {
            self.partitions.extend(group);
            self.progress.add(&progress);
            match result {
                Ok(caught_up) => all_caught_up &= caught_up,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        self.register()?;
        self.progress.caught_up = all_caught_up;
        Ok(all_caught_up)
    }

    /// Partitions whose last step failed, with why.
    pub fn failed_partitions(&self) -> Vec<(String, u32, String)> {
        let mut failed: Vec<_> = self
            .partitions
            .values()
            .filter_map(|s| s.failed.as_ref().map(|why| (s.topic.clone(), s.partition, why.clone())))
            .collect();
        failed.sort();
        failed
    }

    /// Commits everything read so far in every partition (a clean stop).
    pub fn flush(&mut self) -> Result<(), LandError> {
        let keys: Vec<(String, u32)> = self.partitions.keys().cloned().collect();
        for key in keys {
            let mut state = self.partitions.remove(&key).expect("key listed above");
            let next_offset = state.read_next;
            let mut worker = Worker::new(&self.source, &self.output, &self.config, &self.schemas);
            let result = if next_offset > state.manifest.next_offset {
                worker.commit(&mut state, next_offset)
            } else {
                Ok(())
            };
            let progress = worker.progress;
            self.progress.add(&progress);
            self.partitions.insert(key, state);
            result?;
        }
        self.register()
    }

    /// Rewrites the registration file when a manifest moved.
    fn register(&mut self) -> Result<(), LandError> {
        let Some((data_dir, id)) = &self.config.registration else { return Ok(()) };
        let landed: engine::landed::Registration = self
            .partitions
            .iter()
            .map(|(k, s)| (k.clone(), (s.manifest.next_offset, s.manifest.topic_id)))
            .collect();
        if self.registered.as_ref() == Some(&landed) {
            return Ok(());
        }
        engine::landed::write_registration(data_dir, id, &landed).map_err(LandError::Registration)?;
        self.registered = Some(landed);
        Ok(())
    }

    /// Refreshes end offsets and lag figures (call about once a second).
    pub fn update_lag(&mut self) {
        let now = engine::now_ms();
        let (mut lag_offsets, mut lag_ms) = (0i64, 0i64);
        for state in self.partitions.values_mut() {
            if let Ok(end) =
                self.source.get_mut().expect("source lock").end_offset(&state.topic, state.partition)
            {
                state.end_offset = end.max(state.read_next);
            }
            lag_offsets += (state.end_offset - state.manifest.next_offset).max(0);
            if let Some(oldest) = state.oldest_open_ms {
                lag_ms = lag_ms.max(now - oldest);
            }
        }
        self.progress.lag_offsets = lag_offsets;
        self.progress.lag_seconds = lag_ms.max(0) as f64 / 1000.0;
        metrics::gauge!("lander_lag_offsets").set(lag_offsets as f64);
        metrics::gauge!("lander_lag_seconds").set(self.progress.lag_seconds);
    }
}

/// One thread's view of a [`Lander`] while it lands a group of partitions.
struct Worker<'a, S> {
    source: &'a Mutex<S>,
    output: &'a Output,
    config: &'a LanderConfig,
    schemas: &'a HashMap<String, (TopicSchema, SchemaRef)>,
    /// What this worker did (merged into the lander's totals).
    progress: Progress,
    /// What the last commits of this worker's partitions took, together.
    commit_queue: Duration,
    typed: Vec<Value>,
    records: Vec<LandRecord>,
}

impl<'a, S: Source> Worker<'a, S> {
    fn new(
        source: &'a Mutex<S>,
        output: &'a Output,
        config: &'a LanderConfig,
        schemas: &'a HashMap<String, (TopicSchema, SchemaRef)>,
    ) -> Self {
        Self {
            source,
            output,
            config,
            schemas,
            progress: Progress::default(),
            commit_queue: Duration::ZERO,
            typed: Vec::new(),
            records: Vec::new(),
        }
    }

    fn land_partition(&mut self, state: &mut PartitionState, finish: bool) -> Result<(), LandError> {
        for read in 0..READS_PER_STEP_MAX {
            let mut records = std::mem::take(&mut self.records);
            records.clear();
            let read_at = Instant::now();
            let waiting_since = state.read_at.replace(read_at).unwrap_or(read_at);
            if read == 0 {
                state.read_gap = read_at - waiting_since; // from one step to the next
            }
            // The batches this read passed over are taken under the same lock, so a
            // worker only ever quarantines its own partition's (before its commit).
            let (outcome, quarantined) = {
                let mut source = self.source.lock().expect("source lock");
                let outcome =
                    source.read(&state.topic, state.partition, state.read_next, READ_BYTES_MAX, &mut records);
                (outcome, source.take_quarantined())
            };
            for batch in quarantined {
                if let Err(error) = self.quarantine(&batch) {
                    self.records = records;
                    return Err(error);
                }
            }
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(error) => {
                    self.records = records;
                    return Err(error.into());
                }
            };
            if let Some(id) = outcome.topic_id {
                match state.manifest.topic_id {
                    None => state.manifest.topic_id = Some(id),
                    Some(landed) if landed != id => {
                        // The records (if any) are the new topic's: read again from 0.
                        self.records = records;
                        return self.replace(state, landed, id);
                    }
                    Some(_) => {}
                }
            }
            if let Some((from, to)) = outcome.skipped {
                tracing::warn!(
                    topic = state.topic,
                    partition = state.partition,
                    "offsets {from}..{to} were deleted before they landed"
                );
                self.progress.skipped_offsets += (to - from).max(0) as u64;
                metrics::counter!("lander_skipped_offsets").increment((to - from).max(0) as u64);
            }
            let result = self.push_records(state, &records, waiting_since);
            self.records = records;
            result?;
            assert!(outcome.next_offset >= state.read_next, "a source never moves backwards");
            state.read_next = outcome.next_offset;
            state.caught_up = outcome.caught_up;
            if outcome.caught_up {
                break;
            }
        }
        let max_lag = Duration::from_millis(self.config.max_lag_ms);
        // The next look at this partition comes about one gap later, after every
        // commit queued on this worker: commit now if waiting until then would be late.
        let ahead = self.commit_queue.max(state.read_gap);
        let lagging = state.buffered_since.is_some_and(|t| t.elapsed() >= commit_after(max_lag, ahead));
        let unrecorded =
            state.read_next > state.manifest.next_offset && state.open.is_empty() && state.caught_up;
        if lagging || ((finish || unrecorded) && state.read_next > state.manifest.next_offset) {
            let next_offset = state.read_next;
            self.commit(state, next_offset)?;
        }
        Ok(())
    }

    /// The topic was deleted and created again (`landed` → `found`): lands what was read
    /// of the old one, sets aside its files under [`REPLACED_DIR`], and starts the
    /// partition over at offset 0 with a manifest naming the new topic.
    fn replace(
        &mut self,
        state: &mut PartitionState,
        landed: engine::partition_meta::TopicId,
        found: engine::partition_meta::TopicId,
    ) -> Result<(), LandError> {
        if state.read_next > state.manifest.next_offset {
            let next_offset = state.read_next;
            self.commit(state, next_offset)?;
        }
        let (topic, partition) = (state.topic.clone(), state.partition);
        let aside = format!("{REPLACED_DIR}/{topic}/{landed}");
        let mut moved = 0usize;
        for path in self.output.list(&topic)? {
            let Some(rest) = path.strip_prefix(&format!("{topic}/")) else { continue };
            let ours = match rest.split_once('/') {
                Some(("_quarantine", inner)) => inner.split('/').next() == Some(&partition.to_string()),
                Some(("_landed", _)) => false,
                _ => {
                    let name = rest.rsplit('/').next().unwrap_or_default();
                    !rest.split('/').any(|c| c.starts_with('_'))
                        && parse_part_name(name).is_some_and(|(p, _, _)| p == partition)
                }
            };
            if ours {
                let bytes = self.output.get(&path)?.unwrap_or_default();
                self.output.put(&format!("{aside}/{rest}"), bytes)?;
                self.output.delete(&path)?;
                moved += 1;
            }
        }
        let manifest_path = Manifest::path(&topic, partition);
        self.output.put(&format!("{aside}/_landed/{partition}.json"), state.manifest.encode().into())?;
        let fresh = Manifest::empty(&topic, partition, Some(found));
        self.output.put(&manifest_path, fresh.encode().into())?;
        tracing::warn!(
            topic,
            partition,
            %landed,
            %found,
            moved,
            "the topic was deleted and created again: what landed of the old one is in {aside}/; landing the new one from offset 0"
        );
        *state = PartitionState::new(fresh);
        self.source.lock().expect("source lock").forget(&topic, partition);
        self.progress.replaced_partitions += 1;
        metrics::counter!("lander_replaced_partitions").increment(1);
        Ok(())
    }

    /// Puts a batch that cannot be landed under `OUT/<topic>/_quarantine/<partition>/`
    /// (`<first>-<last>.batch` with its bytes, `.reason` with why), durably, before the
    /// manifest can move past its offsets.
    fn quarantine(&mut self, batch: &source::Quarantined) -> Result<(), LandError> {
        let stem = format!(
            "{}/_quarantine/{}/{:020}-{:020}",
            batch.topic, batch.partition, batch.first_offset, batch.last_offset
        );
        self.output.put(&format!("{stem}.batch"), batch.bytes.clone())?;
        self.output.put(&format!("{stem}.reason"), bytes::Bytes::from(format!("{}\n", batch.reason)))?;
        tracing::error!(
            topic = batch.topic,
            partition = batch.partition,
            first = batch.first_offset,
            last = batch.last_offset,
            "batch quarantined at {stem}.batch: {}",
            batch.reason
        );
        self.progress.quarantined_batches += 1;
        metrics::counter!("lander_quarantined_batches").increment(1);
        Ok(())
    }

    /// Adds `records` to the partition's open parts; `waiting_since` is how long they
    /// may have waited in the source (see `PartitionState::buffered_since`).
    fn push_records(
        &mut self,
        state: &mut PartitionState,
        records: &[LandRecord],
        waiting_since: Instant,
    ) -> Result<(), LandError> {
        let (schema, arrow) = self.schemas.get(&state.topic).expect("schema loaded at discovery");
        let (schema, arrow) = (schema.clone(), arrow.clone());
        let event_time = schema.event_time_index();
        for record in records {
            let good = schema::extract(&schema, record.value.as_deref(), &mut self.typed);
            if !good {
                self.progress.bad_records += 1;
                metrics::counter!("lander_bad_records").increment(1);
            }
            let event_ms = event_time
                .and_then(|i| match self.typed[i] {
                    Value::Int(ms) => Some(ms),
                    _ => None,
                })
                .unwrap_or(record.timestamp_ms);
            let hour = clamp_event_ms(event_ms).div_euclid(HOUR_MS);
            if state.hour_max.is_some_and(|max| hour > max) && !state.open.is_empty() {
                self.commit(state, record.offset)?;
            }
            state.hour_max = Some(state.hour_max.map_or(hour, |max| max.max(hour)));
            if state.open.is_empty() {
                state.buffered_since = Some(waiting_since);
                state.oldest_open_ms = Some(record.timestamp_ms);
            }
            let part = match state.open.entry(hour) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => entry.insert(PartBuilder::new(
                    &state.topic,
                    state.partition,
                    hour,
                    &schema,
                    arrow.clone(),
                )?),
            };
            part.push(record, &self.typed)?;
            if part.size_bytes() >= self.config.file_bytes_max {
                self.commit(state, record.offset + 1)?;
            }
        }
        Ok(())
    }

    /// Finishes and puts every open part, then advances the manifest to `next_offset`.
    fn commit(&mut self, state: &mut PartitionState, next_offset: i64) -> Result<(), LandError> {
        assert!(next_offset >= state.manifest.next_offset, "a manifest only moves forward");
        let started = Instant::now();
        let mut records = 0;
        let mut files = 0;
        for (_, part) in std::mem::take(&mut state.open) {
            let finished = part.finish()?;
            assert!(
                finished.first_offset >= state.manifest.next_offset && finished.last_offset < next_offset
            );
            let path = part_path(
                &state.topic,
                state.partition,
                finished.hour,
                finished.first_offset,
                finished.last_offset,
            );
            let bytes = finished.bytes.len() as u64;
            self.output.put(&path, finished.bytes.into())?;
            records += finished.rows;
            files += 1;
            self.progress.bytes += bytes;
            metrics::counter!("lander_bytes").increment(bytes);
        }
        state.manifest.next_offset = next_offset;
        state.manifest.landed_records += records;
        state.manifest.landed_files += files;
        state.manifest.updated_ms = engine::now_ms();
        let manifest_path = Manifest::path(&state.topic, state.partition);
        self.output.put(&manifest_path, state.manifest.encode().into())?;
        state.buffered_since = None;
        state.oldest_open_ms = None;
        state.commit_cost = started.elapsed();
        self.progress.records += records;
        self.progress.files += files;
        metrics::counter!("lander_records").increment(records);
        metrics::counter!("lander_files").increment(files);
        Ok(())
    }
}

/// How long a partition's oldest buffered row waits before its partition commits on
/// age: [`LAG_COMMIT_FRACTION`] of `max_lag` less `queue`, the time until the
/// partition's next chance to commit (the longer of the gap between its last two
/// reads and what the last commits of every partition on the same worker took: they
/// run in a row), but at least [`LAG_COMMIT_FLOOR_FRACTION`] of `max_lag`.
pub fn commit_after(max_lag: Duration, queue: Duration) -> Duration {
    let floor = max_lag.mul_f64(LAG_COMMIT_FLOOR_FRACTION);
    max_lag.mul_f64(LAG_COMMIT_FRACTION).saturating_sub(queue).max(floor)
}

/// The lander id used in the retention registration for an output URL: stable across
/// restarts of a lander writing to the same output.
pub fn lander_id(output_url: &str) -> String {
    let hash = output_url
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_an_hour_when_path_built_then_it_is_hive_layout_and_parses_back() {
        let hour = 1_764_000_000_000 / HOUR_MS; // 2025-11-24T16:00Z
        let path = part_path("payments", 3, hour, 17, 4242);
        assert_eq!(
            path,
            "payments/dt=2025-11-24/hr=16/part-3-00000000000000000017-00000000000000004242.parquet"
        );
        assert_eq!(parse_part_name(path.rsplit('/').next().unwrap()), Some((3, 17, 4242)));
        assert_eq!(parse_part_name("part-3-17-4242.parquet"), None);
        assert_eq!(parse_part_name("part-3-00000000000000000017-00000000000000004242.parquet#1"), None);
    }

    #[test]
    fn given_slow_commits_on_a_worker_when_rows_wait_then_they_commit_earlier_but_not_before_the_floor() {
        let max_lag = Duration::from_secs(5);
        let ms = |ms| Duration::from_millis(ms);
        assert_eq!(commit_after(max_lag, Duration::ZERO), ms(4500), "nothing queued: 90% of max_lag");
        assert_eq!(commit_after(max_lag, ms(2400)), ms(2100), "eight commits of 300 ms ahead");
        assert_eq!(commit_after(max_lag, ms(4000)), ms(1250), "never before a quarter of max_lag");
        assert_eq!(commit_after(max_lag, Duration::from_secs(60)), ms(1250));
    }
}
