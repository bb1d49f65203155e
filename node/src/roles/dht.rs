//! The DHT role: turns the node configuration into a running [`UdpDht`] and keeps it joined.
//!
//! It reads the cluster key, places the node in the locality hierarchy from the topology file
//! (the operator writes every node's zone and region there, since pods cannot read Node
//! labels), binds the UDP port, and runs the upkeep loop: resolve the bootstrap peers (the
//! headless Service's DNS name and any `--dht-peer`), then [`Dht::maintain`], every
//! `refreshInterval` (every 5 s while the node knows no peer), waking in between to re-put
//! announcements that fall due. The loop needs neither the
//! operator nor the API server: once joined, the DHT heals itself from its own tables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{NodeConfig, Topology};
use crate::dht::metrics::DhtMetrics;
use crate::dht::store::StoreLimits;
use crate::dht::udp::{UdpDht, UdpNetwork, UdpNodeConfig, UdpSettings};
use crate::dht::wire::Codec;
use crate::dht::{Dht, DhtParams, Locality};

/// Shortest key accepted, the same rule the operator applies.
pub const MIN_KEY_BYTES: usize = 32;
/// Upkeep period while the node knows no peer.
const LONELY_RETRY: Duration = Duration::from_secs(5);

/// Why the DHT role could not start.
#[derive(Debug, thiserror::Error)]
pub enum DhtRoleError {
    /// The key file could not be read.
    #[error("cannot read the DHT key {path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key is too short to authenticate anything.
    #[error("the DHT key {path} has {len} bytes; at least {MIN_KEY_BYTES} are needed")]
    ShortKey {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The UDP port could not be bound.
    #[error("cannot bind the DHT port {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where this node is and whom it may ask first.
#[derive(Clone, Debug)]
pub struct DhtPlacement {
    /// The Kubernetes node this pod runs on (looked up in the topology).
    pub node_name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// Address peers reach this node at (the pod IP and DHT port).
    pub advertise: SocketAddr,
    /// Extra bootstrap peers, `host:port`.
    pub peers: Vec<String>,
}

/// The running DHT role.
pub struct DhtRole {
    node: UdpDht,
    key: Arc<[u8]>,
    joined: Arc<AtomicBool>,
    upkeep: JoinHandle<()>,
}

impl DhtRole {
    /// Starts the role; the upkeep loop runs until `shutdown`.
    pub async fn start(
        config: &NodeConfig,
        topology: &Topology,
        placement: DhtPlacement,
        metrics: DhtMetrics,
        shutdown: CancellationToken,
    ) -> Result<Self, DhtRoleError> {
        let key_file = &config.dht.key_file;
        let key = std::fs::read(key_file).map_err(|source| DhtRoleError::Key {
            path: key_file.clone(),
            source,
        })?;
        if key.len() < MIN_KEY_BYTES {
            return Err(DhtRoleError::ShortKey {
                path: key_file.clone(),
                len: key.len(),
            });
        }
        let labels = topology.nodes.get(&placement.node_name).cloned();
        if labels.is_none() {
            tracing::warn!(node = %placement.node_name, "node missing from the topology file; joining the global level only");
        }
        let levels = config.locality.label_keys.len();
        let labels = labels.unwrap_or_else(|| vec![String::new(); levels]);
        let tuning = config.dht.tuning;
        let node_config = UdpNodeConfig {
            bind: placement.bind,
            advertise: Some(placement.advertise),
            locality: Locality::from_labels(&labels),
            params: DhtParams {
                k: tuning.bucket_size as usize,
                alpha: tuning.parallelism as usize,
                bits_per_hop: tuning.bits_per_hop as usize,
                replicas: tuning.replicas as usize,
                store: StoreLimits {
                    values_per_key: tuning.values_per_key as usize,
                    loaded_per_minute: tuning.loaded_requests_per_minute as usize,
                    max_keys: tuning.max_keys as usize,
                },
                ..DhtParams::default()
            },
            codec: Codec::new(&key, config.dht.protocol_version),
            settings: UdpSettings {
                initial_rto: tuning.request_timeout,
                max_rto: tuning.request_timeout.max(UdpSettings::default().max_rto),
                retries: tuning.retries,
                ..UdpSettings::default()
            },
        };
        let node = UdpDht::start(node_config, metrics)
            .await
            .map_err(|source| DhtRoleError::Bind {
                addr: placement.bind,
                source,
            })?;
        tracing::info!(id = %node.dht.contact().id, addr = %placement.advertise, ?labels, "DHT role started");
        let joined = Arc::new(AtomicBool::new(false));
        let bootstrap = Bootstrap {
            name: format!("{}:{}", config.dht.bootstrap_name, config.dht.port),
            peers: placement.peers,
        };
        let upkeep = tokio::spawn(upkeep(
            node.dht.clone(),
            bootstrap,
            tuning.refresh_interval,
            joined.clone(),
            shutdown,
        ));
        Ok(Self {
            node,
            key: key.into(),
            joined,
            upkeep,
        })
    }

    /// The DHT node, for other roles and the admin page.
    pub fn dht(&self) -> Arc<Dht<UdpNetwork>> {
        self.node.dht.clone()
    }

    /// The cluster's shared key, which also authenticates peer fetches between proxies.
    pub fn cluster_key(&self) -> Arc<[u8]> {
        self.key.clone()
    }

    /// Set once the first upkeep round (the join) is over, even when it found no peer: the
    /// first node of a cluster is ready alone.
    pub fn readiness(&self) -> Arc<AtomicBool> {
        self.joined.clone()
    }

    /// Waits for the upkeep loop (ended by the shutdown token) and closes the socket.
    pub async fn stop(self) {
        let _ = self.upkeep.await;
        self.node.stop().await;
    }
}

/// Where bootstrap peers come from.
struct Bootstrap {
    /// The headless Service name with the DHT port.
    name: String,
    /// Extra `host:port` peers.
    peers: Vec<String>,
}

impl Bootstrap {
    /// Resolves every source; a source that does not resolve is logged and skipped.
    async fn resolve(&self) -> Vec<SocketAddr> {
        let mut addrs = Vec::new();
        for source in std::iter::once(&self.name).chain(&self.peers) {
            match tokio::net::lookup_host(source.as_str()).await {
                Ok(found) => addrs.extend(found),
                Err(err) => {
                    tracing::debug!(%source, error = %err, "bootstrap source does not resolve")
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        addrs
    }
}

async fn upkeep(
    dht: Arc<Dht<UdpNetwork>>,
    bootstrap: Bootstrap,
    interval: Duration,
    joined: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut next_round = Instant::now();
    loop {
        // Sleep until the next upkeep round, or until an announcement is due before then.
        let wake = dht
            .next_republish()
            .map_or(next_round, |due| due.min(next_round));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
        }
        if Instant::now() < next_round {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = dht.republish_due() => {}
            }
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = async { dht.maintain(&bootstrap.resolve().await).await } => {}
        }
        if !joined.swap(true, Ordering::Relaxed) {
            tracing::info!(peers = dht.peers(0), "DHT joined");
        }
        let wait = if dht.peers(0) == 0 {
            LONELY_RETRY
        } else {
            interval
        };
        next_round = Instant::now() + wait;
    }
}
