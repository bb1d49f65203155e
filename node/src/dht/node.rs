//! A DHT node: answers peers, and runs Coral's lookups, puts and gets over a [`Network`].
//!
//! - *get* walks toward the key in the most local level first and stops at the first node
//!   holding values; only when a level has none does it widen, starting the next level's lookup
//!   from the closest nodes already found (they are members of the wider cluster too), so
//!   widening continues from the same point of the ID space.
//! - *put* runs at every level. Its forward phase walks toward the key with probes and stops at
//!   the first node that is full and loaded; every node passed that was not both is kept, and
//!   the reverse phase stores at the closest of them, trying the next one out when a race made
//!   it refuse.
//! - *announce* puts and remembers, so [`Dht::maintain`] re-puts before the TTL runs out; that
//!   is how a restarted node (whose proxy announces again) reappears.
//!
//! Locks are never held across an await: every table access is a short critical section.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use tokio::time::Instant;

use super::answer::Tables;
use super::id::{ID_BITS, Id};
use super::locality::{ClusterId, Locality};
use super::lookup::Candidates;
use super::metrics::DhtMetrics;
use super::routing::{Contact, PeerView, Routing};
use super::store::{SloppyStore, StoreStats};
use super::wire::{Body, Packet, TimedValue, Value};
use super::{DhtParams, Network, RpcError};

/// One node of the hierarchical sloppy DHT.
pub struct Dht<N> {
    me: Contact,
    params: DhtParams,
    tables: Mutex<Tables>,
    announcements: Mutex<HashMap<(Id, SocketAddr), Announcement>>,
    rng: Mutex<SmallRng>,
    net: N,
    metrics: DhtMetrics,
}

#[derive(Clone, Debug)]
struct Announcement {
    value: Value,
    ttl: Duration,
    refresh_at: Instant,
}

/// What a find-node lookup found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FindOutcome {
    /// The closest nodes that answered, closest first (this node included when it is one).
    pub closest: Vec<Contact>,
    /// Hops of the lookup: the deepest hop at which a node answered.
    pub hops: u32,
}

/// What a get found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetOutcome {
    /// Some values under the key; empty when no level had any.
    pub values: Vec<TimedValue>,
    /// The level whose DHT answered, if any.
    pub level: Option<usize>,
    /// Hops summed over the levels searched.
    pub hops: u32,
}

/// What a put did at each level, most local first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOutcome {
    /// One entry per level the node is a member of.
    pub levels: Vec<LevelPut>,
}

/// What a put did at one level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelPut {
    /// The level.
    pub level: usize,
    /// The node that stored the value, if any did.
    pub stored_at: Option<Contact>,
    /// Whether the forward phase stopped at a full and loaded node before the closest one.
    pub stopped_early: bool,
    /// Hops of the forward phase.
    pub hops: u32,
}

impl PutOutcome {
    /// Whether every level stored the value somewhere.
    pub fn stored_everywhere(&self) -> bool {
        self.levels.iter().all(|level| level.stored_at.is_some())
    }
}

#[derive(Clone, Copy, Debug)]
enum Query {
    FindNode,
    Get,
    Probe { ttl_secs: u32 },
}

impl Query {
    fn kind(self) -> &'static str {
        match self {
            Query::FindNode => "find_node",
            Query::Get => "get",
            Query::Probe { .. } => "put",
        }
    }
}

struct LookupOutcome {
    candidates: Candidates,
    found: Option<(Vec<TimedValue>, u32)>,
    acceptable: Vec<Contact>,
    stopped_early: bool,
    hops: u32,
}

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

impl<N: Network> Dht<N> {
    /// A node with ID `me.id` listening at `me.addr`, placed at `locality`.
    pub fn new(
        me: Contact,
        locality: Locality,
        params: DhtParams,
        net: N,
        metrics: DhtMetrics,
    ) -> Self {
        let now = Instant::now();
        let seed = u64::from_be_bytes(me.id.0[..8].try_into().expect("8 bytes"));
        let stores = (0..locality.levels())
            .map(|level| SloppyStore::new(params.store, seed ^ level as u64))
            .collect();
        Self {
            me,
            params,
            tables: Mutex::new(Tables {
                routing: Routing::new(me.id, locality, params.k, now),
                stores,
            }),
            announcements: Mutex::new(HashMap::new()),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            net,
            metrics,
        }
    }

    /// This node's ID and address.
    pub fn contact(&self) -> Contact {
        self.me
    }

    /// The transport.
    pub fn network(&self) -> &N {
        &self.net
    }

    /// The metrics this node updates.
    pub fn metrics(&self) -> &DhtMetrics {
        &self.metrics
    }

    /// Number of levels, including the global one.
    pub fn levels(&self) -> usize {
        self.lock().routing.levels()
    }

    /// Number of live peers known at `level`.
    pub fn peers(&self, level: usize) -> usize {
        self.lock().routing.len(level)
    }

    /// Answers a request that arrived from `from`: the reply packet, echoing its request id.
    pub fn answer(&self, from: SocketAddr, request: &Packet) -> Packet {
        let sender = Contact {
            id: request.sender,
            addr: from,
        };
        self.metrics
            .rpcs_received
            .with_label_values(&[request.body.name()])
            .inc();
        let mut tables = self.lock();
        let body = tables.answer(&self.params, sender, request, Instant::now());
        Packet {
            request_id: request.request_id,
            sender: self.me.id,
            locality: tables.routing.locality().clone(),
            level: request.level,
            body,
        }
    }

    /// Looks up the nodes closest to `target` at `level`.
    pub async fn find_node(&self, level: usize, target: Id) -> FindOutcome {
        let outcome = self.lookup(level, target, Query::FindNode, &[]).await;
        FindOutcome {
            closest: outcome.candidates.closest_answered(self.params.k),
            hops: outcome.hops,
        }
    }

    /// Finds some values under `key`, most local level first.
    pub async fn get(&self, key: Id) -> GetOutcome {
        let mut seeds = Vec::new();
        let mut hops = 0;
        for level in self.member_levels() {
            let outcome = self.lookup(level, key, Query::Get, &seeds).await;
            hops += outcome.hops;
            if let Some((values, _)) = outcome.found {
                return GetOutcome {
                    values,
                    level: Some(level),
                    hops,
                };
            }
            seeds = outcome.candidates.closest_answered(self.params.k);
        }
        GetOutcome {
            hops,
            ..GetOutcome::default()
        }
    }

    /// Puts `value` under `key` for `ttl` at every level, most local first.
    pub async fn put(&self, key: Id, value: Value, ttl: Duration) -> PutOutcome {
        let ttl = ttl.min(self.params.max_ttl);
        let ttl_secs = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX).max(1);
        let mut seeds = Vec::new();
        let mut levels = Vec::new();
        for level in self.member_levels() {
            let outcome = self
                .lookup(level, key, Query::Probe { ttl_secs }, &seeds)
                .await;
            let stored_at = self
                .reverse_phase(level, key, &value, ttl_secs, &outcome)
                .await;
            levels.push(LevelPut {
                level,
                stored_at,
                stopped_early: outcome.stopped_early,
                hops: outcome.hops,
            });
            seeds = outcome.candidates.closest_answered(self.params.k);
        }
        PutOutcome { levels }
    }

    /// Puts `value` under `key` and keeps re-putting it every half `ttl` until withdrawn.
    pub async fn announce(&self, key: Id, value: Value, ttl: Duration) -> PutOutcome {
        self.announcements_lock().insert(
            (key, value.holder),
            Announcement {
                value: value.clone(),
                ttl,
                refresh_at: Instant::now() + ttl / 2,
            },
        );
        self.put(key, value, ttl).await
    }

    /// Stops re-putting what `holder` announced under `key`; stored copies expire by TTL.
    pub fn withdraw(&self, key: &Id, holder: SocketAddr) {
        self.announcements_lock().remove(&(*key, holder));
    }

    /// Joins the DHT through `bootstrap` addresses: pings them, then looks up this node's own
    /// ID at every level, global first, to fill the tables near it. Returns the live peers known globally.
    pub async fn join(&self, bootstrap: &[SocketAddr]) -> usize {
        self.ping_all(bootstrap.iter().map(|addr| (*addr, None)))
            .await;
        self.meet_neighbours().await;
        self.peers(0)
    }

    /// Looks up this node's own ID at every level, global first. A node heard directly enters
    /// the tables of every level it shares with this node, so before the local levels are
    /// searched, the global peers known only second-hand (whose clusters are unknown) are
    /// pinged: that is how a node finds its zone-mates through the global DHT.
    async fn meet_neighbours(&self) {
        for level in self.member_levels().into_iter().rev() {
            self.find_node(level, self.me.id).await;
            if level == 0 {
                let unverified = self.lock().routing.unverified(0);
                self.ping_all(unverified.into_iter().map(|c| (c.addr, Some(c.id))))
                    .await;
            }
        }
    }

    async fn ping_all(&self, peers: impl Iterator<Item = (SocketAddr, Option<Id>)>) {
        let pings: FuturesUnordered<_> = peers
            .filter(|(addr, _)| *addr != self.me.addr)
            .map(|(addr, id)| self.rpc(addr, id, 0, Body::Ping))
            .collect();
        pings.collect::<Vec<_>>().await;
    }

    /// One round of upkeep: rejoin when alone, refresh the tables (this node's own
    /// neighbourhood and one random bucket per level), re-put announcements that are due,
    /// and drop expired values.
    pub async fn maintain(&self, bootstrap: &[SocketAddr]) {
        if self.lock().routing.is_empty() {
            self.ping_all(bootstrap.iter().map(|addr| (*addr, None)))
                .await;
        }
        self.meet_neighbours().await;
        for level in self.member_levels() {
            let target = {
                let occupied = self.lock().routing.occupied_buckets(level);
                let deepest = occupied.last().copied().unwrap_or(0).min(ID_BITS - 1);
                let mut rng = self.rng.lock().expect("rng lock");
                let index = rand::Rng::random_range(&mut *rng, 0..=deepest);
                self.me.id.random_in_bucket(index, &mut *rng)
            };
            self.find_node(level, target).await;
        }
        let now = Instant::now();
        let due: Vec<_> = self
            .announcements_lock()
            .iter_mut()
            .filter(|(_, a)| a.refresh_at <= now)
            .map(|((key, _), a)| {
                a.refresh_at = now + a.ttl / 2;
                (*key, a.value.clone(), a.ttl)
            })
            .collect();
        for (key, value, ttl) in due {
            self.put(key, value, ttl).await;
        }
        let mut tables = self.lock();
        for store in &mut tables.stores {
            store.expire(now);
        }
    }

    /// The node's state for the admin page.
    pub fn snapshot(&self) -> DhtSnapshot {
        let now = Instant::now();
        let tables = self.lock();
        let levels = (0..tables.routing.levels())
            .map(|level| LevelSnapshot {
                level,
                cluster: tables.routing.locality().cluster(level),
                peers: tables
                    .routing
                    .view(level, now)
                    .into_iter()
                    .map(|peer| PeerSnapshot {
                        rtt_ms: self.net.rtt(peer.addr).map(|rtt| rtt.as_secs_f64() * 1e3),
                        peer,
                    })
                    .collect(),
                store: tables.stores[level].stats(now),
            })
            .collect();
        DhtSnapshot {
            id: self.me.id,
            addr: self.me.addr,
            announcements: self.announcements_lock().len(),
            levels,
        }
    }

    /// Sets the store and routing gauges to the current sizes (called before a scrape).
    pub fn update_gauges(&self) {
        let now = Instant::now();
        let tables = self.lock();
        for (level, store) in tables.stores.iter().enumerate() {
            let label = level.to_string();
            let stats = store.stats(now);
            self.metrics
                .store_values
                .with_label_values(&[&label])
                .set(stats.values as i64);
            self.metrics
                .store_keys
                .with_label_values(&[&label])
                .set(stats.keys as i64);
            self.metrics
                .routing_peers
                .with_label_values(&[&label])
                .set(tables.routing.len(level) as i64);
        }
    }

    /// Levels this node is a member of, most local first (level 0 always).
    fn member_levels(&self) -> Vec<usize> {
        let tables = self.lock();
        let locality = tables.routing.locality();
        (0..locality.levels())
            .rev()
            .filter(|&level| level == 0 || locality.cluster(level).is_some())
            .collect()
    }

    /// One iterative lookup at `level`, starting from this node, its table and `seeds`.
    async fn lookup(
        &self,
        level: usize,
        target: Id,
        query: Query,
        seeds: &[Contact],
    ) -> LookupOutcome {
        let mut candidates = Candidates::new(target, self.params.k);
        candidates.offer(self.me, 0);
        let now = Instant::now();
        for info in self
            .lock()
            .routing
            .closest(level, &target, self.params.k, now)
        {
            candidates.offer(
                Contact {
                    id: info.id,
                    addr: info.addr,
                },
                1,
            );
        }
        for seed in seeds {
            candidates.offer(*seed, 1);
        }
        let body = match query {
            Query::FindNode => Body::FindNode { target },
            Query::Get => Body::Get {
                key: target,
                max_values: self.params.values_per_get,
            },
            Query::Probe { ttl_secs } => Body::Probe {
                key: target,
                ttl_secs,
            },
        };
        let mut in_flight = FuturesUnordered::new();
        let mut found = None;
        let mut acceptable = Vec::new();
        let mut stopped_early = false;
        loop {
            while in_flight.len() < self.params.alpha {
                let Some((contact, hop)) = candidates.next_to_ask() else {
                    break;
                };
                let request = self.rpc(contact.addr, Some(contact.id), level, body.clone());
                in_flight.push(async move { (contact, hop, request.await) });
            }
            let Some((contact, hop, result)) = in_flight.next().await else {
                break;
            };
            let Ok(reply) = result else {
                candidates.failed(&contact);
                continue;
            };
            let contacts = match (query, reply.body) {
                (Query::FindNode, Body::Nodes { contacts }) => contacts,
                (Query::Get, Body::Values { values, contacts }) => {
                    if !values.is_empty() {
                        candidates.answered(&contact);
                        found = Some((values, hop));
                        break;
                    }
                    contacts
                }
                (
                    Query::Probe { .. },
                    Body::ProbeReply {
                        full,
                        loaded,
                        contacts,
                    },
                ) => {
                    if full && loaded {
                        stopped_early = true;
                        candidates.answered(&contact);
                        break;
                    }
                    acceptable.push(contact);
                    contacts
                }
                _ => {
                    candidates.failed(&contact);
                    continue;
                }
            };
            candidates.answered(&contact);
            let now = Instant::now();
            let mut tables = self.lock();
            for info in contacts {
                if info.id != self.me.id && tables.routing.heard_of(level, &info, now) {
                    candidates.offer(
                        Contact {
                            id: info.id,
                            addr: info.addr,
                        },
                        hop + 1,
                    );
                }
            }
        }
        let hops = found
            .as_ref()
            .map_or_else(|| candidates.deepest_answer(), |(_, hop)| *hop);
        let result = match (query, &found) {
            (Query::Get, None) => "not_found",
            _ => "ok",
        };
        self.metrics
            .lookups
            .with_label_values(&[query.kind(), result])
            .inc();
        self.metrics
            .lookup_hops
            .with_label_values(&[query.kind()])
            .observe(f64::from(hops));
        LookupOutcome {
            candidates,
            found,
            acceptable,
            stopped_early,
            hops,
        }
    }

    /// Stores at the closest acceptable node the forward phase passed, then the next one out.
    async fn reverse_phase(
        &self,
        level: usize,
        key: Id,
        value: &Value,
        ttl_secs: u32,
        outcome: &LookupOutcome,
    ) -> Option<Contact> {
        let mut stack = outcome.acceptable.clone();
        stack.sort_by_key(|contact| contact.id.distance(&key));
        for contact in stack.into_iter().take(self.params.k) {
            let store = Body::Store {
                key,
                value: TimedValue {
                    value: value.clone(),
                    ttl_secs,
                },
            };
            if let Ok(reply) = self.rpc(contact.addr, Some(contact.id), level, store).await
                && reply.body == (Body::Stored { accepted: true })
            {
                return Some(contact);
            }
        }
        None
    }

    /// Sends one request and records what it taught about the peer: an answer is hearing it
    /// directly, silence is a failure. Requests to this node itself are answered in place.
    async fn rpc(
        &self,
        to: SocketAddr,
        expected: Option<Id>,
        level: usize,
        body: Body,
    ) -> Result<Packet, RpcError> {
        let request = Packet {
            request_id: 0,
            sender: self.me.id,
            locality: self.lock().routing.locality().clone(),
            level: u8::try_from(level).expect("levels fit a byte"),
            body,
        };
        if to == self.me.addr {
            let mut tables = self.lock();
            let body = tables.answer(&self.params, self.me, &request, Instant::now());
            return Ok(Packet { body, ..request });
        }
        let kind = request.body.name();
        self.metrics.rpcs_sent.with_label_values(&[kind]).inc();
        let result = self.net.call(to, request).await;
        let now = Instant::now();
        let mut tables = self.lock();
        match &result {
            Ok(reply) => {
                if let Some(expected) = expected.filter(|id| *id != reply.sender) {
                    tables.routing.failed(&expected, now);
                }
                let responder = Contact {
                    id: reply.sender,
                    addr: to,
                };
                tables
                    .routing
                    .heard_directly(responder, &reply.locality, now);
            }
            Err(_) => {
                self.metrics.rpc_timeouts.with_label_values(&[kind]).inc();
                if let Some(expected) = expected {
                    tables.routing.failed(&expected, now);
                }
            }
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().expect("DHT tables lock poisoned")
    }

    fn announcements_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(Id, SocketAddr), Announcement>> {
        self.announcements
            .lock()
            .expect("announcements lock poisoned")
    }
}
