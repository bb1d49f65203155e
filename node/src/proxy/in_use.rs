//! Values shared by key while they are in use: whoever asks for a key gets the value the
//! others hold, or a new one. A value nobody holds is forgotten at the next sweep once it is
//! idle (by a test of the caller's), so a busy key keeps its value for as long as it is busy
//! and an idle key costs nothing once swept.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Fewest entries before unheld ones are swept out.
const FIRST_SWEEP: usize = 64;

/// Values by key, each kept while someone holds it or it is not idle.
pub struct InUse<K, V> {
    state: Mutex<State<K, V>>,
    is_idle: fn(&V) -> bool,
}

struct State<K, V> {
    entries: HashMap<K, Arc<V>>,
    /// Entries at which the next sweep happens: twice those kept by the last, so sweeping
    /// costs a constant per insertion.
    sweep_at: usize,
}

impl<K: Hash + Eq, V> InUse<K, V> {
    /// Nothing in use; a value nobody holds may be forgotten at once.
    pub fn new() -> Self {
        Self::forgetting_when(|_| true)
    }

    /// Nothing in use; a value nobody holds may be forgotten once `is_idle` says so.
    pub fn forgetting_when(is_idle: fn(&V) -> bool) -> Self {
        Self {
            state: Mutex::new(State {
                entries: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
            is_idle,
        }
    }

    /// The value kept for `key`, or a new one from `make`.
    pub fn get_or_make<Q>(&self, key: &Q, make: impl FnOnce() -> V) -> Arc<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut state = self.state.lock().expect("in-use lock");
        if let Some(value) = state.entries.get(key) {
            return value.clone();
        }
        if state.entries.len() >= state.sweep_at {
            let is_idle = self.is_idle;
            state
                .entries
                .retain(|_, value| Arc::strong_count(value) > 1 || !is_idle(value));
            state.sweep_at = (state.entries.len() * 2).max(FIRST_SWEEP);
        }
        let value = Arc::new(make());
        state.entries.insert(key.to_owned(), value.clone());
        value
    }

    /// Keys whose value someone holds.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        let state = self.state.lock().expect("in-use lock");
        state
            .entries
            .values()
            .filter(|value| Arc::strong_count(value) > 1)
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
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn holders_of_a_key_share_one_value() {
        let in_use: InUse<String, u32> = InUse::new();
        let first = in_use.get_or_make("a", || 1);
        let second = in_use.get_or_make("a", || 2);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(*in_use.get_or_make("b", || 3), 3);
        assert_eq!(in_use.held(), 1);
    }

    #[test]
    fn unheld_idle_values_are_swept_and_the_others_kept() {
        let in_use: InUse<u32, AtomicBool> =
            InUse::forgetting_when(|idle| idle.load(Ordering::Relaxed));
        let held: Vec<_> = (0..10)
            .map(|key| in_use.get_or_make(&key, || AtomicBool::new(true)))
            .collect();
        let busy = in_use.get_or_make(&10, || AtomicBool::new(false));
        drop(busy);
        for key in 11..10_000 {
            in_use.get_or_make(&key, || AtomicBool::new(true));
        }
        let entries = in_use.state.lock().unwrap().entries.len();
        assert!(entries < 2 * FIRST_SWEEP, "{entries} entries kept");
        assert!(Arc::ptr_eq(
            &held[3],
            &in_use.get_or_make(&3, || AtomicBool::new(true))
        ));
        let kept = in_use.get_or_make(&10, || AtomicBool::new(true));
        assert!(
            !kept.load(Ordering::Relaxed),
            "a busy value outlives its holders"
        );
    }
}
