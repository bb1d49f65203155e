//! A small kubelet for the fake nodes: it runs each pod bound to them as a local process.
//!
//! For every pod the scheduler binds to one of its nodes, it gives the pod a network namespace
//! and address ([`network`]), writes its ConfigMap, Secret and emptyDir volumes to disk
//! ([`volumes`]), starts the first container's command with the pod's environment (downward-API
//! fields included) in its own mount namespace ([`process`]), runs HTTP readiness and liveness
//! probes ([`probe`]), reports pod status ([`status`]) so that DaemonSet status and
//! EndpointSlices are real, and answers the pods' DNS queries for Service names
//! ([`cluster_dns`]). A process that exits is restarted with backoff (restart policy `Always`:
//! pods here are DaemonSet pods); a pod being deleted gets SIGTERM, then SIGKILL after its
//! grace period.
//! Everything is torn down when the kubelet stops or is dropped.
//!
//! What it does not do: more than one container per pod, init containers, restart policies
//! other than `Always`, resource limits, users and read-only root filesystems, images (an image name maps to a
//! binary on this machine).

pub mod api_proxy;
pub mod cluster_dns;
pub mod network;
pub mod probe;
pub mod process;
pub mod status;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::nodes::FakeNode;
use network::{PodInterface, PodNetwork};
use probe::{ProbeState, Verdict};
use process::ProcessSpec;
use status::{ContainerState, PodView, Termination, pod_status};

/// How the kubelet maps images and where it keeps pod files.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The nodes this kubelet runs pods for.
    pub nodes: Vec<FakeNode>,
    /// Image-name fragments and the binary each stands for, first match wins.
    pub images: Vec<(String, PathBuf)>,
    /// Where pod volumes and logs go.
    pub state_dir: PathBuf,
    /// The API server on loopback, forwarded to pods at their gateway; `None`: pods cannot
    /// reach it.
    pub api_server: Option<std::net::SocketAddr>,
}

/// Why the kubelet could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The pod network could not be created.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// The cluster DNS could not listen on the gateway.
    #[error("cluster DNS on the pods' gateway: {0}")]
    ClusterDns(#[source] std::io::Error),
    /// The API forwarder could not listen on the gateway.
    #[error("forwarding the API server to pods: {0}")]
    ApiProxy(#[source] std::io::Error),
}

/// A running kubelet; stopping or dropping it stops every pod process and removes every
/// namespace it made.
pub struct Kubelet {
    gateway: std::net::Ipv4Addr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Kubelet {
    /// Starts running pods bound to `config.nodes`.
    pub async fn start(client: Client, config: KubeletConfig) -> Result<Self, KubeletError> {
        let network = PodNetwork::create()?;
        let gateway = network.gateway();
        let shutdown = CancellationToken::new();
        cluster_dns::serve(gateway, client.clone(), shutdown.clone())
            .await
            .map_err(KubeletError::ClusterDns)?;
        if let Some(api_server) = config.api_server {
            api_proxy::bind(network.gateway(), api_server, shutdown.clone())
                .await
                .map_err(KubeletError::ApiProxy)?;
        }
        let runner = Runner {
            client,
            config,
            network,
            pods: HashMap::new(),
            created_dirs: Vec::new(),
        };
        let task = tokio::spawn(runner.run(shutdown.clone()));
        Ok(Self {
            gateway,
            shutdown,
            task,
        })
    }

    /// The host's address on the pods' bridge: where pods reach this machine.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.gateway
    }

    /// Stops every pod and tears the network down.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// First restart delay after a crash, and the largest; shorter than a real kubelet's (10 s to
/// 5 min) so that tests see restarts quickly.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
/// Longest a pod being deleted may take to stop after SIGTERM, whatever its grace period.
const MAX_GRACE: Duration = Duration::from_secs(10);

/// One pod this kubelet runs.
struct PodRuntime {
    pod: Pod,
    interface: PodInterface,
    host_ip: String,
    spec: Option<ProcessSpec>,
    child: Option<(Child, Timestamp)>,
    view: PodView,
    next_start: Instant,
    readiness: ProbeState,
    liveness: ProbeState,
    reported: Option<serde_json::Value>,
}

struct Runner {
    client: Client,
    config: KubeletConfig,
    network: PodNetwork,
    pods: HashMap<String, PodRuntime>,
    /// Mount points this kubelet had to create on the machine, removed again on drop.
    created_dirs: Vec<PathBuf>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        for dir in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Runner {
    async fn run(mut self, shutdown: CancellationToken) {
        let events = watcher(
            Api::<Pod>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .default_backoff();
        tokio::pin!(events);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => self.observe(pod).await,
                    Some(Ok(watcher::Event::Delete(pod))) => self.forget(&pod.uid().unwrap_or_default()).await,
                    Some(Ok(_)) => {}
                    Some(Err(err)) => eprintln!("kubelet: watching pods: {err}"),
                    None => break,
                },
                _ = tick.tick() => self.step().await,
            }
        }
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for uid in uids {
            self.forget(&uid).await;
        }
    }

    fn node_of(&self, pod: &Pod) -> Option<&FakeNode> {
        let node = pod.spec.as_ref()?.node_name.as_ref()?;
        self.config.nodes.iter().find(|n| &n.name == node)
    }

    /// A pod appeared or changed.
    async fn observe(&mut self, pod: Pod) {
        let Some(node) = self.node_of(&pod).cloned() else {
            return;
        };
        let uid = pod.uid().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            self.forget(&uid).await;
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            if let Err(err) = api.delete(&pod.name_any(), &now).await
                && !matches!(&err, kube::Error::Api(s) if s.code == 404)
            {
                eprintln!("kubelet: confirming deletion of {}: {err}", pod.name_any());
            }
            return;
        }
        if let Some(runtime) = self.pods.get_mut(&uid) {
            runtime.pod = pod;
            return;
        }
        match self.admit(pod, &node).await {
            Ok(runtime) => {
                self.pods.insert(uid, runtime);
            }
            Err(err) => eprintln!("kubelet: {err}"),
        }
    }

    /// Takes a new pod: network, then (at the next step) its process.
    async fn admit(&mut self, pod: Pod, node: &FakeNode) -> Result<PodRuntime, String> {
        let container = first_container(&pod)
            .ok_or_else(|| format!("pod {} has no container", pod.name_any()))?;
        let interface = self.network.attach().map_err(|e| e.to_string())?;
        let view = PodView {
            pod_ip: interface.address.to_string(),
            host_ip: node.address.clone(),
            start_time: Timestamp::now(),
            container: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            state: ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            restart_count: 0,
            last_termination: None,
            ever_started: false,
        };
        let now = Instant::now();
        Ok(PodRuntime {
            pod,
            interface,
            host_ip: node.address.clone(),
            spec: None,
            child: None,
            view,
            next_start: now,
            readiness: ProbeState::new(None, now),
            liveness: ProbeState::new(None, now),
            reported: None,
        })
    }

    /// Stops a pod's process and removes its namespace.
    async fn forget(&mut self, uid: &str) {
        let Some(mut runtime) = self.pods.remove(uid) else {
            return;
        };
        if let Some((child, _)) = runtime.child.as_mut() {
            let grace = runtime
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .map_or(MAX_GRACE, |s| {
                    Duration::from_secs(s.max(0).unsigned_abs()).min(MAX_GRACE)
                });
            stop(child, grace).await;
        }
        self.network.detach(&runtime.interface);
    }

    /// One round: start what is due, notice exits, probe, report.
    async fn step(&mut self) {
        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for uid in uids {
            let Some(mut runtime) = self.pods.remove(&uid) else {
                continue;
            };
            self.advance(&mut runtime).await;
            self.report(&mut runtime).await;
            self.pods.insert(uid, runtime);
        }
    }

    async fn advance(&mut self, runtime: &mut PodRuntime) {
        let now = Instant::now();
        if let Some((child, started_at)) = runtime.child.as_mut() {
            match child.try_wait() {
                Ok(Some(exit)) => {
                    let exit_code = exit.code().unwrap_or(137);
                    runtime.view.last_termination = Some(Termination {
                        exit_code,
                        started_at: *started_at,
                        finished_at: Timestamp::now(),
                    });
                    runtime.child = None;
                    let (first, max) = RESTART_BACKOFF;
                    let delay = first
                        .saturating_mul(1 << runtime.view.restart_count.clamp(0, 16))
                        .min(max);
                    runtime.next_start = now + delay;
                    runtime.view.state = ContainerState::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: format!(
                            "back-off {delay:?} restarting failed container (exit code {exit_code})"
                        ),
                    };
                }
                Ok(None) => {}
                Err(err) => eprintln!("kubelet: waiting for {}: {err}", runtime.pod.name_any()),
            }
        }
        if runtime.child.is_none() && now >= runtime.next_start {
            self.start_process(runtime).await;
        }
        if runtime.child.is_some() {
            self.probe(runtime).await;
        }
    }

    async fn start_process(&mut self, runtime: &mut PodRuntime) {
        let spec = match &runtime.spec {
            Some(spec) => spec.clone(),
            None => match self.prepare(runtime).await {
                Ok(spec) => {
                    runtime.spec = Some(spec.clone());
                    spec
                }
                Err(message) => {
                    runtime.view.state = ContainerState::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message,
                    };
                    runtime.next_start = Instant::now() + RESTART_BACKOFF.1;
                    return;
                }
            },
        };
        for mount in &spec.mounts {
            let target = PathBuf::from(&mount.target);
            if !target.exists() {
                match std::fs::create_dir_all(&target) {
                    Ok(()) => self.created_dirs.push(target),
                    Err(err) => {
                        eprintln!("kubelet: creating mount point {}: {err}", target.display())
                    }
                }
            }
        }
        let log = self.pod_dir(&runtime.pod).join("container.log");
        match process::spawn(&runtime.interface.namespace, &spec, &log) {
            Ok(child) => {
                let started_at = Timestamp::now();
                if runtime.view.ever_started {
                    runtime.view.restart_count += 1;
                }
                runtime.view.ever_started = true;
                runtime.view.state = ContainerState::Running {
                    started_at,
                    ready: false,
                };
                runtime.child = Some((child, started_at));
                let container = first_container(&runtime.pod);
                let now = Instant::now();
                runtime.readiness =
                    ProbeState::new(container.and_then(|c| c.readiness_probe.as_ref()), now);
                runtime.liveness =
                    ProbeState::new(container.and_then(|c| c.liveness_probe.as_ref()), now);
            }
            Err(err) => {
                runtime.view.state = ContainerState::Waiting {
                    reason: "CreateContainerError".into(),
                    message: err.to_string(),
                };
                runtime.next_start = Instant::now() + RESTART_BACKOFF.1;
            }
        }
    }

    /// Runs the container's due probes: readiness sets `ready` (no probe: ready once
    /// running); a failed liveness probe kills the container, which is then restarted.
    async fn probe(&self, runtime: &mut PodRuntime) {
        let Some(container) = first_container(&runtime.pod).cloned() else {
            return;
        };
        let address = runtime.interface.address;
        let ready = match &container.readiness_probe {
            None => Some(true),
            Some(probe) => match runtime.readiness.run(probe, &container, address).await {
                Verdict::NotDue | Verdict::Failing => None,
                Verdict::Passed => Some(true),
                Verdict::Failed => Some(false),
            },
        };
        if let (Some(ready), ContainerState::Running { started_at, .. }) =
            (ready, &runtime.view.state)
        {
            runtime.view.state = ContainerState::Running {
                started_at: *started_at,
                ready,
            };
        }
        if let Some(probe) = &container.liveness_probe
            && runtime.liveness.run(probe, &container, address).await == Verdict::Failed
            && let Some((child, _)) = runtime.child.as_mut()
        {
            eprintln!(
                "kubelet: {} failed its liveness probe; restarting it",
                runtime.pod.name_any()
            );
            let _ = child.start_kill();
        }
    }

    fn pod_dir(&self, pod: &Pod) -> PathBuf {
        self.config.state_dir.join("pods").join(format!(
            "{}_{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        ))
    }

    /// Volumes, environment and command line of the pod's container.
    async fn prepare(&self, runtime: &PodRuntime) -> Result<ProcessSpec, String> {
        let pod = &runtime.pod;
        let container = first_container(pod).ok_or("no container")?;
        let dir = self.pod_dir(pod);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut mounts = volumes::materialise(&self.client, pod, container, &dir)
            .await
            .map_err(|e| e.to_string())?;
        let resolv_conf = dir.join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            cluster_dns::resolv_conf(self.network.gateway()),
        )
        .map_err(|e| format!("{}: {e}", resolv_conf.display()))?;
        // First: a volume mounted over `/tmp` would hide a pod directory under `/tmp`.
        mounts.insert(
            0,
            volumes::Mount {
                source: resolv_conf,
                target: "/etc/resolv.conf".to_owned(),
            },
        );
        let mut env = BTreeMap::new();
        if self.config.api_server.is_some() {
            env.insert(
                "KUBERNETES_SERVICE_HOST".to_owned(),
                self.network.gateway().to_string(),
            );
            env.insert(
                "KUBERNETES_SERVICE_PORT".to_owned(),
                api_proxy::PORT.to_string(),
            );
        }
        for var in container.env.iter().flatten() {
            env.insert(var.name.clone(), self.env_value(pod, runtime, var).await?);
        }
        Ok(ProcessSpec {
            argv: self.argv(container)?,
            env,
            mounts,
        })
    }

    /// The command line: the container's `command` if set, else the image's binary; then `args`.
    fn argv(&self, container: &Container) -> Result<Vec<String>, String> {
        let mut argv = match container.command.as_ref().filter(|c| !c.is_empty()) {
            Some(command) => command.clone(),
            None => {
                let image = container.image.clone().unwrap_or_default();
                let binary = self
                    .config
                    .images
                    .iter()
                    .find(|(fragment, _)| image.contains(fragment.as_str()))
                    .map(|(_, binary)| binary.display().to_string())
                    .ok_or_else(|| format!("no binary on this machine for image {image}"))?;
                vec![binary]
            }
        };
        argv.extend(container.args.iter().flatten().cloned());
        Ok(argv)
    }

    async fn env_value(
        &self,
        pod: &Pod,
        runtime: &PodRuntime,
        var: &EnvVar,
    ) -> Result<String, String> {
        if let Some(value) = &var.value {
            return Ok(value.clone());
        }
        let source = var
            .value_from
            .as_ref()
            .ok_or_else(|| format!("env {} has no value", var.name))?;
        let namespace = pod.namespace().unwrap_or_default();
        if let Some(field) = &source.field_ref {
            let spec = pod.spec.clone().unwrap_or_default();
            return match field.field_path.as_str() {
                "metadata.name" => Ok(pod.name_any()),
                "metadata.namespace" => Ok(namespace),
                "metadata.uid" => Ok(pod.uid().unwrap_or_default()),
                "spec.nodeName" => Ok(spec.node_name.unwrap_or_default()),
                "spec.serviceAccountName" => Ok(spec.service_account_name.unwrap_or_default()),
                "status.podIP" => Ok(runtime.interface.address.to_string()),
                "status.hostIP" => Ok(runtime.host_ip.clone()),
                other => Err(format!("env {}: field {other} is not supported", var.name)),
            };
        }
        if let Some(key) = &source.config_map_key_ref {
            let map = Api::<ConfigMap>::namespaced(self.client.clone(), &namespace)
                .get(&key.name)
                .await
                .map_err(|e| e.to_string())?;
            return map
                .data
                .and_then(|d| d.get(&key.key).cloned())
                .ok_or_else(|| format!("env {}: no key {}", var.name, key.key));
        }
        if let Some(key) = &source.secret_key_ref {
            let secret = Api::<Secret>::namespaced(self.client.clone(), &namespace)
                .get(&key.name)
                .await
                .map_err(|e| e.to_string())?;
            let bytes = secret
                .data
                .and_then(|d| d.get(&key.key).cloned())
                .ok_or_else(|| format!("env {}: no key {}", var.name, key.key))?;
            return String::from_utf8(bytes.0).map_err(|e| e.to_string());
        }
        Err(format!("env {}: unsupported source", var.name))
    }

    /// Patches the pod status when it changed since the last report.
    async fn report(&self, runtime: &mut PodRuntime) {
        let status = pod_status(&runtime.view);
        if runtime.reported.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            &runtime.pod.namespace().unwrap_or_default(),
        );
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        match api
            .patch_status(&runtime.pod.name_any(), &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => runtime.reported = Some(status),
            Err(err) => eprintln!("kubelet: reporting {}: {err}", runtime.pod.name_any()),
        }
    }
}

fn first_container(pod: &Pod) -> Option<&Container> {
    pod.spec.as_ref()?.containers.first()
}

/// SIGTERM, then SIGKILL once `grace` has passed.
async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}
