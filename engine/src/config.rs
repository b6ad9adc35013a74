//! Engine settings ([`EngineConfig`]) and their defaults: every bound a flag can set is
//! named here.

use crate::log::LogConfig;
use crate::types::FlushMode;
use std::path::PathBuf;

/// Default bound on one Kafka request frame (`--max-request-bytes`).
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 100 << 20;

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
    /// Where every shard accepts Kafka-protocol connections (SO_REUSEPORT), each with
    /// its security protocol; none for a purely embedded engine.
    pub listeners: Vec<security::Listener>,
    /// TLS material, super users and the insecure-listener switches (see the
    /// `security` crate).
    pub security: security::SecurityConfig,
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
            listeners: Vec::new(),
            security: security::SecurityConfig::default(),
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
