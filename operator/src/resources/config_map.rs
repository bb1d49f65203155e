//! The ConfigMap the node pods mount: `node.yaml` (the [`NodeConfig`]) and `topology.yaml`
//! (which zone and region every Kubernetes node is in).
//!
//! Node labels cannot reach a pod through the downward API, and giving every pod read access
//! to Nodes would be a cluster-scoped grant; the operator, which watches Nodes anyway, writes
//! the map instead. Only `node.yaml` feeds the pods' config hash, so a node relabel updates
//! the mounted file without restarting every pod.

use std::collections::BTreeMap;

use coral_node::config::{CONFIG_FILE, NodeConfig, TOPOLOGY_FILE, Topology};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::names::ClusterNames;
use super::owned_meta;
use crate::api::CoralCluster;

/// Where every node sits: node name to the values of `label_keys`, in order.
pub fn topology<'a, N>(nodes: impl IntoIterator<Item = &'a N>, label_keys: &[String]) -> Topology
where
    N: Resource + 'a,
{
    Topology {
        nodes: nodes
            .into_iter()
            .map(|node| {
                let labels = node.labels();
                let values = label_keys
                    .iter()
                    .map(|key| labels.get(key).cloned().unwrap_or_default())
                    .collect();
                (node.name_any(), values)
            })
            .collect(),
    }
}

/// The ConfigMap holding the node configuration and the topology.
pub fn config_map(cluster: &CoralCluster, config: &NodeConfig, topology: &Topology) -> ConfigMap {
    ConfigMap {
        metadata: owned_meta(cluster, ClusterNames::of(cluster).config_map(), None),
        data: Some(BTreeMap::from([
            (CONFIG_FILE.to_owned(), config.to_yaml()),
            (TOPOLOGY_FILE.to_owned(), topology.to_yaml()),
        ])),
        ..ConfigMap::default()
    }
}

/// A short digest of the node configuration; a change rolls the node pods.
pub fn config_hash(config: &NodeConfig) -> String {
    let digest = Sha256::digest(config.to_yaml().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_config::node_config;
    use crate::resources::tests::demo;
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[test]
    fn topology_lists_label_values_in_key_order_and_blanks_missing_ones() {
        let keys = vec![
            "topology.kubernetes.io/zone".to_owned(),
            "topology.kubernetes.io/region".to_owned(),
        ];
        let nodes = [
            node(
                "a",
                &[
                    ("topology.kubernetes.io/zone", "z1"),
                    ("topology.kubernetes.io/region", "r1"),
                ],
            ),
            node("b", &[("topology.kubernetes.io/region", "r2")]),
        ];
        let topology = topology(&nodes, &keys);
        assert_eq!(topology.nodes["a"], ["z1", "r1"]);
        assert_eq!(topology.nodes["b"], ["", "r2"]);
    }

    #[test]
    fn config_map_carries_both_files_the_node_reads() {
        let cluster = demo();
        let config = node_config(&cluster).unwrap();
        let map = config_map(&cluster, &config, &Topology::default());
        let data = map.data.unwrap();
        assert_eq!(data[CONFIG_FILE], config.to_yaml());
        assert_eq!(data[TOPOLOGY_FILE], Topology::default().to_yaml());
        assert_eq!(map.metadata.name.as_deref(), Some("demo-config"));
    }

    #[test]
    fn config_hash_changes_with_the_config_only() {
        let cluster = demo();
        let config = node_config(&cluster).unwrap();
        assert_eq!(config_hash(&config), config_hash(&config.clone()));
        let mut changed = config.clone();
        changed.dns.answers_per_query += 1;
        assert_ne!(config_hash(&config), config_hash(&changed));
        assert_eq!(config_hash(&config).len(), 16);
    }
}
