//! Who the DNS role checks and publishes: the cluster's proxies and its DNS nodes.
//!
//! A member is a pod: the Kubernetes node it runs on (which places it, through the topology)
//! and its address (published in A/AAAA records; its admin port is probed). The list comes from
//! a file (this module) or from the Kubernetes API; either way it only says who *might* be
//! published: nothing is published before the health checks say so.
//!
//! The file is YAML:
//!
//! ```yaml
//! proxies:
//!   - { node: worker-1, address: 10.0.1.7 }
//!   - { node: worker-2, address: 10.0.2.9 }
//! nameservers:
//!   - { node: worker-1, address: 10.0.1.8 }
//! ```

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::config::ConfigError;

/// One pod the DNS role may publish.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The Kubernetes node it runs on, which the topology places.
    pub node: String,
    /// Its address: published in answers, and where its admin port is probed.
    pub address: IpAddr,
}

/// The proxies and DNS nodes of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// Proxies, published in answers for origin names.
    #[serde(default)]
    pub proxies: Vec<Member>,
    /// DNS nodes, published in the zone's NS records when the configuration names none.
    #[serde(default)]
    pub nameservers: Vec<Member>,
}

impl Members {
    /// Reads a members file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        crate::config::load_yaml::<Self>(path).map(|loaded| loaded.value.deduplicated())
    }

    /// The same members, each once, in a stable order.
    fn deduplicated(mut self) -> Self {
        for list in [&mut self.proxies, &mut self.nameservers] {
            list.sort();
            list.dedup();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_file_is_read_and_a_wrong_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.yaml");
        std::fs::write(
            &path,
            "proxies:\n  - { node: b, address: 10.0.0.2 }\n  - { node: a, address: 10.0.0.1 }\n  - { node: a, address: 10.0.0.1 }\nnameservers:\n  - { node: a, address: '::1' }\n",
        )
        .unwrap();
        let members = Members::load(&path).unwrap();
        assert_eq!(
            members.proxies,
            [
                Member {
                    node: "a".into(),
                    address: "10.0.0.1".parse().unwrap()
                },
                Member {
                    node: "b".into(),
                    address: "10.0.0.2".parse().unwrap()
                },
            ]
        );
        assert_eq!(
            members.nameservers[0].address,
            "::1".parse::<IpAddr>().unwrap()
        );

        std::fs::write(&path, "proxies:\n  - { node: b, adress: 10.0.0.2 }\n").unwrap();
        let error = Members::load(&path).unwrap_err().to_string();
        assert!(error.contains("adress"), "{error}");
    }
}
