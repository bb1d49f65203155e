//! The simulated world's map: regions of zones, node addresses, and round-trip times.

use std::net::SocketAddr;
use std::time::Duration;

use super::LatencyModel;
use crate::dht::{Id, Locality};

/// A world of regions, each of zones, with round-trip times that grow with distance: 1-3 ms
/// inside a zone, 15-25 ms inside a region, 60 ms and up between regions (20 ms more per
/// region apart), each pair with its own fixed jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geography {
    /// Number of regions.
    pub regions: usize,
    /// Zones in each region.
    pub zones_per_region: usize,
}

impl Geography {
    /// Number of zones in all.
    pub fn zones(&self) -> usize {
        self.regions * self.zones_per_region
    }

    /// Address of simulated node `index`: a loopback address that nothing is ever sent to.
    pub fn addr(index: usize) -> SocketAddr {
        let [_, a, b, c] = u32::try_from(index)
            .expect("index fits 24 bits")
            .to_be_bytes();
        SocketAddr::from(([127, a, b, c], 9410))
    }

    /// Index of the node at `addr`.
    pub fn index(addr: SocketAddr) -> usize {
        match addr.ip() {
            std::net::IpAddr::V4(ip) => {
                let [_, a, b, c] = ip.octets();
                u32::from_be_bytes([0, a, b, c]) as usize
            }
            std::net::IpAddr::V6(_) => 0,
        }
    }

    /// Zone of node `index` (nodes are dealt round-robin over the zones).
    pub fn zone(&self, index: usize) -> usize {
        index % self.zones()
    }

    /// Region of node `index`.
    pub fn region(&self, index: usize) -> usize {
        self.zone(index) / self.zones_per_region
    }

    /// Locality labels of node `index`, most local first.
    pub fn locality(&self, index: usize) -> Locality {
        let zone = format!("zone-{}", self.zone(index));
        let region = format!("region-{}", self.region(index));
        Locality::from_labels(&[zone, region])
    }

    /// Round-trip time between two nodes.
    pub fn rtt(&self, a: SocketAddr, b: SocketAddr) -> Duration {
        let (x, y) = (Self::index(a), Self::index(b));
        if x == y {
            return Duration::ZERO;
        }
        let base_ms = if self.zone(x) == self.zone(y) {
            2.0
        } else if self.region(x) == self.region(y) {
            20.0
        } else {
            60.0 + 20.0 * self.region(x).abs_diff(self.region(y)) as f64
        };
        let pair = Id::of(format!("{}-{}", x.min(y), x.max(y)).as_bytes());
        let jitter = f64::from(pair.0[0]) / 255.0 * 0.5 - 0.25;
        Duration::from_secs_f64(base_ms * (1.0 + jitter) / 1e3)
    }

    /// The latency model of this geography.
    pub fn latency_model(self) -> LatencyModel {
        Box::new(move |a, b| self.rtt(a, b))
    }
}
