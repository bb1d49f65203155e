//! Request rate limits: a token bucket per key (a client address, an origin).
//!
//! Each key may be used for `burst` requests at once and `requestsPerSecond` sustained; the
//! caller decides what happens beyond (a client gets 429 with `Retry-After`; an origin is not
//! asked, and the client gets a stale copy or 503). Every request takes this path, so the
//! buckets are spread over [`SHARDS`] locked maps rather than kept in a concurrent cache.
//! Buckets idle for a minute are dropped (with a burst of at most a minute's requests, such a
//! bucket is full again), and at most [`MAX_KEYS`] are kept: a scan from many addresses, or of
//! many origins, cannot exhaust memory. Past that, a new key sweeps its map of buckets that
//! have refilled (at most once a second), and otherwise takes the place of an arbitrary one,
//! whose key starts again from a full burst.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// Most buckets kept.
pub const MAX_KEYS: usize = 1_000_000;
/// A bucket is forgotten after this long without requests (it would be full again).
const IDLE: Duration = Duration::from_secs(60);
/// Maps the buckets are spread over, each under its own lock.
const SHARDS: usize = 32;
/// Most buckets one map keeps.
const SHARD_KEYS: usize = MAX_KEYS / SHARDS;

/// The same rate limit for every key.
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    hasher: RandomState,
    shards: Box<[Mutex<Shard<K>>]>,
}

/// Some of the buckets, and when they were last swept of idle ones and of refilled ones.
struct Shard<K> {
    buckets: HashMap<K, Bucket>,
    idle_swept: Instant,
    refilled_swept: Instant,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// Limits of `limit` for every key.
    pub fn new(limit: RateLimit) -> Self {
        let now = Instant::now();
        Self {
            rate: f64::from(limit.requests_per_second.max(1)),
            burst: f64::from(limit.burst.max(1)),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        idle_swept: now,
                        refilled_swept: now,
                    })
                })
                .collect(),
        }
    }

    /// Takes a token for a request of `key` at `now`; when none is left, returns how long
    /// until one is.
    pub fn check(&self, key: K, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[self.hasher.hash_one(&key) as usize % SHARDS];
        let mut shard = shard.lock().expect("bucket lock");
        if now.saturating_duration_since(shard.idle_swept) >= IDLE {
            shard.sweep(|bucket| now.saturating_duration_since(bucket.updated) < IDLE);
            shard.idle_swept = now;
        }
        if shard.buckets.len() >= SHARD_KEYS && !shard.buckets.contains_key(&key) {
            shard.make_room(now, |bucket| self.refilled(bucket, now) < self.burst);
        }
        let bucket = shard.buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        // Requests may take the lock out of order of their clocks.
        bucket.updated = bucket.updated.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// The tokens `bucket` holds at `now`.
    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }
}

impl<K: Hash + Eq + Clone> Shard<K> {
    /// Keeps only the buckets `keep` holds on to, and gives memory back when most went.
    fn sweep(&mut self, keep: impl Fn(&Bucket) -> bool) {
        self.buckets.retain(|_, bucket| keep(bucket));
        if self.buckets.len() < self.buckets.capacity() / 4 {
            self.buckets.shrink_to_fit();
        }
    }

    /// Frees a place for a new bucket: drops those that have refilled (`in_use` says which
    /// have not), at most once a second, and else an arbitrary one.
    fn make_room(&mut self, now: Instant, in_use: impl Fn(&Bucket) -> bool) {
        if now.saturating_duration_since(self.refilled_swept) >= Duration::from_secs(1) {
            self.sweep(in_use);
            self.refilled_swept = now;
        }
        if self.buckets.len() >= SHARD_KEYS
            && let Some(victim) = self.buckets.keys().next().cloned()
        {
            self.buckets.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn limiter<K: Hash + Eq + Clone>(per_second: u32, burst: u32) -> RateLimiter<K> {
        RateLimiter::new(RateLimit {
            requests_per_second: per_second,
            burst,
        })
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = limiter(2, 3);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(client, now), Ok(()));
        }
        let wait = limiter.check(client, now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(limiter.check(client, now + wait), Ok(()));
    }

    #[test]
    fn a_minute_after_its_last_sweep_a_map_drops_its_idle_buckets() {
        let limiter = limiter(1, 1);
        let start = Instant::now();
        for key in 0..200u32 {
            limiter.check(key, start).unwrap();
        }
        let later = 1_000u32;
        limiter.check(later, start + IDLE).unwrap();
        let shard = &limiter.shards[limiter.hasher.hash_one(later) as usize % SHARDS];
        let keys: Vec<u32> = shard.lock().unwrap().buckets.keys().copied().collect();
        assert_eq!(keys, [later]);
    }

    #[test]
    fn a_full_map_drops_its_refilled_buckets_and_else_any_one() {
        let now = Instant::now();
        let full = SHARD_KEYS;
        let bucket = |key: usize| Bucket {
            tokens: if key.is_multiple_of(2) { 1.0 } else { 0.0 },
            updated: now,
        };
        let mut shard = Shard {
            buckets: (0..full).map(|key| (key, bucket(key))).collect(),
            idle_swept: now,
            refilled_swept: now - Duration::from_secs(1),
        };
        let in_use = |bucket: &Bucket| bucket.tokens < 1.0;
        shard.make_room(now, in_use);
        assert_eq!(shard.buckets.len(), full / 2);
        assert!(shard.buckets.values().all(in_use));
        shard
            .buckets
            .extend((full..full + full / 2).map(|key| (key, bucket(key))));
        shard.make_room(now, in_use);
        assert_eq!(
            shard.buckets.len(),
            full - 1,
            "swept a moment ago: one goes"
        );
    }

    #[test]
    fn at_capacity_a_new_key_takes_one_place_and_a_kept_key_none() {
        let limiter = limiter::<u32>(1, 1);
        let now = Instant::now();
        let shard_of = |key: u32| limiter.hasher.hash_one(key) as usize % SHARDS;
        let kept = 0;
        let new = (1..).find(|key| shard_of(*key) == shard_of(kept)).unwrap();
        let full = SHARD_KEYS;
        let in_use = || Bucket {
            tokens: 0.0,
            updated: now,
        };
        {
            let mut shard = limiter.shards[shard_of(kept)].lock().unwrap();
            shard.buckets.insert(kept, in_use());
            // Keys of other shards do as well as any to fill this one's map.
            let filler = u32::MAX - full as u32 + 2..=u32::MAX;
            shard.buckets.extend(filler.map(|key| (key, in_use())));
            shard.refilled_swept = now - Duration::from_secs(1);
        }
        let buckets_in_shard = || limiter.shards[shard_of(kept)].lock().unwrap().buckets.len();
        assert!(limiter.check(kept, now).is_err(), "its bucket is empty");
        assert_eq!(buckets_in_shard(), full, "a kept key took someone's place");
        assert!(limiter.check(new, now).is_ok());
        assert_eq!(buckets_in_shard(), full, "buckets in use were swept");
        assert!(
            limiter.shards[shard_of(kept)]
                .lock()
                .unwrap()
                .buckets
                .contains_key(&new)
        );
    }

    #[test]
    fn keys_are_limited_separately() {
        let limiter = limiter::<IpAddr>(1, 1);
        let now = Instant::now();
        assert!(limiter.check("192.0.2.1".parse().unwrap(), now).is_ok());
        assert!(limiter.check("192.0.2.1".parse().unwrap(), now).is_err());
        assert!(limiter.check("192.0.2.2".parse().unwrap(), now).is_ok());
    }
}
