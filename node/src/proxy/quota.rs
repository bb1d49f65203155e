//! The node's bandwidth quota, as CoralCDN had it: a node serving more than its quota sends
//! some clients to the origin itself (a redirect) instead of failing them, and picks the
//! clients of the origins that take more than their share.
//!
//! Rates are decaying counters of the body bytes actually sent (time constant [`TAU`]):
//! cheap to update and to read, and a burst counts for a few seconds. Over the quota, a
//! request is redirected if its origin takes more than an equal share of the quota among the
//! origins served in the last [`IDLE`]. Some origin always exceeds an equal share when the
//! total exceeds the quota, so the quota holds; light origins keep being served. Only
//! traffic counts: asking, being refused or being redirected does not make one a sharer.
//!
//! Origins idle for [`IDLE`] are forgotten, and at most [`MAX_TRACKED`] are tracked, so a
//! scan cannot exhaust memory. (One origin's own bandwidth is shaped, not redirected: see
//! [`super::shaping`].)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// Time constant of the rate estimates, in seconds.
const TAU: f64 = 5.0;
/// An origin is forgotten after this long without traffic (so the shares are counted among
/// those served in about two time constants).
const IDLE: Duration = Duration::from_secs(10);
/// Most origins tracked.
const MAX_TRACKED: u64 = 1_000_000;

/// A rate estimate: bytes, decaying exponentially.
struct Meter {
    level: f64,
    updated: Instant,
}

impl Meter {
    fn new(now: Instant) -> Self {
        Self {
            level: 0.0,
            updated: now,
        }
    }

    fn decay(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level *= (-elapsed / TAU).exp();
        self.updated = now;
    }

    fn add(&mut self, bytes: u64, now: Instant) {
        self.decay(now);
        self.level += bytes as f64;
    }

    /// Bytes per second.
    fn rate(&mut self, now: Instant) -> f64 {
        self.decay(now);
        self.level / TAU
    }
}

fn decrement(count: &AtomicU64) {
    let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

/// The node's quota and the traffic it is checked against.
pub struct NodeQuota {
    quota: Option<f64>,
    node: Mutex<Meter>,
    origins: Cache<String, Arc<Mutex<Meter>>>,
    /// Origins served lately (kept by hand: moka's count lags).
    origin_count: Arc<AtomicU64>,
}

impl NodeQuota {
    /// A quota of `bytes_per_second` (0: none), starting from no traffic at `now`.
    pub fn new(bytes_per_second: u64, now: Instant) -> Self {
        let origin_count = Arc::new(AtomicU64::new(0));
        let forgotten = origin_count.clone();
        Self {
            quota: (bytes_per_second > 0).then_some(bytes_per_second as f64),
            node: Mutex::new(Meter::new(now)),
            origins: Cache::builder()
                .max_capacity(MAX_TRACKED)
                .time_to_idle(IDLE)
                .eviction_listener(move |_, _, _| decrement(&forgotten))
                .build(),
            origin_count,
        }
    }

    /// Whether a quota is set (if not, nothing needs recording).
    pub fn enabled(&self) -> bool {
        self.quota.is_some()
    }

    /// Whether `host`'s clients are to be sent to the origin at `now`: the node is over its
    /// quota and `host` takes more than an equal share of it.
    pub fn is_over(&self, host: &str, now: Instant) -> bool {
        let Some(quota) = self.quota else {
            return false;
        };
        let Some(origin) = self.origins.get(host) else {
            return false;
        };
        let node_rate = self.node.lock().expect("meter lock").rate(now);
        let origins = self.origin_count.load(Ordering::Relaxed).max(1);
        node_rate > quota && origin.lock().expect("meter lock").rate(now) > quota / origins as f64
    }

    /// Counts `bytes` of `host`'s content sent at `now`.
    pub fn record(&self, host: &str, bytes: u64, now: Instant) {
        if !self.enabled() {
            return;
        }
        self.node.lock().expect("meter lock").add(bytes, now);
        let origin = self.origins.get_with_by_ref(host, || {
            self.origin_count.fetch_add(1, Ordering::Relaxed);
            Arc::new(Mutex::new(Meter::new(now)))
        });
        origin.lock().expect("meter lock").add(bytes, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_estimate_follows_a_steady_flow_and_decays() {
        let start = Instant::now();
        let mut meter = Meter::new(start);
        for tenth in 1..=600 {
            meter.add(100_000, start + Duration::from_millis(100 * tenth));
        }
        let rate = meter.rate(start + Duration::from_secs(60));
        assert!((rate - 1_000_000.0).abs() < 20_000.0, "{rate}");
        let later = meter.rate(start + Duration::from_secs(60 + 15));
        assert!(later < 60_000.0, "{later}");
    }

    #[test]
    fn without_a_quota_everyone_is_served() {
        let now = Instant::now();
        let quota = NodeQuota::new(0, now);
        quota.record("a.example", u64::MAX / 2, now);
        assert!(!quota.is_over("a.example", now));
    }

    #[test]
    fn over_the_quota_only_the_heavy_origin_is_redirected_until_its_rate_decays() {
        let now = Instant::now();
        let quota = NodeQuota::new(1_000_000, now);
        quota.record("heavy.example", 50_000_000, now);
        quota.record("light.example", 10_000, now);
        assert!(quota.is_over("heavy.example", now));
        assert!(!quota.is_over("light.example", now));
        assert!(!quota.is_over("new.example", now));
        assert!(!quota.is_over("heavy.example", now + Duration::from_secs(60)));
    }

    #[test]
    fn under_the_quota_heavy_origins_are_served() {
        let now = Instant::now();
        let quota = NodeQuota::new(100_000_000, now);
        quota.record("a.example", 50_000_000, now);
        assert!(!quota.is_over("a.example", now));
    }

    #[test]
    fn asking_without_being_served_does_not_make_a_sharer() {
        let now = Instant::now();
        let quota = NodeQuota::new(1_000_000, now);
        quota.record("heavy.example", 50_000_000, now);
        for other in 0..200 {
            assert!(!quota.is_over(&format!("o{other}.example"), now));
        }
        assert!(
            quota.is_over("heavy.example", now),
            "200 origins that were only asked for do not shrink the heavy one's share"
        );
    }
}
