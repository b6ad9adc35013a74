//! loom models of the engine's shared primitives, 2–3 threads each.
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release`.
#![cfg(loom)]

use loom::sync::{Arc, Notify};
use loom::thread;
use loom_tests::ring::{mpsc, spsc, Doorbell};
use loom_tests::sync::UnsafeCell;
use loom_tests::watermark::HighWatermark;

fn push_retrying<T>(mut push: impl FnMut(T) -> Result<(), T>, mut value: T) {
    loop {
        match push(value) {
            Ok(()) => return,
            Err(back) => {
                value = back;
                thread::yield_now();
            }
        }
    }
}

#[test]
fn spsc_delivers_in_order_through_a_full_ring() {
    loom::model(|| {
        let (mut producer, mut consumer) = spsc::channel::<u32>(2);
        let producer_thread = thread::spawn(move || {
            for value in 0..3 {
                push_retrying(|v| producer.push(v), value);
            }
        });
        let mut received = Vec::new();
        while received.len() < 3 {
            match consumer.pop() {
                Some(value) => received.push(value),
                None => thread::yield_now(),
            }
        }
        producer_thread.join().unwrap();
        assert_eq!(received, vec![0, 1, 2]);
        assert!(consumer.pop().is_none());
    });
}

#[test]
fn mpsc_two_producers_deliver_each_value_once_in_producer_order() {
    loom::model(|| {
        let (producer, mut consumer) = mpsc::channel::<u32>(2);
        let threads: Vec<_> = (0..2u32)
            .map(|id| {
                let producer = producer.clone();
                thread::spawn(move || producer.push(id * 10).unwrap())
            })
            .collect();
        // Pop concurrently with the pushes (no spinning), then drain after they finish.
        let mut received: Vec<u32> = (0..2).filter_map(|_| consumer.pop()).collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        received.extend(std::iter::from_fn(|| consumer.pop()));
        received.sort_unstable();
        assert_eq!(received, vec![0, 10]);
        // The ring wrapped cleanly: both slots are reusable.
        producer.push(7).unwrap();
        producer.push(8).unwrap();
        assert_eq!(producer.push(9), Err(9));
        assert_eq!((consumer.pop(), consumer.pop(), consumer.pop()), (Some(7), Some(8), None));
    });
}

#[test]
fn mpsc_wraps_while_a_producer_races_the_consumer() {
    loom::model(|| {
        let (producer, mut consumer) = mpsc::channel::<u32>(2);
        producer.push(1).unwrap();
        producer.push(2).unwrap();
        let racer = {
            let producer = producer.clone();
            thread::spawn(move || producer.push(3))
        };
        let first = consumer.pop();
        let pushed = racer.join().unwrap();
        let rest: Vec<_> = std::iter::from_fn(|| consumer.pop()).collect();
        assert_eq!(first, Some(1));
        match pushed {
            Ok(()) => assert_eq!(rest, vec![2, 3]),
            Err(3) => assert_eq!(rest, vec![2], "a full ring refuses, never overwrites"),
            Err(other) => panic!("returned {other}"),
        }
    });
}

#[test]
fn high_watermark_publication_makes_the_bytes_below_it_visible() {
    loom::model(|| {
        let log: Arc<[UnsafeCell<u64>; 2]> = Arc::new([UnsafeCell::new(0), UnsafeCell::new(0)]);
        let watermark = Arc::new(HighWatermark::new(0));
        let writer = {
            let (log, watermark) = (log.clone(), watermark.clone());
            thread::spawn(move || {
                for offset in 0..2 {
                    // SAFETY (model): only the writer touches slots at or past the watermark.
                    log[offset].with_mut(|slot| unsafe { *slot = 100 + offset as u64 });
                    watermark.publish(offset as i64 + 1);
                }
            })
        };
        let high_watermark = watermark.load();
        for offset in 0..high_watermark as usize {
            // SAFETY (model): slots below a loaded watermark are never written again.
            let value = log[offset].with(|slot| unsafe { *slot });
            assert_eq!(value, 100 + offset as u64, "a published slot is visible");
        }
        writer.join().unwrap();
        assert_eq!(watermark.load(), 2);
    });
}

#[test]
fn doorbell_never_loses_a_wake_up() {
    loom::model(|| {
        let (producer, mut consumer) = mpsc::channel::<u32>(4);
        let doorbell = Arc::new(Doorbell::new());
        // Stands in for the eventfd: a permit that survives until waited for.
        let eventfd = Arc::new(Notify::new());
        let producer_thread = {
            let (doorbell, eventfd) = (doorbell.clone(), eventfd.clone());
            thread::spawn(move || {
                for value in 0..2 {
                    producer.push(value).unwrap();
                    if doorbell.ring() {
                        eventfd.notify();
                    }
                }
            })
        };
        let mut received = 0;
        while received < 2 {
            if consumer.pop().is_some() {
                received += 1;
                continue;
            }
            if !doorbell.prepare_park() {
                continue;
            }
            // A lost wake-up blocks here forever: loom reports a deadlock.
            eventfd.wait();
            doorbell.woke();
        }
        producer_thread.join().unwrap();
    });
}
