//! One seeded scenario: the real partition log, group commit and producer state of
//! one partition, driven by random clients, completions, ticks, crashes and faults,
//! and checked against a model after every step.
//!
//! **What runs for real** (the engine's code, not a copy): `PartitionLog` (append
//! planning, rolls, reads, recovery after a crash with the engine's
//! `written_since` rule, cut-back after a failure, time and size retention),
//! `GroupCommit` (which sync covers what, when the watermark may move),
//! `Preallocation` (zeros filled ahead of the tail, which appends wait for, which
//! sealed segments lose again when trimmed), `ProducerStates` (sequence checks,
//! snapshots, rebuild at open), on the simulated disk ([`crate::disk::SimDisk`]).
//!
//! **What the driver plays** is the shard's part, step for step as `shard::Partition`
//! does it: a write is submitted when the append is placed and completes at a later
//! step (in any order); a sync is started when the group commit asks for one and
//! completes later (a slow sync); a fill of zeros ahead of the tail is planned after
//! an append and its write lands at a later step, then its sync (an append placed over
//! a fill still being written waits for that write); a failed write or sync (of data
//! or of a fill) fails the partition (read
//! only, every waiter answered with an error), and a maintenance tick heals it once
//! nothing is in flight (cut back to the watermark, producer state rebuilt, a new
//! generation); an append is acknowledged once the published watermark passes it in
//! its generation.
//!
//! **The model** (checked after every step; any breach ends the scenario as a
//! failure, as does a panic in the engine's own assertions):
//! * the high watermark never passes the bytes the disk holds durably (synced data
//!   in durably named segments, read as a crash would leave them);
//! * every acknowledged batch stays readable with its bytes (CRC) at its offset,
//!   through crashes, restarts and heals, until retention deletes its segment; the
//!   watermark never falls below an acknowledged offset;
//! * offsets are contiguous from the log start to the watermark;
//! * a retried idempotent batch is answered with the offsets of its first
//!   acknowledgement, and no idempotent batch is refused out of sequence;
//! * a failed partition refuses appends, and once the faults stop a maintenance tick
//!   heals it and it takes appends again; a crash or restart always reopens.

use crate::disk::SimDisk;
use bytes::BytesMut;
use engine::batch::{BatchBuilder, BatchView};
use engine::commit::{retry_failed_sync, FlushStep, GroupCommit};
use engine::disk::{Disk, DiskFile};
use engine::groups::{code as group_code, Coordinator};
use engine::log::{AppendError, LogConfig, PartitionLog, Recovery};
use engine::prealloc::{Fill, Preallocation};
use engine::producers::{ProducerStates, Sequenced};
use engine::segment::{is_retired_name, parse_log_name, scan_batches, Retired};
use engine::{AppendResult, FlushMode, OPENED_SLACK_MS};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Clients appending in one scenario.
pub const CLIENTS: usize = 4;
/// Of which this many are idempotent producers.
pub const IDEMPOTENT_CLIENTS: usize = 3;
/// The consumer group whose offsets the scenario commits, and the topic they name.
const GROUP: &str = "g";
const TOPIC: &str = "topic";
/// Steps between full walks of the log (offsets contiguous, acknowledged bytes).
pub const FULL_CHECK_EVERY_STEPS: u64 = 16;

/// What one scenario did.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Steps run.
    pub steps: u64,
    /// Crashes (power losses) simulated.
    pub crashes: u64,
    /// Clean restarts.
    pub restarts: u64,
    /// Faults the disk injected.
    pub faults: u64,
    /// Appends acknowledged.
    pub acks: u64,
    /// Heals after a failure.
    pub heals: u64,
    /// The first breach of the model, with the step it happened at.
    pub failure: Option<String>,
}

/// What a sync covers: a file, or a directory's entries.
#[derive(Debug, Clone)]
enum SyncTarget {
    File(Arc<DiskFile>),
    Dir(PathBuf),
}

#[derive(Debug)]
struct InFlightWrite {
    next_offset: i64,
    synced: bool,
    outcome: Result<(), String>,
}

/// A fill of zeros ahead of the tail: its write has not landed yet, or it has and its
/// sync is next.
#[derive(Debug)]
struct InFlightFill {
    fill: Fill,
    file: Arc<DiskFile>,
    written: bool,
}

#[derive(Debug)]
struct InFlightSync {
    target: i64,
    outcome: Result<(), String>,
}

#[derive(Debug)]
struct Waiter {
    client: usize,
    result: AppendResult,
    generation: u64,
    /// True for a re-send of a batch already acknowledged.
    resend: bool,
}

/// The running "process": one partition's state, as a shard holds it.
#[derive(Debug)]
struct Node {
    log: PartitionLog,
    /// The consumer-group coordinator, its committed offsets on the same disk.
    groups: Coordinator,
    producers: ProducerStates,
    commit: GroupCommit<SyncTarget>,
    prealloc: Preallocation,
    fill: Option<InFlightFill>,
    active: Option<Arc<DiskFile>>,
    failed: Option<String>,
    generation: u64,
    writes: Vec<InFlightWrite>,
    syncs: Vec<InFlightSync>,
    waiters: Vec<Waiter>,
    /// Segments retention retired (renamed `*.deleted`) and not yet unlinked: the
    /// engine's deletion thread unlinks them some time later, or a crash comes first.
    retired: Vec<Retired>,
}

#[derive(Debug, Clone)]
struct Batch {
    bytes: BytesMut,
    crc: u32,
    sequence: i32,
    records: i32,
}

#[derive(Debug, Default)]
struct Client {
    producer_id: Option<i64>,
    next_sequence: i32,
    /// The batch being sent until acknowledged.
    current: Option<Batch>,
    waiting: bool,
    last_acked: Option<(Batch, AppendResult)>,
}

#[derive(Debug, Clone, Copy)]
struct Acked {
    next_offset: i64,
    crc: u32,
}

type Check = Result<(), String>;
/// One kind of step.
type Action = fn(&mut Scenario) -> Check;

/// A scenario's world: the disk, the node, the clients and the model.
pub struct Scenario {
    rng: SmallRng,
    disk: Arc<SimDisk>,
    dir: PathBuf,
    config: LogConfig,
    mode: FlushMode,
    clock_ms: i64,
    opened_ms: i64,
    node: Option<Node>,
    clients: Vec<Client>,
    /// Acknowledged batches by base offset.
    acked: BTreeMap<i64, Acked>,
    /// First acknowledgement of each idempotent batch: (producer id, sequence).
    first_answers: BTreeMap<(i64, i32), AppendResult>,
    /// The last offset commit answered without error, and the values of commits
    /// since that failed (a failed commit may still have reached the disk).
    committed: Option<i64>,
    commits_in_doubt: Vec<i64>,
    storm: bool,
    outcome: Outcome,
    verbose: bool,
    step: u64,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario").field("step", &self.step).field("outcome", &self.outcome).finish()
    }
}

impl Scenario {
    /// A scenario for `seed` with its scratch files under `scratch`.
    pub fn new(seed: u64, scratch: &Path, verbose: bool) -> std::io::Result<Self> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let disk = Arc::new(SimDisk::new(scratch, seed)?);
        let dir = scratch.join("topic-0");
        let config = LogConfig {
            segment_bytes: rng.gen_range(1..=8) * 1024,
            segment_ms: rng.gen_bool(0.5).then(|| rng.gen_range(1..=20) * 1000),
            retention_ms: rng.gen_bool(0.3).then(|| rng.gen_range(30..=120) * 1000),
            retention_bytes: rng.gen_bool(0.5).then(|| rng.gen_range(8..=32) * 1024),
            cache_window_bytes: 0,
            ..LogConfig::default()
        };
        let mode = if rng.gen_bool(0.7) { FlushMode::Group } else { FlushMode::Always };
        let clients = (0..CLIENTS)
            .map(|i| Client {
                producer_id: (i < IDEMPOTENT_CLIENTS).then_some(1000 + i as i64),
                ..Client::default()
            })
            .collect();
        let clock_ms = 1_700_000_000_000;
        disk.set_clock(clock_ms);
        let scenario = Self {
            rng,
            disk,
            dir,
            config,
            mode,
            clock_ms,
            opened_ms: clock_ms,
            node: None,
            clients,
            acked: BTreeMap::new(),
            first_answers: BTreeMap::new(),
            committed: None,
            commits_in_doubt: Vec::new(),
            storm: false,
            outcome: Outcome::default(),
            verbose,
            step: 0,
        };
        scenario.say(format!(
            "seed {seed}: segment {} B, segment_ms {:?}, retention {:?} ms / {:?} B, flush {:?}",
            scenario.config.segment_bytes,
            scenario.config.segment_ms,
            scenario.config.retention_ms,
            scenario.config.retention_bytes,
            scenario.mode
        ));
        Ok(scenario)
    }

    fn say(&self, line: impl AsRef<str>) {
        if self.verbose {
            println!("{:>5} {}", self.step, line.as_ref());
        }
    }

    /// Runs `steps` steps (stopping at the first failure) and returns what happened.
    pub fn run(mut self, steps: u64) -> Outcome {
        let result = self.open(Recovery::Unclean { written_since_ms: None }, true);
        if let Err(failure) = result {
            self.outcome.failure = Some(format!("step 0: {failure}"));
            return self.outcome;
        }
        while self.step < steps {
            self.step += 1;
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.one_step()));
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(failure)) => Some(failure),
                Err(panic) => Some(format!(
                    "engine assertion: {}",
                    panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("panic")
                )),
            };
            if let Some(failure) = failure {
                self.say(format!("FAILURE: {failure}"));
                self.outcome.failure = Some(format!("step {}: {failure}", self.step));
                break;
            }
        }
        self.outcome.steps = self.step;
        self.outcome.faults = self.disk.faults_injected().len() as u64;
        self.node = None;
        self.outcome
    }

    fn node(&mut self) -> &mut Node {
        self.node.as_mut().expect("the node runs between steps")
    }

    fn one_step(&mut self) -> Check {
        let weights: [(u32, Action); 13] = [
            (30, Self::append),
            (4, Self::resend),
            (20, Self::complete_write),
            (20, Self::complete_sync),
            (8, Self::complete_fill),
            (6, Self::tick),
            (3, Self::advance_clock),
            (2, Self::crash),
            (1, Self::restart),
            (2, Self::toggle_storm),
            (2, Self::check_log),
            (3, Self::commit_offset),
            (2, Self::unlink_retired),
        ];
        let total: u32 = weights.iter().map(|(w, _)| w).sum();
        let mut pick = self.rng.gen_range(0..total);
        for (weight, action) in weights {
            if pick < weight {
                action(self)?;
                break;
            }
            pick -= weight;
        }
        self.check_watermark()?;
        if self.step.is_multiple_of(FULL_CHECK_EVERY_STEPS) {
            self.check_log()?;
        }
        Ok(())
    }

    // ---- the process: open, close ------------------------------------------------

    fn open(&mut self, recovery: Recovery, after_power_loss: bool) -> Check {
        let faults = self.storm;
        self.disk.set_faults(0);
        let disk: Arc<dyn Disk> = self.disk.clone();
        let opened = PartitionLog::open_on(disk, &self.dir, self.config.clone(), recovery, self.clock_ms);
        let (log, report) = opened.map_err(|e| format!("the partition does not reopen: {e}"))?;
        let listed = self.disk.list(&self.dir).map_err(|e| format!("listing the partition: {e}"))?;
        if let Some(left) = listed.iter().find(|path| is_retired_name(path)) {
            return Err(format!("a retired segment's file survives the open: {}", left.display()));
        }
        if let Some(reason) = log.read_only_reason() {
            return Err(format!("the partition reopens read-only: {reason}"));
        }
        let producers = ProducerStates::recover(&log).map(|(p, _)| p).unwrap_or_default();
        let disk: Arc<dyn Disk> = self.disk.clone();
        let groups = Coordinator::open_on(disk, self.disk.root(), u64::MAX)
            .map_err(|e| format!("the group coordinator does not reopen: {e}"))?;
        self.check_committed(&groups, after_power_loss)?;
        let offset = log.high_watermark();
        let prealloc = Preallocation::of(&log);
        self.say(format!(
            "open ({recovery:?}): log {}..{offset}, {} segments, cut {} B{}",
            log.log_start_offset(),
            report.segments,
            report.truncated_bytes,
            report.truncated_reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ));
        self.node = Some(Node {
            log,
            groups,
            producers,
            commit: GroupCommit::new(offset),
            prealloc,
            fill: None,
            active: None,
            failed: None,
            generation: 0,
            writes: Vec::new(),
            syncs: Vec::new(),
            waiters: Vec::new(),
            retired: Vec::new(),
        });
        self.opened_ms = self.clock_ms;
        for client in &mut self.clients {
            client.waiting = false;
        }
        let rate = if faults { self.storm_rate() } else { 0 };
        self.disk.set_faults(rate);
        self.check_log()
    }

    fn storm_rate(&mut self) -> u32 {
        self.rng.gen_range(50..=400)
    }

    /// A power loss: the process is gone (waiters never hear back), the disk keeps
    /// what a crash could keep, and the partition reopens as the engine would.
    fn crash(&mut self) -> Check {
        if self.verbose {
            let dir = self.dir.clone();
            let durable: Vec<String> = self
                .disk
                .durable_logs(&dir)
                .iter()
                .map(|(path, bytes)| {
                    format!("{} ({} B)", path.file_name().unwrap_or_default().to_string_lossy(), bytes.len())
                })
                .collect();
            self.say(format!("durable before the crash: {}", durable.join(", ")));
        }
        self.node = None;
        let lost = self.disk.crash().map_err(|e| format!("simulated crash: {e}"))?;
        self.outcome.crashes += 1;
        self.say(format!("CRASH: {lost} unsynced operations lost or torn"));
        let since = self.opened_ms - OPENED_SLACK_MS;
        self.open(Recovery::Unclean { written_since_ms: Some(since) }, true)
    }

    /// A clean shutdown as the shard does it (in-flight work drains, a failed
    /// partition heals first, the log closes with a producer snapshot), then an open.
    fn restart(&mut self) -> Check {
        while !self.node().writes.is_empty() || !self.node().syncs.is_empty() || self.node().fill.is_some() {
            match self.rng.gen_range(0..3) {
                0 => self.complete_write()?,
                1 => self.complete_sync()?,
                _ => self.complete_fill()?,
            }
        }
        self.heal()?;
        if self.node().failed.is_some() {
            // Still failed after a writeback error: the page cache may hold bytes the
            // disk lost, and a restarted process would trust them (Linux reports the
            // error once; see docs/SIMULATION.md). Only a power loss shows what the disk
            // holds, so that is what this restart is.
            self.say("RESTART of a failed partition: simulated as a power loss");
            return self.crash();
        }
        let node = self.node();
        let clean = node.log.close().is_ok();
        if clean {
            let end = node.log.next_offset();
            let _ = node.producers.write_snapshot(&node.log, end);
        }
        self.node = None;
        self.outcome.restarts += 1;
        self.say(format!("RESTART ({})", if clean { "clean" } else { "not clean" }));
        let recovery = if clean {
            Recovery::Clean
        } else {
            Recovery::Unclean { written_since_ms: Some(self.opened_ms - OPENED_SLACK_MS) }
        };
        self.open(recovery, false)
    }

    // ---- clients -----------------------------------------------------------------

    fn new_batch(&mut self, client: usize) -> Batch {
        let records = self.rng.gen_range(1..=8);
        let mut builder = BatchBuilder::with_capacity(1024);
        let sequence = self.clients[client].next_sequence;
        if let Some(producer_id) = self.clients[client].producer_id {
            builder.producer(producer_id, 0, sequence);
        }
        for i in 0..records {
            let value: Vec<u8> = (0..self.rng.gen_range(8..120)).map(|_| self.rng.gen()).collect();
            builder.push(self.clock_ms + i as i64, Some(format!("c{client}").as_bytes()), Some(&value));
        }
        let bytes = builder.finish();
        let crc = BatchView::parse(&bytes).expect("the builder makes valid batches").crc();
        Batch { bytes, crc, sequence, records }
    }

    /// A client sends its current batch (a new one when the last was acknowledged).
    fn append(&mut self) -> Check {
        let client = self.rng.gen_range(0..CLIENTS);
        if self.clients[client].waiting {
            return Ok(());
        }
        let batch = match self.clients[client].current.clone() {
            Some(batch) => batch,
            None => {
                let batch = self.new_batch(client);
                self.clients[client].current = Some(batch.clone());
                batch
            }
        };
        self.send(client, batch, false)
    }

    /// An idempotent client sends its last acknowledged batch again, as a producer
    /// whose acknowledgement was lost does (only before it sends anything newer).
    fn resend(&mut self) -> Check {
        let client = self.rng.gen_range(0..IDEMPOTENT_CLIENTS);
        if self.clients[client].waiting || self.clients[client].current.is_some() {
            return Ok(());
        }
        let Some((batch, _)) = self.clients[client].last_acked.clone() else { return Ok(()) };
        self.send(client, batch, true)
    }

    /// The shard's `Partition::append`, step for step, up to the submitted write.
    fn send(&mut self, client: usize, batch: Batch, resend: bool) -> Check {
        let producer = self.clients[client].producer_id;
        let mode = self.mode;
        let clock = self.clock_ms;
        let node = self.node.as_mut().expect("running");
        if let Some(producer_id) = producer {
            match node.producers.check(producer_id, 0, batch.sequence) {
                Err(error) => {
                    return Err(format!(
                        "client {client} seq {} refused: {error} (state {:?})",
                        batch.sequence, node.producers
                    ));
                }
                Ok(Sequenced::Duplicate(result)) => {
                    let generation = node.generation;
                    node.waiters.push(Waiter { client, result, generation, resend });
                    self.clients[client].waiting = true;
                    self.say(format!("client {client} seq {} duplicate of {result:?}", batch.sequence));
                    return self.resolve_waiters();
                }
                Ok(Sequenced::Append) => {}
            }
        }
        let failed = node.failed.is_some();
        let plan = match node.log.append(batch.bytes.clone(), clock) {
            Ok(plan) => plan,
            Err(AppendError::ReadOnly(reason)) => {
                self.say(format!("client {client}: refused, read-only ({reason})"));
                return Ok(());
            }
            Err(AppendError::Storage(error)) => {
                self.say(format!("client {client}: refused, storage ({error})"));
                return Ok(());
            }
            Err(other) => return Err(format!("a valid batch was refused: {other}")),
        };
        if failed {
            return Err("a failed partition took an append".into());
        }
        let result = AppendResult { base_offset: plan.base_offset, next_offset: plan.next_offset };
        if plan.sealed_file.is_some() {
            let _ = node.producers.write_snapshot(&node.log, plan.base_offset);
            node.prealloc.rolled(plan.base_offset);
        }
        if let Some(producer_id) = producer {
            node.producers.remember(producer_id, 0, batch.sequence, batch.records, result);
        }
        if let Some(sealed) = plan.sealed_file.clone() {
            let dir = node.log.dir().to_path_buf();
            node.commit.rolled(plan.base_offset, SyncTarget::File(sealed), SyncTarget::Dir(dir));
        }
        node.active = Some(plan.file.clone());
        let synced = node.commit.place(plan.next_offset, mode);
        let (segment, size) = node.log.active_extent();
        if mode != FlushMode::Os {
            node.prealloc.noted(synced);
            if let Some(fill) = node.prealloc.plan(segment, size, self.config.segment_bytes) {
                node.fill = Some(InFlightFill { fill, file: plan.file.clone(), written: false });
                self.say(format!("fill {}..{} of segment {segment} planned", fill.start, fill.end));
            }
        }
        let end = plan.position + plan.bytes.len() as u64;
        while self.node().prealloc.must_wait(segment, plan.position, end) {
            self.say(format!("append at {}..{end} waits for the fill being written", plan.position));
            self.complete_fill()?;
        }
        let node = self.node.as_mut().expect("running");
        let mut outcome =
            plan.file.write_all_at(&plan.bytes, plan.position).map_err(|e| format!("write: {e}"));
        if synced && outcome.is_ok() {
            outcome = plan.file.sync_data().map_err(|e| format!("RWF_DSYNC write: {e}"));
        }
        let generation = node.generation;
        node.writes.push(InFlightWrite { next_offset: plan.next_offset, synced, outcome });
        node.waiters.push(Waiter { client, result, generation, resend });
        self.clients[client].waiting = true;
        self.say(format!(
            "client {client} seq {}: placed {}..{}{}{}",
            batch.sequence,
            result.base_offset,
            result.next_offset,
            if synced { " (synced write)" } else { "" },
            if plan.sealed_file.is_some() { " after a roll" } else { "" }
        ));
        Ok(())
    }

    // ---- the shard's completions -------------------------------------------------

    /// A write completes (any in flight, in any order): `Partition::append` after its
    /// write, and `write_synced`.
    fn complete_write(&mut self) -> Check {
        let node = self.node.as_mut().expect("running");
        let Some(write) = take_any(&mut self.rng, &mut node.writes) else { return Ok(()) };
        node.commit.write_ended();
        if write.synced {
            node.commit.sync_ended();
        }
        self.say(format!("write to {} completes: {:?}", write.next_offset, write.outcome));
        if let Err(error) = write.outcome {
            self.fail(error);
            return Ok(());
        }
        let node = self.node();
        if write.synced {
            if node.failed.is_some() {
                return Ok(());
            }
            let durable = node.commit.synced_write_done(write.next_offset, true);
            self.kick()?;
            if let Some(offset) = durable {
                self.publish(offset)?;
            }
        } else {
            node.commit.written(write.next_offset);
            self.kick()?;
        }
        Ok(())
    }

    /// `Partition::kick_flush`: start the sync the group commit asks for, if any. The
    /// sync's effect on the disk happens now; its completion is a later step.
    fn kick(&mut self) -> Check {
        let mode = self.mode;
        let step = self.node().commit.next_sync(mode);
        match step {
            FlushStep::Idle => Ok(()),
            FlushStep::Publish(offset) => self.publish(offset),
            FlushStep::Sync { target, mut files } => {
                if let Some(active) = self.node().active.clone() {
                    files.push(SyncTarget::File(active));
                }
                let mut outcome = Ok(());
                for file in files {
                    let sync = || match &file {
                        SyncTarget::File(file) => file.sync_data(),
                        SyncTarget::Dir(dir) => self.disk.sync_dir(dir),
                    };
                    let mut synced = sync();
                    if synced.is_err() && retry_failed_sync() {
                        synced = sync();
                    }
                    if let Err(error) = synced {
                        outcome = Err(format!("sync: {error}"));
                        break;
                    }
                }
                self.say(format!("sync to {target} starts: {outcome:?}"));
                self.node().syncs.push(InFlightSync { target, outcome });
                Ok(())
            }
        }
    }

    /// A sync completes (any in flight): `Partition::sync` after its syncs.
    fn complete_sync(&mut self) -> Check {
        let node = self.node.as_mut().expect("running");
        let Some(sync) = take_any(&mut self.rng, &mut node.syncs) else { return Ok(()) };
        node.commit.sync_ended();
        self.say(format!("sync to {} completes", sync.target));
        if let Err(error) = sync.outcome {
            self.fail(error);
            return Ok(());
        }
        let node = self.node();
        let publishable = node.commit.sync_done(sync.target);
        if node.failed.is_some() {
            return Ok(());
        }
        if let Some(offset) = publishable {
            self.publish(offset)?;
        }
        self.kick()
    }

    /// `Partition::fill`: the fill's write lands (any time after it was planned: the
    /// zeros go where they go even if an append was placed there meanwhile), or, once
    /// it has, its sync.
    fn complete_fill(&mut self) -> Check {
        let node = self.node.as_mut().expect("running");
        let Some(mut fill) = node.fill.take() else { return Ok(()) };
        let (start, end) = (fill.fill.start, fill.fill.end);
        let outcome = if fill.fill.segment < node.log.log_start_offset() {
            // Retention deleted the (sealed) segment: the real write and sync go to an
            // unlinked file and succeed without effect; the simulated disk knows files
            // by name only.
            Ok(())
        } else if fill.written {
            fill.file.sync_data()
        } else {
            let zeros = vec![0u8; (end - start) as usize];
            fill.file.write_all_at(&zeros, start)
        };
        let phase = if fill.written { "sync" } else { "write" };
        self.say(format!("fill {start}..{end} {phase} completes: {outcome:?}"));
        let node = self.node();
        match outcome {
            Err(error) => {
                node.prealloc.fill_failed();
                self.fail(format!("zero-fill {phase} at {start}: {error}"));
            }
            Ok(()) if fill.written => node.prealloc.fill_synced(),
            Ok(()) => {
                node.prealloc.fill_written();
                fill.written = true;
                node.fill = Some(fill);
            }
        }
        Ok(())
    }

    /// `Partition::publish`, and the waiters it wakes.
    fn publish(&mut self, offset: i64) -> Check {
        let node = self.node();
        if node.failed.is_some() {
            return Ok(());
        }
        node.log.publish_high_watermark(offset);
        self.resolve_waiters()
    }

    /// `Partition::fail`: read-only, every waiter answered with the error.
    fn fail(&mut self, reason: String) {
        self.say(format!("partition FAILED: {reason}"));
        let node = self.node();
        node.log.set_read_only(reason.clone());
        node.failed.get_or_insert(reason);
        let waiters = std::mem::take(&mut node.waiters);
        for waiter in waiters {
            self.clients[waiter.client].waiting = false;
        }
    }

    /// Answers the waiters whose appends are durable in their generation, and fails
    /// those from an earlier generation (`Partition::wait_durable`).
    fn resolve_waiters(&mut self) -> Check {
        let node = self.node();
        let (hw, generation) = (node.log.high_watermark(), node.generation);
        let waiters = std::mem::take(&mut node.waiters);
        let mut keep = Vec::new();
        for waiter in waiters {
            if waiter.generation != generation {
                self.clients[waiter.client].waiting = false;
            } else if waiter.result.next_offset <= hw {
                self.acknowledge(waiter)?;
            } else {
                keep.push(waiter);
            }
        }
        self.node().waiters = keep;
        Ok(())
    }

    /// The client hears its append succeeded: the model learns it, and checks it.
    fn acknowledge(&mut self, waiter: Waiter) -> Check {
        let client = &mut self.clients[waiter.client];
        client.waiting = false;
        let result = waiter.result;
        let batch = if waiter.resend {
            client.last_acked.as_ref().map(|(batch, _)| batch.clone()).expect("a re-send has a batch")
        } else {
            let batch = client.current.take().expect("a waiting client has a batch");
            client.next_sequence += batch.records;
            client.last_acked = Some((batch.clone(), result));
            batch
        };
        self.outcome.acks += 1;
        self.say(format!(
            "client {} acknowledged at {}..{}",
            waiter.client, result.base_offset, result.next_offset
        ));
        if let Some(producer_id) = self.clients[waiter.client].producer_id {
            let first = *self.first_answers.entry((producer_id, batch.sequence)).or_insert(result);
            let log_start = self.node().log.log_start_offset();
            if first != result && first.base_offset >= log_start {
                return Err(format!(
                    "producer {producer_id} seq {} answered {result:?}, first acknowledged at {first:?}",
                    batch.sequence
                ));
            }
        }
        if result.base_offset < self.node().log.log_start_offset() {
            return Ok(()); // a duplicate of a batch retention deleted since
        }
        let fetched =
            self.node().log.read(result.base_offset, 1).map_err(|e| format!("acknowledged read: {e}"))?;
        let view = BatchView::parse(&fetched.bytes).map_err(|e| format!("acknowledged batch: {e}"))?;
        if view.base_offset() != result.base_offset || view.crc() != batch.crc {
            return Err(format!("acknowledged {result:?} but the log holds another batch there"));
        }
        self.acked.insert(result.base_offset, Acked { next_offset: result.next_offset, crc: batch.crc });
        Ok(())
    }

    // ---- consumer-group offsets ----------------------------------------------------

    /// A consumer commits its position (the watermark) for group `g`: Kafka's simple
    /// commit, written durably by the coordinator before it answers.
    fn commit_offset(&mut self) -> Check {
        let node = self.node();
        let offset = node.log.high_watermark();
        let code = node.groups.commit(GROUP, -1, "", &[(TOPIC.into(), 0, offset, None)]);
        let read = node.groups.committed(GROUP, TOPIC, 0).map(|(o, _)| o);
        self.say(format!("offset commit {offset}: code {code}"));
        if code == group_code::NONE {
            if read != Some(offset) {
                return Err(format!("committed {offset} but the coordinator answers {read:?}"));
            }
            self.committed = Some(offset);
            self.commits_in_doubt.clear();
        } else {
            self.commits_in_doubt.push(offset);
        }
        Ok(())
    }

    /// After an open: the committed offset is the last one acknowledged, or one whose
    /// commit failed after it (it may have reached the disk). After a power loss what
    /// is read is what the disk holds, so it becomes the one to keep; after a restart
    /// it may still be a failed commit's page-cache copy, so nothing is settled.
    fn check_committed(&mut self, groups: &Coordinator, after_power_loss: bool) -> Check {
        let read = groups.committed(GROUP, TOPIC, 0).map(|(o, _)| o);
        let possible = read == self.committed || read.is_some_and(|o| self.commits_in_doubt.contains(&o));
        if !possible {
            return Err(format!(
                "committed offset {read:?} after reopening; the last acknowledged was {:?}",
                self.committed
            ));
        }
        if after_power_loss {
            self.committed = read;
            self.commits_in_doubt.clear();
        }
        Ok(())
    }

    // ---- maintenance -------------------------------------------------------------

    /// `Partition::try_heal`.
    fn heal(&mut self) -> Check {
        let node = self.node();
        let Some(reason) = node.failed.clone() else { return Ok(()) };
        if !node.commit.is_quiet() || !node.prealloc.is_quiet() {
            return Ok(());
        }
        if node.log.read_only_reason().is_some_and(|r| r != reason) {
            return Err(format!("corruption found: {}", node.log.read_only_reason().unwrap_or_default()));
        }
        let offset = node.log.high_watermark();
        if let Err(error) = node.log.truncate_to(offset) {
            self.say(format!("heal failed: {error}"));
            return Ok(());
        }
        match ProducerStates::recover(&node.log) {
            Ok((producers, _)) => node.producers = producers,
            Err(error) => {
                node.log.set_read_only(reason);
                self.say(format!("heal failed: producer state: {error}"));
                return Ok(());
            }
        }
        let node = self.node();
        node.active = None;
        node.commit = GroupCommit::new(offset);
        node.prealloc = Preallocation::of(&node.log);
        node.failed = None;
        node.generation += 1;
        self.outcome.heals += 1;
        self.say(format!("HEALED at {offset}"));
        self.resolve_waiters()
    }

    /// `Partition::maintain`: heal, time-based roll, retention.
    fn tick(&mut self) -> Check {
        self.heal()?;
        let storm = self.storm;
        let mode = self.mode;
        let clock = self.clock_ms;
        let node = self.node();
        if !storm && node.commit.is_quiet() && node.prealloc.is_quiet() && node.failed.is_some() {
            return Err("the faults stopped and nothing is in flight, but the partition did not heal".into());
        }
        if !(node.commit.is_idle() && node.failed.is_none()) {
            return Ok(());
        }
        match node.log.roll_if_old(clock) {
            Ok(Some(sealed)) => {
                let end = node.log.next_offset();
                let _ = node.producers.write_snapshot(&node.log, end);
                node.prealloc.rolled(end);
                if mode != FlushMode::Os {
                    let dir = node.log.dir().to_path_buf();
                    node.commit.rolled(end, SyncTarget::File(sealed), SyncTarget::Dir(dir));
                }
                self.say(format!("time-based roll at {end}"));
            }
            Ok(None) => {}
            Err(error) => self.say(format!("time-based roll failed: {error}")),
        }
        let node = self.node();
        match node.log.apply_retention(clock) {
            Ok(retired) if !retired.is_empty() => {
                let deleted: Vec<i64> = retired.iter().map(|r| r.base_offset()).collect();
                node.retired.extend(retired);
                self.say(format!("retention retired {deleted:?}"));
            }
            Ok(_) => {}
            Err(error) => self.say(format!("retention failed: {error}")),
        }
        let node = self.node();
        let filling = node.prealloc.filling();
        match node.log.trim_sealed(filling) {
            Ok(0) => {}
            Ok(cut) => self.say(format!("{cut} B of zeros cut past sealed segments' data")),
            Err(error) => self.say(format!("trimming failed: {error}")),
        }
        Ok(())
    }

    /// The deletion thread unlinks one retired segment (see `engine::io::Doomed`). A
    /// failure leaves its files to the next open, as in the engine.
    fn unlink_retired(&mut self) -> Check {
        let Some(retired) =
            take_any(&mut self.rng, &mut self.node.as_mut().expect("the node runs between steps").retired)
        else {
            return Ok(());
        };
        let base = retired.base_offset();
        match retired.delete() {
            Ok(()) => self.say(format!("retired segment {base} unlinked")),
            Err(error) => self.say(format!("unlinking retired segment {base} failed: {error}")),
        }
        Ok(())
    }

    fn advance_clock(&mut self) -> Check {
        self.clock_ms += self.rng.gen_range(1..=15_000);
        self.disk.set_clock(self.clock_ms);
        Ok(())
    }

    fn toggle_storm(&mut self) -> Check {
        self.storm = !self.storm;
        let rate = if self.storm { self.storm_rate() } else { 0 };
        self.disk.set_faults(rate);
        self.say(if self.storm {
            format!("fault storm begins ({rate}‰)")
        } else {
            "fault storm ends".into()
        });
        Ok(())
    }

    // ---- the model ---------------------------------------------------------------

    /// The offset the durable bytes reach from the log start: what any crash keeps.
    fn durable_end(&mut self) -> i64 {
        let node = self.node();
        let log_start = node.log.log_start_offset();
        let dir = node.log.dir().to_path_buf();
        let mut expected = log_start;
        for (path, bytes) in self.disk.durable_logs(&dir) {
            let Some(base) = parse_log_name(&path) else { continue };
            if base < expected {
                continue;
            }
            if base != expected {
                break;
            }
            let scan = scan_batches(&bytes, 0, base, |_, _| {});
            expected = scan.next_offset;
        }
        expected
    }

    /// The watermark never passes durable bytes, and never falls below an
    /// acknowledged offset.
    fn check_watermark(&mut self) -> Check {
        let hw = self.node().log.high_watermark();
        if self.mode != FlushMode::Os {
            let durable = self.durable_end();
            if hw > durable {
                return Err(format!("high watermark {hw} is past the durable end {durable}"));
            }
        }
        if let Some((base, acked)) = self.acked.iter().next_back() {
            if acked.next_offset > hw {
                return Err(format!(
                    "acknowledged {base}..{} is above the high watermark {hw}",
                    acked.next_offset
                ));
            }
        }
        Ok(())
    }

    /// Walks the log from its start to the watermark: offsets contiguous, and every
    /// acknowledged batch still there with its bytes.
    fn check_log(&mut self) -> Check {
        let node = self.node();
        let (start, hw) = (node.log.log_start_offset(), node.log.high_watermark());
        let mut seen = BTreeMap::new();
        let mut offset = start;
        while offset < hw {
            let fetched = node.log.read(offset, 1 << 20).map_err(|e| format!("read at {offset}: {e}"))?;
            if fetched.bytes.is_empty() {
                return Err(format!("read at {offset} below the watermark {hw} returned nothing"));
            }
            let mut position = 0;
            while position < fetched.bytes.len() {
                let view =
                    BatchView::parse(&fetched.bytes[position..]).map_err(|e| format!("at {offset}: {e}"))?;
                if view.base_offset() != offset {
                    return Err(format!(
                        "offsets not contiguous: batch at {} where {offset} was next",
                        view.base_offset()
                    ));
                }
                seen.insert(offset, view.crc());
                offset = view.next_offset();
                position += view.len();
            }
        }
        for (base, acked) in self.acked.range(start..) {
            match seen.get(base) {
                Some(crc) if *crc == acked.crc => {}
                Some(_) => return Err(format!("acknowledged batch at {base} was replaced")),
                None => return Err(format!("acknowledged batch {base}..{} is gone", acked.next_offset)),
            }
        }
        Ok(())
    }

    /// Steps run so far.
    pub fn steps(&self) -> u64 {
        self.step
    }
}

/// Removes and returns an element `rng` picks: completions arrive in any order.
fn take_any<T>(rng: &mut SmallRng, items: &mut Vec<T>) -> Option<T> {
    (!items.is_empty()).then(|| items.swap_remove(rng.gen_range(0..items.len())))
}

/// Runs the scenario of `seed` for `steps` steps in `scratch`.
pub fn run(seed: u64, steps: u64, scratch: &Path, verbose: bool) -> Outcome {
    match Scenario::new(seed, scratch, verbose) {
        Ok(scenario) => scenario.run(steps),
        Err(error) => Outcome { failure: Some(format!("setup: {error}")), ..Outcome::default() },
    }
}
