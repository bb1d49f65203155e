//! The `coral-operator` binary: `run` reconciles CoralClusters, `crd` prints the CRD.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use coral_operator::crd::coral_cluster_crd_yaml;
use coral_operator::http;
use coral_operator::metrics::Metrics;
use coral_operator::runtime::{self, LeaseOptions, Options};
use kube::Client;
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
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of this replica in the Lease and in Events.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let client = Client::try_default()
        .await
        .context("cannot reach a Kubernetes API server: set KUBECONFIG or run inside a cluster")?;
    let listener = http::bind(args.metrics_address).await?;
    tracing::info!(address = %args.metrics_address, "serving /healthz, /readyz and /metrics");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let options = Options {
        identity: args
            .identity
            .unwrap_or_else(|| format!("coral-operator-{}", std::process::id())),
        leader_election: args.leader_election.then_some(LeaseOptions {
            name: args.lease_name,
            namespace: args.lease_namespace,
        }),
    };
    runtime::run(client, listener, options, Metrics::new(), shutdown).await?;
    tracing::info!("stopped");
    Ok(())
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

async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}
