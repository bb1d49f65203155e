//! Routing tables: which peers a node knows, per level, and how recently it heard from them.
//!
//! One [`Routing`] per node holds a Kademlia k-bucket table per locality level plus the
//! memory of recent failures. It applies the lessons of MIT Chord that Coral inherited:
//! - every entry records when the peer was last heard from, and whether directly;
//! - news of a peer from another node carries the age of that news, and is ignored when this
//!   node saw the peer fail more recently (a dead node is never resurrected by gossip);
//! - a failed peer is evicted from its bucket and the freshest replacement takes its place.
//!
//! A full bucket keeps its old entries (long-lived peers tend to stay up) and keeps newcomers
//! as replacements. The table decides nothing about the network: callers report what they
//! heard and what failed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::id::{ID_BITS, Id};
use super::locality::Locality;
use super::wire::ContactInfo;

/// How long a failure is remembered to veto second-hand news of the peer.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// Most failures remembered at once.
const MAX_FAILURES: usize = 4096;

/// A peer: its node ID and DHT address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Contact {
    /// Node ID.
    pub id: Id,
    /// DHT address.
    pub addr: SocketAddr,
}

impl From<&ContactInfo> for Contact {
    fn from(info: &ContactInfo) -> Self {
        Contact {
            id: info.id,
            addr: info.addr,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    contact: Contact,
    heard_at: Instant,
    direct: bool,
}

#[derive(Clone, Debug, Default)]
struct Bucket {
    live: Vec<Entry>,
    replacements: Vec<Entry>,
}

/// The k-bucket table of one level.
#[derive(Clone, Debug)]
struct LevelTable {
    buckets: Vec<Bucket>,
}

/// All routing state of one node.
#[derive(Debug)]
pub struct Routing {
    own: Id,
    locality: Locality,
    k: usize,
    levels: Vec<LevelTable>,
    failures: HashMap<Id, Instant>,
    epoch: Instant,
}

/// One peer as shown on the admin page.
#[derive(Clone, Debug, Serialize)]
pub struct PeerView {
    /// Node ID.
    pub id: Id,
    /// DHT address.
    pub addr: SocketAddr,
    /// Bucket index (common prefix length with this node).
    pub bucket: usize,
    /// Seconds since last heard from.
    pub age_secs: u64,
    /// Whether that was directly (not second-hand).
    pub direct: bool,
    /// Whether this is a replacement, not a live entry.
    pub replacement: bool,
}

impl Routing {
    /// An empty table for a node with ID `own` at `locality`, with buckets of `k` entries.
    pub fn new(own: Id, locality: Locality, k: usize, now: Instant) -> Self {
        let levels = (0..locality.levels())
            .map(|_| LevelTable {
                buckets: vec![Bucket::default(); ID_BITS],
            })
            .collect();
        Self {
            own,
            locality,
            k,
            levels,
            failures: HashMap::new(),
            epoch: now,
        }
    }

    /// This node's ID.
    pub fn own(&self) -> &Id {
        &self.own
    }

    /// Number of levels, including the global one.
    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// This node's locality.
    pub fn locality(&self) -> &Locality {
        &self.locality
    }

    /// Records a packet received from `contact` itself, at `locality`: it goes into the table
    /// of every level whose cluster it shares, and out of the others.
    pub fn heard_directly(&mut self, contact: Contact, locality: &Locality, now: Instant) {
        let Some(index) = self.own.bucket_index(&contact.id) else {
            return;
        };
        self.failures.remove(&contact.id);
        for level in 0..self.levels.len() {
            let bucket = &mut self.levels[level].buckets[index];
            if self.locality.shares(locality, level) {
                bucket.upsert(
                    Entry {
                        contact,
                        heard_at: now,
                        direct: true,
                    },
                    self.k,
                );
            } else {
                bucket.remove(&contact.id);
            }
        }
    }

    /// Records news of a peer at `level` from another node. Returns false when the news is
    /// vetoed: about this node itself, or older than a failure this node saw.
    pub fn heard_of(&mut self, level: usize, info: &ContactInfo, now: Instant) -> bool {
        let Some(index) = self.own.bucket_index(&info.id) else {
            return false;
        };
        if level >= self.levels.len() {
            return false;
        }
        let heard_at = now
            .checked_sub(Duration::from_secs(info.age_secs.into()))
            .map_or(self.epoch, |at| at.max(self.epoch));
        if self
            .failures
            .get(&info.id)
            .is_some_and(|failed| *failed >= heard_at)
        {
            return false;
        }
        self.levels[level].buckets[index].upsert(
            Entry {
                contact: Contact::from(info),
                heard_at,
                direct: false,
            },
            self.k,
        );
        true
    }

    /// Records that `id` did not answer: it leaves every level, its replacement steps in, and
    /// gossip about it older than now is ignored for [`FAILURE_MEMORY`].
    pub fn failed(&mut self, id: &Id, now: Instant) {
        let Some(index) = self.own.bucket_index(id) else {
            return;
        };
        for level in &mut self.levels {
            level.buckets[index].remove(id);
        }
        if self.failures.len() >= MAX_FAILURES {
            self.failures
                .retain(|_, failed| now.duration_since(*failed) < FAILURE_MEMORY);
            if self.failures.len() >= MAX_FAILURES {
                self.failures.clear();
            }
        }
        self.failures.insert(*id, now);
    }

    /// Up to `n` live peers at `level` closest to `target`, with the age of what is known.
    pub fn closest(&self, level: usize, target: &Id, n: usize, now: Instant) -> Vec<ContactInfo> {
        let Some(table) = self.levels.get(level) else {
            return Vec::new();
        };
        let mut entries: Vec<_> = table
            .buckets
            .iter()
            .flat_map(|b| &b.live)
            .map(|entry| (entry.contact.id.distance(target), entry))
            .collect();
        if entries.len() > n && n > 0 {
            entries.select_nth_unstable_by_key(n - 1, |(distance, _)| *distance);
            entries.truncate(n);
        }
        entries.sort_unstable_by_key(|(distance, _)| *distance);
        entries
            .into_iter()
            .take(n)
            .map(|(_, entry)| ContactInfo {
                id: entry.contact.id,
                addr: entry.contact.addr,
                age_secs: age_secs(now, entry.heard_at),
            })
            .collect()
    }

    /// Number of live peers at `level`.
    pub fn len(&self, level: usize) -> usize {
        self.levels
            .get(level)
            .map_or(0, |t| t.buckets.iter().map(|b| b.live.len()).sum())
    }

    /// Whether no level knows any peer.
    pub fn is_empty(&self) -> bool {
        (0..self.levels.len()).all(|level| self.len(level) == 0)
    }

    /// Live peers at `level` known only second-hand, whose clusters are therefore unknown.
    pub fn unverified(&self, level: usize) -> Vec<Contact> {
        self.levels.get(level).map_or_else(Vec::new, |table| {
            let entries = table.buckets.iter().flat_map(|b| &b.live);
            entries.filter(|e| !e.direct).map(|e| e.contact).collect()
        })
    }

    /// Indexes of the non-empty buckets at `level`, for refreshing.
    pub fn occupied_buckets(&self, level: usize) -> Vec<usize> {
        self.levels.get(level).map_or_else(Vec::new, |table| {
            (0..ID_BITS)
                .filter(|&i| !table.buckets[i].live.is_empty())
                .collect()
        })
    }

    /// Every peer at `level`, for the admin page.
    pub fn view(&self, level: usize, now: Instant) -> Vec<PeerView> {
        let Some(table) = self.levels.get(level) else {
            return Vec::new();
        };
        let mut peers = Vec::new();
        for (index, bucket) in table.buckets.iter().enumerate() {
            for (entries, replacement) in [(&bucket.live, false), (&bucket.replacements, true)] {
                peers.extend(entries.iter().map(|entry| PeerView {
                    id: entry.contact.id,
                    addr: entry.contact.addr,
                    bucket: index,
                    age_secs: now.duration_since(entry.heard_at).as_secs(),
                    direct: entry.direct,
                    replacement,
                }));
            }
        }
        peers
    }
}

fn age_secs(now: Instant, then: Instant) -> u32 {
    u32::try_from(now.duration_since(then).as_secs()).unwrap_or(u32::MAX)
}

impl Bucket {
    /// Inserts or refreshes an entry. Fresher news replaces older news; second-hand news never
    /// downgrades direct news nor changes a known node's address.
    fn upsert(&mut self, entry: Entry, k: usize) {
        for list in [&mut self.live, &mut self.replacements] {
            if let Some(known) = list.iter_mut().find(|e| e.contact.id == entry.contact.id) {
                // Only the node itself may move its entry to another address: an ID is the
                // hash of an address, so gossip naming another one is wrong or forged.
                if entry.direct {
                    known.contact.addr = entry.contact.addr;
                    known.direct = true;
                }
                if known.contact.addr == entry.contact.addr {
                    known.heard_at = known.heard_at.max(entry.heard_at);
                }
                return;
            }
        }
        if self.live.len() < k {
            self.live.push(entry);
            return;
        }
        if self.replacements.len() >= k {
            let stalest = (0..self.replacements.len())
                .min_by_key(|&i| self.replacements[i].heard_at)
                .expect("replacements not empty");
            if self.replacements[stalest].heard_at > entry.heard_at {
                return;
            }
            self.replacements.swap_remove(stalest);
        }
        self.replacements.push(entry);
    }

    /// Removes `id`, promoting the freshest replacement when a live entry leaves.
    fn remove(&mut self, id: &Id) {
        if let Some(pos) = self.live.iter().position(|e| e.contact.id == *id) {
            self.live.remove(pos);
            if let Some(best) = (0..self.replacements.len())
                .max_by_key(|&i| (self.replacements[i].direct, self.replacements[i].heard_at))
            {
                self.live.push(self.replacements.swap_remove(best));
            }
        } else {
            self.replacements.retain(|e| e.contact.id != *id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(first: u8, last: u8) -> Id {
        let mut bytes = [0u8; 20];
        bytes[0] = first;
        bytes[19] = last;
        Id(bytes)
    }

    fn contact(first: u8, last: u8) -> Contact {
        Contact {
            id: id(first, last),
            addr: SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(last))),
        }
    }

    fn info(c: Contact, age_secs: u32) -> ContactInfo {
        ContactInfo {
            id: c.id,
            addr: c.addr,
            age_secs,
        }
    }

    fn zone(name: &str) -> Locality {
        Locality::from_labels(&[name, "region-1"])
    }

    fn table(k: usize) -> (Routing, Instant) {
        let now = Instant::now();
        (Routing::new(id(0, 0), zone("a"), k, now), now)
    }

    #[test]
    fn a_peer_enters_only_the_levels_whose_cluster_it_shares() {
        let (mut routing, now) = table(4);
        routing.heard_directly(contact(0x80, 1), &zone("a"), now);
        routing.heard_directly(contact(0x80, 2), &zone("b"), now);
        assert_eq!(routing.len(0), 2);
        assert_eq!(routing.len(1), 2);
        assert_eq!(routing.len(2), 1);
    }

    #[test]
    fn a_peer_that_moved_zone_leaves_the_old_zone_table() {
        let (mut routing, now) = table(4);
        routing.heard_directly(contact(0x80, 1), &zone("a"), now);
        routing.heard_directly(contact(0x80, 1), &zone("b"), now);
        assert_eq!(routing.len(2), 0);
        assert_eq!(routing.len(1), 1);
    }

    #[test]
    fn closest_orders_by_xor_distance_and_reports_age() {
        let (mut routing, now) = table(8);
        for last in 1..=5 {
            routing.heard_directly(contact(0x80, last), &zone("a"), now);
        }
        let later = now + Duration::from_secs(30);
        let closest = routing.closest(0, &id(0x80, 4), 2, later);
        assert_eq!(closest[0].id, id(0x80, 4));
        assert_eq!(closest[1].id, id(0x80, 5));
        assert_eq!(closest[0].age_secs, 30);
    }

    #[test]
    fn a_failed_peer_is_evicted_and_its_replacement_steps_in() {
        let (mut routing, now) = table(2);
        for last in 1..=3 {
            routing.heard_directly(contact(0x80, last), &zone("a"), now);
        }
        assert_eq!(routing.len(0), 2, "the third waits as a replacement");
        routing.failed(&id(0x80, 1), now);
        let ids: Vec<_> = routing
            .closest(0, &id(0, 0), 8, now)
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&id(0x80, 3)) && !ids.contains(&id(0x80, 1)));
    }

    #[test]
    fn gossip_older_than_a_seen_failure_does_not_resurrect_a_peer() {
        let (mut routing, start) = table(4);
        let peer = contact(0x80, 1);
        routing.heard_directly(peer, &zone("a"), start);
        let failed_at = start + Duration::from_secs(100);
        routing.failed(&peer.id, failed_at);
        let now = failed_at + Duration::from_secs(10);
        assert!(
            !routing.heard_of(0, &info(peer, 60), now),
            "heard 60 s ago, failed 10 s ago"
        );
        assert_eq!(routing.len(0), 0);
        assert!(
            routing.heard_of(0, &info(peer, 5), now),
            "heard 5 s ago, after the failure"
        );
        assert_eq!(routing.len(0), 1);
    }

    #[test]
    fn gossip_cannot_move_a_known_peer_to_another_address() {
        let (mut routing, now) = table(4);
        let peer = contact(0x80, 1);
        routing.heard_directly(peer, &zone("a"), now);
        let forged = ContactInfo {
            addr: SocketAddr::from(([127, 0, 0, 66], 6666)),
            ..info(peer, 0)
        };
        routing.heard_of(0, &forged, now + Duration::from_secs(5));
        assert_eq!(routing.closest(0, &peer.id, 1, now)[0].addr, peer.addr);
    }

    #[test]
    fn hearing_directly_clears_a_failure() {
        let (mut routing, now) = table(4);
        let peer = contact(0x80, 1);
        routing.failed(&peer.id, now);
        routing.heard_directly(peer, &zone("a"), now + Duration::from_secs(1));
        assert_eq!(routing.len(0), 1);
    }

    #[test]
    fn second_hand_peers_are_unverified_until_heard_directly() {
        let (mut routing, now) = table(4);
        let peer = contact(0x80, 1);
        routing.heard_of(0, &info(peer, 0), now);
        assert_eq!(routing.unverified(0), vec![peer]);
        routing.heard_directly(peer, &zone("a"), now);
        assert!(routing.unverified(0).is_empty());
    }

    #[test]
    fn news_of_itself_is_ignored() {
        let (mut routing, now) = table(4);
        let me = ContactInfo {
            id: id(0, 0),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            age_secs: 0,
        };
        assert!(!routing.heard_of(0, &me, now));
        assert!(routing.is_empty());
    }
}
