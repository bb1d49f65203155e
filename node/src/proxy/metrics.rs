//! The proxy's Prometheus metrics, declared in one place, under `coral_proxy_`.

use std::sync::{Arc, Mutex};

use super::disk::DiskCounters;
use super::sealed::SealedStats;
use prometheus::{
    Counter, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
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
    /// Fetched from another proxy holding the object.
    Peer,
    /// Served to another proxy.
    ForPeer,
    /// Joined a fetch already in flight for the same object.
    Coalesced,
    /// The origin's server error for the URL, remembered for a few seconds.
    RememberedError,
    /// Passed to the origin uncached (other methods, credentials, oversized objects).
    Pass,
    /// Sent to the origin itself: a bandwidth quota is exceeded.
    Redirected,
    /// Refused or failed, with a status page.
    Refused,
}

impl Outcome {
    /// Every outcome, in the order of their per-outcome metric handles.
    pub const ALL: [Outcome; 11] = [
        Self::Hit,
        Self::Revalidated,
        Self::Stale,
        Self::Miss,
        Self::Peer,
        Self::ForPeer,
        Self::Coalesced,
        Self::RememberedError,
        Self::Pass,
        Self::Redirected,
        Self::Refused,
    ];

    /// The label value, also sent to clients in `X-Cache`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Revalidated => "revalidated",
            Self::Stale => "stale",
            Self::Miss => "miss",
            Self::Peer => "peer",
            Self::ForPeer => "for_peer",
            Self::Coalesced => "coalesced",
            Self::RememberedError => "remembered_error",
            Self::Pass => "pass",
            Self::Redirected => "redirected",
            Self::Refused => "refused",
        }
    }
}

/// Where the bytes sent to a client came from: the `source` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// This node's cache.
    Cache,
    /// A fetch in flight from the origin.
    Origin,
    /// Another proxy's copy.
    Peer,
}

impl Source {
    /// Every source, in the order of their counters.
    const ALL: [Source; 3] = [Self::Cache, Self::Origin, Self::Peer];

    fn label(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Origin => "origin",
            Self::Peer => "peer",
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
    /// Fetches sent to origins, by outcome (`ok`, `not_modified`, `error`: no answer or a
    /// 5xx).
    pub origin_fetches: IntCounterVec,
    /// Objects asked of other proxies, by outcome (`hit`, `miss`).
    pub peer_fetches: IntCounterVec,
    /// Body bytes sent to clients, by source (`cache`, `origin`, `peer`).
    pub bytes_served: IntCounterVec,
    /// Objects held, by tier.
    pub cache_objects: IntGaugeVec,
    /// Bytes held, by tier.
    pub cache_bytes: IntGaugeVec,
    /// Disk tier operations, by operation and result.
    pub disk_operations: IntCounterVec,
    /// Time to the response head, by result.
    pub latency: HistogramVec,
    /// Client connections accepted.
    pub connections: IntCounter,
    /// Client connections open.
    pub open_connections: IntGauge,
    /// Client connections waiting for their next request (or their first), holding no HTTP
    /// state.
    pub idle_connections: IntGauge,
    /// Cached bodies held in sealed memory files, sent with `sendfile` (process-wide).
    pub sealed_bodies: IntGauge,
    /// Bodies long enough to seal that stayed in ordinary memory (process-wide).
    pub unsealed_bodies: IntCounter,
    /// Bytes sent with `sendfile` from sealed bodies (process-wide).
    pub sendfile_bytes: IntCounter,
    /// Seconds bodies waited for their share of their origin's bandwidth, summed.
    pub shaping_wait: Counter,
    /// Bytes reserved by spill files: bodies too large to cache, on disk for the clients
    /// sharing their fetch.
    pub spill_bytes: IntGauge,
    /// The request counter and latency histogram of each outcome, resolved once so that a
    /// cache hit does not look labels up.
    by_outcome: Vec<(IntCounter, Histogram)>,
    /// The bytes counter of each source, resolved once.
    by_source: Vec<IntCounter>,
    /// Held while the sealed-body counters catch up, so that two scrapes at once do not both
    /// add the same difference.
    sealed_catch_up: Arc<Mutex<()>>,
}

impl ProxyMetrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::unregistered();
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.refusals.clone()))?;
        registry.register(Box::new(metrics.origin_fetches.clone()))?;
        registry.register(Box::new(metrics.bytes_served.clone()))?;
        registry.register(Box::new(metrics.peer_fetches.clone()))?;
        registry.register(Box::new(metrics.cache_objects.clone()))?;
        registry.register(Box::new(metrics.cache_bytes.clone()))?;
        registry.register(Box::new(metrics.disk_operations.clone()))?;
        registry.register(Box::new(metrics.latency.clone()))?;
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.open_connections.clone()))?;
        registry.register(Box::new(metrics.idle_connections.clone()))?;
        registry.register(Box::new(metrics.sealed_bodies.clone()))?;
        registry.register(Box::new(metrics.unsealed_bodies.clone()))?;
        registry.register(Box::new(metrics.sendfile_bytes.clone()))?;
        registry.register(Box::new(metrics.shaping_wait.clone()))?;
        registry.register(Box::new(metrics.spill_bytes.clone()))?;
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
        let requests = counter(
            "coral_proxy_requests_total",
            "Proxy requests by result.",
            "result",
        );
        let latency = HistogramVec::new(
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
        .expect("valid metric");
        let bytes_served = counter(
            "coral_proxy_bytes_served_total",
            "Body bytes sent to clients, by source.",
            "source",
        );
        let by_source = Source::ALL
            .iter()
            .map(|source| bytes_served.with_label_values(&[source.label()]))
            .collect();
        let by_outcome = Outcome::ALL
            .iter()
            .map(|outcome| {
                let label = [outcome.label()];
                (
                    requests.with_label_values(&label),
                    latency.with_label_values(&label),
                )
            })
            .collect();
        let metrics = Self {
            requests,
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
            bytes_served,
            peer_fetches: counter(
                "coral_proxy_peer_fetches_total",
                "Objects asked of other proxies, by outcome.",
                "outcome",
            ),
            cache_objects: gauge(
                "coral_proxy_cache_objects",
                "Objects held in the cache, by tier.",
            ),
            cache_bytes: gauge(
                "coral_proxy_cache_bytes",
                "Bytes held in the cache, by tier.",
            ),
            disk_operations: IntCounterVec::new(
                Opts::new(
                    "coral_proxy_disk_operations_total",
                    "Disk cache tier operations, by operation and result.",
                ),
                &["operation", "result"],
            )
            .expect("valid metric"),
            latency,
            connections: IntCounter::new(
                "coral_proxy_connections_total",
                "Client connections accepted.",
            )
            .expect("valid metric"),
            open_connections: IntGauge::new(
                "coral_proxy_open_connections",
                "Client connections open.",
            )
            .expect("valid metric"),
            idle_connections: IntGauge::new(
                "coral_proxy_idle_connections",
                "Client connections waiting for their next request (or their first), holding no HTTP state.",
            )
            .expect("valid metric"),
            sealed_bodies: IntGauge::new(
                "coral_proxy_sealed_bodies",
                "Cached bodies held in sealed memory files, sent with sendfile.",
            )
            .expect("valid metric"),
            unsealed_bodies: IntCounter::new(
                "coral_proxy_unsealed_bodies_total",
                "Bodies long enough to seal that stayed in ordinary memory (too many sealed, or no memory file).",
            )
            .expect("valid metric"),
            sendfile_bytes: IntCounter::new(
                "coral_proxy_sendfile_bytes_total",
                "Bytes sent to clients with sendfile from sealed bodies.",
            )
            .expect("valid metric"),
            shaping_wait: Counter::new(
                "coral_proxy_shaping_wait_seconds_total",
                "Seconds bodies waited for their share of their origin's bandwidth, summed.",
            )
            .expect("valid metric"),
            spill_bytes: IntGauge::new(
                "coral_proxy_spill_bytes",
                "Bytes reserved by spill files: bodies too large to cache, on disk for the clients sharing their fetch.",
            )
            .expect("valid metric"),
            by_outcome,
            by_source,
            sealed_catch_up: Arc::default(),
        };
        for outcome in ["ok", "not_modified", "error"] {
            metrics.origin_fetches.with_label_values(&[outcome]);
        }
        for outcome in ["hit", "miss"] {
            metrics.peer_fetches.with_label_values(&[outcome]);
        }
        metrics
    }

    /// Brings the sealed-body metrics up to the process's figures.
    pub fn record_sealed(&self, stats: SealedStats) {
        self.sealed_bodies
            .set(i64::try_from(stats.bodies).unwrap_or(i64::MAX));
        let _alone = self
            .sealed_catch_up
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let catch_up = |counter: &IntCounter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        catch_up(&self.unsealed_bodies, stats.unsealed);
        catch_up(&self.sendfile_bytes, stats.sent_bytes);
    }

    /// The disk tier's counters.
    pub fn disk_counters(&self) -> DiskCounters {
        let counter =
            |operation, result| self.disk_operations.with_label_values(&[operation, result]);
        DiskCounters {
            written: counter("write", "ok"),
            write_failed: counter("write", "failed"),
            write_dropped: counter("write", "dropped"),
            read: counter("read", "ok"),
            read_failed: counter("read", "failed"),
            corrupt: counter("read", "corrupt"),
        }
    }

    /// The counter of body bytes sent to clients from `source`.
    pub fn served(&self, source: Source) -> &IntCounter {
        let index = Source::ALL
            .iter()
            .position(|candidate| *candidate == source)
            .expect("every source is in ALL");
        &self.by_source[index]
    }

    /// Counts a request and its time to the response head.
    pub fn observe(&self, outcome: Outcome, seconds: f64) {
        let index = Outcome::ALL
            .iter()
            .position(|candidate| *candidate == outcome)
            .expect("every outcome is in ALL");
        let (requests, latency) = &self.by_outcome[index];
        requests.inc();
        latency.observe(seconds);
    }
}
