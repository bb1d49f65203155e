//! Whether a proxy is able to serve, as its `/healthz` reports it to the DNS nodes that
//! decide whether to publish it, with the load they weigh it by.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The share of the connection limit above which a proxy calls itself overloaded, so the
/// DNS sends new clients elsewhere before the proxy has to make them wait.
const OVERLOADED_AT: f64 = 0.95;

/// A proxy's health and load.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Able to serve: the cache takes writes and the proxy is not overloaded.
    pub healthy: bool,
    /// Open client connections as a share of the limit (0 to 1).
    pub load: f64,
    /// Client connections open.
    pub open_connections: u64,
    /// The limit on client connections (`clientLimits.maxConnections`).
    pub max_connections: u64,
    /// Fetches from origins or peers in progress.
    pub fetches_in_flight: u64,
    /// Whether the cache's last write succeeded.
    pub cache_writable: bool,
    /// Where clients reach this proxy when that is not where it was probed: its node's
    /// address, when a host port forwards to it. The DNS nodes publish this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<IpAddr>,
}

impl Health {
    /// The health of a proxy in this state.
    pub fn assess(
        open_connections: u64,
        max_connections: u64,
        fetches_in_flight: u64,
        cache_writable: bool,
    ) -> Self {
        let load = if max_connections == 0 {
            1.0
        } else {
            (open_connections as f64 / max_connections as f64).min(1.0)
        };
        Self {
            healthy: cache_writable && load < OVERLOADED_AT,
            load,
            open_connections,
            max_connections,
            fetches_in_flight,
            cache_writable,
            public_address: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_proxy_with_a_working_cache_is_healthy() {
        let health = Health::assess(10, 1000, 2, true);
        assert!(health.healthy);
        assert!((health.load - 0.01).abs() < 1e-9);
    }

    #[test]
    fn a_proxy_near_its_connection_limit_is_overloaded() {
        assert!(!Health::assess(950, 1000, 0, true).healthy);
        assert!(Health::assess(949, 1000, 0, true).healthy);
    }

    #[test]
    fn a_cache_that_cannot_write_is_unhealthy() {
        assert!(!Health::assess(0, 1000, 0, false).healthy);
    }

    #[test]
    fn the_report_is_camel_case_json() {
        let json = serde_json::to_value(Health::assess(5, 100, 1, true)).unwrap();
        assert_eq!(json["openConnections"], 5);
        assert_eq!(json["maxConnections"], 100);
        assert_eq!(json["fetchesInFlight"], 1);
        assert_eq!(json["cacheWritable"], true);
        assert_eq!(json["healthy"], true);
    }
}
