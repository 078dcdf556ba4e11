//! Per-client token buckets: one per user, API key or client address (and, on their own
//! generous settings, per agent). A request takes one token; an empty bucket answers 429
//! with the seconds until the next token.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Refill rate and capacity of one kind of bucket. A rate of 0 disables limiting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: u32,
}

/// The buckets for each kind of client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Signed-in users and API keys, each on its own bucket.
    pub user: Bucket,
    /// Unauthenticated requests (login, refresh), per client address.
    pub anonymous: Bucket,
    /// Agents, per host id.
    pub agent: Bucket,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: DashMap<String, State>,
    calls: std::sync::atomic::AtomicU64,
}

/// How often (in calls) idle buckets are dropped.
const SWEEP_EVERY: u64 = 8192;
/// A bucket untouched this long is full again; dropping it changes nothing.
const IDLE: Duration = Duration::from_secs(600);

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: DashMap::new(),
            calls: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// Take a token from `key`'s bucket. `Err` carries the seconds to wait (at least 1).
    pub fn check(&self, key: &str, bucket: Bucket) -> Result<(), u64> {
        if bucket.per_second <= 0.0 {
            return Ok(());
        }
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.buckets.retain(|_, s| s.last.elapsed() < IDLE);
        }
        let now = Instant::now();
        let capacity = f64::from(bucket.burst.max(1));
        let mut state = self.buckets.entry(key.to_string()).or_insert(State {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.duration_since(state.last).as_secs_f64();
        state.tokens = (state.tokens + elapsed * bucket.per_second).min(capacity);
        state.last = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - state.tokens) / bucket.per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_bucket_refuses_with_a_wait() {
        let limiter = RateLimiter::new(RateLimits {
            user: Bucket {
                per_second: 0.5,
                burst: 3,
            },
            anonymous: Bucket {
                per_second: 0.0,
                burst: 0,
            },
            agent: Bucket {
                per_second: 0.0,
                burst: 0,
            },
        });
        let b = limiter.limits().user;
        for _ in 0..3 {
            assert_eq!(limiter.check("user:a", b), Ok(()));
        }
        assert_eq!(limiter.check("user:a", b), Err(2));
        // Buckets are per client.
        assert_eq!(limiter.check("user:b", b), Ok(()));
        // A zero rate never limits.
        for _ in 0..100 {
            assert_eq!(limiter.check("ip:x", limiter.limits().anonymous), Ok(()));
        }
    }
}
