//! The embedded API: open an engine on a data directory, create topics, append, read,
//! wait for data, shut down.
//!
//! [`Engine::open`] probes io_uring, locks the data directory, reads its metadata
//! (`corelog.meta`), checks the clean-shutdown marker, starts one shard thread per core
//! and waits until every shard has recovered its partitions. Each call then becomes a
//! [`Request`] on the submission ring of the shard that owns the partition
//! ([`TopicPartition::owner`]) and returns a [`Pending`] future for the reply.
//! [`Engine::via`] submits to a chosen shard instead, which forwards over the mesh when
//! it is not the owner: what a connection on that shard does.
//!
//! Data directory (layout version 1, see `docs/FORMATS.md`):
//! ```text
//! DATA/corelog.meta            "corelog-data-dir 1" + one "topic NAME PARTITIONS ID" line per topic
//! DATA/.lock                   flock held while an engine has the directory open
//! DATA/.clean-shutdown         present only between a clean shutdown and the next open
//! DATA/.opened                 when the engine last opened the directory (unclean recovery)
//! DATA/.deleting-…/            a partition directory being deleted (removed at open)
//! DATA/<topic>-<partition>/    segment files (see `segment`) and `partition.metadata`
//!                              (the topic id, see `partition_meta`)
//! ```
//!
//! Invariants: the metadata file is replaced atomically (write temp, fsync, rename,
//! fsync dir); the clean marker is written only after every shard synced and closed
//! every partition, and removed (durably) before any append is accepted.

use crate::io::{self, EventFd, ProbeError, SharedEventFd};
use crate::log::{AppendError, Fetched, LogConfig, ReadError, RecoveryReport};
use crate::partition_meta::TopicId;
use crate::query::runner::RunningQuery;
use crate::ring::{mpsc, spsc, Doorbell};
use crate::shard::{self, AppendResult, PartitionInfo, Reply, Request, Response, ShardHandle, Submission};
use crate::sync::{AtomicI64, AtomicU64, Ordering};
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// Metadata file name inside the data directory.
pub const META_FILE: &str = "corelog.meta";
/// Clean-shutdown marker file name.
pub const CLEAN_MARKER_FILE: &str = ".clean-shutdown";
/// When the engine last opened the data directory (ms since the epoch, one line):
/// after an unclean stop, only segments written since then need a full recovery scan.
pub const OPENED_FILE: &str = ".opened";
/// Margin taken off [`OPENED_FILE`]'s time against clock steps and coarse mtimes.
pub const OPENED_SLACK_MS: i64 = 60_000;
/// Lock file name.
pub const LOCK_FILE: &str = ".lock";
/// Data directory layout version written to the metadata file.
pub const LAYOUT_VERSION: u32 = 1;
/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Default bound on one Kafka request frame (`--max-request-bytes`).
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 100 << 20;
/// Most partitions per topic.
pub const PARTITIONS_MAX: u32 = 10_000;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushMode {
    /// After an fdatasync that covers it; concurrent appends share syncs.
    #[default]
    Group,
    /// After an fdatasync of its own.
    Always,
    /// After the write reaches the page cache.
    Os,
}

impl std::str::FromStr for FlushMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "group" => Ok(Self::Group),
            "always" => Ok(Self::Always),
            "os" => Ok(Self::Os),
            other => Err(format!("unknown flush mode {other:?} (group, always, os)")),
        }
    }
}

impl fmt::Display for FlushMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Group => "group",
            Self::Always => "always",
            Self::Os => "os",
        })
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Number of shard threads.
    pub shards: usize,
    /// Durability of acknowledged appends.
    pub flush: FlushMode,
    /// Per-partition log settings.
    pub log: LogConfig,
    /// Pin shard `i` to core `i`.
    pub pin_threads: bool,
    /// io_uring submission queue entries per shard.
    pub uring_entries: u32,
    /// How often shards run time-based roll and retention.
    pub maintenance_interval_ms: u64,
    /// Where every shard accepts Kafka-protocol connections (SO_REUSEPORT); `None`
    /// for a purely embedded engine.
    pub listen: Option<std::net::SocketAddr>,
    /// Largest Kafka request frame accepted.
    pub max_request_bytes: usize,
    /// Partitions of topics created on first use (Metadata with auto-creation,
    /// Produce); `None` disables auto-creation.
    pub auto_create_partitions: Option<u32>,
    /// Retention never deletes a segment a lander has not landed yet (see
    /// [`crate::landed`]).
    pub retain_until_landed: bool,
    /// Stream queries run behind the appends of their source topics (see
    /// [`crate::query`]).
    pub queries: Vec<crate::query::QueryDef>,
    /// Request bytes all Kafka connections together may hold in memory (Kafka's
    /// `queued.max.request.bytes`, Redpanda's per-shard memory semaphore), and
    /// separately the response bytes they may hold: a connection waits for budget
    /// instead of allocating.
    pub memory_budget_bytes: usize,
    /// Kafka connections open at once; more are closed on accept (with a log line).
    pub max_connections: usize,
    /// Partitions the broker holds at most (each keeps up to
    /// [`FDS_PER_PARTITION`] descriptors and a mapping per segment); topic creation
    /// beyond it is refused. Also bounded by the process's descriptor limit.
    pub max_partitions: u32,
    /// How long a consumer group's committed offsets are kept once the group has no
    /// members and commits nothing (Kafka's `offsets.retention.minutes`).
    pub offsets_retention_ms: u64,
}

/// Default [`EngineConfig::offsets_retention_ms`] (`--offsets-retention`): 7 days,
/// Kafka's default.
pub const OFFSETS_RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3_600_000;
/// Default [`EngineConfig::memory_budget_bytes`] (`--memory-budget-bytes`).
pub const MEMORY_BUDGET_BYTES_DEFAULT: usize = 512 << 20;
/// Default [`EngineConfig::max_connections`] (`--max-connections`).
pub const MAX_CONNECTIONS_DEFAULT: usize = 4096;
/// Default [`EngineConfig::max_partitions`] (`--max-partitions`).
pub const MAX_PARTITIONS_DEFAULT: u32 = 10_000;
/// File descriptors one open partition may hold: the active segment's log (and its
/// io_uring twin) and its two index files.
pub const FDS_PER_PARTITION: u64 = 4;
/// Descriptors kept for everything but partitions and connections (listeners,
/// eventfds, io_uring rings, metadata and group files, the page-cache helper).
pub const FDS_RESERVED: u64 = 256;

impl EngineConfig {
    /// Defaults for `data_dir`: one shard per core, group flush.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            flush: FlushMode::Group,
            log: LogConfig::default(),
            pin_threads: true,
            uring_entries: 256,
            maintenance_interval_ms: 1000,
            listen: None,
            max_request_bytes: MAX_REQUEST_BYTES_DEFAULT,
            auto_create_partitions: Some(1),
            retain_until_landed: false,
            queries: Vec::new(),
            memory_budget_bytes: MEMORY_BUDGET_BYTES_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            max_partitions: MAX_PARTITIONS_DEFAULT,
            offsets_retention_ms: OFFSETS_RETENTION_MS_DEFAULT,
        }
    }
}

/// A topic name and partition number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: u32,
}

impl TopicPartition {
    /// A topic-partition.
    pub fn new(topic: &str, partition: u32) -> Self {
        Self { topic: topic.into(), partition }
    }
    /// Directory name: `<topic>-<partition>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
    /// The shard that owns this partition among `shards`: FNV-1a of the topic plus
    /// the partition number, so one topic's partitions spread round-robin. Stable
    /// across restarts with the same shard count.
    pub fn owner(&self, shards: usize) -> usize {
        assert!(shards > 0);
        let hash = self
            .topic
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        (hash.wrapping_add(u64::from(self.partition)) % shards as u64) as usize
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Errors of the embedded API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The kernel cannot run the engine.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// No such topic-partition.
    #[error("unknown topic-partition {0}")]
    UnknownPartition(TopicPartition),
    /// The topic exists already.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// The topic name or partition count is invalid.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// The append was refused; nothing was written.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// The read was refused.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A disk operation failed; the partition is read-only until restart.
    #[error("storage error: {0}")]
    Storage(String),
    /// The data directory or its metadata is unusable.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An idempotent producer's batch does not follow its previous one (a gap).
    #[error("out-of-order sequence {found} from producer {producer_id} (expected {expected})")]
    OutOfOrderSequence {
        /// The producer.
        producer_id: i64,
        /// The next sequence the partition expects.
        expected: i32,
        /// The batch's base sequence.
        found: i32,
    },
    /// An idempotent producer's epoch is older than one already seen.
    #[error("producer {producer_id} epoch {found} is older than {current}")]
    InvalidProducerEpoch {
        /// The producer.
        producer_id: i64,
        /// The newest epoch seen.
        current: i16,
        /// The batch's epoch.
        found: i16,
    },
    /// A stream query cannot run as declared.
    #[error("query {query}: {reason}")]
    Query {
        /// The query.
        query: String,
        /// What is wrong.
        reason: String,
    },
    /// A shard could not listen for Kafka connections.
    #[error("cannot listen on {0}")]
    Listen(String),
    /// The engine is shutting down or a shard stopped.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// A query's sink holds records the query did not write.
    #[error("untrusted query sink: {0}")]
    UntrustedSink(String),
    /// Creating the topic would pass the broker's partition limit.
    #[error("the broker holds {held} partitions; {asked} more would pass its limit of {limit}")]
    PartitionLimit {
        /// Partitions held now.
        held: u64,
        /// Partitions asked for.
        asked: u32,
        /// The limit.
        limit: u32,
    },
}

static FSYNC_COUNT: AtomicU64 = AtomicU64::new(0);
static FSYNC_NANOS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn record_fsync(elapsed: std::time::Duration) {
    metrics::histogram!("corelog_fsync_seconds").record(elapsed.as_secs_f64());
    FSYNC_COUNT.fetch_add(1, Ordering::Relaxed);
    FSYNC_NANOS.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
}

static HEALS: AtomicU64 = AtomicU64::new(0);

/// A failed partition was cut back to its durable end and takes appends again.
pub(crate) fn record_heal() {
    metrics::counter!("corelog_partition_heals_total").increment(1);
    HEALS.fetch_add(1, Ordering::Relaxed);
}

/// Process-wide count of partitions healed after a storage failure.
pub fn heal_count() -> u64 {
    HEALS.load(Ordering::Relaxed)
}

static SYNCED_WRITES: AtomicU64 = AtomicU64::new(0);

/// An append written with `RWF_DSYNC` (write and sync in one io_uring operation).
pub(crate) fn record_synced_write() {
    metrics::counter!("corelog_synced_writes_total").increment(1);
    SYNCED_WRITES.fetch_add(1, Ordering::Relaxed);
}

/// Process-wide count of appends made durable by a synced write of their own (the
/// group-commit path taken when an append finds its partition fully durable).
pub fn synced_write_count() -> u64 {
    SYNCED_WRITES.load(Ordering::Relaxed)
}

/// Process-wide counters: (group-commit syncs completed, total time in them).
pub fn fsync_stats() -> (u64, std::time::Duration) {
    let count = FSYNC_COUNT.load(Ordering::Relaxed);
    (count, std::time::Duration::from_nanos(FSYNC_NANOS.load(Ordering::Relaxed)))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A reply on its way; `.await` it or call [`Pending::wait`] from a plain thread.
#[must_use = "a pending reply does nothing unless awaited"]
pub struct Pending<T> {
    receiver: oneshot::Receiver<Response>,
    map: fn(Reply) -> T,
}

impl<T> fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    fn finish(
        map: fn(Reply) -> T,
        received: Result<Response, oneshot::error::RecvError>,
    ) -> Result<T, EngineError> {
        received.map_err(|_| EngineError::ShuttingDown)?.map(map)
    }

    /// Blocks the calling thread (not an async task) until the reply arrives.
    pub fn wait(self) -> Result<T, EngineError> {
        Self::finish(self.map, self.receiver.blocking_recv())
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, EngineError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let map = self.map;
        Pin::new(&mut self.receiver).poll(cx).map(|received| Self::finish(map, received))
    }
}

macro_rules! reply_as {
    ($variant:ident) => {
        |reply| match reply {
            Reply::$variant(value) => value,
            other => unreachable!("shard answered {other:?} to a {} request", stringify!($variant)),
        }
    };
}

/// An open engine. Dropping it shuts it down cleanly.
#[derive(Debug)]
pub struct Engine {
    config: Arc<EngineConfig>,
    handles: Arc<[ShardHandle]>,
    threads: Vec<std::thread::JoinHandle<()>>,
    catalog: Arc<Catalog>,
    recovery: Vec<(TopicPartition, RecoveryReport)>,
    queries: Arc<[Arc<RunningQuery>]>,
    _lock: DirLock,
}

impl Engine {
    /// Opens (creating if needed) the data directory and starts the shards.
    pub fn open(config: EngineConfig) -> Result<Self, EngineError> {
        io::probe()?;
        assert!(config.shards > 0, "at least one shard");
        let data_dir = config.data_dir.clone();
        let dir_error = |reason: String| EngineError::DataDir { path: data_dir.clone(), reason };
        std::fs::create_dir_all(&data_dir).map_err(|e| dir_error(e.to_string()))?;
        let lock = DirLock::acquire(&data_dir.join(LOCK_FILE)).map_err(dir_error)?;
        let stored = read_meta(&data_dir.join(META_FILE)).map_err(dir_error)?;
        // Topics written before ids existed get one now (their directories adopt it).
        let unnamed = stored.values().any(|(_, id)| id.is_none());
        let topics: BTreeMap<String, TopicEntry> = stored
            .into_iter()
            .map(|(name, (partitions, id))| {
                (name, TopicEntry { partitions, id: id.unwrap_or_else(TopicId::random) })
            })
            .collect();
        if unnamed {
            write_meta(&data_dir, &topics).map_err(dir_error)?;
        }
        let marker = data_dir.join(CLEAN_MARKER_FILE);
        let clean = marker.exists();
        if clean {
            std::fs::remove_file(&marker).map_err(|e| dir_error(e.to_string()))?;
        }
        let recovery = if clean {
            crate::log::Recovery::Clean
        } else {
            // Segments last written before the stopped run opened the directory were
            // durable then (that open recovered and synced them, or a clean close did).
            let opened = std::fs::read_to_string(data_dir.join(OPENED_FILE)).ok();
            let since = opened.and_then(|text| text.trim().parse::<i64>().ok());
            crate::log::Recovery::Unclean { written_since_ms: since.map(|ms| ms - OPENED_SLACK_MS) }
        };
        write_durably(&data_dir, OPENED_FILE, format!("{}\n", now_ms()).as_bytes())
            .map_err(|e| dir_error(format!("{OPENED_FILE}: {e}")))?;
        remove_orphan_partitions(&data_dir, &topics).map_err(|e| dir_error(format!("orphans: {e}")))?;
        claim_partition_dirs(&data_dir, &topics).map_err(dir_error)?;
        crate::segment::sync_dir(&data_dir).map_err(|e| dir_error(e.to_string()))?;

        let shards = config.shards;
        let partition_limit = partition_limit(&config);
        // A frame being joined from its chunks is counted twice for a moment.
        let memory_budget = config.memory_budget_bytes.max(2 * config.max_request_bytes);
        let catalog = Arc::new(
            Catalog::new(
                data_dir.clone(),
                topics.clone(),
                partition_limit,
                memory_budget,
                config.offsets_retention_ms,
            )
            .map_err(|e| dir_error(format!("consumer groups: {e}")))?,
        );
        let queries = prepare_queries(&catalog, &config)?;
        let topics = catalog.topics();
        let config = Arc::new(config);
        let mut consumers = Vec::with_capacity(shards);
        let mut handles = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (producer, consumer) = mpsc::channel(shard::SUBMISSION_RING_ENTRIES);
            let eventfd = EventFd::new().map_err(|e| dir_error(format!("eventfd: {e}")))?;
            let eventfd = SharedEventFd(Arc::new(eventfd));
            handles.push(ShardHandle { doorbell: Doorbell::new(), eventfd, submit: producer });
            consumers.push(consumer);
        }
        let handles: Arc<[ShardHandle]> = handles.into();
        let mut mesh_out: Vec<Vec<_>> = (0..shards).map(|_| (0..shards).map(|_| None).collect()).collect();
        let mut mesh_in: Vec<Vec<_>> = (0..shards).map(|_| (0..shards).map(|_| None).collect()).collect();
        for (from, outs) in mesh_out.iter_mut().enumerate() {
            for (to, out) in outs.iter_mut().enumerate().filter(|(to, _)| *to != from) {
                let (producer, consumer) = spsc::channel(shard::MESH_RING_ENTRIES);
                *out = Some(producer);
                mesh_in[to][from] = Some(consumer);
            }
        }
        let mut threads = Vec::with_capacity(shards);
        let mut ready = Vec::with_capacity(shards);
        for (id, ((submissions, mesh_out), mesh_in)) in
            consumers.into_iter().zip(mesh_out).zip(mesh_in).enumerate()
        {
            let partitions = topics
                .iter()
                .flat_map(|(topic, &count)| (0..count).map(move |p| TopicPartition::new(topic, p)))
                .filter(|tp| tp.owner(shards) == id)
                .collect();
            let setup = shard::ShardSetup {
                id,
                config: config.clone(),
                catalog: catalog.clone(),
                handles: handles.clone(),
                submissions,
                mesh_out,
                mesh_in,
                partitions,
                recovery,
                queries: queries.clone(),
            };
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("corelog-shard-{id}"))
                .spawn(move || shard::run(setup, ready_tx))
                .map_err(|e| dir_error(format!("spawning shard thread: {e}")))?;
            threads.push(thread);
            ready.push(ready_rx);
        }
        let mut engine =
            Self { config, handles, threads, catalog, recovery: Vec::new(), queries, _lock: lock };
        for ready_rx in ready {
            match ready_rx.recv() {
                Ok(Ok(reports)) => engine.recovery.extend(reports),
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(EngineError::ShuttingDown),
            }
        }
        engine.recovery.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(engine)
    }

    /// The settings in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// What recovery found in each partition when the engine opened.
    pub fn recovery_reports(&self) -> &[(TopicPartition, RecoveryReport)] {
        &self.recovery
    }

    /// The deny-list slot of query `name` (for a program that loads the list itself,
    /// e.g. from the Parquet file `corelog batch rings` writes).
    pub fn deny_list(&self, name: &str) -> Option<Arc<crate::query::deny::DenyList>> {
        self.queries.iter().find(|q| q.def.name == name).map(|q| q.deny.clone())
    }

    /// How far query `name` got in each source partition: every event below the
    /// offset is processed and its outputs are durable.
    pub fn query_progress(&self, name: &str) -> Option<Vec<i64>> {
        let query = self.queries.iter().find(|q| q.def.name == name)?;
        Some(query.processed.iter().map(|p| p.load(Ordering::Acquire)).collect())
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.handles.len()
    }

    /// Topics and their partition counts.
    pub fn topics(&self) -> BTreeMap<String, u32> {
        self.catalog.topics()
    }

    /// Partition count of `topic`, if it exists.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.catalog.partition_count(topic)
    }

    /// Creates a topic and opens its partitions on their owners.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<(), EngineError> {
        self.catalog.add(name, partitions)?;
        self.on_every_partition(name, partitions, Request::CreatePartition)
    }

    /// Deletes a topic: forgets it durably, then closes its partitions and deletes
    /// their files. Readers holding fetched bytes keep them (the mappings outlive the
    /// files).
    pub fn delete_topic(&self, name: &str) -> Result<(), EngineError> {
        let partitions = self.catalog.remove(name)?;
        self.on_every_partition(name, partitions, Request::DeletePartition)
    }

    /// Sends `request(tp)` for each partition of `topic` to its owner, concurrently,
    /// and waits for all of them.
    fn on_every_partition(
        &self,
        topic: &str,
        partitions: u32,
        request: fn(TopicPartition) -> Request,
    ) -> Result<(), EngineError> {
        let pending: Vec<_> = (0..partitions)
            .map(|p| {
                let tp = TopicPartition::new(topic, p);
                self.submit(tp.owner(self.shard_count()), request(tp), |_| ())
            })
            .collect();
        pending.into_iter().try_for_each(Pending::wait)
    }

    fn submit<T>(&self, shard: usize, request: Request, map: fn(Reply) -> T) -> Pending<T> {
        let (reply, receiver) = oneshot::channel();
        let handle = &self.handles[shard];
        let mut submission = Submission { request, reply };
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            match handle.submit.push(submission) {
                Ok(()) => break,
                Err(back) => {
                    submission = back;
                    handle.wake();
                    backoff.snooze();
                }
            }
        }
        handle.wake();
        Pending { receiver, map }
    }

    fn owner(&self, tp: &TopicPartition) -> usize {
        tp.owner(self.shard_count())
    }

    /// A view of the engine that enters every request through `shard`, which forwards
    /// it over the mesh when another shard owns the partition.
    pub fn via(&self, shard: usize) -> Via<'_> {
        assert!(shard < self.shard_count(), "shard {shard} out of range");
        Via { engine: self, shard }
    }

    /// Appends one RecordBatch v2; resolves once durable per the flush mode.
    pub fn append(&self, topic: &str, partition: u32, batch: BytesMut) -> Pending<AppendResult> {
        let tp = TopicPartition::new(topic, partition);
        self.via(self.owner(&tp)).append(topic, partition, batch)
    }

    /// Reads whole batches from `offset` (zero-copy, below the high watermark).
    pub fn read(&self, topic: &str, partition: u32, offset: i64, max_bytes: usize) -> Pending<Fetched> {
        let tp = TopicPartition::new(topic, partition);
        self.via(self.owner(&tp)).read(topic, partition, offset, max_bytes)
    }

    /// Resolves with the high watermark once it is past `offset`, or after `timeout_ms`.
    pub fn wait_for(&self, topic: &str, partition: u32, offset: i64, timeout_ms: u64) -> Pending<i64> {
        let tp = TopicPartition::new(topic, partition);
        self.submit(self.owner(&tp), Request::WaitFor { tp, offset, timeout_ms }, reply_as!(Waited))
    }

    /// First offset whose timestamp is at or after `timestamp`, with that timestamp.
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Pending<Option<(i64, i64)>> {
        let tp = TopicPartition::new(topic, partition);
        self.submit(self.owner(&tp), Request::OffsetForTimestamp { tp, timestamp }, reply_as!(Offset))
    }

    /// Log start, high watermark and log end of a partition.
    pub fn partition_info(&self, topic: &str, partition: u32) -> Pending<PartitionInfo> {
        let tp = TopicPartition::new(topic, partition);
        self.submit(self.owner(&tp), Request::Info(tp), reply_as!(Info))
    }

    /// Syncs and closes every partition, stops the shards and leaves the clean marker.
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), EngineError> {
        if self.threads.is_empty() {
            return Ok(());
        }
        let pending: Vec<_> =
            (0..self.shard_count()).map(|id| self.submit(id, Request::Shutdown, |_| ())).collect();
        let all_closed = pending.into_iter().map(Pending::wait).all(|r| r.is_ok());
        let all_joined = self.threads.drain(..).map(|t| t.join()).all(|r| r.is_ok());
        if !(all_closed && all_joined) {
            return Err(EngineError::ShuttingDown);
        }
        let data_dir = &self.config.data_dir;
        let dir_error = |reason: String| EngineError::DataDir { path: data_dir.clone(), reason };
        std::fs::write(data_dir.join(CLEAN_MARKER_FILE), b"clean\n").map_err(|e| dir_error(e.to_string()))?;
        crate::segment::sync_dir(data_dir).map_err(|e| dir_error(e.to_string()))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            tracing::error!("engine did not shut down cleanly: {error}");
        }
    }
}

/// Requests entering through one chosen shard (see [`Engine::via`]).
#[derive(Debug, Clone, Copy)]
pub struct Via<'a> {
    engine: &'a Engine,
    shard: usize,
}

impl Via<'_> {
    /// As [`Engine::append`], entering through this shard.
    pub fn append(&self, topic: &str, partition: u32, batch: BytesMut) -> Pending<AppendResult> {
        let tp = TopicPartition::new(topic, partition);
        let ack = crate::shard::AckLevel::Durable;
        self.engine.submit(self.shard, Request::Append { tp, batch, ack }, reply_as!(Appended))
    }

    /// As [`Engine::read`], entering through this shard.
    pub fn read(&self, topic: &str, partition: u32, offset: i64, max_bytes: usize) -> Pending<Fetched> {
        let tp = TopicPartition::new(topic, partition);
        self.engine.submit(
            self.shard,
            Request::Read { tp, offset, max_bytes, strict: false },
            reply_as!(Read),
        )
    }
}

/// The topics of a data directory, shared by the engine handle and every shard. This is
/// control-plane state behind a mutex; the data path never takes it.
#[derive(Debug)]
pub(crate) struct Catalog {
    data_dir: PathBuf,
    topics: Mutex<BTreeMap<String, TopicEntry>>,
    /// Most partitions of all topics together (see [`partition_limit`]).
    partition_limit: u32,
    /// The broker-wide budget of request bytes in memory.
    pub(crate) memory: Arc<tokio::sync::Semaphore>,
    /// The broker-wide budget of response bytes in memory (apart from requests', so
    /// clients that do not read their responses never stop others' requests).
    pub(crate) response_memory: Arc<tokio::sync::Semaphore>,
    /// Kafka connections open now.
    pub(crate) connections: std::sync::atomic::AtomicUsize,
    next_producer_id: AtomicI64,
    /// Consumer groups and their committed offsets.
    pub(crate) groups: crate::groups::Coordinator,
}

impl Catalog {
    fn new(
        data_dir: PathBuf,
        topics: BTreeMap<String, TopicEntry>,
        partition_limit: u32,
        memory_budget: usize,
        offsets_retention_ms: u64,
    ) -> std::io::Result<Self> {
        // Producer ids only need to be unique across restarts: start from the clock
        // (ms × 256), which leaves 256 ids per millisecond of uptime before overlap.
        let next_producer_id = AtomicI64::new(now_ms().max(1) << 8);
        let groups = crate::groups::Coordinator::open(&data_dir, offsets_retention_ms)?;
        // Offsets committed for a topic that no longer exists (its delete was cut short
        // before they were dropped) must not apply to a topic created under its name.
        groups.retain_topics(|topic| topics.contains_key(topic))?;
        Ok(Self {
            data_dir,
            topics: Mutex::new(topics),
            partition_limit,
            memory: Arc::new(tokio::sync::Semaphore::new(memory_budget)),
            response_memory: Arc::new(tokio::sync::Semaphore::new(memory_budget)),
            connections: std::sync::atomic::AtomicUsize::new(0),
            next_producer_id,
            groups,
        })
    }

    /// A producer id no other producer of this data directory got.
    pub(crate) fn allocate_producer_id(&self) -> i64 {
        self.next_producer_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Forgets a topic durably; returns its partition count.
    pub(crate) fn remove(&self, name: &str) -> Result<u32, EngineError> {
        let mut topics = self.topics.lock().expect("topic map lock");
        let Some(&TopicEntry { partitions, .. }) = topics.get(name) else {
            return Err(EngineError::UnknownPartition(TopicPartition::new(name, 0)));
        };
        let mut next = topics.clone();
        next.remove(name);
        write_meta(&self.data_dir, &next)
            .map_err(|reason| EngineError::DataDir { path: self.data_dir.clone(), reason })?;
        *topics = next;
        // As Kafka does: committed offsets of a deleted topic go with it (a failure here
        // is retried at the next open).
        if let Err(error) = self.groups.retain_topics(|topic| topic != name) {
            tracing::warn!(topic = name, "dropping committed offsets of the deleted topic: {error}");
        }
        Ok(partitions)
    }

    /// All topics and their partition counts.
    pub(crate) fn topics(&self) -> BTreeMap<String, u32> {
        let topics = self.topics.lock().expect("topic map lock");
        topics.iter().map(|(name, entry)| (name.clone(), entry.partitions)).collect()
    }

    /// Partition count of `topic`, if it exists.
    pub(crate) fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.lock().expect("topic map lock").get(topic).map(|entry| entry.partitions)
    }

    /// The id of `topic`'s current incarnation, if it exists.
    pub(crate) fn topic_id(&self, topic: &str) -> Option<TopicId> {
        self.topics.lock().expect("topic map lock").get(topic).map(|entry| entry.id)
    }

    /// Records a new topic durably in the metadata file. The caller then opens its
    /// partitions on their owners.
    pub(crate) fn add(&self, name: &str, partitions: u32) -> Result<(), EngineError> {
        validate_topic(name, partitions)?;
        let mut topics = self.topics.lock().expect("topic map lock");
        if topics.contains_key(name) {
            return Err(EngineError::TopicExists(name.to_string()));
        }
        let held: u64 = topics.values().map(|entry| u64::from(entry.partitions)).sum();
        if held + u64::from(partitions) > u64::from(self.partition_limit) {
            return Err(EngineError::PartitionLimit { held, asked: partitions, limit: self.partition_limit });
        }
        let mut next = topics.clone();
        next.insert(name.to_string(), TopicEntry { partitions, id: TopicId::random() });
        write_meta(&self.data_dir, &next)
            .map_err(|reason| EngineError::DataDir { path: self.data_dir.clone(), reason })?;
        *topics = next;
        Ok(())
    }
}

/// The most partitions this engine may hold: [`EngineConfig::max_partitions`], lowered
/// to what the process's descriptor limit leaves after connections and
/// [`FDS_RESERVED`] (the soft limit is first raised to the hard one).
fn partition_limit(config: &EngineConfig) -> u32 {
    let descriptors = crate::io::raise_descriptor_limit();
    let connections = if config.listen.is_some() { config.max_connections as u64 } else { 0 };
    let by_descriptors = descriptors.saturating_sub(FDS_RESERVED + connections) / FDS_PER_PARTITION;
    let limit = u64::from(config.max_partitions).min(by_descriptors);
    if limit < u64::from(config.max_partitions) {
        tracing::warn!(
            descriptors,
            "at most {limit} partitions: the descriptor limit leaves no room for --max-partitions {}",
            config.max_partitions
        );
    }
    limit as u32
}

/// Checks the queries against the catalog and creates what they need: the source
/// topic (with the auto-create partition count) when missing, and `<query>.agg` and
/// `<query>.decisions` with as many partitions as the source, plus a missing
/// deny-list topic (one partition).
fn prepare_queries(
    catalog: &Catalog,
    config: &EngineConfig,
) -> Result<Arc<[Arc<RunningQuery>]>, EngineError> {
    let mut running = Vec::with_capacity(config.queries.len());
    for def in &config.queries {
        let error = |reason: String| EngineError::Query { query: def.name.clone(), reason };
        let partitions = match catalog.partition_count(&def.source) {
            Some(count) => count,
            None => {
                let count = config.auto_create_partitions.unwrap_or(1);
                catalog.add(&def.source, count)?;
                count
            }
        };
        for sink in [def.agg_topic(), def.decisions_topic()] {
            match catalog.partition_count(&sink) {
                None => catalog.add(&sink, partitions)?,
                Some(count) if count == partitions => {}
                Some(count) => {
                    return Err(error(format!(
                        "{sink} has {count} partitions, its source {} has {partitions}: delete {sink} or \
                         recreate it with {partitions}",
                        def.source
                    )))
                }
            }
        }
        if let Some(crate::query::DenySource::Topic(topic)) = &def.deny_list {
            if catalog.partition_count(topic).is_none() {
                catalog.add(topic, 1)?;
            }
        }
        let def = Arc::new(def.clone());
        let processed = (0..partitions).map(|_| AtomicI64::new(0)).collect();
        running.push(Arc::new(RunningQuery { def, deny: Arc::default(), processed }));
    }
    Ok(running.into())
}

fn validate_topic(name: &str, partitions: u32) -> Result<(), EngineError> {
    let legal = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX || !legal || name == "." || name == ".." {
        return Err(EngineError::InvalidTopic(format!(
            "{name:?}: 1..={TOPIC_NAME_BYTES_MAX} characters of [a-zA-Z0-9._-]"
        )));
    }
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return Err(EngineError::InvalidTopic(format!(
            "{name}: {partitions} partitions (1..={PARTITIONS_MAX})"
        )));
    }
    Ok(())
}

/// What the catalog keeps of one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TopicEntry {
    /// Partition count.
    partitions: u32,
    /// This incarnation's id (a topic created again under the name gets a new one).
    id: TopicId,
}

/// Reads `corelog.meta`: each topic's partition count and id (`None` for a topic
/// written before ids existed).
fn read_meta(path: &Path) -> Result<BTreeMap<String, (u32, Option<TopicId>)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header != format!("corelog-data-dir {LAYOUT_VERSION}") {
        return Err(format!("{}: unsupported header {header:?}", path.display()));
    }
    let mut topics = BTreeMap::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, count, id) = match fields.as_slice() {
            ["topic", name, count] => (name, count, None),
            ["topic", name, count, id] => (name, count, Some(id.parse::<TopicId>()?)),
            _ => return Err(format!("{}: unreadable line {line:?}", path.display())),
        };
        let count: u32 = count.parse().map_err(|_| format!("bad partition count in {line:?}"))?;
        validate_topic(name, count).map_err(|e| e.to_string())?;
        if topics.insert(name.to_string(), (count, id)).is_some() {
            return Err(format!("{}: topic {name} listed twice", path.display()));
        }
    }
    Ok(topics)
}

/// Writes `name` in `dir` atomically and durably (temporary file, fsync, rename, fsync
/// of the directory).
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Parses a partition directory name `<topic>-<partition>`.
pub fn parse_partition_dir(name: &str) -> Option<TopicPartition> {
    let (topic, partition) = name.rsplit_once('-')?;
    let partition: u32 = partition.parse().ok().filter(|_| partition.bytes().all(|b| b.is_ascii_digit()))?;
    validate_topic(topic, 1).ok()?;
    Some(TopicPartition::new(topic, partition))
}

/// Deletes a partition's directory and everything keyed by it beside (query
/// checkpoints), durably. The directory is first renamed to a name no partition has, so a
/// crash part-way leaves either the whole partition or an orphan the next open removes.
pub(crate) fn remove_partition_files(data_dir: &Path, tp: &TopicPartition) -> std::io::Result<()> {
    let dir = data_dir.join(tp.dir_name());
    if dir.exists() {
        let doomed = data_dir.join(format!(".deleting-{}-{}", tp.dir_name(), now_ms()));
        std::fs::rename(&dir, &doomed)?;
        std::fs::File::open(data_dir)?.sync_all()?;
        std::fs::remove_dir_all(&doomed)?;
    }
    if let Ok(queries) = std::fs::read_dir(data_dir.join(crate::query::runner::QUERIES_DIR)) {
        for query in queries.flatten() {
            let checkpoint = query.path().join(format!("{}.json", tp.dir_name()));
            match std::fs::remove_file(&checkpoint) {
                Ok(()) => std::fs::File::open(query.path())?.sync_all()?,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
    }
    std::fs::File::open(data_dir)?.sync_all()
}

/// Makes every partition directory the metadata names carry its topic's id: a missing
/// directory is created with it, a directory from before ids existed adopts it, and a
/// directory carrying another id (an earlier topic of the same name whose delete a
/// crash cut short) is deleted and created afresh: it is not this topic's data.
pub(crate) fn claim_partition_dirs(
    data_dir: &Path,
    topics: &BTreeMap<String, TopicEntry>,
) -> Result<(), String> {
    for (topic, entry) in topics {
        for partition in 0..entry.partitions {
            let tp = TopicPartition::new(topic, partition);
            claim_partition_dir(data_dir, &tp, entry.id)?;
        }
    }
    Ok(())
}

/// [`claim_partition_dirs`] for one partition.
pub(crate) fn claim_partition_dir(data_dir: &Path, tp: &TopicPartition, id: TopicId) -> Result<(), String> {
    let dir = data_dir.join(tp.dir_name());
    let error = |e: std::io::Error| format!("{}: {e}", dir.display());
    match crate::partition_meta::read(&dir)? {
        Some(found) if found == id => return Ok(()),
        Some(found) => {
            tracing::warn!(partition = %tp, %found, topic_id = %id, "removing the files of an earlier topic of the same name");
            remove_partition_files(data_dir, tp).map_err(error)?;
        }
        None => {}
    }
    let created = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(error)?;
    crate::partition_meta::write(&dir, id).map_err(error)?;
    if created {
        std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(error)?;
    }
    Ok(())
}

/// Removes partition directories the metadata does not name (a topic delete cut short,
/// or partitions of a topic that no longer exists) and half-deleted ones.
fn remove_orphan_partitions(data_dir: &Path, topics: &BTreeMap<String, TopicEntry>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(data_dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name.starts_with(".deleting-") {
            std::fs::remove_dir_all(entry.path())?;
            continue;
        }
        let Some(tp) = parse_partition_dir(&name) else { continue };
        if topics.get(&*tp.topic).is_none_or(|entry| tp.partition >= entry.partitions) {
            tracing::warn!(partition = %tp, "removing the files of a partition the metadata does not name");
            remove_partition_files(data_dir, &tp)?;
        }
    }
    Ok(())
}

fn write_meta(data_dir: &Path, topics: &BTreeMap<String, TopicEntry>) -> Result<(), String> {
    use std::io::Write;
    let mut text = format!("corelog-data-dir {LAYOUT_VERSION}\n");
    for (name, entry) in topics {
        text.push_str(&format!("topic {name} {} {}\n", entry.partitions, entry.id));
    }
    let temp = data_dir.join(format!("{META_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, data_dir.join(META_FILE))?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| format!("writing metadata: {e}"))
}

/// An exclusive `flock` on the data directory's lock file, released on drop (and by
/// the kernel when the process dies).
#[derive(Debug)]
struct DirLock(#[allow(dead_code)] std::fs::File);

impl DirLock {
    fn acquire(path: &Path) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.try_lock()
            .map_err(|e| format!("{} is in use by another corelog process ({e})", path.display()))?;
        Ok(Self(file))
    }
}
