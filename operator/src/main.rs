//! The `coral-operator` binary: `run` reconciles CoralClusters, `crd` prints the CRD.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use coral_operator::api::CoralCluster;
use coral_operator::crd::coral_cluster_crd_yaml;
use coral_operator::http::{self, Health};
use coral_operator::metrics::Metrics;
use coral_operator::reconcile::{self, Context};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource};
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio_util::sync::CancellationToken;

/// Coral operator: turns CoralCluster resources into a running CDN.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile CoralClusters in the cluster named by $KUBECONFIG (or the in-cluster account).
    Run(RunArgs),
    /// Print the CoralCluster CustomResourceDefinition as YAML.
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the /healthz, /readyz and /metrics endpoints.
    #[arg(long, env = "CORAL_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Run the controller only while holding a coordination.k8s.io Lease, so that several
    /// replicas can run with one active.
    #[arg(long, env = "CORAL_LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "CORAL_LEASE_NAME", default_value = "coral-operator")]
    lease_name: String,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Log format.
    #[arg(long, env = "CORAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", coral_cluster_crd_yaml());
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let client = Client::try_default()
        .await
        .context("cannot reach a Kubernetes API server: set KUBECONFIG or run inside a cluster")?;
    require_crd(&client).await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let health = Arc::new(Health {
        ready: Default::default(),
        metrics: Metrics::new(),
    });
    let listener = http::bind(args.metrics_address).await?;
    tracing::info!(address = %args.metrics_address, "serving /healthz, /readyz and /metrics");
    let server = tokio::spawn(http::serve(listener, health.clone(), shutdown.clone()));

    if args.leader_election {
        lead_then_run(&args, client, health.clone(), shutdown.clone()).await?;
    } else {
        run_controller(client, health.clone(), shutdown.clone()).await;
    }
    shutdown.cancel();
    server.await.context("HTTP server task")?;
    tracing::info!("stopped");
    Ok(())
}

/// Fails with the fix when the CRD is not installed, instead of a controller that logs 404s.
async fn require_crd(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = format!("{}.{}", CoralCluster::plural(&()), CoralCluster::group(&()));
    match crds
        .get_opt(&name)
        .await
        .context("cannot read CustomResourceDefinitions")?
    {
        Some(_) => Ok(()),
        None => bail!(
            "the CRD {name} is not installed: run `coral-operator crd | kubectl apply --server-side -f -`"
        ),
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}

/// Waits for the Lease, runs the controller while holding it, releases it on shutdown.
/// Losing the Lease stops the controller and ends the process with an error, so that the
/// replica restarts as a clean standby.
async fn lead_then_run(
    args: &RunArgs,
    client: Client,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("coral-operator-{}", std::process::id()));
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_parameters(
            LeaseParams::new(&identity, 15, 5).with_field_manager("coral-operator-lease"),
        )
        .build()
        .await
        .context("cannot set up the leader Lease")?;
    let (mut leading, lease_task) = manager.watch().await;
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(lease = %args.lease_name, %identity, "waiting for leadership");
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => return release(leading, lease_task).await,
            changed = leading.changed() => changed.context("leader Lease task ended")?,
        }
    }
    tracing::info!("leading: starting controller");
    health.metrics.leader.set(1);
    let lost = CancellationToken::new();
    let stop = CancellationToken::new();
    let mut watch_lease = leading.clone();
    let (lost_signal, stop_signal) = (lost.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop_signal.cancelled() => return,
                changed = watch_lease.changed() => {
                    if changed.is_err() || !*watch_lease.borrow_and_update() {
                        lost_signal.cancel();
                        return;
                    }
                }
            }
        }
    });
    let either = CancellationToken::new();
    let either_signal = either.clone();
    let (shutdown_watch, lost_watch) = (shutdown.clone(), lost.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown_watch.cancelled() => {},
            () = lost_watch.cancelled() => {},
        }
        either_signal.cancel();
    });
    run_controller(client, health.clone(), either).await;
    stop.cancel();
    health.metrics.leader.set(0);
    if lost.is_cancelled() && !shutdown.is_cancelled() {
        bail!("lost the leader Lease; exiting so that this replica restarts as a standby");
    }
    release(leading, lease_task).await
}

async fn release(
    leading: tokio::sync::watch::Receiver<bool>,
    lease_task: tokio::task::JoinHandle<
        kube_lease_manager::Result<kube_lease_manager::LeaseManager>,
    >,
) -> anyhow::Result<()> {
    drop(leading);
    let manager = lease_task
        .await
        .context("leader Lease task")?
        .context("leader Lease")?;
    manager
        .release()
        .await
        .context("releasing the leader Lease")?;
    tracing::info!("released the leader Lease");
    Ok(())
}

/// Runs the controller until `stop` is cancelled.
async fn run_controller(client: Client, health: Arc<Health>, stop: CancellationToken) {
    let clusters: Api<CoralCluster> = Api::all(client.clone());
    let (nodes, node_writer) = reflector::store();
    // Topology needs Node labels only: ignore the status heartbeats that make up most events.
    let node_events = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .applied_objects()
    .predicate_filter(predicates::labels, Default::default());

    let controller = Controller::new(clusters, watcher::Config::default());
    let cluster_store = controller.store();
    let all_clusters = cluster_store.clone();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Recorder::new(
            client.clone(),
            Reporter {
                controller: "coral-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        health.metrics.clone(),
        nodes,
        cluster_store,
    ));
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=coral-operator");
    health.ready.store(true, Ordering::Relaxed);
    controller
        .owns(Api::<DaemonSet>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<Secret>::all(client.clone()), owned)
        .watches_stream(node_events, move |_node| {
            all_clusters
                .state()
                .iter()
                .map(|c| ObjectRef::from_obj(&**c))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object.name, "reconciled"),
                Err(err) => tracing::debug!(%err, "reconcile error"),
            }
        })
        .await;
    // Leave time for in-flight status writes to land before the process exits.
    tokio::time::sleep(Duration::from_millis(100)).await;
}
