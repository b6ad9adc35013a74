//! Runs one query over one source partition on the shard that owns the partition.
//!
//! The runner is a task on the owner's io_uring runtime. It waits on the partition's
//! durability channel (woken by the same publish that acknowledges an append), reads
//! the new batches straight from the mapped segment (`Bytes`, no copy), extracts the
//! query's JSON fields in place, feeds the [`Operator`], and appends what it emits to
//! partition `p` of `<query>.agg` and `<query>.decisions` (same partition number as the
//! source; those partitions are written by this runner only), decisions first. The
//! operator defers window closes: a close's results (one per key) go out `close_drain`
//! ([`crate::query::CLOSE_DRAIN_DEFAULT`]) per round, after that round's decisions, and
//! no checkpoint is written while some wait. It reads on while up to
//! [`ROUNDS_IN_FLIGHT_MAX`] rounds of outputs are being made durable; appends to one
//! partition are placed in order and a failed one fails every later one (the partition
//! turns read-only), so a sink never has a gap.
//!
//! **Checkpoints and restart** (format in `docs/FORMATS.md`). Every
//! `checkpoint_interval` the runner writes, after its outputs are durable,
//! `DATA/__queries/<query>/<topic>-<p>.json`: the next source offset `X`, the replay
//! point (`replay_from`, `max_time_ms`, see [`crate::query::window`]) and how many records it
//! has emitted to each sink through `X`. On start it resumes an operator at the replay
//! point, drops what replay emits for triggers before `X` (already emitted), numbers
//! later outputs from the checkpointed counts, and skips those whose number is not
//! above the last `seq` found in the sink (emitted after the checkpoint, before a
//! crash). Processing is deterministic, so a restart neither loses nor repeats a
//! window. Any checkpoint, however old, is valid; a lost rename only means more replay.
//! Decisions from deny rules depend on the deny-list in force, which may differ on
//! replay: after a restart they follow the list loaded then.
//!
//! Invariants: the runner only touches its source partition's state on this thread;
//! it reads only below the source's high watermark, so every output derives from
//! durable events and a sink never needs cutting after a crash (the output contract
//! in `docs/QUERIES.md`, which also says why decisions do not share the event's sync);
//! a checkpoint never claims outputs that are not durable; a failed output append
//! restarts the runner from its checkpoint.

use crate::batch::{for_each_record, frame_len, BatchBuilder, BatchView};
use crate::error::EngineError;
use crate::query::deny::{DenyList, DenyReader};
use crate::query::json::{extract, Scalar};
use crate::query::window::{Decision, DecisionValue, Operator, Output, WindowResult};
use crate::query::EventFields;
use crate::query::{Condition, QueryDef, QUERIES_DIR};
use crate::shard::{AckLevel, Answered, Request, Shard};
use crate::types::AppendResult;
use crate::types::{now_ms, TopicPartition};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// Checkpoint format version.
pub const CHECKPOINT_VERSION: u64 = 1;
/// Bytes read from the source per round.
pub const READ_CHUNK_BYTES: usize = 256 << 10;
/// Longest the runner sleeps without new data before looking at its checkpoint and
/// deny-list.
pub const IDLE_WAIT_MS: u64 = 200;
/// Pause before a runner whose output failed starts over.
pub const RESTART_BACKOFF_MS: u64 = 1_000;
/// Read rounds whose outputs may be in flight at once: the runner reads on while
/// earlier outputs are being made durable.
pub const ROUNDS_IN_FLIGHT_MAX: usize = 4;
/// Extracted fields per event at most: key, time, value, distinct, one per deny rule.
pub const FIELDS_MAX: usize = 4 + crate::query::RULES_MAX;
/// Records per output batch at most.
pub const OUTPUT_BATCH_RECORDS_MAX: usize = 4096;
/// An output batch is appended once it holds this many bytes: it then never outgrows
/// its buffer, one of the shard's pooled 16 KiB write buffers ([`crate::buffers`]),
/// which stay warm between window closes. A window close's results in one batch of
/// ~100 KB, grown by doubling into memory last touched a window earlier, faulted in
/// fresh huge pages on the shard at every close (docs/ENGINE.md, "Warm memory for
/// window closes").
pub const OUTPUT_BATCH_BYTES_MAX: usize = 12 << 10;

/// A query as the engine runs it: its definition, its deny-list slot and how far it
/// got in each source partition.
#[derive(Debug)]
pub struct RunningQuery {
    /// The definition.
    pub def: Arc<QueryDef>,
    /// Where its deny-list is published.
    pub deny: Arc<DenyList>,
    /// Per source partition: every event below this offset is processed and its
    /// outputs are durable.
    pub processed: Box<[crate::sync::AtomicI64]>,
}

impl RunningQuery {
    fn set_processed(&self, partition: u32, offset: i64) {
        if let Some(slot) = self.processed.get(partition as usize) {
            slot.store(offset, crate::sync::Ordering::Release);
        }
    }
}

/// A query's progress over one partition, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Outputs of triggers below this offset are durable.
    pub next_offset: i64,
    /// Where a replay starts.
    pub replay_from: i64,
    /// Largest event time seen before `replay_from`.
    pub max_time_ms: i64,
    /// Records emitted to `<query>.agg` by triggers below `next_offset`.
    pub agg_seq: u64,
    /// Records emitted to `<query>.decisions` by triggers below `next_offset`.
    pub decision_seq: u64,
}

impl Checkpoint {
    const START: Checkpoint =
        Checkpoint { next_offset: 0, replay_from: 0, max_time_ms: i64::MIN, agg_seq: 0, decision_seq: 0 };

    /// The file of `query` over `tp`.
    pub fn path(data_dir: &Path, query: &str, tp: &TopicPartition) -> PathBuf {
        data_dir.join(QUERIES_DIR).join(query).join(format!("{}.json", tp.dir_name()))
    }

    /// The stored text.
    pub fn encode(&self) -> String {
        serde_json::json!({
            "version": CHECKPOINT_VERSION,
            "next_offset": self.next_offset,
            "replay_from": self.replay_from,
            "max_time_ms": self.max_time_ms,
            "agg_seq": self.agg_seq,
            "decision_seq": self.decision_seq,
        })
        .to_string()
    }

    /// Parses stored text.
    pub fn decode(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if value["version"].as_u64() != Some(CHECKPOINT_VERSION) {
            return Err(format!("unsupported checkpoint version {}", value["version"]));
        }
        let int = |name: &str| value[name].as_i64().ok_or_else(|| format!("missing {name}"));
        let count = |name: &str| value[name].as_u64().ok_or_else(|| format!("missing {name}"));
        let checkpoint = Checkpoint {
            next_offset: int("next_offset")?,
            replay_from: int("replay_from")?,
            max_time_ms: int("max_time_ms")?,
            agg_seq: count("agg_seq")?,
            decision_seq: count("decision_seq")?,
        };
        if checkpoint.replay_from > checkpoint.next_offset || checkpoint.replay_from < 0 {
            return Err("replay_from past next_offset".into());
        }
        Ok(checkpoint)
    }

    /// Reads the checkpoint of `query` over `tp`, or the start when there is none.
    /// An unreadable file is reported and treated as absent (replay from the start).
    pub fn load(data_dir: &Path, query: &str, tp: &TopicPartition) -> Checkpoint {
        let path = Self::path(data_dir, query, tp);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::decode(&text).unwrap_or_else(|reason| {
                tracing::warn!(path = %path.display(), "ignoring bad query checkpoint: {reason}");
                Self::START
            }),
            Err(_) => Self::START,
        }
    }
}

/// Starts every query over every source partition `shard` has open, and (on shard 0)
/// the deny-list topic followers.
pub(crate) fn start_all(shard: &Rc<Shard>, queries: &[Arc<RunningQuery>]) {
    for tp in shard.open_partitions() {
        start_over(shard, queries, &tp);
    }
    if shard.id == 0 {
        for query in queries {
            if let Some(crate::query::DenySource::Topic(topic)) = &query.def.deny_list {
                let follower = follow_deny_topic(shard.clone(), topic.clone(), query.deny.clone());
                drop(tokio_uring::spawn(follower));
            }
        }
    }
}

/// Starts the queries whose source is `tp`'s topic over `tp`.
pub(crate) fn start_over(shard: &Rc<Shard>, queries: &[Arc<RunningQuery>], tp: &TopicPartition) {
    for query in queries.iter().filter(|q| *q.def.source == *tp.topic) {
        drop(tokio_uring::spawn(run(shard.clone(), query.clone(), tp.clone())));
    }
}

/// Runs `query` over `tp` until the shard stops or the partition goes away.
pub(crate) async fn run(shard: Rc<Shard>, query: Arc<RunningQuery>, tp: TopicPartition) {
    loop {
        match run_once(&shard, &query, &tp).await {
            Ok(()) => return,
            Err(EngineError::UntrustedSink(reason)) => {
                // Restarting would find the same sink: say so once and stop this runner
                // (the other partitions' runners go on). Deleting the sink topics
                // (and so the query's checkpoints) lets the query start over.
                tracing::error!(
                    query = %query.def.name,
                    partition = %tp,
                    "query stopped: its output cannot be trusted: {reason}; delete {} and {} to rebuild them",
                    query.def.agg_topic(),
                    query.def.decisions_topic()
                );
                metrics::counter!("corelog_query_stopped_total", "query" => query.def.name.clone())
                    .increment(1);
                return;
            }
            Err(error) => {
                if shard.stopping() {
                    return;
                }
                tracing::warn!(query = %query.def.name, partition = %tp, "query restarts from its checkpoint: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(RESTART_BACKOFF_MS)).await;
            }
        }
    }
}

/// Per-sink numbering: what the checkpoint says was emitted, and the last `seq`
/// already in the sink.
#[derive(Debug, Clone, Copy)]
struct SinkSeq {
    next: u64,
    skip_through: u64,
}

impl SinkSeq {
    /// Numbers one record; false when the sink already has it.
    fn take(&mut self) -> (u64, bool) {
        self.next += 1;
        (self.next, self.next > self.skip_through)
    }
}

struct Sink {
    tp: TopicPartition,
    seq: SinkSeq,
    batch: BatchBuilder,
    json: Vec<u8>,
}

impl Sink {
    async fn open(
        shard: &Rc<Shard>,
        topic: String,
        partition: u32,
        emitted: u64,
    ) -> Result<Self, EngineError> {
        let tp = TopicPartition::new(&topic, partition);
        let last = last_seq(shard, &tp).await?;
        if last < emitted {
            tracing::warn!(sink = %tp, last, emitted, "sink lost records its checkpoint counted (flush=os?)");
        }
        Ok(Self {
            tp,
            seq: SinkSeq { next: emitted, skip_through: last },
            batch: BatchBuilder::in_buffer(crate::buffers::take()),
            json: Vec::with_capacity(256),
        })
    }

    fn push(&mut self, key: &str, value: impl FnOnce(u64, &mut Vec<u8>)) {
        let (seq, fresh) = self.seq.take();
        if !fresh {
            return;
        }
        self.json.clear();
        value(seq, &mut self.json);
        self.batch.push(now_ms(), Some(key.as_bytes()), Some(&self.json));
    }

    /// Whether the batch is as large as an output batch gets.
    fn full(&self) -> bool {
        self.batch.record_count() >= OUTPUT_BATCH_RECORDS_MAX
            || self.batch.len_bytes() >= OUTPUT_BATCH_BYTES_MAX
    }

    /// Appends what was pushed; resolves once durable.
    fn flush(&mut self, shard: &Rc<Shard>) -> Option<Answered<AppendResult>> {
        if self.batch.record_count() == 0 {
            return None;
        }
        // The batch takes its buffer to the shard, which hands it back to the pool
        // once written; the next batch builds in a warm one.
        let batch = self.batch.finish_swap(crate::buffers::take());
        Some(shard.start(|answer| Request::Append {
            tp: self.tp.clone(),
            batch,
            ack: AckLevel::Durable,
            answer,
        }))
    }
}

/// The `seq` of the last record in a sink partition (0 when empty).
async fn last_seq(shard: &Rc<Shard>, tp: &TopicPartition) -> Result<u64, EngineError> {
    let info = shard.call(|answer| Request::Info(tp.clone(), answer)).await?;
    if info.high_watermark <= info.log_start_offset {
        return Ok(0);
    }
    let read = |answer| Request::Read {
        tp: tp.clone(),
        offset: info.high_watermark - 1,
        max_bytes: READ_CHUNK_BYTES,
        strict: false,
        answer,
    };
    let fetched = shard.call(read).await?;
    let mut last = None;
    for_each_batch(&fetched.bytes, |view| {
        if let Some(record) = view.records().ok().and_then(|records| records.into_iter().last()) {
            last = record.value.map(<[u8]>::to_vec);
        }
    });
    let seq = last
        .and_then(|value| serde_json::from_slice::<serde_json::Value>(&value).ok())
        .and_then(|value| value["seq"].as_u64());
    seq.ok_or_else(|| {
        EngineError::UntrustedSink(format!("{tp}: its last record carries no seq (not written by a query)"))
    })
}

fn for_each_batch(mut bytes: &[u8], mut f: impl FnMut(&BatchView<'_>)) {
    while let Some(Ok(len)) = frame_len(bytes) {
        if len > bytes.len() {
            break;
        }
        if let Ok(view) = BatchView::parse(&bytes[..len]) {
            f(&view);
        }
        bytes = &bytes[len..];
    }
}

async fn run_once(
    shard: &Rc<Shard>,
    query: &Arc<RunningQuery>,
    tp: &TopicPartition,
) -> Result<(), EngineError> {
    let def = query.def.clone();
    let data_dir = shard.config.data_dir.clone();
    let checkpoint = Checkpoint::load(&data_dir, &def.name, tp);
    let mut agg = Sink::open(shard, def.agg_topic(), tp.partition, checkpoint.agg_seq).await?;
    let mut decisions =
        Sink::open(shard, def.decisions_topic(), tp.partition, checkpoint.decision_seq).await?;
    let partition = shard.partition(tp)?;
    let mut operator = Operator::resume(def.clone(), checkpoint.max_time_ms).deferring_close();
    let mut offset = checkpoint.replay_from;
    let mut deny = DenyReader::new(query.deny.clone());
    let fields = EventFields::new(&def);
    let mut outputs = Vec::new();
    let mut checkpointer = Checkpointer {
        data_dir: data_dir.clone(),
        query: def.name.clone(),
        tp: tp.clone(),
        interval_ms: def.checkpoint_interval_ms,
        written: checkpoint,
        last_ms: now_ms(),
    };
    let labels = [("query", def.name.clone())];
    let mut reported = operator.stats();
    let mut in_flight: std::collections::VecDeque<InFlightRound> = std::collections::VecDeque::new();
    tracing::info!(query = %def.name, partition = %tp, ?checkpoint, "query starts");
    loop {
        if shard.stopping() || !shard.owns(tp, &partition) {
            return Ok(());
        }
        let fetched = partition.log.borrow().read(offset, READ_CHUNK_BYTES);
        // After the read: a list published before these events were appended applies
        // to them.
        deny.refresh();
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(crate::log::ReadError::OffsetOutOfRange { log_start_offset, .. })
                if offset < log_start_offset =>
            {
                tracing::warn!(query = %def.name, partition = %tp, offset, log_start_offset,
                    "replay start was deleted by retention; windows before it are incomplete");
                offset = log_start_offset;
                continue;
            }
            Err(error) => return Err(EngineError::Read(error)),
        };
        if fetched.bytes.is_empty() && operator.pending_trigger().is_none() {
            settle(&mut in_flight, query, tp, 0).await?;
            query.set_processed(tp.partition, offset);
            checkpointer.maybe(&operator, offset, &agg, &decisions).await;
            partition.wait_for(offset, IDLE_WAIT_MS).await;
            continue;
        }
        let mut bad = 0u64;
        for_each_batch(&fetched.bytes, |view| {
            let decoded = for_each_record(view, |record_offset, timestamp, _, value| {
                if record_offset < offset {
                    return;
                }
                let Some(value) = value else {
                    bad += 1;
                    return;
                };
                // On the stack: one slot per extracted field, no allocation per event.
                let mut slots: [Option<Scalar<'_>>; FIELDS_MAX] = std::array::from_fn(|_| None);
                let slots = &mut slots[..fields.names().len()];
                if !extract(value, fields.names(), slots) {
                    bad += 1;
                    return;
                }
                let Some(event) = fields.event(slots, record_offset, timestamp) else {
                    bad += 1;
                    return;
                };
                let mut denied = [None; crate::query::RULES_MAX];
                let deny_count = fields.denied_ids(slots, &mut denied);
                operator.process(&event, &denied[..deny_count], deny.set(), &mut outputs);
            });
            if decoded.is_err() {
                bad += u64::from(view.record_count());
            }
        });
        // A window close queues its results; a few go out per round, after the
        // round's own decisions, so a close never holds up the events behind it.
        operator.drain_closed(def.close_drain, &mut outputs);
        let chunk_end = fetched.next_offset;
        // Decisions go out first (they are what someone waits for), then window
        // results; every batch is submitted before any is awaited. Appends to one
        // partition are placed in submission order, and a failed append turns the
        // partition read-only so every later one fails too: a sink never has a gap.
        let fresh = |trigger: i64| trigger >= checkpoint.next_offset; // else replayed, emitted before
        let mut appends = Vec::new();
        for output in &outputs {
            if let Output::Decision(decision) = output {
                if fresh(decision.trigger_offset) {
                    decisions.push(&decision.key, |seq, out| encode_decision(&def, tp, seq, decision, out));
                    if decisions.full() {
                        appends.extend(decisions.flush(shard));
                    }
                }
            }
        }
        appends.extend(decisions.flush(shard));
        for output in outputs.drain(..) {
            if let Output::Window(window) = output {
                if fresh(window.trigger_offset) {
                    agg.push(&window.key, |seq, out| encode_window(&def, tp, seq, &window, out));
                    if agg.full() {
                        appends.extend(agg.flush(shard));
                    }
                }
            }
        }
        appends.extend(agg.flush(shard));
        // Events from a pending close's trigger on are not complete until it drained.
        let complete = operator.pending_trigger().map_or(chunk_end, |trigger| trigger.min(chunk_end));
        in_flight.push_back((complete, appends));
        offset = chunk_end;
        settle(&mut in_flight, query, tp, ROUNDS_IN_FLIGHT_MAX).await?;
        // A checkpoint claims only durable outputs, and none is written while a close
        // drains (waiting for every output each round would then only slow the drain).
        if checkpointer.due() && operator.pending_trigger().is_none() {
            settle(&mut in_flight, query, tp, 0).await?;
        }
        let stats = operator.stats();
        metrics::counter!("corelog_query_events_total", &labels).increment(stats.events - reported.events);
        metrics::counter!("corelog_query_late_events_total", &labels)
            .increment(stats.late_events - reported.late_events);
        metrics::counter!("corelog_query_windows_total", &labels).increment(stats.windows - reported.windows);
        metrics::counter!("corelog_query_decisions_total", &labels)
            .increment(stats.decisions - reported.decisions);
        metrics::counter!("corelog_query_bad_events_total", &labels).increment(bad);
        metrics::gauge!("corelog_query_lag_offsets", &labels).set((fetched.high_watermark - offset) as f64);
        reported = stats;
        if operator.pending_trigger().is_some() {
            tokio::task::yield_now().await; // let appends and other runners in between chunks
            continue;
        }
        if !in_flight.is_empty() {
            continue;
        }
        checkpointer.maybe(&operator, offset, &agg, &decisions).await;
    }
}

/// Output appends of one read round, with the source offset they complete.
type InFlightRound = (i64, Vec<Answered<AppendResult>>);

/// Awaits the oldest rounds until at most `keep` are in flight, marking each one's
/// source offset processed once its outputs are durable.
async fn settle(
    in_flight: &mut std::collections::VecDeque<InFlightRound>,
    query: &RunningQuery,
    tp: &TopicPartition,
    keep: usize,
) -> Result<(), EngineError> {
    while in_flight.len() > keep {
        let (end, appends) = in_flight.pop_front().expect("non-empty");
        for append in appends {
            await_append(Some(append)).await?;
        }
        query.set_processed(tp.partition, end);
    }
    Ok(())
}

async fn await_append(append: Option<Answered<AppendResult>>) -> Result<(), EngineError> {
    let Some(append) = append else { return Ok(()) };
    append.await.unwrap_or(Err(EngineError::ShuttingDown)).map(|_| ())
}

/// When and where a runner checkpoints, and what it wrote last.
struct Checkpointer {
    data_dir: PathBuf,
    query: String,
    tp: TopicPartition,
    interval_ms: i64,
    written: Checkpoint,
    last_ms: i64,
}

impl Checkpointer {
    fn due(&self) -> bool {
        now_ms() - self.last_ms >= self.interval_ms
    }

    /// Writes a checkpoint at `offset` if one is due and progress was made. Every
    /// output of events below `offset` must be durable. Never while closed windows
    /// wait to be drained: their trigger is below `offset`, so a restart from that
    /// checkpoint would take them for emitted.
    async fn maybe(&mut self, operator: &Operator, offset: i64, agg: &Sink, decisions: &Sink) {
        if !self.due() || offset == self.written.next_offset || operator.pending_trigger().is_some() {
            return;
        }
        let (replay_from, max_time_ms) = operator.replay_point().unwrap_or((offset, operator.max_time_ms()));
        let checkpoint = Checkpoint {
            next_offset: offset,
            replay_from,
            max_time_ms,
            agg_seq: agg.seq.next,
            decision_seq: decisions.seq.next,
        };
        self.last_ms = now_ms();
        match write_checkpoint(&self.data_dir, &self.query, &self.tp, &checkpoint).await {
            Ok(()) => self.written = checkpoint,
            Err(error) => {
                tracing::warn!(query = %self.query, partition = %self.tp, "checkpoint not written: {error}")
            }
        }
    }
}

/// Writes a checkpoint through io_uring: temp file, fdatasync, rename. The rename is
/// not synced: losing it only leaves the previous (still valid) checkpoint.
async fn write_checkpoint(
    data_dir: &Path,
    query: &str,
    tp: &TopicPartition,
    checkpoint: &Checkpoint,
) -> std::io::Result<()> {
    let path = Checkpoint::path(data_dir, query, tp);
    let dir = path.parent().expect("checkpoint path has a directory");
    if !dir.exists() {
        std::fs::create_dir_all(dir)?; // unsynced like the rename: losing it loses nothing
    }
    let temp = path.with_extension("json.tmp");
    let file = tokio_uring::fs::File::create(&temp).await?;
    let (written, _) = file.write_all_at(checkpoint.encode().into_bytes(), 0).await;
    written?;
    file.sync_data().await?;
    file.close().await?;
    std::fs::rename(&temp, &path)
}

/// Follows a deny-list topic (every partition, from the start): each record's key is
/// a denied id, a record with a null value removes it. Publishes the whole set to
/// `list` whenever a round read something and every partition is caught up.
pub(crate) async fn follow_deny_topic(shard: Rc<Shard>, topic: String, list: Arc<DenyList>) {
    let mut ids: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut offsets: Vec<i64> = Vec::new();
    let mut changed = false;
    while !shard.stopping() {
        let partitions = shard.catalog.partition_count(&topic).unwrap_or(0) as usize;
        offsets.resize(partitions, 0);
        let mut caught_up = true;
        for (partition, offset) in offsets.iter_mut().enumerate() {
            let tp = TopicPartition::new(&topic, partition as u32);
            let read = |answer| Request::Read {
                tp,
                offset: *offset,
                max_bytes: READ_CHUNK_BYTES,
                strict: false,
                answer,
            };
            let fetched = match shard.call(read).await {
                Ok(fetched) => fetched,
                Err(EngineError::Read(crate::log::ReadError::OffsetOutOfRange {
                    log_start_offset, ..
                })) if *offset < log_start_offset => {
                    *offset = log_start_offset;
                    caught_up = false;
                    continue;
                }
                Err(_) => continue,
            };
            for_each_batch(&fetched.bytes, |view| {
                let decoded = for_each_record(view, |record_offset, _, key, value| {
                    let key = key.and_then(|k| std::str::from_utf8(k).ok());
                    let Some(key) = key.filter(|_| record_offset >= *offset) else { return };
                    changed |= match value {
                        Some(_) => ids.insert(key.to_string()),
                        None => ids.remove(key),
                    };
                });
                if let Err(error) = decoded {
                    tracing::warn!(topic, "deny-list batch skipped: {error}");
                }
            });
            caught_up &= fetched.next_offset >= fetched.high_watermark;
            *offset = fetched.next_offset;
        }
        if changed && caught_up {
            tracing::info!(topic, ids = ids.len(), "deny-list loaded");
            list.publish(crate::query::deny::DenySet::from_ids(ids.iter().cloned()));
            changed = false;
        }
        if caught_up {
            tokio::time::sleep(std::time::Duration::from_millis(IDLE_WAIT_MS)).await;
        }
    }
}

fn encode_window(def: &QueryDef, tp: &TopicPartition, seq: u64, window: &WindowResult, out: &mut Vec<u8>) {
    let key = serde_json::to_string(&*window.key).expect("a string encodes");
    let _ = write!(
        out,
        r#"{{"query":"{}","partition":{},"seq":{seq},"key":{key},"window_start":{},"window_end":{},"count":{}"#,
        def.name, tp.partition, window.start_ms, window.end_ms, window.count
    );
    if def.value_field.is_some() {
        let _ = write!(out, r#","sum":{},"min":{},"max":{}"#, window.sum, window.min, window.max);
    }
    if def.distinct_field.is_some() {
        let _ = write!(out, r#","distinct":{}"#, window.distinct);
    }
    let _ = write!(out, r#","ts":{},"offset":{}}}"#, window.trigger_time_ms, window.trigger_offset);
}

fn encode_decision(def: &QueryDef, tp: &TopicPartition, seq: u64, decision: &Decision, out: &mut Vec<u8>) {
    let rule = &def.rules[decision.rule];
    let key = serde_json::to_string(&*decision.key).expect("a string encodes");
    let name = serde_json::to_string(&rule.name).expect("a string encodes");
    let _ = write!(
        out,
        r#"{{"query":"{}","partition":{},"seq":{seq},"rule":{name},"key":{key}"#,
        def.name, tp.partition
    );
    if let Some((start, end)) = decision.window {
        let _ = write!(out, r#","window_start":{start},"window_end":{end}"#);
    }
    match (&decision.value, &rule.condition) {
        (DecisionValue::Aggregate(value), Condition::Threshold { aggregate, .. }) => {
            let _ = write!(out, r#","{}":{value}"#, aggregate.name());
        }
        (DecisionValue::Denied(id), Condition::Denied { field }) => {
            let id = serde_json::to_string(&**id).expect("a string encodes");
            let _ = write!(out, r#","field":"{field}","denied":{id}"#);
        }
        _ => unreachable!("a decision matches its rule"),
    }
    let _ = write!(out, r#","ts":{},"offset":{}}}"#, decision.trigger_time_ms, decision.trigger_offset);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_batch_is_full_before_it_outgrows_the_builders_first_allocation() {
        let mut sink = Sink {
            tp: TopicPartition::new("q.agg", 0),
            seq: SinkSeq { next: 0, skip_through: 0 },
            batch: BatchBuilder::in_buffer(crate::buffers::take()),
            json: Vec::new(),
        };
        let value = vec![b'v'; 300];
        let mut pushed = 0;
        while !sink.full() {
            sink.push("user-42", |_, out| out.extend_from_slice(&value));
            pushed += 1;
        }
        assert!(pushed < OUTPUT_BATCH_RECORDS_MAX, "{pushed} records");
        assert!(sink.batch.len_bytes() <= crate::buffers::BUFFER_BYTES, "{} bytes", sink.batch.len_bytes());
    }

    #[test]
    fn given_a_checkpoint_when_encoded_then_it_decodes_to_itself_and_bad_text_is_refused() {
        let checkpoint = Checkpoint {
            next_offset: 900,
            replay_from: 700,
            max_time_ms: 1_700_000_000_000,
            agg_seq: 12,
            decision_seq: 3,
        };
        assert_eq!(Checkpoint::decode(&checkpoint.encode()).unwrap(), checkpoint);
        assert!(Checkpoint::decode(&checkpoint.encode().replace("\"version\":1", "\"version\":9")).is_err());
        assert!(Checkpoint::decode("{").is_err());
        let backwards = Checkpoint { replay_from: 901, ..checkpoint };
        assert!(Checkpoint::decode(&backwards.encode()).is_err());
    }

    #[test]
    fn given_a_sink_tail_when_numbering_then_records_at_or_below_it_are_skipped() {
        let mut seq = SinkSeq { next: 10, skip_through: 12 };
        assert_eq!(seq.take(), (11, false));
        assert_eq!(seq.take(), (12, false));
        assert_eq!(seq.take(), (13, true));
    }
}
