//! The DHT simulator at scale: `cargo bench -p coral-node --bench dht_sim` (10,000 nodes;
//! `CORAL_SIM_NODES` changes that). Prints the Markdown tables recorded in BENCHMARKS.md.
//!
//! Everything runs on one thread with paused Tokio time, so simulated minutes take as long
//! as the work in them, and a seed gives the same run.

use std::time::{Duration, Instant as WallClock};

use coral_node::dht::sim::Geography;
use coral_node::dht::sim::scenario::{GetSample, SimCluster};
use coral_node::dht::store::StoreLimits;
use coral_node::dht::{DhtParams, Id};

const GEOGRAPHY: Geography = Geography {
    regions: 3,
    zones_per_region: 4,
};
const SEED: u64 = 2004;

fn main() {
    let nodes = std::env::var("CORAL_SIM_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(run(nodes));
}

async fn run(nodes: usize) {
    let started = WallClock::now();
    println!(
        "{nodes} nodes, {} regions x {} zones, k={}, alpha={}, l={}, beta={}/min, seed {SEED}\n",
        GEOGRAPHY.regions,
        GEOGRAPHY.zones_per_region,
        DhtParams::default().k,
        DhtParams::default().alpha,
        DhtParams::default().store.values_per_key,
        DhtParams::default().store.loaded_per_minute
    );
    let mut cluster = SimCluster::build(GEOGRAPHY, nodes, DhtParams::default(), SEED).await;
    println!("| measure | result |\n|---|---|");
    row(
        "build and join (wall clock)",
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );

    let (mut hops, exact) = cluster.find_nodes(2000).await;
    hops.sort_unstable();
    row(
        "find-node hops, median / p99 / max (2,000 lookups)",
        format!(
            "{} / {} / {}",
            percentile(&hops, 50),
            percentile(&hops, 99),
            hops[hops.len() - 1]
        ),
    );
    row("log2(N)", format!("{:.1}", (nodes as f64).log2()));
    row(
        "lookups that found the true closest live node",
        percent(exact, 2000),
    );

    let keys: Vec<Id> = (0..1000)
        .map(|n| Id::of(format!("http://origin-{n}.example/").as_bytes()))
        .collect();
    let holders = cluster.announce(&keys, 3, Duration::from_secs(300)).await;
    let samples = cluster.gets(&keys, &holders, 5000).await;
    let mut get_hops: Vec<u32> = samples.iter().map(|s| s.hops).collect();
    get_hops.sort_unstable();
    row(
        "gets that found a value (1,000 keys x 3 holders, 5,000 gets)",
        share(&samples, |s| s.found),
    );
    row(
        "get hops summed over levels, median / p99",
        format!(
            "{} / {}",
            percentile(&get_hops, 50),
            percentile(&get_hops, 99)
        ),
    );
    let zone: Vec<_> = samples
        .iter()
        .filter(|s| s.zone_holder_exists)
        .cloned()
        .collect();
    row(
        &format!(
            "gets answered in the requester's zone when a holder is there ({} gets)",
            zone.len()
        ),
        share(&zone, |s| s.answered_in_zone),
    );

    cluster.start_maintenance();
    for minute in 1..=5 {
        let wall = WallClock::now();
        let samples = cluster.churn_minute(0.1, &keys, &holders, 1000).await;
        row(
            &format!(
                "churn minute {minute}: 10% of nodes fail (and as many join); gets finding a live holder / any value"
            ),
            format!(
                "{} / {} ({} gets, {:.0} s wall)",
                share(&samples, |s| s.live_holder),
                share(&samples, |s| s.found),
                samples.len(),
                wall.elapsed().as_secs_f64()
            ),
        );
    }
    drop(cluster);

    let strict = DhtParams {
        store: StoreLimits {
            loaded_per_minute: usize::MAX - 1,
            ..DhtParams::default().store
        },
        ..DhtParams::default()
    };
    let kademlia = DhtParams {
        bits_per_hop: 0,
        ..DhtParams::default()
    };
    let mut reports = Vec::new();
    for (name, params) in [
        ("no spill-over (beta infinite), b=1", strict),
        ("spill-over, Kademlia routing (b=0)", kademlia),
        ("spill-over, b=1 (default)", DhtParams::default()),
    ] {
        let mut cluster = SimCluster::build(GEOGRAPHY, nodes, params, SEED).await;
        let report = cluster.hot_key(1000, Duration::from_secs(60)).await;
        row(
            &format!(
                "hot key, 1,000 puts in one minute, {name}: requests/min at the 5 hottest nodes"
            ),
            format!("{:?}", &report.requests_per_node[..5]),
        );
        row(
            &format!("hot key, {name}: nodes storing it (global level) / puts stopped early"),
            format!("{} / {}", report.global_storers, report.stopped_early),
        );
        reports.push(report);
    }
    for (index, name) in [(1, "Kademlia routing"), (2, "b=1")] {
        row(
            &format!("hottest node's load, spill-over with {name} / no spill-over"),
            format!(
                "{:.3}",
                reports[index].requests_per_node[0] as f64 / reports[0].requests_per_node[0] as f64
            ),
        );
    }
    row(
        "total wall clock",
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );
}

fn row(measure: &str, result: String) {
    println!("| {measure} | {result} |");
}

fn percentile(sorted: &[u32], p: usize) -> u32 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn percent(count: usize, of: usize) -> String {
    format!("{:.1}%", 100.0 * count as f64 / of as f64)
}

fn share(samples: &[GetSample], pick: impl Fn(&GetSample) -> bool) -> String {
    percent(samples.iter().filter(|s| pick(s)).count(), samples.len())
}
