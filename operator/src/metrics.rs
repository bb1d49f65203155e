//! The operator's Prometheus metrics, declared in one place.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Results of a reconcile (the `result` label): done, the spec was refused, the DHT key
/// Secret was unusable, or a step failed and will be retried.
pub const RESULTS: [&str; 4] = ["ok", "invalid_spec", "key_problem", "error"];
/// Steps a reconcile can fail at (the `step` label).
pub const STEPS: [&str; 5] = ["apply", "key", "list_pods", "status", "nodes"];

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (one of [`RESULTS`]).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by the step that failed (one of [`STEPS`]).
    pub reconcile_errors: IntCounterVec,
    /// Time one reconcile takes.
    pub reconcile_duration: Histogram,
    /// CoralClusters this operator manages, by their `Ready` condition.
    pub clusters: IntGaugeVec,
    /// 1 while this replica runs the controller: it holds the leader Lease, or runs without
    /// leader election.
    pub leader: IntGauge,
    /// Node pods of each CoralCluster and component that should run (`desired`) and that are
    /// ready (`ready`), from its DaemonSets' status. The labels are `coral_namespace` and
    /// `coral_cluster`, since scrapers add `namespace` (the operator's) to every series.
    node_pods: IntGaugeVec,
    /// The (namespace, name) of every CoralCluster with node pod series, to drop them by.
    node_pod_clusters: Arc<Mutex<BTreeSet<(String, String)>>>,
}

/// The node pods of one component of one CoralCluster.
pub struct NodePods<'a> {
    /// The CoralCluster's namespace.
    pub namespace: &'a str,
    /// The CoralCluster's name.
    pub cluster: &'a str,
    /// `proxy` or `dns`.
    pub component: &'a str,
    /// Pods that should run.
    pub desired: i64,
    /// Pods that are ready.
    pub ready: i64,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "coral_operator_reconciles_total",
                "Reconciles of CoralClusters by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "coral_operator_reconcile_errors_total",
                "Failed reconciles by the step that failed",
            ),
            &["step"],
        )
        .expect("valid metric");
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "coral_operator_reconcile_duration_seconds",
                "Time one reconcile takes",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        let clusters = IntGaugeVec::new(
            Opts::new(
                "coral_operator_managed_clusters",
                "CoralClusters managed, by their Ready condition",
            ),
            &["ready"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "coral_operator_leader",
            "Whether this replica leads (1) or stands by (0)",
        )
        .expect("valid metric");
        let node_pods = IntGaugeVec::new(
            Opts::new(
                "coral_operator_node_pods",
                "Node pods of a CoralCluster's component that should run (desired) and that are ready",
            ),
            &["coral_namespace", "coral_cluster", "component", "state"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(clusters.clone()),
            Box::new(leader.clone()),
            Box::new(node_pods.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        // Known series start at 0, so that they are exported (and rates and alerts see them)
        // before the first event.
        for result in RESULTS {
            reconciles.with_label_values(&[result]);
        }
        for step in STEPS {
            reconcile_errors.with_label_values(&[step]);
        }
        for ready in ["true", "false"] {
            clusters.with_label_values(&[ready]);
        }
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            clusters,
            leader,
            node_pods,
            node_pod_clusters: Arc::default(),
        }
    }

    /// Records the desired and ready node pods of one component.
    pub fn set_node_pods(&self, pods: &NodePods<'_>) {
        self.node_pod_clusters
            .lock()
            .expect("node pod clusters lock")
            .insert((pods.namespace.to_owned(), pods.cluster.to_owned()));
        for (state, count) in [("desired", pods.desired), ("ready", pods.ready)] {
            self.node_pods
                .with_label_values(&[pods.namespace, pods.cluster, pods.component, state])
                .set(count);
        }
    }

    /// Drops the node pod series of every CoralCluster not in `live` (namespace, name): those
    /// deleted, even while this replica was not watching.
    pub fn retain_node_pods(&self, live: &BTreeSet<(String, String)>) {
        let mut known = self
            .node_pod_clusters
            .lock()
            .expect("node pod clusters lock");
        for (namespace, cluster) in known.iter().filter(|key| !live.contains(key)) {
            for component in ["proxy", "dns"] {
                for state in ["desired", "ready"] {
                    let _ = self
                        .node_pods
                        .remove_label_values(&[namespace, cluster, component, state]);
                }
            }
        }
        known.retain(|key| live.contains(key));
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_series_are_exported_at_zero_before_any_reconcile() {
        let text = Metrics::new().render();
        for result in RESULTS {
            let line = format!("coral_operator_reconciles_total{{result=\"{result}\"}} 0");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        for step in STEPS {
            let line = format!("coral_operator_reconcile_errors_total{{step=\"{step}\"}} 0");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        assert!(text.contains("coral_operator_managed_clusters{ready=\"false\"} 0"));
    }

    #[test]
    fn node_pods_are_set_per_component_and_dropped_once_their_cluster_is_gone() {
        let metrics = Metrics::new();
        for component in ["proxy", "dns"] {
            metrics.set_node_pods(&NodePods {
                namespace: "cdn",
                cluster: "edge",
                component,
                desired: 6,
                ready: 5,
            });
        }
        let text = metrics.render();
        for line in [
            "coral_operator_node_pods{component=\"proxy\",coral_cluster=\"edge\",coral_namespace=\"cdn\",state=\"desired\"} 6",
            "coral_operator_node_pods{component=\"dns\",coral_cluster=\"edge\",coral_namespace=\"cdn\",state=\"ready\"} 5",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        let live = BTreeSet::from([("cdn".to_owned(), "other".to_owned())]);
        metrics.retain_node_pods(&live);
        assert!(!metrics.render().contains("coral_operator_node_pods{"));
    }

    #[test]
    fn rendered_metrics_name_every_family_with_units() {
        let metrics = Metrics::new();
        metrics.reconciles.with_label_values(&["ok"]).inc();
        metrics.reconcile_errors.with_label_values(&["apply"]).inc();
        metrics.reconcile_duration.observe(0.02);
        metrics.clusters.with_label_values(&["true"]).set(1);
        let text = metrics.render();
        for name in [
            "coral_operator_reconciles_total{result=\"ok\"} 1",
            "coral_operator_reconcile_errors_total{step=\"apply\"} 1",
            "coral_operator_reconcile_duration_seconds_count 1",
            "coral_operator_managed_clusters{ready=\"true\"} 1",
            "coral_operator_leader 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
