//! Connections open at once per client, so that one client cannot take every connection a
//! server has: the DNS server's TCP side counts them per client network, the proxy per address.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// The connections open per client.
#[derive(Debug)]
pub struct ClientSlots<K> {
    open: Mutex<HashMap<K, u32>>,
    per_client: u32,
}

impl<K: Hash + Eq + Copy> ClientSlots<K> {
    /// At most `per_client` connections open at once per client.
    pub fn new(per_client: u32) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(HashMap::new()),
            per_client,
        })
    }

    /// A place for one more connection from `client`, held until the guard is dropped;
    /// `None` when the client has all it may have.
    pub fn enter(self: &Arc<Self>, client: K) -> Option<ClientSlot<K>> {
        let mut open = self.open.lock().expect("client slots lock");
        let count = open.entry(client).or_insert(0);
        if *count >= self.per_client {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            slots: self.clone(),
            client,
        })
    }

    /// Connections open from `client`.
    #[cfg(test)]
    fn open(&self, client: K) -> u32 {
        let open = self.open.lock().expect("client slots lock");
        open.get(&client).copied().unwrap_or(0)
    }
}

/// One connection's place among its client's; freed when dropped.
#[derive(Debug)]
pub struct ClientSlot<K: Hash + Eq + Copy> {
    slots: Arc<ClientSlots<K>>,
    client: K,
}

impl<K: Hash + Eq + Copy> Drop for ClientSlot<K> {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("client slots lock");
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn each_client_has_its_share_and_gets_it_back_as_connections_close() {
        let slots = ClientSlots::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let first = slots.enter(a).unwrap();
        let second = slots.enter(a).unwrap();
        assert!(slots.enter(a).is_none());
        let other = slots.enter(b).unwrap();
        assert_eq!((slots.open(a), slots.open(b)), (2, 1));

        drop(first);
        let third = slots.enter(a).unwrap();
        drop((second, third, other));
        assert_eq!((slots.open(a), slots.open(b)), (0, 0));
        assert!(
            slots.open.lock().unwrap().is_empty(),
            "clients are forgotten"
        );
    }
}
