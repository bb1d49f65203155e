//! The object cache, and the RFC 9111 rules applied to what it holds.
//!
//! The memory tier is moka's cache: a byte budget (each entry weighs its body and headers),
//! TinyLFU admission so a one-off scan of many URLs cannot flush the objects people keep
//! asking for, and LRU eviction among the admitted. Behind it, the [`DiskTier`] keeps a copy
//! of everything stored, under its own budget, across restarts. Bodies the node is set to send
//! with `sendfile` are sealed here as they enter memory ([`sealed`]). Freshness, `Vary`, `no-store`, `private`,
//! `Authorization` and request directives are decided by http-cache-semantics' shared-cache
//! policy, kept next to each stored response.
//!
//! One URL may hold several responses that differ by their `Vary` headers (at most
//! [`MAX_VARIANTS`], newest first).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request;
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy};
use moka::sync::Cache;
use tokio::sync::OnceCell;

use super::disk::DiskTier;
use super::sealed;
use super::transfer::Head;

/// Responses kept per URL that differ by `Vary`.
pub const MAX_VARIANTS: usize = 8;
/// Longest freshness honoured, whatever `max-age` says (ten years).
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A response in the cache.
#[derive(Debug)]
pub struct Stored {
    /// The policy: freshness, age and what requests it may answer.
    pub policy: CachePolicy,
    /// Status and end-to-end headers, as served.
    pub head: Head,
    /// The whole body.
    pub body: Bytes,
    /// When it stops being fresh.
    pub expires_at: SystemTime,
    /// Whether the response has a `Vary` header.
    varies: bool,
}

impl Stored {
    /// A stored response made from the request that fetched it and the origin's response.
    pub fn new(
        request: &request::Parts,
        head: Head,
        body: Bytes,
        response_time: SystemTime,
    ) -> Self {
        let response = head_parts(&head);
        let policy =
            CachePolicy::new_options(request, &response, response_time, CacheOptions::default());
        Self::with_policy(policy, head, body, response_time)
    }

    /// A stored response with a policy already computed (after revalidation).
    pub fn with_policy(policy: CachePolicy, head: Head, body: Bytes, now: SystemTime) -> Self {
        let expires_at = now
            .checked_add(policy.time_to_live(now).min(MAX_LIFETIME))
            .unwrap_or(now);
        let varies = head.headers.contains_key(http::header::VARY);
        Self {
            policy,
            head,
            body,
            expires_at,
            varies,
        }
    }

    /// How long ago it stopped being fresh (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        now.duration_since(self.expires_at).unwrap_or_default()
    }

    /// Whether the origin forbade serving it stale (`must-revalidate`, `proxy-revalidate`,
    /// `no-cache` or `s-maxage`, per RFC 9111 section 4.2.4 and 5.2.2).
    pub fn forbids_stale(&self) -> bool {
        self.directives().any(|directive| {
            directive == "must-revalidate"
                || directive == "proxy-revalidate"
                || directive == "no-cache"
                || directive.starts_with("s-maxage")
        })
    }

    /// Whether the origin said no cache may keep it at all (`no-store` or `private`).
    pub fn forbids_keeping(&self) -> bool {
        self.directives()
            .any(|directive| directive == "no-store" || directive == "private")
    }

    /// The response's `Cache-Control` directives, lowercase.
    fn directives(&self) -> impl Iterator<Item = String> {
        self.head
            .headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|directive| directive.trim().to_ascii_lowercase())
    }

    fn weight(&self) -> u32 {
        let headers: usize = self
            .head
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 32)
            .sum();
        u32::try_from(self.body.len() + headers + 256).unwrap_or(u32::MAX)
    }
}

/// What the cache can do for a request.
pub enum Lookup {
    /// A response that may be served as it is.
    Fresh(Arc<Stored>),
    /// A response for this request that must be revalidated first (or served stale if the
    /// origin fails).
    Stale(Arc<Stored>),
    /// Nothing usable.
    Miss,
}

/// `stored` as the memory tier keeps it: its body in a sealed memory file when at least
/// `sendfile_min_len` long.
fn kept(stored: Stored, sendfile_min_len: Option<usize>) -> Arc<Stored> {
    Arc::new(match sendfile_min_len {
        Some(min_len) => Stored {
            body: sealed::seal(stored.body, min_len),
            ..stored
        },
        None => stored,
    })
}

/// The responses stored for one URL.
type Variants = Arc<Vec<Arc<Stored>>>;

/// A load from the disk tier that concurrent lookups of the same URL share.
type Load = Arc<OnceCell<Option<Variants>>>;

/// Objects and bytes held by each tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Objects (URLs) and bytes in memory.
    pub memory: (u64, u64),
    /// Objects (URLs) and bytes on disk, when there is a disk tier.
    pub disk: Option<(u64, u64)>,
}

/// The object cache: the memory tier, backed by the disk tier when there is one.
pub struct ObjectCache {
    memory: Cache<String, Variants>,
    disk: Option<DiskTier>,
    loads: Mutex<HashMap<String, Load>>,
    /// Invalidations so far: a disk read that overlapped one does not fill the memory tier.
    invalidations: AtomicU64,
    /// Bodies at least this long are kept in sealed memory files ([`sealed`]); `None` keeps
    /// every body in ordinary memory.
    sendfile_min_len: Option<usize>,
}

impl ObjectCache {
    /// A cache holding at most `memory_budget` bytes in memory, and what `disk` holds; bodies
    /// at least `sendfile_min_len` long are kept in sealed memory files, to be sent with
    /// `sendfile` ([`sealed`]).
    pub fn new(
        memory_budget: u64,
        disk: Option<DiskTier>,
        sendfile_min_len: Option<usize>,
    ) -> Self {
        Self {
            memory: Cache::builder()
                .max_capacity(memory_budget)
                .weigher(|_, variants: &Variants| {
                    variants
                        .iter()
                        .fold(0u32, |total, stored| total.saturating_add(stored.weight()))
                })
                .build(),
            disk,
            loads: Mutex::new(HashMap::new()),
            invalidations: AtomicU64::new(0),
            sendfile_min_len,
        }
    }

    /// What was read back from disk, as the memory tier keeps it; sealing copies whole
    /// bodies, so it runs off the runtime's threads. `None` if sealing panicked.
    async fn kept_from_disk(&self, loaded: Vec<Stored>) -> Option<Vec<Arc<Stored>>> {
        let min_len = self.sendfile_min_len;
        let all_kept = move || {
            loaded
                .into_iter()
                .map(|stored| kept(stored, min_len))
                .collect()
        };
        if min_len.is_none() {
            return Some(all_kept());
        }
        tokio::task::spawn_blocking(all_kept).await.ok()
    }

    /// The fast path of cache hits: the URL's only response in memory, when it is fresh,
    /// varies on nothing, and the request sets no cache directives. Then the full policy
    /// check ([`ObjectCache::lookup`]) could only agree, so it is skipped.
    pub fn fresh(
        &self,
        key: &str,
        request: &http::HeaderMap,
        now: SystemTime,
    ) -> Option<Arc<Stored>> {
        if request.contains_key(http::header::CACHE_CONTROL)
            || request.contains_key(http::header::PRAGMA)
        {
            return None;
        }
        let variants = self.memory.get(key)?;
        match variants.as_slice() {
            [only] if !only.varies && now < only.expires_at => Some(only.clone()),
            _ => None,
        }
    }

    /// Finds a response for a request (`key` is its URL, `request` the request as the cache
    /// sees it), in memory, then on disk.
    pub async fn lookup(&self, key: &str, request: &request::Parts, now: SystemTime) -> Lookup {
        let Some(variants) = self.variants(key).await else {
            return Lookup::Miss;
        };
        for stored in variants.iter() {
            match stored.policy.before_request(request, now) {
                BeforeRequest::Fresh(_) => return Lookup::Fresh(stored.clone()),
                BeforeRequest::Stale { matches: true, .. } => {
                    return Lookup::Stale(stored.clone());
                }
                BeforeRequest::Stale { matches: false, .. } => {}
            }
        }
        Lookup::Miss
    }

    /// The URL's responses from memory, or else read back from disk into memory (one read
    /// however many requests ask at once).
    async fn variants(&self, key: &str) -> Option<Variants> {
        if let Some(variants) = self.memory.get(key) {
            return Some(variants);
        }
        let disk = self.disk.as_ref()?;
        let load = self
            .loads
            .lock()
            .expect("loads lock")
            .entry(key.to_owned())
            .or_default()
            .clone();
        let _forget = ForgetLoad {
            loads: &self.loads,
            key,
            load: &load,
        };
        load.get_or_init(|| async {
            let invalidations = self.invalidations.load(Ordering::Acquire);
            let loaded = disk.load(key).await?;
            let variants = Arc::new(self.kept_from_disk(loaded).await?);
            if self.invalidations.load(Ordering::Acquire) != invalidations {
                // Something was invalidated while the file was read: it may have been this
                // URL, so the copy answers the request that asked, and is not kept.
                return Some(variants);
            }
            // A response stored while the file was read is newer: keep it.
            let kept = self
                .memory
                .entry_by_ref(key)
                .or_insert(variants)
                .into_value();
            Some(kept)
        })
        .await
        .clone()
    }

    /// Stores a response, replacing the variant it supersedes (the one answering the same
    /// request), in memory and on disk, and returns it as kept. A response that varies keeps
    /// the URL's other variants, also when only the disk tier still held them; one that does
    /// not answers every request and so replaces them all.
    pub async fn insert(
        &self,
        key: &str,
        request: &request::Parts,
        stored: Stored,
        now: SystemTime,
    ) -> Arc<Stored> {
        let stored = kept(stored, self.sendfile_min_len);
        let invalidations = self.invalidations.load(Ordering::Acquire);
        let others = if stored.varies {
            self.variants(key).await
        } else {
            None
        };
        let mut variants = vec![stored.clone()];
        // Variants read while something was invalidated may be what was invalidated.
        let others = others.filter(|_| self.invalidations.load(Ordering::Acquire) == invalidations);
        if let Some(old) = others {
            variants.extend(
                old.iter()
                    .filter(|old| {
                        matches!(
                            old.policy.before_request(request, now),
                            BeforeRequest::Stale { matches: false, .. }
                        )
                    })
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
        }
        if let Some(disk) = &self.disk {
            disk.store(key, variants.clone());
        }
        self.memory.insert(key.to_owned(), Arc::new(variants));
        stored
    }

    /// Forgets every response for a URL.
    pub fn invalidate(&self, key: &str) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.memory.invalidate(key);
        if let Some(disk) = &self.disk {
            disk.remove(key);
        }
    }

    /// Waits until what was stored so far is on disk.
    pub async fn flush(&self) {
        if let Some(disk) = &self.disk {
            disk.flush().await;
        }
    }

    /// Whether the cache can take new objects: false after the disk tier failed a write.
    pub fn writable(&self) -> bool {
        self.disk.as_ref().is_none_or(DiskTier::writable)
    }

    /// Objects and bytes held by each tier (moka's counts, updated as it runs its upkeep).
    pub fn usage(&self) -> Usage {
        self.memory.run_pending_tasks();
        Usage {
            memory: (self.memory.entry_count(), self.memory.weighted_size()),
            disk: self.disk.as_ref().map(DiskTier::usage),
        }
    }
}

/// Removes a finished (or abandoned) disk load from the shared table.
struct ForgetLoad<'a> {
    loads: &'a Mutex<HashMap<String, Load>>,
    key: &'a str,
    load: &'a Load,
}

impl Drop for ForgetLoad<'_> {
    fn drop(&mut self) {
        let mut loads = self.loads.lock().expect("loads lock");
        if loads
            .get(self.key)
            .is_some_and(|current| Arc::ptr_eq(current, self.load))
        {
            loads.remove(self.key);
        }
    }
}

/// A head as http-cache-semantics reads responses.
pub fn head_parts(head: &Head) -> http::response::Parts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = head.status;
    parts.headers = head.headers.clone();
    parts
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::proxy::metrics::ProxyMetrics;
    use http::{HeaderMap, HeaderValue, Method, StatusCode};

    /// A GET of `http://origin.test/a` with these headers.
    pub fn request(headers: &[(&'static str, &'static str)]) -> request::Parts {
        let mut builder = http::Request::builder()
            .method(Method::GET)
            .uri("http://origin.test/a");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    /// A 200 head with these headers.
    pub fn head(headers: &[(&'static str, &'static str)]) -> Head {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        Head {
            status: StatusCode::OK,
            headers: map,
        }
    }

    /// A 1 MiB disk tier in `dir` (a node's, or the same node's after a restart).
    fn disk_tier(dir: &std::path::Path) -> Option<DiskTier> {
        let counters = ProxyMetrics::unregistered().disk_counters();
        Some(DiskTier::open(dir, 1 << 20, counters).unwrap())
    }

    async fn store(cache: &ObjectCache, req: &request::Parts, response: Head, now: SystemTime) {
        let stored = Stored::new(req, response, Bytes::from_static(b"body"), now);
        assert!(stored.policy.is_storable());
        cache.insert("k", req, stored, now).await;
    }

    #[tokio::test]
    async fn fresh_then_stale_as_max_age_passes() {
        let cache = ObjectCache::new(1 << 20, None, None);
        let now = SystemTime::now();
        let req = request(&[]);
        store(&cache, &req, head(&[("cache-control", "max-age=60")]), now).await;
        assert!(matches!(
            cache.lookup("k", &req, now).await,
            Lookup::Fresh(_)
        ));
        assert!(cache.fresh("k", &req.headers, now).is_some());
        let later = now + Duration::from_secs(61);
        assert!(cache.fresh("k", &req.headers, later).is_none());
        let Lookup::Stale(stored) = cache.lookup("k", &req, later).await else {
            panic!("expected stale");
        };
        assert_eq!(stored.staleness(later), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn vary_keeps_one_response_per_variant() {
        let cache = ObjectCache::new(1 << 20, None, None);
        let now = SystemTime::now();
        let vary = [("cache-control", "max-age=60"), ("vary", "accept-language")];
        let english = request(&[("accept-language", "en")]);
        let french = request(&[("accept-language", "fr")]);
        store(&cache, &english, head(&vary), now).await;
        assert!(matches!(
            cache.lookup("k", &french, now).await,
            Lookup::Miss
        ));
        assert!(
            cache.fresh("k", &french.headers, now).is_none(),
            "Vary takes the full check"
        );
        store(&cache, &french, head(&vary), now).await;
        assert!(matches!(
            cache.lookup("k", &english, now).await,
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            cache.lookup("k", &french, now).await,
            Lookup::Fresh(_)
        ));
    }

    #[tokio::test]
    async fn request_directives_take_the_full_check() {
        let cache = ObjectCache::new(1 << 20, None, None);
        let now = SystemTime::now();
        store(
            &cache,
            &request(&[]),
            head(&[("cache-control", "max-age=60")]),
            now,
        )
        .await;
        let no_cache = request(&[("cache-control", "no-cache")]);
        assert!(cache.fresh("k", &no_cache.headers, now).is_none());
        assert!(matches!(
            cache.lookup("k", &no_cache, now).await,
            Lookup::Stale(_)
        ));
    }

    #[test]
    fn private_and_no_store_responses_are_not_storable() {
        let now = SystemTime::now();
        for directive in ["private, max-age=60", "no-store"] {
            let stored = Stored::new(
                &request(&[]),
                head(&[("cache-control", directive)]),
                Bytes::new(),
                now,
            );
            assert!(!stored.policy.is_storable(), "{directive}");
        }
    }

    #[test]
    fn must_revalidate_forbids_stale_serving() {
        let now = SystemTime::now();
        let strict = Stored::new(
            &request(&[]),
            head(&[("cache-control", "max-age=1, must-revalidate")]),
            Bytes::new(),
            now,
        );
        let lax = Stored::new(
            &request(&[]),
            head(&[("cache-control", "max-age=1")]),
            Bytes::new(),
            now,
        );
        assert!(strict.forbids_stale());
        assert!(!lax.forbids_stale());
    }

    #[test]
    fn absurd_lifetimes_do_not_overflow() {
        let now = SystemTime::now();
        let stored = Stored::new(
            &request(&[]),
            head(&[
                ("cache-control", "max-age=18446744073709551615"),
                ("age", "1"),
            ]),
            Bytes::new(),
            now,
        );
        assert!(stored.expires_at > now);
    }

    #[tokio::test]
    async fn the_budget_evicts() {
        let cache = ObjectCache::new(64 * 1024, None, None);
        let now = SystemTime::now();
        let req = request(&[]);
        for index in 0..100 {
            let stored = Stored::new(
                &req,
                head(&[("cache-control", "max-age=60")]),
                Bytes::from(vec![0; 4096]),
                now,
            );
            cache.insert(&format!("k{index}"), &req, stored, now).await;
        }
        let (_, bytes) = cache.usage().memory;
        assert!(bytes <= 64 * 1024, "{bytes} bytes held");
    }

    #[tokio::test]
    async fn a_scan_of_one_off_urls_does_not_push_out_the_popular_ones() {
        let cache = ObjectCache::new(64 * 1024, None, None);
        let now = SystemTime::now();
        let req = request(&[]);
        let object = || {
            let response = head(&[("cache-control", "max-age=60")]);
            Stored::new(&req, response, Bytes::from(vec![0; 4096]), now)
        };
        let popular: Vec<String> = (0..8).map(|index| format!("popular{index}")).collect();
        for key in &popular {
            cache.insert(key, &req, object(), now).await;
        }
        for _ in 0..20 {
            for key in &popular {
                assert!(
                    cache.fresh(key, &req.headers, now).is_some(),
                    "{key} lost early"
                );
            }
        }
        for index in 0..1000 {
            cache
                .insert(&format!("scan{index}"), &req, object(), now)
                .await;
        }
        cache.usage();
        let kept = popular
            .iter()
            .filter(|key| cache.fresh(key, &req.headers, now).is_some())
            .count();
        assert_eq!(kept, popular.len(), "popular objects pushed out by a scan");
    }

    #[tokio::test]
    async fn memory_misses_are_read_back_from_disk_once_then_served_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let open = || disk_tier(dir.path());
        let now = SystemTime::now();
        let req = request(&[]);
        let first = ObjectCache::new(1 << 20, open(), None);
        store(&first, &req, head(&[("cache-control", "max-age=60")]), now).await;
        first.flush().await;

        let second = ObjectCache::new(1 << 20, open(), None);
        assert!(
            second.fresh("k", &req.headers, now).is_none(),
            "not in memory yet"
        );
        let Lookup::Fresh(stored) = second.lookup("k", &req, now).await else {
            panic!("expected the disk copy");
        };
        assert_eq!(stored.body, "body");
        assert!(second.fresh("k", &req.headers, now).is_some(), "promoted");

        second.invalidate("k");
        second.flush().await;
        let third = ObjectCache::new(1 << 20, open(), None);
        assert!(matches!(third.lookup("k", &req, now).await, Lookup::Miss));
    }

    #[tokio::test]
    async fn a_new_variant_keeps_the_ones_only_the_disk_tier_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        let open = || disk_tier(dir.path());
        let now = SystemTime::now();
        let vary = [("cache-control", "max-age=60"), ("vary", "accept-language")];
        let english = request(&[("accept-language", "en")]);
        let french = request(&[("accept-language", "fr")]);
        let first = ObjectCache::new(1 << 20, open(), None);
        store(&first, &english, head(&vary), now).await;
        first.flush().await;

        // A restarted node: English is on disk only when French arrives.
        let second = ObjectCache::new(1 << 20, open(), None);
        store(&second, &french, head(&vary), now).await;
        second.flush().await;
        for (cache, name) in [
            (&second, "memory"),
            (&ObjectCache::new(1 << 20, open(), None), "disk"),
        ] {
            for language in [&english, &french] {
                assert!(
                    matches!(cache.lookup("k", language, now).await, Lookup::Fresh(_)),
                    "{:?} lost from {name}",
                    language.headers
                );
            }
        }
    }

    #[tokio::test]
    async fn long_bodies_are_sealed_when_set_also_when_read_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let req = request(&[]);
        let now = SystemTime::now();
        let stored = |len: usize| {
            let response = head(&[("cache-control", "max-age=60")]);
            Stored::new(&req, response, Bytes::from(vec![7; len]), now)
        };
        let min_len = 64 * 1024;
        let sealing = ObjectCache::new(1 << 20, disk_tier(dir.path()), Some(min_len));
        let long = sealing.insert("long", &req, stored(min_len), now).await;
        let short = sealing
            .insert("short", &req, stored(min_len - 1), now)
            .await;
        assert!(sealed::is_sealed(&long.body));
        assert!(!sealed::is_sealed(&short.body));
        sealing.flush().await;

        let restarted = ObjectCache::new(1 << 20, disk_tier(dir.path()), Some(min_len));
        let Lookup::Fresh(read_back) = restarted.lookup("long", &req, now).await else {
            panic!("expected the disk copy");
        };
        assert!(sealed::is_sealed(&read_back.body));
        assert_eq!(read_back.body.len(), min_len);

        let copying = ObjectCache::new(1 << 20, disk_tier(dir.path()), None);
        let Lookup::Fresh(read_back) = copying.lookup("long", &req, now).await else {
            panic!("expected the disk copy");
        };
        assert!(!sealed::is_sealed(&read_back.body));
        let inserted = copying.insert("new", &req, stored(min_len), now).await;
        assert!(!sealed::is_sealed(&inserted.body));
    }
}
