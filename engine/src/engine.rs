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
//! The data directory and its topics are the [`crate::catalog`]'s; this module wires
//! the shards, their rings and the services that run on them (the Kafka listener, the
//! stream queries), and is the only module that knows all of them.
//!
//! Invariants: the clean marker is written only after every shard synced and closed
//! every partition, and removed (durably) before any append is accepted.

use crate::catalog::{
    self, Catalog, TopicEntry, CLEAN_MARKER_FILE, LOCK_FILE, META_FILE, OPENED_FILE, OPENED_SLACK_MS,
};
use crate::config::{EngineConfig, FDS_PER_PARTITION, FDS_RESERVED};
use crate::error::EngineError;
use crate::io::{self, EventFd, SharedEventFd};
use crate::log::{Fetched, RecoveryReport};
use crate::partition_meta::TopicId;
use crate::query_runner::RunningQuery;
use crate::ring::{mpsc, spsc, Doorbell};
use crate::shard::{self, Answer, Answered, PartitionInfo, Request, ShardHandle};
use crate::sync::AtomicI64;
use crate::types::{now_ms, AppendResult, TopicPartition};
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// A reply on its way; `.await` it or call [`Pending::wait`] from a plain thread.
#[must_use = "a pending reply does nothing unless awaited"]
pub struct Pending<T> {
    receiver: Answered<T>,
}

impl<T> fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    fn finish(received: Result<Result<T, EngineError>, oneshot::error::RecvError>) -> Result<T, EngineError> {
        received.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Blocks the calling thread (not an async task) until the reply arrives.
    pub fn wait(self) -> Result<T, EngineError> {
        Self::finish(self.receiver.blocking_recv())
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, EngineError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver).poll(cx).map(Self::finish)
    }
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
        // Listeners, TLS material, users and ACLs first: a refused setup says so before
        // anything else happens.
        let sinks = config.queries.iter().flat_map(|q| [q.agg_topic(), q.decisions_topic()]).collect();
        let security = security::Security::open(&data_dir, &config.listeners, &config.security, sinks)
            .map_err(|e| EngineError::Security(e.to_string()))?;
        let security = Arc::new(security);
        let stored = catalog::read_meta(&data_dir.join(META_FILE)).map_err(dir_error)?;
        // Topics written before ids existed get one now (their directories adopt it).
        let unnamed = stored.values().any(|(_, id)| id.is_none());
        let topics: BTreeMap<String, TopicEntry> = stored
            .into_iter()
            .map(|(name, (partitions, id))| {
                (name, TopicEntry { partitions, id: id.unwrap_or_else(TopicId::random) })
            })
            .collect();
        if unnamed {
            catalog::write_meta(&data_dir, &topics).map_err(dir_error)?;
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
        catalog::write_durably(&data_dir, OPENED_FILE, format!("{}\n", now_ms()).as_bytes())
            .map_err(|e| dir_error(format!("{OPENED_FILE}: {e}")))?;
        catalog::remove_orphan_partitions(&data_dir, &topics)
            .map_err(|e| dir_error(format!("orphans: {e}")))?;
        catalog::claim_partition_dirs(&data_dir, &topics).map_err(dir_error)?;
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
                security,
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
        let services: Arc<dyn shard::Services> = Arc::new(ShardServices { queries: queries.clone() });
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
                services: services.clone(),
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
        Some(query.processed.iter().map(|p| p.load(crate::sync::Ordering::Acquire)).collect())
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
        request: fn(TopicPartition, Answer<()>) -> Request,
    ) -> Result<(), EngineError> {
        let pending: Vec<_> = (0..partitions)
            .map(|p| {
                let tp = TopicPartition::new(topic, p);
                self.submit(tp.owner(self.shard_count()), |answer| request(tp, answer))
            })
            .collect();
        pending.into_iter().try_for_each(Pending::wait)
    }

    /// Puts the request `make` builds into `shard`'s submission ring (waiting while
    /// the ring is full) and returns where its typed answer will arrive.
    fn submit<T: Send + 'static>(&self, shard: usize, make: impl FnOnce(Answer<T>) -> Request) -> Pending<T> {
        let (answer, receiver) = Answer::channel();
        let handle = &self.handles[shard];
        let mut request = make(answer);
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            match handle.submit.push(request) {
                Ok(()) => break,
                Err(back) => {
                    request = back;
                    handle.wake();
                    backoff.snooze();
                }
            }
        }
        handle.wake();
        Pending { receiver }
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
        self.submit(self.owner(&tp), |answer| Request::WaitFor { tp, offset, timeout_ms, answer })
    }

    /// First offset whose timestamp is at or after `timestamp`, with that timestamp.
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Pending<Option<(i64, i64)>> {
        let tp = TopicPartition::new(topic, partition);
        self.submit(self.owner(&tp), |answer| Request::OffsetForTimestamp { tp, timestamp, answer })
    }

    /// Log start, high watermark and log end of a partition.
    pub fn partition_info(&self, topic: &str, partition: u32) -> Pending<PartitionInfo> {
        let tp = TopicPartition::new(topic, partition);
        self.submit(self.owner(&tp), |answer| Request::Info(tp, answer))
    }

    /// Syncs and closes every partition, stops the shards and leaves the clean marker.
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), EngineError> {
        if self.threads.is_empty() {
            return Ok(());
        }
        let pending: Vec<_> = (0..self.shard_count()).map(|id| self.submit(id, Request::Shutdown)).collect();
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
        self.engine.submit(self.shard, |answer| Request::Append { tp, batch, ack, answer })
    }

    /// As [`Engine::read`], entering through this shard.
    pub fn read(&self, topic: &str, partition: u32, offset: i64, max_bytes: usize) -> Pending<Fetched> {
        let tp = TopicPartition::new(topic, partition);
        self.engine.submit(self.shard, |answer| Request::Read {
            tp,
            offset,
            max_bytes,
            strict: false,
            answer,
        })
    }
}

/// The most partitions this engine may hold: [`EngineConfig::max_partitions`], lowered
/// to what the process's descriptor limit leaves after connections and
/// [`FDS_RESERVED`] (the soft limit is first raised to the hard one).
fn partition_limit(config: &EngineConfig) -> u32 {
    let descriptors = crate::io::raise_descriptor_limit();
    let connections = if !config.listeners.is_empty() { config.max_connections as u64 } else { 0 };
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

/// The services every shard runs above its partitions: the Kafka listener (when the
/// engine listens) and the stream queries.
#[derive(Debug)]
struct ShardServices {
    queries: Arc<[Arc<RunningQuery>]>,
}

impl shard::Services for ShardServices {
    fn listen(&self, shard: &std::rc::Rc<shard::Shard>) -> Result<(), EngineError> {
        for listener in &shard.config.listeners {
            let socket = crate::kafka::bind(listener.address)
                .map_err(|error| EngineError::Listen(format!("{listener}: {error}")))?;
            drop(tokio_uring::spawn(crate::kafka::accept_loop(shard.clone(), socket, *listener)));
        }
        Ok(())
    }

    fn started(&self, shard: &std::rc::Rc<shard::Shard>) {
        crate::query_runner::start_all(shard, &self.queries);
    }

    fn partition_created(&self, shard: &std::rc::Rc<shard::Shard>, tp: &TopicPartition) {
        crate::query_runner::start_over(shard, &self.queries, tp);
    }
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
