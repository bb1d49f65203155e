//! The DaemonSets of node pods: one for proxy + DHT on every selected node, one for DNS where
//! `dns.nodeSelector` also matches.
//!
//! Both run the same image with different roles. The pods are locked down (non-root,
//! read-only root filesystem, every capability dropped, seccomp `RuntimeDefault`), read
//! everything they need from mounted files, and only the DNS pods get an API token (for
//! EndpointSlices).
//!
//! Binding a port below 1024 (DNS on 53) as non-root: a pod with its own network namespace
//! lowers `net.ipv4.ip_unprivileged_port_start` for itself (a namespaced, "safe" sysctl) and
//! needs no capability at all. A `hostNetwork` pod cannot set that sysctl, so it gets
//! `NET_BIND_SERVICE`; since container runtimes do not raise capabilities to the ambient set
//! of a non-root process, the node image carries the file capability `cap_net_bind_service`
//! on its binary for that case.

use std::collections::BTreeMap;

use coral_node::config::{CONFIG_FILE, KEY_FILE, NodeConfig, TOPOLOGY_FILE};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Sysctl, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config_map::config_hash;
use super::names::{ClusterNames, Component};
use super::owned_meta;
use super::secret::key_secret_name;
use crate::api::{CoralCluster, DnsExposure};
use crate::node_config::{CACHE_DIR, CONFIG_DIR, EXTRA_CA_DIR, EXTRA_CA_FILE, KEY_DIR};

/// Pod annotation carrying the digest of `node.yaml`; a new digest rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "coral.nyud.net/config-hash";
/// User and group the node runs as (the conventional "nonroot" of distroless images).
pub const NODE_UID: i64 = 65532;
/// Memory a proxy pod needs beyond its cache budget.
const MEMORY_OVERHEAD_BYTES: u64 = 128 << 20;
/// Memory a DNS pod requests.
const DNS_MEMORY_BYTES: u64 = 128 << 20;
/// Room above the disk cache budget before the kubelet evicts the pod for filling its volume
/// (index files, objects being written): a tenth of it in whole mebibytes, at least 64Mi.
fn disk_headroom(budget: u64) -> u64 {
    const MI: u64 = 1 << 20;
    ((budget / 10).div_ceil(MI) * MI).max(64 * MI)
}

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
    let grant = low_port_grant(&ports(cluster, component), host_network);
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
                sysctls: match grant {
                    LowPortGrant::Sysctl(lowest) => Some(vec![Sysctl {
                        name: "net.ipv4.ip_unprivileged_port_start".to_owned(),
                        value: lowest.to_string(),
                    }]),
                    LowPortGrant::NotNeeded | LowPortGrant::Capability => None,
                },
                ..PodSecurityContext::default()
            }),
            termination_grace_period_seconds: Some(30),
            containers: vec![container(cluster, component, config, grant)],
            volumes: Some(volumes(cluster, component, config)),
            ..PodSpec::default()
        }),
    }
}

/// How a pod may bind ports below 1024 without running as root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LowPortGrant {
    /// Every port is 1024 or above.
    NotNeeded,
    /// The pod's own network namespace lets unprivileged processes bind from this port up.
    Sysctl(i32),
    /// A host-network pod needs `NET_BIND_SERVICE`.
    Capability,
}

fn low_port_grant(ports: &[ContainerPort], host_network: bool) -> LowPortGrant {
    match ports.iter().map(|p| p.container_port).min() {
        Some(lowest) if lowest < 1024 && host_network => LowPortGrant::Capability,
        Some(lowest) if lowest < 1024 => LowPortGrant::Sysctl(lowest),
        _ => LowPortGrant::NotNeeded,
    }
}

fn container(
    cluster: &CoralCluster,
    component: Component,
    config: &NodeConfig,
    grant: LowPortGrant,
) -> Container {
    let spec = &cluster.spec;
    let ports = ports(cluster, component);
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
    if component == Component::Proxy && cluster.spec.proxy.origin_access.extra_ca.is_some() {
        mounts.push(mount("extra-ca", EXTRA_CA_DIR));
    }
    if component == Component::Proxy && config.proxy.cache_disk_bytes > 0 {
        mounts.push(VolumeMount {
            name: "cache".to_owned(),
            mount_path: CACHE_DIR.to_owned(),
            ..VolumeMount::default()
        });
    }
    Container {
        name: "coral-node".to_owned(),
        image: Some(spec.node_image()),
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
        env: Some(env(cluster, component)),
        ports: Some(ports),
        resources: Some(resources(cluster, component, config)),
        volume_mounts: Some(mounts),
        liveness_probe: Some(http_probe("/livez", spec.admin_port, 10, 3)),
        readiness_probe: Some(http_probe("/readyz", spec.admin_port, 5, 2)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: (grant == LowPortGrant::Capability)
                    .then(|| vec!["NET_BIND_SERVICE".to_owned()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The downward-API environment of the node container. A proxy behind a host port is reached
/// at its node's address, so it reports that address (`PUBLIC_IP`) for the DNS nodes to publish.
fn env(cluster: &CoralCluster, component: Component) -> Vec<EnvVar> {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("NODE_NAME", "spec.nodeName"),
        field_env("POD_IP", "status.podIP"),
        field_env("HOST_IP", "status.hostIP"),
    ];
    if component == Component::Proxy && cluster.spec.proxy.host_port.is_some() {
        env.push(field_env("PUBLIC_IP", "status.hostIP"));
    }
    env
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
    if let (Component::Proxy, Some(bundle)) =
        (component, &cluster.spec.proxy.origin_access.extra_ca)
    {
        volumes.push(Volume {
            name: "extra-ca".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: bundle.config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: bundle.key.clone(),
                    path: EXTRA_CA_FILE.to_owned(),
                    mode: None,
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if component == Component::Proxy && config.proxy.cache_disk_bytes > 0 {
        let budget = config.proxy.cache_disk_bytes;
        volumes.push(empty_dir("cache", budget + disk_headroom(budget)));
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

/// The spec's resources for the component, or defaults: proxies request 100m CPU and their
/// memory cache plus overhead (limit the same); DNS pods, which cache nothing, 100m CPU and
/// 128Mi (limit 256Mi).
fn resources(
    cluster: &CoralCluster,
    component: Component,
    config: &NodeConfig,
) -> ResourceRequirements {
    let (chosen, request, limit) = match component {
        Component::Proxy => {
            let memory = config.proxy.cache_memory_bytes + MEMORY_OVERHEAD_BYTES;
            (&cluster.spec.resources, memory, memory)
        }
        Component::Dns => (
            &cluster.spec.dns.resources,
            DNS_MEMORY_BYTES,
            2 * DNS_MEMORY_BYTES,
        ),
    };
    chosen.clone().unwrap_or_else(|| ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), bytes_quantity(request)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            bytes_quantity(limit),
        )])),
        ..ResourceRequirements::default()
    })
}

/// A byte count as a quantity, in `Mi` when it is a whole number of mebibytes.
fn bytes_quantity(bytes: u64) -> Quantity {
    const MI: u64 = 1 << 20;
    if bytes.is_multiple_of(MI) {
        Quantity(format!("{}Mi", bytes / MI))
    } else {
        Quantity(bytes.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_config::node_config;
    use crate::resources::tests::demo;

    fn build(cluster: &CoralCluster, component: Component) -> DaemonSet {
        daemon_set(cluster, component, &node_config(cluster).unwrap())
    }

    fn pod(ds: &DaemonSet) -> PodSpec {
        ds.spec.clone().unwrap().template.spec.unwrap()
    }

    fn container_of(ds: &DaemonSet) -> Container {
        pod(ds).containers[0].clone()
    }

    #[test]
    fn selector_matches_the_pod_labels_and_only_its_component() {
        for component in [Component::Proxy, Component::Dns] {
            let ds = build(&demo(), component);
            let spec = ds.spec.unwrap();
            let selector = spec.selector.match_labels.unwrap();
            let labels = spec.template.metadata.unwrap().labels.unwrap();
            assert!(
                selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
                "{selector:?} vs {labels:?}"
            );
            assert_eq!(selector["app.kubernetes.io/component"], component.as_str());
        }
    }

    #[test]
    fn pods_run_locked_down() {
        let ds = build(&demo(), Component::Proxy);
        let pod_security = pod(&ds).security_context.unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(
            pod_security.seccomp_profile.unwrap().type_,
            "RuntimeDefault"
        );
        let security = container_of(&ds).security_context.unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let capabilities = security.capabilities.unwrap();
        assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            capabilities.add, None,
            "the proxy binds no port below 1024 by default"
        );
        assert_eq!(pod(&ds).automount_service_account_token, Some(false));
    }

    #[test]
    fn dns_pods_bind_port_53_through_their_own_sysctl_not_a_capability() {
        let ds = build(&demo(), Component::Dns);
        let sysctls = pod(&ds).security_context.unwrap().sysctls.unwrap();
        assert_eq!(sysctls[0].name, "net.ipv4.ip_unprivileged_port_start");
        assert_eq!(sysctls[0].value, "53");
        let capabilities = container_of(&ds)
            .security_context
            .unwrap()
            .capabilities
            .unwrap();
        assert_eq!(capabilities.add, None);
        assert_eq!(pod(&ds).automount_service_account_token, Some(true));
        let ports = container_of(&ds).ports.unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p.name.as_deref() == Some("dns-udp") && p.container_port == 53)
        );
        assert!(
            ports
                .iter()
                .any(|p| p.name.as_deref() == Some("dns-tcp")
                    && p.protocol.as_deref() == Some("TCP"))
        );
    }

    #[test]
    fn host_network_dns_pods_get_net_bind_service_and_no_sysctl() {
        let mut cluster = demo();
        cluster.spec.dns.exposure = DnsExposure::HostNetwork;
        let ds = build(&cluster, Component::Dns);
        assert_eq!(pod(&ds).security_context.unwrap().sysctls, None);
        let capabilities = container_of(&ds)
            .security_context
            .unwrap()
            .capabilities
            .unwrap();
        assert_eq!(capabilities.add, Some(vec!["NET_BIND_SERVICE".to_owned()]));
        assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]));
    }

    #[test]
    fn unprivileged_ports_need_no_grant() {
        let mut cluster = demo();
        cluster.spec.dns.port = 5353;
        let ds = build(&cluster, Component::Dns);
        assert_eq!(pod(&ds).security_context.unwrap().sysctls, None);
        assert_eq!(
            container_of(&ds)
                .security_context
                .unwrap()
                .capabilities
                .unwrap()
                .add,
            None
        );
    }

    #[test]
    fn probes_use_the_admin_port() {
        let container = container_of(&build(&demo(), Component::Proxy));
        for (probe, path) in [
            (container.liveness_probe, "/livez"),
            (container.readiness_probe, "/readyz"),
        ] {
            let get = probe.unwrap().http_get.unwrap();
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.port, IntOrString::Int(9090));
        }
    }

    #[test]
    fn dns_pods_do_not_reserve_the_proxy_cache_memory() {
        let resources = container_of(&build(&demo(), Component::Dns))
            .resources
            .unwrap();
        assert_eq!(
            resources.requests.unwrap()["memory"],
            Quantity("128Mi".into())
        );
        assert_eq!(
            resources.limits.unwrap()["memory"],
            Quantity("256Mi".into())
        );
    }

    #[test]
    fn default_resources_cover_the_memory_cache() {
        let resources = container_of(&build(&demo(), Component::Proxy))
            .resources
            .unwrap();
        assert_eq!(
            resources.requests.unwrap()["memory"],
            Quantity("384Mi".into())
        );
        assert_eq!(
            resources.limits.unwrap()["memory"],
            Quantity("384Mi".into())
        );
    }

    #[test]
    fn pods_pass_topology_and_identity_through_the_downward_api() {
        let env = container_of(&build(&demo(), Component::Proxy)).env.unwrap();
        let field = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.clone()?.field_ref)
                .map(|f| f.field_path)
        };
        assert_eq!(field("NODE_NAME").as_deref(), Some("spec.nodeName"));
        assert_eq!(field("POD_IP").as_deref(), Some("status.podIP"));
    }

    #[test]
    fn config_and_key_are_mounted_where_the_node_config_points() {
        let cluster = demo();
        let ds = build(&cluster, Component::Proxy);
        let volumes = pod(&ds).volumes.unwrap();
        let key = volumes
            .iter()
            .find(|v| v.name == "key")
            .unwrap()
            .secret
            .clone()
            .unwrap();
        assert_eq!(key.secret_name.as_deref(), Some("demo-dht-key"));
        assert_eq!(key.items.unwrap()[0].path, KEY_FILE);
        let mounts = container_of(&ds).volume_mounts.unwrap();
        let key_mount = mounts.iter().find(|m| m.name == "key").unwrap();
        let config = node_config(&cluster).unwrap();
        assert_eq!(
            config.dht.key_file,
            std::path::Path::new(&key_mount.mount_path).join(KEY_FILE)
        );
        let cache = volumes
            .iter()
            .find(|v| v.name == "cache")
            .unwrap()
            .empty_dir
            .clone()
            .unwrap();
        assert_eq!(
            cache.size_limit,
            Some(Quantity("1127Mi".into())),
            "1Gi plus a tenth, in whole mebibytes"
        );
    }

    #[test]
    fn an_extra_ca_bundle_is_mounted_on_the_proxies_where_the_node_config_points() {
        let mut cluster = demo();
        cluster.spec.proxy.origin_access.extra_ca = Some(crate::api::CaBundleRef {
            config_map: "internal-ca".into(),
            key: "bundle.pem".into(),
        });
        let ds = build(&cluster, Component::Proxy);
        let volume = pod(&ds)
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "extra-ca")
            .unwrap()
            .config_map
            .unwrap();
        assert_eq!(volume.name, "internal-ca");
        let item = &volume.items.unwrap()[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            ("bundle.pem", EXTRA_CA_FILE)
        );
        let mounts = container_of(&ds).volume_mounts.unwrap();
        let mount = mounts.iter().find(|m| m.name == "extra-ca").unwrap();
        assert_eq!(mount.read_only, Some(true));
        let config = node_config(&cluster).unwrap();
        assert_eq!(
            config.proxy.origin_access.extra_ca_file,
            Some(std::path::Path::new(&mount.mount_path).join(EXTRA_CA_FILE))
        );
        // DNS pods fetch nothing: no bundle for them.
        let dns = build(&cluster, Component::Dns);
        assert!(
            !pod(&dns)
                .volumes
                .unwrap()
                .iter()
                .any(|v| v.name == "extra-ca")
        );
        // Without a bundle, no volume and no file.
        let plain = build(&demo(), Component::Proxy);
        assert!(
            !pod(&plain)
                .volumes
                .unwrap()
                .iter()
                .any(|v| v.name == "extra-ca")
        );
        assert_eq!(
            node_config(&demo())
                .unwrap()
                .proxy
                .origin_access
                .extra_ca_file,
            None
        );
    }

    #[test]
    fn full_spec_reaches_the_pod() {
        let mut cluster = demo();
        cluster
            .spec
            .node_selector
            .insert("edge".into(), "true".into());
        cluster
            .spec
            .dns
            .node_selector
            .insert("dns".into(), "true".into());
        cluster.spec.priority_class_name = Some("system-node-critical".into());
        cluster.spec.proxy.host_port = Some(80);
        cluster.spec.proxy.cache_disk_size.0 = "0".into();
        cluster.spec.dns.exposure = DnsExposure::HostNetwork;

        let proxy = build(&cluster, Component::Proxy);
        assert_eq!(pod(&proxy).node_selector.unwrap().len(), 1);
        assert_eq!(
            pod(&proxy).priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        let http = container_of(&proxy)
            .ports
            .unwrap()
            .into_iter()
            .find(|p| p.name.as_deref() == Some("http"))
            .unwrap();
        assert_eq!(http.host_port, Some(80));
        let public_ip = |ds: &DaemonSet| {
            container_of(ds)
                .env
                .unwrap()
                .into_iter()
                .find(|var| var.name == "PUBLIC_IP")
                .and_then(|var| var.value_from?.field_ref)
                .map(|field| field.field_path)
        };
        assert_eq!(
            public_ip(&proxy).as_deref(),
            Some("status.hostIP"),
            "published at the node's address"
        );
        assert_eq!(public_ip(&build(&cluster, Component::Dns)), None);
        assert_eq!(public_ip(&build(&demo(), Component::Proxy)), None);
        assert!(
            pod(&proxy)
                .volumes
                .unwrap()
                .iter()
                .all(|v| v.name != "cache"),
            "no disk tier, no disk volume"
        );
        assert_eq!(pod(&proxy).host_network, None);

        let dns = build(&cluster, Component::Dns);
        let selector = pod(&dns).node_selector.unwrap();
        assert_eq!(
            (selector.get("edge"), selector.get("dns")),
            (Some(&"true".to_owned()), Some(&"true".to_owned()))
        );
        assert_eq!(pod(&dns).host_network, Some(true));
        assert_eq!(
            pod(&dns).dns_policy.as_deref(),
            Some("ClusterFirstWithHostNet")
        );
    }

    #[test]
    fn config_change_changes_the_pod_template() {
        let cluster = demo();
        let mut changed = demo();
        changed.spec.dns.ttl_seconds = 5;
        let hash = |c: &CoralCluster| {
            build(c, Component::Proxy)
                .spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_ne!(hash(&cluster), hash(&changed));
    }
}
