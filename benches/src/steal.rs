//! CPU time the hypervisor took from this machine during a run ("steal").
//!
//! On the 2-core development VM the host enforces a CPU quota per 100 ms period that
//! counts the guest's vCPUs and the host's own work for the guest (virtio I/O). A
//! guest that keeps both cores busy while writing and syncing is throttled for the rest
//! of each period: every in-flight I/O and every thread stops for 10–25 ms, ten times a
//! second, and a paced latency run shows a spike every 100 ms that no disk measurement
//! explains (docs/ENGINE.md, "Produce latency at half of peak"). The paced runs of
//! `kafka` and `e2e` therefore print the share of CPU time stolen while they ran.
//!
//! Reads `/proc/stat` only; never fails a run (no file, no figure).

/// CPU time so far as (all, stolen), in clock ticks, from the first (`cpu`) line of a
/// `/proc/stat` text; `None` if it does not parse.
pub fn parse_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already counted in user and nice, so only the first eight add up.
    let steal = *values.get(7)?;
    Some((values.iter().take(8).sum(), steal))
}

/// This machine's CPU time so far (see [`parse_ticks`]); `None` without `/proc/stat`.
pub fn ticks() -> Option<(u64, u64)> {
    parse_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The share (percent) of CPU time stolen between two [`ticks`] readings.
pub fn percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((all0, steal0), (all1, steal1)) = (before?, after?);
    let all = all1.checked_sub(all0).filter(|&all| all > 0)?;
    Some(100.0 * steal1.saturating_sub(steal0) as f64 / all as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_field_and_guest_time_is_not_counted_twice() {
        let stat = "cpu  100 0 50 800 20 0 10 20 7 0\ncpu0 50 0 25 400 10 0 5 10 0 0\n";
        assert_eq!(parse_ticks(stat), Some((1000, 20)));
        // Older kernels print no guest columns.
        assert_eq!(parse_ticks("cpu  1 2 3 4 5 6 7 8\n"), Some((36, 8)));
        assert_eq!(parse_ticks("cpu  1 2 3\n"), None, "no steal column");
        assert_eq!(parse_ticks("intr 1 2 3 4 5 6 7 8\n"), None, "not the cpu line");
        assert_eq!(parse_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);
    }

    #[test]
    fn percent_of_the_interval() {
        assert_eq!(percent(Some((1000, 20)), Some((1400, 60))), Some(10.0));
        assert_eq!(percent(Some((1000, 20)), Some((1000, 20))), None, "no time passed");
        assert_eq!(percent(None, Some((1000, 20))), None);
        assert_eq!(percent(Some((1400, 60)), Some((1000, 20))), None, "clock went back");
    }

    #[test]
    fn this_machine_reports_ticks_that_only_grow() {
        let (Some(before), Some(after)) = (ticks(), ticks()) else {
            panic!("no /proc/stat on a Linux test machine")
        };
        assert!(after.0 >= before.0 && after.1 >= before.1 && before.0 > 0);
    }
}
