//! The path of a sloppy get or put: Coral's routing that corrects only `b` bits per hop.
//!
//! A Kademlia lookup jumps to the closest node it hears of, so requests from everywhere land
//! on the few nodes nearest a key, and a hot key melts them. Coral instead moves toward the
//! key a few bits at a time: from a node sharing `p` leading bits with the key, the next hop is
//! the node closest to the *intermediate target* that takes its first `p + b` bits from the key
//! and the rest from the requester's own ID. Paths from different requesters thus approach the
//! key through different nodes, each hop at least halving the distance, and the nodes one or
//! two bits short of the key form rings where a sloppy put stops (when the nodes nearer the key
//! are full and loaded) and where gets from every direction find the spilled values.
//! Once no node shares more leading bits with the key, the path finishes like Kademlia, with
//! an iterative search for the nodes closest to the key. This module is pure: it computes
//! targets and ranks next hops.

use super::id::{ID_BITS, Id};
use super::routing::Contact;

/// The ID whose first `bits` bits come from `key` and the rest from `own`.
pub fn intermediate_target(key: &Id, own: &Id, bits: usize) -> Id {
    let bits = bits.min(ID_BITS);
    Id(std::array::from_fn(|byte| {
        let taken = bits.saturating_sub(byte * 8).min(8);
        let mask = if taken == 0 { 0 } else { 0xffu8 << (8 - taken) };
        (key.0[byte] & mask) | (own.0[byte] & !mask)
    }))
}

/// The nodes a path may move to from `current`, best first: those sharing more leading bits
/// with the key than `current`, closest to `toward` first. None means the path is as deep as
/// the answer lets it go, and the last stretch is a search for the nodes closest to the key.
pub fn next_hops(contacts: &[Contact], current: &Contact, key: &Id, toward: &Id) -> Vec<Contact> {
    let prefix = current.id.distance(key).leading_zeros();
    let mut hops: Vec<Contact> = contacts
        .iter()
        .filter(|c| c.id.distance(key).leading_zeros() > prefix)
        .copied()
        .collect();
    hops.sort_by_key(|c| c.id.distance(toward));
    hops.dedup_by_key(|c| c.id);
    hops
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn id(first: u8, second: u8) -> Id {
        Id::starting_with(&[first, second])
    }

    fn info(id: Id) -> Contact {
        Contact {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        }
    }

    #[test]
    fn the_target_takes_the_keys_first_bits_and_the_requesters_rest() {
        let key = Id([0xff; 20]);
        let own = Id([0x00; 20]);
        assert_eq!(intermediate_target(&key, &own, 0), own);
        assert_eq!(intermediate_target(&key, &own, 3), id(0b1110_0000, 0));
        assert_eq!(intermediate_target(&key, &own, 12), id(0xff, 0xf0));
        assert_eq!(intermediate_target(&key, &own, 160), key);
    }

    #[test]
    fn only_nodes_with_a_longer_common_prefix_are_next_hops() {
        let key = id(0b1010_0000, 0);
        let current = Contact {
            id: id(0b1000_0111, 0),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        let same_prefix_closer = id(0b1000_0001, 0);
        let one_more_bit = id(0b1011_0000, 0);
        let two_more_bits = id(0b1010_1000, 0);
        let contacts = [
            info(same_prefix_closer),
            info(one_more_bit),
            info(two_more_bits),
        ];
        let toward = intermediate_target(&key, &current.id, 3);
        let hops: Vec<Id> = next_hops(&contacts, &current, &key, &toward)
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(
            hops,
            vec![two_more_bits, one_more_bit],
            "closest to the target first"
        );
        let same_prefix = [info(same_prefix_closer)];
        assert!(next_hops(&same_prefix, &current, &key, &toward).is_empty());
    }

    #[test]
    fn each_hop_at_least_halves_the_distance() {
        let key = id(0x5a, 0x5a);
        let current = Contact {
            id: id(0x40, 0),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        let candidates: Vec<Contact> = (0..=255u8).map(|n| info(id(n, n))).collect();
        let prefix = current.id.distance(&key).leading_zeros();
        let toward = intermediate_target(&key, &current.id, prefix + 1);
        let hops = next_hops(&candidates, &current, &key, &toward);
        assert!(!hops.is_empty());
        for hop in hops {
            // One more leading zero bit in the XOR distance: less than half the distance.
            assert!(hop.id.distance(&key).leading_zeros() > prefix);
        }
    }
}
