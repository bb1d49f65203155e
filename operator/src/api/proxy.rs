//! Spec of the caching proxy role.

use coral_node::config::{ClientLimits, OriginAccess};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Settings of the cooperative caching HTTP proxy that runs on every selected node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "quantity(string(self.maxObjectSize)).compareTo(quantity(string(self.cacheMemorySize))) <= 0 || quantity(string(self.maxObjectSize)).add(quantity(string(self.maxObjectSize))).add(quantity(string(self.maxObjectSize))).add(quantity(string(self.maxObjectSize))).compareTo(quantity(string(self.cacheDiskSize)).add(quantity(string(self.cacheDiskSize))).add(quantity(string(self.cacheDiskSize)))) <= 0", "message": "proxy.maxObjectSize must fit in one cache tier: at most cacheMemorySize, or the disk tier's three quarters of cacheDiskSize"}]))]
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

    /// Disk budget (an `emptyDir` volume of that size): three quarters for the on-disk cache
    /// tier, a quarter for spill files (objects too large to cache, on disk while their one
    /// fetch is shared); `0` keeps the cache in memory only.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))", "message": "cacheDiskSize must be a quantity of 0 or more, such as 1Gi"}]))]
    pub cache_disk_size: Quantity,

    /// Objects larger than this are streamed to clients but never cached
    /// (the original CoralCDN used 50 MB).
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))", "message": "maxObjectSize must be a positive quantity such as 50Mi"}]))]
    pub max_object_size: Quantity,

    /// Cached bodies at least this large, such as `64Ki`, are kept in sealed memory files and
    /// sent to HTTP/1 clients with `sendfile`. Unset, every body is copied to the socket from
    /// ordinary memory, which was up to 3.5 times faster over loopback on the benchmark machine
    /// (README, "Large hits").
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('16Ki'))", "message": "sendfileMinSize must be a quantity of at least 16Ki, such as 64Ki"}]))]
    pub sendfile_min_size: Option<Quantity>,

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

    /// How origins are resolved and reached, and the only way to let Coral fetch from
    /// non-public addresses.
    pub origin_access: OriginAccessSpec,

    /// What the proxy does with methods other than GET and HEAD: `Refuse` (405) or `Pass`
    /// (to the origin, uncached; a success invalidates the cached URL).
    pub other_methods: OtherMethods,

    /// Limits on what one client may send, against slow or oversized requests.
    pub client_limits: ClientLimitsSpec,

    /// Bandwidth limits: the node's quota (beyond it, the heaviest origins' clients are
    /// redirected to the origin) and each origin's share (beyond it, its clients are slowed
    /// down, each getting an equal part).
    pub bandwidth: BandwidthSpec,
}

/// How origins are resolved and reached.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct OriginAccessSpec {
    /// Non-public networks whose origins may be fetched anyway (CIDRs). Coral never fetches
    /// from loopback, private, link-local (cloud metadata) or other non-public addresses
    /// otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 50)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(n, isCIDR(n))", "message": "internalNetworks entries must be networks such as 10.1.0.0/16"}]))]
    pub internal_networks: Vec<String>,

    /// Origin host names (`intranet.example`, or `*.intranet.example` for every name under
    /// it) that may resolve to non-public addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(p, p.matches('^([*][.])?[a-z0-9-]+([.][a-z0-9-]+)*$'))", "message": "internalHosts entries must be host names, optionally starting with '*.'"}]))]
    pub internal_hosts: Vec<String>,

    /// Public networks never fetched from either, such as the cluster's public pod or
    /// service ranges (CIDRs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 50)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(n, isCIDR(n))", "message": "blockedNetworks entries must be networks such as 203.0.113.0/24"}]))]
    pub blocked_networks: Vec<String>,

    /// Fixed addresses of origin host names, used instead of DNS (as `curl --resolve` does).
    /// They pass the same address checks: a non-public one also needs `internalNetworks` or
    /// `internalHosts`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["host"]))]
    pub addresses: Vec<FixedAddressSpec>,

    /// DNS servers (IP addresses, port 53) that resolve origin names; empty uses the pod's
    /// resolver.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 45)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(a, isIP(a))", "message": "resolvers entries must be IP addresses"}]))]
    pub resolvers: Vec<String>,

    /// CA certificates (PEM) trusted for `https` origins besides the public web's roots, such
    /// as an internal CA: a key of a ConfigMap in the cluster's namespace, mounted into the
    /// proxy pods. A proxy reads it when it starts (and refuses to start when it holds no
    /// certificate): after changing it, restart the proxies (`kubectl rollout restart`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_ca: Option<CaBundleRef>,

    /// Most fetches in flight towards one origin host at once; later misses wait their turn.
    #[schemars(range(min = 1, max = 1024))]
    pub max_concurrent_fetches: u32,
}

/// A bundle of CA certificates in a ConfigMap.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleRef {
    /// The ConfigMap, in the CoralCluster's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub config_map: String,
    /// Its key holding the PEM certificates.
    #[serde(default = "CaBundleRef::default_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

impl CaBundleRef {
    fn default_key() -> String {
        "ca.crt".to_owned()
    }
}

/// The addresses of one origin host name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FixedAddressSpec {
    /// The origin host name.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Its addresses.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 45)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(a, isIP(a))", "message": "addresses entries must be IP addresses"}]))]
    pub addresses: Vec<String>,
}

/// What the proxy does with methods other than GET and HEAD.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtherMethods {
    /// Refuse them with 405: the CDN serves reads only.
    #[default]
    Refuse,
    /// Pass them to the origin uncached.
    Pass,
}

/// Limits on what one client may send.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientLimitsSpec {
    /// Client connections served at once by one node; more wait in the kernel's backlog.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: u32,
    /// Client connections served at once from one address (one user, or many behind one
    /// NAT); more are refused with 429.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections_per_client: u32,
    /// Longest request target (path and query), in bytes.
    #[schemars(range(min = 256, max = 1048576))]
    pub max_url_bytes: u32,
    /// Most header fields in one request.
    #[schemars(range(min = 16, max = 1000))]
    pub max_headers: u32,
    /// Largest request head, in bytes.
    #[schemars(range(min = 8192, max = 1048576))]
    pub max_header_bytes: u32,
    /// Time allowed to send a request head, against slowloris.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) > duration('0s')", "message": "headerTimeout must be longer than 0s"}]))]
    pub header_timeout: Duration,
    /// Time a client may take no answer bytes while some wait to be sent; then its
    /// connection is closed.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "duration(self) > duration('0s')", "message": "sendTimeout must be longer than 0s"}]))]
    pub send_timeout: Duration,
}

/// Bandwidth limits, in bytes per second of response bodies (quantities such as `100Mi`);
/// `0` means no limit.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct BandwidthSpec {
    /// All clients of one node together, averaged over a few seconds; over it, the clients of
    /// the origins taking more than an equal share are redirected to the origin itself.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isQuantity(string(self)) && quantity(string(self)).isInteger() && !quantity(string(self)).isLessThan(quantity('0'))", "message": "nodeBytesPerSecond must be a whole quantity of 0 or more, such as 100Mi"}]))]
    pub node_bytes_per_second: Quantity,
    /// The clients of one origin host on one node together: their answers are sent no faster,
    /// and each client (an IPv4 address, an IPv6 /64) busy with the origin gets an equal share.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "isQuantity(string(self)) && quantity(string(self)).isInteger() && !quantity(string(self)).isLessThan(quantity('0'))", "message": "originBytesPerSecond must be a whole quantity of 0 or more, such as 10Mi"}]))]
    pub origin_bytes_per_second: Quantity,
}

impl Default for OriginAccessSpec {
    fn default() -> Self {
        Self {
            internal_networks: Vec::new(),
            internal_hosts: Vec::new(),
            blocked_networks: Vec::new(),
            addresses: Vec::new(),
            resolvers: Vec::new(),
            extra_ca: None,
            max_concurrent_fetches: OriginAccess::default().max_concurrent_fetches,
        }
    }
}

impl Default for ClientLimitsSpec {
    /// The node's own defaults, so the CRD and `node.yaml` cannot drift apart.
    fn default() -> Self {
        let node = ClientLimits::default();
        Self {
            max_connections: node.max_connections,
            max_connections_per_client: node.max_connections_per_client,
            max_url_bytes: node.max_url_bytes,
            max_headers: node.max_headers,
            max_header_bytes: node.max_header_bytes,
            header_timeout: node.header_timeout.into(),
            send_timeout: node.send_timeout.into(),
        }
    }
}

impl Default for BandwidthSpec {
    fn default() -> Self {
        Self {
            node_bytes_per_second: Quantity("0".to_owned()),
            origin_bytes_per_second: Quantity("0".to_owned()),
        }
    }
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
            sendfile_min_size: None,
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
            origin_access: OriginAccessSpec::default(),
            other_methods: OtherMethods::default(),
            client_limits: ClientLimitsSpec::default(),
            bandwidth: BandwidthSpec::default(),
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
