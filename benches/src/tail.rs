//! Where a paced run's tail sits in time: the deliveries over the run's p99, counted
//! per 100 ms window of their scheduled send.
//!
//! A tail made of a few stalls puts most of its over-p99 deliveries in a few windows; a
//! tail of queueing spread over the run puts about 1% in each. Issue 17 bounds the
//! share of the single worst window (at most 20%); the same figure of the disk's own
//! open-loop floor (`floor`), measured in the same run, says how much of that a broker
//! could avoid at all.
//!
//! Pure arithmetic over a timeline; it never reads the clock.

use hdrhistogram::Histogram;

/// Width of a window.
pub const WINDOW_S: f64 = 0.1;
/// How many windows are listed by [`Concentration`]'s `Display`.
const LISTED: usize = 3;

/// The over-p99 deliveries of one paced run, by window.
#[derive(Debug, Clone, PartialEq)]
pub struct Concentration {
    /// The run's p99 (µs): "over p99" means strictly above it.
    pub p99_us: u64,
    /// Deliveries over p99 in the whole run.
    pub over: u64,
    /// Windows the run spans (those with at least one delivery).
    pub windows: usize,
    /// Windows, worst first (most over-p99 deliveries, then highest max): start (s),
    /// max latency (µs), over-p99 deliveries.
    pub worst: Vec<(f64, u64, u64)>,
}

impl Concentration {
    /// From a run's latency histogram (µs) and its timeline: (seconds from the run's
    /// start to the scheduled send, latency in µs) per delivery.
    pub fn of(latency_us: &Histogram<u64>, timeline: &[(f64, u64)]) -> Self {
        let p99_us = latency_us.value_at_quantile(0.99);
        let mut windows: std::collections::BTreeMap<u64, (u64, u64)> = std::collections::BTreeMap::new();
        for &(at, micros) in timeline {
            let window = windows.entry((at.max(0.0) / WINDOW_S) as u64).or_default();
            window.0 = window.0.max(micros);
            window.1 += u64::from(micros > p99_us);
        }
        let count = windows.len();
        let mut worst: Vec<(f64, u64, u64)> =
            windows.into_iter().map(|(window, (max, over))| (window as f64 * WINDOW_S, max, over)).collect();
        worst.sort_by_key(|&(_, max, over)| std::cmp::Reverse((over, max)));
        let over = worst.iter().map(|&(_, _, over)| over).sum();
        Self { p99_us, over, windows: count, worst }
    }

    /// Share (%) of the over-p99 deliveries in the worst `n` windows.
    pub fn share_of_worst(&self, n: usize) -> f64 {
        let in_worst: u64 = self.worst.iter().take(n).map(|&(_, _, over)| over).sum();
        100.0 * in_worst as f64 / self.over.max(1) as f64
    }

    /// Share (%) of the over-p99 deliveries in the single worst window (issue 17's
    /// bound: at most 20%).
    pub fn worst_window_pct(&self) -> f64 {
        self.share_of_worst(1)
    }

    /// The worst 2% of the windows (at least one).
    pub fn top_windows(&self) -> usize {
        self.windows.div_ceil(50).max(1)
    }
}

impl std::fmt::Display for Concentration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listed: Vec<String> = self
            .worst
            .iter()
            .take(LISTED)
            .map(|&(start, max, over)| {
                format!("{start:.1} s: max {:.1} ms, {over} over p99", max as f64 / 1e3)
            })
            .collect();
        write!(
            f,
            "{:.0}% of the {} deliveries over p99 ({:.1} ms) fall in the worst window, {:.0}% in the worst {} of {} 100 ms windows; worst: {}",
            self.worst_window_pct(),
            self.over,
            self.p99_us as f64 / 1e3,
            self.share_of_worst(self.top_windows()),
            self.top_windows(),
            self.windows,
            listed.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(timeline: &[(f64, u64)]) -> Concentration {
        let mut latency_us = Histogram::new(3).unwrap();
        for &(_, micros) in timeline {
            latency_us.record(micros).unwrap();
        }
        Concentration::of(&latency_us, timeline)
    }

    #[test]
    fn a_single_stall_holds_the_whole_tail() {
        // 10 s at 1,000 deliveries/s of 1 ms, and one stall: the 30 deliveries sent in
        // 4.50..4.53 s took 40 ms.
        let timeline: Vec<(f64, u64)> = (0..10_000)
            .map(|i| {
                let at = i as f64 / 1_000.0;
                (at, if (4.5..4.53).contains(&at) { 40_000 } else { 1_000 })
            })
            .collect();
        let tail = run(&timeline);
        assert_eq!(tail.windows, 100);
        assert_eq!(tail.over, 30, "only the stall is over p99: {tail:?}");
        assert_eq!(tail.worst_window_pct(), 100.0);
        assert!((tail.worst[0].0 - 4.5).abs() < 1e-9 && tail.worst[0].1 == 40_000, "{:?}", tail.worst[0]);
        assert!(tail.to_string().starts_with("100% of the 30 deliveries"), "{tail}");
    }

    #[test]
    fn a_tail_spread_over_the_run_puts_about_one_percent_in_each_window() {
        // Every 100th delivery is slow: one per 100 ms window over 10 s.
        let timeline: Vec<(f64, u64)> =
            (0..10_000).map(|i| (i as f64 / 1_000.0, if i % 100 == 50 { 9_000 } else { 1_000 })).collect();
        let tail = run(&timeline);
        assert_eq!(tail.over, 100, "{tail:?}");
        assert!((tail.worst_window_pct() - 1.0).abs() < 1e-9, "{tail}");
        assert!((tail.share_of_worst(tail.top_windows()) - 2.0).abs() < 1e-9, "{tail}");
    }

    #[test]
    fn no_delivery_over_p99_is_no_concentration() {
        let tail = run(&[(0.0, 1_000), (0.5, 1_000)]);
        assert_eq!((tail.over, tail.worst_window_pct()), (0, 0.0));
    }
}
