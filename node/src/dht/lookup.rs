//! The candidate set of one iterative lookup: whom to ask next, and what is known so far.
//!
//! A lookup for a target keeps every node it has heard of, ordered by XOR distance to the
//! target, each with the hop at which it was learned (1 for this node's own table, one more
//! than its teller otherwise). It asks the closest node not yet asked among the `k` closest
//! that have not failed, and it is over when those `k` have all answered. Because a node's
//! bucket for the target's half of the space holds only nodes sharing one more bit with the
//! target, every answer at least halves the remaining distance: lookups take O(log n) hops.
//! This module only keeps the books; [`super::node`] drives the requests.

use std::collections::BTreeMap;

use super::id::{Distance, Id};
use super::routing::Contact;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    Waiting,
    InFlight,
    Answered,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    contact: Contact,
    hop: u32,
    progress: Progress,
}

/// Nodes a lookup knows of, closest to the target first.
#[derive(Debug)]
pub struct Candidates {
    target: Id,
    k: usize,
    entries: BTreeMap<Distance, Candidate>,
}

impl Candidates {
    /// An empty set converging on the `k` nodes closest to `target`.
    pub fn new(target: Id, k: usize) -> Self {
        Self {
            target,
            k,
            entries: BTreeMap::new(),
        }
    }

    /// Up to `n` nodes that have not failed, closest first, whatever their progress.
    pub fn closest(&self, n: usize) -> Vec<Contact> {
        self.entries
            .values()
            .filter(|c| c.progress != Progress::Failed)
            .take(n)
            .map(|c| c.contact)
            .collect()
    }

    /// The ID the lookup converges on.
    pub fn target(&self) -> Id {
        self.target
    }

    /// Adds a node learned at `hop`; a node already known keeps its earlier hop.
    pub fn offer(&mut self, contact: Contact, hop: u32) {
        self.entries
            .entry(contact.id.distance(&self.target))
            .or_insert(Candidate {
                contact,
                hop,
                progress: Progress::Waiting,
            });
    }

    /// The next node to ask, if any: the closest one not yet asked among the `k` closest that
    /// have not failed. It is marked in flight.
    pub fn next_to_ask(&mut self) -> Option<(Contact, u32)> {
        let candidate = self
            .entries
            .values_mut()
            .filter(|c| c.progress != Progress::Failed)
            .take(self.k)
            .find(|c| c.progress == Progress::Waiting)?;
        candidate.progress = Progress::InFlight;
        Some((candidate.contact, candidate.hop))
    }

    /// Records that `contact` answered.
    pub fn answered(&mut self, contact: &Contact) {
        self.set(contact, Progress::Answered);
    }

    /// Records that `contact` did not answer.
    pub fn failed(&mut self, contact: &Contact) {
        self.set(contact, Progress::Failed);
    }

    /// Up to `n` nodes that answered, closest first: where a lookup at the next level starts.
    pub fn closest_answered(&self, n: usize) -> Vec<Contact> {
        self.entries
            .values()
            .filter(|c| c.progress == Progress::Answered)
            .take(n)
            .map(|c| c.contact)
            .collect()
    }

    /// The largest hop among the nodes that answered.
    pub fn deepest_answer(&self) -> u32 {
        self.entries
            .values()
            .filter(|c| c.progress == Progress::Answered)
            .map(|c| c.hop)
            .max()
            .unwrap_or(0)
    }

    fn set(&mut self, contact: &Contact, progress: Progress) {
        if let Some(candidate) = self.entries.get_mut(&contact.id.distance(&self.target)) {
            candidate.progress = progress;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn contact(first: u8) -> Contact {
        Contact {
            id: Id::starting_with(&[first]),
            addr: SocketAddr::from(([127, 0, 0, 1], u16::from(first))),
        }
    }

    #[test]
    fn asks_closest_first_and_ends_when_the_k_closest_answered() {
        let mut set = Candidates::new(Id([0; 20]), 2);
        for first in [0x40, 0x10, 0x80, 0x20] {
            set.offer(contact(first), 1);
        }
        let (first, _) = set.next_to_ask().unwrap();
        let (second, _) = set.next_to_ask().unwrap();
        assert_eq!((first, second), (contact(0x10), contact(0x20)));
        assert_eq!(set.next_to_ask(), None, "only the k closest are asked");
        set.answered(&first);
        set.failed(&second);
        assert_eq!(
            set.next_to_ask(),
            Some((contact(0x40), 1)),
            "a failure lets the next one in"
        );
        set.answered(&contact(0x40));
        assert_eq!(set.next_to_ask(), None);
        assert_eq!(set.closest_answered(8), vec![contact(0x10), contact(0x40)]);
    }

    #[test]
    fn a_closer_node_learned_later_is_asked_next_and_keeps_its_hop() {
        let mut set = Candidates::new(Id([0; 20]), 3);
        set.offer(contact(0x80), 1);
        let (asked, hop) = set.next_to_ask().unwrap();
        set.answered(&asked);
        set.offer(contact(0x08), hop + 1);
        set.offer(contact(0x08), hop + 5);
        assert_eq!(set.next_to_ask(), Some((contact(0x08), 2)));
        set.answered(&contact(0x08));
        assert_eq!(set.deepest_answer(), 2);
    }
}
