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

use super::metrics::DhtMetrics;
use super::routing::Contact;
use super::wire::Packet;
use super::{Dht, DhtParams, Id, Locality, Network, RpcError};

/// Round-trip time between two simulated addresses.
pub type LatencyModel = Box<dyn Fn(SocketAddr, SocketAddr) -> Duration + Send + Sync>;

/// The simulated world: every node, who is alive, and how far apart they are.
pub struct SimWorld {
    nodes: RwLock<HashMap<SocketAddr, Arc<Dht<SimNetwork>>>>,
    latency: LatencyModel,
    /// Time a request to a dead node costs, retransmissions included.
    dead_peer_cost: Duration,
    metrics: DhtMetrics,
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
            nodes: RwLock::new(HashMap::new()),
            latency,
            dead_peer_cost,
            metrics: DhtMetrics::unregistered(),
        })
    }

    /// Adds a live node at `addr` (its ID is the hash of the address, as on real nodes).
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
        self.nodes_mut().insert(addr, dht.clone());
        dht
    }

    /// Kills the node at `addr`: it stops answering and its state is gone.
    pub fn kill(&self, addr: &SocketAddr) {
        self.nodes_mut().remove(addr);
    }

    /// The live node at `addr`.
    pub fn node(&self, addr: &SocketAddr) -> Option<Arc<Dht<SimNetwork>>> {
        self.nodes.read().expect("sim lock").get(addr).cloned()
    }

    /// Addresses of every live node.
    pub fn alive(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<_> = self
            .nodes
            .read()
            .expect("sim lock")
            .keys()
            .copied()
            .collect();
        addrs.sort();
        addrs
    }

    /// The counters all simulated nodes share.
    pub fn metrics(&self) -> &DhtMetrics {
        &self.metrics
    }

    fn nodes_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<SocketAddr, Arc<Dht<SimNetwork>>>> {
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
