//! Where resolvers can reach a CoralCluster's DNS servers, for its status.
//!
//! Pure: decided from the DNS Service as the API server returned it and the DNS pods. The
//! answer depends on the exposure mode, because a pod address is no use to a resolver outside
//! the cluster: a `LoadBalancer` is reached at its ingress addresses, a `NodePort` at the nodes
//! of ready DNS pods (the Service keeps `externalTrafficPolicy: Local`), and `HostNetwork` pods
//! at their nodes' addresses directly.

use k8s_openapi::api::core::v1::{Pod, Service};

use crate::api::{CoralCluster, DnsExposure};

/// The `address:port` pairs resolvers can use now, sorted and without repeats.
pub fn dns_endpoints(cluster: &CoralCluster, service: &Service, pods: &[Pod]) -> Vec<String> {
    let ready_hosts = || {
        pods.iter()
            .filter(|p| is_ready(p))
            .filter_map(|p| p.status.as_ref()?.host_ip.clone())
    };
    let mut endpoints: Vec<String> = match cluster.spec.dns.exposure {
        DnsExposure::HostNetwork => ready_hosts()
            .map(|host| socket_text(&host, cluster.spec.dns.port))
            .collect(),
        DnsExposure::NodePort => match node_port(service) {
            Some(port) => ready_hosts().map(|host| socket_text(&host, port)).collect(),
            None => Vec::new(),
        },
        DnsExposure::LoadBalancer if ready_hosts().next().is_some() => service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref()?.ingress.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|ingress| ingress.ip.or(ingress.hostname))
            .map(|host| socket_text(&host, cluster.spec.dns.port))
            .collect(),
        DnsExposure::LoadBalancer => Vec::new(),
    };
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

fn node_port(service: &Service) -> Option<u16> {
    let port = service.spec.as_ref()?.ports.as_ref()?.first()?.node_port?;
    u16::try_from(port).ok()
}

fn socket_text(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|conditions| {
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::services::dns_service;
    use crate::resources::tests::demo;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, PodCondition, PodStatus, ServiceStatus,
    };

    fn pod(host: &str, ready: bool) -> Pod {
        Pod {
            status: Some(PodStatus {
                host_ip: Some(host.into()),
                pod_ip: Some("10.244.0.9".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn cluster(exposure: DnsExposure) -> CoralCluster {
        let mut cluster = demo();
        cluster.spec.dns.exposure = exposure;
        cluster.spec.dns.node_port = (exposure == DnsExposure::NodePort).then_some(30053);
        cluster
    }

    #[test]
    fn host_network_pods_are_reached_at_their_nodes_when_ready() {
        let cluster = cluster(DnsExposure::HostNetwork);
        let pods = [
            pod("192.0.2.2", true),
            pod("192.0.2.1", true),
            pod("192.0.2.3", false),
        ];
        assert_eq!(
            dns_endpoints(&cluster, &dns_service(&cluster), &pods),
            ["192.0.2.1:53", "192.0.2.2:53"]
        );
    }

    #[test]
    fn node_port_is_reached_on_nodes_of_ready_pods_once_per_node() {
        let cluster = cluster(DnsExposure::NodePort);
        let pods = [
            pod("192.0.2.1", true),
            pod("192.0.2.1", true),
            pod("2001:db8::1", true),
        ];
        assert_eq!(
            dns_endpoints(&cluster, &dns_service(&cluster), &pods),
            ["192.0.2.1:30053", "[2001:db8::1]:30053"]
        );
    }

    #[test]
    fn load_balancer_is_reached_at_its_ingress_only_while_a_pod_is_ready() {
        let cluster = cluster(DnsExposure::LoadBalancer);
        let mut service = dns_service(&cluster);
        assert!(
            dns_endpoints(&cluster, &service, &[pod("192.0.2.1", true)]).is_empty(),
            "no ingress yet"
        );
        service.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("198.51.100.7".into()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            ..ServiceStatus::default()
        });
        assert_eq!(
            dns_endpoints(&cluster, &service, &[pod("192.0.2.1", true)]),
            ["198.51.100.7:53"]
        );
        assert!(dns_endpoints(&cluster, &service, &[pod("192.0.2.1", false)]).is_empty());
    }
}
