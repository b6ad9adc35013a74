//! Process-wide counters the benches and tests read besides the `metrics` exporter:
//! group-commit syncs, synced writes, partitions healed, zero fills ahead of the tail.
//!
//! Invariant: counters only grow; nothing here blocks.

use crate::sync::{AtomicU64, Ordering};

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

static FILLS: AtomicU64 = AtomicU64::new(0);
static FILL_BYTES: AtomicU64 = AtomicU64::new(0);

/// A fill of `bytes` zeros ahead of a partition's tail was written and synced.
pub(crate) fn record_fill(bytes: u64) {
    metrics::counter!("corelog_prealloc_fills_total").increment(1);
    metrics::counter!("corelog_prealloc_bytes_total").increment(bytes);
    FILLS.fetch_add(1, Ordering::Relaxed);
    FILL_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

/// Process-wide counters: (fills of zeros written and synced ahead of partitions'
/// tails, their bytes).
pub fn fill_stats() -> (u64, u64) {
    (FILLS.load(Ordering::Relaxed), FILL_BYTES.load(Ordering::Relaxed))
}
