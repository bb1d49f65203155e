//! Where a DNS client is: the client networks of the configuration, matched against the
//! EDNS Client Subnet when a resolver sends one, else the resolver's own address.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::ClientNetwork;

/// Clients are told apart down to an IPv4 /24 or an IPv6 /56, the usual size of one site's
/// network: the same network always gets the same proxies (stable for caches), and an ECS
/// answer is scoped to it.
pub const CLIENT_PREFIX_V4: u8 = 24;
/// See [`CLIENT_PREFIX_V4`].
pub const CLIENT_PREFIX_V6: u8 = 56;

/// The client network `address` belongs to ([`CLIENT_PREFIX_V4`], [`CLIENT_PREFIX_V6`]), or
/// less when only its first `known_bits` are known (an ECS source prefix; `u8::MAX` for a
/// packet's source): the key of a client's answers, and the unit of response rate limiting
/// and of the per-client TCP connection limit.
pub fn client_network(address: IpAddr, known_bits: u8) -> IpNet {
    let address = address.to_canonical();
    let bits = match address {
        IpAddr::V4(_) => CLIENT_PREFIX_V4,
        IpAddr::V6(_) => CLIENT_PREFIX_V6,
    };
    IpNet::new(address, bits.min(known_bits))
        .expect("prefix within the family's length")
        .trunc()
}

/// A client as the answer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed<'a> {
    /// The locality of the client's network, most local first; `None` when no configured
    /// network contains it.
    pub locality: Option<&'a [String]>,
    /// The client's network, at most [`CLIENT_PREFIX_V4`] / [`CLIENT_PREFIX_V6`] bits long:
    /// the key that keeps its answers stable.
    pub network: IpNet,
    /// How many leading bits of the client address the answer depends on (the ECS scope): the
    /// client network's, or more when a configured network inside it places part of it
    /// elsewhere.
    pub scope: u8,
}

/// The configured client networks, most specific first.
#[derive(Clone, Debug, Default)]
pub struct ClientPlacement {
    networks: Vec<ClientNetwork>,
}

impl ClientPlacement {
    /// Placement by `networks` (their order does not matter: the longest match wins).
    pub fn new(networks: &[ClientNetwork]) -> Self {
        let mut networks = networks.to_vec();
        networks.sort_by_key(|network| std::cmp::Reverse(network.cidr.prefix_len()));
        Self { networks }
    }

    /// Places a client whose address is known to its first `source_prefix` bits (all of them
    /// for a resolver's own address). A network longer than what is known cannot be matched.
    pub fn place(&self, address: IpAddr, source_prefix: u8) -> Placed<'_> {
        let address = address.to_canonical();
        let network = client_network(address, source_prefix);
        let key_bits = network.prefix_len();
        let matched = self.networks.iter().find(|candidate| {
            candidate.cidr.prefix_len() <= source_prefix && candidate.cidr.contains(&address)
        });
        // A longer network inside the client's places some of its addresses elsewhere: the
        // answer then depends on those bits too.
        let finer = self
            .networks
            .iter()
            .filter(|candidate| {
                candidate.cidr.prefix_len() > key_bits && network.contains(&candidate.cidr.addr())
            })
            .map(|candidate| candidate.cidr.prefix_len().min(source_prefix))
            .max()
            .unwrap_or(0);
        Placed {
            locality: matched.map(|network| network.locality.as_slice()),
            network,
            scope: matched
                .map_or(0, |network| network.cidr.prefix_len())
                .max(key_bits)
                .max(finer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement() -> ClientPlacement {
        let network = |cidr: &str, locality: &[&str]| ClientNetwork {
            cidr: cidr.parse().unwrap(),
            locality: locality.iter().map(|s| (*s).to_owned()).collect(),
        };
        ClientPlacement::new(&[
            network("10.0.0.0/8", &["", "region-1"]),
            network("10.1.0.0/16", &["zone-b", "region-1"]),
            network("2001:db8::/32", &["zone-c", "region-2"]),
        ])
    }

    #[test]
    fn the_longest_matching_network_places_the_client() {
        let placement = placement();
        let placed = placement.place("10.1.2.3".parse().unwrap(), 32);
        assert_eq!(placed.locality.unwrap(), ["zone-b", "region-1"]);
        assert_eq!(placed.network, "10.1.2.0/24".parse::<IpNet>().unwrap());
        assert_eq!(placed.scope, 24);
        let placed = placement.place("10.9.2.3".parse().unwrap(), 32);
        assert_eq!(placed.locality.unwrap(), ["", "region-1"]);
        let placed = placement.place("2001:db8:1:2::5".parse().unwrap(), 128);
        assert_eq!(placed.locality.unwrap(), ["zone-c", "region-2"]);
        assert_eq!(placed.network, "2001:db8:1::/56".parse::<IpNet>().unwrap());
        assert_eq!(placed.scope, 56);
    }

    #[test]
    fn an_unknown_client_has_no_locality_but_still_a_stable_network() {
        let placement = placement();
        let placed = placement.place("192.0.2.77".parse().unwrap(), 32);
        assert_eq!(placed.locality, None);
        assert_eq!(placed.network, "192.0.2.0/24".parse::<IpNet>().unwrap());
        let mapped = placement.place("::ffff:10.1.2.3".parse().unwrap(), 128);
        assert_eq!(mapped.locality.unwrap(), ["zone-b", "region-1"]);
    }

    #[test]
    fn a_finer_network_inside_the_clients_narrows_the_scope() {
        let network = |cidr: &str, zone: &str| ClientNetwork {
            cidr: cidr.parse().unwrap(),
            locality: vec![zone.to_owned()],
        };
        let placement =
            ClientPlacement::new(&[network("10.0.0.0/8", "a"), network("10.1.2.128/25", "b")]);
        let outside_the_finer = placement.place("10.1.2.7".parse().unwrap(), 32);
        assert_eq!(outside_the_finer.locality.unwrap(), ["a"]);
        assert_eq!(outside_the_finer.scope, 25);
        let inside = placement.place("10.1.2.200".parse().unwrap(), 32);
        assert_eq!(inside.locality.unwrap(), ["b"]);
        assert_eq!(inside.scope, 25);
        assert_eq!(placement.place("10.9.9.9".parse().unwrap(), 32).scope, 24);
    }

    #[test]
    fn a_short_client_subnet_matches_only_networks_it_spans() {
        // A resolver that reveals only 10.1/12 cannot be placed in 10.1/16.
        let placement = placement();
        let placed = placement.place("10.0.0.0".parse().unwrap(), 12);
        assert_eq!(placed.locality.unwrap(), ["", "region-1"]);
        assert_eq!(placed.network, "10.0.0.0/12".parse::<IpNet>().unwrap());
        assert_eq!(placed.scope, 12);
        assert_eq!(
            placement.place("10.1.0.0".parse().unwrap(), 0).locality,
            None
        );
    }
}
