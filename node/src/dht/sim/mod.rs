//! A virtual network for the DHT: the real node code, virtual time, no sockets.
//!
//! Every simulated node is a real [`Dht`] whose [`Network`] is a [`SimNetwork`]: a request
//! waits half the round-trip time the world's latency model gives for the pair, is answered by
//! the destination's own [`Dht::answer`], and waits the other half back. A request to a dead
//! node waits out the timeout and every retransmission, as UDP would. Run it on a
//! current-thread Tokio runtime with paused time (`tokio::time::pause`) and the clock jumps
//! from event to event, so hours of simulated traffic among 10,000 nodes take seconds and
//! the same seed gives the same run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use std::sync::Mutex;

use super::metrics::DhtMetrics;
use super::routing::Contact;
use super::wire::{Body, Packet};
use super::{Dht, DhtParams, Id, Locality, Network, RpcError};

mod geography;
pub mod scenario;

pub use geography::Geography;

/// Round-trip time between two simulated addresses.
pub type LatencyModel = Box<dyn Fn(SocketAddr, SocketAddr) -> Duration + Send + Sync>;

/// The simulated world: every node, who is alive, and how far apart they are.
pub struct SimWorld {
    nodes: RwLock<Registry>,
    latency: LatencyModel,
    /// Time a request to a dead node costs, retransmissions included.
    dead_peer_cost: Duration,
    metrics: DhtMetrics,
    tracked: Mutex<Option<(Id, HashMap<SocketAddr, u64>)>>,
}

/// Live nodes by address, plus their addresses in a vector for constant-time random picks.
#[derive(Default)]
struct Registry {
    by_addr: HashMap<SocketAddr, (usize, Arc<Dht<SimNetwork>>)>,
    order: Vec<SocketAddr>,
}

/// A node's view of the simulated world.
pub struct SimNetwork {
    world: Weak<SimWorld>,
    me: SocketAddr,
}

impl SimWorld {
    /// An empty world. `dead_peer_cost` is what a request to a dead node costs the caller
    /// (the UDP transport's timeouts and retransmissions added up).
    pub fn new(latency: LatencyModel, dead_peer_cost: Duration) -> Arc<Self> {
        Arc::new(Self {
            nodes: RwLock::new(Registry::default()),
            latency,
            dead_peer_cost,
            metrics: DhtMetrics::unregistered(),
            tracked: Mutex::new(None),
        })
    }

    /// Starts counting the requests about `key` (gets, probes, stores) each node receives,
    /// forgetting any earlier count.
    pub fn track_key(&self, key: Id) {
        *self.tracked.lock().expect("sim lock") = Some((key, HashMap::new()));
    }

    /// Requests about the tracked key received so far, per node.
    pub fn tracked_requests(&self) -> HashMap<SocketAddr, u64> {
        let tracked = self.tracked.lock().expect("sim lock");
        tracked
            .as_ref()
            .map(|(_, counts)| counts.clone())
            .unwrap_or_default()
    }

    fn count_request(&self, to: SocketAddr, body: &Body) {
        let key = match body {
            Body::Get { key, .. } | Body::Probe { key, .. } | Body::Store { key, .. } => key,
            _ => return,
        };
        if let Some((tracked, counts)) = self.tracked.lock().expect("sim lock").as_mut()
            && tracked == key
        {
            *counts.entry(to).or_default() += 1;
        }
    }

    /// Adds a live node at a new `addr` (its ID is the hash of the address, as on real nodes).
    pub fn add(
        self: &Arc<Self>,
        addr: SocketAddr,
        locality: Locality,
        params: DhtParams,
    ) -> Arc<Dht<SimNetwork>> {
        let me = Contact {
            id: Id::of(addr.to_string().as_bytes()),
            addr,
        };
        let net = SimNetwork {
            world: Arc::downgrade(self),
            me: addr,
        };
        let dht = Arc::new(Dht::new(me, locality, params, net, self.metrics.clone()));
        let mut registry = self.nodes_mut();
        assert!(!registry.by_addr.contains_key(&addr), "{addr} is taken");
        registry.order.push(addr);
        let position = registry.order.len() - 1;
        registry.by_addr.insert(addr, (position, dht.clone()));
        dht
    }

    /// Kills the node at `addr`: it stops answering and its state is gone.
    pub fn kill(&self, addr: &SocketAddr) {
        let mut registry = self.nodes_mut();
        if let Some((position, _)) = registry.by_addr.remove(addr) {
            registry.order.swap_remove(position);
            if let Some(moved) = registry.order.get(position).copied() {
                registry.by_addr.get_mut(&moved).expect("registered").0 = position;
            }
        }
    }

    /// The live node at `addr`.
    pub fn node(&self, addr: &SocketAddr) -> Option<Arc<Dht<SimNetwork>>> {
        let registry = self.nodes.read().expect("sim lock");
        registry.by_addr.get(addr).map(|(_, dht)| dht.clone())
    }

    /// Addresses of every live node, in a reproducible order.
    pub fn alive(&self) -> Vec<SocketAddr> {
        self.nodes.read().expect("sim lock").order.clone()
    }

    /// Number of live nodes.
    pub fn alive_count(&self) -> usize {
        self.nodes.read().expect("sim lock").order.len()
    }

    /// A random live node's address, in constant time.
    pub fn random_alive(&self, rng: &mut impl rand::Rng) -> Option<SocketAddr> {
        let registry = self.nodes.read().expect("sim lock");
        (!registry.order.is_empty())
            .then(|| registry.order[rng.random_range(0..registry.order.len())])
    }

    /// The counters all simulated nodes share.
    pub fn metrics(&self) -> &DhtMetrics {
        &self.metrics
    }

    fn nodes_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.nodes.write().expect("sim lock")
    }
}

impl Network for SimNetwork {
    async fn call(&self, to: SocketAddr, request: Packet) -> Result<Packet, RpcError> {
        let world = self.world.upgrade().ok_or(RpcError::Timeout(to))?;
        let Some(peer) = world.node(&to) else {
            tokio::time::sleep(world.dead_peer_cost).await;
            return Err(RpcError::Timeout(to));
        };
        world.count_request(to, &request.body);
        let half = (world.latency)(self.me, to) / 2;
        drop(world);
        tokio::time::sleep(half).await;
        let reply = peer.answer(self.me, &request);
        drop(peer);
        tokio::time::sleep(half).await;
        Ok(reply)
    }

    fn rtt(&self, to: SocketAddr) -> Option<Duration> {
        self.world
            .upgrade()
            .map(|world| (world.latency)(self.me, to))
    }
}
