//! The DNS role's Prometheus metrics, declared in one place, under `coral_dns_`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Metrics of the DNS role.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    /// Queries answered, by question type (`A`, `AAAA`, `ANY`, `NS`, `SOA`, `other`) and
    /// response code.
    pub queries: IntCounterVec,
    /// Answers naming proxies, by how near they are to the client (the level's name, `global`,
    /// or `none` when no healthy proxy has the asked family).
    pub answers: IntCounterVec,
    /// Responses withheld by response rate limiting: `dropped`, or `slipped` (sent truncated,
    /// so a real client retries over TCP).
    pub rate_limited: IntCounterVec,
    /// TCP connections closed on arrival because a limit (in all, or per client network) was
    /// reached.
    pub tcp_refused: IntCounter,
    /// Whether each member is published (1) or not (0), by role, address and zone (its node's
    /// most local locality value).
    pub member_healthy: IntGaugeVec,
    /// Changes of members' published state, by role, address, zone and direction.
    pub member_transitions: IntCounterVec,
    /// Duration of health probes.
    pub probe_seconds: Histogram,
}

impl DnsMetrics {
    /// Metrics registered in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::unregistered();
        registry.register(Box::new(metrics.queries.clone()))?;
        registry.register(Box::new(metrics.answers.clone()))?;
        registry.register(Box::new(metrics.rate_limited.clone()))?;
        registry.register(Box::new(metrics.tcp_refused.clone()))?;
        registry.register(Box::new(metrics.member_healthy.clone()))?;
        registry.register(Box::new(metrics.member_transitions.clone()))?;
        registry.register(Box::new(metrics.probe_seconds.clone()))?;
        Ok(metrics)
    }

    /// Metrics not exported anywhere (tests).
    pub fn unregistered() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let metrics = Self {
            queries: counter(
                "coral_dns_queries_total",
                "DNS queries answered, by question type and response code.",
                &["qtype", "rcode"],
            ),
            answers: counter(
                "coral_dns_answers_total",
                "Answers naming proxies, by how near they are to the client.",
                &["level"],
            ),
            rate_limited: counter(
                "coral_dns_rate_limited_total",
                "Responses withheld by response rate limiting.",
                &["action"],
            ),
            tcp_refused: IntCounter::new(
                "coral_dns_tcp_refused_total",
                "TCP connections closed on arrival at a connection limit (in all or per client network).",
            )
            .expect("valid metric"),
            member_healthy: IntGaugeVec::new(
                Opts::new(
                    "coral_dns_member_healthy",
                    "Whether a proxy or DNS node is published (1) or ejected (0).",
                ),
                &["role", "address", "zone"],
            )
            .expect("valid metric"),
            member_transitions: counter(
                "coral_dns_member_transitions_total",
                "Changes of a member's published state.",
                &["role", "address", "zone", "to"],
            ),
            probe_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "coral_dns_probe_seconds",
                    "Duration of health probes of proxies and DNS nodes.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )
            .expect("valid metric"),
        };
        for action in ["dropped", "slipped"] {
            metrics.rate_limited.with_label_values(&[action]);
        }
        metrics
    }
}
