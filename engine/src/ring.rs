//! Bounded lock-free rings: how shards talk to each other and how the embedded API
//! talks to a shard.
//!
//! * [`spsc`]: one single-producer / single-consumer ring per ordered pair of shards
//!   (the N×N mesh). Lamport's ring with cached indices: the producer owns `tail`, the
//!   consumer owns `head`; each publishes its index with `Release` and reads the
//!   other's with `Acquire`, so a slot's contents are visible before its index is.
//! * [`mpsc`]: the per-shard submission ring for callers outside the shard threads.
//!   Vyukov's bounded queue: every slot carries a sequence number; producers claim a
//!   position with a CAS on `tail` and publish the slot by storing `position + 1` into
//!   its sequence with `Release`; the single consumer frees it by storing
//!   `position + capacity`.
//! * [`Doorbell`]: the parking state a shard sets before it parks on its eventfd, so
//!   producers know when a wake-up is needed. Read-modify-writes only: loom found a lost
//!   wake-up in an earlier flag-plus-fences version of this protocol.
//!
//! Invariants: capacity is a power of two and at most [`RING_ENTRIES_MAX`]; every ring
//! is bounded, a full ring returns the value to the caller (`Err(value)`), never
//! blocks and never allocates after construction; indices only grow (wrapping) and
//! `tail - head <= capacity` at every instant. Atomics come from [`crate::sync`] so
//! `loom-tests` checks this exact code.

use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};
use crossbeam_utils::CachePadded;
use std::mem::MaybeUninit;

/// Largest ring the engine builds.
pub const RING_ENTRIES_MAX: usize = 1 << 20;

fn check_capacity(capacity: usize) {
    assert!(
        capacity.is_power_of_two() && capacity <= RING_ENTRIES_MAX,
        "ring capacity {capacity} must be a power of two <= {RING_ENTRIES_MAX}"
    );
}

/// Single-producer / single-consumer ring.
pub mod spsc {
    use super::*;

    struct Inner<T> {
        head: CachePadded<AtomicUsize>,
        tail: CachePadded<AtomicUsize>,
        slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
        mask: usize,
    }

    // SAFETY: values of T move between exactly two threads; each slot is accessed by
    // one side at a time, handed over through the Release/Acquire index stores.
    unsafe impl<T: Send> Send for Inner<T> {}
    // SAFETY: as above; the producer and consumer handles are not Clone.
    unsafe impl<T: Send> Sync for Inner<T> {}

    impl<T> Drop for Inner<T> {
        fn drop(&mut self) {
            let tail = self.tail.load(Ordering::Relaxed);
            let mut head = self.head.load(Ordering::Relaxed);
            while head != tail {
                // SAFETY: slots in head..tail were written and not yet read; we have
                // exclusive access in drop.
                self.slots[head & self.mask].with_mut(|slot| unsafe { (*slot).assume_init_drop() });
                head = head.wrapping_add(1);
            }
        }
    }

    /// The producing end.
    pub struct Producer<T> {
        inner: Arc<Inner<T>>,
        tail: usize,
        head_cached: usize,
    }

    /// The consuming end.
    pub struct Consumer<T> {
        inner: Arc<Inner<T>>,
        head: usize,
        tail_cached: usize,
    }

    impl<T> std::fmt::Debug for Producer<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("spsc::Producer").field("tail", &self.tail).finish()
        }
    }
    impl<T> std::fmt::Debug for Consumer<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("spsc::Consumer").field("head", &self.head).finish()
        }
    }

    /// A ring of `capacity` entries (a power of two).
    pub fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
        check_capacity(capacity);
        let slots = (0..capacity).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
        let inner = Arc::new(Inner {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            slots,
            mask: capacity - 1,
        });
        let producer = Producer { inner: inner.clone(), tail: 0, head_cached: 0 };
        (producer, Consumer { inner, head: 0, tail_cached: 0 })
    }

    impl<T> Producer<T> {
        /// Pushes `value`, or gives it back when the ring is full.
        pub fn push(&mut self, value: T) -> Result<(), T> {
            let capacity = self.inner.mask + 1;
            if self.tail.wrapping_sub(self.head_cached) == capacity {
                self.head_cached = self.inner.head.load(Ordering::Acquire);
                if self.tail.wrapping_sub(self.head_cached) == capacity {
                    return Err(value);
                }
            }
            debug_assert!(self.tail.wrapping_sub(self.head_cached) < capacity);
            // SAFETY: the slot at tail is free (tail - head < capacity) and only the
            // producer writes slots; the consumer will not read it before the Release
            // store of tail below.
            self.inner.slots[self.tail & self.inner.mask].with_mut(|slot| unsafe { (*slot).write(value) });
            self.tail = self.tail.wrapping_add(1);
            self.inner.tail.store(self.tail, Ordering::Release);
            Ok(())
        }

        /// Entries currently queued (a snapshot).
        pub fn len(&self) -> usize {
            self.tail.wrapping_sub(self.inner.head.load(Ordering::Acquire))
        }

        /// True when nothing is queued (a snapshot).
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
    }

    impl<T> Consumer<T> {
        /// Pops the oldest value, if any.
        pub fn pop(&mut self) -> Option<T> {
            if self.head == self.tail_cached {
                self.tail_cached = self.inner.tail.load(Ordering::Acquire);
                if self.head == self.tail_cached {
                    return None;
                }
            }
            // SAFETY: head < tail, so the producer wrote this slot and published it
            // with the Release store we just Acquired; we move the value out once.
            let value = self.inner.slots[self.head & self.inner.mask]
                .with(|slot| unsafe { (*slot).assume_init_read() });
            self.head = self.head.wrapping_add(1);
            self.inner.head.store(self.head, Ordering::Release);
            Some(value)
        }

        /// True when the producer has published nothing new (a snapshot).
        pub fn is_empty(&self) -> bool {
            self.head == self.inner.tail.load(Ordering::Acquire)
        }
    }
}

/// Multi-producer / single-consumer ring.
pub mod mpsc {
    use super::*;

    struct Slot<T> {
        sequence: AtomicUsize,
        value: UnsafeCell<MaybeUninit<T>>,
    }

    struct Inner<T> {
        tail: CachePadded<AtomicUsize>,
        head: CachePadded<AtomicUsize>,
        slots: Box<[Slot<T>]>,
        mask: usize,
    }

    // SAFETY: a slot's value is written by the one producer that claimed its position
    // and read by the one consumer after the sequence handoff (Release/Acquire).
    unsafe impl<T: Send> Send for Inner<T> {}
    // SAFETY: as above.
    unsafe impl<T: Send> Sync for Inner<T> {}

    impl<T> Drop for Inner<T> {
        fn drop(&mut self) {
            let mut head = self.head.load(Ordering::Relaxed);
            loop {
                let slot = &self.slots[head & self.mask];
                if slot.sequence.load(Ordering::Relaxed) != head.wrapping_add(1) {
                    break;
                }
                // SAFETY: the sequence says this slot holds a published value; we have
                // exclusive access in drop.
                slot.value.with_mut(|value| unsafe { (*value).assume_init_drop() });
                head = head.wrapping_add(1);
            }
        }
    }

    /// A producing end; clone it for more producers.
    pub struct Producer<T> {
        inner: Arc<Inner<T>>,
    }

    impl<T> Clone for Producer<T> {
        fn clone(&self) -> Self {
            Self { inner: self.inner.clone() }
        }
    }

    /// The one consuming end.
    pub struct Consumer<T> {
        inner: Arc<Inner<T>>,
    }

    impl<T> std::fmt::Debug for Producer<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("mpsc::Producer").finish_non_exhaustive()
        }
    }
    impl<T> std::fmt::Debug for Consumer<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("mpsc::Consumer").finish_non_exhaustive()
        }
    }

    /// A ring of `capacity` entries (a power of two).
    pub fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
        check_capacity(capacity);
        let slots = (0..capacity)
            .map(|position| Slot {
                sequence: AtomicUsize::new(position),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        let inner = Arc::new(Inner {
            tail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
            slots,
            mask: capacity - 1,
        });
        (Producer { inner: inner.clone() }, Consumer { inner })
    }

    impl<T> Producer<T> {
        /// Pushes `value`, or gives it back when the ring is full.
        pub fn push(&self, value: T) -> Result<(), T> {
            let inner = &*self.inner;
            let mut position = inner.tail.load(Ordering::Relaxed);
            let backoff = crossbeam_utils::Backoff::new();
            loop {
                let slot = &inner.slots[position & inner.mask];
                let sequence = slot.sequence.load(Ordering::Acquire);
                let lag = sequence.wrapping_sub(position) as isize;
                if lag == 0 {
                    match inner.tail.compare_exchange_weak(
                        position,
                        position.wrapping_add(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => {
                            // SAFETY: the CAS gave this producer exclusive ownership of
                            // the slot until it publishes the sequence below.
                            slot.value.with_mut(|cell| unsafe { (*cell).write(value) });
                            slot.sequence.store(position.wrapping_add(1), Ordering::Release);
                            return Ok(());
                        }
                        Err(current) => position = current,
                    }
                } else if lag < 0 {
                    return Err(value); // the consumer has not freed this slot: full
                } else {
                    crate::sync::spin_wait(&backoff);
                    position = inner.tail.load(Ordering::Relaxed);
                }
            }
        }
    }

    impl<T> Consumer<T> {
        /// Pops the oldest published value, if any.
        pub fn pop(&mut self) -> Option<T> {
            let inner = &*self.inner;
            let head = inner.head.load(Ordering::Relaxed);
            let slot = &inner.slots[head & inner.mask];
            if slot.sequence.load(Ordering::Acquire) != head.wrapping_add(1) {
                return None;
            }
            // SAFETY: the Acquire load saw the producer's Release publication of this
            // slot; only this consumer reads it, once.
            let value = slot.value.with(|cell| unsafe { (*cell).assume_init_read() });
            slot.sequence.store(head.wrapping_add(inner.mask + 1), Ordering::Release);
            inner.head.store(head.wrapping_add(1), Ordering::Relaxed);
            Some(value)
        }

        /// True when no published value is waiting (a snapshot).
        pub fn is_empty(&self) -> bool {
            let inner = &*self.inner;
            let head = inner.head.load(Ordering::Relaxed);
            inner.slots[head & inner.mask].sequence.load(Ordering::Acquire) != head.wrapping_add(1)
        }
    }
}

/// The consumer's parking state, so producers know when a wake-up is needed.
///
/// One atomic with three states, changed only by read-modify-writes (which are totally
/// ordered per location, so no store-load fence argument is needed):
/// * consumer, with every ring empty: [`Doorbell::prepare_park`] moves AWAKE→PARKED and
///   says "park"; if a producer rang since the consumer last woke (NOTIFIED), it resets
///   to AWAKE and says "re-check the rings" instead;
/// * consumer, after its eventfd fired: [`Doorbell::woke`] resets to AWAKE;
/// * producer, after every push: [`Doorbell::ring`] swaps in NOTIFIED and returns true
///   when it replaced PARKED, i.e. when this caller must signal the eventfd.
///
/// A push whose `ring` precedes the consumer's `prepare_park` makes that CAS fail (and
/// its Acquire makes the push visible to the re-check); one that follows it sees PARKED
/// and signals. No wake-up is lost (`loom-tests` checks this).
#[derive(Debug, Default)]
pub struct Doorbell {
    state: CachePadded<AtomicUsize>,
}

const AWAKE: usize = 0;
const PARKED: usize = 1;
const NOTIFIED: usize = 2;

impl Doorbell {
    /// A doorbell with the consumer awake.
    pub fn new() -> Self {
        Self { state: CachePadded::new(AtomicUsize::new(AWAKE)) }
    }

    /// Consumer, having found every ring empty: true when it may park now; false when
    /// a producer rang meanwhile and the rings must be checked again.
    pub fn prepare_park(&self) -> bool {
        match self.state.compare_exchange(AWAKE, PARKED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(current) => {
                assert_eq!(current, NOTIFIED, "only the consumer parks");
                self.state.swap(AWAKE, Ordering::AcqRel);
                false
            }
        }
    }

    /// Consumer, after a wake-up: back to AWAKE before it drains the rings.
    pub fn woke(&self) {
        self.state.swap(AWAKE, Ordering::AcqRel);
    }

    /// Producer, after a push: true when the consumer is parked and this caller must
    /// signal it.
    pub fn ring(&self) -> bool {
        self.state.swap(NOTIFIED, Ordering::AcqRel) == PARKED
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn spsc_full_ring_returns_value_and_preserves_order() {
        let (mut producer, mut consumer) = spsc::channel(4);
        for i in 0..4 {
            producer.push(i).unwrap();
        }
        assert_eq!(producer.push(99), Err(99));
        assert_eq!(consumer.pop(), Some(0));
        producer.push(4).unwrap();
        let drained: Vec<_> = std::iter::from_fn(|| consumer.pop()).collect();
        assert_eq!(drained, vec![1, 2, 3, 4]);
    }

    #[test]
    fn mpsc_two_threads_deliver_everything_once() {
        let (producer, mut consumer) = mpsc::channel::<u64>(64);
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let producer = producer.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let mut value = t * 1_000_000 + i;
                        while let Err(back) = producer.push(value) {
                            value = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        while seen.len() < 20_000 {
            match consumer.pop() {
                Some(v) => seen.push(v),
                None => std::thread::yield_now(),
            }
        }
        threads.into_iter().for_each(|t| t.join().unwrap());
        for t in 0..2u64 {
            let mine: Vec<_> = seen.iter().filter(|v| **v / 1_000_000 == t).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "per-producer FIFO");
            assert_eq!(mine.len(), 10_000);
        }
    }

    #[test]
    fn dropping_a_ring_drops_queued_values() {
        let marker = std::sync::Arc::new(());
        let (mut producer, consumer) = spsc::channel(8);
        producer.push(marker.clone()).unwrap();
        let (mpsc_producer, mpsc_consumer) = mpsc::channel(8);
        mpsc_producer.push(marker.clone()).unwrap();
        drop((producer, consumer, mpsc_producer, mpsc_consumer));
        assert_eq!(std::sync::Arc::strong_count(&marker), 1);
    }
}
