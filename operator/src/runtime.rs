//! Running the operator: the HTTP endpoints, optional leader election, and the controller.
//!
//! The binary and the end-to-end tests both start the operator through [`run`], so the tests
//! exercise exactly what ships. Everything ends when the shutdown token is cancelled: the
//! controller finishes its in-flight reconciles, the Lease is released, the server stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError, LeaseParams};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::CoralCluster;
use crate::http::{self, Health};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};
use crate::resources::names::{MANAGED_BY_LABEL, MANAGER};

/// Seconds a leader's Lease stays valid without renewal; a standby takes over after that.
const LEASE_SECONDS: u64 = 15;
/// Seconds before expiry at which the leader renews.
const LEASE_GRACE_SECONDS: u64 = 5;

/// How to run the operator.
#[derive(Clone, Debug)]
pub struct Options {
    /// Name of this replica, as it appears in the Lease and in Events (the pod name).
    pub identity: String,
    /// Run the controller only while holding this Lease; `None` runs it unconditionally.
    pub leader_election: Option<LeaseOptions>,
}

/// Where the leader Lease lives.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
}

/// Why the operator stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The CoralCluster CRD is not installed.
    #[error(
        "the CRD {0} is not installed: run `coral-operator crd | kubectl apply --server-side -f -`"
    )]
    CrdMissing(String),
    /// The API server could not be asked about CRDs.
    #[error("cannot read CustomResourceDefinitions: {0}")]
    CrdLookup(#[source] kube::Error),
    /// The leader Lease could not be set up, renewed or released.
    #[error("leader Lease: {0}")]
    Lease(#[from] LeaseManagerError),
    /// The background task keeping the Lease ended unexpectedly.
    #[error("the leader Lease task ended unexpectedly")]
    LeaseTaskEnded,
    /// Another replica took the Lease while this one was leading.
    #[error("lost the leader Lease; exiting so that this replica restarts as a standby")]
    LeaseLost,
}

/// Runs the operator until `shutdown` is cancelled, serving the HTTP endpoints on `listener`.
pub async fn run(
    client: Client,
    listener: TcpListener,
    options: Options,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    require_crd(&client).await?;
    let health = Arc::new(Health {
        ready: Default::default(),
        metrics,
    });
    let server = tokio::spawn(http::serve(listener, health.clone(), shutdown.clone()));
    let result = match &options.leader_election {
        Some(lease) => lead(client, lease, &options.identity, &health, &shutdown).await,
        None => {
            // Without election this replica is the only one: it leads.
            health.metrics.leader.set(1);
            health.ready.store(true, Ordering::Relaxed);
            run_controller(client, &options.identity, &health.metrics, shutdown.clone()).await;
            health.metrics.leader.set(0);
            Ok(())
        }
    };
    shutdown.cancel();
    if let Err(err) = server.await {
        tracing::warn!(%err, "HTTP server task failed");
    }
    result
}

/// Fails with the fix when the CRD is not installed, instead of a controller that logs 404s.
async fn require_crd(client: &Client) -> Result<(), RuntimeError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = format!("{}.{}", CoralCluster::plural(&()), CoralCluster::group(&()));
    match crds.get_opt(&name).await.map_err(RuntimeError::CrdLookup)? {
        Some(_) => Ok(()),
        None => Err(RuntimeError::CrdMissing(name)),
    }
}

/// Waits for the Lease, runs the controller while holding it, releases it on shutdown.
async fn lead(
    client: Client,
    lease: &LeaseOptions,
    identity: &str,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<(), RuntimeError> {
    let manager = LeaseManagerBuilder::new(client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        // The Lease is contended through server-side apply conflicts, so each replica needs a
        // field manager of its own: the default one carries the identity.
        .with_parameters(LeaseParams::new(
            identity,
            LEASE_SECONDS,
            LEASE_GRACE_SECONDS,
        ))
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(lease = %lease.name, %identity, "standing by for the leader Lease");
    while !*leading.borrow_and_update() {
        tokio::select! {
            () = shutdown.cancelled() => return release(leading, lease_task).await,
            changed = leading.changed() => changed.map_err(|_| RuntimeError::LeaseTaskEnded)?,
        }
    }

    tracing::info!(%identity, "leading: starting the controller");
    health.metrics.leader.set(1);
    let stop = shutdown.child_token();
    let controller = run_controller(client, identity, &health.metrics, stop.clone());
    tokio::pin!(controller);
    let lost = loop {
        tokio::select! {
            () = &mut controller => break false,
            changed = leading.changed() => {
                if changed.is_err() || !*leading.borrow_and_update() {
                    stop.cancel();
                    (&mut controller).await;
                    break true;
                }
            }
        }
    };
    health.metrics.leader.set(0);
    if lost {
        return Err(RuntimeError::LeaseLost);
    }
    release(leading, lease_task).await
}

/// Stops renewing the Lease and frees it, so a standby takes over at once.
async fn release(
    leading: watch::Receiver<bool>,
    lease_task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
) -> Result<(), RuntimeError> {
    drop(leading);
    let manager = lease_task
        .await
        .map_err(|_| RuntimeError::LeaseTaskEnded)??;
    manager.release().await?;
    tracing::info!("released the leader Lease");
    Ok(())
}

/// Runs the controller until `stop` is cancelled.
async fn run_controller(
    client: Client,
    identity: &str,
    metrics: &Metrics,
    stop: CancellationToken,
) {
    let (nodes, node_writer) = reflector::store();
    // Topology needs Node names and labels only: watch metadata, and drop the heartbeats that
    // make up most Node events.
    let node_events = reflector::reflector(
        node_writer,
        watcher(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .applied_objects()
    .predicate_filter(predicates::labels, Default::default());

    // Only spec changes start a reconcile: the operator's own status writes must not, or a
    // failing cluster would be retried at once instead of after its backoff.
    let (clusters, cluster_writer) = reflector::store();
    let gauges = (metrics.clone(), clusters.clone());
    let cluster_events = reflector::reflector(
        cluster_writer,
        watcher(
            Api::<CoralCluster>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    // Deletions (and relists, which may hide some) never reach a reconcile: drop the series of
    // clusters that are gone here, once the store has taken the event.
    .inspect(move |event| {
        if matches!(
            event,
            Ok(watcher::Event::Delete(_) | watcher::Event::InitDone)
        ) {
            reconcile::forget_deleted_clusters(&gauges.0, &gauges.1);
        }
    })
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    let controller = Controller::for_stream(cluster_events, clusters.clone());
    let every_cluster = clusters.clone();
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(identity.to_owned()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(client.clone(), reporter),
        metrics.clone(),
        nodes,
        clusters,
    ));
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    controller
        .owns(Api::<DaemonSet>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<Secret>::all(client.clone()), owned.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), owned.clone())
        .owns(Api::<Role>::all(client.clone()), owned.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), owned)
        .watches_stream(node_events, move |_node| {
            every_cluster
                .state()
                .iter()
                .map(|c| ObjectRef::from_obj(&**c))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "controller event");
            }
        })
        .await;
}
