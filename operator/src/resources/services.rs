//! The Services of a CoralCluster: DNS for resolvers, headless ones listing the proxies (for
//! the DNS nodes) and the DHT nodes (for bootstrap), and one for metrics scraping.

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
        node_port,
        ..port_to(name, protocol, dns.port, name)
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

/// The headless Service selecting the proxy pods, whose EndpointSlices tell the DNS nodes
/// which proxies to check and publish (the DNS Service's slices list the DNS nodes).
pub fn proxy_service(cluster: &CoralCluster) -> Service {
    let port = cluster.spec.proxy.http_port;
    headless(
        cluster,
        ClusterNames::of(cluster).proxy_service(),
        Some(Component::Proxy),
        false,
        port_to("http", "TCP", port, "http"),
    )
}

/// The headless Service whose DNS name lists every DHT node (proxy and DNS pods), including
/// pods not yet ready, so that a starting node can bootstrap.
pub fn dht_service(cluster: &CoralCluster) -> Service {
    let port = cluster.spec.dht.port;
    headless(
        cluster,
        ClusterNames::of(cluster).dht_service(),
        None,
        true,
        port_to("dht", "UDP", port, "dht"),
    )
}

/// The headless Service exposing every node pod's admin port, for Prometheus.
pub fn metrics_service(cluster: &CoralCluster) -> Service {
    let port = cluster.spec.admin_port;
    headless(
        cluster,
        ClusterNames::of(cluster).metrics_service(),
        None,
        false,
        port_to("metrics", "TCP", port, "admin"),
    )
}

/// A headless Service selecting the cluster's pods of `component`, or all of them.
fn headless(
    cluster: &CoralCluster,
    name: String,
    component: Option<Component>,
    publish_not_ready: bool,
    port: ServicePort,
) -> Service {
    Service {
        metadata: owned_meta(cluster, name, component),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: publish_not_ready.then_some(true),
            selector: Some(ClusterNames::of(cluster).selector(component)),
            ports: Some(vec![port]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A Service port named `name` forwarding to the container port named `target`.
fn port_to(name: &str, protocol: &str, port: u16, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        protocol: Some(protocol.to_owned()),
        port: port.into(),
        target_port: Some(IntOrString::String(target.to_owned())),
        ..ServicePort::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::demo;

    fn spec_of(service: Service) -> ServiceSpec {
        service.spec.unwrap()
    }

    #[test]
    fn dns_service_follows_the_exposure_mode() {
        for (exposure, kind, policy) in [
            (DnsExposure::LoadBalancer, "LoadBalancer", Some("Local")),
            (DnsExposure::NodePort, "NodePort", Some("Local")),
            (DnsExposure::HostNetwork, "ClusterIP", None),
        ] {
            let mut cluster = demo();
            cluster.spec.dns.exposure = exposure;
            let spec = spec_of(dns_service(&cluster));
            assert_eq!(spec.type_.as_deref(), Some(kind));
            assert_eq!(spec.external_traffic_policy.as_deref(), policy);
            let ports = spec.ports.unwrap();
            let protocols: Vec<_> = ports.iter().map(|p| p.protocol.clone().unwrap()).collect();
            assert_eq!(protocols, ["UDP", "TCP"]);
            assert!(ports.iter().all(|p| p.port == 53));
        }
    }

    #[test]
    fn node_port_is_used_only_in_node_port_mode() {
        let mut cluster = demo();
        cluster.spec.dns.exposure = DnsExposure::NodePort;
        cluster.spec.dns.node_port = Some(30053);
        assert!(
            spec_of(dns_service(&cluster))
                .ports
                .unwrap()
                .iter()
                .all(|p| p.node_port == Some(30053))
        );
        cluster.spec.dns.exposure = DnsExposure::LoadBalancer;
        assert!(
            spec_of(dns_service(&cluster))
                .ports
                .unwrap()
                .iter()
                .all(|p| p.node_port.is_none())
        );
    }

    #[test]
    fn dns_service_selects_dns_pods_and_carries_annotations() {
        let mut cluster = demo();
        cluster
            .spec
            .dns
            .service_annotations
            .insert("lb".into(), "nlb".into());
        let service = dns_service(&cluster);
        assert_eq!(service.metadata.annotations.unwrap()["lb"], "nlb");
        let selector = service.spec.unwrap().selector.unwrap();
        assert_eq!(selector["app.kubernetes.io/component"], "dns");
        assert_eq!(selector["app.kubernetes.io/instance"], "demo");
    }

    #[test]
    fn dht_service_is_headless_lists_unready_pods_and_selects_every_component() {
        let spec = spec_of(dht_service(&demo()));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert!(
            !spec
                .selector
                .unwrap()
                .contains_key("app.kubernetes.io/component")
        );
        assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("UDP"));
    }

    #[test]
    fn proxy_service_is_headless_and_selects_only_proxy_pods() {
        let service = proxy_service(&demo());
        assert_eq!(service.metadata.name.as_deref(), Some("demo-proxy"));
        let spec = spec_of(service);
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(
            spec.selector.unwrap()["app.kubernetes.io/component"],
            "proxy"
        );
        let port = spec.ports.unwrap().remove(0);
        assert_eq!(port.port, 8080);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
    }

    #[test]
    fn metrics_service_targets_the_admin_port() {
        let port = spec_of(metrics_service(&demo())).ports.unwrap().remove(0);
        assert_eq!(port.port, 9090);
        assert_eq!(port.target_port, Some(IntOrString::String("admin".into())));
    }
}
