//! `coral up`: a whole Coral control plane on this machine, with no Docker and no downloads;
//! `coral down`: remove whatever an interrupted `coral up` left.
//!
//! Starts the real Kubernetes control plane of `e2e/controlplane` on loopback, registers six
//! nodes in three zones and two regions, installs the CRD, runs the operator and the local
//! kubelet (pods as processes in network namespaces) and a demo origin, creates a CoralCluster
//! with default settings that may fetch that origin, then shows what the operator and the
//! kubelet made of it, and the CDN answering DNS and HTTP.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use coral_e2e::binaries::workspace_binary;
use coral_e2e::cluster::{LocalCluster, pod_addresses};
use coral_e2e::demo_origin::DemoOrigin;
use coral_e2e::dns::a_records;
use coral_e2e::http;
use coral_e2e::kubelet::network::reclaim_abandoned;
use coral_e2e::kubelet::{Kubelet, KubeletConfig};
use coral_e2e::nodes::standard_topology;
use coral_operator::api::CoralCluster;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

const NAMESPACE: &str = "coral";
/// The CoralCluster `up` applies.
const CLUSTER: &str = "demo";
/// The demo origin's host name, which the CoralCluster maps to its address.
const DEMO_HOST: &str = "demo.origin";

/// Coral on this machine.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Subcommands,
}

#[derive(Subcommand)]
enum Subcommands {
    /// Start a local control plane with six nodes, the local kubelet, the operator (as a
    /// process) and the minimal CoralCluster; keeps running until Ctrl-C.
    Up {
        /// Show the result and stop everything instead of running until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Stop and remove whatever an interrupted `coral up` left behind.
    Down,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Subcommands::Up { once } => up(once).await,
        Subcommands::Down => {
            down()?;
            eprintln!("==> nothing of coral up is left running");
            Ok(())
        }
    }
}

async fn up(once: bool) -> anyhow::Result<()> {
    down()?;
    let state = state_dir()?;
    eprintln!("==> building coral-operator and coral-node");
    let operator_binary = workspace_binary("coral-operator", "coral-operator")?;
    let node_binary = workspace_binary("coral-node", "coral-node")?;
    eprintln!(
        "==> starting the Kubernetes control plane (the first run builds it from Go modules: ~7 min on 2 cores)"
    );
    let local = LocalCluster::start_in(state, NAMESPACE)
        .await
        .context("starting the local cluster")?;
    let client = local.client.clone();
    let state_dir = local.control_plane.state_dir().to_owned();
    let kubeconfig = local.control_plane.kubeconfig().to_owned();
    eprintln!(
        "==> 6 nodes in zones eu-1a, eu-1b (region eu-1) and us-1a (region us-1), kept Ready by heartbeats"
    );

    eprintln!("==> starting the local kubelet (pods run as processes in network namespaces)");
    let kubelet = Kubelet::start(
        client.clone(),
        KubeletConfig {
            nodes: standard_topology(),
            images: vec![("coral-node".to_owned(), node_binary)],
            state_dir: state_dir.join("kubelet"),
            api_server: Some(local.control_plane.api_address()?),
        },
    )
    .await
    .context("starting the kubelet (it needs root, for network namespaces)")?;

    eprintln!("==> coral-operator crd | kubectl apply --server-side -f -");
    let crd = Command::new(&operator_binary)
        .arg("crd")
        .output()
        .context("running coral-operator crd")?;
    kubectl(
        &kubeconfig,
        &["apply", "--server-side", "-f", "-"],
        Some(&crd.stdout),
    )?;
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "crd/coralclusters.coral.nyud.net",
            "--timeout=30s",
        ],
        None,
    )?;

    let metrics = free_loopback_port()?;
    eprintln!(
        "==> starting coral-operator run (a local process; log in {})",
        state_dir.join("operator.log").display()
    );
    let operator = OperatorProcess::start(&operator_binary, &kubeconfig, metrics, &state_dir)?;

    let origin = DemoOrigin::start(kubelet.gateway().into())
        .await
        .context("starting the demo origin")?;
    eprintln!(
        "==> a demo origin serves on {} (the pods' gateway; its requests are counted)",
        origin.address()
    );
    let manifest = state_dir.join("coralcluster.yaml");
    std::fs::write(&manifest, demo_cluster(origin.address()))?;
    eprintln!(
        "==> kubectl apply -n {NAMESPACE} -f {} (every setting at its default, but the proxies may fetch the demo origin)",
        manifest.display()
    );
    kubectl(
        &kubeconfig,
        &[
            "apply",
            "-n",
            NAMESPACE,
            "-f",
            &manifest.display().to_string(),
        ],
        None,
    )?;

    let clusters: Api<CoralCluster> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for_status(&clusters).await?;
    wait_for_pod_states(&client).await?;
    eprintln!(
        "==> waiting for Ready (the DNS pods read the proxies from the API server and check them first)"
    );
    let cluster = wait_for_ready(&clusters).await?;
    show(&client, &cluster).await?;
    let origin_name = format!(
        "{DEMO_HOST}.{}.{}",
        origin.address().port(),
        cluster.spec.zone
    );
    let try_it = show_cdn(&client, &cluster, &origin, &origin_name).await?;
    println!();
    println!(
        "The proxy pods run coral-node with the proxy and DHT roles; the DNS pods learn the proxies from"
    );
    println!(
        "the EndpointSlices of the {}-proxy Service, probe them, and answer with the healthy ones nearest",
        cluster.name_any()
    );
    println!(
        "the client. The proxies find each other through the DHT, whose nodes meet through the headless"
    );
    println!(
        "{}-dht Service (the local kubelet answers the pods' DNS queries for Services).",
        cluster.name_any()
    );
    if !once {
        println!();
        println!(
            "Look around:  KUBECONFIG={} kubectl get coral,daemonsets,pods,services -n {NAMESPACE}",
            kubeconfig.display()
        );
        println!("Operator metrics: http://127.0.0.1:{metrics}/metrics");
        for line in try_it {
            println!("{line}");
        }
        eprintln!(
            "==> running; Ctrl-C stops everything (if this is killed instead, `coral down` cleans up)"
        );
        tokio::signal::ctrl_c().await?;
    }
    operator.stop();
    kubelet.stop().await;
    eprintln!("==> stopping the control plane");
    drop(local);
    Ok(())
}

/// The operator binary running as a local process, as it would run in a pod.
struct OperatorProcess {
    child: std::process::Child,
}

/// File in the state directory recording the operator's PID, for `coral down`.
const OPERATOR_PID_FILE: &str = "operator.pid";

impl OperatorProcess {
    fn start(
        binary: &Path,
        kubeconfig: &Path,
        port: u16,
        state_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = std::fs::File::create(state_dir.join("operator.log"))?;
        let child = Command::new(binary)
            .args(["run", "--metrics-address", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", NAMESPACE)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting coral-operator")?;
        std::fs::write(state_dir.join(OPERATOR_PID_FILE), child.id().to_string())?;
        Ok(Self { child })
    }

    /// SIGTERM, as Kubernetes stops a pod, then wait (SIGKILL after 10 s).
    fn stop(self) {
        drop(self);
    }
}

/// The operator is stopped on every way out of `up`, errors included.
impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs kubectl against the local cluster, failing with its stderr.
fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<String> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "running kubectl (coral up applies manifests with it; install kubectl 1.32 or newer)",
        )?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn free_loopback_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Stops what earlier `coral up` runs left: their operators, control planes, state and pod
/// networks.
fn down() -> anyhow::Result<()> {
    let cache = cache_dir()?;
    for entry in std::fs::read_dir(&cache)? {
        let dir = entry?.path();
        let is_up = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("up-"));
        if !is_up || !dir.is_dir() {
            continue;
        }
        if let Ok(pid) = std::fs::read_to_string(dir.join(OPERATOR_PID_FILE)) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
        if dir.join("pids").exists() {
            let stop = coral_e2e::controlplane::scripts_dir().join("stop.sh");
            let _ = Command::new(stop).arg(&dir).stdout(Stdio::null()).status();
        }
        eprintln!(
            "==> removed what a previous coral up left in {}",
            dir.display()
        );
        std::fs::remove_dir_all(&dir)?;
    }
    let networks = reclaim_abandoned();
    if networks > 0 {
        eprintln!("==> removed {networks} abandoned pod network(s)");
    }
    Ok(())
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    Ok(cache.canonicalize()?)
}

/// A fresh state directory under the repository's ignored `.cache/`.
fn state_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("up-")
        .tempdir_in(cache_dir()?)?)
}

async fn wait_for_status(clusters: &Api<CoralCluster>) -> anyhow::Result<CoralCluster> {
    for _ in 0..150 {
        let cluster = clusters.get(CLUSTER).await?;
        if cluster.status.as_ref().is_some_and(|s| s.desired_nodes > 0) {
            return Ok(cluster);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the operator wrote no status within 30 s")
}

/// Waits until the CoralCluster is `Ready` (at most 60 s): every pod is, the DNS pods once they
/// have read the proxies from the API server and checked each one. Returns the cluster as it
/// is then.
async fn wait_for_ready(clusters: &Api<CoralCluster>) -> anyhow::Result<CoralCluster> {
    for _ in 0..300 {
        let cluster = clusters.get(CLUSTER).await?;
        let ready = cluster.status.as_ref().is_some_and(|status| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            return Ok(cluster);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("==> the CoralCluster did not become Ready within 60 s; showing what there is");
    Ok(clusters.get(CLUSTER).await?)
}

/// The CoralCluster of the demo: every setting at its default, except that the proxies may
/// fetch the demo origin, which listens on the pods' (private) gateway address.
fn demo_cluster(origin: std::net::SocketAddr) -> String {
    let ip = origin.ip();
    format!(
        "apiVersion: coral.nyud.net/v1alpha1\nkind: CoralCluster\nmetadata:\n  name: {CLUSTER}\nspec:\n  proxy:\n    originAccess:\n      internalNetworks: [{ip}/32]\n      addresses:\n        - host: {DEMO_HOST}\n          addresses: [{ip}]\n"
    )
}

/// Shows the CDN at work: asks every DNS pod for `origin_name` as a resolver the cluster
/// cannot place would (such clients get proxies near the DNS node), then fetches the page
/// twice through the first proxy named, and counts the origin's requests. Returns `dig` and
/// `curl` lines to try.
async fn show_cdn(
    client: &Client,
    cluster: &CoralCluster,
    origin: &DemoOrigin,
    origin_name: &str,
) -> anyhow::Result<Vec<String>> {
    let instance = format!("app.kubernetes.io/instance={}", cluster.name_any());
    let nodes: std::collections::BTreeMap<IpAddr, String> =
        pod_addresses(client, NAMESPACE, &instance)
            .await?
            .into_iter()
            .map(|(node, ip)| (ip, node))
            .collect();
    let servers: Vec<IpAddr> = pod_addresses(
        client,
        NAMESPACE,
        &format!("{instance},app.kubernetes.io/component=dns"),
    )
    .await?
    .into_iter()
    .map(|(_, ip)| ip)
    .collect();
    let dns_port = cluster.spec.dns.port;
    let placed = |ip: &IpAddr| format!("{ip} ({})", nodes.get(ip).map_or("?", String::as_str));
    println!();
    println!("DNS: {origin_name} asked of each DNS pod:");
    let mut named = Vec::new();
    for server in &servers {
        let answer = match a_records(SocketAddr::new(*server, dns_port), origin_name, None).await {
            Ok(addresses) if addresses.is_empty() => "no address".to_owned(),
            Ok(addresses) => {
                named.extend(addresses.first().copied());
                addresses.iter().map(placed).collect::<Vec<_>>().join(", ")
            }
            Err(error) => error,
        };
        println!("  {:<28} -> {answer}", placed(server));
    }
    let mut try_it = Vec::new();
    if let Some(server) = servers.first() {
        try_it.push(format!(
            "Ask a DNS pod:      dig @{server} -p {dns_port} {origin_name}"
        ));
    }
    named.sort_by_key(|ip| nodes.get(ip).cloned());
    let (Some(first), Some(other)) = (named.first().copied(), named.last().copied()) else {
        return Ok(try_it);
    };
    let port = cluster.spec.proxy.http_port;
    let proxy = SocketAddr::new(first, port);
    println!(
        "HTTP: GET http://{origin_name}/ through {}, twice, then through {}:",
        placed(&first),
        placed(&other)
    );
    for through in [first, first, other] {
        match http::get(SocketAddr::new(through, port), origin_name, "/").await {
            Ok((status, body)) => println!("  {status}: {}", body.trim_end()),
            Err(error) => println!("  failed: {error}"),
        }
    }
    match origin.requests() {
        1 => println!(
            "The origin answered one request: the second GET came from the first proxy's cache, and the other \
             proxy found the page on it through the DHT."
        ),
        asked => println!("The origin answered {asked} requests."),
    }
    try_it.push(format!(
        "Fetch through it:   curl --resolve {origin_name}:{port}:{ip} http://{origin_name}:{port}/",
        port = proxy.port(),
        ip = proxy.ip()
    ));
    Ok(try_it)
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
