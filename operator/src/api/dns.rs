//! Spec of the authoritative DNS role.

use std::collections::BTreeMap;

use coral_node::config::{DnsConfig, DnsTcpLimits};
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::proxy::RateLimitSpec;

/// Settings of the authoritative DNS servers that answer `<origin>.<zone>` with nearby,
/// healthy proxies.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "(self.exposure == 'NodePort') == has(self.nodePort)", "message": "dns.nodePort is required with exposure NodePort (UDP and TCP must share one port, or resolvers retrying over TCP miss) and only used with it"}]))]
#[serde(rename_all = "camelCase", default)]
pub struct DnsSpec {
    /// UDP and TCP port the DNS servers listen on, and the port of the DNS Service.
    /// Resolvers expect 53; ports below 1024 give the container `NET_BIND_SERVICE`.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// TTL in seconds of answers naming proxies: short, so that clients move off a dead proxy
    /// quickly.
    #[schemars(range(min = 0, max = 3600))]
    pub ttl_seconds: u32,

    /// Most proxy addresses in one answer.
    #[schemars(range(min = 1, max = 16))]
    pub answers_per_query: u32,

    /// How resolvers reach the DNS pods: `LoadBalancer` (a Service of that type with
    /// `externalTrafficPolicy: Local`, keeping resolver addresses for locality), `NodePort`, or
    /// `HostNetwork` (pods bind the port on their node's addresses).
    pub exposure: DnsExposure,

    /// Node port of the DNS Service, required with `exposure: NodePort`: UDP and TCP share it,
    /// so that a resolver retrying a truncated answer over TCP reaches the same servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<u16>,

    /// Annotations of the DNS Service, for example to configure a cloud load balancer.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,

    /// Only nodes with these labels (in addition to `spec.nodeSelector`) run DNS pods;
    /// empty runs DNS on every Coral node.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// CPU and memory of each DNS pod. When unset, Coral requests 100m CPU and 128Mi and
    /// limits memory to 256Mi: DNS pods hold no cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Name servers published in the zone's NS records. Empty: the healthy DNS pods publish
    /// themselves as `ns-<address>.<zone>` with their addresses as glue.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub nameservers: Vec<NameServerSpec>,

    /// Responses per second, and burst, to one client network (an IPv4 /24, an IPv6 /56) over
    /// UDP: response rate limiting, which blunts reflection attacks with spoofed sources.
    /// Over the limit one withheld response in two is sent empty and truncated, so a real
    /// client retries over TCP (not limited: its source cannot be spoofed).
    pub response_rate_limit: RateLimitSpec,

    /// Limits of DNS over TCP.
    pub tcp: DnsTcpSpec,
}

/// Limits of DNS over TCP, where each client holds a connection.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DnsTcpSpec {
    /// Connections open at once on each DNS pod; more are closed as they arrive.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: u32,
    /// Connections open at once on each DNS pod from one client network (an IPv4 /24, an
    /// IPv6 /56), so that one client cannot hold them all.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections_per_client: u32,
    /// A connection that sends no query, or does not read its answer, for this long is closed.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) > duration('0s')", "message": "idleTimeout must be longer than 0s"}]))]
    pub idle_timeout: Duration,
}

/// The node's own defaults.
impl Default for DnsTcpSpec {
    fn default() -> Self {
        let limits = DnsTcpLimits::default();
        Self {
            max_connections: limits.max_connections,
            max_connections_per_client: limits.max_connections_per_client,
            idle_timeout: limits.idle_timeout.into(),
        }
    }
}

/// How resolvers reach the DNS pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsExposure {
    /// DNS pods use their node's network and bind `port` on the node's addresses.
    HostNetwork,
    /// A NodePort Service forwards a port on every node to the DNS pods.
    NodePort,
    /// A LoadBalancer Service gives the DNS pods an external address.
    #[default]
    LoadBalancer,
}

/// A name server published for the zone.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NameServerSpec {
    /// Fully qualified host name, such as `ns1.nyud.net`.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?[.])+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')", "message": "name must be a lower-case DNS name"}]))]
    pub name: String,
    /// IPv4 or IPv6 addresses (glue), required when the name lies inside the zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 45)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(a, isIP(a))", "message": "addresses must be IP addresses"}]))]
    pub addresses: Vec<String>,
}

impl Default for DnsSpec {
    fn default() -> Self {
        Self {
            port: 53,
            ttl_seconds: 20,
            answers_per_query: 2,
            exposure: DnsExposure::default(),
            node_port: None,
            service_annotations: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            resources: None,
            nameservers: Vec::new(),
            response_rate_limit: {
                let rate = DnsConfig::default_response_rate();
                RateLimitSpec {
                    requests_per_second: rate.requests_per_second,
                    burst: rate.burst,
                }
            },
            tcp: DnsTcpSpec::default(),
        }
    }
}
