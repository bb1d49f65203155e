//! The measurements the simulator makes, shared by the benchmark (which reports them at
//! 10,000 nodes) and the tests (which check them at a smaller scale).
//!
//! Every scenario runs on a [`SimCluster`]: nodes dealt round-robin over the zones of a
//! [`Geography`], each joined through a random earlier node, then one upkeep round each.
//! Run them on a current-thread runtime with paused time.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Geography, SimNetwork, SimWorld};
use crate::dht::udp::UdpSettings;
use crate::dht::{Dht, DhtParams, Id, Value};

/// How many joins, puts or gets run at once while setting up and measuring.
const CONCURRENCY: usize = 128;
/// Time between two upkeep rounds of one node.
pub const MAINTAIN_EVERY: Duration = Duration::from_secs(60);

/// A simulated Coral cluster.
pub struct SimCluster {
    /// The world the nodes live in.
    pub world: Arc<SimWorld>,
    /// Where nodes are.
    pub geography: Geography,
    params: DhtParams,
    rng: SmallRng,
    next_index: usize,
    maintenance: JoinSet<()>,
}

/// Result of one get in [`SimCluster::gets`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetSample {
    /// The get returned at least one value.
    pub found: bool,
    /// One of the returned holders is alive.
    pub live_holder: bool,
    /// Hops summed over the levels searched.
    pub hops: u32,
    /// A holder of the key was in the requester's zone.
    pub zone_holder_exists: bool,
    /// The first value returned names a holder in the requester's zone.
    pub answered_in_zone: bool,
}

/// Result of [`SimCluster::hot_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotKeyReport {
    /// Requests about the key received by each node during the put window, most first.
    pub requests_per_node: Vec<u64>,
    /// Distinct nodes that stored the value at the global level.
    pub global_storers: usize,
    /// Puts whose forward phase stopped at a full and loaded node (any level).
    pub stopped_early: usize,
}

impl SimCluster {
    /// Builds and joins a cluster of `nodes` nodes.
    pub async fn build(geography: Geography, nodes: usize, params: DhtParams, seed: u64) -> Self {
        let settings = UdpSettings::default();
        let dead_peer_cost = (0..=settings.retries)
            .map(|attempt| (settings.initial_rto * 2u32.pow(attempt)).min(settings.max_rto))
            .sum();
        let mut cluster = Self {
            world: SimWorld::new(geography.latency_model(), dead_peer_cost),
            geography,
            params,
            rng: SmallRng::seed_from_u64(seed),
            next_index: 0,
            maintenance: JoinSet::new(),
        };
        cluster.add_node();
        cluster.join_new(nodes - 1).await;
        let all: Vec<_> = cluster.live_nodes();
        run_all(all.iter().map(|node| node.maintain(&[]))).await;
        cluster
    }

    /// Adds `count` new nodes, each joining through a random node already there.
    pub async fn join_new(&mut self, count: usize) {
        let mut done = 0;
        while done < count {
            let batch = (count - done).min(CONCURRENCY);
            let joins: Vec<_> = (0..batch)
                .map(|_| {
                    let seed = self.random_live();
                    (self.add_node(), seed)
                })
                .collect();
            run_all(
                joins
                    .iter()
                    .map(|(node, seed)| node.join(std::slice::from_ref(seed))),
            )
            .await;
            if self.maintenance_running() {
                for (node, _) in &joins {
                    self.spawn_maintenance(node.clone());
                }
            }
            done += batch;
        }
    }

    /// Starts every live node's upkeep loop (one round per [`MAINTAIN_EVERY`], jittered).
    pub fn start_maintenance(&mut self) {
        for node in self.live_nodes() {
            self.spawn_maintenance(node);
        }
    }

    /// Kills `count` random live nodes.
    pub fn kill_random(&mut self, count: usize) {
        let mut alive = self.world.alive();
        alive.shuffle(&mut self.rng);
        for addr in alive.into_iter().take(count) {
            self.world.kill(&addr);
        }
    }

    /// Looks up `count` random IDs from random nodes at the global level. Returns the hops of
    /// each lookup and how many found the ID's true closest live node.
    pub async fn find_nodes(&mut self, count: usize) -> (Vec<u32>, usize) {
        let lookups: Vec<_> = (0..count)
            .map(|_| (self.random_node(), Id::random(&mut self.rng)))
            .collect();
        let alive: Vec<Id> = self
            .world
            .alive()
            .iter()
            .map(|addr| Id::of(addr.to_string().as_bytes()))
            .collect();
        let alive = &alive;
        let results = run_all(lookups.iter().map(|(node, target)| async move {
            let found = node.find_node(0, *target).await;
            let truth = alive.iter().min_by_key(|id| id.distance(target)).copied();
            (found.hops, found.closest.first().map(|c| c.id) == truth)
        }))
        .await;
        let exact = results.iter().filter(|(_, exact)| *exact).count();
        (results.into_iter().map(|(hops, _)| hops).collect(), exact)
    }

    /// Has `holders_per_key` random nodes announce each of `keys` for `ttl`. Returns the holders.
    pub async fn announce(
        &mut self,
        keys: &[Id],
        holders_per_key: usize,
        ttl: Duration,
    ) -> Vec<Vec<SocketAddr>> {
        let plan: Vec<(Id, Vec<Arc<Dht<SimNetwork>>>)> = keys
            .iter()
            .map(|key| {
                let nodes = self.live_nodes();
                let holders = nodes
                    .choose_multiple(&mut self.rng, holders_per_key)
                    .cloned()
                    .collect();
                (*key, holders)
            })
            .collect();
        run_all(plan.iter().flat_map(|(key, holders)| {
            holders
                .iter()
                .map(move |holder| holder.announce(*key, holder_value(holder), ttl))
        }))
        .await;
        plan.into_iter()
            .map(|(_, holders)| holders.iter().map(|h| h.contact().addr).collect())
            .collect()
    }

    /// Runs `count` gets, each from a random live node for a random key whose holders include
    /// a live one.
    pub async fn gets(
        &mut self,
        keys: &[Id],
        holders: &[Vec<SocketAddr>],
        count: usize,
    ) -> Vec<GetSample> {
        let wanted: Vec<usize> = (0..keys.len())
            .filter(|&k| holders[k].iter().any(|h| self.world.node(h).is_some()))
            .collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let plan: Vec<_> = (0..count)
            .map(|_| {
                (
                    self.random_node(),
                    *wanted.choose(&mut self.rng).expect("not empty"),
                )
            })
            .collect();
        let geography = self.geography;
        let world = self.world.clone();
        run_all(plan.iter().map(|(node, k)| {
            let world = world.clone();
            async move {
                let got = node.get(keys[*k]).await;
                let zone_of = |addr: &SocketAddr| geography.zone(Geography::index(*addr));
                let own_zone = zone_of(&node.contact().addr);
                GetSample {
                    found: !got.values.is_empty(),
                    live_holder: got
                        .values
                        .iter()
                        .any(|v| world.node(&v.value.holder).is_some()),
                    hops: got.hops,
                    zone_holder_exists: holders[*k]
                        .iter()
                        .any(|h| zone_of(h) == own_zone && world.node(h).is_some()),
                    answered_in_zone: got
                        .values
                        .first()
                        .is_some_and(|v| zone_of(&v.value.holder) == own_zone),
                }
            }
        }))
        .await
    }

    /// One simulated minute of churn in ten slices: each slice, `fail_fraction / 10` of the
    /// live nodes die and as many new ones join, then a tenth of `gets` run. Upkeep loops
    /// (started with [`Self::start_maintenance`]) keep running throughout.
    pub async fn churn_minute(
        &mut self,
        fail_fraction: f64,
        keys: &[Id],
        holders: &[Vec<SocketAddr>],
        gets: usize,
    ) -> Vec<GetSample> {
        const SLICES: u32 = 10;
        let mut samples = Vec::new();
        for _ in 0..SLICES {
            let slice_end = Instant::now() + Duration::from_secs(60) / SLICES;
            let failing = (self.world.alive_count() as f64 * fail_fraction / f64::from(SLICES))
                .round() as usize;
            self.kill_random(failing);
            self.join_new(failing).await;
            samples.extend(self.gets(keys, holders, gets / SLICES as usize).await);
            tokio::time::sleep_until(slice_end).await;
        }
        samples
    }

    /// Has `putters` random nodes put one key, spread evenly over `window`, and counts the
    /// requests about that key each node receives meanwhile.
    pub async fn hot_key(&mut self, putters: usize, window: Duration) -> HotKeyReport {
        let key = Id::of(b"http://hot.example/flash-crowd");
        self.world.track_key(key);
        let nodes = self.live_nodes();
        let chosen: Vec<_> = nodes
            .choose_multiple(&mut self.rng, putters)
            .cloned()
            .collect();
        let mut puts = JoinSet::new();
        for (i, node) in chosen.into_iter().enumerate() {
            let delay = window * u32::try_from(i).expect("few putters")
                / u32::try_from(putters).expect("few putters");
            puts.spawn(async move {
                tokio::time::sleep(delay).await;
                node.put(key, holder_value(&node), Duration::from_secs(3600))
                    .await
            });
        }
        let mut storers = HashSet::new();
        let mut stopped_early = 0;
        while let Some(outcome) = puts.join_next().await {
            let outcome = outcome.expect("put task");
            stopped_early += usize::from(outcome.levels.iter().any(|l| l.stopped_early));
            if let Some(global) = outcome.levels.iter().find(|l| l.level == 0) {
                storers.extend(global.stored_at.map(|c| c.addr));
            }
        }
        let mut requests_per_node: Vec<u64> = self.world.tracked_requests().into_values().collect();
        requests_per_node.sort_unstable_by(|a, b| b.cmp(a));
        HotKeyReport {
            requests_per_node,
            global_storers: storers.len(),
            stopped_early,
        }
    }

    /// Every live node.
    pub fn live_nodes(&self) -> Vec<Arc<Dht<SimNetwork>>> {
        self.world
            .alive()
            .iter()
            .filter_map(|addr| self.world.node(addr))
            .collect()
    }

    fn add_node(&mut self) -> Arc<Dht<SimNetwork>> {
        let index = self.next_index;
        self.next_index += 1;
        self.world.add(
            Geography::addr(index),
            self.geography.locality(index),
            self.params,
        )
    }

    fn random_live(&mut self) -> SocketAddr {
        self.world.random_alive(&mut self.rng).expect("a live node")
    }

    fn random_node(&mut self) -> Arc<Dht<SimNetwork>> {
        let addr = self.random_live();
        self.world.node(&addr).expect("alive")
    }

    fn maintenance_running(&self) -> bool {
        !self.maintenance.is_empty()
    }

    fn spawn_maintenance(&mut self, node: Arc<Dht<SimNetwork>>) {
        let world = Arc::downgrade(&self.world);
        let first = MAINTAIN_EVERY.mul_f64(self.rng.random::<f64>());
        let mut rng = SmallRng::seed_from_u64(self.rng.random());
        self.maintenance.spawn(async move {
            let mut next = Instant::now() + first;
            loop {
                tokio::time::sleep_until(next).await;
                let addr = node.contact().addr;
                let Some(world) = world.upgrade().filter(|w| w.node(&addr).is_some()) else {
                    return;
                };
                let bootstrap: Vec<_> = world.random_alive(&mut rng).into_iter().collect();
                drop(world);
                node.maintain(&bootstrap).await;
                next += MAINTAIN_EVERY;
            }
        });
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.maintenance.abort_all();
    }
}

/// The value a node puts for itself: its own address as the holder.
fn holder_value(node: &Dht<SimNetwork>) -> Value {
    Value {
        holder: node.contact().addr,
        meta: b"complete".to_vec(),
    }
}

/// Runs futures with bounded concurrency, returning their outputs in completion order.
async fn run_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    stream::iter(futures)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}
