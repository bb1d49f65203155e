//! How a node answers a request: a pure function of its tables, the request and the time.
//!
//! Deciding the answer lives apart from speaking the protocol, so it is tested without
//! sockets; the UDP transport and the simulator both call [`Tables::answer`].

use std::time::Duration;

use tokio::time::Instant;

use super::DhtParams;
use super::id::Id;
use super::routing::{Contact, Routing};
use super::store::SloppyStore;
use super::wire::{Body, MAX_CONTACTS, MAX_META, MAX_VALUES, Packet};

/// The state a node answers from: its routing tables and one store per level.
#[derive(Debug)]
pub struct Tables {
    /// Known peers per level.
    pub routing: Routing,
    /// Values and load per level, indexed like the levels.
    pub stores: Vec<SloppyStore>,
}

impl Tables {
    /// Answers `request`, which arrived from `from`. Hearing a request is hearing its sender
    /// directly, so the sender enters (or refreshes) the routing tables first. A request about
    /// a level whose cluster the sender does not share gets an empty answer: contacts of a
    /// zone are never handed to a node outside it.
    pub fn answer(
        &mut self,
        params: &DhtParams,
        from: Contact,
        request: &Packet,
        now: Instant,
    ) -> Body {
        self.routing.heard_directly(from, &request.locality, now);
        let level = usize::from(request.level);
        let member = level < self.routing.levels()
            && self.routing.locality().shares(&request.locality, level);
        let n = params.k.min(MAX_CONTACTS);
        let closest = |routing: &Routing, target: &Id| {
            if member {
                routing.closest(level, target, n, now)
            } else {
                Vec::new()
            }
        };
        // A get or probe path asks for the nodes closest to its intermediate target; when this
        // node knows none sharing more bits with the key than itself, the path's next step is
        // toward the key itself, so answer that at once rather than be asked twice.
        let route = |routing: &Routing, key: &Id, toward: &Id| {
            let contacts = closest(routing, toward);
            let mine = routing.own().distance(key).leading_zeros();
            if toward == key
                || contacts
                    .iter()
                    .any(|c| c.id.distance(key).leading_zeros() > mine)
            {
                contacts
            } else {
                closest(routing, key)
            }
        };
        match &request.body {
            Body::Ping => Body::Pong,
            Body::FindNode { target } => Body::Nodes {
                contacts: closest(&self.routing, target),
            },
            Body::Get {
                key,
                max_values,
                toward,
            } => {
                let mut values = Vec::new();
                if member {
                    let store = &mut self.stores[level];
                    store.note_request(key, now);
                    let max = usize::from(*max_values).min(MAX_VALUES);
                    values = store.values(key, &request.locality, max, now);
                }
                let contacts = if values.is_empty() {
                    route(&self.routing, key, toward)
                } else {
                    Vec::new()
                };
                Body::Values { values, contacts }
            }
            Body::Probe {
                key,
                ttl_secs,
                toward,
            } => {
                let (mut full, mut loaded) = (false, false);
                if member {
                    let store = &mut self.stores[level];
                    store.note_request(key, now);
                    let ttl = Duration::from_secs((*ttl_secs).into()).min(params.max_ttl);
                    full = store.is_full(key, ttl, now);
                    loaded = store.is_loaded(key, now);
                }
                Body::ProbeReply {
                    full,
                    loaded,
                    contacts: route(&self.routing, key, toward),
                }
            }
            Body::Store { key, value } => {
                let accepted = member && value.value.meta.len() <= MAX_META && {
                    let ttl = Duration::from_secs(value.ttl_secs.into()).min(params.max_ttl);
                    self.stores[level].store(
                        key,
                        value.value.clone(),
                        ttl,
                        request.locality.clone(),
                        now,
                    )
                };
                let incumbent = member
                    .then(|| self.stores[level].incumbent(key, value.value.holder, now))
                    .flatten();
                Body::Stored {
                    accepted,
                    incumbent,
                }
            }
            Body::Pong
            | Body::Nodes { .. }
            | Body::Values { .. }
            | Body::ProbeReply { .. }
            | Body::Stored { .. } => unreachable!("callers pass requests only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::locality::Locality;
    use crate::dht::store::SloppyStore;
    use crate::dht::wire::{TimedValue, Value};
    use std::net::SocketAddr;

    fn contact(n: u8) -> Contact {
        Contact {
            id: Id::starting_with(&[n]),
            addr: SocketAddr::from(([127, 0, 0, n], 9410)),
        }
    }

    fn zone(name: &str) -> Locality {
        Locality::from_labels(&[name, "region-1"])
    }

    fn tables(now: Instant) -> Tables {
        let params = DhtParams::default();
        let locality = zone("a");
        Tables {
            stores: (0..locality.levels())
                .map(|level| SloppyStore::new(params.store, level as u64))
                .collect(),
            routing: Routing::new(contact(1).id, locality, params.k, now),
        }
    }

    fn request(from: u8, locality: Locality, level: u8, body: Body) -> (Contact, Packet) {
        let sender = contact(from);
        (
            sender,
            Packet {
                request_id: 1,
                sender: sender.id,
                locality,
                level,
                trace: "".into(),
                body,
            },
        )
    }

    fn store_body(key: Id, port: u16) -> Body {
        store_body_for(key, port, 3600)
    }

    fn store_body_for(key: Id, port: u16, ttl_secs: u32) -> Body {
        Body::Store {
            key,
            value: TimedValue {
                value: Value {
                    holder: SocketAddr::from(([127, 0, 0, 9], port)),
                    meta: vec![],
                },
                ttl_secs,
            },
        }
    }

    #[test]
    fn a_request_makes_its_sender_known() {
        let now = Instant::now();
        let mut tables = tables(now);
        let (from, ping) = request(2, zone("a"), 0, Body::Ping);
        assert_eq!(
            tables.answer(&DhtParams::default(), from, &ping, now),
            Body::Pong
        );
        assert_eq!(tables.routing.len(2), 1);
    }

    #[test]
    fn zone_contacts_are_not_given_to_a_node_of_another_zone() {
        let now = Instant::now();
        let mut tables = tables(now);
        let params = DhtParams::default();
        let (from, ping) = request(2, zone("a"), 0, Body::Ping);
        tables.answer(&params, from, &ping, now);
        let find = Body::FindNode {
            target: Id([0; 20]),
        };
        let (outsider, asked) = request(3, zone("b"), 2, find.clone());
        assert_eq!(
            tables.answer(&params, outsider, &asked, now),
            Body::Nodes { contacts: vec![] }
        );
        let (insider, asked) = request(4, zone("a"), 2, find);
        let Body::Nodes { contacts } = tables.answer(&params, insider, &asked, now) else {
            panic!("nodes expected");
        };
        assert_eq!(contacts.len(), 2, "node 2 and the asker itself");
    }

    #[test]
    fn a_get_returns_values_when_held_and_contacts_otherwise() {
        let now = Instant::now();
        let mut tables = tables(now);
        let params = DhtParams::default();
        let key = Id([7; 20]);
        let get = Body::Get {
            key,
            max_values: 4,
            toward: key,
        };
        let (from, asked) = request(2, zone("a"), 1, get.clone());
        let Body::Values { values, contacts } = tables.answer(&params, from, &asked, now) else {
            panic!("values expected");
        };
        assert!(values.is_empty());
        assert_eq!(contacts.len(), 1);
        let (from, put) = request(2, zone("a"), 1, store_body(key, 80));
        assert_eq!(
            tables.answer(&params, from, &put, now),
            Body::Stored {
                accepted: true,
                incumbent: None
            }
        );
        let (from, asked) = request(2, zone("a"), 1, get);
        let Body::Values { values, contacts } = tables.answer(&params, from, &asked, now) else {
            panic!("values expected");
        };
        assert_eq!(values.len(), 1);
        assert!(contacts.is_empty());
    }

    #[test]
    fn probes_report_full_and_loaded_after_l_values_and_beta_requests() {
        let now = Instant::now();
        let mut tables = tables(now);
        let params = DhtParams::default();
        let key = Id([7; 20]);
        let probe = Body::Probe {
            key,
            ttl_secs: 3600,
            toward: key,
        };
        for port in 0..4 {
            let (from, put) = request(2, zone("a"), 0, store_body(key, port));
            tables.answer(&params, from, &put, now);
        }
        let mut replies = Vec::new();
        for _ in 0..13 {
            let (from, asked) = request(2, zone("a"), 0, probe.clone());
            replies.push(tables.answer(&params, from, &asked, now));
        }
        assert!(matches!(
            replies[0],
            Body::ProbeReply {
                full: true,
                loaded: false,
                ..
            }
        ));
        assert!(matches!(
            replies[12],
            Body::ProbeReply {
                full: true,
                loaded: true,
                ..
            }
        ));
        let (from, put) = request(2, zone("a"), 0, store_body_for(key, 99, 5400));
        let Body::Stored {
            accepted,
            incumbent,
        } = tables.answer(&params, from, &put, now)
        else {
            panic!("stored expected");
        };
        assert!(!accepted);
        assert_eq!(
            incumbent.map(|first| first.value.holder),
            Some(SocketAddr::from(([127, 0, 0, 9], 0))),
            "the first holder stored is the incumbent"
        );
    }
}
