//! The reconcile loop: read state, build the desired objects, apply them, write status.
//!
//! Deciding happens in the pure builders (`resources`, `node_config`, `conditions`,
//! `dns_endpoints`); this module only talks to the API server, in a fixed order: validate the
//! spec, make sure the shared key exists ([`key`]), apply every owned object with server-side
//! apply, then report ([`report`]). A bad spec or key is reported (status condition and Event)
//! and waits for a change; a failed API call is reported the same way and retried with
//! per-cluster exponential backoff.

mod key;
mod report;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{CoralCluster, CoralClusterStatus};
use crate::conditions::Outcome;
use crate::dns_endpoints::dns_endpoints;
use crate::metrics::{Metrics, NodePods};
use crate::node_config::node_config;
use crate::resources::names::{ClusterNames, Component, MANAGER};
use crate::resources::{config_map, daemon_set, rbac, secret, services};
use crate::validate::check_rules;

/// How often a healthy cluster is re-checked for drift even without events.
const RESYNC: Duration = Duration::from_secs(300);
/// How often a cluster that is not ready, or waits on its key, is re-checked without events.
const NOT_READY_RESYNC: Duration = Duration::from_secs(30);
/// Longest a reconcile waits for the first complete list of Nodes.
const NODE_LIST_WAIT: Duration = Duration::from_secs(30);
/// First and largest retry delay after a failed reconcile.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(300));

/// A failed reconcile; the step names what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying an owned object failed.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Reading or creating the shared-key Secret failed.
    #[error("shared-key Secret {name}: {source}")]
    Key {
        /// The Secret's name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Listing the DNS pods failed.
    #[error("listing DNS pods: {0}")]
    ListPods(#[source] kube::Error),
    /// Writing the status failed.
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    /// The list of Nodes (for the topology map) could not be read in time.
    #[error("the list of Nodes is not available yet")]
    NodesUnknown,
}

impl Error {
    /// The step label of the error metric.
    pub fn step(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::Key { .. } => "key",
            Self::ListPods(_) => "list_pods",
            Self::Status(_) => "status",
            Self::NodesUnknown => "nodes",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes Events about CoralClusters.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Every Node's metadata, kept current by a reflector; the source of the topology map.
    pub nodes: Store<PartialObjectMeta<Node>>,
    /// Every CoralCluster, kept current by the controller.
    pub clusters: Store<CoralCluster>,
    /// Consecutive failures per CoralCluster, for backoff; only clusters that still exist.
    failures: Mutex<HashMap<ObjectRef<CoralCluster>, u32>>,
}

impl Context {
    /// A context around `client` and the two stores.
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Metrics,
        nodes: Store<PartialObjectMeta<Node>>,
        clusters: Store<CoralCluster>,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            nodes,
            clusters,
            failures: Mutex::default(),
        }
    }

    fn record_failure(&self, cluster: &CoralCluster) -> u32 {
        let mut failures = self.failures.lock().expect("failure map lock");
        failures.retain(|cluster, _| self.clusters.get(cluster).is_some());
        let count = failures.entry(ObjectRef::from_obj(cluster)).or_default();
        *count = count.saturating_add(1);
        *count
    }

    fn record_success(&self, cluster: &CoralCluster) {
        self.failures
            .lock()
            .expect("failure map lock")
            .remove(&ObjectRef::from_obj(cluster));
    }

    /// Sets the cluster gauges from the store, taking `current`'s readiness from the status
    /// just computed (the store learns of it only when the watch delivers the write).
    fn count_clusters(&self, current: &ObjectRef<CoralCluster>, current_ready: bool) {
        count_clusters(
            &self.metrics,
            &self.clusters,
            Some((current, current_ready)),
        );
    }
}

/// Sets the gauges of managed clusters by readiness from `clusters`, with `current`'s readiness
/// as given when set.
fn count_clusters(
    metrics: &Metrics,
    clusters: &Store<CoralCluster>,
    current: Option<(&ObjectRef<CoralCluster>, bool)>,
) {
    let clusters = clusters.state();
    let ready = clusters
        .iter()
        .filter(|c| match current {
            Some((current, ready)) if ObjectRef::from_obj(&***c) == *current => ready,
            _ => c.status.as_ref().is_some_and(CoralClusterStatus::is_ready),
        })
        .count();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    metrics
        .clusters
        .with_label_values(&["true"])
        .set(count(ready));
    metrics
        .clusters
        .with_label_values(&["false"])
        .set(count(clusters.len().saturating_sub(ready)));
}

/// Brings the cluster gauges in line with `clusters` after CoralClusters were deleted: the
/// controller never reconciles an object that has left its store, so its series would stay.
pub fn forget_deleted_clusters(metrics: &Metrics, clusters: &Store<CoralCluster>) {
    let live = clusters
        .state()
        .iter()
        .map(|c| (namespace_of(c), c.name_any()))
        .collect();
    metrics.retain_node_pods(&live);
    count_clusters(metrics, clusters, None);
}

/// Reconciles one CoralCluster.
pub async fn reconcile(cluster: Arc<CoralCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_duration.start_timer();
    if cluster.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove everything we created.
        ctx.record_success(&cluster);
        return Ok(Action::await_change());
    }
    let result = reconcile_live(&cluster, &ctx).await;
    let ready = match &result {
        Ok(done) => done.ready,
        Err(_) => cluster
            .status
            .as_ref()
            .is_some_and(CoralClusterStatus::is_ready),
    };
    match &result {
        Ok(done) => {
            ctx.record_success(&cluster);
            ctx.metrics
                .reconciles
                .with_label_values(&[done.label])
                .inc();
        }
        Err(err) => {
            ctx.metrics.reconciles.with_label_values(&["error"]).inc();
            ctx.metrics
                .reconcile_errors
                .with_label_values(&[err.step()])
                .inc();
        }
    }
    ctx.count_clusters(&ObjectRef::from_obj(&*cluster), ready);
    result.map(|done| done.action)
}

/// Requeue delay after a failed reconcile: exponential in the cluster's consecutive failures.
pub fn error_policy(cluster: Arc<CoralCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&cluster);
    let delay = backoff(failures);
    tracing::warn!(cluster = %cluster.name_any(), %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Delay before retry number `failures` (1-based).
pub fn backoff(failures: u32) -> Duration {
    let (first, max) = BACKOFF;
    first
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(max)
}

/// The namespace of a (namespaced) CoralCluster.
fn namespace_of(cluster: &CoralCluster) -> String {
    cluster.namespace().unwrap_or_else(|| "default".to_owned())
}

/// What a reconcile that did not fail decided.
struct Reconciled {
    /// The `result` label of the reconcile metric.
    label: &'static str,
    /// When to look again.
    action: Action,
    /// Whether the cluster is now Ready.
    ready: bool,
}

async fn reconcile_live(cluster: &CoralCluster, ctx: &Context) -> Result<Reconciled, Error> {
    let config = match check_rules(cluster).and_then(|()| node_config(cluster)) {
        Ok(config) => config,
        Err(err) => {
            report::problem(cluster, ctx, Outcome::InvalidSpec(err.to_string())).await?;
            return Ok(Reconciled {
                label: "invalid_spec",
                action: Action::await_change(),
                ready: false,
            });
        }
    };
    let outcome = match apply_all(cluster, ctx, &config).await {
        Ok(outcome) => outcome,
        Err(err) => {
            // The step failed talking to the API server: say so where users look, then back off.
            report::problem(cluster, ctx, Outcome::ApiFailed(err.to_string())).await?;
            return Err(err);
        }
    };
    if let Outcome::Applied { .. } = outcome {
        let status = report::write_status(
            cluster,
            ctx,
            Some(&secret::key_secret_name(cluster)),
            &outcome,
        )
        .await?;
        record_node_pods(cluster, ctx, &status);
        // A cluster deleted while this reconcile ran has had its series dropped already:
        // drop the ones just written too.
        if ctx.clusters.get(&ObjectRef::from_obj(cluster)).is_none() {
            forget_deleted_clusters(&ctx.metrics, &ctx.clusters);
        }
        let resync = if status.is_ready() {
            RESYNC
        } else {
            NOT_READY_RESYNC
        };
        return Ok(Reconciled {
            label: "ok",
            action: Action::requeue(resync),
            ready: status.is_ready(),
        });
    }
    report::problem(cluster, ctx, outcome).await?;
    Ok(Reconciled {
        label: "key_problem",
        action: Action::requeue(NOT_READY_RESYNC),
        ready: false,
    })
}

/// Exports the node pods the status just counted.
fn record_node_pods(cluster: &CoralCluster, ctx: &Context, status: &CoralClusterStatus) {
    let (namespace, name) = (namespace_of(cluster), cluster.name_any());
    for (component, desired, ready) in [
        (Component::Proxy, status.desired_nodes, status.ready_nodes),
        (
            Component::Dns,
            status.desired_dns_nodes,
            status.ready_dns_nodes,
        ),
    ] {
        ctx.metrics.set_node_pods(&NodePods {
            namespace: &namespace,
            cluster: &name,
            component: component.as_str(),
            desired: desired.into(),
            ready: ready.into(),
        });
    }
}

/// Makes sure of the key, applies every owned object and observes the result; a key the
/// user must fix comes back as that outcome, not as an error.
async fn apply_all(
    cluster: &CoralCluster,
    ctx: &Context,
    config: &coral_node::config::NodeConfig,
) -> Result<Outcome, Error> {
    let namespace = namespace_of(cluster);
    if let Some(problem) = key::ensure(cluster, ctx, &namespace).await? {
        return Ok(problem);
    }
    // Rendering the topology from a Node list still being read would rewrite the ConfigMap with
    // nodes missing, and again once the list is complete (seen after an operator restart).
    match tokio::time::timeout(NODE_LIST_WAIT, ctx.nodes.wait_until_ready()).await {
        Ok(Ok(())) => {}
        _ => return Err(Error::NodesUnknown),
    }
    let nodes = ctx.nodes.state();
    let topology = config_map::topology(
        nodes.iter().map(|n| &**n),
        &cluster.spec.locality.label_keys,
    );
    let client = &ctx.client;
    apply(client, &namespace, &rbac::service_account(cluster)).await?;
    apply(client, &namespace, &rbac::role(cluster)).await?;
    apply(client, &namespace, &rbac::role_binding(cluster)).await?;
    apply(
        client,
        &namespace,
        &config_map::config_map(cluster, config, &topology),
    )
    .await?;
    apply(client, &namespace, &services::proxy_service(cluster)).await?;
    apply(client, &namespace, &services::dht_service(cluster)).await?;
    apply(client, &namespace, &services::metrics_service(cluster)).await?;
    let dns_service = apply(client, &namespace, &services::dns_service(cluster)).await?;
    let proxy = apply(
        client,
        &namespace,
        &daemon_set::daemon_set(cluster, Component::Proxy, config),
    )
    .await?;
    let dns = apply(
        client,
        &namespace,
        &daemon_set::daemon_set(cluster, Component::Dns, config),
    )
    .await?;

    let selector = ClusterNames::of(cluster)
        .selector(Some(Component::Dns))
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let dns_pods = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::ListPods)?;
    Ok(Outcome::Applied {
        dns_endpoints: dns_endpoints(cluster, &dns_service, &dns_pods.items),
        proxy: Box::new(proxy),
        dns: Box::new(dns),
    })
}

/// Server-side applies `object` as the operator's field manager and returns what the API
/// server stored.
async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).into_owned(),
        name,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(9), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn a_deleted_cluster_takes_its_series_and_its_count_with_it() {
        let metrics = Metrics::new();
        let (store, mut writer) = kube::runtime::reflector::store();
        let kept = crate::resources::tests::demo();
        let mut gone = kept.clone();
        gone.metadata.name = Some("gone".into());
        for cluster in [&kept, &gone] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cluster.clone()));
            metrics.set_node_pods(&NodePods {
                namespace: "edge",
                cluster: &cluster.name_any(),
                component: "proxy",
                desired: 6,
                ready: 6,
            });
        }
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Delete(gone));
        forget_deleted_clusters(&metrics, &store);
        let text = metrics.render();
        assert!(text.contains("coral_cluster=\"demo\""), "{text}");
        assert!(!text.contains("coral_cluster=\"gone\""), "{text}");
        assert!(
            text.contains("coral_operator_managed_clusters{ready=\"false\"} 1"),
            "{text}"
        );
    }
}
