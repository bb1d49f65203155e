//! Spec of the locality hierarchy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The label keys of the two local levels, as Kubernetes well-known labels.
pub const DEFAULT_LABEL_KEYS: [&str; 2] = [
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
];

/// How nodes and DNS clients are placed in Coral's locality hierarchy. Level 2 is the most
/// local (by default the same zone), level 1 the next (the same region), level 0 everyone.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalitySpec {
    /// Node label keys that define the local levels, most local first.
    #[schemars(length(min = 1, max = 2), inner(length(min = 1, max = 317)))]
    pub label_keys: Vec<String>,

    /// Where DNS clients are: networks (matched against the EDNS client subnet or the
    /// resolver's address) and the zone/region whose proxies should answer them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4096))]
    pub client_networks: Vec<ClientNetworkSpec>,
}

/// A network of DNS clients and where it is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.zone) || has(self.region)", "message": "a client network needs a zone or a region"}]))]
#[serde(rename_all = "camelCase")]
pub struct ClientNetworkSpec {
    /// The network in CIDR form, such as `198.51.100.0/24` or `2001:db8::/32`.
    #[schemars(length(min = 1, max = 50))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isCIDR(self)", "message": "cidr must be a network such as 198.51.100.0/24"}]))]
    pub cidr: String,
    /// Value of the first (most local) label key for these clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub zone: Option<String>,
    /// Value of the second label key for these clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub region: Option<String>,
}

impl Default for LocalitySpec {
    fn default() -> Self {
        Self {
            label_keys: DEFAULT_LABEL_KEYS.map(str::to_owned).to_vec(),
            client_networks: Vec::new(),
        }
    }
}
