//! Soak reporting: a long run's latencies cut into [`INTERVAL_S`] intervals, each with
//! its p99, p99.9 and max, so a stall cannot hide in the whole run's percentiles.
//!
//! `kafka --seconds S` and `e2e --seconds S` feed their per-event samples (when the
//! event was due, its latency) here; the table goes to stderr, the worst interval
//! (highest p99.9, then max) is named, and its p99.9 and max become RESULT figures
//! against the whole run's. [`dump_timeline`] writes the raw samples of any paced run
//! (kafka, e2e, soak or not) to a file for looking at a stall's shape, and
//! [`prefaulted`] gives a paced run's timeline memory that takes no page fault while
//! the clock runs.

use crate::report::Figure;
use anyhow::Result;
use hdrhistogram::Histogram;

/// Length of one soak interval.
pub const INTERVAL_S: f64 = 10.0;

/// One interval's latencies.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// Start of the interval, seconds from the run's start.
    pub start_s: f64,
    /// Events due in it.
    pub count: u64,
    /// p99, p99.9 and max latency of those events, in ms.
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Cuts `samples` (seconds from the start the event was due, latency in µs) into
/// intervals, in time order; empty intervals are left out.
pub fn intervals(samples: &[(f64, u64)]) -> Result<Vec<Interval>> {
    let mut by_interval: std::collections::BTreeMap<u64, Histogram<u64>> = Default::default();
    for &(at_s, micros) in samples {
        let slot = (at_s.max(0.0) / INTERVAL_S) as u64;
        let histogram = match by_interval.entry(slot) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => entry.insert(Histogram::new(3)?),
        };
        histogram.record(micros.max(1))?;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    Ok(by_interval
        .into_iter()
        .map(|(slot, h)| Interval {
            start_s: slot as f64 * INTERVAL_S,
            count: h.len(),
            p99_ms: ms(&h, 0.99),
            p999_ms: ms(&h, 0.999),
            max_ms: h.max() as f64 / 1e3,
        })
        .collect())
}

/// The worst interval: highest p99.9, then highest max.
pub fn worst(intervals: &[Interval]) -> Option<&Interval> {
    intervals.iter().max_by(|a, b| a.p999_ms.total_cmp(&b.p999_ms).then(a.max_ms.total_cmp(&b.max_ms)))
}

/// Prints `name`'s interval table and returns the figures of its worst interval
/// (`<scenario>-soak worst_10s_p999` and `worst_10s_max`, against the whole run).
pub fn report(name: &str, scenario: &str, samples: &[(f64, u64)]) -> Result<Vec<Figure>> {
    let table = intervals(samples)?;
    eprintln!("{name}: soak, per {INTERVAL_S:.0} s interval (events due in it):");
    for interval in &table {
        eprintln!(
            "  {:>5.0}-{:<5.0} s {:>9} events  p99 {:>8.2} ms  p99.9 {:>8.2} ms  max {:>8.2} ms",
            interval.start_s,
            interval.start_s + INTERVAL_S,
            interval.count,
            interval.p99_ms,
            interval.p999_ms,
            interval.max_ms
        );
    }
    let Some(worst) = worst(&table) else { return Ok(Vec::new()) };
    let mut whole = Histogram::<u64>::new(3)?;
    for &(_, micros) in samples {
        whole.record(micros.max(1))?;
    }
    eprintln!(
        "{name}: worst interval {:.0}-{:.0} s: p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} intervals)",
        worst.start_s,
        worst.start_s + INTERVAL_S,
        worst.p99_ms,
        worst.p999_ms,
        worst.max_ms,
        table.len()
    );
    let figure = |figure: &str, value: f64, reference: (&str, f64)| Figure {
        scenario: format!("{scenario}-soak"),
        name: figure.to_string(),
        value,
        unit: "ms".into(),
        reference: Some((reference.0.to_string(), reference.1)),
    };
    Ok(vec![
        figure(
            "worst_10s_p999",
            worst.p999_ms,
            ("whole-run-p999", whole.value_at_quantile(0.999) as f64 / 1e3),
        ),
        figure("worst_10s_max", worst.max_ms, ("whole-run-p99", whole.value_at_quantile(0.99) as f64 / 1e3)),
    ])
}

/// An empty vector with room for `capacity` samples whose pages are already faulted
/// in (written once with `fill`, then cleared): a timeline that grows into fresh
/// memory during a timed run makes the timing thread fault a page in every 4 KiB (or
/// zero a whole 2 MiB huge page every 2 MiB, where the allocator asks for them), and
/// that stall lands on the samples being timed.
pub fn prefaulted<T: Copy>(capacity: usize, fill: T) -> Vec<T> {
    // Not `vec![fill; capacity]`: for an all-zero `fill` that becomes a zeroed
    // allocation, which fresh memory satisfies without touching a page.
    let mut samples = Vec::with_capacity(capacity);
    samples.resize(capacity, fill);
    samples.clear();
    samples
}

/// Writes a paced run's samples (seconds from the start to when the event was due,
/// latency in µs), one per line, to `$CORELOG_BENCH_TIMELINE.NAME` when that variable is
/// set: for looking at the shape of a stall, not a figure.
pub fn dump_timeline(name: &str, timeline: &[(f64, u64)]) {
    let Some(base) = std::env::var_os("CORELOG_BENCH_TIMELINE") else { return };
    let path = format!("{}.{name}", base.to_string_lossy());
    let text: String = timeline.iter().map(|(at, micros)| format!("{at:.6} {micros}\n")).collect();
    if let Err(error) = std::fs::write(&path, text) {
        eprintln!("note: writing the timeline to {path} failed: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far (`/proc/thread-self/stat`).
    fn minor_faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split_whitespace().nth(7).unwrap().parse().unwrap()
    }

    #[test]
    fn a_prefaulted_timeline_takes_its_samples_without_page_faults() {
        const SAMPLES: usize = 1 << 20; // 16 MiB of (f64, u64)
        let mut timeline = prefaulted(SAMPLES, (0.0, 0u64));
        assert!(timeline.is_empty() && timeline.capacity() >= SAMPLES);
        let before = minor_faults();
        for i in 0..SAMPLES {
            timeline.push((i as f64, i as u64));
        }
        let faults = minor_faults() - before;
        // Growing into fresh memory instead faults at least 8 times (2 MiB pages) and
        // 4,096 times with 4 KiB pages.
        assert!(faults < 4, "{faults} page faults while filling a prefaulted timeline");
        assert_eq!(timeline[SAMPLES - 1], ((SAMPLES - 1) as f64, (SAMPLES - 1) as u64));
    }

    #[test]
    fn a_stall_shows_in_its_interval_not_only_in_the_whole_run() {
        // 30 s of 1 ms deliveries, with a 200 ms stall of 50 deliveries at 15 s.
        let mut samples: Vec<(f64, u64)> = (0..30_000).map(|i| (i as f64 / 1000.0, 1_000)).collect();
        samples.extend((0..50).map(|i| (15.0 + i as f64 / 1000.0, 200_000)));
        let table = intervals(&samples).unwrap();
        assert_eq!(table.len(), 3);
        assert_eq!(table.iter().map(|i| i.count).sum::<u64>(), 30_050);
        let worst = worst(&table).unwrap();
        assert_eq!(worst.start_s, 10.0);
        assert!(worst.max_ms >= 199.0 && worst.p999_ms >= 199.0, "{worst:?}");
        assert!(table[0].max_ms < 2.0 && table[2].max_ms < 2.0);
        let figures = report("test", "kafka", &samples).unwrap();
        assert_eq!(figures[0].scenario, "kafka-soak");
        assert!(figures[0].value >= 199.0);
    }
}
