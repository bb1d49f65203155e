//! Spec of the DHT role.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings of the hierarchical sloppy DHT.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DhtSpec {
    /// UDP port of the DHT.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// The Secret holding the cluster's shared key, which authenticates every DHT packet and
    /// every peer-to-peer fetch. When the Secret does not exist the operator generates it;
    /// it never replaces an existing key.
    pub key_secret_ref: KeySecretRef,

    /// DHT protocol version. Nodes of different versions never talk to each other; raise it
    /// together with the image when the wire format changes.
    #[schemars(range(min = 1))]
    pub protocol_version: u32,
}

/// Where the shared key lives.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct KeySecretRef {
    /// Name of the Secret in the CoralCluster's namespace; unset means `<cluster>-dht-key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Key inside the Secret whose value is the shared key (at least 32 bytes).
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

impl Default for DhtSpec {
    fn default() -> Self {
        Self {
            port: 9410,
            key_secret_ref: KeySecretRef::default(),
            protocol_version: 1,
        }
    }
}

impl Default for KeySecretRef {
    fn default() -> Self {
        Self {
            name: None,
            key: coral_node::config::KEY_FILE.to_owned(),
        }
    }
}
