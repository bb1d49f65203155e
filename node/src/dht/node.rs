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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use super::answer::Tables;
use super::errand::{Errand, Walk};
use super::id::{ID_BITS, Id};
use super::locality::Locality;
use super::lookup::Candidates;
use super::metrics::DhtMetrics;
use super::path;
use super::routing::{Contact, Routing};
use super::snapshot::{DhtSnapshot, LevelSnapshot, PeerSnapshot};
use super::store::SloppyStore;
use super::trace;
use super::wire::{Body, ContactInfo, Packet, TimedValue, Value};
use super::{DhtParams, Network, RpcError};

/// One node of the hierarchical sloppy DHT.
pub struct Dht<N> {
    me: Contact,
    params: DhtParams,
    tables: Mutex<Tables>,
    announcements: Mutex<BTreeMap<(Id, SocketAddr), Announcement>>,
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

/// Announcements are put again at half their TTL, or after [`ANNOUNCE_RETRY`] when a put
/// did not store at every level.
pub const ANNOUNCE_RETRY: Duration = Duration::from_secs(10);

fn refresh_after(ttl: Duration, outcome: &PutOutcome) -> Duration {
    if outcome.stored_everywhere() {
        ttl / 2
    } else {
        ANNOUNCE_RETRY.min(ttl / 2)
    }
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
    /// The value another holder stored first at that node, if any: the one to defer to.
    pub incumbent: Option<Value>,
    /// Whether the forward phase stopped at a full and loaded node before the closest one.
    pub stopped_early: bool,
    /// Hops of the forward phase.
    pub hops: u32,
}

impl PutOutcome {
    /// The incumbent named at the global level, which every node's puts share: of several
    /// nodes putting the same key at once, exactly one gets `None` when their lookups agree
    /// on the closest node.
    pub fn global_incumbent(&self) -> Option<&Value> {
        self.levels
            .iter()
            .find(|level| level.level == 0)
            .and_then(|level| level.incumbent.as_ref())
    }

    /// Whether every level stored the value somewhere.
    pub fn stored_everywhere(&self) -> bool {
        self.levels.iter().all(|level| level.stored_at.is_some())
    }
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
            announcements: Mutex::new(BTreeMap::new()),
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

    /// Number of live peers known at `level`.
    pub fn peers(&self, level: usize) -> usize {
        self.lock().routing.len(level)
    }

    /// Answers a request that arrived from `from`: the reply packet, echoing its request id and
    /// trace. A traced request is logged (debug) with what it was answered.
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
        let locality = tables.routing.locality().clone();
        drop(tables);
        if !request.trace.is_empty() {
            tracing::debug!(
                request_id = %request.trace,
                node = %self.me.addr,
                %from,
                asked = request.body.name(),
                answered = body.name(),
                "answered a DHT request"
            );
        }
        Packet {
            request_id: request.request_id,
            sender: self.me.id,
            locality,
            level: request.level,
            trace: request.trace.clone(),
            body,
        }
    }

    /// Whether the node at `to` answers a ping; the answer (or silence) also updates the
    /// routing tables as any request's does.
    pub async fn ping(&self, to: SocketAddr) -> bool {
        matches!(
            self.rpc(to, None, 0, Body::Ping).await,
            Ok(Packet {
                body: Body::Pong,
                ..
            })
        )
    }

    /// Looks up the nodes closest to `target` at `level`.
    pub async fn find_node(&self, level: usize, target: Id) -> FindOutcome {
        let (candidates, hops) = self.lookup(level, target).await;
        FindOutcome {
            closest: candidates.closest_answered(self.params.k),
            hops,
        }
    }

    /// Finds some values under `key`, most local level first.
    pub async fn get(&self, key: Id) -> GetOutcome {
        let mut start = self.me;
        let mut hops = 0;
        for level in self.member_levels() {
            let walk = self.walk(level, key, Errand::Get, start).await;
            hops += walk.hops;
            if let Some(values) = walk.found {
                return GetOutcome {
                    values,
                    level: Some(level),
                    hops,
                };
            }
            start = walk.closest_visited(&key).unwrap_or(self.me);
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
        let mut start = self.me;
        let mut levels = Vec::new();
        for level in self.member_levels() {
            let walk = self
                .walk(level, key, Errand::Probe { ttl_secs }, start)
                .await;
            let (stored_at, incumbent) = self
                .reverse_phase(level, key, &value, ttl_secs, &walk)
                .await;
            levels.push(LevelPut {
                level,
                stored_at,
                incumbent,
                stopped_early: walk.stopped_early,
                hops: walk.hops,
            });
            start = walk.closest_visited(&key).unwrap_or(self.me);
        }
        PutOutcome { levels }
    }

    /// Puts `value` under `key` and keeps re-putting it every half `ttl` (sooner when a put
    /// misses a level) until withdrawn. The TTL is kept between 2 s and `max_ttl`.
    pub async fn announce(&self, key: Id, value: Value, ttl: Duration) -> PutOutcome {
        let ttl = ttl.clamp(Duration::from_secs(2), self.params.max_ttl);
        let outcome = self.put(key, value.clone(), ttl).await;
        let refresh_at = Instant::now() + refresh_after(ttl, &outcome);
        self.announcements_lock().insert(
            (key, value.holder),
            Announcement {
                value,
                ttl,
                refresh_at,
            },
        );
        outcome
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
    /// and drop expired values. Announcements may fall due between rounds: callers that keep
    /// short TTLs also call [`Dht::republish_due`] at [`Dht::next_republish`].
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
        self.republish_due().await;
        let now = Instant::now();
        let mut tables = self.lock();
        for store in &mut tables.stores {
            store.expire(now);
        }
    }

    /// Re-puts every announcement whose refresh time has come.
    pub async fn republish_due(&self) {
        let now = Instant::now();
        let due: Vec<_> = self
            .announcements_lock()
            .iter()
            .filter(|(_, a)| a.refresh_at <= now)
            .map(|((key, _), a)| (*key, a.value.clone(), a.ttl))
            .collect();
        for (key, value, ttl) in due {
            let outcome = self.put(key, value.clone(), ttl).await;
            let refresh_at = Instant::now() + refresh_after(ttl, &outcome);
            if let Some(announcement) = self.announcements_lock().get_mut(&(key, value.holder)) {
                announcement.refresh_at = refresh_at;
            }
        }
    }

    /// When the next announcement is due for re-putting, if any.
    pub fn next_republish(&self) -> Option<Instant> {
        self.announcements_lock()
            .values()
            .map(|a| a.refresh_at)
            .min()
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

    /// One iterative Kademlia lookup for the nodes closest to `target` at `level`, from this
    /// node and its own table.
    async fn lookup(&self, level: usize, target: Id) -> (Candidates, u32) {
        let mut candidates = self.seed(level, target);
        let mut walk = Walk::default();
        self.converge(level, Errand::FindNode, &mut candidates, &mut walk)
            .await;
        self.record_lookup("find_node", "ok", walk.hops);
        (candidates, walk.hops)
    }

    /// Candidates for a lookup of `target` at `level`: this node and the closest it knows.
    fn seed(&self, level: usize, target: Id) -> Candidates {
        let mut candidates = Candidates::new(target, self.params.k);
        candidates.offer(self.me, 0);
        let now = Instant::now();
        for info in self
            .lock()
            .routing
            .closest(level, &target, self.params.k, now)
        {
            candidates.offer(Contact::from(&info), 1);
        }
        candidates
    }

    /// Drives an iterative lookup until the `k` closest candidates have answered, with
    /// `alpha` requests in flight, doing `errand` at each node: a get stops at the first node
    /// holding values, a put's forward phase at the first node that is full and loaded.
    async fn converge(
        &self,
        level: usize,
        errand: Errand,
        candidates: &mut Candidates,
        walk: &mut Walk,
    ) {
        let target = candidates.target();
        let body = errand.request(target, target, self.params.values_per_get);
        let mut in_flight = FuturesUnordered::new();
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
            let Some(contacts) = result
                .ok()
                .and_then(|reply| walk.record(errand, contact, hop, reply.body))
            else {
                if walk.is_over() {
                    candidates.answered(&contact);
                    break;
                }
                candidates.failed(&contact);
                continue;
            };
            candidates.answered(&contact);
            for next in self.learn(level, &contacts) {
                candidates.offer(next, hop + 1);
            }
        }
        walk.hops = walk.hops.max(candidates.deepest_answer());
    }

    /// Walks from `start` toward `key` at `level`, a few bits per hop (see [`super::path`]),
    /// doing `errand` at every node. A node that does not answer is replaced by the next best
    /// candidate of the previous answer. Once no known node shares more leading bits with the
    /// key, the walk finishes as an iterative lookup of the nodes closest to the key, which
    /// copes with routing tables that do not know every neighbour.
    async fn walk(&self, level: usize, key: Id, errand: Errand, start: Contact) -> Walk {
        let bits = self.params.bits_per_hop;
        let mut walk = Walk::default();
        let mut current = start;
        let mut backups: Vec<Contact> = Vec::new();
        let mut hop = 0;
        let mut candidates = Candidates::new(key, self.params.k);
        while bits > 0 && !walk.is_over() {
            let prefix = current.id.distance(&key).leading_zeros();
            let toward = path::intermediate_target(&key, &self.me.id, prefix + bits);
            let body = errand.request(key, toward, self.params.values_per_get);
            let reply = self.rpc(current.addr, Some(current.id), level, body).await;
            let Some(contacts) = reply
                .ok()
                .and_then(|reply| walk.record(errand, current, hop, reply.body))
            else {
                if walk.is_over() || backups.is_empty() {
                    break;
                }
                current = backups.remove(0);
                continue;
            };
            let learned = self.learn(level, &contacts);
            let hops = path::next_hops(&learned, &current, &key, &toward);
            let Some((next, rest)) = hops.split_first() else {
                // The answer lists the nodes closest to the key: converge on them from here.
                candidates.offer(current, hop);
                candidates.answered(&current);
                for contact in learned {
                    candidates.offer(contact, hop + 1);
                }
                break;
            };
            current = *next;
            backups = rest.to_vec();
            hop += 1;
        }
        if !walk.is_over() {
            // This node's own closest contacts join the last stretch: one node's answer may
            // miss a neighbour of the key that the table here knows.
            for contact in self.seed(level, key).closest(self.params.k) {
                candidates.offer(contact, hop + 1);
            }
            if bits == 0 {
                candidates.offer(start, 0);
            }
            self.converge(level, errand, &mut candidates, &mut walk)
                .await;
        }
        let result = match (errand, &walk.found) {
            (Errand::Get, None) => "not_found",
            _ => "ok",
        };
        self.record_lookup(errand.kind(), result, walk.hops);
        walk
    }

    /// Records second-hand news of `contacts` at `level`; returns those not vetoed.
    fn learn(&self, level: usize, contacts: &[ContactInfo]) -> Vec<Contact> {
        let now = Instant::now();
        let mut tables = self.lock();
        contacts
            .iter()
            .filter(|info| info.id != self.me.id && tables.routing.heard_of(level, info, now))
            .map(Contact::from)
            .collect()
    }

    fn record_lookup(&self, kind: &str, result: &str, hops: u32) {
        self.metrics
            .lookups
            .with_label_values(&[kind, result])
            .inc();
        self.metrics
            .lookup_hops
            .with_label_values(&[kind])
            .observe(f64::from(hops));
    }

    /// Stores at the `replicas` closest acceptable nodes the forward phase passed, going
    /// further back when a race made one refuse. Returns the closest node that stored it,
    /// and the incumbent that node named.
    async fn reverse_phase(
        &self,
        level: usize,
        key: Id,
        value: &Value,
        ttl_secs: u32,
        walk: &Walk,
    ) -> (Option<Contact>, Option<Value>) {
        let mut acceptable = walk.acceptable.clone();
        acceptable.sort_by_key(|contact| contact.id.distance(&key));
        acceptable.dedup();
        let mut stored = Vec::new();
        let mut first_incumbent = None;
        for contact in acceptable.iter().take(self.params.k) {
            let store = Body::Store {
                key,
                value: TimedValue {
                    value: value.clone(),
                    ttl_secs,
                },
            };
            if let Ok(reply) = self.rpc(contact.addr, Some(contact.id), level, store).await
                && let Body::Stored {
                    accepted: true,
                    incumbent,
                } = reply.body
            {
                if stored.is_empty() {
                    first_incumbent = incumbent.map(|timed| timed.value);
                }
                stored.push(*contact);
                if stored.len() >= self.params.replicas {
                    break;
                }
            }
        }
        (stored.first().copied(), first_incumbent)
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
            trace: trace::current(),
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
            Err(RpcError::Timeout(_)) => {
                self.metrics.rpc_timeouts.with_label_values(&[kind]).inc();
                if let Some(expected) = expected {
                    tables.routing.failed(&expected, now);
                }
            }
            // This node could not send (too many requests in flight, a socket error): that
            // says nothing about the peer, which stays in the tables.
            Err(RpcError::Send { .. }) => {}
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().expect("DHT tables lock poisoned")
    }

    fn announcements_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(Id, SocketAddr), Announcement>> {
        self.announcements
            .lock()
            .expect("announcements lock poisoned")
    }
}
