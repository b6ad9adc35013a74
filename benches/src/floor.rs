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

/// What the disk alone gave an open-loop stream: one sample per counted message.
#[derive(Debug)]
pub struct FloorRun {
    /// Each message's latency (µs) from its due instant to the end of its sync.
    pub latency_us: Histogram<u64>,
    /// (seconds from the counted start to the message's due instant, latency in µs)
    /// per message, in no particular order.
    pub timeline: Vec<(f64, u64)>,
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
    let mut all = FloorRun { latency_us: Histogram::new(3)?, timeline: Vec::new() };
    for run in runs {
        let run = run?;
        all.latency_us.add(&run.latency_us)?;
        all.timeline.extend(run.timeline);
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
) -> Result<FloorRun> {
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
    let mut timeline = Vec::with_capacity(total.saturating_sub(counted_from) as usize);
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
    Ok(FloorRun { latency_us, timeline })
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
        assert_eq!(run.timeline.len(), 2 * 500, "one timeline entry per counted message");
        // Due instants run from the counted start over the counted 0.25 s.
        assert!(run.timeline.iter().all(|&(at, _)| (0.0..0.25).contains(&at)), "{:?}", &run.timeline[..4]);
        // A message is durable only after a write and an fdatasync: never instantly,
        // and on any disk within the second the test allows.
        assert!(histogram.min() >= 1 && histogram.max() < 1_000_000, "{histogram:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "files removed");
    }
}
