//! The DaemonSets of node pods: one for proxy + DHT on every selected node, one for DNS where
//! `dns.nodeSelector` also matches.
//!
//! Both run the same image with different roles. The pods are locked down (non-root,
//! read-only root filesystem, no capabilities but `NET_BIND_SERVICE` when a port is below
//! 1024, seccomp `RuntimeDefault`), read everything they need from mounted files, and only the
//! DNS pods get an API token (for EndpointSlices).

use std::collections::BTreeMap;

use coral_node::config::{CONFIG_FILE, KEY_FILE, NodeConfig, TOPOLOGY_FILE};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config_map::config_hash;
use super::names::{ClusterNames, Component};
use super::owned_meta;
use super::secret::key_secret_name;
use crate::api::{CoralCluster, DnsExposure};
use crate::node_config::{CACHE_DIR, CONFIG_DIR, KEY_DIR};

/// Pod annotation carrying the digest of `node.yaml`; a new digest rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "coral.nyud.net/config-hash";
/// User and group the node runs as (the conventional "nonroot" of distroless images).
pub const NODE_UID: i64 = 65532;
/// Memory the node needs beyond its cache budget.
const MEMORY_OVERHEAD_BYTES: u64 = 128 << 20;

/// The DaemonSet of `component` pods for `cluster`, configured by `config`.
pub fn daemon_set(cluster: &CoralCluster, component: Component, config: &NodeConfig) -> DaemonSet {
    let names = ClusterNames::of(cluster);
    DaemonSet {
        metadata: owned_meta(cluster, names.daemon_set(component), Some(component)),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(names.selector(Some(component))),
                ..LabelSelector::default()
            },
            template: pod_template(cluster, component, config),
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    }
}

fn pod_template(
    cluster: &CoralCluster,
    component: Component,
    config: &NodeConfig,
) -> PodTemplateSpec {
    let spec = &cluster.spec;
    let names = ClusterNames::of(cluster);
    let host_network = component == Component::Dns && spec.dns.exposure == DnsExposure::HostNetwork;
    let mut node_selector = spec.node_selector.clone();
    if component == Component::Dns {
        node_selector.extend(spec.dns.node_selector.clone());
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(names.labels(Some(component))),
            annotations: Some(BTreeMap::from([
                (CONFIG_HASH_ANNOTATION.to_owned(), config_hash(config)),
                ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                ("prometheus.io/port".to_owned(), spec.admin_port.to_string()),
                ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
            ])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(names.node_identity()),
            automount_service_account_token: Some(component == Component::Dns),
            host_network: host_network.then_some(true),
            dns_policy: host_network.then(|| "ClusterFirstWithHostNet".to_owned()),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            priority_class_name: spec.priority_class_name.clone(),
            image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                .then(|| spec.image_pull_secrets.clone()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(NODE_UID),
                run_as_group: Some(NODE_UID),
                fs_group: Some(NODE_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            termination_grace_period_seconds: Some(30),
            containers: vec![container(cluster, component, config)],
            volumes: Some(volumes(cluster, component, config)),
            ..PodSpec::default()
        }),
    }
}

fn container(cluster: &CoralCluster, component: Component, config: &NodeConfig) -> Container {
    let spec = &cluster.spec;
    let ports = ports(cluster, component);
    let binds_privileged_port = ports.iter().any(|p| p.container_port < 1024);
    let roles = match component {
        Component::Proxy => "proxy,dht",
        Component::Dns => "dns,dht",
    };
    let mut mounts = vec![
        mount("config", CONFIG_DIR),
        mount("key", KEY_DIR),
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    ];
    if component == Component::Proxy && config.proxy.cache_disk_bytes > 0 {
        mounts.push(VolumeMount {
            name: "cache".to_owned(),
            mount_path: CACHE_DIR.to_owned(),
            ..VolumeMount::default()
        });
    }
    Container {
        name: "coral-node".to_owned(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.image_pull_policy.as_str().to_owned()),
        args: Some(
            [
                "run",
                "--roles",
                roles,
                "--config",
                &format!("{CONFIG_DIR}/{CONFIG_FILE}"),
                "--topology",
                &format!("{CONFIG_DIR}/{TOPOLOGY_FILE}"),
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("NODE_NAME", "spec.nodeName"),
            field_env("POD_IP", "status.podIP"),
            field_env("HOST_IP", "status.hostIP"),
        ]),
        ports: Some(ports),
        resources: Some(
            spec.resources
                .clone()
                .unwrap_or_else(|| default_resources(config)),
        ),
        volume_mounts: Some(mounts),
        liveness_probe: Some(http_probe("/healthz", spec.admin_port, 10, 3)),
        readiness_probe: Some(http_probe("/readyz", spec.admin_port, 5, 2)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: binds_privileged_port.then(|| vec!["NET_BIND_SERVICE".to_owned()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn ports(cluster: &CoralCluster, component: Component) -> Vec<ContainerPort> {
    let spec = &cluster.spec;
    let mut ports = vec![
        port("admin", spec.admin_port, "TCP"),
        port("dht", spec.dht.port, "UDP"),
    ];
    match component {
        Component::Proxy => ports.push(ContainerPort {
            host_port: spec.proxy.host_port.map(i32::from),
            ..port("http", spec.proxy.http_port, "TCP")
        }),
        Component::Dns => {
            ports.push(port("dns-udp", spec.dns.port, "UDP"));
            ports.push(port("dns-tcp", spec.dns.port, "TCP"));
        }
    }
    ports
}

fn port(name: &str, number: u16, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number.into(),
        protocol: Some(protocol.to_owned()),
        ..ContainerPort::default()
    }
}

fn volumes(cluster: &CoralCluster, component: Component, config: &NodeConfig) -> Vec<Volume> {
    let names = ClusterNames::of(cluster);
    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "key".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(key_secret_name(cluster)),
                items: Some(vec![KeyToPath {
                    key: cluster.spec.dht.key_secret_ref.key.clone(),
                    path: KEY_FILE.to_owned(),
                    mode: None,
                }]),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        empty_dir("tmp", 64 << 20),
    ];
    if component == Component::Proxy && config.proxy.cache_disk_bytes > 0 {
        volumes.push(empty_dir("cache", config.proxy.cache_disk_bytes));
    }
    volumes
}

fn empty_dir(name: &str, size_limit: u64) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(bytes_quantity(size_limit)),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, port: u16, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// Requests 100m CPU and the memory cache plus overhead; limits memory to the same.
fn default_resources(config: &NodeConfig) -> ResourceRequirements {
    let memory = bytes_quantity(config.proxy.cache_memory_bytes + MEMORY_OVERHEAD_BYTES);
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), memory.clone()),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), memory)])),
        ..ResourceRequirements::default()
    }
}

/// A byte count as a quantity, in `Mi` when it is a whole number of mebibytes.
fn bytes_quantity(bytes: u64) -> Quantity {
    const MI: u64 = 1 << 20;
    if bytes % MI == 0 {
        Quantity(format!("{}Mi", bytes / MI))
    } else {
        Quantity(bytes.to_string())
    }
}
