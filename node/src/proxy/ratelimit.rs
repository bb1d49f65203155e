//! Request rate limits: a token bucket per key (a client address, an origin).
//!
//! Each key may be used for `burst` requests at once and `requestsPerSecond` sustained; the
//! caller decides what happens beyond (a client gets 429 with `Retry-After`; an origin is not
//! asked, and the client gets a stale copy or 503). Buckets idle for a minute are dropped, and
//! at most [`MAX_KEYS`] are kept (the least used go first), so a scan from many addresses, or
//! of many origins, cannot exhaust memory.

use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::config::RateLimit;

/// Most buckets kept.
pub const MAX_KEYS: u64 = 1_000_000;
/// A bucket is forgotten after this long without requests (it would be full again).
const IDLE: Duration = Duration::from_secs(60);

/// The same rate limit for every key.
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: Cache<K, Arc<Mutex<Bucket>>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl<K: Hash + Eq + Send + Sync + 'static> RateLimiter<K> {
    /// Limits of `limit` for every key.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            rate: f64::from(limit.requests_per_second.max(1)),
            burst: f64::from(limit.burst.max(1)),
            buckets: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_idle(IDLE)
                .build(),
        }
    }

    /// Takes a token for a request of `key` at `now`; when none is left, returns how long
    /// until one is.
    pub fn check(&self, key: K, now: Instant) -> Result<(), Duration> {
        let bucket = self.buckets.get_with(key, || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                updated: now,
            }))
        });
        let mut bucket = bucket.lock().expect("bucket lock");
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn limiter(per_second: u32, burst: u32) -> RateLimiter<IpAddr> {
        RateLimiter::new(RateLimit {
            requests_per_second: per_second,
            burst,
        })
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = limiter(2, 3);
        let client = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(client, now), Ok(()));
        }
        let wait = limiter.check(client, now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(limiter.check(client, now + wait), Ok(()));
    }

    #[test]
    fn keys_are_limited_separately() {
        let limiter = limiter(1, 1);
        let now = Instant::now();
        assert!(limiter.check("192.0.2.1".parse().unwrap(), now).is_ok());
        assert!(limiter.check("192.0.2.1".parse().unwrap(), now).is_err());
        assert!(limiter.check("192.0.2.2".parse().unwrap(), now).is_ok());
    }
}
