//! Which proxies a client is given: the healthy ones nearest to it, spread by load, and the
//! same ones every time for the same client network (so caches and connections stay warm).
//!
//! Nearest means sharing the client's most local level (the zone), else the next (the
//! region), else any. Only the nearest non-empty level is used: mixing in farther proxies
//! would send a share of the client's traffic far for no gain while a near one is up.
//! Within the level, proxies are ranked by weighted rendezvous hashing of (client network,
//! proxy): every client network gets its own stable order, lightly loaded proxies come first
//! more often (weight `1 − load`), and a proxy joining or leaving moves only the clients it
//! wins or loses.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;

/// Weight of a fully loaded proxy: still chosen now and then, so a level whose proxies are
/// all busy keeps spreading its clients.
const MIN_WEIGHT: f64 = 0.05;

/// A proxy that passed its health checks.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveProxy {
    /// Its address.
    pub address: IpAddr,
    /// Its locality, most local level first.
    pub locality: Vec<String>,
    /// Its load, 0 (idle) to 1 (full).
    pub load: f64,
}

/// How near the chosen proxies are to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// They share the client's locality at this level (0 = most local).
    Level(usize),
    /// They are anywhere.
    Global,
    /// No healthy proxy of the asked address family exists.
    None,
}

/// Up to `want` proxies for a client at `locality` in `network`, of the address family
/// `ipv6` says, nearest first as the module explains.
pub fn choose(
    proxies: &[LiveProxy],
    locality: &[String],
    network: IpNet,
    want: usize,
    ipv6: bool,
) -> (Vec<IpAddr>, Reach) {
    let family: Vec<&LiveProxy> = proxies
        .iter()
        .filter(|proxy| proxy.address.is_ipv6() == ipv6)
        .collect();
    if family.is_empty() {
        return (Vec::new(), Reach::None);
    }
    for (level, place) in locality.iter().enumerate() {
        if place.is_empty() {
            continue;
        }
        let near: Vec<&LiveProxy> = family
            .iter()
            .copied()
            .filter(|proxy| proxy.locality.get(level) == Some(place))
            .collect();
        if !near.is_empty() {
            return (ranked(near, network, want), Reach::Level(level));
        }
    }
    (ranked(family, network, want), Reach::Global)
}

/// The `want` best of `proxies` for `network` by weighted rendezvous hashing.
fn ranked(mut proxies: Vec<&LiveProxy>, network: IpNet, want: usize) -> Vec<IpAddr> {
    let score = |proxy: &LiveProxy| {
        let mut hasher = DefaultHasher::new();
        (network, proxy.address).hash(&mut hasher);
        // A uniform draw in (0, 1], raised to 1/weight: the largest wins (Efraimidis-Spirakis).
        let draw = ((hasher.finish() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        draw.powf(1.0 / (1.0 - proxy.load).max(MIN_WEIGHT))
    };
    let mut scored: Vec<(f64, &LiveProxy)> = proxies.drain(..).map(|p| (score(p), p)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.address.cmp(&b.1.address)));
    scored
        .into_iter()
        .take(want)
        .map(|(_, proxy)| proxy.address)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn proxy(address: &str, zone: &str, region: &str, load: f64) -> LiveProxy {
        LiveProxy {
            address: address.parse().unwrap(),
            locality: vec![zone.to_owned(), region.to_owned()],
            load,
        }
    }

    fn fleet() -> Vec<LiveProxy> {
        vec![
            proxy("10.0.1.1", "a", "r1", 0.0),
            proxy("10.0.1.2", "a", "r1", 0.0),
            proxy("10.0.2.1", "b", "r1", 0.0),
            proxy("10.0.3.1", "c", "r2", 0.0),
            proxy("fd00::1", "a", "r1", 0.0),
        ]
    }

    fn at(zone: &str, region: &str) -> Vec<String> {
        vec![zone.to_owned(), region.to_owned()]
    }

    fn net(cidr: &str) -> IpNet {
        cidr.parse().unwrap()
    }

    #[test]
    fn the_nearest_level_with_a_proxy_is_used_alone() {
        let (chosen, reach) = choose(&fleet(), &at("a", "r1"), net("1.2.3.0/24"), 5, false);
        assert_eq!(reach, Reach::Level(0));
        let mut chosen = chosen;
        chosen.sort();
        assert_eq!(
            chosen,
            [
                "10.0.1.1".parse::<IpAddr>().unwrap(),
                "10.0.1.2".parse().unwrap()
            ]
        );

        // Zone d has no proxy: region r2's is next.
        let (chosen, reach) = choose(&fleet(), &at("d", "r2"), net("1.2.3.0/24"), 5, false);
        assert_eq!(
            (chosen, reach),
            (vec!["10.0.3.1".parse().unwrap()], Reach::Level(1))
        );

        // Unknown places: anywhere.
        let (chosen, reach) = choose(&fleet(), &at("x", "y"), net("1.2.3.0/24"), 2, false);
        assert_eq!((chosen.len(), reach), (2, Reach::Global));
        let (_, reach) = choose(&fleet(), &[], net("1.2.3.0/24"), 2, false);
        assert_eq!(reach, Reach::Global);
    }

    #[test]
    fn families_are_kept_apart_and_none_left_says_so() {
        let (chosen, reach) = choose(&fleet(), &at("c", "r2"), net("::/56"), 2, true);
        assert_eq!(
            (chosen, reach),
            (vec!["fd00::1".parse().unwrap()], Reach::Global)
        );
        let v4_only: Vec<_> = fleet()
            .into_iter()
            .filter(|p| p.address.is_ipv4())
            .collect();
        assert_eq!(
            choose(&v4_only, &at("a", "r1"), net("::/56"), 2, true),
            (vec![], Reach::None)
        );
    }

    #[test]
    fn a_client_network_gets_the_same_proxies_every_time() {
        let proxies: Vec<_> = (1..=20)
            .map(|i| proxy(&format!("10.0.0.{i}"), "a", "r", 0.0))
            .collect();
        let first = choose(&proxies, &at("a", "r"), net("1.2.3.0/24"), 2, false);
        for _ in 0..10 {
            assert_eq!(
                choose(&proxies, &at("a", "r"), net("1.2.3.0/24"), 2, false),
                first
            );
        }
        // Removing a proxy that was not chosen changes nothing for this network.
        let removed = proxies
            .iter()
            .find(|p| !first.0.contains(&p.address))
            .unwrap()
            .address;
        let kept: Vec<_> = proxies
            .iter()
            .filter(|p| p.address != removed)
            .cloned()
            .collect();
        assert_eq!(
            choose(&kept, &at("a", "r"), net("1.2.3.0/24"), 2, false),
            first
        );
    }

    #[test]
    fn networks_are_spread_over_equals_and_load_shifts_them() {
        let count = |proxies: &[LiveProxy]| {
            let mut wins: HashMap<IpAddr, u32> = HashMap::new();
            for n in 0..4000u32 {
                let network = IpNet::new(IpAddr::from((n << 8).to_be_bytes()), 24).unwrap();
                let (chosen, _) = choose(proxies, &at("a", "r"), network, 1, false);
                *wins.entry(chosen[0]).or_default() += 1;
            }
            wins
        };
        let even = count(&[
            proxy("10.0.0.1", "a", "r", 0.0),
            proxy("10.0.0.2", "a", "r", 0.0),
        ]);
        for wins in even.values() {
            assert!((1800..=2200).contains(wins), "{even:?}");
        }
        // Weights 0.9 against 0.1: the busy proxy wins about 10% of networks.
        let skewed = count(&[
            proxy("10.0.0.1", "a", "r", 0.1),
            proxy("10.0.0.2", "a", "r", 0.9),
        ]);
        let busy = skewed[&"10.0.0.2".parse::<IpAddr>().unwrap()];
        assert!((250..=600).contains(&busy), "{skewed:?}");
    }
}
