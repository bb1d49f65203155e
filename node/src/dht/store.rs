//! The sloppy store: the values one node holds for one level, and its load per key.
//!
//! A key maps to several values (holders of an object), each with its own expiry. The store
//! also counts requests per key over the last minute, because that is what makes Coral's put
//! "sloppy": a node that is *full* (holds `l` values that live at least half as long as a new
//! one) and *loaded* (more than `beta` requests for the key in the past minute) tells putters
//! to stop short of it, so hot keys spill onto nodes further from the key instead of melting
//! the closest one. This module decides; it sends nothing.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use serde::Serialize;
use tokio::time::Instant;

use super::id::Id;
use super::locality::Locality;
use super::wire::{TimedValue, Value};

/// The window over which requests for a key are counted.
pub const LOAD_WINDOW: Duration = Duration::from_secs(60);

/// Limits of one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// `l`: values per key that make a node full; also the most values kept per key.
    pub values_per_key: usize,
    /// `beta`: requests for a key in the last minute above which a node is loaded.
    pub loaded_per_minute: usize,
    /// Most keys tracked (values or request counts); requests for further keys are not stored.
    pub max_keys: usize,
}

/// The values and load of one level on one node.
#[derive(Debug)]
pub struct SloppyStore {
    limits: StoreLimits,
    keys: HashMap<Id, KeyState>,
    rng: SmallRng,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Default)]
struct KeyState {
    values: Vec<StoredValue>,
    /// Times of the latest requests, at most `beta + 1` of them: enough to tell "loaded".
    recent: VecDeque<Instant>,
}

#[derive(Debug)]
struct StoredValue {
    value: Value,
    expires: Instant,
    locality: Locality,
    /// When this holder was first stored (refreshes keep it).
    since: Instant,
}

/// Size of a store, for metrics and the admin page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Keys with at least one value.
    pub keys: usize,
    /// Values across all keys.
    pub values: usize,
    /// Keys currently loaded.
    pub loaded_keys: usize,
}

impl SloppyStore {
    /// An empty store; `seed` makes the order of returned values reproducible.
    pub fn new(limits: StoreLimits, seed: u64) -> Self {
        Self {
            limits,
            keys: HashMap::new(),
            rng: SmallRng::seed_from_u64(seed),
            last_sweep: None,
        }
    }

    /// Counts one request (a get or a probe) for `key`. Only keys this node holds values for
    /// are counted: a node without values is never full, so its load cannot matter, and
    /// requests for keys nobody stored must not take room from real values.
    pub fn note_request(&mut self, key: &Id, now: Instant) {
        let kept = self.limits.loaded_per_minute + 1;
        let Some(state) = self.keys.get_mut(key) else {
            return;
        };
        state.recent.push_back(now);
        while state.recent.len() > kept {
            state.recent.pop_front();
        }
    }

    /// Whether more than `beta` requests for `key` came in the last minute.
    pub fn is_loaded(&self, key: &Id, now: Instant) -> bool {
        self.keys.get(key).is_some_and(|state| {
            state.recent.len() > self.limits.loaded_per_minute
                && state
                    .recent
                    .front()
                    .is_some_and(|first| now.duration_since(*first) < LOAD_WINDOW)
        })
    }

    /// Whether `key` holds `l` values that each live at least half of `ttl` longer.
    pub fn is_full(&self, key: &Id, ttl: Duration, now: Instant) -> bool {
        self.keys.get(key).is_some_and(|state| {
            state
                .values
                .iter()
                .filter(|v| v.expires.saturating_duration_since(now) >= ttl / 2)
                .count()
                >= self.limits.values_per_key
        })
    }

    /// Stores `value` for `ttl`, put by a node at `locality`. A holder already present is
    /// refreshed. A node that is full and loaded refuses newcomers (the putter then tries the
    /// next node out); otherwise the value that expires first makes room.
    pub fn store(
        &mut self,
        key: &Id,
        value: Value,
        ttl: Duration,
        locality: Locality,
        now: Instant,
    ) -> bool {
        let refuse = self.is_full(key, ttl, now) && self.is_loaded(key, now);
        let limit = self.limits.values_per_key;
        let Some(state) = self.entry(key, now) else {
            return false;
        };
        let expires = now + ttl;
        if let Some(known) = state
            .values
            .iter_mut()
            .find(|v| v.value.holder == value.holder)
        {
            known.value = value;
            known.expires = known.expires.max(expires);
            known.locality = locality;
            return true;
        }
        if refuse {
            return false;
        }
        if state.values.len() >= limit {
            let first = (0..state.values.len())
                .min_by_key(|&i| state.values[i].expires)
                .expect("values not empty");
            if state.values[first].expires >= expires {
                return false;
            }
            state.values.swap_remove(first);
        }
        state.values.push(StoredValue {
            value,
            expires,
            locality,
            since: now,
        });
        true
    }

    /// The live value stored first for `key` whose holder is not `besides`: the incumbent a
    /// newcomer should defer to. Stores at one node are serialised, so of several nodes
    /// storing at once, exactly one sees no incumbent.
    pub fn incumbent(&self, key: &Id, besides: SocketAddr, now: Instant) -> Option<TimedValue> {
        let state = self.keys.get(key)?;
        let first = state
            .values
            .iter()
            .filter(|v| v.expires > now && v.value.holder != besides)
            .min_by_key(|v| v.since)?;
        Some(TimedValue {
            value: first.value.clone(),
            ttl_secs: u32::try_from(first.expires.duration_since(now).as_secs().max(1))
                .unwrap_or(u32::MAX),
        })
    }

    /// Up to `max` live values for `key`, those whose holders share the most local cluster with
    /// `asker` first, in random order within a rank to spread load over holders.
    pub fn values(
        &mut self,
        key: &Id,
        asker: &Locality,
        max: usize,
        now: Instant,
    ) -> Vec<TimedValue> {
        let Some(state) = self.keys.get_mut(key) else {
            return Vec::new();
        };
        state.values.retain(|v| v.expires > now);
        let mut ranked: Vec<&StoredValue> = state.values.iter().collect();
        ranked.shuffle(&mut self.rng);
        ranked.sort_by_key(|v| std::cmp::Reverse(asker.shared_depth(&v.locality)));
        ranked
            .into_iter()
            .take(max)
            .map(|v| TimedValue {
                value: v.value.clone(),
                ttl_secs: u32::try_from(v.expires.duration_since(now).as_secs().max(1))
                    .unwrap_or(u32::MAX),
            })
            .collect()
    }

    /// Drops expired values and the keys left without any.
    pub fn expire(&mut self, now: Instant) {
        self.keys.retain(|_, state| {
            state.values.retain(|v| v.expires > now);
            !state.values.is_empty()
        });
    }

    /// Current size.
    pub fn stats(&self, now: Instant) -> StoreStats {
        let mut stats = StoreStats::default();
        for (key, state) in &self.keys {
            let live = state.values.iter().filter(|v| v.expires > now).count();
            stats.keys += usize::from(live > 0);
            stats.values += live;
            stats.loaded_keys += usize::from(self.is_loaded(key, now));
        }
        stats
    }

    /// The state of `key`, created if there is room. A full store sweeps out expired keys at
    /// most once a second, so a stream of new keys cannot make every store scan the map.
    fn entry(&mut self, key: &Id, now: Instant) -> Option<&mut KeyState> {
        if !self.keys.contains_key(key) && self.keys.len() >= self.limits.max_keys {
            if self
                .last_sweep
                .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
            {
                return None;
            }
            self.last_sweep = Some(now);
            self.expire(now);
            if self.keys.len() >= self.limits.max_keys {
                return None;
            }
        }
        Some(self.keys.entry(*key).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    const LIMITS: StoreLimits = StoreLimits {
        values_per_key: 4,
        loaded_per_minute: 12,
        max_keys: 100,
    };
    const HOUR: Duration = Duration::from_secs(3600);

    fn value(port: u16) -> Value {
        Value {
            holder: SocketAddr::from(([127, 0, 0, 1], port)),
            meta: b"complete".to_vec(),
        }
    }

    fn zone(name: &str) -> Locality {
        Locality::from_labels(&[name, "region-1"])
    }

    #[test]
    fn a_key_holds_several_values_and_returns_some() {
        let mut store = SloppyStore::new(LIMITS, 1);
        let now = Instant::now();
        let key = Id([1; 20]);
        for port in 1..=3 {
            assert!(store.store(&key, value(port), HOUR, zone("a"), now));
        }
        assert_eq!(store.values(&key, &zone("a"), 2, now).len(), 2);
        assert_eq!(store.values(&key, &zone("a"), 8, now).len(), 3);
    }

    #[test]
    fn values_expire() {
        let mut store = SloppyStore::new(LIMITS, 1);
        let now = Instant::now();
        let key = Id([1; 20]);
        store.store(&key, value(1), Duration::from_secs(20), zone("a"), now);
        store.store(&key, value(2), HOUR, zone("a"), now);
        let later = now + Duration::from_secs(21);
        let left = store.values(&key, &zone("a"), 8, later);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].value, value(2));
        assert_eq!(left[0].ttl_secs, 3600 - 21);
        store.expire(now + 2 * HOUR);
        assert_eq!(store.stats(now + 2 * HOUR), StoreStats::default());
    }

    #[test]
    fn holders_in_the_askers_zone_come_first() {
        let mut store = SloppyStore::new(LIMITS, 1);
        let now = Instant::now();
        let key = Id([1; 20]);
        store.store(&key, value(1), HOUR, zone("b"), now);
        store.store(&key, value(2), HOUR, zone("a"), now);
        store.store(
            &key,
            value(3),
            HOUR,
            Locality::from_labels(&["c", "region-2"]),
            now,
        );
        for _ in 0..10 {
            assert_eq!(store.values(&key, &zone("a"), 1, now)[0].value, value(2));
            assert_eq!(store.values(&key, &zone("b"), 1, now)[0].value, value(1));
        }
    }

    #[test]
    fn full_means_l_values_living_at_least_half_the_new_ttl() {
        let mut store = SloppyStore::new(LIMITS, 1);
        let now = Instant::now();
        let key = Id([1; 20]);
        for port in 1..=4 {
            store.store(&key, value(port), Duration::from_secs(20), zone("a"), now);
        }
        assert!(store.is_full(&key, Duration::from_secs(40), now));
        assert!(
            !store.is_full(&key, HOUR, now),
            "20 s values are short next to an hour"
        );
    }

    #[test]
    fn loaded_means_more_than_beta_requests_in_the_last_minute() {
        let mut store = SloppyStore::new(LIMITS, 1);
        let now = Instant::now();
        let key = Id([1; 20]);
        store.store(&key, value(1), HOUR, zone("a"), now);
        for _ in 0..12 {
            store.note_request(&key, now);
        }
        assert!(!store.is_loaded(&key, now));
        store.note_request(&key, now + Duration::from_secs(1));
        assert!(store.is_loaded(&key, now + Duration::from_secs(1)));
        assert!(!store.is_loaded(&key, now + Duration::from_secs(61)));
    }

    #[test]
    fn a_full_and_loaded_node_refuses_newcomers_but_refreshes_holders() {
        let mut store = SloppyStore::new(LIMITS, 1);
        let now = Instant::now();
        let key = Id([1; 20]);
        for port in 1..=4 {
            store.store(&key, value(port), HOUR, zone("a"), now);
        }
        assert!(
            store.store(&key, value(5), 2 * HOUR, zone("a"), now),
            "full but not loaded: the value expiring first makes room"
        );
        assert!(
            !store.store(&key, value(7), HOUR, zone("a"), now),
            "would expire first itself"
        );
        for _ in 0..13 {
            store.note_request(&key, now);
        }
        assert!(
            !store.store(&key, value(6), HOUR * 3 / 2, zone("a"), now),
            "full (every value lives half of 90 min) and loaded: refused, though it outlives them"
        );
        assert!(store.store(&key, value(5), HOUR, zone("a"), now));
        assert_eq!(store.values(&key, &zone("a"), 8, now).len(), 4);
    }

    #[test]
    fn the_number_of_tracked_keys_is_bounded() {
        let limits = StoreLimits {
            max_keys: 3,
            ..LIMITS
        };
        let mut store = SloppyStore::new(limits, 1);
        let now = Instant::now();
        for n in 0..3 {
            assert!(store.store(&Id([n; 20]), value(1), HOUR, zone("a"), now));
        }
        assert!(!store.store(&Id([9; 20]), value(1), HOUR, zone("a"), now));
        assert_eq!(store.stats(now).keys, 3);
        assert!(store.store(&Id([9; 20]), value(1), HOUR, zone("a"), now + 2 * HOUR));
    }

    #[test]
    fn requests_for_keys_without_values_take_no_room() {
        let limits = StoreLimits {
            max_keys: 1,
            ..LIMITS
        };
        let mut store = SloppyStore::new(limits, 1);
        let now = Instant::now();
        for n in 0..100 {
            store.note_request(&Id([n; 20]), now);
        }
        assert!(!store.is_loaded(&Id([0; 20]), now));
        assert!(store.store(&Id([200; 20]), value(1), HOUR, zone("a"), now));
    }

    #[test]
    fn the_incumbent_is_the_first_other_holder_stored() {
        let mut store = SloppyStore::new(LIMITS, 1);
        let now = Instant::now();
        let key = Id([1; 20]);
        let second = Duration::from_secs(1);
        assert_eq!(store.incumbent(&key, value(1).holder, now), None);
        store.store(&key, value(1), HOUR, zone("a"), now);
        store.store(&key, value(2), HOUR, zone("a"), now + second);
        store.store(&key, value(1), HOUR, zone("a"), now + 2 * second);
        let later = now + 3 * second;
        let incumbent = |besides: u16| {
            store
                .incumbent(&key, value(besides).holder, later)
                .map(|first| first.value)
        };
        assert_eq!(incumbent(2), Some(value(1)), "a refresh keeps its place");
        assert_eq!(incumbent(1), Some(value(2)));
        assert_eq!(incumbent(3), Some(value(1)));
    }
}
