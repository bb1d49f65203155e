//! `coral up`: a whole Coral control plane on this machine, with no Docker and no downloads.
//!
//! Starts the real Kubernetes control plane of `e2e/controlplane` on loopback, registers six
//! nodes in three zones and two regions, installs the CRD, runs the operator and creates the
//! minimal CoralCluster, then shows what the operator made of it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use coral_e2e::cluster::LocalCluster;
use coral_e2e::operator::RunningOperator;
use coral_operator::api::{CoralCluster, CoralClusterSpec};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

const NAMESPACE: &str = "coral";

/// Coral on this machine.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local control plane with six nodes, the operator and a CoralCluster; keeps
    /// running until Ctrl-C.
    Up {
        /// Show the result and stop everything instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Up { once } = Cli::parse().command;
    let state = state_dir()?;
    eprintln!(
        "==> starting the Kubernetes control plane (the first run builds it from Go modules: ~7 min on 2 cores)"
    );
    let local = LocalCluster::start_in(state, NAMESPACE)
        .await
        .context("starting the local cluster")?;
    let client = local.client.clone();
    let kubeconfig = local.control_plane.kubeconfig().display().to_string();
    eprintln!(
        "==> 6 nodes in zones eu-1a, eu-1b (region eu-1) and us-1a (region us-1); CRD installed; starting the operator"
    );
    let operator = RunningOperator::start(&client, "coral-up", None).await?;
    let clusters: Api<CoralCluster> = Api::namespaced(client.clone(), NAMESPACE);
    clusters
        .create(
            &PostParams::default(),
            &CoralCluster::new("demo", CoralClusterSpec::default()),
        )
        .await?;
    eprintln!("==> created CoralCluster coral/demo (every setting at its default: zone nyud.net)");

    let cluster = wait_for_status(&clusters).await?;
    show(&client, &cluster).await?;
    println!();
    println!("The node pods are scheduled on the six nodes but nothing runs them yet: the local");
    println!(
        "kubelet that starts them as processes is the next step (issue 3), so Ready stays False."
    );
    if !once {
        println!();
        println!(
            "Look around:  KUBECONFIG={kubeconfig} kubectl get coral,daemonsets,services -n {NAMESPACE}"
        );
        println!("Operator metrics: http://{}/metrics", operator.address);
        eprintln!("==> running; Ctrl-C stops the operator and the control plane");
        tokio::signal::ctrl_c().await?;
    }
    operator.stop().await?;
    eprintln!("==> stopping the control plane");
    drop(local);
    Ok(())
}

/// A fresh state directory under the repository's ignored `.cache/`.
fn state_dir() -> anyhow::Result<tempfile::TempDir> {
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let cache = cache.canonicalize()?;
    Ok(tempfile::Builder::new().prefix("up-").tempdir_in(cache)?)
}

async fn wait_for_status(clusters: &Api<CoralCluster>) -> anyhow::Result<CoralCluster> {
    for _ in 0..150 {
        let cluster = clusters.get("demo").await?;
        if cluster.status.as_ref().is_some_and(|s| s.desired_nodes > 0) {
            return Ok(cluster);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the operator wrote no status within 30 s")
}

async fn show(client: &Client, cluster: &CoralCluster) -> anyhow::Result<()> {
    let status = cluster.status.clone().unwrap_or_default();
    println!();
    println!(
        "CoralCluster {}/{}: zone {}",
        NAMESPACE,
        cluster.name_any(),
        cluster.spec.zone
    );
    println!(
        "  node pods: {}/{} ready; DNS pods: {}/{} ready",
        status.ready_nodes, status.desired_nodes, status.ready_dns_nodes, status.desired_dns_nodes
    );
    for condition in &status.conditions {
        println!(
            "  {:<12} {:<6} {:<16} {}",
            condition.type_, condition.status, condition.reason, condition.message
        );
    }
    println!("Objects the operator owns:");
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    for ds in daemon_sets.list(&ListParams::default()).await? {
        let desired = ds
            .status
            .as_ref()
            .map(|s| s.desired_number_scheduled)
            .unwrap_or_default();
        println!("  DaemonSet {:<24} {desired} pods wanted", ds.name_any());
    }
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    for service in services.list(&ListParams::default()).await? {
        let spec = service.spec.clone().unwrap_or_default();
        let kind = match spec.cluster_ip.as_deref() {
            Some("None") => "headless".to_owned(),
            _ => spec.type_.unwrap_or_default(),
        };
        println!("  Service   {:<24} {kind}", service.name_any());
    }
    Ok(())
}
