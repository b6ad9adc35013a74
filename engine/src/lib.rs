//! # engine — corelog's log and stream engine
//!
//! One durable, partitioned log on a thread-per-core engine. This crate owns:
//!
//! * [`batch`]: the Kafka RecordBatch v2 byte format (zero-copy view, CRC32C,
//!   base-offset assignment, an encoder for uncompressed batches);
//! * [`segment`] and [`log`]: Kafka-layout segment files with sparse offset and time
//!   indexes, appends, reads up to the high watermark, recovery, retention;
//! * [`ring`], [`watermark`] and [`sync`]: the lock-free primitives shards share, on
//!   a `sync` facade that `loom-tests` swaps for loom's types;
//! * [`query`]: stream queries (windows, watermark, rules, deny-lists) run by the shard
//!   that owns each source partition, right behind the durable append;
//! * [`producers`]: idempotent producers' sequence state, snapshotted beside the log
//!   and rebuilt from it on open;
//! * [`lies`]: structure-aware lying batches (valid CRC, lying fields) and the oracle
//!   the validation property test and fuzz target judge them by;
//! * [`landed`]: the lander's landed-offset registrations that retention honours;
//! * [`fault`]: the storage-fault layer every shard write and sync passes (tests arm
//!   EIO, ENOSPC and short writes through it);
//! * [`prealloc`]: the zero-filled space a shard keeps ahead of a partition's tail;
//! * [`io`]: the io_uring probe and the per-shard writer/flusher (group commit);
//! * [`shard`] and [`Engine`]: shard threads pinned one per core, partition ownership,
//!   the N×N SPSC mesh and per-shard MPSC submission rings, and the embedded API.
//!
//! Invariants (see `ARCHITECTURE.md`): each partition is owned by exactly one shard and
//! only that thread touches its files and state; consumers never see offsets at or
//! past the high watermark; a broken invariant in the log is a crash with a message,
//! bad input is an error. The only `unsafe` code is in `ring`, `io` and `segment`.
//! This crate never links `parquet`/`arrow`.
//!
//! ```
//! use engine::{batch::BatchBuilder, Engine, EngineConfig, FlushMode};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let engine = Engine::open(EngineConfig { flush: FlushMode::Group, ..EngineConfig::new(dir.path()) })?;
//! engine.create_topic("payments", 8)?;
//! let mut batch = BatchBuilder::default();
//! batch.push(engine::now_ms(), Some(&b"u1"[..]), Some(&br#"{"amount_cents":1234}"#[..]));
//! let ack = engine.append("payments", 0, batch.finish()).wait()?; // durable per flush mode
//! let fetched = engine.read("payments", 0, ack.base_offset, 1 << 20).wait()?; // mmap-backed Bytes
//! assert_eq!(fetched.next_offset, 1);
//! engine.shutdown()?;
//! # Ok(()) }
//! ```

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![deny(clippy::await_holding_refcell_ref)]

pub mod batch;
pub mod buffers;
mod catalog;
pub mod commit;
mod config;
pub mod disk;
mod engine;
mod error;
pub mod fault;
pub mod groups;
pub mod io;
pub mod kafka;
pub mod landed;
pub mod lies;
pub mod log;
pub mod partition_meta;
pub mod plant;
pub mod prealloc;
pub mod producers;
pub use query;
mod query_runner;
pub mod ring;
pub mod segment;
pub mod shard;
mod stats;
pub mod sync;
mod types;
pub mod watermark;

pub use catalog::{parse_partition_dir, CLEAN_MARKER_FILE, LAYOUT_VERSION, META_FILE, OPENED_SLACK_MS};
pub use config::{
    EngineConfig, MAX_CONNECTIONS_DEFAULT, MAX_PARTITIONS_DEFAULT, MAX_REQUEST_BYTES_DEFAULT,
    MEMORY_BUDGET_BYTES_DEFAULT, OFFSETS_RETENTION_MS_DEFAULT,
};
pub use engine::{Engine, Pending, Via};
pub use error::EngineError;
pub use shard::PartitionInfo;
pub use stats::{fill_stats, fsync_stats, heal_count, synced_write_count};
pub use types::{now_ms, AppendResult, FlushMode, TopicPartition};
