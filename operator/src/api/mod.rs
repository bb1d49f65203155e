//! The `CoralCluster` custom resource (`coral.nyud.net/v1alpha1`).
//!
//! Every field carries a doc comment, which becomes its `kubectl explain` text, and a default,
//! so that an object with nothing but `metadata.name` is a working CDN for the zone `nyud.net`.
//! Rules the OpenAPI schema cannot say on its own are CEL rules (`x-kubernetes-validations`),
//! enforced by the API server and, through kube's client-side CEL evaluator, by the operator
//! before it acts (see [`crate::crd`]).
//! This module owns the shape of the API; turning it into node configuration and Kubernetes
//! objects is the job of `node_config` and `resources`.

mod dht;
mod dns;
mod health;
mod locality;
mod proxy;
mod status;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use dht::{DhtSpec, KeySecretRef};
pub use dns::{DnsExposure, DnsSpec, NameServerSpec};
pub use health::HealthSpec;
pub use locality::{ClientNetworkSpec, LocalitySpec};
pub use proxy::{
    BandwidthSpec, CaBundleRef, ClientLimitsSpec, FixedAddressSpec, OriginAccessSpec,
    OriginTimeoutsSpec, OtherMethods, ProxySpec, RateLimitSpec,
};
pub use status::{CoralClusterStatus, condition_types, reasons};

/// API group of Coral's custom resources.
pub const GROUP: &str = "coral.nyud.net";

/// The desired state of one Coral CDN: which nodes run it, which DNS zone it serves and how
/// its proxies, name servers, DHT and health checks behave.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coral.nyud.net",
    version = "v1alpha1",
    kind = "CoralCluster",
    namespaced,
    shortname = "coral",
    category = "coral",
    status = "CoralClusterStatus",
    derive = "PartialEq",
    doc = "A Coral content distribution network: caching proxies, locality-aware DNS and a sloppy DHT on the selected nodes.",
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone","description":"DNS zone served"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredNodes","description":"Node pods wanted"}"#,
    printcolumn = r#"{"name":"Ready Nodes","type":"integer","jsonPath":".status.readyNodes","description":"Node pods ready"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether every node pod is ready"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.adminPort != self.proxy.httpPort && self.adminPort != self.dns.port && self.proxy.httpPort != self.dns.port", "message": "adminPort, proxy.httpPort and dns.port must all differ"},
    {"rule": "self.dht.port != self.dns.port", "message": "dht.port and dns.port must differ: both are UDP ports of the DNS pods"},
    {"rule": "!has(self.dns.nameservers) || self.dns.nameservers.all(ns, !ns.name.endsWith('.' + self.zone) || (has(ns.addresses) && size(ns.addresses) > 0))", "message": "a name server inside the zone needs glue: give dns.nameservers[].addresses"}
]))]
#[serde(rename_all = "camelCase", default)]
pub struct CoralClusterSpec {
    /// DNS zone the cluster serves: `http://<origin>.<zone>/path` is fetched from `<origin>`
    /// through Coral. Delegate this zone to the DNS pods (see `dns`).
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?[.])+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')", "message": "zone must be a lower-case DNS name with at least two labels, such as nyud.net"}]))]
    #[schemars(length(min = 3, max = 200))]
    pub zone: String,

    /// Container image of the Coral node (one binary for proxy, DNS and DHT). Unset: the image
    /// matching this operator's version, so that upgrading the operator upgrades the nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// When the kubelet pulls the node image.
    pub image_pull_policy: PullPolicy,

    /// Secrets holding credentials for pulling the node image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// CPU and memory of each proxy pod. When unset, Coral requests 100m CPU and the proxy's
    /// cache memory plus 128Mi, and limits memory to the same amount. DNS pods have their own
    /// (`dns.resources`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Only nodes with these labels run Coral pods (empty: every schedulable node).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the node pods, for example to run on tainted edge nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// PriorityClass of the node pods; a CDN edge is often worth `system-node-critical`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Port of each node's admin HTTP server: `/livez`, `/readyz` (used by the probes),
    /// `/healthz` (health and load, checked by the DNS nodes), `/metrics` and the status pages.
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: u16,

    /// The caching HTTP proxy.
    pub proxy: ProxySpec,

    /// The authoritative, locality-aware DNS server.
    pub dns: DnsSpec,

    /// The locality hierarchy of nodes and clients.
    pub locality: LocalitySpec,

    /// The sloppy DHT that tells proxies which peers hold an object.
    pub dht: DhtSpec,

    /// How DNS servers check proxies before naming them in answers.
    pub health: HealthSpec,
}

/// When the kubelet pulls an image (the Kubernetes `imagePullPolicy`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the image is not on the node.
    #[default]
    IfNotPresent,
    /// Never pull; the image must already be on the node.
    Never,
}

impl PullPolicy {
    /// The value Kubernetes expects in a container's `imagePullPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// The node image matching this operator's version.
pub fn default_image() -> String {
    format!("ghcr.io/coral-cdn/coral-node:{}", env!("CARGO_PKG_VERSION"))
}

impl CoralClusterSpec {
    /// The node image to run: the spec's, or the one matching this operator.
    pub fn node_image(&self) -> String {
        self.image.clone().unwrap_or_else(default_image)
    }
}

impl Default for CoralClusterSpec {
    fn default() -> Self {
        Self {
            zone: "nyud.net".to_owned(),
            image: None,
            image_pull_policy: PullPolicy::default(),
            image_pull_secrets: Vec::new(),
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            priority_class_name: None,
            admin_port: 9090,
            proxy: ProxySpec::default(),
            dns: DnsSpec::default(),
            locality: LocalitySpec::default(),
            dht: DhtSpec::default(),
            health: HealthSpec::default(),
        }
    }
}
