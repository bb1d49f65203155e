//! The node's live state as the admin port shows it: routing tables, clusters and store sizes
//! per level. Built by [`super::Dht::snapshot`].

use std::net::SocketAddr;

use serde::Serialize;

use super::id::Id;
use super::locality::ClusterId;
use super::routing::PeerView;
use super::store::StoreStats;

/// The node's state as the admin page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DhtSnapshot {
    /// This node's ID.
    pub id: Id,
    /// This node's DHT address.
    pub addr: SocketAddr,
    /// Values this node's proxy announces (and re-puts).
    pub announcements: usize,
    /// Per level, global first.
    pub levels: Vec<LevelSnapshot>,
}

/// One level of [`DhtSnapshot`].
#[derive(Clone, Debug, Serialize)]
pub struct LevelSnapshot {
    /// Level number (0 = global).
    pub level: usize,
    /// This node's cluster at this level (none at level 0 or without the label).
    pub cluster: Option<ClusterId>,
    /// Known peers.
    pub peers: Vec<PeerSnapshot>,
    /// Store size at this level.
    pub store: StoreStats,
}

/// One peer of [`LevelSnapshot`].
#[derive(Clone, Debug, Serialize)]
pub struct PeerSnapshot {
    /// Routing table entry.
    #[serde(flatten)]
    pub peer: PeerView,
    /// Smoothed round-trip time, if measured.
    pub rtt_ms: Option<f64>,
}
