//! Spec of the caching proxy role.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings of the cooperative caching HTTP proxy that runs on every selected node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "quantity(string(self.maxObjectSize)).compareTo(quantity(string(self.cacheMemorySize))) <= 0 || quantity(string(self.maxObjectSize)).compareTo(quantity(string(self.cacheDiskSize))) <= 0", "message": "proxy.maxObjectSize must fit in one cache tier: at most cacheMemorySize or cacheDiskSize"}]))]
#[serde(rename_all = "camelCase", default)]
pub struct ProxySpec {
    /// Port the proxy serves HTTP on inside the pod (and on the node when `hostPort` is set).
    #[schemars(range(min = 1, max = 65535))]
    pub http_port: u16,

    /// Port on each node that forwards to the proxy, so DNS can hand clients the node's
    /// address. Unset: clients reach proxies at their pod addresses (routable pod networks).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub host_port: Option<u16>,

    /// Memory budget of the in-memory cache tier, such as `256Mi`.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))", "message": "cacheMemorySize must be a positive quantity such as 256Mi"}]))]
    pub cache_memory_size: Quantity,

    /// Disk budget of the on-disk cache tier (an `emptyDir` volume of that size); `0` keeps
    /// the cache in memory only.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))", "message": "cacheDiskSize must be a quantity of 0 or more, such as 1Gi"}]))]
    pub cache_disk_size: Quantity,

    /// Objects larger than this are streamed to clients but never cached
    /// (the original CoralCDN used 50 MB).
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))", "message": "maxObjectSize must be a positive quantity such as 50Mi"}]))]
    pub max_object_size: Quantity,

    /// Timeouts of fetches from origin servers.
    pub origin_timeouts: OriginTimeoutsSpec,

    /// How long past expiry a cached object is still served when its origin fails or times
    /// out (marked with a `Warning` header); `0s` never serves stale content.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) >= duration('0s')", "message": "serveStale must not be negative"}]))]
    pub serve_stale: Duration,

    /// Origin host patterns (`example.com`, `*.example.org`) Coral may fetch from; empty allows
    /// every public origin.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(p, p.matches('^([*][.])?[a-z0-9.-]+$'))", "message": "originAllow entries must be host names, optionally starting with '*.'"}]))]
    pub origin_allow: Vec<HostPattern>,

    /// Origin host patterns Coral never fetches from; wins over `originAllow`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(p, p.matches('^([*][.])?[a-z0-9.-]+$'))", "message": "originDeny entries must be host names, optionally starting with '*.'"}]))]
    pub origin_deny: Vec<HostPattern>,

    /// Requests per second one client address may make.
    pub per_client_rate_limit: RateLimitSpec,

    /// Requests per second (cache misses only) sent towards one origin host, cluster-wide per
    /// node; protects origins on their last legs.
    pub per_origin_rate_limit: RateLimitSpec,
}

/// A host name pattern: `example.com` or `*.example.com`.
pub type HostPattern = String;

/// Timeouts of one origin fetch.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct OriginTimeoutsSpec {
    /// Time allowed to resolve the origin's name, then for each attempt to connect to it (TCP and TLS).
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) > duration('0s')", "message": "connect must be longer than 0s"}]))]
    pub connect: Duration,
    /// Time allowed from sending the request to the first byte of the response.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) > duration('0s')", "message": "firstByte must be longer than 0s"}]))]
    pub first_byte: Duration,
    /// Longest silence allowed while a response body streams.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) > duration('0s')", "message": "idle must be longer than 0s"}]))]
    pub idle: Duration,
}

/// A token-bucket rate limit.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "self.burst >= self.requestsPerSecond", "message": "burst must be at least requestsPerSecond"}]))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained requests per second.
    #[schemars(range(min = 1))]
    pub requests_per_second: u32,
    /// Requests allowed at once above the sustained rate.
    #[schemars(range(min = 1))]
    pub burst: u32,
}

impl Default for ProxySpec {
    fn default() -> Self {
        Self {
            http_port: 8080,
            host_port: None,
            cache_memory_size: Quantity("256Mi".to_owned()),
            cache_disk_size: Quantity("1Gi".to_owned()),
            max_object_size: Quantity("50Mi".to_owned()),
            origin_timeouts: OriginTimeoutsSpec::default(),
            serve_stale: std::time::Duration::from_secs(3600).into(),
            origin_allow: Vec::new(),
            origin_deny: Vec::new(),
            per_client_rate_limit: RateLimitSpec {
                requests_per_second: 50,
                burst: 200,
            },
            per_origin_rate_limit: RateLimitSpec {
                requests_per_second: 20,
                burst: 40,
            },
        }
    }
}

impl Default for OriginTimeoutsSpec {
    fn default() -> Self {
        Self {
            connect: std::time::Duration::from_secs(5).into(),
            first_byte: std::time::Duration::from_secs(15).into(),
            idle: std::time::Duration::from_secs(30).into(),
        }
    }
}
