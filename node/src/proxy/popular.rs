//! The URLs asked for most, for the admin page: a sample of requests counted per URL.
//!
//! One request in [`SAMPLE`], picked at random (per thread, without shared state), is
//! counted, so the count costs the hit path almost nothing; counts are scaled back up when
//! read. URLs are counted without their query strings (which may carry tokens, and would
//! split one page into many). The table holds at most [`TRACKED_BYTES`] of URLs, chosen by
//! moka's TinyLFU admission, so a scan of one-off URLs does not push out the popular ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::sync::Cache;
use serde::Serialize;

/// One request in this many is counted.
pub const SAMPLE: u32 = 8;
/// Memory for the tracked URLs (each weighs its length and 64 bytes).
const TRACKED_BYTES: u64 = 2 << 20;

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
            counts: Cache::builder()
                .max_capacity(TRACKED_BYTES)
                .weigher(|url: &String, _| u32::try_from(url.len() + 64).unwrap_or(u32::MAX))
                .build(),
        }
    }
}

impl PopularUrls {
    /// Notes a request for `url` (counted one time in [`SAMPLE`], at random).
    pub fn record(&self, url: &str) {
        if rand::random_ratio(1, SAMPLE) {
            let path = url.split_once('?').map_or(url, |(path, _)| path);
            self.counts
                .get_with_by_ref(path, || Arc::new(AtomicU64::new(0)))
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The `n` URLs asked for most, most first.
    pub fn top(&self, n: usize) -> Vec<PopularUrl> {
        let mut all: Vec<(Arc<String>, u64)> = self
            .counts
            .iter()
            .map(|(url, count)| (url, count.load(Ordering::Relaxed)))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.into_iter()
            .take(n)
            .map(|(url, count)| PopularUrl {
                url: url.as_ref().clone(),
                requests: count * u64::from(SAMPLE),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_asked_come_first_and_counts_are_scaled_from_the_sample() {
        let popular = PopularUrls::default();
        for index in 0..8000 {
            popular.record(&format!("a:80/hot?session={index}"));
        }
        for _ in 0..800 {
            popular.record("a:80/warm");
        }
        popular.record("a:80/cold");
        let top = popular.top(2);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].url, "a:80/hot", "counted without the query");
        assert!((6000..=10000).contains(&top[0].requests), "{top:?}");
        assert_eq!(top[1].url, "a:80/warm");
    }
}
