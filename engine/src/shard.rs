//! Shards: one thread per core, each with its own io_uring runtime, owning a disjoint
//! set of partitions.
//!
//! A shard thread is pinned to its core and runs a `tokio-uring` runtime (a
//! current-thread tokio executor whose file I/O is io_uring). Its main task drains two
//! kinds of inboxes, both bounded lock-free rings ([`crate::ring`]):
//!
//! * its MPSC **submission ring**, where threads outside the engine (the embedded API)
//!   put [`Request`]s, each carrying its own typed [`Answer`] channel;
//! * one SPSC **mesh ring** from every other shard, carrying requests a shard received
//!   for a partition it does not own, and the completions of requests it forwarded
//!   (an answer is delivered on the shard the request entered through, so shards
//!   reach each other only through these rings).
//!
//! When every inbox is empty the shard marks its [`Doorbell`] parked and waits on its
//! eventfd; a producer signals the eventfd only when its push found the shard parked.
//!
//! **Appends and group commit.** An append is validated and placed by the partition's
//! [`PartitionLog`] (synchronously, on this thread), written with an io_uring write at
//! its assigned position, and acknowledged once the flush mode says it is durable:
//! `os` after the write completes; `group` after an fdatasync that started after the
//! write completed (appends that finish writing while a sync is in flight share the
//! next one); `always` after a sync that covers just this request. An append that finds
//! its partition fully durable is written with `RWF_DSYNC` instead, which syncs it in
//! the same io_uring operation (see `Partition::write_synced`). The high watermark
//! is published (release) only then, and waiters (appends, long polls) are woken
//! through a `watch` channel.
//!
//! Invariants: only this thread touches its partitions' state and files; no `RefCell`
//! borrow is held across an `.await`; a failed write makes the partition read-only and
//! fails every append not yet durable (recovery truncates the tail on restart).

use crate::catalog::Catalog;
use crate::commit::{FlushStep, GroupCommit};
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::io::SharedEventFd;
use crate::log::{AppendError, Fetched, LogConfig, PartitionLog, ReadError, Recovery, RecoveryReport};
use crate::prealloc::{Fill, Preallocation};
use crate::producers::{ProducerStates, Sequenced};
use crate::ring::{mpsc, spsc, Doorbell};
use crate::segment::Retired;
use crate::types::{AppendResult, FlushMode, TopicPartition};
use bytes::BytesMut;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

/// Entries in each shard's submission ring.
pub const SUBMISSION_RING_ENTRIES: usize = 4096;
/// Entries in each mesh ring (per ordered pair of shards).
pub const MESH_RING_ENTRIES: usize = 1024;
/// Most inbox entries handled before the main task yields to the rest of the shard.
pub const DRAIN_BATCH_MAX: usize = 256;
pub use crate::commit::SYNCS_IN_FLIGHT_MAX;
/// At shutdown, how many 1 ms polls a failed partition waits for its last writes and
/// syncs to complete before trying to heal.
pub const CLOSE_DRAIN_POLLS_MAX: usize = 5_000;
/// Longest a long poll may wait.
pub const WAIT_MS_MAX: u64 = 60_000;

const _: () = assert!(DRAIN_BATCH_MAX <= SUBMISSION_RING_ENTRIES);

/// Where a request's answer goes: a typed reply channel, so a request can only be
/// answered with what it asked for. The owner shard turns the answer into a
/// [`Completion`], which runs on the shard the request entered through (it crosses
/// back over the mesh ring) or, for an embedded-API caller, right away.
#[derive(Debug)]
pub struct Answer<T>(oneshot::Sender<Result<T, EngineError>>);

/// The caller's half of an [`Answer`].
pub type Answered<T> = oneshot::Receiver<Result<T, EngineError>>;

impl<T: Send + 'static> Answer<T> {
    /// A reply channel: the answer to put in a request, and the receiver to await.
    pub fn channel() -> (Self, Answered<T>) {
        let (sender, receiver) = oneshot::channel();
        (Self(sender), receiver)
    }

    /// The answer, ready to be delivered where the caller waits.
    fn complete(self, result: Result<T, EngineError>) -> Completion {
        Completion(Box::new(move || drop(self.0.send(result))))
    }
}

/// An answer on its way back to its caller: delivering it is running it.
pub(crate) struct Completion(Box<dyn FnOnce() + Send>);

impl Completion {
    fn deliver(self) {
        (self.0)()
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Completion")
    }
}

/// A request to the shard that owns a partition, with its typed reply channel.
#[derive(Debug)]
pub enum Request {
    /// Open (creating if needed) a partition on its owner.
    CreatePartition(TopicPartition, Answer<()>),
    /// Close a partition and delete its files.
    DeletePartition(TopicPartition, Answer<()>),
    /// Append one RecordBatch v2; the answer comes once it is durable per flush mode
    /// (or only written, with [`AckLevel::Written`]).
    Append {
        /// Target partition.
        tp: TopicPartition,
        /// The batch bytes.
        batch: BytesMut,
        /// When to answer.
        ack: AckLevel,
        /// Where the offsets go.
        answer: Answer<AppendResult>,
    },
    /// Read whole batches from `offset`, at most `max_bytes` (at least one batch,
    /// unless `strict`).
    Read {
        /// Source partition.
        tp: TopicPartition,
        /// First offset wanted.
        offset: i64,
        /// Byte budget.
        max_bytes: usize,
        /// Never exceed `max_bytes`, even with the first batch (a Fetch lets only its
        /// first partition exceed its budget, as Kafka does).
        strict: bool,
        /// Where the bytes go.
        answer: Answer<Fetched>,
    },
    /// Resolve with the high watermark once it is past `offset`, or after `timeout_ms`.
    WaitFor {
        /// Partition.
        tp: TopicPartition,
        /// Offset to wait past.
        offset: i64,
        /// Upper bound on the wait.
        timeout_ms: u64,
        /// Where the high watermark goes.
        answer: Answer<i64>,
    },
    /// First offset with a timestamp at or after `timestamp`, with that timestamp.
    OffsetForTimestamp {
        /// Partition.
        tp: TopicPartition,
        /// Timestamp (ms).
        timestamp: i64,
        /// Where (offset, timestamp) goes, if any record qualifies.
        answer: Answer<Option<(i64, i64)>>,
    },
    /// Offsets of a partition.
    Info(TopicPartition, Answer<PartitionInfo>),
    /// The record with the largest timestamp (ListOffsets -3), as (offset, timestamp).
    MaxTimestamp(TopicPartition, Answer<Option<(i64, i64)>>),
    /// Finish in-flight work, sync and close every partition, stop the shard.
    Shutdown(Answer<()>),
}

impl Request {
    /// Answers the request with `error` instead of running it.
    fn refuse(self, error: EngineError) -> Completion {
        match self {
            Request::CreatePartition(_, answer)
            | Request::DeletePartition(_, answer)
            | Request::Shutdown(answer) => answer.complete(Err(error)),
            Request::Append { answer, .. } => answer.complete(Err(error)),
            Request::Read { answer, .. } => answer.complete(Err(error)),
            Request::WaitFor { answer, .. } => answer.complete(Err(error)),
            Request::OffsetForTimestamp { answer, .. } | Request::MaxTimestamp(_, answer) => {
                answer.complete(Err(error))
            }
            Request::Info(_, answer) => answer.complete(Err(error)),
        }
    }

    fn partition(&self) -> Option<&TopicPartition> {
        match self {
            Request::CreatePartition(tp, _)
            | Request::DeletePartition(tp, _)
            | Request::Info(tp, _)
            | Request::MaxTimestamp(tp, _) => Some(tp),
            Request::Append { tp, .. }
            | Request::Read { tp, .. }
            | Request::WaitFor { tp, .. }
            | Request::OffsetForTimestamp { tp, .. } => Some(tp),
            Request::Shutdown(_) => None,
        }
    }
}

/// When an append is answered: Kafka's `acks=1` waits for the write, `acks=all` for
/// the engine's flush mode. Consumers see the records only once they are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckLevel {
    /// After the write reached the page cache (Kafka `acks=1`).
    Written,
    /// After the flush mode's durability point (Kafka `acks=all`, the embedded API).
    #[default]
    Durable,
}

/// Offsets of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// First offset kept.
    pub log_start_offset: i64,
    /// Last durable offset + 1.
    pub high_watermark: i64,
    /// Offset the next append gets.
    pub next_offset: i64,
    /// Segments on disk.
    pub segments: usize,
}

/// What crosses the mesh between two shards: a request for the receiver's partition,
/// or the completion of one it forwarded.
#[derive(Debug)]
pub(crate) enum MeshMessage {
    Request(Request),
    Done(Completion),
}

/// The parts of a shard other threads use to reach it.
#[derive(Debug)]
pub(crate) struct ShardHandle {
    pub(crate) doorbell: Doorbell,
    pub(crate) eventfd: SharedEventFd,
    pub(crate) submit: mpsc::Producer<Request>,
}

impl ShardHandle {
    pub(crate) fn wake(&self) {
        if self.doorbell.ring() {
            self.eventfd.0.signal();
        }
    }
}

/// Everything a shard thread starts with.
pub(crate) struct ShardSetup {
    pub(crate) id: usize,
    pub(crate) config: Arc<EngineConfig>,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) handles: Arc<[ShardHandle]>,
    pub(crate) submissions: mpsc::Consumer<Request>,
    pub(crate) mesh_out: Vec<Option<spsc::Producer<MeshMessage>>>,
    pub(crate) mesh_in: Vec<Option<spsc::Consumer<MeshMessage>>>,
    pub(crate) partitions: Vec<TopicPartition>,
    pub(crate) recovery: Recovery,
    pub(crate) services: Arc<dyn Services>,
}

/// What runs on a shard besides its partitions: the protocols and services above the
/// runtime (the Kafka listener, the stream queries). The engine gives every shard one
/// at start, so this module never imports them; they call down into the shard.
pub(crate) trait Services: Send + Sync + std::fmt::Debug {
    /// Starts listening on the shard (before it reports ready): an error fails the
    /// engine's start.
    fn listen(&self, shard: &Rc<Shard>) -> Result<(), EngineError>;
    /// The shard's partitions are open and it reported ready.
    fn started(&self, shard: &Rc<Shard>);
    /// A partition was created on the shard.
    fn partition_created(&self, shard: &Rc<Shard>, tp: &TopicPartition);
}

/// Durability state published to waiters.
#[derive(Debug, Clone, Default)]
struct Durable {
    offset: i64,
    /// Every append below this offset is written (not necessarily synced).
    written: i64,
    failed: Option<String>,
    /// Bumped each time a failed partition heals (its log cut back to `offset`): an
    /// append placed in an earlier generation is never acknowledged, since its offsets
    /// may now belong to another batch.
    generation: u64,
}

/// A file a sync covers, and whether it needs a full `fsync` rather than `fdatasync`:
/// a directory does, since ext4 may leave a new entry (metadata) out of an fdatasync.
type SyncFile = (Rc<tokio_uring::fs::File>, bool);

pub(crate) struct Partition {
    tp: TopicPartition,
    producers: RefCell<ProducerStates>,
    pub(crate) log: RefCell<PartitionLog>,
    flush: RefCell<GroupCommit<SyncFile>>,
    /// Zeros written ahead of the tail (see `prealloc`), and the wake-up for appends
    /// that wait for a fill's write over their bytes.
    prealloc: RefCell<Preallocation>,
    fill_written: tokio::sync::Notify,
    active_file: RefCell<Option<(usize, Rc<tokio_uring::fs::File>)>>,
    durable: watch::Sender<Durable>,
}

fn storage_error(tp: &TopicPartition, what: impl std::fmt::Display) -> EngineError {
    EngineError::Storage(format!("{tp}: {what}"))
}

fn uring_file(file: &std::fs::File) -> std::io::Result<Rc<tokio_uring::fs::File>> {
    Ok(Rc::new(tokio_uring::fs::File::from_std(file.try_clone()?)))
}

impl Partition {
    fn open(
        tp: TopicPartition,
        config: &EngineConfig,
        recovery: Recovery,
    ) -> Result<(Self, RecoveryReport), EngineError> {
        let dir = config.data_dir.join(tp.dir_name());
        let log_config: LogConfig = config.log.clone();
        let (log, report) = PartitionLog::open_with(&dir, log_config, recovery, crate::types::now_ms())
            .map_err(|e| storage_error(&tp, e))?;
        let offset = log.high_watermark();
        let prealloc = Preallocation::of(&log);
        let producers = match ProducerStates::recover(&log) {
            Ok((producers, recovery)) => {
                tracing::debug!(partition = %tp, ?recovery, producers = producers.len(), "producer state rebuilt");
                producers
            }
            Err(error) => {
                tracing::warn!(partition = %tp, "{error}; producers start without state");
                ProducerStates::default()
            }
        };
        let partition = Self {
            tp,
            producers: RefCell::new(producers),
            log: RefCell::new(log),
            flush: RefCell::new(GroupCommit::new(offset)),
            prealloc: RefCell::new(prealloc),
            fill_written: tokio::sync::Notify::new(),
            active_file: RefCell::new(None),
            durable: watch::Sender::new(Durable { offset, written: offset, failed: None, generation: 0 }),
        };
        Ok((partition, report))
    }

    fn file_for(&self, file: &Arc<crate::disk::DiskFile>) -> std::io::Result<Rc<tokio_uring::fs::File>> {
        let key = Arc::as_ptr(file) as usize;
        let mut active = self.active_file.borrow_mut();
        match &*active {
            Some((cached, uring)) if *cached == key => Ok(uring.clone()),
            _ => {
                let uring = uring_file(file.std())?;
                *active = Some((key, uring.clone()));
                Ok(uring)
            }
        }
    }

    async fn wait_durable(
        &self,
        result: AppendResult,
        ack: AckLevel,
        generation: u64,
    ) -> Result<AppendResult, EngineError> {
        let mut durable = self.durable.subscribe();
        let reached = |d: &Durable| {
            d.generation == generation
                && match ack {
                    AckLevel::Durable => d.offset >= result.next_offset,
                    AckLevel::Written => d.written >= result.next_offset,
                }
        };
        let state = durable
            .wait_for(|d| reached(d) || d.failed.is_some() || d.generation != generation)
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        if reached(&state) {
            return Ok(result);
        }
        let reason =
            state.failed.clone().unwrap_or_else(|| "the log was cut back after a storage failure".into());
        Err(storage_error(&self.tp, reason))
    }

    fn generation(&self) -> u64 {
        self.durable.borrow().generation
    }

    /// Places, writes and waits for durability of one batch.
    async fn append(
        self: Rc<Self>,
        batch: BytesMut,
        mode: FlushMode,
        ack: AckLevel,
    ) -> Result<AppendResult, EngineError> {
        let producer = crate::batch::producer_fields(&batch).filter(|(producer_id, ..)| *producer_id >= 0);
        if let Some((producer_id, epoch, base_sequence, _)) = producer {
            let verdict = self.producers.borrow().check(producer_id, epoch, base_sequence)?;
            if let Sequenced::Duplicate(result) = verdict {
                return self.wait_durable(result, ack, self.generation()).await;
            }
        }
        let generation = self.generation();
        let plan = self.log.borrow_mut().append(batch, crate::types::now_ms()).map_err(|e| match e {
            AppendError::Storage(e) => storage_error(&self.tp, e),
            other => EngineError::Append(other),
        })?;
        let result = AppendResult { base_offset: plan.base_offset, next_offset: plan.next_offset };
        if plan.sealed_file.is_some() {
            // The state before this batch is the state after every batch below the
            // new segment's base.
            self.snapshot_producers(&self.log.borrow(), plan.base_offset);
            self.prealloc.borrow_mut().rolled(plan.base_offset);
        }
        if let Some((producer_id, epoch, base_sequence, records)) = producer {
            self.producers.borrow_mut().remember(producer_id, epoch, base_sequence, records, result);
        }
        // From here on the offsets are placed: any failure must fail the partition (and
        // so cut the log back), or the watermark would later pass the unwritten batch.
        if let Some(sealed) = plan.sealed_file.as_ref().filter(|_| mode != FlushMode::Os) {
            if let Err(error) = self.on_rolled(plan.base_offset, sealed) {
                return Err(self.fail(format!("roll: {error}")));
            }
        }
        let file = match self.file_for(&plan.file) {
            Ok(file) => file,
            Err(error) => return Err(self.fail(format!("open for write: {error}"))),
        };
        let synced_write = self.flush.borrow_mut().place(plan.next_offset, mode);
        if mode != FlushMode::Os && self.log.borrow().config().preallocate {
            self.fill_ahead(&file, synced_write);
        }
        let (segment, end) = (self.log.borrow().active_extent().0, plan.position + plan.bytes.len() as u64);
        loop {
            // A fill planned before this append may be writing zeros over its bytes.
            let written = self.fill_written.notified();
            if !self.prealloc.borrow().must_wait(segment, plan.position, end) {
                break;
            }
            written.await;
        }
        if synced_write {
            let written = self.write_synced(&file, plan, mode).await;
            self.flush.borrow_mut().write_ended();
            written?;
        } else {
            let (written, bytes) = crate::fault::write_all_at(&file, plan.bytes, plan.position).await;
            crate::buffers::give(bytes);
            self.flush.borrow_mut().write_ended();
            if let Err(error) = written {
                return Err(self.fail(format!("write at {}: {error}", plan.position)));
            }
            if self.generation() != generation {
                return Err(storage_error(&self.tp, "the log was cut back after a storage failure"));
            }
            self.on_written(plan.next_offset, mode);
        }
        self.wait_durable(result, ack, generation).await
    }

    /// Notes an append just placed and starts a fill of zeros ahead of the tail when
    /// one is due (see `prealloc`), in a task of its own.
    fn fill_ahead(self: &Rc<Self>, file: &Rc<tokio_uring::fs::File>, synced_write: bool) {
        let fill = {
            let (segment, size) = self.log.borrow().active_extent();
            let limit = self.log.borrow().config().segment_bytes;
            let mut prealloc = self.prealloc.borrow_mut();
            prealloc.noted(synced_write);
            prealloc.plan(segment, size, limit)
        };
        if let Some(fill) = fill {
            let (partition, file) = (self.clone(), file.clone());
            tokio_uring::spawn(async move { partition.fill(fill, file).await });
        }
    }

    /// Writes a fill's zeros, wakes the appends waiting for that write, then syncs the
    /// file. A failure of either fails the partition: the sync may have taken a
    /// writeback error that belonged to an append's bytes (Linux reports it once).
    async fn fill(self: Rc<Self>, fill: Fill, file: Rc<tokio_uring::fs::File>) {
        let len = usize::try_from(fill.len()).expect("a fill is a few MiB");
        let mut result = crate::fault::write_zeros_at(&file, fill.start, len).await;
        if result.is_ok() {
            self.prealloc.borrow_mut().fill_written();
            self.fill_written.notify_waiters();
            result = crate::fault::sync(&file, false).await;
        }
        match result {
            Ok(()) => {
                self.prealloc.borrow_mut().fill_synced();
                crate::stats::record_fill(fill.len());
            }
            Err(error) => {
                self.prealloc.borrow_mut().fill_failed();
                self.fill_written.notify_waiters();
                self.fail(format!("zero-fill at {}: {error}", fill.start));
            }
        }
    }

    /// The write of an append placed when everything before it was durable and nothing
    /// was in flight: one `RWF_DSYNC` write, which the kernel's io_uring worker runs as
    /// the write and then the data sync, with no round trip through this shard between
    /// them (one worker wake-up less, and the shard never schedules a separate sync).
    /// With nothing else unsynced, its completion makes the log durable through its end.
    /// A short write finishes the rest with a plain write and falls back to group commit.
    async fn write_synced(
        self: &Rc<Self>,
        file: &tokio_uring::fs::File,
        plan: crate::log::AppendPlan,
        mode: FlushMode,
    ) -> Result<(), EngineError> {
        let started = std::time::Instant::now();
        let length = plan.bytes.len();
        let (written, bytes) = crate::fault::write_synced_at(file, plan.bytes, plan.position).await;
        self.flush.borrow_mut().sync_ended();
        let whole = match written {
            Err(error) => return Err(self.fail(format!("write at {}: {error}", plan.position))),
            Ok(count) if count == length => {
                crate::buffers::give(bytes);
                true
            }
            Ok(count) => {
                let rest = { bytes }.split_off(count);
                let (rest_written, _) =
                    crate::fault::write_all_at(file, rest, plan.position + count as u64).await;
                if let Err(error) = rest_written {
                    return Err(self.fail(format!("write at {}: {error}", plan.position)));
                }
                false
            }
        };
        if self.durable.borrow().failed.is_some() {
            // Another write or sync failed meanwhile: nothing is published until the
            // partition heals (a later success says nothing about the failed bytes).
            return Err(storage_error(&self.tp, "the partition failed while this write ran"));
        }
        if whole {
            // The metric's sync latency here includes the write (a 64 KiB page-cache
            // copy is a few percent of it).
            crate::stats::record_fsync(started.elapsed());
            crate::stats::record_synced_write();
        }
        let durable = self.flush.borrow_mut().synced_write_done(plan.next_offset, whole);
        self.after_written(mode);
        if let Some(offset) = durable {
            self.publish(offset);
            self.flush_indexes_later();
        }
        Ok(())
    }

    /// After a roll at `base_offset`: the sealed file and the directory (which names the
    /// new segment) join the next sync, through io_uring like every other sync, so the
    /// shard never blocks on the journal commit a directory fsync waits for.
    fn on_rolled(&self, base_offset: i64, sealed: &crate::disk::DiskFile) -> Result<(), EngineError> {
        let dir = std::fs::File::open(self.log.borrow().dir()).map_err(|e| storage_error(&self.tp, e))?;
        let sealed = uring_file(sealed.std()).map_err(|e| storage_error(&self.tp, e))?;
        let dir = Rc::new(tokio_uring::fs::File::from_std(dir));
        self.flush.borrow_mut().rolled(base_offset, (sealed, false), (dir, true));
        Ok(())
    }

    /// Marks the partition failed: read-only, every waiter woken with the error.
    fn fail(&self, reason: String) -> EngineError {
        tracing::error!(partition = %self.tp, "storage failure, partition now read-only: {reason}");
        self.log.borrow_mut().set_read_only(reason.clone());
        self.durable.send_modify(|d| {
            d.failed.get_or_insert(reason.clone());
        });
        storage_error(&self.tp, reason)
    }

    fn on_written(self: &Rc<Self>, next_offset: i64, mode: FlushMode) {
        self.flush.borrow_mut().written(next_offset);
        self.after_written(mode);
    }

    /// After a write completed: waiters for written bytes learn the new end, a sync
    /// starts if one is due, and the page-cache window moves.
    fn after_written(self: &Rc<Self>, mode: FlushMode) {
        let written = self.flush.borrow().written_through();
        self.durable.send_if_modified(|d| {
            let advanced = written > d.written;
            d.written = d.written.max(written);
            advanced
        });
        self.kick_flush(mode);
        let hints = self.log.borrow_mut().trim_cache();
        if !hints.is_empty() {
            crate::io::apply_cache_hints(hints);
        }
    }

    fn publish(&self, offset: i64) {
        if self.durable.borrow().failed.is_some() {
            return; // nothing is published between a failure and the heal
        }
        self.log.borrow().publish_high_watermark(offset);
        self.durable.send_modify(|d| d.offset = d.offset.max(offset));
    }

    /// Starts a sync when written bytes are not yet covered by one and fewer than
    /// [`SYNCS_IN_FLIGHT_MAX`] are running (group commit).
    fn kick_flush(self: &Rc<Self>, mode: FlushMode) {
        let step = self.flush.borrow_mut().next_sync(mode);
        let (target, mut files) = match step {
            FlushStep::Idle => return,
            FlushStep::Publish(offset) => return self.publish(offset),
            FlushStep::Sync { target, files } => (target, files),
        };
        if let Some((_, active)) = &*self.active_file.borrow() {
            files.push((active.clone(), false));
        }
        let partition = self.clone();
        tokio_uring::spawn(async move { partition.sync(files, target, mode).await });
    }

    async fn sync(self: Rc<Self>, files: Vec<SyncFile>, target: i64, mode: FlushMode) {
        let started = std::time::Instant::now();
        for (file, full) in files {
            let mut synced = crate::fault::sync(&file, full).await;
            if synced.is_err() && crate::commit::retry_failed_sync() {
                synced = crate::fault::sync(&file, full).await;
            }
            if let Err(error) = synced {
                self.fail(format!("{}: {error}", if full { "fsync" } else { "fdatasync" }));
                self.flush.borrow_mut().sync_ended();
                return;
            }
        }
        crate::stats::record_fsync(started.elapsed());
        let publishable = {
            let mut flush = self.flush.borrow_mut();
            flush.sync_ended();
            flush.sync_done(target)
        };
        if self.durable.borrow().failed.is_some() {
            // A sync that succeeds after another failed proves nothing about the bytes
            // whose writeback failed (the kernel reports a writeback error once): the
            // watermark stays where it is until the partition heals.
            return;
        }
        if let Some(offset) = publishable {
            self.publish(offset);
            self.flush_indexes_later();
        }
        self.kick_flush(mode);
    }

    /// Writes index entries gathered since the last sync to the index files in a task
    /// of its own, queued behind the waiters a publish just woke: readers use the
    /// in-memory index and recovery checks the files against the log, so no
    /// acknowledgement waits for these writes.
    fn flush_indexes_later(self: &Rc<Self>) {
        let partition = self.clone();
        tokio_uring::spawn(async move {
            if let Err(error) = partition.log.borrow_mut().flush_indexes() {
                tracing::warn!(partition = %partition.tp, "index write failed (rebuilt on recovery): {error}");
            }
        });
    }

    fn info(&self) -> PartitionInfo {
        let log = self.log.borrow();
        PartitionInfo {
            log_start_offset: log.log_start_offset(),
            high_watermark: log.high_watermark(),
            next_offset: log.next_offset(),
            segments: log.segment_count(),
        }
    }

    /// Resolves once the high watermark is past `offset` or after `timeout_ms`; the
    /// high watermark then.
    pub(crate) async fn wait_for(&self, offset: i64, timeout_ms: u64) -> i64 {
        let mut durable = self.durable.subscribe();
        let wait = durable.wait_for(|d| d.offset > offset || d.failed.is_some());
        let timeout = std::time::Duration::from_millis(timeout_ms.min(WAIT_MS_MAX));
        let _ = tokio::time::timeout(timeout, wait).await;
        self.log.borrow().high_watermark()
    }

    /// Waits until nothing is in flight (writes, syncs, fills), then syncs and closes
    /// the log. A partition that failed is healed first (its log cut back to the
    /// durable end); false when that or the final sync fails, and then the data
    /// directory must not be marked clean (the next open recovers it).
    async fn close(&self) -> bool {
        let next_offset = self.log.borrow().next_offset();
        let mut durable = self.durable.subscribe();
        let _ = durable.wait_for(|d| d.offset >= next_offset || d.failed.is_some()).await;
        drop(durable);
        if self.durable.borrow().failed.is_some() {
            for _ in 0..CLOSE_DRAIN_POLLS_MAX {
                let idle = self.flush.borrow().is_quiet() && self.prealloc.borrow().is_quiet();
                if idle {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            self.try_heal();
            if let Some(reason) = self.durable.borrow().failed.clone() {
                tracing::error!(partition = %self.tp, "closing a failed partition ({reason}): not clean");
                return false;
            }
        }
        if let Err(error) = self.log.borrow_mut().close() {
            tracing::error!(partition = %self.tp, "close failed: {error}");
            return false;
        }
        let log = self.log.borrow();
        self.snapshot_producers(&log, log.next_offset());
        true
    }

    /// Writes the producer snapshot for `offset` into the log's directory: the state
    /// must hold exactly the batches below `offset` (a roll, before the batch that
    /// starts the new segment is remembered; a clean close, at the log's end).
    fn snapshot_producers(&self, log: &PartitionLog, offset: i64) {
        if let Err(error) = self.producers.borrow().write_snapshot(log, offset) {
            // Harmless: the next open scans further back in the log.
            tracing::warn!(partition = %self.tp, "producer snapshot at {offset}: {error}");
        }
    }

    /// Heals a partition a failed write, sync or roll stopped, once no write or sync
    /// of it is still running: the log is cut back to the high watermark (everything
    /// below it is durable, nothing at or past it was acknowledged), the cut is synced,
    /// producer state is rebuilt from what is left, and a new generation begins, so
    /// appends placed before the failure are never acknowledged. Tried on every
    /// maintenance tick; while the disk still fails, the partition stays failed.
    fn try_heal(&self) {
        let failed = self.durable.borrow().failed.clone();
        let Some(reason) = failed else { return };
        if !self.flush.borrow().is_quiet() || !self.prealloc.borrow().is_quiet() {
            return;
        }
        let mut log = self.log.borrow_mut();
        if log.read_only_reason().is_some_and(|r| r != reason) {
            return; // corruption found on read or recovery: no healing that
        }
        let offset = log.high_watermark();
        if let Err(error) = log.truncate_to(offset) {
            tracing::warn!(partition = %self.tp, "still failed ({reason}); healing: {error}");
            return;
        }
        match ProducerStates::recover(&log) {
            Ok((producers, _)) => *self.producers.borrow_mut() = producers,
            Err(error) => {
                // Healing without the producers' state would append their retries
                // again as new batches: stay failed and try again at the next tick
                // (found by corelog-sim, seed 256).
                tracing::warn!(partition = %self.tp, "still failed ({reason}); producer state: {error}");
                log.set_read_only(reason);
                return;
            }
        }
        *self.active_file.borrow_mut() = None;
        *self.flush.borrow_mut() = GroupCommit::new(offset);
        *self.prealloc.borrow_mut() = Preallocation::of(&log);
        self.durable.send_modify(|d| {
            d.failed = None;
            d.offset = offset;
            d.written = offset;
            d.generation += 1;
        });
        crate::stats::record_heal();
        tracing::warn!(partition = %self.tp, offset, "healed after a storage failure ({reason}): appends resume");
    }

    fn maintain(&self, now_ms: i64, landed_floors: Option<&HashMap<TopicPartition, i64>>, mode: FlushMode) {
        self.try_heal();
        let flush_idle = self.flush.borrow().is_idle() && self.durable.borrow().failed.is_none();
        if !flush_idle {
            return;
        }
        let mut log = self.log.borrow_mut();
        if let Some(floors) = landed_floors {
            log.set_retain_floor(Some(floors.get(&self.tp).copied().unwrap_or(0)));
        }
        match log.roll_if_old(now_ms) {
            Ok(Some(sealed)) => {
                self.snapshot_producers(&log, log.next_offset());
                let base_offset = log.next_offset();
                self.prealloc.borrow_mut().rolled(base_offset);
                drop(log);
                if mode == FlushMode::Os {
                    // Nothing is synced in this mode: no sync would ever release them.
                } else if let Err(error) = self.on_rolled(base_offset, &sealed) {
                    tracing::warn!(partition = %self.tp, "time-based roll: {error}");
                }
                log = self.log.borrow_mut();
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(partition = %self.tp, "time-based roll failed: {error}"),
        }
        match log.apply_retention(now_ms) {
            Ok(retired) if !retired.is_empty() => {
                let deleted: Vec<i64> = retired.iter().map(Retired::base_offset).collect();
                tracing::info!(partition = %self.tp, ?deleted, "retention deleted segments");
                retired
                    .into_iter()
                    .for_each(|r| crate::io::delete_in_background(crate::io::Doomed::Segment(Box::new(r))));
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(partition = %self.tp, "retention failed: {error}"),
        }
        match log.trim_sealed(self.prealloc.borrow().filling()) {
            Ok(0) => {}
            Ok(cut) => tracing::debug!(partition = %self.tp, cut, "zeros past sealed segments' data cut"),
            Err(error) => tracing::warn!(partition = %self.tp, "cutting a sealed segment's zeros: {error}"),
        }
    }
}

/// A shard's state, owned by its thread.
pub(crate) struct Shard {
    pub(crate) id: usize,
    pub(crate) config: Arc<EngineConfig>,
    pub(crate) catalog: Arc<Catalog>,
    handles: Arc<[ShardHandle]>,
    partitions: RefCell<HashMap<TopicPartition, Rc<Partition>>>,
    submissions: RefCell<mpsc::Consumer<Request>>,
    mesh_out: Vec<RefCell<Option<spsc::Producer<MeshMessage>>>>,
    outbox: Vec<RefCell<VecDeque<MeshMessage>>>,
    outbox_flushing: Vec<Cell<bool>>,
    mesh_in: RefCell<Vec<Option<spsc::Consumer<MeshMessage>>>>,
    stopping: Cell<bool>,
    stopped: Cell<bool>,
    services: Arc<dyn Services>,
}

/// Runs a shard on the calling thread until it is shut down. `ready` gets the
/// recovery reports of its partitions (or the first error) once they are open.
pub(crate) fn run(
    setup: ShardSetup,
    ready: std::sync::mpsc::Sender<Result<Vec<(TopicPartition, RecoveryReport)>, EngineError>>,
) {
    if setup.config.pin_threads && !crate::io::pin_to_core(setup.id) {
        tracing::warn!(shard = setup.id, "could not pin shard thread to its core");
    }
    let mut builder = tokio_uring::builder();
    builder.entries(setup.config.uring_entries);
    builder.start(async move {
        let ShardSetup {
            id,
            config,
            catalog,
            handles,
            submissions,
            mesh_out,
            mesh_in,
            partitions,
            recovery,
            services,
        } = setup;
        let shard = Rc::new(Shard {
            id,
            config,
            catalog,
            handles,
            partitions: RefCell::new(HashMap::new()),
            submissions: RefCell::new(submissions),
            outbox: mesh_out.iter().map(|_| RefCell::new(VecDeque::new())).collect(),
            outbox_flushing: mesh_out.iter().map(|_| Cell::new(false)).collect(),
            mesh_out: mesh_out.into_iter().map(RefCell::new).collect(),
            mesh_in: RefCell::new(mesh_in),
            stopping: Cell::new(false),
            stopped: Cell::new(false),
            services,
        });
        let mut reports = Vec::new();
        for tp in partitions {
            match Partition::open(tp.clone(), &shard.config, recovery) {
                Ok((partition, report)) => {
                    shard.partitions.borrow_mut().insert(tp.clone(), Rc::new(partition));
                    reports.push((tp, report));
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            }
        }
        let services = shard.services.clone();
        if let Err(error) = services.listen(&shard) {
            let _ = ready.send(Err(error));
            return;
        }
        let _ = ready.send(Ok(reports));
        services.started(&shard);
        let maintenance = tokio_uring::spawn(shard.clone().maintenance());
        shard.clone().main_loop().await;
        maintenance.abort();
    });
}

impl Shard {
    fn me(&self) -> &ShardHandle {
        &self.handles[self.id]
    }

    async fn main_loop(self: Rc<Self>) {
        let readiness = crate::io::watch_readable(self.me().eventfd.clone())
            .expect("registering an eventfd with the reactor");
        while !self.stopped.get() {
            if self.drain() > 0 {
                tokio::task::yield_now().await;
                continue;
            }
            if !self.me().doorbell.prepare_park() {
                continue; // a producer rang since we last looked
            }
            loop {
                let Ok(mut guard) = readiness.readable().await else { break };
                let drained = guard.try_io(|fd| match fd.get_ref().0.drain() {
                    0 => Err(std::io::ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                });
                if drained.is_ok() {
                    break;
                }
            }
            self.me().doorbell.woke();
        }
    }

    fn drain(self: &Rc<Self>) -> usize {
        let mut handled = 0;
        while handled < DRAIN_BATCH_MAX {
            let Some(request) = self.submissions.borrow_mut().pop() else { break };
            handled += 1;
            self.dispatch(request, None);
        }
        for peer in 0..self.handles.len() {
            let mut from_peer = 0;
            while from_peer < DRAIN_BATCH_MAX {
                let message = self.mesh_in.borrow_mut()[peer].as_mut().and_then(spsc::Consumer::pop);
                let Some(message) = message else { break };
                from_peer += 1;
                self.on_mesh(peer, message);
            }
            handled += from_peer;
        }
        if handled > 0 {
            // How many requests were waiting in this shard's rings when it looked.
            metrics::histogram!("corelog_ring_drained_entries", "shard" => self.id.to_string())
                .record(handled as f64);
        }
        handled
    }

    /// Runs the request `make` builds on its owner (here, or across the mesh) and
    /// returns its typed answer: what a connection task on this shard uses, e.g.
    /// `shard.call(|answer| Request::Info(tp, answer))`.
    pub(crate) async fn call<T: Send + 'static>(
        self: &Rc<Self>,
        make: impl FnOnce(Answer<T>) -> Request,
    ) -> Result<T, EngineError> {
        self.start(make).await.unwrap_or(Err(EngineError::ShuttingDown))
    }

    /// Sends the request `make` builds toward its owner now (in call order) and
    /// returns where its answer will arrive: the first half of [`Shard::call`], for
    /// callers that must submit several requests in order before waiting for any.
    pub(crate) fn start<T: Send + 'static>(
        self: &Rc<Self>,
        make: impl FnOnce(Answer<T>) -> Request,
    ) -> Answered<T> {
        let (answer, answered) = Answer::channel();
        self.dispatch(make(answer), Some(self.id));
        answered
    }

    /// True once shutdown began.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Runs `request` here when this shard owns it, else forwards it over the mesh.
    /// `origin` is the shard whose task waits for the answer (`None`: a thread outside
    /// the engine); an answer for another shard goes back over the mesh, so shards
    /// reach each other only through rings.
    fn dispatch(self: &Rc<Self>, request: Request, origin: Option<usize>) {
        let owner = request.partition().map_or(self.id, |tp| tp.owner(self.handles.len()));
        if owner != self.id {
            self.send_mesh(owner, MeshMessage::Request(request));
            return;
        }
        let shard = self.clone();
        tokio_uring::spawn(async move {
            let done = shard.clone().handle(request).await;
            match origin {
                Some(origin) if origin != shard.id => shard.send_mesh(origin, MeshMessage::Done(done)),
                _ => done.deliver(),
            }
        });
    }

    fn on_mesh(self: &Rc<Self>, from: usize, message: MeshMessage) {
        match message {
            MeshMessage::Request(request) => self.dispatch(request, Some(from)),
            MeshMessage::Done(done) => done.deliver(),
        }
    }

    /// Queues `message` for `target` behind every earlier one and pushes what fits;
    /// a flusher task retries the rest. Messages to one shard therefore leave in the
    /// order they were sent, which keeps appends of one connection in request order.
    /// The outbox is bounded by the requests in flight (each holds at most one entry).
    fn send_mesh(self: &Rc<Self>, target: usize, message: MeshMessage) {
        assert_ne!(target, self.id, "no ring to self");
        self.outbox[target].borrow_mut().push_back(message);
        if !self.flush_outbox(target) && !self.outbox_flushing[target].replace(true) {
            let shard = self.clone();
            tokio_uring::spawn(async move {
                while !shard.flush_outbox(target) {
                    tokio::task::yield_now().await;
                }
                shard.outbox_flushing[target].set(false);
            });
        }
    }

    /// Pushes queued messages to `target` until its ring is full; true when the
    /// outbox is empty.
    fn flush_outbox(&self, target: usize) -> bool {
        let mut outbox = self.outbox[target].borrow_mut();
        let mut ring = self.mesh_out[target].borrow_mut();
        let ring = ring.as_mut().expect("mesh ring exists");
        while let Some(message) = outbox.pop_front() {
            if let Err(back) = ring.push(message) {
                outbox.push_front(back);
                break;
            }
        }
        self.handles[target].wake();
        outbox.is_empty()
    }

    pub(crate) fn partition(&self, tp: &TopicPartition) -> Result<Rc<Partition>, EngineError> {
        self.partitions.borrow().get(tp).cloned().ok_or_else(|| EngineError::UnknownPartition(tp.clone()))
    }

    /// True while `partition` is still this shard's open partition `tp` (not deleted
    /// or recreated).
    pub(crate) fn owns(&self, tp: &TopicPartition, partition: &Rc<Partition>) -> bool {
        self.partitions.borrow().get(tp).is_some_and(|open| Rc::ptr_eq(open, partition))
    }

    /// The query whose sink `topic` is (`<query>.agg` or `<query>.decisions`), if any:
    /// such topics take appends only from their query's runners.
    pub(crate) fn query_writing(&self, topic: &str) -> Option<&str> {
        self.config
            .queries
            .iter()
            .find(|def| def.agg_topic() == topic || def.decisions_topic() == topic)
            .map(|def| def.name.as_str())
    }

    /// The partitions this shard has open now.
    pub(crate) fn open_partitions(&self) -> Vec<TopicPartition> {
        self.partitions.borrow().keys().cloned().collect()
    }

    /// Runs one request on this (its owner) shard; returns its answer to deliver.
    async fn handle(self: Rc<Self>, request: Request) -> Completion {
        if self.stopping.get() && !matches!(request, Request::Shutdown(_)) {
            return request.refuse(EngineError::ShuttingDown);
        }
        match request {
            Request::CreatePartition(tp, answer) => answer.complete(self.create_partition(tp)),
            Request::DeletePartition(tp, answer) => {
                let partition = self.partitions.borrow_mut().remove(&tp);
                if let Some(partition) = partition {
                    let _ = partition.close().await; // its files go next whatever their state
                }
                let removed = crate::catalog::remove_partition_files(&self.config.data_dir, &tp)
                    .map_err(|e| storage_error(&tp, e));
                answer.complete(removed)
            }
            Request::Append { tp, batch, ack, answer } => {
                let appended = match self.partition(&tp) {
                    Ok(partition) => partition.append(batch, self.config.flush, ack).await,
                    Err(error) => Err(error),
                };
                answer.complete(appended)
            }
            Request::Read { tp, offset, max_bytes, strict, answer } => {
                answer.complete(self.read(&tp, offset, max_bytes, strict))
            }
            Request::WaitFor { tp, offset, timeout_ms, answer } => {
                let waited = match self.partition(&tp) {
                    Ok(partition) => Ok(partition.wait_for(offset, timeout_ms).await),
                    Err(error) => Err(error),
                };
                answer.complete(waited)
            }
            Request::OffsetForTimestamp { tp, timestamp, answer } => {
                answer.complete(self.partition(&tp).map(|p| p.log.borrow().offset_for_timestamp(timestamp)))
            }
            Request::Info(tp, answer) => answer.complete(self.partition(&tp).map(|p| p.info())),
            Request::MaxTimestamp(tp, answer) => {
                answer.complete(self.partition(&tp).map(|p| p.log.borrow().max_timestamp_offset()))
            }
            Request::Shutdown(answer) => {
                self.stopping.set(true);
                let partitions: Vec<_> = self.partitions.borrow().values().cloned().collect();
                let mut clean = true;
                for partition in partitions {
                    clean &= partition.close().await;
                }
                self.stopped.set(true);
                self.me().eventfd.0.signal(); // the main task may be parked: let it see `stopped`
                let closed = if clean {
                    Ok(())
                } else {
                    Err(EngineError::Storage("a partition could not be closed cleanly".into()))
                };
                answer.complete(closed)
            }
        }
    }

    fn create_partition(self: &Rc<Self>, tp: TopicPartition) -> Result<(), EngineError> {
        if self.partitions.borrow().contains_key(&tp) {
            return Ok(());
        }
        // The topic is new: whatever a deleted topic of the same name left (a delete
        // cut short by a crash) is not this topic's data.
        crate::catalog::remove_partition_files(&self.config.data_dir, &tp)
            .map_err(|e| storage_error(&tp, e))?;
        let id = self.catalog.topic_id(&tp.topic).ok_or(EngineError::UnknownPartition(tp.clone()))?;
        crate::catalog::claim_partition_dir(&self.config.data_dir, &tp, id)
            .map_err(|reason| storage_error(&tp, reason))?;
        let (partition, _) = Partition::open(tp.clone(), &self.config, Recovery::Clean)?;
        self.partitions.borrow_mut().insert(tp.clone(), Rc::new(partition));
        self.services.clone().partition_created(self, &tp);
        Ok(())
    }

    fn read(
        &self,
        tp: &TopicPartition,
        offset: i64,
        max_bytes: usize,
        strict: bool,
    ) -> Result<Fetched, EngineError> {
        let partition = self.partition(tp)?;
        let fetched = partition.log.borrow().read_bounded(offset, max_bytes, !strict);
        fetched.map_err(|error| {
            if let ReadError::Corrupt { .. } = error {
                partition.log.borrow_mut().set_read_only(error.to_string());
            }
            EngineError::Read(error)
        })
    }

    async fn maintenance(self: Rc<Self>) {
        let period = std::time::Duration::from_millis(self.config.maintenance_interval_ms.max(1));
        loop {
            tokio::time::sleep(period).await;
            if self.id == 0 {
                self.catalog.groups.tick();
            }
            let now = crate::types::now_ms();
            let partitions: Vec<_> = self.partitions.borrow().values().cloned().collect();
            let landed_floors = (self.config.retain_until_landed && !partitions.is_empty()).then(|| {
                crate::landed::read_floors(&self.config.data_dir, |topic| self.catalog.topic_id(topic))
            });
            for partition in partitions {
                partition.maintain(now, landed_floors.as_ref(), self.config.flush);
            }
        }
    }
}
