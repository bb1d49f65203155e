//! Values shared by key while they are in use: whoever asks for a key gets the value the
//! others hold, or a new one when nobody holds it any more. A busy key keeps its value for
//! as long as it is busy, and an idle key costs nothing once swept.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

/// Fewest entries before forgotten ones are swept out.
const FIRST_SWEEP: usize = 64;

/// Values by key, each living as long as someone holds it.
pub struct InUse<K, V> {
    state: Mutex<State<K, V>>,
}

struct State<K, V> {
    entries: HashMap<K, Weak<V>>,
    /// Entries at which the next sweep happens: twice the live ones after the last, so
    /// sweeping costs a constant per insertion.
    sweep_at: usize,
}

impl<K: Hash + Eq, V> InUse<K, V> {
    /// Nothing in use.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                entries: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }

    /// The value in use for `key`, or a new one from `make`.
    pub fn get_or_make<Q>(&self, key: &Q, make: impl FnOnce() -> V) -> Arc<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut state = self.state.lock().expect("in-use lock");
        if let Some(value) = state.entries.get(key).and_then(Weak::upgrade) {
            return value;
        }
        if state.entries.len() >= state.sweep_at {
            state.entries.retain(|_, value| value.strong_count() > 0);
            state.sweep_at = (state.entries.len() * 2).max(FIRST_SWEEP);
        }
        let value = Arc::new(make());
        state.entries.insert(key.to_owned(), Arc::downgrade(&value));
        value
    }

    /// Keys whose value someone holds.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        let state = self.state.lock().expect("in-use lock");
        state
            .entries
            .values()
            .filter(|value| value.strong_count() > 0)
            .count()
    }
}

impl<K: Hash + Eq, V> Default for InUse<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_of_a_key_share_one_value_until_they_all_let_go() {
        let in_use: InUse<String, u32> = InUse::new();
        let first = in_use.get_or_make("a", || 1);
        let second = in_use.get_or_make("a", || 2);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(*in_use.get_or_make("b", || 3), 3);
        drop((first, second));
        assert_eq!(*in_use.get_or_make("a", || 4), 4, "a new value once idle");
    }

    #[test]
    fn forgotten_keys_are_swept_and_live_ones_kept() {
        let in_use: InUse<u32, u32> = InUse::new();
        let held: Vec<_> = (0..10)
            .map(|key| in_use.get_or_make(&key, || key))
            .collect();
        for key in 10..10_000 {
            in_use.get_or_make(&key, || key);
        }
        let entries = in_use.state.lock().unwrap().entries.len();
        assert!(entries < 2 * FIRST_SWEEP, "{entries} entries kept");
        assert_eq!(in_use.live(), held.len());
        assert!(Arc::ptr_eq(&held[3], &in_use.get_or_make(&3, || 99)));
    }
}
