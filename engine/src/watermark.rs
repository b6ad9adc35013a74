//! The high watermark: the offset after the last durable record of a partition,
//! written by the owning shard and read by any thread.
//!
//! Publication protocol: the owner writes the log bytes (and syncs them, per flush
//! mode) *before* it stores the new watermark with `Release`; a reader loads it with
//! `Acquire` and then reads bytes below it, so every byte below a watermark it saw is
//! visible to it. The watermark never goes backwards while the partition is open.
//! `loom-tests` checks this protocol with this exact file.

use crate::sync::{AtomicI64, Ordering};
use crossbeam_utils::CachePadded;

/// A monotonic offset published with release/acquire ordering.
#[derive(Debug)]
pub struct HighWatermark {
    offset: CachePadded<AtomicI64>,
}

impl HighWatermark {
    /// A watermark starting at `offset`.
    pub fn new(offset: i64) -> Self {
        assert!(offset >= 0, "offsets are non-negative");
        Self { offset: CachePadded::new(AtomicI64::new(offset)) }
    }

    /// Owner only: publishes `offset`. Every byte below it must already be written.
    pub fn publish(&self, offset: i64) {
        let previous = self.offset.load(Ordering::Relaxed);
        assert!(offset >= previous, "high watermark goes back from {previous} to {offset}");
        self.offset.store(offset, Ordering::Release);
    }

    /// Any thread: the current watermark; bytes below it are visible after this call.
    pub fn load(&self) -> i64 {
        self.offset.load(Ordering::Acquire)
    }
}
