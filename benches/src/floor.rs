//! The disk floor of an open-loop message stream: what the disk alone gives a
//! producer whose every message must be durable before it is acknowledged.
//!
//! fio's paced reference (`fio::paced_sync`) reports one latency per fdatasync. A
//! broker's paced run reports one per message, and a device stall of 80 ms is then not
//! one sample but every message sent while it lasted (about 10,000 at 130,000 msg/s):
//! the two percentiles weigh stalls differently (docs/ENGINE.md, "Produce latency at
//! half of peak"). This reference weighs them like the broker's run does. Per file, a
//! thread takes messages that fall due on the clock (message `i` at `start + i / rate`),
//! and whenever it is free writes every message already due in one `write` and
//! `fdatasync`s it — group commit with nothing above the file system, one sync in
//! flight per file — and records, for each message, the time from its due instant to
//! the end of the sync that covered it, and when it fell due (for `tail`).
//!
//! It never runs next to a broker (it would steal its disk), removes its files, and
//! bounds its buffer by [`BATCH_BYTES_MAX`] per write call.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest single write; a longer batch is written in several calls before its sync.
pub const BATCH_BYTES_MAX: usize = 4 << 20;

/// Message latencies (µs) and their timeline: (seconds from the counted start to the
/// message's due instant, latency in µs) per message.
pub type Timed = (Histogram<u64>, Vec<(f64, u64)>);

/// What the disk alone gave an open-loop stream: one sample per counted message.
#[derive(Debug)]
pub struct FloorRun {
    /// Each message's latency (µs) from its due instant to the end of its sync.
    pub latency_us: Histogram<u64>,
    /// Per file, (seconds from the counted start to the message's due instant, latency
    /// in µs) per message, in due order. Every file has the same start and rate, so due
    /// instants compare across files.
    pub files: Vec<Vec<(f64, u64)>>,
}

impl FloorRun {
    /// Every message's (due instant, latency), file after file.
    pub fn timeline(&self) -> Vec<(f64, u64)> {
        self.files.concat()
    }

    /// The same syncs as one producer connection sees them: a Kafka request carries
    /// every partition's messages of the last `linger.ms` and is answered only once all
    /// of them are durable, and a connection's answers come in request order. So a
    /// message counts as acknowledged only when, on every file, everything due by its
    /// own due instant is durable: a stall on one file delays the messages of all. The
    /// latency histogram (µs) and timeline of that view.
    pub fn acknowledged_in_order(&self) -> Result<Timed> {
        let mut latency_us = Histogram::new(3)?;
        let mut timeline = Vec::with_capacity(self.files.iter().map(Vec::len).sum());
        for file in &self.files {
            for &(due_s, micros) in file {
                let due_us = due_s * 1e6;
                // Syncs of a file complete in due order, so the last message due by now
                // on each file is durable no earlier than all before it.
                let durable_everywhere_us = self
                    .files
                    .iter()
                    .filter_map(|other| {
                        let due_by_now = other.partition_point(|&(due, _)| due <= due_s);
                        due_by_now.checked_sub(1).map(|i| other[i].0 * 1e6 + other[i].1 as f64)
                    })
                    .fold(due_us + micros as f64, f64::max);
                let acknowledged = ((durable_everywhere_us - due_us).round() as u64).max(1);
                latency_us.record(acknowledged)?;
                timeline.push((due_s, acknowledged));
            }
        }
        Ok((latency_us, timeline))
    }
}

/// Message latency (one sample per message) of `files` open-loop streams of
/// `messages_per_s` messages of `message_bytes` each, for `seconds` after an uncounted
/// `warm_up` at the same rate (the broker's paced run has one too), each message
/// durable (written and fdatasynced) before it counts.
pub fn open_loop_sync(
    dir: &Path,
    files: usize,
    messages_per_s: f64,
    message_bytes: usize,
    (seconds, warm_up): (f64, Duration),
) -> Result<FloorRun> {
    assert!(files > 0 && messages_per_s > 0.0 && message_bytes > 0 && seconds > 0.0);
    std::fs::create_dir_all(dir)?;
    // Like the broker's paced run, the warm-up is sent but not counted.
    let warm_up = (messages_per_s * warm_up.as_secs_f64()) as u64;
    let total = warm_up + (messages_per_s * seconds) as u64;
    let start = Instant::now() + Duration::from_millis(10);
    let runs = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..files)
            .map(|n| {
                let path = dir.join(format!("floor.{n}"));
                scope.spawn(move || stream(&path, (warm_up, total), messages_per_s, message_bytes, start))
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("floor thread")).collect::<Vec<_>>()
    });
    for n in 0..files {
        let _ = std::fs::remove_file(dir.join(format!("floor.{n}")));
    }
    let mut all = FloorRun { latency_us: Histogram::new(3)?, files: Vec::with_capacity(files) };
    for run in runs {
        let (latency_us, timeline) = run?;
        all.latency_us.add(&latency_us)?;
        all.files.push(timeline);
    }
    Ok(all)
}

/// One file's stream (see the module docs).
fn stream(
    path: &Path,
    (counted_from, total): (u64, u64),
    rate: f64,
    message_bytes: usize,
    start: Instant,
) -> Result<Timed> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let buffer = vec![b'x'; BATCH_BYTES_MAX.max(message_bytes)];
    let due_at = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let counted_start = due_at(counted_from);
    let mut latency_us = Histogram::new(3)?;
    let mut timeline = crate::soak::prefaulted(total.saturating_sub(counted_from) as usize, (0.0, 0));
    let mut durable = 0u64;
    while durable < total {
        let now = Instant::now();
        if now < due_at(durable) {
            std::thread::sleep(due_at(durable) - now);
            continue;
        }
        // Every message due by now: i / rate <= elapsed.
        let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
        let batch_end = due.clamp(durable + 1, total);
        let mut bytes = (batch_end - durable) as usize * message_bytes;
        while bytes > 0 {
            let chunk = bytes.min(buffer.len());
            file.write_all(&buffer[..chunk])?;
            bytes -= chunk;
        }
        file.sync_data()?;
        let done = Instant::now();
        for i in durable.max(counted_from)..batch_end {
            let micros = (done.saturating_duration_since(due_at(i)).as_micros() as u64).max(1);
            latency_us.record(micros)?;
            timeline.push(((due_at(i) - counted_start).as_secs_f64(), micros));
        }
        durable = batch_end;
    }
    Ok((latency_us, timeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_after_the_warm_up_is_counted_and_none_is_faster_than_its_sync() {
        let dir = tempfile::tempdir().unwrap();
        let run = open_loop_sync(dir.path(), 2, 2_000.0, 100, (0.25, Duration::from_secs(1))).unwrap();
        let histogram = &run.latency_us;
        assert_eq!(histogram.len(), 2 * 500, "one sample per message after the warm-up's 2 x 2,000");
        let timeline = run.timeline();
        assert_eq!(timeline.len(), 2 * 500, "one timeline entry per counted message");
        // Due instants run from the counted start over the counted 0.25 s.
        assert!(timeline.iter().all(|&(at, _)| (0.0..0.25).contains(&at)), "{:?}", &timeline[..4]);
        // Acknowledged in order, no message is earlier than its own sync.
        let (in_order, _) = run.acknowledged_in_order().unwrap();
        assert_eq!(in_order.len(), histogram.len());
        assert!(in_order.min() >= histogram.min() && in_order.max() >= histogram.max());
        // A message is durable only after a write and an fdatasync: never instantly,
        // and on any disk within the second the test allows.
        assert!(histogram.min() >= 1 && histogram.max() < 1_000_000, "{histogram:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "files removed");
    }

    #[test]
    fn acknowledged_in_order_a_stall_on_one_file_delays_the_messages_of_every_file() {
        // Two files, a message every ms on each, each durable 1 ms after it is due,
        // except on file 1: the sync of its messages due at 5..=7 ms stalls until 20 ms,
        // and those due at 8 and 9 ms are synced after it, at 21 ms.
        let file0: Vec<(f64, u64)> = (0..10u64).map(|ms| (ms as f64 / 1e3, 1_000)).collect();
        let file1: Vec<(f64, u64)> = (0..10u64)
            .map(|ms| {
                let durable_ms = match ms {
                    5..=7 => 20,
                    8.. => 21,
                    _ => ms + 1,
                };
                (ms as f64 / 1e3, (durable_ms - ms) * 1_000)
            })
            .collect();
        let mut latency_us = Histogram::new(3).unwrap();
        for &(_, micros) in file0.iter().chain(&file1) {
            latency_us.record(micros).unwrap();
        }
        let run = FloorRun { latency_us, files: vec![file0, file1] };
        let (in_order, timeline) = run.acknowledged_in_order().unwrap();
        assert_eq!(in_order.len(), 20);
        let acks = |file: std::ops::Range<usize>| {
            timeline[file].iter().map(|&(_, micros)| micros).collect::<Vec<_>>()
        };
        // File 0's messages from 5 ms on wait for file 1's stall; before it, only for
        // their own sync.
        assert_eq!(acks(0..10), [1_000, 1_000, 1_000, 1_000, 1_000, 15_000, 14_000, 13_000, 13_000, 12_000]);
        // File 1's own latencies are unchanged: file 0 was never slower.
        assert_eq!(acks(10..20), run.files[1].iter().map(|&(_, micros)| micros).collect::<Vec<_>>());
    }
}
