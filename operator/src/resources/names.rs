//! Names and labels of the objects a CoralCluster owns, in one place so that selectors and the
//! objects they select cannot disagree.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::CoralCluster;

/// Label naming the application (`coral`).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Label naming the CoralCluster an object belongs to.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label naming the part of Coral an object is (`proxy`, `dns`).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Label naming the tool that manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The field manager and `managed-by` value of everything the operator applies.
pub const MANAGER: &str = "coral-operator";

/// The two kinds of node pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// Caching proxy and DHT node, on every selected node.
    Proxy,
    /// Authoritative DNS (and a DHT node for membership), where `dns.nodeSelector` matches.
    Dns,
}

impl Component {
    /// The value of the component label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Dns => "dns",
        }
    }
}

/// Names of the objects owned by one CoralCluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNames {
    base: String,
}

impl ClusterNames {
    /// The names for `cluster`.
    pub fn of(cluster: &CoralCluster) -> Self {
        Self {
            base: cluster.name_any(),
        }
    }

    /// DaemonSet of the given component's pods.
    pub fn daemon_set(&self, component: Component) -> String {
        format!("{}-{}", self.base, component.as_str())
    }

    /// ServiceAccount, Role and RoleBinding of the node pods.
    pub fn node_identity(&self) -> String {
        format!("{}-node", self.base)
    }

    /// ConfigMap holding `node.yaml` and `topology.yaml`.
    pub fn config_map(&self) -> String {
        format!("{}-config", self.base)
    }

    /// Default name of the shared-key Secret.
    pub fn default_key_secret(&self) -> String {
        format!("{}-dht-key", self.base)
    }

    /// Service through which resolvers reach the DNS pods.
    pub fn dns_service(&self) -> String {
        format!("{}-dns", self.base)
    }

    /// Headless Service listing the proxy pods; its EndpointSlices are the DNS nodes' list of
    /// proxies to check and publish.
    pub fn proxy_service(&self) -> String {
        format!("{}-proxy", self.base)
    }

    /// Headless Service listing DHT peers for bootstrap.
    pub fn dht_service(&self) -> String {
        format!("{}-dht", self.base)
    }

    /// Service exposing the admin port of every node pod for metrics scraping.
    pub fn metrics_service(&self) -> String {
        format!("{}-metrics", self.base)
    }

    /// Labels of every object of this cluster; with a component, of that component's objects.
    pub fn labels(&self, component: Option<Component>) -> BTreeMap<String, String> {
        let mut labels = self.selector(component);
        labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned());
        labels
    }

    /// Labels that select this cluster's pods; with a component, only that component's pods.
    pub fn selector(&self, component: Option<Component>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (NAME_LABEL.to_owned(), "coral".to_owned()),
            (INSTANCE_LABEL.to_owned(), self.base.clone()),
        ]);
        if let Some(component) = component {
            labels.insert(COMPONENT_LABEL.to_owned(), component.as_str().to_owned());
        }
        labels
    }
}
