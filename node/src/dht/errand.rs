//! What a lookup or a path asks of each node on its way ([`Errand`]), and the record of what
//! the answers said ([`Walk`]): the books shared by the iterative lookup and the sloppy path
//! in [`super::node`]. Pure: no sockets, no clocks.

use super::id::Id;
use super::routing::Contact;
use super::wire::{Body, ContactInfo, TimedValue};

/// What a lookup or path asks of each node on it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Errand {
    FindNode,
    Get,
    Probe {
        /// TTL of the value to put.
        ttl_secs: u32,
    },
}

impl Errand {
    pub(super) fn kind(self) -> &'static str {
        match self {
            Errand::FindNode => "find_node",
            Errand::Get => "get",
            Errand::Probe { .. } => "put",
        }
    }

    /// The request for `key`, asking for contacts closest to `toward`.
    pub(super) fn request(self, key: Id, toward: Id, max_values: u8) -> Body {
        match self {
            Errand::FindNode => Body::FindNode { target: key },
            Errand::Get => Body::Get {
                key,
                max_values,
                toward,
            },
            Errand::Probe { ttl_secs } => Body::Probe {
                key,
                ttl_secs,
                toward,
            },
        }
    }
}

/// Where a lookup or path went and what it found.
#[derive(Default)]
pub(super) struct Walk {
    /// Nodes that answered, in the order they answered.
    pub(super) visited: Vec<Contact>,
    /// Get: the values of the first node that held some.
    pub(super) found: Option<Vec<TimedValue>>,
    /// Put: nodes that answered and were not both full and loaded.
    pub(super) acceptable: Vec<Contact>,
    /// Put: the forward phase stopped at a full and loaded node.
    pub(super) stopped_early: bool,
    /// The deepest hop that answered.
    pub(super) hops: u32,
}

impl Walk {
    /// Records `contact`'s answer to `errand`, learned at `hop`. Returns the contacts it
    /// offers to go on with, or `None` when the answer ends the errand (values found, a full
    /// and loaded node) or is not an answer to it.
    pub(super) fn record(
        &mut self,
        errand: Errand,
        contact: Contact,
        hop: u32,
        body: Body,
    ) -> Option<Vec<ContactInfo>> {
        let contacts = match (errand, body) {
            (Errand::FindNode, Body::Nodes { contacts }) => contacts,
            (Errand::Get, Body::Values { values, .. }) if !values.is_empty() => {
                self.found = Some(values);
                self.visited.push(contact);
                self.hops = self.hops.max(hop);
                return None;
            }
            (Errand::Get, Body::Values { contacts, .. }) => contacts,
            (
                Errand::Probe { .. },
                Body::ProbeReply {
                    full: true,
                    loaded: true,
                    ..
                },
            ) => {
                self.stopped_early = true;
                self.visited.push(contact);
                self.hops = self.hops.max(hop);
                return None;
            }
            (Errand::Probe { .. }, Body::ProbeReply { contacts, .. }) => {
                self.acceptable.push(contact);
                contacts
            }
            _ => return None,
        };
        self.visited.push(contact);
        self.hops = self.hops.max(hop);
        Some(contacts)
    }

    /// The answering node closest to `key`: where the next level's path starts.
    pub(super) fn closest_visited(&self, key: &Id) -> Option<Contact> {
        self.visited
            .iter()
            .copied()
            .min_by_key(|c| c.id.distance(key))
    }

    /// Whether the errand is done: values found, or a full and loaded node reached.
    pub(super) fn is_over(&self) -> bool {
        self.found.is_some() || self.stopped_early
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::wire::Value;
    use std::net::SocketAddr;

    fn contact(n: u8) -> Contact {
        Contact {
            id: Id([n; 20]),
            addr: SocketAddr::from(([127, 0, 0, n], 9410)),
        }
    }

    fn info(n: u8) -> ContactInfo {
        ContactInfo {
            id: Id([n; 20]),
            addr: contact(n).addr,
            age_secs: 0,
        }
    }

    #[test]
    fn a_get_ends_at_the_first_node_with_values() {
        let mut walk = Walk::default();
        let empty = Body::Values {
            values: vec![],
            contacts: vec![info(2)],
        };
        assert_eq!(
            walk.record(Errand::Get, contact(1), 1, empty),
            Some(vec![info(2)])
        );
        let value = TimedValue {
            value: Value {
                holder: contact(9).addr,
                meta: vec![],
            },
            ttl_secs: 60,
        };
        let found = Body::Values {
            values: vec![value.clone()],
            contacts: vec![],
        };
        assert_eq!(walk.record(Errand::Get, contact(2), 2, found), None);
        assert!(walk.is_over());
        assert_eq!(walk.found, Some(vec![value]));
        assert_eq!((walk.hops, walk.visited.len()), (2, 2));
    }

    #[test]
    fn a_probe_ends_at_a_full_and_loaded_node_and_keeps_the_acceptable_ones() {
        let mut walk = Walk::default();
        let errand = Errand::Probe { ttl_secs: 60 };
        let reply = |full, loaded| Body::ProbeReply {
            full,
            loaded,
            contacts: vec![],
        };
        assert!(
            walk.record(errand, contact(1), 1, reply(true, false))
                .is_some()
        );
        assert!(
            walk.record(errand, contact(2), 2, reply(false, true))
                .is_some()
        );
        assert_eq!(walk.record(errand, contact(3), 3, reply(true, true)), None);
        assert!(walk.stopped_early);
        assert_eq!(walk.acceptable, vec![contact(1), contact(2)]);
        assert_eq!(walk.closest_visited(&Id([3; 20])), Some(contact(3)));
    }

    #[test]
    fn an_answer_of_the_wrong_kind_ends_nothing() {
        let mut walk = Walk::default();
        assert_eq!(walk.record(Errand::Get, contact(1), 1, Body::Pong), None);
        assert!(!walk.is_over());
        assert!(walk.visited.is_empty());
    }
}
