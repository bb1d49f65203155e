//! The Services of a CoralCluster: DNS for resolvers, a headless one for DHT bootstrap, and one
//! for metrics scraping.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{ClusterNames, Component};
use super::owned_meta;
use crate::api::{CoralCluster, DnsExposure};

/// The DNS Service (UDP and TCP) in front of the DNS pods, of the type `dns.exposure` asks for.
///
/// LoadBalancer and NodePort Services keep `externalTrafficPolicy: Local`: the DNS server
/// places clients by the resolver's source address, which a cluster-wide policy would replace
/// with a node's. With `HostNetwork` exposure resolvers reach the pods directly and the Service
/// is a plain ClusterIP one for in-cluster use.
pub fn dns_service(cluster: &CoralCluster) -> Service {
    let names = ClusterNames::of(cluster);
    let dns = &cluster.spec.dns;
    let external = dns.exposure != DnsExposure::HostNetwork;
    let mut metadata = owned_meta(cluster, names.dns_service(), Some(Component::Dns));
    if !dns.service_annotations.is_empty() {
        metadata.annotations = Some(dns.service_annotations.clone());
    }
    let node_port = (dns.exposure == DnsExposure::NodePort)
        .then_some(dns.node_port.map(i32::from))
        .flatten();
    let dns_port = |name: &str, protocol: &str| ServicePort {
        name: Some(name.to_owned()),
        protocol: Some(protocol.to_owned()),
        port: dns.port.into(),
        target_port: Some(IntOrString::String(name.to_owned())),
        node_port,
        ..ServicePort::default()
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(
                match dns.exposure {
                    DnsExposure::HostNetwork => "ClusterIP",
                    DnsExposure::NodePort => "NodePort",
                    DnsExposure::LoadBalancer => "LoadBalancer",
                }
                .to_owned(),
            ),
            external_traffic_policy: external.then(|| "Local".to_owned()),
            selector: Some(names.selector(Some(Component::Dns))),
            ports: Some(vec![dns_port("dns-udp", "UDP"), dns_port("dns-tcp", "TCP")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The headless Service whose DNS name lists every DHT node (proxy and DNS pods), including
/// pods not yet ready, so that a starting node can bootstrap.
pub fn dht_service(cluster: &CoralCluster) -> Service {
    let names = ClusterNames::of(cluster);
    Service {
        metadata: owned_meta(cluster, names.dht_service(), None),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector(None)),
            ports: Some(vec![ServicePort {
                name: Some("dht".to_owned()),
                protocol: Some("UDP".to_owned()),
                port: cluster.spec.dht.port.into(),
                target_port: Some(IntOrString::String("dht".to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Service exposing every node pod's admin port, for Prometheus.
pub fn metrics_service(cluster: &CoralCluster) -> Service {
    let names = ClusterNames::of(cluster);
    Service {
        metadata: owned_meta(cluster, names.metrics_service(), None),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(names.selector(None)),
            ports: Some(vec![ServicePort {
                name: Some("metrics".to_owned()),
                protocol: Some("TCP".to_owned()),
                port: cluster.spec.admin_port.into(),
                target_port: Some(IntOrString::String("admin".to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
