//! One pure builder per Kubernetes object a CoralCluster owns.
//!
//! Each builder takes the CoralCluster (and whatever else it needs that is already decided,
//! such as the node configuration or the generated key) and returns the object to apply. None
//! of them talks to the API server; `reconcile` applies what they build.

pub mod config_map;
pub mod daemon_set;
pub mod names;
pub mod rbac;
pub mod secret;
pub mod services;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::CoralCluster;
use names::{ClusterNames, Component};

/// Metadata of an object owned by `cluster`: its name, namespace, labels and the controller
/// owner reference that lets Kubernetes garbage-collect it with the cluster.
pub fn owned_meta(
    cluster: &CoralCluster,
    name: String,
    component: Option<Component>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(ClusterNames::of(cluster).labels(component)),
        owner_references: cluster.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::api::{CoralCluster, CoralClusterSpec};

    /// A CoralCluster `demo` in namespace `edge` with the default spec, as the API server
    /// would return it (with a uid, so owner references can be built).
    pub fn demo() -> CoralCluster {
        let mut cluster = CoralCluster::new("demo", CoralClusterSpec::default());
        cluster.metadata.namespace = Some("edge".into());
        cluster.metadata.uid = Some("8b1c2f0e-0000-4000-8000-000000000001".into());
        cluster
    }
}
