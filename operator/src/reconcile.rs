//! The reconcile loop: read state, build the desired objects, apply them, write status.
//!
//! Deciding happens in the pure builders (`resources`, `node_config`, `conditions`); this
//! module only does the talking to the API server, in a fixed order: validate the spec, make
//! sure the shared key exists, apply every owned object with server-side apply, then report.
//! A bad spec or key is reported (status condition and Event) and waits for a change; an API
//! failure is reported and retried with per-object exponential backoff.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{CoralCluster, CoralClusterStatus, condition_types};
use crate::conditions::{Outcome, next_status};
use crate::metrics::Metrics;
use crate::node_config::node_config;
use crate::resources::names::{ClusterNames, Component, MANAGER};
use crate::resources::{config_map, daemon_set, rbac, secret, services};
use crate::validate::check_rules;

/// How often a healthy cluster is re-checked for drift even without events.
const RESYNC: Duration = Duration::from_secs(300);
/// How often a cluster that is not ready yet is re-checked without events.
const NOT_READY_RESYNC: Duration = Duration::from_secs(30);
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
}

impl Error {
    /// The step label of the error metric.
    pub fn step(&self) -> &'static str {
        match self {
            Self::Apply { .. } => "apply",
            Self::Key { .. } => "key",
            Self::ListPods(_) => "list_pods",
            Self::Status(_) => "status",
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
    /// Every Node, kept current by a reflector; the source of the topology map.
    pub nodes: Store<Node>,
    /// Every CoralCluster, kept current by the controller; counted for the metrics.
    pub clusters: Store<CoralCluster>,
    /// Consecutive failures per CoralCluster, for backoff.
    failures: Mutex<HashMap<ObjectRef<CoralCluster>, u32>>,
}

impl Context {
    /// A context around `client` and the two stores.
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Metrics,
        nodes: Store<Node>,
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

    fn count_clusters(&self) {
        let (mut ready, mut not_ready) = (0, 0);
        for cluster in self.clusters.state() {
            let is_ready = cluster
                .status
                .as_ref()
                .and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == condition_types::READY)
                })
                .is_some_and(|c| c.status == "True");
            if is_ready { ready += 1 } else { not_ready += 1 }
        }
        self.metrics
            .clusters
            .with_label_values(&["true"])
            .set(ready);
        self.metrics
            .clusters
            .with_label_values(&["false"])
            .set(not_ready);
    }
}

/// Reconciles one CoralCluster.
pub async fn reconcile(cluster: Arc<CoralCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_duration.start_timer();
    if cluster.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove everything we created.
        return Ok(Action::await_change());
    }
    let result = reconcile_live(&cluster, &ctx).await;
    match &result {
        Ok((outcome_label, _)) => {
            ctx.record_success(&cluster);
            ctx.metrics
                .reconciles
                .with_label_values(&[outcome_label])
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
    ctx.count_clusters();
    result.map(|(_, action)| action)
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

async fn reconcile_live(
    cluster: &CoralCluster,
    ctx: &Context,
) -> Result<(&'static str, Action), Error> {
    let namespace = cluster.namespace().unwrap_or_else(|| "default".to_owned());
    let key_secret_name = secret::key_secret_name(cluster);

    let config = match check_rules(cluster).and_then(|()| node_config(cluster)) {
        Ok(config) => config,
        Err(err) => {
            report_problem(cluster, ctx, Outcome::InvalidSpec(err.to_string())).await?;
            return Ok(("invalid_spec", Action::await_change()));
        }
    };

    if let Err(err) = ensure_key(cluster, ctx, &namespace, &key_secret_name).await? {
        report_problem(cluster, ctx, Outcome::KeyRejected(err.to_string())).await?;
        return Ok(("key_rejected", Action::requeue(NOT_READY_RESYNC)));
    }

    let nodes: Vec<Node> = ctx.nodes.state().iter().map(|n| Node::clone(n)).collect();
    let topology = config_map::topology(&nodes, &cluster.spec.locality.label_keys);
    let applied = async {
        let client = &ctx.client;
        apply(client, &namespace, &rbac::service_account(cluster)).await?;
        apply(client, &namespace, &rbac::role(cluster)).await?;
        apply(client, &namespace, &rbac::role_binding(cluster)).await?;
        apply(
            client,
            &namespace,
            &config_map::config_map(cluster, &config, &topology),
        )
        .await?;
        apply(client, &namespace, &services::dht_service(cluster)).await?;
        apply(client, &namespace, &services::metrics_service(cluster)).await?;
        let dns_service = apply(client, &namespace, &services::dns_service(cluster)).await?;
        let proxy = apply(
            client,
            &namespace,
            &daemon_set::daemon_set(cluster, Component::Proxy, &config),
        )
        .await?;
        let dns = apply(
            client,
            &namespace,
            &daemon_set::daemon_set(cluster, Component::Dns, &config),
        )
        .await?;
        Ok::<_, Error>((dns_service, proxy, dns))
    }
    .await;
    let (dns_service, proxy, dns) = match applied {
        Ok(objects) => objects,
        Err(err) => {
            report_problem(cluster, ctx, Outcome::ApplyFailed(err.to_string())).await?;
            return Err(err);
        }
    };

    let dns_endpoints = dns_endpoints(cluster, ctx, &namespace, &dns_service).await?;
    let outcome = Outcome::Applied {
        proxy: Box::new(proxy),
        dns: Box::new(dns),
        dns_endpoints,
    };
    let status = write_status(cluster, ctx, &key_secret_name, &outcome).await?;
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == condition_types::READY && c.status == "True");
    Ok((
        "ok",
        Action::requeue(if ready { RESYNC } else { NOT_READY_RESYNC }),
    ))
}

/// Makes sure the key Secret exists (creating it with a fresh key if absent) and is usable.
/// The outer error is an API failure; the inner one a Secret the user must fix.
async fn ensure_key(
    cluster: &CoralCluster,
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Result<(), secret::KeyError>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let key_error = |source| Error::Key {
        name: name.to_owned(),
        source,
    };
    let existing = match api.get_opt(name).await.map_err(key_error)? {
        Some(existing) => existing,
        None => {
            let fresh = secret::key_secret(cluster, &secret::generate_key());
            match api
                .create(
                    &PostParams {
                        field_manager: Some(MANAGER.to_owned()),
                        ..PostParams::default()
                    },
                    &fresh,
                )
                .await
            {
                Ok(created) => {
                    publish(
                        ctx,
                        cluster,
                        EventType::Normal,
                        "KeyGenerated",
                        &format!("generated shared DHT key in Secret {name}"),
                    )
                    .await;
                    created
                }
                // Another reconcile (or a user) created it first: use theirs, never overwrite.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    api.get(name).await.map_err(key_error)?
                }
                Err(err) => return Err(key_error(err)),
            }
        }
    };
    Ok(secret::check_key(cluster, &existing))
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

/// Addresses of ready DNS pods, plus the DNS Service's load-balancer addresses.
async fn dns_endpoints(
    cluster: &CoralCluster,
    ctx: &Context,
    namespace: &str,
    service: &Service,
) -> Result<Vec<String>, Error> {
    let port = cluster.spec.dns.port;
    let selector = ClusterNames::of(cluster)
        .selector(Some(Component::Dns))
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::ListPods)?;
    let mut endpoints: Vec<String> = pods
        .items
        .iter()
        .filter(|pod| is_ready(pod))
        .filter_map(|pod| pod.status.as_ref()?.pod_ip.clone())
        .map(|ip| socket_text(&ip, port))
        .collect();
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    endpoints.extend(
        ingress
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
            .map(|host| socket_text(&host, port)),
    );
    endpoints.sort();
    Ok(endpoints)
}

fn socket_text(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Reports a problem the user must fix: a Warning Event and a Degraded status.
async fn report_problem(
    cluster: &CoralCluster,
    ctx: &Context,
    outcome: Outcome,
) -> Result<(), Error> {
    if let Some((reason, message)) = outcome.problem() {
        tracing::warn!(cluster = %cluster.name_any(), error = %message, reason, "cannot act on CoralCluster");
        publish(ctx, cluster, EventType::Warning, reason, message).await;
    }
    write_status(cluster, ctx, &secret::key_secret_name(cluster), &outcome)
        .await
        .map(drop)
}

/// Computes and writes the status; publishes an Event when `Ready` changes.
async fn write_status(
    cluster: &CoralCluster,
    ctx: &Context,
    key_secret_name: &str,
    outcome: &Outcome,
) -> Result<CoralClusterStatus, Error> {
    let previous = cluster.status.as_ref();
    let now = Time(Timestamp::now());
    let status = next_status(
        previous,
        cluster.meta().generation,
        key_secret_name,
        outcome,
        &now,
    );
    if previous == Some(&status) {
        return Ok(status);
    }
    let ready = |s: Option<&CoralClusterStatus>| {
        s.and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == condition_types::READY)
        })
        .map(|c| c.status.clone())
    };
    if ready(previous) != ready(Some(&status))
        && let Some(condition) = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition_types::READY)
    {
        let kind = if condition.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(ctx, cluster, kind, &condition.reason, &condition.message).await;
    }
    let api: Api<CoralCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let patch = Patch::Merge(serde_json::json!({ "status": status }));
    api.patch_status(&cluster.name_any(), &PatchParams::default(), &patch)
        .await
        .map_err(Error::Status)?;
    Ok(status)
}

/// Publishes an Event about `cluster`; a failure to publish is logged, never fatal.
async fn publish(
    ctx: &Context,
    cluster: &CoralCluster,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1024).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(cluster = %cluster.name_any(), %err, "could not publish event");
    }
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
}
