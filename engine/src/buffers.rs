//! Warm write buffers: a small per-thread pool of 16 KiB buffers that output batches
//! are built in and that a shard hands back once their bytes are written.
//!
//! Why: memory a thread frees is given back to the kernel by the allocator within about
//! a second, and asking for it again faults it in anew, a whole 2 MiB huge page zeroed
//! at a time; on the development VM one such fault held a shard for about as long as a
//! sync. A query's window close builds hundreds of output batches once per window, in
//! memory last touched a window earlier (docs/ENGINE.md, "Warm memory for window
//! closes"). Buffers kept here stay mapped, so a close builds in warm memory.
//!
//! Owns: the calling thread's spare buffers. Invariants: at most [`POOLED_MAX`] buffers
//! per thread, each empty, the sole owner of its allocation, and holding between
//! [`BUFFER_BYTES`] and [`BUFFER_BYTES_KEPT_MAX`] bytes of capacity; so a thread keeps at
//! most `POOLED_MAX × BUFFER_BYTES_KEPT_MAX` (2 MiB) here. Never: shares a buffer
//! between threads (a buffer handed to another thread's shard is given back to that
//! thread's pool), keeps a slice of a larger allocation (a request frame's batches), or
//! blocks.

use bytes::BytesMut;
use std::cell::RefCell;

/// Capacity of a pooled buffer.
pub const BUFFER_BYTES: usize = 16 << 10;
/// A buffer given back with more capacity than this is dropped, not kept.
pub const BUFFER_BYTES_KEPT_MAX: usize = 2 * BUFFER_BYTES;
/// Buffers kept per thread at most.
pub const POOLED_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of at least [`BUFFER_BYTES`]: a pooled one when there is one.
pub fn take() -> BytesMut {
    POOL.with(|pool| pool.borrow_mut().pop()).unwrap_or_else(|| BytesMut::with_capacity(BUFFER_BYTES))
}

/// Hands a buffer whose bytes are no longer needed back to this thread's pool; kept
/// only if it owns its whole allocation, of a pooled size, and the pool has room.
pub fn give(mut buffer: BytesMut) {
    buffer.clear();
    // Reclaims the whole allocation when no other handle shares it (false otherwise:
    // a batch sliced out of a request frame whose other batches are still alive).
    if !buffer.try_reclaim(BUFFER_BYTES) || buffer.capacity() > BUFFER_BYTES_KEPT_MAX {
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOLED_MAX {
            pool.push(buffer);
        }
    });
}

/// Buffers in this thread's pool.
pub fn pooled() -> usize {
    POOL.with(|pool| pool.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_pool() {
        while pooled() > 0 {
            drop(take());
        }
    }

    #[test]
    fn a_written_buffer_comes_back_warm_and_the_pool_is_bounded() {
        drain_pool();
        let mut buffer = take();
        buffer.extend_from_slice(&[7; 1000]);
        let allocation = buffer.as_ptr();
        give(buffer);
        assert_eq!(pooled(), 1);
        let again = take();
        assert_eq!(again.as_ptr(), allocation, "the same allocation is handed out again");
        assert!(again.is_empty() && again.capacity() >= BUFFER_BYTES);
        for _ in 0..POOLED_MAX + 10 {
            give(BytesMut::with_capacity(BUFFER_BYTES));
        }
        assert_eq!(pooled(), POOLED_MAX);
        drain_pool();
    }

    #[test]
    fn shared_oversized_and_small_buffers_are_not_kept() {
        drain_pool();
        // A batch sliced out of a frame whose rest is still alive.
        let mut frame = BytesMut::with_capacity(BUFFER_BYTES);
        frame.extend_from_slice(&[1; 4096]);
        let batch = frame.split_to(2048);
        give(batch);
        assert_eq!(pooled(), 0, "shares its allocation with the frame");
        // The last handle of a large frame: reclaimable, but too large to keep.
        let mut large = BytesMut::with_capacity(1 << 20);
        large.extend_from_slice(&[1; 4096]);
        give(large);
        assert_eq!(pooled(), 0, "a 1 MiB allocation is not kept");
        // The last handle of a small frame's slice reclaims the whole allocation.
        drop(frame);
        let mut small = BytesMut::with_capacity(BUFFER_BYTES);
        small.extend_from_slice(&[1; 100]);
        let piece = small.split_to(50);
        drop(small);
        give(piece);
        assert_eq!(pooled(), 1);
        assert!(take().capacity() >= BUFFER_BYTES);
        drain_pool();
    }
}
