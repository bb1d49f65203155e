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

/// The reasons the operator gives in its conditions, so that tools can match on them.
pub mod reasons {
    /// Every pod runs the current template and is ready.
    pub const ALL_PODS_READY: &str = "AllPodsReady";
    /// Some pods are missing, outdated or not ready yet.
    pub const PODS_NOT_READY: &str = "PodsNotReady";
    /// The DaemonSets are rolling the current template out.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// The DaemonSets run the current template everywhere.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// The DaemonSet controller has not yet looked at the current DaemonSets.
    pub const WAITING_FOR_DAEMON_SETS: &str = "WaitingForDaemonSets";
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// No node matches the node selector (and tolerations).
    pub const NO_NODES_SELECTED: &str = "NoNodesSelected";
    /// No node matches the DNS node selector.
    pub const NO_DNS_NODES: &str = "NoDnsNodes";
    /// The spec breaks a rule; nothing of it was applied.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The key Secret exists but holds no usable key.
    pub const KEY_REJECTED: &str = "KeyRejected";
    /// The key Secret in use was deleted; the operator will not invent a new key on its own.
    pub const KEY_MISSING: &str = "KeyMissing";
    /// A call to the API server failed; retried with backoff.
    pub const API_FAILED: &str = "ApiFailed";
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

    /// Where resolvers reach ready DNS servers (`address:port`): the load balancer's addresses
    /// (`LoadBalancer`), or the nodes of ready DNS pods (`NodePort`, `HostNetwork`). Always
    /// written, so that an empty list clears an old one.
    #[serde(default)]
    pub dns_endpoints: Vec<String>,

    /// Name of the Secret holding the shared DHT key in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_name: Option<String>,
}

impl CoralClusterStatus {
    /// The condition of type `kind`, if reported.
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == kind)
    }

    /// Whether `Ready` is `True`.
    pub fn is_ready(&self) -> bool {
        self.condition(condition_types::READY)
            .is_some_and(|c| c.status == "True")
    }
}
