//! The proxy's Prometheus metrics, declared in one place, under `coral_proxy_`.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// How a request was answered: the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache, fresh.
    Hit,
    /// From the cache after the origin confirmed it (304).
    Revalidated,
    /// From the cache, stale, because the origin failed.
    Stale,
    /// Fetched from the origin (alone or as the first of a coalesced group).
    Miss,
    /// Joined a fetch already in flight for the same object.
    Coalesced,
    /// Passed to the origin uncached (other methods, credentials, oversized objects).
    Pass,
    /// Refused or failed, with a status page.
    Refused,
}

impl Outcome {
    /// The label value, also sent to clients in `X-Cache`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Revalidated => "revalidated",
            Self::Stale => "stale",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
            Self::Pass => "pass",
            Self::Refused => "refused",
        }
    }
}

/// Metrics of one proxy.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    /// Requests by result.
    pub requests: IntCounterVec,
    /// Refusals and failures by reason.
    pub refusals: IntCounterVec,
    /// Fetches sent to origins, by outcome (`ok`, `not_modified`, `error`).
    pub origin_fetches: IntCounterVec,
    /// Body bytes sent to clients, by source (`cache`, `origin`).
    pub bytes_served: IntCounterVec,
    /// Objects held, by tier.
    pub cache_objects: IntGaugeVec,
    /// Bytes held, by tier.
    pub cache_bytes: IntGaugeVec,
    /// Time to the response head, by result.
    pub latency: HistogramVec,
    /// Client connections accepted.
    pub connections: IntCounter,
}

impl ProxyMetrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::unregistered();
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.refusals.clone()))?;
        registry.register(Box::new(metrics.origin_fetches.clone()))?;
        registry.register(Box::new(metrics.bytes_served.clone()))?;
        registry.register(Box::new(metrics.cache_objects.clone()))?;
        registry.register(Box::new(metrics.cache_bytes.clone()))?;
        registry.register(Box::new(metrics.latency.clone()))?;
        registry.register(Box::new(metrics.connections.clone()))?;
        Ok(metrics)
    }

    /// Metrics not exported anywhere (tests).
    pub fn unregistered() -> Self {
        let counter = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
        };
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["tier"]).expect("valid metric")
        };
        Self {
            requests: counter(
                "coral_proxy_requests_total",
                "Proxy requests by result.",
                "result",
            ),
            refusals: counter(
                "coral_proxy_refusals_total",
                "Requests refused or failed, by reason.",
                "reason",
            ),
            origin_fetches: counter(
                "coral_proxy_origin_fetches_total",
                "Fetches sent to origins, by outcome.",
                "outcome",
            ),
            bytes_served: counter(
                "coral_proxy_bytes_served_total",
                "Body bytes sent to clients, by source.",
                "source",
            ),
            cache_objects: gauge(
                "coral_proxy_cache_objects",
                "Objects held in the cache, by tier.",
            ),
            cache_bytes: gauge(
                "coral_proxy_cache_bytes",
                "Bytes held in the cache, by tier.",
            ),
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "coral_proxy_response_seconds",
                    "Time from request to response head, by result.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["result"],
            )
            .expect("valid metric"),
            connections: IntCounter::new(
                "coral_proxy_connections_total",
                "Client connections accepted.",
            )
            .expect("valid metric"),
        }
    }
}
