//! Open-loop schedules: when the n-th heartbeat or enqueue is due, fixed in advance from the
//! start time and the rate, so a slow server shows up as latency rather than as a lower rate
//! (no coordinated omission).

use std::time::Duration;

/// Offset from the schedule's start at which event `n` (0-based) is due, at `per_second`
/// events per second. A non-positive rate never fires: the offset is `Duration::MAX`.
pub fn nth_offset(n: u64, per_second: f64) -> Duration {
    if per_second <= 0.0 || !per_second.is_finite() {
        return Duration::MAX;
    }
    Duration::from_secs_f64(n as f64 / per_second)
}

/// Heartbeats per second when `agents` each send one every `interval`.
pub fn heartbeat_rate_per_second(agents: usize, interval: Duration) -> f64 {
    let interval_s = interval.as_secs_f64();
    if interval_s <= 0.0 {
        return 0.0;
    }
    agents as f64 / interval_s
}

/// The agent that sends heartbeat `n` of the fleet-wide schedule. With
/// [`heartbeat_rate_per_second`] this spreads the agents uniformly over the interval: agent
/// `i` beats at `i * interval / agents`, then every `interval`.
pub fn heartbeat_agent(n: u64, agents: usize) -> usize {
    if agents == 0 {
        return 0;
    }
    (n % agents as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_spread_each_agent_once_per_interval_evenly_spaced() {
        let agents = 10_000;
        let interval = Duration::from_secs(30);
        let rate = heartbeat_rate_per_second(agents, interval);
        assert!((rate - 333.333).abs() < 0.01, "{rate}");

        let mut seen = vec![0u32; agents];
        for n in 0..agents as u64 {
            seen[heartbeat_agent(n, agents)] += 1;
            let at = nth_offset(n, rate);
            assert!(
                at < interval,
                "heartbeat {n} at {at:?} falls outside the first interval"
            );
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "every agent beats exactly once per interval"
        );

        // Agent 0 beats again exactly one interval later.
        let again = nth_offset(agents as u64, rate);
        assert!((again.as_secs_f64() - 30.0).abs() < 1e-9, "{again:?}");
        // Evenly spaced: 3 ms apart at 10,000 agents over 30 s.
        let gap = nth_offset(1, rate);
        assert!((gap.as_secs_f64() - 0.003).abs() < 1e-9, "{gap:?}");
    }

    #[test]
    fn enqueue_schedule_is_fixed_by_rate_not_by_progress() {
        assert_eq!(nth_offset(0, 1000.0), Duration::ZERO);
        assert_eq!(nth_offset(1000, 1000.0), Duration::from_secs(1));
        assert_eq!(nth_offset(1500, 1000.0), Duration::from_millis(1500));
    }

    #[test]
    fn zero_rate_never_fires() {
        assert_eq!(nth_offset(0, 0.0), Duration::MAX);
        assert_eq!(heartbeat_rate_per_second(10, Duration::ZERO), 0.0);
        assert_eq!(heartbeat_agent(5, 0), 0);
    }
}
