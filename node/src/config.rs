//! The node configuration: the one contract between operator and node.
//!
//! The operator turns a `CoralCluster` spec into a [`NodeConfig`] and serialises it into the
//! cluster's ConfigMap; every node pod deserialises the mounted file at start-up. Defining the
//! type once, here, means the two sides cannot drift. This module owns parsing and checking
//! the file; it does not know how the values are used by the roles.
//!
//! Node topology (which zone and region each Kubernetes node is in) lives in a second file of
//! the same ConfigMap, [`Topology`], so that a node relabel does not change the configuration
//! hash and roll every pod.
//!
//! Fields a node does not know are ignored and reported, not refused: an operator newer than
//! a pinned node image may write fields the node has never heard of, and the node must keep
//! serving rather than crash-loop (the original CoralCDN's lesson: nodes keep working when
//! the manager sends something unexpected).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The least `proxy.sendfileMinBytes` may be: below it, the copy `sendfile` saves is cheap next
/// to the rest of an answer, and a file descriptor and whole pages per body are not.
pub const MIN_SENDFILE_BYTES: u64 = 16 * 1024;

/// File name of the node configuration inside the ConfigMap and the pod's config directory.
pub const CONFIG_FILE: &str = "node.yaml";
/// File name of the topology map inside the ConfigMap and the pod's config directory.
pub const TOPOLOGY_FILE: &str = "topology.yaml";
/// File name of the shared DHT key inside its Secret and the pod's key directory.
pub const KEY_FILE: &str = "key";

/// Everything a Coral node needs to know to play its roles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    /// DNS zone the cluster serves, such as `nyud.net`; origins are named `<origin>.<zone>`.
    pub zone: String,
    /// Port of the admin HTTP server (`/healthz`, `/readyz`, `/metrics`, status pages).
    pub admin_port: u16,
    /// The caching proxy role.
    pub proxy: ProxyConfig,
    /// The authoritative DNS role.
    pub dns: DnsConfig,
    /// How nodes and clients are placed in the locality hierarchy.
    pub locality: LocalityConfig,
    /// The sloppy DHT role.
    pub dht: DhtConfig,
    /// Health checking of proxies by the DNS role.
    pub health: HealthConfig,
}

/// Settings of the caching proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Port the proxy serves HTTP on inside the pod.
    pub http_port: u16,
    /// Port on each node that forwards to the proxy, if any. Clients then reach proxies at
    /// their nodes' addresses, which proxies report (`PUBLIC_IP`) and DNS nodes publish;
    /// without one, DNS nodes ignore reported addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Byte budget of the in-memory cache tier.
    pub cache_memory_bytes: u64,
    /// Byte budget on disk: three quarters for the on-disk cache tier, a quarter for spill
    /// files (objects too large to cache, on disk while their fetch is shared).
    pub cache_disk_bytes: u64,
    /// Directory of the on-disk cache tier.
    pub cache_dir: PathBuf,
    /// Objects larger than this are streamed to the client, never cached.
    pub max_object_bytes: u64,
    /// Cached bodies at least this long are kept in sealed memory files and sent to HTTP/1
    /// clients with `sendfile`; absent, every body is written from ordinary memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sendfile_min_bytes: Option<u64>,
    /// Timeouts applied to origin fetches.
    pub origin_timeouts: OriginTimeouts,
    /// How long past expiry a cached object may still be served when the origin fails.
    #[serde(with = "humantime_serde")]
    pub serve_stale: Duration,
    /// Origin host patterns that may be fetched; empty means every public origin.
    pub origin_allow: Vec<String>,
    /// Origin host patterns that are never fetched; wins over `originAllow`.
    pub origin_deny: Vec<String>,
    /// Request rate allowed to one client address.
    pub per_client_rate: RateLimit,
    /// Request rate allowed towards one origin host (cache misses only).
    pub per_origin_rate: RateLimit,
    /// How origins are resolved and reached, and which internal addresses are exempt from the
    /// SSRF guard.
    #[serde(default)]
    pub origin_access: OriginAccess,
    /// What the proxy does with methods other than GET and HEAD.
    #[serde(default)]
    pub other_methods: MethodPolicy,
    /// Limits on what one client may send.
    #[serde(default)]
    pub client_limits: ClientLimits,
    /// Bandwidth limits: the node's quota (beyond it, clients are redirected to the origin)
    /// and each origin's share (beyond it, its clients are slowed down, fairly).
    #[serde(default)]
    pub bandwidth: BandwidthLimits,
}

/// Bandwidth one node serves, in body bytes per second; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BandwidthLimits {
    /// All clients of this node together, averaged over a few seconds. Over it, the clients
    /// of the origins taking more than an equal share of it are redirected to the origin
    /// itself rather than refused.
    pub node_bytes_per_second: u64,
    /// The clients of one origin host together: their bodies are sent no faster, and every
    /// client (an IPv4 address, an IPv6 /64) busy with the origin gets an equal share, however
    /// many downloads it opens. Nothing is refused; answers are slowed down.
    pub origin_bytes_per_second: u64,
}

/// How origins are resolved and reached.
///
/// The proxy never fetches from a loopback, private, link-local, multicast or otherwise
/// non-public address, checked on every connection after DNS resolution, unless the address
/// is in `internalNetworks` or the origin host is in `internalHosts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OriginAccess {
    /// Non-public networks whose origins may be fetched anyway (the local demo lists its
    /// origin's network here).
    pub internal_networks: Vec<IpNet>,
    /// Origin host names that may resolve to non-public addresses.
    pub internal_hosts: Vec<String>,
    /// Public networks that must never be fetched either, such as a cluster's public pod or
    /// service ranges.
    pub blocked_networks: Vec<IpNet>,
    /// Fixed addresses of origin host names, used instead of DNS (as `curl --resolve` does).
    pub addresses: BTreeMap<String, Vec<IpAddr>>,
    /// DNS servers that resolve origin names; empty means the pod's `/etc/resolv.conf`.
    pub resolvers: Vec<SocketAddr>,
    /// PEM file of CA certificates trusted for `https` origins besides the public web's roots.
    pub extra_ca_file: Option<PathBuf>,
    /// Most fetches in flight towards one origin host at once; later misses wait their turn.
    pub max_concurrent_fetches: u32,
}

impl Default for OriginAccess {
    fn default() -> Self {
        Self {
            internal_networks: Vec::new(),
            internal_hosts: Vec::new(),
            blocked_networks: Vec::new(),
            addresses: BTreeMap::new(),
            resolvers: Vec::new(),
            extra_ca_file: None,
            max_concurrent_fetches: 8,
        }
    }
}

/// What the proxy does with a request whose method is not GET or HEAD.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MethodPolicy {
    /// Refuse it with 405: the CDN serves reads only.
    #[default]
    Refuse,
    /// Pass it to the origin uncached; a successful answer invalidates the cached URL.
    Pass,
}

/// Limits on what one client may send, against slow or oversized requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientLimits {
    /// Client connections open at once on one node; more wait in the kernel's backlog.
    pub max_connections: u32,
    /// Client connections open at once from one address; more are refused with 429.
    pub max_connections_per_client: u32,
    /// Longest request target (path and query), in bytes.
    pub max_url_bytes: u32,
    /// Most header fields in one request.
    pub max_headers: u32,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: u32,
    /// Time allowed to send a request head, against slowloris.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a client may take no answer bytes while some wait to be sent, against clients
    /// that hold answers (and what they pin) by never reading.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            max_connections_per_client: 1_000,
            max_url_bytes: 8_192,
            max_headers: 100,
            max_header_bytes: 32_768,
            header_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// Timeouts of one origin fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginTimeouts {
    /// Time allowed to resolve the origin's name, and then to establish each TCP (and TLS)
    /// connection attempt.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Time allowed between sending the request and the first response byte.
    #[serde(with = "humantime_serde")]
    pub first_byte: Duration,
    /// Longest silence allowed while the body streams.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
}

/// A token-bucket rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second.
    pub requests_per_second: u32,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
}

/// Settings of the authoritative DNS server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsConfig {
    /// UDP and TCP port the DNS server listens on inside the pod.
    pub port: u16,
    /// TTL of A/AAAA answers naming proxies.
    #[serde(with = "humantime_serde")]
    pub answer_ttl: Duration,
    /// Most proxy addresses in one answer.
    pub answers_per_query: u32,
    /// Name servers published in the zone's NS records; empty means the healthy DNS nodes
    /// publish themselves.
    pub nameservers: Vec<NameServer>,
    /// File listing the proxies and DNS nodes to check and publish (see `dns::members`), read
    /// again every probe interval. Set this or `memberServices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_file: Option<PathBuf>,
    /// Services whose EndpointSlices (in the pod's namespace) list the proxies and DNS nodes
    /// to check and publish. Set this or `membersFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_services: Option<MemberServices>,
    /// Responses per second to one client network (an IPv4 /24, an IPv6 /56): response rate
    /// limiting, which blunts reflection attacks with spoofed sources.
    #[serde(default = "DnsConfig::default_response_rate")]
    pub response_rate: RateLimit,
    /// Limits of DNS over TCP.
    #[serde(default)]
    pub tcp: DnsTcpLimits,
}

impl DnsConfig {
    /// 200 responses a second, 400 in a burst, per client network: far above what one
    /// network's resolvers ask of one zone, far below what makes a useful reflector.
    pub fn default_response_rate() -> RateLimit {
        RateLimit {
            requests_per_second: 200,
            burst: 400,
        }
    }
}

/// The Services whose EndpointSlices list a DNS node's members, and where it keeps the last
/// list it saw so that a restarted node serves while the API server is down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberServices {
    /// The Service selecting the proxy pods.
    pub proxies: String,
    /// The Service selecting the DNS pods.
    pub nameservers: String,
    /// File holding the last members list seen (on a volume that outlives the container).
    pub cache_file: PathBuf,
}

/// Limits of the DNS server's TCP side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DnsTcpLimits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: u32,
    /// Connections open at once from one client network (an IPv4 /24, an IPv6 /56), so that
    /// one client cannot take every connection.
    pub max_connections_per_client: u32,
    /// A connection that sends no query for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for DnsTcpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_connections_per_client: 100,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// A name server published for the zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NameServer {
    /// Fully qualified host name of the name server.
    pub name: String,
    /// Glue addresses, needed when the name is inside the zone.
    pub addresses: Vec<IpAddr>,
}

/// The locality hierarchy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityConfig {
    /// Node label keys naming the locality levels, most local first
    /// (by default `topology.kubernetes.io/zone`, then `topology.kubernetes.io/region`).
    pub label_keys: Vec<String>,
    /// Client networks and where they are, used to place DNS clients.
    pub client_networks: Vec<ClientNetwork>,
}

/// A client network and its place in the locality hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientNetwork {
    /// The network, such as `192.0.2.0/24`.
    pub cidr: IpNet,
    /// Values of the locality label keys for clients in this network, most local first
    /// (missing trailing levels mean "unknown").
    pub locality: Vec<String>,
}

/// Settings of the DHT node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DhtConfig {
    /// UDP port of the DHT.
    pub port: u16,
    /// File holding the cluster's shared key, which authenticates every DHT packet and peer fetch.
    pub key_file: PathBuf,
    /// Protocol version; nodes of different versions never talk to each other.
    pub protocol_version: u32,
    /// DNS name listing DHT peers (the headless Service), used to bootstrap.
    pub bootstrap_name: String,
    /// Tunables of the DHT; every field has the original CoralCDN's value as its default.
    #[serde(default)]
    pub tuning: DhtTuning,
}

/// Tunables of the sloppy DHT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DhtTuning {
    /// Entries per k-bucket, and how many closest nodes a lookup converges on.
    pub bucket_size: u32,
    /// Requests one lookup keeps in flight.
    pub parallelism: u32,
    /// `b`: bits a get or put path corrects per hop (1 in CoralCDN); 0 jumps straight to the
    /// closest node known, as Kademlia does, which is faster but lets hot keys melt a node.
    pub bits_per_hop: u32,
    /// Nodes a put stores at on each level.
    pub replicas: u32,
    /// `l`: values a node holds for a key before it counts as full for that key.
    pub values_per_key: u32,
    /// `beta`: requests for one key per minute above which a node counts as loaded for it.
    pub loaded_requests_per_minute: u32,
    /// Most keys one level's store tracks.
    pub max_keys: u32,
    /// Time to wait for an answer from a peer never measured before; measured peers get
    /// their smoothed round-trip time plus four deviations.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retransmissions of a request before its peer counts as failed.
    pub retries: u32,
    /// Time between two upkeep rounds (table refresh, re-announcement, expiry).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for DhtTuning {
    fn default() -> Self {
        Self {
            bucket_size: 8,
            parallelism: 3,
            bits_per_hop: 1,
            replicas: 2,
            values_per_key: 4,
            loaded_requests_per_minute: 12,
            max_keys: 65_536,
            request_timeout: Duration::from_millis(500),
            retries: 2,
            refresh_interval: Duration::from_secs(60),
        }
    }
}

/// Health checking of proxies, used by DNS to eject and readmit them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthConfig {
    /// Time between two probes of one proxy.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time allowed for one probe.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failures that eject a proxy.
    pub failure_threshold: u32,
    /// Consecutive successes that readmit an ejected proxy.
    pub success_threshold: u32,
}

/// Where every Kubernetes node sits in the locality hierarchy:
/// node name to the values of the locality label keys, most local first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// Node name to locality values, in the order of [`LocalityConfig::label_keys`];
    /// an empty string marks a node without that label.
    pub nodes: BTreeMap<String, Vec<String>>,
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("{path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid YAML for the type; `field` is the path of the offending field.
    #[error("{path}: field `{field}`: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Dotted path of the field, such as `proxy.httpPort`.
        field: String,
        /// What was wrong with it.
        message: String,
    },
    /// The file parsed but a value breaks a rule.
    #[error("{path}: field `{field}`: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong and what would be valid.
        problem: String,
    },
}

/// A file as read: its value and the dotted paths of fields this node does not know.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded<T> {
    /// The value.
    pub value: T,
    /// Fields present in the file but unknown to this version, such as `proxy.newSetting`.
    pub ignored_fields: Vec<String>,
}

impl NodeConfig {
    /// Reads and checks a node configuration file.
    pub fn load(path: &Path) -> Result<Loaded<Self>, ConfigError> {
        let loaded: Loaded<Self> = load_yaml(path)?;
        loaded
            .value
            .check()
            .map_err(|(field, problem)| ConfigError::Invalid {
                path: path.to_owned(),
                field,
                problem,
            })?;
        Ok(loaded)
    }

    /// Serialises the configuration as the YAML the node reads.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("NodeConfig always serialises")
    }

    /// Checks the rules serde cannot express; returns the offending field and the problem.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let positive = |field: &'static str, value: u64| {
            if value == 0 {
                Err((field, "must be greater than 0".to_owned()))
            } else {
                Ok(())
            }
        };
        positive("adminPort", self.admin_port.into())?;
        positive("proxy.httpPort", self.proxy.http_port.into())?;
        positive("proxy.cacheMemoryBytes", self.proxy.cache_memory_bytes)?;
        positive("proxy.maxObjectBytes", self.proxy.max_object_bytes)?;
        if let Some(min) = self.proxy.sendfile_min_bytes
            && min < MIN_SENDFILE_BYTES
        {
            return Err((
                "proxy.sendfileMinBytes",
                format!("must be at least {MIN_SENDFILE_BYTES} when set"),
            ));
        }
        positive(
            "proxy.originAccess.maxConcurrentFetches",
            self.proxy.origin_access.max_concurrent_fetches.into(),
        )?;
        let limits = &self.proxy.client_limits;
        positive(
            "proxy.clientLimits.maxConnections",
            limits.max_connections.into(),
        )?;
        positive(
            "proxy.clientLimits.maxConnectionsPerClient",
            limits.max_connections_per_client.into(),
        )?;
        if limits.max_url_bytes < 256 {
            return Err((
                "proxy.clientLimits.maxUrlBytes",
                "must be at least 256".to_owned(),
            ));
        }
        if limits.max_headers < 16 {
            return Err((
                "proxy.clientLimits.maxHeaders",
                "must be at least 16".to_owned(),
            ));
        }
        if limits.max_header_bytes < 8192 {
            return Err((
                "proxy.clientLimits.maxHeaderBytes",
                "must be at least 8192".to_owned(),
            ));
        }
        if limits.header_timeout.is_zero() {
            return Err((
                "proxy.clientLimits.headerTimeout",
                "must be longer than 0s".to_owned(),
            ));
        }
        if limits.send_timeout.is_zero() {
            return Err((
                "proxy.clientLimits.sendTimeout",
                "must be longer than 0s".to_owned(),
            ));
        }
        positive("dns.port", self.dns.port.into())?;
        positive("dns.answersPerQuery", self.dns.answers_per_query.into())?;
        positive(
            "dns.responseRate.requestsPerSecond",
            self.dns.response_rate.requests_per_second.into(),
        )?;
        positive(
            "dns.tcp.maxConnections",
            self.dns.tcp.max_connections.into(),
        )?;
        positive(
            "dns.tcp.maxConnectionsPerClient",
            self.dns.tcp.max_connections_per_client.into(),
        )?;
        if self.dns.tcp.idle_timeout.is_zero() {
            return Err(("dns.tcp.idleTimeout", "must be longer than 0s".to_owned()));
        }
        if self.dns.members_file.is_some() && self.dns.member_services.is_some() {
            return Err((
                "dns.memberServices",
                "set dns.membersFile or dns.memberServices, not both".to_owned(),
            ));
        }
        positive("dht.port", self.dht.port.into())?;
        let tuning = &self.dht.tuning;
        positive("dht.tuning.bucketSize", tuning.bucket_size.into())?;
        positive("dht.tuning.parallelism", tuning.parallelism.into())?;
        positive("dht.tuning.replicas", tuning.replicas.into())?;
        if tuning.bits_per_hop > 8 {
            return Err((
                "dht.tuning.bitsPerHop",
                "must be 0 (Kademlia) to 8".to_owned(),
            ));
        }
        positive("dht.tuning.valuesPerKey", tuning.values_per_key.into())?;
        positive("dht.tuning.maxKeys", tuning.max_keys.into())?;
        if tuning.values_per_key > 64 {
            return Err(("dht.tuning.valuesPerKey", "must be at most 64".to_owned()));
        }
        if tuning.loaded_requests_per_minute > 100_000 {
            return Err((
                "dht.tuning.loadedRequestsPerMinute",
                "must be at most 100000".to_owned(),
            ));
        }
        if tuning.request_timeout.is_zero() {
            return Err((
                "dht.tuning.requestTimeout",
                "must be longer than 0s".to_owned(),
            ));
        }
        if tuning.refresh_interval < Duration::from_secs(1) {
            return Err((
                "dht.tuning.refreshInterval",
                "must be at least 1s".to_owned(),
            ));
        }
        positive(
            "health.failureThreshold",
            self.health.failure_threshold.into(),
        )?;
        positive(
            "health.successThreshold",
            self.health.success_threshold.into(),
        )?;
        if self.health.interval.is_zero() {
            return Err(("health.interval", "must be longer than 0s".to_owned()));
        }
        if self.health.timeout.is_zero() || self.health.timeout > self.health.interval {
            return Err((
                "health.timeout",
                format!(
                    "must be longer than 0s and at most health.interval ({})",
                    humantime::format_duration(self.health.interval)
                ),
            ));
        }
        if self.locality.label_keys.is_empty() {
            return Err((
                "locality.labelKeys",
                "must name at least one label key".to_owned(),
            ));
        }
        Ok(())
    }
}

impl Topology {
    /// Reads a topology file.
    pub fn load(path: &Path) -> Result<Loaded<Self>, ConfigError> {
        load_yaml(path)
    }

    /// Serialises the topology as the YAML the node reads.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("Topology always serialises")
    }

    /// The zone of `node` (its most local locality value), as metrics label it; empty when
    /// the topology does not list the node.
    pub fn zone(&self, node: &str) -> &str {
        self.nodes
            .get(node)
            .and_then(|values| values.first())
            .map_or("", String::as_str)
    }
}

/// Reads a YAML file, naming the offending field on error.
pub(crate) fn load_yaml<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Loaded<T>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    // YAML reads an empty document as null, which would make a map of defaults: a file being
    // rewritten in place, caught in the middle, would pass for a real one.
    if text.trim().is_empty() {
        return Err(ConfigError::Empty {
            path: path.to_owned(),
        });
    }
    parse_yaml(&text).map_err(|(field, message)| ConfigError::Parse {
        path: path.to_owned(),
        field,
        message,
    })
}

/// Parses YAML text, returning the dotted path of the offending field on error.
fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<Loaded<T>, (String, String)> {
    let mut ignored_fields = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| ignored_fields.push(path.to_string());
    let deserializer = serde_norway::Deserializer::from_str(text);
    let tracking = serde_ignored::Deserializer::new(deserializer, &mut record);
    let value = serde_path_to_error::deserialize(tracking).map_err(|err| {
        let field = err.path().to_string();
        (field, err.into_inner().to_string())
    })?;
    Ok(Loaded {
        value,
        ignored_fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeConfig {
        NodeConfig {
            zone: "nyud.net".into(),
            admin_port: 9090,
            proxy: ProxyConfig {
                http_port: 8080,
                host_port: Some(80),
                cache_memory_bytes: 256 << 20,
                cache_disk_bytes: 1 << 30,
                cache_dir: "/var/cache/coral".into(),
                max_object_bytes: 50 << 20,
                sendfile_min_bytes: Some(64 << 10),
                origin_timeouts: OriginTimeouts {
                    connect: Duration::from_secs(5),
                    first_byte: Duration::from_secs(15),
                    idle: Duration::from_secs(30),
                },
                serve_stale: Duration::from_secs(3600),
                origin_allow: vec![],
                origin_deny: vec!["*.internal".into()],
                per_client_rate: RateLimit {
                    requests_per_second: 50,
                    burst: 100,
                },
                per_origin_rate: RateLimit {
                    requests_per_second: 20,
                    burst: 40,
                },
                origin_access: OriginAccess::default(),
                other_methods: MethodPolicy::Refuse,
                client_limits: ClientLimits::default(),
                bandwidth: BandwidthLimits::default(),
            },
            dns: DnsConfig {
                port: 53,
                answer_ttl: Duration::from_secs(20),
                answers_per_query: 2,
                nameservers: vec![NameServer {
                    name: "ns1.nyud.net".into(),
                    addresses: vec!["192.0.2.53".parse().unwrap()],
                }],
                members_file: None,
                member_services: Some(MemberServices {
                    proxies: "demo-proxy".into(),
                    nameservers: "demo-dns".into(),
                    cache_file: "/tmp/dns-members.yaml".into(),
                }),
                response_rate: DnsConfig::default_response_rate(),
                tcp: DnsTcpLimits::default(),
            },
            locality: LocalityConfig {
                label_keys: vec!["topology.kubernetes.io/zone".into()],
                client_networks: vec![ClientNetwork {
                    cidr: "198.51.100.0/24".parse().unwrap(),
                    locality: vec!["zone-a".into()],
                }],
            },
            dht: DhtConfig {
                port: 9410,
                key_file: "/etc/coral/key/key".into(),
                protocol_version: 1,
                bootstrap_name: "demo-dht.default.svc".into(),
                tuning: DhtTuning::default(),
            },
            health: HealthConfig {
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                failure_threshold: 2,
                success_threshold: 2,
            },
        }
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn written_config_loads_back_unchanged() {
        let (_dir, path) = write(&sample().to_yaml());
        let loaded = NodeConfig::load(&path).unwrap();
        assert_eq!(loaded.value, sample());
        assert!(loaded.ignored_fields.is_empty());
    }

    #[test]
    fn durations_are_written_in_human_form() {
        let yaml = sample().to_yaml();
        assert!(yaml.contains("serveStale: 1h"), "{yaml}");
        assert!(yaml.contains("timeout: 500ms"), "{yaml}");
    }

    #[test]
    fn mistyped_value_names_the_field() {
        let yaml = sample()
            .to_yaml()
            .replace("httpPort: 8080", "httpPort: eighty");
        let (_dir, path) = write(&yaml);
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("field `proxy.httpPort`"), "{err}");
    }

    #[test]
    fn fields_from_a_newer_operator_are_ignored_and_named() {
        let yaml = sample()
            .to_yaml()
            .replace("httpPort: 8080", "httpPort: 8080\n  http3Port: 8443");
        let (_dir, path) = write(&format!("{yaml}futureRole: {{}}\n"));
        let loaded = NodeConfig::load(&path).unwrap();
        assert_eq!(loaded.value, sample());
        assert_eq!(loaded.ignored_fields, ["proxy.http3Port", "futureRole"]);
    }

    #[test]
    fn zero_threshold_is_refused_by_name() {
        let mut config = sample();
        config.health.failure_threshold = 0;
        let (_dir, path) = write(&config.to_yaml());
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("field `health.failureThreshold`: must be greater than 0"),
            "{err}"
        );
    }

    #[test]
    fn sendfile_below_its_least_length_is_refused_by_name() {
        let mut config = sample();
        config.proxy.sendfile_min_bytes = Some(4096);
        let (_dir, path) = write(&config.to_yaml());
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("field `proxy.sendfileMinBytes`: must be at least 16384 when set"),
            "{err}"
        );
    }

    #[test]
    fn probe_timeout_longer_than_interval_is_refused() {
        let mut config = sample();
        config.health.timeout = Duration::from_secs(2);
        let (_dir, path) = write(&config.to_yaml());
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("field `health.timeout`"), "{err}");
    }

    #[test]
    fn a_config_without_dht_tuning_gets_the_defaults() {
        let yaml = sample().to_yaml();
        let start = yaml.find("  tuning:").unwrap();
        let end = start + yaml[start..].find("health:").unwrap();
        let (_dir, path) = write(&format!("{}{}", &yaml[..start], &yaml[end..]));
        assert_eq!(NodeConfig::load(&path).unwrap().value, sample());
    }

    #[test]
    fn zero_dht_parallelism_is_refused_by_name() {
        let mut config = sample();
        config.dht.tuning.parallelism = 0;
        let (_dir, path) = write(&config.to_yaml());
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("field `dht.tuning.parallelism`"), "{err}");
    }

    #[test]
    fn missing_file_is_reported_with_its_path() {
        let err = NodeConfig::load(Path::new("/nonexistent/node.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/node.yaml"),
            "{err}"
        );
    }

    #[test]
    fn topology_round_trips() {
        let topology = Topology {
            nodes: BTreeMap::from([("n1".to_owned(), vec!["z1".to_owned(), "r1".to_owned()])]),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOPOLOGY_FILE);
        std::fs::write(&path, topology.to_yaml()).unwrap();
        assert_eq!(Topology::load(&path).unwrap().value, topology);
    }
}
