//! The DHT's Prometheus metrics, declared in one place.
//!
//! Names follow Prometheus conventions under `coral_dht_`. The simulator shares one instance
//! among all its nodes, so the same counters give cluster-wide totals there.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Request types, each sent, answered and timed out (the `type` label).
const REQUEST_TYPES: [&str; 5] = ["ping", "find_node", "get", "probe", "store"];
/// Lookup kinds and their results (the `kind` and `result` labels).
const LOOKUPS: [(&str, &str); 4] = [
    ("find_node", "ok"),
    ("get", "ok"),
    ("get", "not_found"),
    ("put", "ok"),
];
/// Why datagrams are dropped (the `reason` label): the decoder's reasons, a sender ID that
/// does not match the source, an answer nobody waits for.
const DROP_REASONS: [&str; 6] = [
    "bad_version",
    "bad_mac",
    "stale",
    "malformed",
    "sender_mismatch",
    "unexpected_answer",
];

/// Metrics of one DHT node.
#[derive(Clone, Debug)]
pub struct DhtMetrics {
    /// Requests sent, by message type.
    pub rpcs_sent: IntCounterVec,
    /// Requests received and answered, by message type.
    pub rpcs_received: IntCounterVec,
    /// Requests that got no answer after every retransmission, by message type.
    pub rpc_timeouts: IntCounterVec,
    /// Retransmitted requests.
    pub retransmissions: IntCounter,
    /// Lookups by kind (`find_node`, `get`, `put`) and result.
    pub lookups: IntCounterVec,
    /// Hops of lookups, by kind.
    pub lookup_hops: HistogramVec,
    /// Datagrams dropped unanswered, by reason (`bad_mac`, `bad_version`, `malformed`, ...).
    pub packets_dropped: IntCounterVec,
    /// Values held, by level.
    pub store_values: IntGaugeVec,
    /// Keys with values, by level.
    pub store_keys: IntGaugeVec,
    /// Live routing table entries, by level.
    pub routing_peers: IntGaugeVec,
}

impl DhtMetrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::unregistered();
        registry.register(Box::new(metrics.rpcs_sent.clone()))?;
        registry.register(Box::new(metrics.rpcs_received.clone()))?;
        registry.register(Box::new(metrics.rpc_timeouts.clone()))?;
        registry.register(Box::new(metrics.retransmissions.clone()))?;
        registry.register(Box::new(metrics.lookups.clone()))?;
        registry.register(Box::new(metrics.lookup_hops.clone()))?;
        registry.register(Box::new(metrics.packets_dropped.clone()))?;
        registry.register(Box::new(metrics.store_values.clone()))?;
        registry.register(Box::new(metrics.store_keys.clone()))?;
        registry.register(Box::new(metrics.routing_peers.clone()))?;
        Ok(metrics)
    }

    /// Metrics not exported anywhere (the simulator, tests).
    pub fn unregistered() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["level"]).expect("valid metric")
        };
        let metrics = Self {
            rpcs_sent: counter("coral_dht_rpcs_sent_total", "DHT requests sent.", &["type"]),
            rpcs_received: counter(
                "coral_dht_rpcs_received_total",
                "DHT requests received and answered.",
                &["type"],
            ),
            rpc_timeouts: counter(
                "coral_dht_rpc_timeouts_total",
                "DHT requests that got no answer after every retransmission.",
                &["type"],
            ),
            retransmissions: IntCounter::new(
                "coral_dht_retransmissions_total",
                "DHT requests sent again after a timeout.",
            )
            .expect("valid metric"),
            lookups: counter(
                "coral_dht_lookups_total",
                "DHT lookups by kind and result.",
                &["kind", "result"],
            ),
            lookup_hops: HistogramVec::new(
                HistogramOpts::new("coral_dht_lookup_hops", "Hops of DHT lookups.").buckets(vec![
                    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0,
                ]),
                &["kind"],
            )
            .expect("valid metric"),
            packets_dropped: counter(
                "coral_dht_packets_dropped_total",
                "DHT datagrams dropped unanswered, by reason.",
                &["reason"],
            ),
            store_values: gauge("coral_dht_store_values", "Values held in the DHT store."),
            store_keys: gauge("coral_dht_store_keys", "Keys with values in the DHT store."),
            routing_peers: gauge("coral_dht_routing_peers", "Live DHT routing table entries."),
        };
        metrics.zero_known_series();
        metrics
    }

    /// Creates the series whose label values are known in advance at 0, so that they are
    /// exported (and `rate()` and alerts see them) before the first event.
    fn zero_known_series(&self) {
        for kind in REQUEST_TYPES {
            self.rpcs_sent.with_label_values(&[kind]);
            self.rpcs_received.with_label_values(&[kind]);
            self.rpc_timeouts.with_label_values(&[kind]);
        }
        for (kind, result) in LOOKUPS {
            self.lookups.with_label_values(&[kind, result]);
            self.lookup_hops.with_label_values(&[kind]);
        }
        for reason in DROP_REASONS {
            self.packets_dropped.with_label_values(&[reason]);
        }
    }
}
