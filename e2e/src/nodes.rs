//! Fake Nodes with topology labels, made schedulable the way a kubelet would.
//!
//! A Node created through the API gets the `node.kubernetes.io/not-ready` taint and no Ready
//! condition; without a kubelet nothing would ever clear them and DaemonSets would want no
//! pods. [`register`] plays the kubelet's part for the Node object itself.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

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
}

/// Six nodes in three zones across two regions: two per zone; zones `eu-1a` and `eu-1b` in
/// region `eu-1`, zone `us-1a` in region `us-1`.
pub fn standard_topology() -> Vec<FakeNode> {
    [("eu-1a", "eu-1"), ("eu-1b", "eu-1"), ("us-1a", "us-1")]
        .iter()
        .flat_map(|(zone, region)| {
            (1..=2).map(move |i| FakeNode {
                name: format!("node-{zone}-{i}"),
                zone: (*zone).to_owned(),
                region: (*region).to_owned(),
            })
        })
        .collect()
}

/// Creates the nodes, marks them Ready with room for pods, and removes the not-ready taint.
pub async fn register(client: &Client, nodes: &[FakeNode]) -> kube::Result<()> {
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
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "coral e2e node", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        }});
        api.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(status))
            .await?;
    }
    Ok(())
}

/// Marks a pod Running and Ready with `ip`, as its kubelet would once the container is up.
pub async fn mark_pod_ready(client: &Client, pod: &Pod, ip: &str) -> kube::Result<()> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
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
