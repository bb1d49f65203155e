//! `coral_node_info`: which node a pod runs on, in which zone, with which roles and version.
//!
//! An info metric (always 1) in the Prometheus style: dashboards join it on `instance` to break
//! any other series down by zone, whatever the scrape configuration calls the pod.

use prometheus::{IntGaugeVec, Opts, Registry};

use crate::config::Topology;

/// Where a node pod runs and what it plays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Kubernetes node.
    pub node: String,
    /// The node's most local locality value (its zone by default); empty when the topology
    /// does not list the node.
    pub zone: String,
    /// The roles the pod plays, comma-separated in the order given.
    pub roles: String,
}

impl NodeInfo {
    /// The info of a pod on `node` playing `roles`, its zone read from `topology`.
    pub fn new(node: &str, topology: &Topology, roles: &[&str]) -> Self {
        Self {
            node: node.to_owned(),
            zone: topology.zone(node).to_owned(),
            roles: roles.join(","),
        }
    }

    /// Registers `coral_node_info` in `registry`, set to 1.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        let info = IntGaugeVec::new(
            Opts::new(
                "coral_node_info",
                "Always 1: the node, zone, roles and version of this pod.",
            ),
            &["node", "zone", "roles", "version"],
        )?;
        info.with_label_values(&[
            self.node.as_str(),
            &self.zone,
            &self.roles,
            env!("CARGO_PKG_VERSION"),
        ])
        .set(1);
        registry.register(Box::new(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    fn topology() -> Topology {
        Topology {
            nodes: [(
                "node-a".to_owned(),
                vec!["eu-1a".to_owned(), "eu-1".to_owned()],
            )]
            .into(),
        }
    }

    #[test]
    fn the_zone_is_the_most_local_value() {
        let info = NodeInfo::new("node-a", &topology(), &["dht", "proxy"]);
        assert_eq!(info.zone, "eu-1a");
        assert_eq!(info.roles, "dht,proxy");
        assert_eq!(NodeInfo::new("elsewhere", &topology(), &["dns"]).zone, "");
    }

    #[test]
    fn registered_info_is_exported_as_one() {
        let registry = Registry::new();
        NodeInfo::new("node-a", &topology(), &["proxy"])
            .register(&registry)
            .unwrap();
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        let expected = format!(
            "coral_node_info{{node=\"node-a\",roles=\"proxy\",version=\"{}\",zone=\"eu-1a\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&expected), "{text}");
    }
}
