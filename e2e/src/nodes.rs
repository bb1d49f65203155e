//! Fake Nodes with topology labels, made schedulable the way a kubelet would.
//!
//! A Node created through the API gets the `node.kubernetes.io/not-ready` taint and no Ready
//! condition; without a kubelet nothing would ever clear them and DaemonSets would want no
//! pods. [`register`] plays the kubelet's part for the Node object itself, including the
//! heartbeats (node Lease and Ready condition) that keep the node lifecycle controller from
//! declaring the nodes lost.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Label key of a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Label key of a node's region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// A node to register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeNode {
    /// Node name.
    pub name: String,
    /// Value of the zone label.
    pub zone: String,
    /// Value of the region label.
    pub region: String,
    /// The node's InternalIP: a loopback address (127.0.100.0/24), so that anything that dials
    /// a node (a resolver handed a hostNetwork DNS endpoint, say) stays on this machine. The
    /// documentation range 192.0.2.0/24 is not safe here: it can be a real network.
    pub address: String,
}

/// Six nodes in three zones across two regions: two per zone; zones `eu-1a` and `eu-1b` in
/// region `eu-1`, zone `us-1a` in region `us-1`; addresses 127.0.100.1 to 127.0.100.6.
pub fn standard_topology() -> Vec<FakeNode> {
    [("eu-1a", "eu-1"), ("eu-1b", "eu-1"), ("us-1a", "us-1")]
        .iter()
        .flat_map(|(zone, region)| (1..=2).map(move |i| (*zone, *region, i)))
        .enumerate()
        .map(|(n, (zone, region, i))| FakeNode {
            name: format!("node-{zone}-{i}"),
            zone: zone.to_owned(),
            region: region.to_owned(),
            address: format!("127.0.100.{}", n + 1),
        })
        .collect()
}

/// How often registered nodes renew their Lease and Ready condition. The control plane's node
/// lifecycle controller declares a node lost after 20 s without either.
pub const HEARTBEAT: Duration = Duration::from_secs(3);

/// Keeps registered nodes alive with heartbeats until dropped, as their kubelets would.
#[must_use = "the nodes go NotReady once their heartbeats stop"]
pub struct Heartbeats {
    shutdown: CancellationToken,
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Creates the nodes, marks them Ready with room for pods, removes the not-ready taint, and
/// keeps them Ready (node Leases and the Ready condition) while the returned guard lives.
pub async fn register(client: &Client, nodes: &[FakeNode]) -> kube::Result<Heartbeats> {
    let api: Api<Node> = Api::all(client.clone());
    for node in nodes {
        let object = Node {
            metadata: ObjectMeta {
                name: Some(node.name.clone()),
                labels: Some(BTreeMap::from([
                    (ZONE_LABEL.to_owned(), node.zone.clone()),
                    (REGION_LABEL.to_owned(), node.region.clone()),
                    ("kubernetes.io/hostname".to_owned(), node.name.clone()),
                    ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                ])),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        api.create(&PostParams::default(), &object).await?;
        api.patch(
            &node.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": []}})),
        )
        .await?;
        let now = Timestamp::now().to_string();
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "coral e2e node", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": node.address},
                          {"type": "Hostname", "address": node.name}],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        }});
        api.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(status))
            .await?;
        beat(client, &node.name).await?;
    }
    let shutdown = CancellationToken::new();
    let (client, names, stop) = (
        client.clone(),
        nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
        shutdown.clone(),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => for name in &names {
                    if let Err(err) = beat(&client, name).await {
                        eprintln!("heartbeat of {name}: {err}");
                    }
                },
            }
        }
    });
    Ok(Heartbeats { shutdown })
}

/// One heartbeat: renew the node's Lease and its Ready condition.
async fn beat(client: &Client, node: &str) -> kube::Result<()> {
    let now = Timestamp::now();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": MicroTime(now)},
    });
    leases
        .patch(
            node,
            &PatchParams::apply("coral-e2e-kubelet").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                                   "message": "coral e2e node", "lastHeartbeatTime": now.to_string()}]}});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(ready))
        .await
        .map(drop)
}

/// Marks a pod Running and Ready with `ip`, on its node's InternalIP, as its kubelet would once
/// the container is up.
pub async fn mark_pod_ready(client: &Client, pod: &Pod, ip: &str) -> kube::Result<()> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let node = Api::<Node>::all(client.clone()).get(&node_name).await?;
    let host_ip = node
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
        .unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let now = Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": host_ip,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": now,
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
        ],
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map(drop)
}

/// Plays the kubelets for one round: every pod of `instance` bound to a node and not yet
/// ready is marked ready, and every pod being deleted is let go (a kubelet confirms the
/// deletion once its containers stop). Returns how many live pods are bound.
pub async fn ready_bound_pods(
    client: &Client,
    namespace: &str,
    instance: &str,
) -> kube::Result<usize> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={instance}")))
        .await?;
    let mut bound = 0;
    for pod in &list.items {
        if pod.metadata.deletion_timestamp.is_some() {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            pods.delete(&name, &now).await?;
            continue;
        }
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none()
        {
            continue;
        }
        bound += 1;
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready {
            mark_pod_ready(
                client,
                pod,
                &format!("10.244.{}.{}", bound / 250, bound % 250 + 2),
            )
            .await?;
        }
    }
    Ok(bound)
}
