//! Bandwidth quotas with fair sharing, as CoralCDN had them: a node over its quota, or an
//! origin over its quota on this node, sends some clients to the origin itself (a redirect)
//! instead of failing them, and picks the clients that take more than their share.
//!
//! Rates are decaying counters of the body bytes actually sent (time constant [`TAU`]):
//! cheap to update and to read, and a burst counts for a few seconds. Over the node's quota,
//! a request is redirected if its origin takes more than an equal share of the quota among
//! the origins served in the last [`IDLE`]; over an origin's quota, if its client (an IPv4
//! address or an IPv6 /64) takes more than an equal share of the origin's quota among that
//! origin's clients served in the last [`IDLE`]. Someone always exceeds an equal share when
//! the total exceeds the quota, so the quota holds; light users keep being served. Only
//! traffic counts: asking, being refused or being redirected does not make one a sharer.
//!
//! Origins and clients idle for [`IDLE`] are forgotten, and at most [`MAX_TRACKED`] of each
//! are tracked, so a scan cannot exhaust memory.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::config::BandwidthLimits;

/// Time constant of the rate estimates, in seconds.
const TAU: f64 = 5.0;
/// An origin or client is forgotten after this long without traffic (so the shares are
/// counted among those served in about two time constants).
const IDLE: Duration = Duration::from_secs(10);
/// Most origins, and most (origin, client) pairs, tracked.
pub const MAX_TRACKED: u64 = 1_000_000;

/// Why a request goes to the origin instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverQuota {
    /// The node serves more than its quota and this origin more than its share.
    Node,
    /// The origin takes more than its quota on this node and this client more than its share.
    Origin,
}

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

/// What is known of one origin's traffic.
struct OriginTraffic {
    meter: Mutex<Meter>,
    /// Clients served this origin's content lately.
    clients: AtomicU64,
}

/// What is known of one client's traffic for one origin.
struct ClientTraffic {
    meter: Mutex<Meter>,
    /// The origin whose client count includes this client.
    origin: Arc<OriginTraffic>,
}

/// A client as quotas see it: an IPv4 address, or an IPv6 /64 (one subscriber's network).
type ClientId = IpAddr;

fn client_id(address: IpAddr) -> ClientId {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

fn decrement(count: &AtomicU64) {
    let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

/// The node's quotas and the traffic they are checked against.
pub struct BandwidthQuotas {
    node_quota: Option<f64>,
    origin_quota: Option<f64>,
    node: Mutex<Meter>,
    origins: Cache<String, Arc<OriginTraffic>>,
    /// Origins served lately (kept by hand: moka's count lags).
    origin_count: Arc<AtomicU64>,
    clients: Cache<(String, ClientId), Arc<ClientTraffic>>,
}

impl BandwidthQuotas {
    /// Quotas of `limits`, starting from no traffic at `now`.
    pub fn new(limits: BandwidthLimits, now: Instant) -> Self {
        let quota = |bytes: u64| (bytes > 0).then_some(bytes as f64);
        let origin_count = Arc::new(AtomicU64::new(0));
        let forgotten = origin_count.clone();
        Self {
            node_quota: quota(limits.node_bytes_per_second),
            origin_quota: quota(limits.origin_bytes_per_second),
            node: Mutex::new(Meter::new(now)),
            origins: Cache::builder()
                .max_capacity(MAX_TRACKED)
                .time_to_idle(IDLE)
                .eviction_listener(move |_, _, _| decrement(&forgotten))
                .build(),
            origin_count,
            clients: Cache::builder()
                .max_capacity(MAX_TRACKED)
                .time_to_idle(IDLE)
                .eviction_listener(|_, client: Arc<ClientTraffic>, _| {
                    decrement(&client.origin.clients);
                })
                .build(),
        }
    }

    /// Whether any quota is set (if not, nothing needs recording).
    pub fn enabled(&self) -> bool {
        self.node_quota.is_some() || self.origin_quota.is_some()
    }

    /// Whether `client` may be served `host`'s content at `now`.
    pub fn check(&self, host: &str, client: IpAddr, now: Instant) -> Result<(), OverQuota> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(origin) = self.origins.get(host) else {
            return Ok(());
        };
        let origin_rate = origin.meter.lock().expect("meter lock").rate(now);
        if let Some(quota) = self.node_quota {
            let node_rate = self.node.lock().expect("meter lock").rate(now);
            let origins = self.origin_count.load(Ordering::Relaxed).max(1);
            if node_rate > quota && origin_rate > quota / origins as f64 {
                return Err(OverQuota::Node);
            }
        }
        if let Some(quota) = self.origin_quota
            && origin_rate > quota
            && let Some(traffic) = self.clients.get(&(host.to_owned(), client_id(client)))
        {
            let clients = origin.clients.load(Ordering::Relaxed).max(1);
            let client_rate = traffic.meter.lock().expect("meter lock").rate(now);
            if client_rate > quota / clients as f64 {
                return Err(OverQuota::Origin);
            }
        }
        Ok(())
    }

    /// Counts `bytes` of `host`'s content sent to `client` at `now`.
    pub fn record(&self, host: &str, client: IpAddr, bytes: u64, now: Instant) {
        if !self.enabled() {
            return;
        }
        self.node.lock().expect("meter lock").add(bytes, now);
        let origin = self.origins.get_with_by_ref(host, || {
            self.origin_count.fetch_add(1, Ordering::Relaxed);
            Arc::new(OriginTraffic {
                meter: Mutex::new(Meter::new(now)),
                clients: AtomicU64::new(0),
            })
        });
        origin.meter.lock().expect("meter lock").add(bytes, now);
        let traffic = self
            .clients
            .get_with((host.to_owned(), client_id(client)), || {
                origin.clients.fetch_add(1, Ordering::Relaxed);
                Arc::new(ClientTraffic {
                    meter: Mutex::new(Meter::new(now)),
                    origin: origin.clone(),
                })
            });
        traffic.meter.lock().expect("meter lock").add(bytes, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(node: u64, origin: u64, now: Instant) -> BandwidthQuotas {
        BandwidthQuotas::new(
            BandwidthLimits {
                node_bytes_per_second: node,
                origin_bytes_per_second: origin,
            },
            now,
        )
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

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
    fn without_quotas_everyone_is_served() {
        let now = Instant::now();
        let quotas = quotas(0, 0, now);
        quotas.record("a.example", ip(1), u64::MAX / 2, now);
        assert_eq!(quotas.check("a.example", ip(1), now), Ok(()));
    }

    #[test]
    fn over_the_origin_quota_only_the_heavy_client_is_redirected() {
        let now = Instant::now();
        let quotas = quotas(0, 1_000_000, now);
        quotas.record("a.example", ip(1), 50_000_000, now);
        quotas.record("a.example", ip(2), 10_000, now);
        assert_eq!(
            quotas.check("a.example", ip(1), now),
            Err(OverQuota::Origin)
        );
        assert_eq!(quotas.check("a.example", ip(2), now), Ok(()));
        assert_eq!(
            quotas.check("b.example", ip(1), now),
            Ok(()),
            "other origins are not affected"
        );
        let later = now + Duration::from_secs(60);
        assert_eq!(
            quotas.check("a.example", ip(1), later),
            Ok(()),
            "served again once its rate decays"
        );
    }

    #[test]
    fn over_the_node_quota_only_the_heavy_origin_is_redirected() {
        let now = Instant::now();
        let quotas = quotas(1_000_000, 0, now);
        quotas.record("heavy.example", ip(1), 50_000_000, now);
        quotas.record("light.example", ip(1), 10_000, now);
        assert_eq!(
            quotas.check("heavy.example", ip(2), now),
            Err(OverQuota::Node)
        );
        assert_eq!(quotas.check("light.example", ip(2), now), Ok(()));
    }

    #[test]
    fn under_the_quota_heavy_users_are_served() {
        let now = Instant::now();
        let quotas = quotas(100_000_000, 100_000_000, now);
        quotas.record("a.example", ip(1), 50_000_000, now);
        assert_eq!(quotas.check("a.example", ip(1), now), Ok(()));
    }

    #[test]
    fn one_ipv6_network_is_one_client() {
        let now = Instant::now();
        let quotas = quotas(0, 1_000_000, now);
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:9:9::1".parse().unwrap();
        quotas.record("a.example", first, 50_000_000, now);
        quotas.record("a.example", elsewhere, 10_000, now);
        assert_eq!(
            quotas.check("a.example", neighbour, now),
            Err(OverQuota::Origin),
            "a new address in the same /64 does not get a fresh share"
        );
        assert_eq!(quotas.check("a.example", elsewhere, now), Ok(()));
    }

    #[test]
    fn asking_without_being_served_does_not_make_a_sharer() {
        let now = Instant::now();
        let quotas = quotas(0, 1_000_000, now);
        quotas.record("a.example", ip(1), 50_000_000, now);
        for last in 2..200 {
            assert_eq!(quotas.check("a.example", ip(last), now), Ok(()));
        }
        assert_eq!(
            quotas.check("a.example", ip(1), now),
            Err(OverQuota::Origin),
            "199 clients that only asked do not shrink the heavy client's share"
        );
    }
}
