//! Status of a CoralCluster, as written by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The types of the conditions the operator reports.
pub mod condition_types {
    /// Every node pod (proxy and DNS) is ready and runs the current spec.
    pub const READY: &str = "Ready";
    /// The operator is rolling the current spec out.
    pub const PROGRESSING: &str = "Progressing";
    /// Something is wrong: an invalid spec or a failed apply; the reason says which.
    pub const DEGRADED: &str = "Degraded";
}

/// What the operator last observed of a CoralCluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CoralClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Progressing` and `Degraded`, with reasons and messages.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Node pods (proxy and DHT) the DaemonSet wants.
    #[serde(default)]
    pub desired_nodes: i32,

    /// Node pods that are ready.
    #[serde(default)]
    pub ready_nodes: i32,

    /// DNS pods the DNS DaemonSet wants.
    #[serde(default)]
    pub desired_dns_nodes: i32,

    /// DNS pods that are ready.
    #[serde(default)]
    pub ready_dns_nodes: i32,

    /// Addresses of ready DNS pods (`ip:port`), and of the DNS Service's load balancer when it
    /// has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_endpoints: Vec<String>,

    /// Name of the Secret holding the shared DHT key in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_name: Option<String>,
}
