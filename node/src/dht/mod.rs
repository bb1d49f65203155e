//! Coral's hierarchical sloppy DHT: finds *some nearby* proxies holding an object.
//!
//! The DHT indexes, it does not store content: a key is the SHA-1 of a URL and its values are
//! addresses of proxies holding (or fetching) that URL. It follows Coral (IPTPS '03, NSDI '04):
//! Kademlia routing (160-bit IDs, XOR distance, k-buckets, iterative lookups with `alpha`
//! requests in flight), a *sloppy* store where a put stops short of nodes that are full and
//! loaded for a key, and one DHT per locality level (global, region, zone) so that a get
//! finds holders in its own zone first and widens only when it finds none there.
//!
//! The module is a library at the bottom of the node: it knows nothing of HTTP, DNS or
//! Kubernetes. Its parts:
//! - [`id`], [`locality`]: identifiers and cluster membership;
//! - [`wire`]: the authenticated packet format (documented there), and [`trace`], the client
//!   request a packet serves;
//! - [`routing`], [`store`]: the per-node tables, which decide and never send;
//! - [`answer`]: how a node answers a request, a pure function of its tables;
//! - [`lookup`], [`path`]: the books of an iterative Kademlia lookup (joins and refreshes) and
//!   the bit-at-a-time path of Coral's gets and puts, both pure;
//! - [`node`]: the node that drives them over the [`Network`] trait (with the books of each
//!   request kept in `errand`), and [`snapshot`], its state for the admin port;
//! - [`udp`]: the real transport (request ids, timeouts, retransmission, RTT estimates);
//! - [`sim`]: a virtual network with virtual time that runs the same code at 10,000 nodes;
//! - [`metrics`]: the Prometheus metrics.

pub mod answer;
mod errand;
pub mod id;
pub mod locality;
pub mod lookup;
pub mod metrics;
pub mod node;
pub mod path;
pub mod routing;
pub mod sim;
pub mod snapshot;
pub mod store;
pub mod trace;
pub mod udp;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use id::Id;
pub use locality::Locality;
pub use node::Dht;
pub use trace::traced;
pub use wire::Value;

use store::StoreLimits;
use wire::Packet;

/// Tunables of the DHT. The defaults are the original system's where it had one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhtParams {
    /// Bucket size and number of closest nodes a lookup converges on.
    pub k: usize,
    /// Requests a lookup keeps in flight.
    pub alpha: usize,
    /// `l`, `beta` and the key bound of each level's store.
    pub store: StoreLimits,
    /// Most values a get asks for.
    pub values_per_get: u8,
    /// `b`: bits a get or put path corrects per hop (Coral's was 1); 0 jumps straight to the
    /// closest node known, as Kademlia does.
    pub bits_per_hop: usize,
    /// Nodes a put stores at per level: the closest acceptable ones on its path. Coral stored
    /// at one; a second copy keeps values findable while the first holder's index node is
    /// gone and the holder has not re-put yet.
    pub replicas: usize,
    /// Longest TTL a node accepts for a value.
    pub max_ttl: Duration,
}

impl Default for DhtParams {
    fn default() -> Self {
        Self {
            k: 8,
            alpha: 3,
            store: StoreLimits {
                values_per_key: 4,
                loaded_per_minute: 12,
                max_keys: 65_536,
            },
            values_per_get: 4,
            bits_per_hop: 1,
            replicas: 2,
            max_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No answer after every retransmission.
    #[error("no answer from {0}")]
    Timeout(SocketAddr),
    /// The request could not be sent.
    #[error("cannot send to {addr}: {reason}")]
    Send {
        /// The destination.
        addr: SocketAddr,
        /// The socket's error.
        reason: String,
    },
}

/// How a node reaches other nodes: UDP in production, a virtual network in the simulator.
pub trait Network: Send + Sync + 'static {
    /// Sends `request` to `to` and waits for its answer, retransmitting as the transport sees fit.
    fn call(
        &self,
        to: SocketAddr,
        request: Packet,
    ) -> impl Future<Output = Result<Packet, RpcError>> + Send;

    /// The transport's current round-trip estimate to `to`, if it has one.
    fn rtt(&self, to: SocketAddr) -> Option<Duration>;
}
