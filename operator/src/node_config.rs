//! Turning a CoralCluster into the node configuration its pods read.
//!
//! Pure: the same CoralCluster always gives the same [`NodeConfig`]. Conversions that can fail
//! (quantities, durations, networks, addresses) name the spec field they reject.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use coral_node::config::{
    BandwidthLimits, ClientLimits, ClientNetwork, DhtConfig, DhtTuning, DnsConfig, DnsTcpLimits,
    HealthConfig, KEY_FILE, LocalityConfig, MemberServices, MethodPolicy, NameServer, NodeConfig,
    OriginAccess, OriginTimeouts, ProxyConfig, RateLimit,
};
use kube::ResourceExt;

use crate::api::{ClientLimitsSpec, CoralCluster, OriginAccessSpec, OtherMethods, RateLimitSpec};
use crate::quantity;
use crate::resources::names::ClusterNames;
use crate::validate::SpecError;

/// Where the pod mounts the ConfigMap (`node.yaml`, `topology.yaml`).
pub const CONFIG_DIR: &str = "/etc/coral";
/// Where the pod mounts the shared-key Secret.
pub const KEY_DIR: &str = "/etc/coral-key";
/// Where a proxy pod mounts `spec.proxy.originAccess.extraCa` (outside [`CONFIG_DIR`]: a
/// ConfigMap volume cannot hold another volume's mount point).
pub const EXTRA_CA_DIR: &str = "/etc/coral-ca";
/// The bundle's file name in [`EXTRA_CA_DIR`], whatever its key in the ConfigMap.
pub const EXTRA_CA_FILE: &str = "ca.crt";
/// Where the pod mounts the disk cache volume.
pub const CACHE_DIR: &str = "/var/cache/coral";
/// Where a DNS pod keeps the last members list it read from the API server: on the pod's
/// `/tmp` emptyDir, which outlives a container restart.
pub const MEMBERS_CACHE_FILE: &str = "/tmp/dns-members.yaml";

/// The node configuration for a CoralCluster.
pub fn node_config(cluster: &CoralCluster) -> Result<NodeConfig, SpecError> {
    let spec = &cluster.spec;
    let names = ClusterNames::of(cluster);
    let namespace = cluster.namespace().unwrap_or_else(|| "default".to_owned());
    Ok(NodeConfig {
        zone: spec.zone.clone(),
        admin_port: spec.admin_port,
        proxy: ProxyConfig {
            http_port: spec.proxy.http_port,
            host_port: spec.proxy.host_port,
            cache_memory_bytes: bytes(
                "spec.proxy.cacheMemorySize",
                &spec.proxy.cache_memory_size.0,
            )?,
            cache_disk_bytes: bytes("spec.proxy.cacheDiskSize", &spec.proxy.cache_disk_size.0)?,
            cache_dir: CACHE_DIR.into(),
            max_object_bytes: bytes("spec.proxy.maxObjectSize", &spec.proxy.max_object_size.0)?,
            sendfile_min_bytes: spec
                .proxy
                .sendfile_min_size
                .as_ref()
                .map(|size| bytes("spec.proxy.sendfileMinSize", &size.0))
                .transpose()?,
            origin_timeouts: OriginTimeouts {
                connect: duration(
                    "spec.proxy.originTimeouts.connect",
                    spec.proxy.origin_timeouts.connect,
                )?,
                first_byte: duration(
                    "spec.proxy.originTimeouts.firstByte",
                    spec.proxy.origin_timeouts.first_byte,
                )?,
                idle: duration(
                    "spec.proxy.originTimeouts.idle",
                    spec.proxy.origin_timeouts.idle,
                )?,
            },
            serve_stale: duration("spec.proxy.serveStale", spec.proxy.serve_stale)?,
            origin_allow: spec.proxy.origin_allow.clone(),
            origin_deny: spec.proxy.origin_deny.clone(),
            per_client_rate: rate_limit(&spec.proxy.per_client_rate_limit),
            per_origin_rate: rate_limit(&spec.proxy.per_origin_rate_limit),
            origin_access: origin_access(&spec.proxy.origin_access)?,
            other_methods: match spec.proxy.other_methods {
                OtherMethods::Refuse => MethodPolicy::Refuse,
                OtherMethods::Pass => MethodPolicy::Pass,
            },
            client_limits: client_limits(&spec.proxy.client_limits)?,
            bandwidth: BandwidthLimits {
                node_bytes_per_second: bytes(
                    "spec.proxy.bandwidth.nodeBytesPerSecond",
                    &spec.proxy.bandwidth.node_bytes_per_second.0,
                )?,
                origin_bytes_per_second: bytes(
                    "spec.proxy.bandwidth.originBytesPerSecond",
                    &spec.proxy.bandwidth.origin_bytes_per_second.0,
                )?,
            },
        },
        dns: DnsConfig {
            port: spec.dns.port,
            answer_ttl: Duration::from_secs(spec.dns.ttl_seconds.into()),
            answers_per_query: spec.dns.answers_per_query,
            nameservers: spec
                .dns
                .nameservers
                .iter()
                .enumerate()
                .map(|(i, ns)| {
                    let addresses = ns
                        .addresses
                        .iter()
                        .map(|a| {
                            a.parse().map_err(|e| {
                                SpecError::field(
                                    format!("spec.dns.nameservers[{i}].addresses"),
                                    format!("`{a}`: {e}"),
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    Ok(NameServer {
                        name: ns.name.clone(),
                        addresses,
                    })
                })
                .collect::<Result<_, SpecError>>()?,
            members_file: None,
            member_services: Some(MemberServices {
                proxies: names.proxy_service(),
                nameservers: names.dns_service(),
                cache_file: MEMBERS_CACHE_FILE.into(),
            }),
            response_rate: rate_limit(&spec.dns.response_rate_limit),
            tcp: DnsTcpLimits {
                max_connections: spec.dns.tcp.max_connections,
                max_connections_per_client: spec.dns.tcp.max_connections_per_client,
                idle_timeout: duration("spec.dns.tcp.idleTimeout", spec.dns.tcp.idle_timeout)?,
            },
        },
        locality: LocalityConfig {
            label_keys: spec.locality.label_keys.clone(),
            client_networks: spec
                .locality
                .client_networks
                .iter()
                .enumerate()
                .map(|(i, net)| {
                    let cidr = net.cidr.parse().map_err(|e| {
                        SpecError::field(
                            format!("spec.locality.clientNetworks[{i}].cidr"),
                            format!("`{}`: {e}", net.cidr),
                        )
                    })?;
                    let locality = [net.zone.clone(), net.region.clone()]
                        .into_iter()
                        .take(spec.locality.label_keys.len())
                        .map(Option::unwrap_or_default)
                        .collect();
                    Ok(ClientNetwork { cidr, locality })
                })
                .collect::<Result<_, SpecError>>()?,
        },
        dht: DhtConfig {
            port: spec.dht.port,
            key_file: format!("{KEY_DIR}/{KEY_FILE}").into(),
            protocol_version: spec.dht.protocol_version,
            bootstrap_name: format!("{}.{namespace}.svc", names.dht_service()),
            tuning: DhtTuning::default(),
        },
        health: HealthConfig {
            interval: duration("spec.health.interval", spec.health.interval)?,
            timeout: duration("spec.health.timeout", spec.health.timeout)?,
            failure_threshold: spec.health.failure_threshold,
            success_threshold: spec.health.success_threshold,
        },
    })
}

fn bytes(field: &str, text: &str) -> Result<u64, SpecError> {
    quantity::to_bytes(text).map_err(|err| SpecError::field(field, err))
}

fn duration(field: &str, value: kube::core::Duration) -> Result<Duration, SpecError> {
    if value.is_negative() {
        return Err(SpecError::field(field, format!("`{value}` is negative")));
    }
    Ok(value.into())
}

/// Parses every entry of a list, naming the first bad one (`field[i]`).
fn parse_each<T: std::str::FromStr>(field: &str, texts: &[String]) -> Result<Vec<T>, SpecError>
where
    T::Err: std::fmt::Display,
{
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse()
                .map_err(|e| SpecError::field(format!("{field}[{i}]"), format!("`{text}`: {e}")))
        })
        .collect()
}

fn origin_access(spec: &OriginAccessSpec) -> Result<OriginAccess, SpecError> {
    const FIELD: &str = "spec.proxy.originAccess";
    let resolvers: Vec<IpAddr> = parse_each(&format!("{FIELD}.resolvers"), &spec.resolvers)?;
    Ok(OriginAccess {
        internal_networks: parse_each(
            &format!("{FIELD}.internalNetworks"),
            &spec.internal_networks,
        )?,
        internal_hosts: spec.internal_hosts.clone(),
        blocked_networks: parse_each(&format!("{FIELD}.blockedNetworks"), &spec.blocked_networks)?,
        addresses: spec
            .addresses
            .iter()
            .enumerate()
            .map(|(i, fixed)| {
                let field = format!("{FIELD}.addresses[{i}].addresses");
                Ok((fixed.host.clone(), parse_each(&field, &fixed.addresses)?))
            })
            .collect::<Result<_, SpecError>>()?,
        resolvers: resolvers
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 53))
            .collect(),
        extra_ca_file: spec
            .extra_ca
            .as_ref()
            .map(|_| Path::new(EXTRA_CA_DIR).join(EXTRA_CA_FILE)),
        max_concurrent_fetches: spec.max_concurrent_fetches,
    })
}

fn client_limits(spec: &ClientLimitsSpec) -> Result<ClientLimits, SpecError> {
    Ok(ClientLimits {
        max_connections: spec.max_connections,
        max_connections_per_client: spec.max_connections_per_client,
        max_url_bytes: spec.max_url_bytes,
        max_headers: spec.max_headers,
        max_header_bytes: spec.max_header_bytes,
        header_timeout: duration("spec.proxy.clientLimits.headerTimeout", spec.header_timeout)?,
        send_timeout: duration("spec.proxy.clientLimits.sendTimeout", spec.send_timeout)?,
    })
}

fn rate_limit(spec: &RateLimitSpec) -> RateLimit {
    RateLimit {
        requests_per_second: spec.requests_per_second,
        burst: spec.burst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClientNetworkSpec, CoralClusterSpec, FixedAddressSpec, OtherMethods};

    fn cluster(spec: CoralClusterSpec) -> CoralCluster {
        let mut cluster = CoralCluster::new("demo", spec);
        cluster.metadata.namespace = Some("edge".into());
        cluster
    }

    #[test]
    fn defaults_give_a_config_the_node_accepts() {
        let config = node_config(&cluster(CoralClusterSpec::default())).unwrap();
        assert_eq!(config.zone, "nyud.net");
        assert_eq!(config.proxy.cache_memory_bytes, 256 << 20);
        assert_eq!(config.proxy.max_object_bytes, 50 << 20);
        assert_eq!(config.health.interval, Duration::from_secs(1));
        assert_eq!(config.dht.bootstrap_name, "demo-dht.edge.svc");
        assert_eq!(config.dht.key_file.to_str(), Some("/etc/coral-key/key"));
        let members = config.dns.member_services.as_ref().unwrap();
        assert_eq!(
            (members.proxies.as_str(), members.nameservers.as_str()),
            ("demo-proxy", "demo-dns"),
            "the Services whose EndpointSlices list the DNS nodes' members"
        );

        let dir = std::env::temp_dir().join(format!("coral-node-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.yaml");
        std::fs::write(&path, config.to_yaml()).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap().value, config);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dns_rate_limit_and_tcp_limits_reach_the_nodes() {
        let mut spec = CoralClusterSpec::default();
        spec.dns.response_rate_limit.requests_per_second = 50;
        spec.dns.tcp.max_connections = 7;
        spec.dns.tcp.max_connections_per_client = 3;
        spec.dns.tcp.idle_timeout = Duration::from_secs(3).into();
        let config = node_config(&cluster(spec)).unwrap();
        assert_eq!(config.dns.response_rate.requests_per_second, 50);
        assert_eq!(config.dns.response_rate.burst, 400);
        assert_eq!(config.dns.tcp.max_connections, 7);
        assert_eq!(config.dns.tcp.max_connections_per_client, 3);
        assert_eq!(config.dns.tcp.idle_timeout, Duration::from_secs(3));
    }

    #[test]
    fn fractional_byte_size_names_its_field() {
        let mut spec = CoralClusterSpec::default();
        spec.proxy.max_object_size.0 = "1500m".into();
        let err = node_config(&cluster(spec)).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.proxy.maxObjectSize: `1500m`"),
            "{err}"
        );
    }

    #[test]
    fn client_networks_carry_zone_then_region() {
        let mut spec = CoralClusterSpec::default();
        spec.locality.client_networks = vec![ClientNetworkSpec {
            cidr: "198.51.100.0/24".into(),
            zone: None,
            region: Some("eu".into()),
        }];
        let config = node_config(&cluster(spec)).unwrap();
        assert_eq!(
            config.locality.client_networks[0].locality,
            vec!["".to_owned(), "eu".to_owned()]
        );
        assert_eq!(
            config.locality.client_networks[0].cidr.to_string(),
            "198.51.100.0/24"
        );
    }

    #[test]
    fn unparsable_network_names_its_index() {
        let mut spec = CoralClusterSpec::default();
        spec.locality.client_networks = vec![ClientNetworkSpec {
            cidr: "nope".into(),
            zone: Some("a".into()),
            region: None,
        }];
        let err = node_config(&cluster(spec)).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.locality.clientNetworks[0].cidr"),
            "{err}"
        );
    }

    #[test]
    fn origin_access_limits_methods_and_bandwidth_reach_the_nodes() {
        let mut spec = CoralClusterSpec::default();
        let proxy = &mut spec.proxy;
        proxy.origin_access.internal_networks = vec!["10.1.0.0/16".into()];
        proxy.origin_access.internal_hosts = vec!["intranet.example".into()];
        proxy.origin_access.blocked_networks = vec!["203.0.113.0/24".into()];
        proxy.origin_access.addresses = vec![FixedAddressSpec {
            host: "origin.example".into(),
            addresses: vec!["10.1.2.3".into(), "2001:db8::3".into()],
        }];
        proxy.origin_access.resolvers = vec!["10.96.0.10".into()];
        proxy.origin_access.max_concurrent_fetches = 4;
        proxy.other_methods = OtherMethods::Pass;
        proxy.client_limits.max_connections = 5000;
        proxy.client_limits.header_timeout = std::time::Duration::from_secs(4).into();
        proxy.client_limits.send_timeout = std::time::Duration::from_secs(30).into();
        proxy.bandwidth.node_bytes_per_second.0 = "100Mi".into();
        let config = node_config(&cluster(spec)).unwrap().proxy;
        let access = &config.origin_access;
        assert_eq!(access.internal_networks, ["10.1.0.0/16".parse().unwrap()]);
        assert_eq!(access.internal_hosts, ["intranet.example"]);
        assert_eq!(access.blocked_networks, ["203.0.113.0/24".parse().unwrap()]);
        assert_eq!(
            access.addresses["origin.example"],
            [
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "2001:db8::3".parse().unwrap()
            ]
        );
        assert_eq!(access.resolvers, ["10.96.0.10:53".parse().unwrap()]);
        assert_eq!(access.max_concurrent_fetches, 4);
        assert_eq!(config.other_methods, MethodPolicy::Pass);
        assert_eq!(config.client_limits.max_connections, 5000);
        assert_eq!(config.client_limits.header_timeout, Duration::from_secs(4));
        assert_eq!(config.client_limits.send_timeout, Duration::from_secs(30));
        assert_eq!(config.bandwidth.node_bytes_per_second, 100 << 20);
        assert_eq!(config.bandwidth.origin_bytes_per_second, 0);
    }

    #[test]
    fn a_bad_internal_network_or_address_names_its_index() {
        let mut spec = CoralClusterSpec::default();
        spec.proxy.origin_access.internal_networks = vec!["10.0.0.0/8".into(), "ten".into()];
        let err = node_config(&cluster(spec)).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.proxy.originAccess.internalNetworks[1]: `ten`"),
            "{err}"
        );
        let mut spec = CoralClusterSpec::default();
        spec.proxy.origin_access.addresses = vec![FixedAddressSpec {
            host: "origin.example".into(),
            addresses: vec!["999.1.1.1".into()],
        }];
        let err = node_config(&cluster(spec)).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.proxy.originAccess.addresses[0].addresses[0]"),
            "{err}"
        );
    }
}
