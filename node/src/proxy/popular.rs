//! The URLs asked for most, for the admin page: a sample of requests counted per URL.
//!
//! One request in [`SAMPLE`] is counted (per thread, without shared state), so the count
//! costs the hit path almost nothing; counts are scaled back up when read. The table keeps
//! at most [`TRACKED`] URLs, chosen by moka's TinyLFU admission, so a scan of one-off URLs
//! does not push out the popular ones.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::sync::Cache;
use serde::Serialize;

/// One request in this many is counted.
pub const SAMPLE: u32 = 8;
/// Most URLs tracked.
const TRACKED: u64 = 10_000;

thread_local! {
    static TICK: Cell<u32> = const { Cell::new(0) };
}

/// A URL and about how many requests asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PopularUrl {
    /// The cache key: `host:port/path?query`.
    pub url: String,
    /// Requests, estimated from the sample.
    pub requests: u64,
}

/// Sampled request counts per URL.
pub struct PopularUrls {
    counts: Cache<String, Arc<AtomicU64>>,
}

impl Default for PopularUrls {
    fn default() -> Self {
        Self {
            counts: Cache::builder().max_capacity(TRACKED).build(),
        }
    }
}

impl PopularUrls {
    /// Notes a request for `url` (counted one time in [`SAMPLE`]).
    pub fn record(&self, url: &str) {
        let sampled = TICK.with(|tick| {
            let next = tick.get().wrapping_add(1);
            tick.set(next);
            next.is_multiple_of(SAMPLE)
        });
        if sampled {
            self.count(url);
        }
    }

    fn count(&self, url: &str) {
        self.counts
            .get_with_by_ref(url, || Arc::new(AtomicU64::new(0)))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The `n` URLs asked for most, most first.
    pub fn top(&self, n: usize) -> Vec<PopularUrl> {
        let mut all: Vec<PopularUrl> = self
            .counts
            .iter()
            .map(|(url, count)| PopularUrl {
                url: url.as_ref().clone(),
                requests: count.load(Ordering::Relaxed) * u64::from(SAMPLE),
            })
            .collect();
        all.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.url.cmp(&b.url)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_asked_come_first_and_counts_are_scaled_from_the_sample() {
        let popular = PopularUrls::default();
        for _ in 0..800 {
            popular.record("a:80/hot");
        }
        for _ in 0..80 {
            popular.record("a:80/warm");
        }
        popular.record("a:80/cold");
        let top = popular.top(2);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].url, "a:80/hot");
        assert!((700..=900).contains(&top[0].requests), "{top:?}");
        assert_eq!(top[1].url, "a:80/warm");
    }
}
