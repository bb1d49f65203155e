//! `coral up`: a whole Coral control plane on this machine, with no Docker and no downloads.
//!
//! Starts the real Kubernetes control plane of `e2e/controlplane` on loopback, registers six
//! nodes in three zones and two regions, installs the CRD, runs the operator and the local
//! kubelet (pods as processes in network namespaces), creates the minimal CoralCluster, then
//! shows what the operator and the kubelet made of it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use coral_e2e::binaries::workspace_binary;
use coral_e2e::cluster::LocalCluster;
use coral_e2e::kubelet::{Kubelet, KubeletConfig};
use coral_e2e::nodes::standard_topology;
use coral_e2e::operator::RunningOperator;
use coral_operator::api::{CoralCluster, CoralClusterSpec};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, Service};
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
    eprintln!(
        "==> building coral-node and starting the local kubelet (pods run as processes in network namespaces)"
    );
    let node_binary = workspace_binary("coral-node", "coral-node")?;
    let kubelet = Kubelet::start(
        client.clone(),
        KubeletConfig {
            nodes: standard_topology(),
            images: vec![("coral-node".to_owned(), node_binary)],
            state_dir: local.control_plane.state_dir().join("kubelet"),
        },
    )
    .context("starting the kubelet (it needs root, for network namespaces)")?;
    let clusters: Api<CoralCluster> = Api::namespaced(client.clone(), NAMESPACE);
    clusters
        .create(
            &PostParams::default(),
            &CoralCluster::new("demo", CoralClusterSpec::default()),
        )
        .await?;
    eprintln!("==> created CoralCluster coral/demo (every setting at its default: zone nyud.net)");

    let cluster = wait_for_status(&clusters).await?;
    wait_for_pod_states(&client).await?;
    show(&client, &cluster).await?;
    println!();
    println!(
        "The node pods run as local processes, but coral-node has no `run` command yet (the proxy,"
    );
    println!(
        "DNS and DHT roles are issues 4 to 6): each exits, the kubelet restarts it with backoff,"
    );
    println!("and the CoralCluster honestly stays Ready=False.");
    if !once {
        println!();
        println!(
            "Look around:  KUBECONFIG={kubeconfig} kubectl get coral,daemonsets,services -n {NAMESPACE}"
        );
        println!("Operator metrics: http://{}/metrics", operator.address);
        eprintln!("==> running; Ctrl-C stops the operator and the control plane");
        tokio::signal::ctrl_c().await?;
    }
    kubelet.stop().await;
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

/// Waits until the kubelet has reported a container state for every pod (at most 30 s).
async fn wait_for_pod_states(client: &Client) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    for _ in 0..150 {
        let list = pods.list(&ListParams::default()).await?;
        let reported = list
            .items
            .iter()
            .filter(|p| container_state(p).is_some())
            .count();
        if reported > 0 && reported == list.items.len() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// `running`, `running, ready` or the waiting reason of a pod's container.
fn container_state(pod: &Pod) -> Option<String> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .clone();
    let state = status.state?;
    if state.running.is_some() {
        return Some(
            if status.ready {
                "running, ready"
            } else {
                "running"
            }
            .to_owned(),
        );
    }
    state.waiting.and_then(|w| w.reason)
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for pod in pods.list(&ListParams::default()).await? {
        *states
            .entry(container_state(&pod).unwrap_or_else(|| "no status yet".to_owned()))
            .or_default() += 1;
    }
    for (state, count) in states {
        println!("  Pods      {count:>2} {state}");
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
