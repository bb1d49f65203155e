//! The DHT in the simulator at 1,000 nodes (the benchmark runs 10,000): virtual time, the real
//! routing and storage code.

use std::time::Duration;

use coral_node::dht::sim::Geography;
use coral_node::dht::sim::scenario::{GetSample, SimCluster};
use coral_node::dht::{DhtParams, Id};

const NODES: usize = 1000;
const GEOGRAPHY: Geography = Geography {
    regions: 2,
    zones_per_region: 3,
};
const HOUR: Duration = Duration::from_secs(3600);

async fn cluster(params: DhtParams) -> SimCluster {
    SimCluster::build(GEOGRAPHY, NODES, params, 7).await
}

fn keys(count: usize) -> Vec<Id> {
    (0..count)
        .map(|n| Id::of(format!("http://origin-{n}.example/").as_bytes()))
        .collect()
}

fn fraction(samples: &[GetSample], pick: impl Fn(&GetSample) -> bool) -> f64 {
    samples.iter().filter(|s| pick(s)).count() as f64 / samples.len() as f64
}

#[tokio::test(start_paused = true)]
async fn lookups_find_the_closest_node_in_at_most_log2_n_hops() {
    let mut cluster = cluster(DhtParams::default()).await;
    let (mut hops, exact) = cluster.find_nodes(300).await;
    hops.sort_unstable();
    let log2_n = (NODES as f64).log2();
    assert!(
        f64::from(hops[hops.len() * 99 / 100]) <= log2_n,
        "p99 hops {hops:?}"
    );
    assert!(
        exact >= 291,
        "{exact} of 300 lookups found the closest live node"
    );
}

#[tokio::test(start_paused = true)]
async fn gets_find_values_and_prefer_a_holder_in_the_requesters_zone() {
    let mut cluster = cluster(DhtParams::default()).await;
    let keys = keys(100);
    let holders = cluster.announce(&keys, 3, HOUR).await;
    let samples = cluster.gets(&keys, &holders, 500).await;
    assert!(fraction(&samples, |s| s.found) >= 0.99);
    let with_zone_holder: Vec<_> = samples
        .iter()
        .filter(|s| s.zone_holder_exists)
        .cloned()
        .collect();
    assert!(with_zone_holder.len() > 100);
    let in_zone = fraction(&with_zone_holder, |s| s.answered_in_zone);
    assert!(in_zone >= 0.9, "only {in_zone} answered in the zone");
}

#[tokio::test(start_paused = true)]
async fn gets_keep_finding_live_holders_while_a_tenth_of_the_nodes_fail_each_minute() {
    let mut cluster = cluster(DhtParams::default()).await;
    let keys = keys(100);
    let holders = cluster.announce(&keys, 3, Duration::from_secs(300)).await;
    cluster.start_maintenance();
    let mut samples = Vec::new();
    for _ in 0..3 {
        samples.extend(cluster.churn_minute(0.1, &keys, &holders, 200).await);
    }
    // A value outlives its holder until its TTL runs out, so some gets name only dead
    // holders; the proxy tries the next holder or the origin then.
    let found = fraction(&samples, |s| s.found);
    let live = fraction(&samples, |s| s.live_holder);
    assert!(found >= 0.97, "only {found} of gets found a value");
    assert!(live >= 0.9, "only {live} of gets found a live holder");
}

#[tokio::test(start_paused = true)]
async fn a_hot_key_spills_over_instead_of_melting_the_closest_node() {
    let never_loaded = DhtParams {
        store: coral_node::dht::store::StoreLimits {
            loaded_per_minute: usize::MAX - 1,
            ..DhtParams::default().store
        },
        ..DhtParams::default()
    };
    let strict = cluster(never_loaded)
        .await
        .hot_key(300, Duration::from_secs(60))
        .await;
    let sloppy = cluster(DhtParams::default())
        .await
        .hot_key(300, Duration::from_secs(60))
        .await;
    assert_eq!(strict.stopped_early, 0);
    assert!(sloppy.stopped_early > 100, "{sloppy:?}");
    assert!(
        sloppy.global_storers > strict.global_storers,
        "{sloppy:?} vs {strict:?}"
    );
    assert!(
        sloppy.requests_per_node[0] * 2 < strict.requests_per_node[0],
        "hottest node: {} requests sloppy, {} strict",
        sloppy.requests_per_node[0],
        strict.requests_per_node[0]
    );
}

#[tokio::test(start_paused = true)]
async fn announcements_are_put_again_before_they_expire_and_plain_puts_expire() {
    let mut cluster = SimCluster::build(GEOGRAPHY, 200, DhtParams::default(), 11).await;
    let nodes = cluster.live_nodes();
    let (announced, plain) = (Id::of(b"http://o/announced"), Id::of(b"http://o/plain"));
    let ttl = Duration::from_secs(300);
    let value = |n: usize| coral_node::dht::Value {
        holder: nodes[n].contact().addr,
        meta: b"complete".to_vec(),
    };
    assert!(
        nodes[0]
            .announce(announced, value(0), ttl)
            .await
            .stored_everywhere()
    );
    assert!(nodes[1].put(plain, value(1), ttl).await.stored_everywhere());
    cluster.start_maintenance();
    tokio::time::sleep(Duration::from_secs(400)).await;
    assert_eq!(nodes[50].get(announced).await.values[0].value, value(0));
    assert!(
        nodes[50].get(plain).await.values.is_empty(),
        "the plain put expired"
    );
}
