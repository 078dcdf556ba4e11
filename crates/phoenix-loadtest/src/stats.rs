//! Latency recording: an HDR histogram of microseconds behind a lock (a few thousand records
//! a second), summarised as milliseconds for the report.

use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Longest latency kept exactly; anything slower is recorded as this.
const MAX_TRACKABLE_US: u64 = 10 * 60 * 1_000_000;

/// A shared latency histogram.
#[derive(Debug)]
pub struct LatencyRecorder {
    histogram_us: Mutex<Histogram<u64>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> Self {
        // 3 significant figures over 1 µs..10 min: ~0.1% error, a few hundred KiB.
        let histogram = Histogram::new_with_bounds(1, MAX_TRACKABLE_US, 3)
            .expect("constant histogram bounds are valid");
        Self {
            histogram_us: Mutex::new(histogram),
        }
    }

    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_TRACKABLE_US);
        self.histogram_us.lock().saturating_record(us);
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary::from_histogram_us(&self.histogram_us.lock())
    }
}

/// Percentiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn from_histogram_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }

    /// `p50 / p90 / p99 / max` for the text report.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".to_string();
        }
        format!(
            "p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n={}, mean {:.1} ms)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms, self.count, self.mean_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread_are_where_expected() {
        let r = LatencyRecorder::new();
        for ms in 1..=1000u64 {
            r.record(Duration::from_millis(ms));
        }
        let s = r.summary();
        assert_eq!(s.count, 1000);
        // HDR keeps 3 significant figures: within 0.1% (+1 bucket) of the exact value.
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.002 + 0.001;
        assert!(near(s.p50_ms, 500.0), "p50 {}", s.p50_ms);
        assert!(near(s.p90_ms, 900.0), "p90 {}", s.p90_ms);
        assert!(near(s.p99_ms, 990.0), "p99 {}", s.p99_ms);
        assert!(near(s.max_ms, 1000.0), "max {}", s.max_ms);
        assert!(near(s.mean_ms, 500.5), "mean {}", s.mean_ms);
    }

    #[test]
    fn one_slow_outlier_moves_max_not_p99() {
        let r = LatencyRecorder::new();
        for _ in 0..999 {
            r.record(Duration::from_micros(2_000));
        }
        r.record(Duration::from_secs(5));
        let s = r.summary();
        assert!(s.p99_ms < 2.01, "p99 {}", s.p99_ms);
        assert!(s.max_ms > 4990.0, "max {}", s.max_ms);
    }

    #[test]
    fn empty_and_out_of_range_are_safe() {
        let r = LatencyRecorder::new();
        assert_eq!(r.summary(), LatencySummary::default());
        assert_eq!(r.summary().line(), "no samples");
        r.record(Duration::ZERO);
        r.record(Duration::from_secs(3600));
        let s = r.summary();
        assert_eq!(s.count, 2);
        assert!(
            s.max_ms <= 600_000.0 * 1.001,
            "clamped to the trackable range: {}",
            s.max_ms
        );
    }
}
