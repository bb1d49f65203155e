//! A local cluster ready for Coral: the control plane, six live nodes and a namespace.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

use crate::controlplane::{ControlPlane, ControlPlaneError};
use crate::nodes::{self, Heartbeats, standard_topology};

/// Why the local cluster could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// The control plane did not start.
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    /// A call to the API server failed while preparing it.
    #[error("preparing the cluster: {0}")]
    Api(#[from] kube::Error),
}

/// A running control plane with the standard six nodes (kept Ready) and one namespace.
pub struct LocalCluster {
    /// An admin client.
    pub client: Client,
    /// Keeps the nodes Ready while the cluster lives.
    pub heartbeats: Heartbeats,
    /// The control plane; stopped when the cluster is dropped.
    pub control_plane: ControlPlane,
}

impl LocalCluster {
    /// Starts a control plane with its state in `state` and prepares it, creating `namespace`.
    pub async fn start_in(
        state: tempfile::TempDir,
        namespace: &str,
    ) -> Result<Self, LocalClusterError> {
        Self::prepare(ControlPlane::start_in(state)?, namespace).await
    }

    /// Starts and prepares a cluster whose state lives in a temporary directory.
    pub async fn start(namespace: &str) -> Result<Self, LocalClusterError> {
        Self::prepare(ControlPlane::start()?, namespace).await
    }

    async fn prepare(
        control_plane: ControlPlane,
        namespace: &str,
    ) -> Result<Self, LocalClusterError> {
        let client = control_plane.client().await?;
        let heartbeats = nodes::register(&client, &standard_topology()).await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let object = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces.create(&PostParams::default(), &object).await?;
        Ok(Self {
            client,
            heartbeats,
            control_plane,
        })
    }
}

/// The node and address of every pod in `namespace` that matches the label selector `labels`
/// and has an address, sorted by address.
pub async fn pod_addresses(
    client: &Client,
    namespace: &str,
    labels: &str,
) -> kube::Result<Vec<(String, IpAddr)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods.list(&ListParams::default().labels(labels)).await?;
    let mut addresses: Vec<(String, IpAddr)> = list
        .items
        .iter()
        .filter_map(|pod| {
            let node = pod.spec.as_ref()?.node_name.clone()?;
            let ip = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            Some((node, ip))
        })
        .collect();
    addresses.sort_by_key(|(_, ip)| *ip);
    Ok(addresses)
}
