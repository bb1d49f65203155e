//! The request flow: which origin, may it be fetched, from the cache or through one shared
//! fetch, and the answer.
//!
//! A GET or HEAD is looked up in the cache. A fresh object is served at once. Otherwise the
//! request joins the fetch already in flight for the URL, or starts one: a background task
//! fetches the whole object (with validators when a stale copy exists), streams it to every
//! waiting client as it arrives, and stores it. The task belongs to no client, so a client
//! that hangs up does not cancel the fill for the others. When the origin fails or answers
//! 5xx, a stale copy within `serveStale` is served instead, marked with `Warning: 110`.
//!
//! Requests with credentials (`Authorization`) and methods other than GET and HEAD (when
//! allowed) go to the origin uncached; a successful unsafe request invalidates the URL.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version, request};
use http_body_util::BodyExt;
use http_cache_semantics::{AfterResponse, BeforeRequest, CachePolicy};
use hyper::body::{Body, Incoming};
use prometheus::IntGauge;
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::cache::{Lookup, ObjectCache, Stored, Usage, head_parts};
use super::client::{
    BoxError, ClientSetupError, OriginClient, OriginRequest, OriginResponse, RequestBody,
};
use super::disk::{DiskError, DiskTier};
use super::headers::{self, CACHE_STATUS, Forwarding, REQUEST_ID};
use super::health::Health;
use super::metrics::{Outcome, ProxyMetrics, Source};
use super::peers::{MAX_HOLDERS_TRIED, PEER_HEADER, PeerRequest, Peering, Peers};
use super::popular::{PopularUrl, PopularUrls};
use super::quota::NodeQuota;
use super::ratelimit::RateLimiter;
use super::refusal::Refusal;
use super::respond::{self, ProxyBody};
use super::sealed;
use super::shaping::OriginShaping;
use super::spill::SpillArea;
use super::target::Origin;
use super::transfer::{Head, Transfer, TransferFailed, TransferReader};
use crate::config::{MethodPolicy, NodeConfig};

/// How far the slowest client may lag behind an uncacheable stream before the origin read
/// waits for it.
const STREAM_WINDOW: usize = 4 << 20;
/// Spill files take this fraction (1/n) of the disk budget, the disk tier the rest.
const SPILL_SHARE: u64 = 4;
/// How long an origin that could not be reached is remembered as such.
const FAILURE_MEMORY: Duration = Duration::from_secs(5);
/// Most unreachable origins remembered.
const FAILURES_REMEMBERED: u64 = 100_000;
/// Largest origin error body remembered (a 5xx page is small; a large one is not kept).
const MAX_REMEMBERED_ERROR: usize = 64 << 10;
/// Memory for remembered origin errors, all URLs together.
const REMEMBERED_ERROR_BYTES: u64 = 16 << 20;
/// Longest request ID accepted from a client.
const MAX_REQUEST_ID: usize = 64;

/// Why a proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxySetupError {
    /// The origin client could not be set up (resolver, CA file, TLS).
    #[error(transparent)]
    Client(#[from] ClientSetupError),
    /// The disk cache directory cannot be used.
    #[error("cannot use the disk cache directory {dir}: {source}")]
    DiskCache {
        /// The directory (`proxy.cacheDir`).
        dir: String,
        /// What went wrong.
        source: DiskError,
    },
}

/// A caching proxy: cache, fetches in flight, origin client.
pub struct Proxy {
    zone: String,
    via: HeaderValue,
    max_object_bytes: u64,
    max_url_bytes: usize,
    /// Most header fields a request may have: hyper refuses more in HTTP/1 heads, this
    /// refuses them in HTTP/2 ones.
    max_headers: usize,
    max_connections: u64,
    serve_stale: Duration,
    idle_timeout: Duration,
    /// How long a node announces an object it is fetching from the origin.
    announce_while_fetching: Duration,
    other_methods: MethodPolicy,
    client: OriginClient,
    cache: ObjectCache,
    inflight: Mutex<HashMap<String, InFlight>>,
    peers: Option<Peers>,
    /// Origins that could not be reached lately, and why: requests for them fail at once
    /// (or get a stale copy) for [`FAILURE_MEMORY`] instead of piling onto a dead host.
    unreachable: moka::sync::Cache<Origin, Refusal>,
    /// Server errors (5xx) the origin answered lately for a URL, by cache key: served again
    /// for [`FAILURE_MEMORY`] (unless a stale copy can be served instead) rather than asked
    /// again, however many clients retry.
    origin_errors: moka::sync::Cache<String, Arc<Stored>>,
    limiter: RateLimiter<IpAddr>,
    /// How often this node may ask one origin for an object (`perOriginRate`).
    origin_rate: RateLimiter<Origin>,
    /// Where bodies too large to cache wait on disk for the clients sharing their fetch
    /// (with a disk tier only).
    spill: Option<SpillArea>,
    /// The node's bandwidth quota: over it, the heaviest origins' clients are redirected.
    node_quota: Arc<NodeQuota>,
    /// Each origin's bandwidth on this node, shared fairly between its clients.
    shaping: OriginShaping,
    popular: PopularUrls,
    metrics: ProxyMetrics,
}

/// A reader of a fetch in flight, and the request of the client it was started for, unless
/// that is this client.
struct Joined {
    reader: TransferReader,
    leader: Option<request::Parts>,
}

/// Ends a fill however its task ends, a panic included: a transfer still open fails, and
/// the in-flight entry goes, so no client waits on a dead fill.
struct FillGuard<'a> {
    proxy: &'a Proxy,
    key: &'a str,
    transfer: &'a Arc<Transfer>,
}

impl Drop for FillGuard<'_> {
    fn drop(&mut self) {
        self.transfer.finish(Err(TransferFailed::bad_gateway(
            "fill_failed",
            "the fetch ended unexpectedly",
        )));
        self.proxy.unregister(self.key, self.transfer);
    }
}

/// A fetch in flight, and the request it was made for (to check `Vary` before sharing).
struct InFlight {
    transfer: Arc<Transfer>,
    request: request::Parts,
}

/// What the cache holds and the URLs asked for most.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheView {
    /// URLs held in memory.
    pub memory_objects: u64,
    /// Bytes held in memory.
    pub memory_bytes: u64,
    /// URLs held on disk, when there is a disk tier.
    pub disk_objects: Option<u64>,
    /// Bytes held on disk, when there is a disk tier.
    pub disk_bytes: Option<u64>,
    /// The URLs asked for most (GET and HEAD), most first.
    pub top_urls: Vec<PopularUrl>,
}

/// A client connection counted in a gauge (open, or parked idle) until dropped.
pub struct CountedConnection(IntGauge);

impl Drop for CountedConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A request as the cache sees it.
#[derive(Clone)]
struct CacheRequest {
    /// The cache key: `host:port/path?query`.
    key: String,
    /// The request normalised for the cache policy (GET, origin URL, client headers).
    parts: request::Parts,
    /// The HTTP version the client asked with, for the origin's `Via`.
    client_version: Version,
    origin: Origin,
    path: String,
    client_ip: IpAddr,
    request_id: String,
}

impl Proxy {
    /// A proxy for the node configuration; with `peering`, it cooperates with the other
    /// proxies of the cluster through the DHT.
    pub fn new(
        config: &NodeConfig,
        metrics: ProxyMetrics,
        peering: Option<Peering>,
    ) -> Result<Self, ProxySetupError> {
        let proxy = &config.proxy;
        let disk = (proxy.cache_disk_bytes > 0)
            .then(|| {
                DiskTier::open(
                    &proxy.cache_dir,
                    proxy.cache_disk_bytes - proxy.cache_disk_bytes / SPILL_SHARE,
                    metrics.disk_counters(),
                )
                .map_err(|source| ProxySetupError::DiskCache {
                    dir: proxy.cache_dir.display().to_string(),
                    source,
                })
            })
            .transpose()?;
        let timeouts = proxy.origin_timeouts;
        Ok(Self {
            zone: config.zone.trim_end_matches('.').to_ascii_lowercase(),
            // Answers come from origins and peers over HTTP/1.1.
            via: headers::via_value(Version::HTTP_11, &config.zone),
            max_object_bytes: proxy.max_object_bytes,
            max_url_bytes: proxy.client_limits.max_url_bytes as usize,
            max_headers: proxy.client_limits.max_headers as usize,
            max_connections: proxy.client_limits.max_connections.into(),
            serve_stale: proxy.serve_stale,
            idle_timeout: proxy.origin_timeouts.idle,
            announce_while_fetching: timeouts.connect + timeouts.first_byte + timeouts.idle,
            other_methods: proxy.other_methods,
            client: OriginClient::new(proxy)?,
            cache: ObjectCache::new(
                proxy.cache_memory_bytes,
                disk,
                proxy
                    .sendfile_min_bytes
                    .map(|min| usize::try_from(min).unwrap_or(usize::MAX)),
            ),
            inflight: Mutex::new(HashMap::new()),
            peers: peering
                .map(|peering| Peers::new(peering, timeouts.connect + timeouts.first_byte)),
            unreachable: moka::sync::Cache::builder()
                .max_capacity(FAILURES_REMEMBERED)
                .time_to_live(FAILURE_MEMORY)
                .build(),
            origin_errors: moka::sync::Cache::builder()
                .max_capacity(REMEMBERED_ERROR_BYTES)
                .weigher(|key: &String, error: &Arc<Stored>| {
                    u32::try_from(key.len() + error.body.len() + 512).unwrap_or(u32::MAX)
                })
                .time_to_live(FAILURE_MEMORY)
                .build(),
            limiter: RateLimiter::new(proxy.per_client_rate),
            origin_rate: RateLimiter::new(proxy.per_origin_rate),
            spill: (proxy.cache_disk_bytes > 0)
                .then(|| SpillArea::new(&proxy.cache_dir, proxy.cache_disk_bytes / SPILL_SHARE)),
            node_quota: Arc::new(NodeQuota::new(
                proxy.bandwidth.node_bytes_per_second,
                Instant::now(),
            )),
            shaping: OriginShaping::new(
                proxy.bandwidth.origin_bytes_per_second,
                metrics.shaping_wait.clone(),
            ),
            popular: PopularUrls::default(),
            metrics,
        })
    }

    /// Counts an accepted client connection, open until the returned guard is dropped.
    pub fn open_connection(&self) -> CountedConnection {
        self.metrics.connections.inc();
        self.metrics.open_connections.inc();
        CountedConnection(self.metrics.open_connections.clone())
    }

    /// Counts and logs a client connection refused for being one too many from its address.
    pub fn refused_connection(&self, client: SocketAddr) {
        const REASON: &str = "too_many_connections";
        self.metrics.refusals.with_label_values(&[REASON]).inc();
        tracing::info!(%client, status = 429, reason = REASON, "refused");
    }

    /// Counts and logs a request head hyper answered itself, without a page: one it could not
    /// parse (400), or one beyond `clientLimits` or its own URI limit (431, 414).
    pub fn refused_head(&self, client: SocketAddr, error: &hyper::Error) {
        let reason = if error.is_parse_too_large() {
            "head_too_large"
        } else {
            "malformed_head"
        };
        self.metrics.refusals.with_label_values(&[reason]).inc();
        tracing::info!(%client, reason, error = %error, "refused");
    }

    /// Counts a client connection parked between requests, until the returned guard is
    /// dropped.
    pub fn idle_connection(&self) -> CountedConnection {
        self.metrics.idle_connections.inc();
        CountedConnection(self.metrics.idle_connections.clone())
    }

    /// Waits until what the cache stored so far is on disk (at shutdown).
    pub async fn flush_cache(&self) {
        self.cache.flush().await;
    }

    /// What the cache holds and the URLs asked for most, for the admin port.
    pub fn cache_view(&self, top: usize) -> CacheView {
        let Usage { memory, disk } = self.cache.usage();
        CacheView {
            memory_objects: memory.0,
            memory_bytes: memory.1,
            disk_objects: disk.map(|(objects, _)| objects),
            disk_bytes: disk.map(|(_, bytes)| bytes),
            top_urls: self.popular.top(top),
        }
    }

    /// Whether the proxy is able to serve, and its load.
    pub fn health(&self) -> Health {
        let in_flight = self.inflight.lock().expect("in-flight lock").len();
        Health::assess(
            u64::try_from(self.metrics.open_connections.get()).unwrap_or(0),
            self.max_connections,
            in_flight as u64,
            self.cache.writable(),
        )
    }

    /// Updates the cache gauges (called before each scrape).
    pub fn update_gauges(&self) {
        self.metrics.record_sealed(sealed::stats());
        let Usage { memory, disk } = self.cache.usage();
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        if let Some(spill) = &self.spill {
            self.metrics.spill_bytes.set(gauge(spill.used()));
        }
        for (tier, (objects, bytes)) in [("memory", Some(memory)), ("disk", disk)]
            .into_iter()
            .filter_map(|(tier, usage)| Some((tier, usage?)))
        {
            self.metrics
                .cache_objects
                .with_label_values(&[tier])
                .set(gauge(objects));
            self.metrics
                .cache_bytes
                .with_label_values(&[tier])
                .set(gauge(bytes));
        }
    }

    /// Answers one client request.
    pub async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = request_id(request.headers());
        let method = request.method().clone();
        let uri = request.uri().clone();
        let answer = match self.admit(&request, client.ip(), started) {
            Ok(()) => self.route(request, client.ip(), &request_id, started).await,
            Err(refusal) => Err(refusal),
        };
        let (outcome, mut response) = match answer {
            Ok(answer) => answer,
            Err(refusal) => {
                self.metrics
                    .refusals
                    .with_label_values(&[refusal.reason])
                    .inc();
                tracing::info!(
                    request_id,
                    %client,
                    %method,
                    %uri,
                    status = refusal.status.as_u16(),
                    reason = refusal.reason,
                    message = %refusal.message,
                    "refused"
                );
                (Outcome::Refused, refusal.page().map(respond::full))
            }
        };
        let headers = response.headers_mut();
        headers::append_via(headers, &self.via);
        headers.insert(CACHE_STATUS, HeaderValue::from_static(outcome.label()));
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID, id);
        }
        self.metrics
            .observe(outcome, started.elapsed().as_secs_f64());
        tracing::debug!(request_id, %client, %method, %uri, status = response.status().as_u16(), result = outcome.label(), "served");
        response
    }

    /// Applies the client's rate limit. Peer requests are exempt here: a forged peer token
    /// is refused by [`Proxy::for_peer`] without any work.
    fn admit(
        &self,
        request: &Request<Incoming>,
        client: IpAddr,
        now: Instant,
    ) -> Result<(), Refusal> {
        if request.headers().contains_key(PEER_HEADER) {
            return Ok(());
        }
        self.limiter.check(client, now).map_err(|wait| {
            Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this address sends more requests than this node serves one client; slow down",
            )
            .retry_after(wait)
        })
    }

    async fn route(
        self: &Arc<Self>,
        request: Request<Incoming>,
        client_ip: IpAddr,
        request_id: &str,
        now: Instant,
    ) -> Result<(Outcome, Response<ProxyBody>), Refusal> {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        if path.len() > self.max_url_bytes {
            return Err(Refusal::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                format!(
                    "the request target is longer than {} bytes",
                    self.max_url_bytes
                ),
            ));
        }
        if request.headers().len() > self.max_headers
            && field_count(request.headers()) > self.max_headers
        {
            return Err(Refusal::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too_many_headers",
                format!(
                    "the request has more than {} header fields",
                    self.max_headers
                ),
            ));
        }
        let host = request
            .uri()
            .host()
            .map(str::to_owned)
            .or_else(|| {
                let host = request.headers().get(header::HOST)?;
                host.to_str().ok().map(str::to_owned)
            })
            .ok_or(super::target::TargetError::NoHost)?;
        let origin = Origin::from_zone_host(&host, &self.zone)?;
        if let Some(token) = request.headers().get(PEER_HEADER) {
            let key = origin.cache_key(&path);
            let parts = cache_parts(&origin, &path, request.headers())?;
            // Boxed, as are the lookups and fetches below: a hit on the fast path
            // (`ObjectCache::fresh`) awaits nothing, and every request's future would otherwise
            // carry room for their state.
            return Box::pin(self.for_peer(request.method(), &key, parts, token)).await;
        }
        if headers::is_loop(request.headers(), &self.zone) || origin.is_in_zone(&self.zone) {
            return Err(Refusal::new(
                StatusCode::LOOP_DETECTED,
                "loop",
                format!("{host} leads back into this CDN"),
            ));
        }
        self.client.guard().check_host(&origin.host)?;
        let method = request.method().clone();
        let cacheable_method = method == Method::GET || method == Method::HEAD;
        if !cacheable_method && self.other_methods == MethodPolicy::Refuse {
            let mut refusal = Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                format!("this CDN serves GET and HEAD, not {method}"),
            );
            refusal
                .message
                .push_str("; send other requests to the origin directly");
            return Err(refusal);
        }
        if cacheable_method && self.node_quota.is_over(&origin.host, now) {
            return Ok((Outcome::Redirected, redirect_to_origin(&origin, &path)));
        }
        if !self.node_quota.enabled() && !self.shaping.enabled() {
            return self
                .serve(request, origin, path, client_ip, request_id)
                .await;
        }
        let host = origin.host.clone();
        let (outcome, response) = self
            .serve(request, origin, path, client_ip, request_id)
            .await?;
        let response = response.map(|body| {
            let body = self.shaping.shaped(&host, client_ip, body);
            if !self.node_quota.enabled() {
                return body;
            }
            let node_quota = self.node_quota.clone();
            respond::metered(body, move |bytes| {
                node_quota.record(&host, bytes, Instant::now());
            })
        });
        Ok((outcome, response))
    }

    /// Serves a client's request for an origin: from the cache, through a shared fetch, or
    /// passed to the origin.
    async fn serve(
        self: &Arc<Self>,
        request: Request<Incoming>,
        origin: Origin,
        path: String,
        client_ip: IpAddr,
        request_id: &str,
    ) -> Result<(Outcome, Response<ProxyBody>), Refusal> {
        let method = request.method().clone();
        let cacheable_method = method == Method::GET || method == Method::HEAD;
        let request_headers = request.headers();
        let key = origin.cache_key(&path);
        if cacheable_method {
            self.popular.record(&key);
        }
        let cacheable = cacheable_method && !request_headers.contains_key(header::AUTHORIZATION);
        let now = SystemTime::now();
        if cacheable && let Some(stored) = self.cache.fresh(&key, request_headers, now) {
            return Ok((
                Outcome::Hit,
                self.hit(&method, request_headers, &stored, now),
            ));
        }
        let cache_request = CacheRequest {
            key,
            parts: cache_parts(&origin, &path, request_headers)?,
            client_version: request.version(),
            origin,
            path,
            client_ip,
            request_id: request_id.to_owned(),
        };
        if !cacheable {
            let (parts, body) = request.into_parts();
            let body = (!cacheable_method).then(|| body.map_err(BoxError::from).boxed());
            let response =
                Box::pin(self.pass(parts.method, parts.headers, body, &cache_request)).await?;
            return Ok((Outcome::Pass, response));
        }
        Box::pin(self.cached(&method, request_headers, cache_request)).await
    }

    /// Serves a GET or HEAD from the cache or through a shared fetch.
    async fn cached(
        self: &Arc<Self>,
        method: &Method,
        client_headers: &HeaderMap,
        request: CacheRequest,
    ) -> Result<(Outcome, Response<ProxyBody>), Refusal> {
        let now = SystemTime::now();
        let stale = match self.cache.lookup(&request.key, &request.parts, now).await {
            Lookup::Fresh(stored) => {
                return Ok((Outcome::Hit, self.hit(method, client_headers, &stored, now)));
            }
            Lookup::Stale(stored) => Some(stored),
            Lookup::Miss => None,
        };
        let mut joined = self.join_or_start(&request, stale.clone());
        let (mut head, mut outcome) = joined.reader.head().await.map_err(|failed| failed.0)?;
        if let Some(leader) = &joined.leader
            && !shareable(leader, &request.parts, &head)
        {
            // The origin's answer to the leader is not for this client (private, or varying
            // on a header they differ in): fetch alone.
            joined = self.fetch_alone(&request, stale);
            (head, outcome) = joined.reader.head().await.map_err(|failed| failed.0)?;
        }
        if joined.reader.will_not_be_stored() && asks_for_part(client_headers) {
            // Too large to cache, so the proxy cannot answer a range or condition from a
            // whole copy: let the origin answer it.
            drop(joined);
            let response = self
                .pass(method.clone(), client_headers.clone(), None, &request)
                .await?;
            return Ok((Outcome::Pass, response));
        }
        if *method == Method::GET {
            // A body that fails before its first byte still gets a status (HEAD answers and
            // the head-only 304 and 412 do not wait for the body).
            joined
                .reader
                .body_begun()
                .await
                .map_err(|failed| failed.0)?;
        }
        let served = self.metrics.served(source_of(outcome)).clone();
        let outcome = match outcome {
            Outcome::Miss | Outcome::Peer if joined.leader.is_some() => Outcome::Coalesced,
            other => other,
        };
        Ok((
            outcome,
            respond::from_transfer(method, client_headers, &head, joined.reader, served),
        ))
    }

    /// Answers another proxy from the cache or a fetch in flight, never from the origin.
    async fn for_peer(
        &self,
        method: &Method,
        key: &str,
        parts: request::Parts,
        token: &HeaderValue,
    ) -> Result<(Outcome, Response<ProxyBody>), Refusal> {
        let miss = || Refusal::new(StatusCode::NOT_FOUND, "peer_miss", "this node has no copy");
        let Some(peers) = &self.peers else {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "peer_auth",
                "this node does not cooperate",
            ));
        };
        if !peers.verify(key, token) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "peer_auth",
                "the peer token is invalid or expired",
            ));
        }
        let now = SystemTime::now();
        if let Lookup::Fresh(stored) = self.cache.lookup(key, &parts, now).await {
            return Ok((
                Outcome::ForPeer,
                self.hit(method, &parts.headers, &stored, now),
            ));
        }
        let joined = joinable(&self.inflight.lock().expect("in-flight lock"), key, &parts);
        let (mut reader, leader) = joined.ok_or_else(miss)?;
        if reader.is_waiting_on_peer() {
            return Err(miss());
        }
        let (head, outcome) = reader.head().await.map_err(|failed| failed.0)?;
        if !shareable(&leader, &parts, &head) {
            return Err(miss());
        }
        let served = self.metrics.served(source_of(outcome)).clone();
        Ok((
            Outcome::ForPeer,
            respond::from_transfer(method, &parts.headers, &head, reader, served),
        ))
    }

    fn hit(
        &self,
        method: &Method,
        client_headers: &HeaderMap,
        stored: &Stored,
        now: SystemTime,
    ) -> Response<ProxyBody> {
        let response = respond::from_stored(method, client_headers, stored, now);
        // The body as answered: none for HEAD, 304 and 412, the range for 206.
        if let Some(length) = response.body().size_hint().exact() {
            self.metrics.served(Source::Cache).inc_by(length);
        }
        response
    }

    /// Joins the fetch in flight for the request's URL, or starts one that later requests
    /// can join; the check and the registration happen under one lock, so two requests
    /// arriving together cannot both start a fetch.
    fn join_or_start(
        self: &Arc<Self>,
        request: &CacheRequest,
        stale: Option<Arc<Stored>>,
    ) -> Joined {
        let mut inflight = self.inflight.lock().expect("in-flight lock");
        if let Some((reader, leader)) = joinable(&inflight, &request.key, &request.parts) {
            return Joined {
                reader,
                leader: Some(leader),
            };
        }
        let transfer = Transfer::new();
        inflight.insert(
            request.key.clone(),
            InFlight {
                transfer: transfer.clone(),
                request: request.parts.clone(),
            },
        );
        drop(inflight);
        self.spawn_fill(request, transfer, stale)
    }

    /// Starts a fetch of its own for a client that cannot share the one in flight.
    fn fetch_alone(self: &Arc<Self>, request: &CacheRequest, stale: Option<Arc<Stored>>) -> Joined {
        self.spawn_fill(request, Transfer::new(), stale)
    }

    fn spawn_fill(
        self: &Arc<Self>,
        request: &CacheRequest,
        transfer: Arc<Transfer>,
        stale: Option<Arc<Stored>>,
    ) -> Joined {
        let reader = transfer.reader().expect("a new transfer takes readers");
        let (proxy, request) = (self.clone(), request.clone());
        tokio::spawn(async move {
            let guard = FillGuard {
                proxy: &proxy,
                key: &request.key,
                transfer: &transfer,
            };
            proxy.fill(&request, &transfer, stale).await;
            drop(guard);
        });
        Joined {
            reader,
            leader: None,
        }
    }

    /// Fetches an object for a transfer and stores it; runs apart from any client.
    async fn fill(
        &self,
        request: &CacheRequest,
        transfer: &Arc<Transfer>,
        stale: Option<Arc<Stored>>,
    ) {
        if let Some(error) = self.origin_errors.get(&request.key) {
            let now = SystemTime::now();
            match self.usable_stale(stale.as_ref(), now) {
                Some(stale) => publish_stored(transfer, &stale, Outcome::Stale, now),
                None => publish_stored(transfer, &error, Outcome::RememberedError, now),
            }
            return;
        }
        if let Some(peers) = &self.peers {
            // The lookups' log lines, here and on the nodes they ask, carry the request ID.
            let span = tracing::info_span!("dht", request_id = %request.request_id);
            // With a stale copy, the holders named are most likely stale too, each about to
            // revalidate and perhaps asking the others: only the claim below decides who
            // asks the origin.
            let claimed = match &stale {
                None => request.key.clone(),
                Some(stale) => revalidation_round(&request.key, stale),
            };
            if stale.is_none() {
                let holders = peers
                    .holders(&request.key, &request.request_id)
                    .instrument(span.clone())
                    .await;
                if self.fill_from_holders(request, transfer, holders).await {
                    return;
                }
            }
            // Others missing the object from now on find this node and wait on its fetch;
            // one that announced first is waited on instead.
            let incumbent = peers
                .claim(&claimed, self.announce_while_fetching, &request.request_id)
                .instrument(span)
                .await;
            if self
                .fill_from_holders(request, transfer, incumbent.into_iter().collect())
                .await
            {
                return;
            }
        }
        let mut validated = stale;
        loop {
            let mut headers = headers::to_origin(
                &request.parts.headers,
                request.client_version,
                request.client_ip,
                &self.zone,
                &request.request_id,
                Forwarding::CacheFill,
            );
            if let Some(stale) = &validated {
                add_validators(&mut headers, &stale.head.headers);
            }
            let fetched = match self.may_ask(&request.origin) {
                Err(refusal) => Err(refusal),
                Ok(()) => self
                    .client
                    .fetch(OriginRequest {
                        method: Method::GET,
                        origin: request.origin.clone(),
                        path: request.path.clone(),
                        headers,
                        body: None,
                    })
                    .await
                    .map_err(|err| {
                        self.count_fetch("error");
                        let refusal = Refusal::from(err);
                        if matches!(
                            refusal.reason,
                            "origin_unreachable" | "origin_unresolvable" | "origin_timeout"
                        ) {
                            let mut remembered = refusal.clone();
                            remembered.message.push_str(&format!(
                                " (remembered for {}s, to spare the origin)",
                                FAILURE_MEMORY.as_secs()
                            ));
                            self.unreachable.insert(request.origin.clone(), remembered);
                        }
                        refusal
                    }),
            };
            let now = SystemTime::now();
            let usable_stale = self.usable_stale(validated.as_ref(), now);
            let response = match fetched {
                Err(refusal) => {
                    tracing::info!(request_id = request.request_id, key = request.key, reason = refusal.reason, error = %refusal.message, "origin fetch failed");
                    match usable_stale {
                        Some(stale) => publish_stored(transfer, &stale, Outcome::Stale, now),
                        None => transfer.finish(Err(TransferFailed(refusal))),
                    }
                    return;
                }
                Ok(response) => response,
            };
            let status = response.response.status();
            if status == StatusCode::NOT_MODIFIED
                && let Some(stale) = &validated
            {
                self.count_fetch("not_modified");
                match self.revalidated(request, stale, &response, now).await {
                    Some(refreshed) => {
                        publish_stored(transfer, &refreshed, Outcome::Revalidated, now);
                        return;
                    }
                    None => {
                        // The 304's validators do not match the stored copy: fetch it whole.
                        validated = None;
                        continue;
                    }
                }
            }
            self.count_fetch(fetch_outcome(status));
            if status.is_server_error()
                && let Some(stale) = usable_stale
            {
                publish_stored(transfer, &stale, Outcome::Stale, now);
                return;
            }
            let OriginResponse { response, slot, .. } = response;
            self.relay(request, transfer, response, Outcome::Miss, now, Some(slot))
                .await;
            return;
        }
    }

    /// Whether the origin may be asked now: not while it is remembered as unreachable, nor
    /// beyond its request rate.
    fn may_ask(&self, origin: &Origin) -> Result<(), Refusal> {
        if let Some(remembered) = self.unreachable.get(origin) {
            return Err(remembered);
        }
        self.origin_rate
            .check(origin.clone(), Instant::now())
            .map_err(|wait| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "origin_rate",
                    "this node already asks the origin for as many objects per second as it \
                     allows; try again shortly",
                )
                .retry_after(wait)
            })
    }

    /// The stale copy, if the origin allows serving it stale and it is within the window.
    fn usable_stale(&self, stale: Option<&Arc<Stored>>, now: SystemTime) -> Option<Arc<Stored>> {
        stale
            .filter(|stored| !stored.forbids_stale() && stored.staleness(now) <= self.serve_stale)
            .cloned()
    }

    /// Fills the transfer from the first of `holders` (nearest first) that has the object;
    /// `false` when none did. Until one answers, the transfer is marked as waiting on a peer,
    /// so that a node asking this one meanwhile is told no rather than made to wait.
    async fn fill_from_holders(
        &self,
        request: &CacheRequest,
        transfer: &Arc<Transfer>,
        holders: Vec<SocketAddr>,
    ) -> bool {
        let Some(peers) = &self.peers else {
            return false;
        };
        if holders.is_empty() {
            return false;
        }
        transfer.set_waiting_on_peer(true);
        let filled = self.fill_from(peers, request, transfer, holders).await;
        transfer.set_waiting_on_peer(false);
        filled
    }

    /// Fills the transfer from the first of `holders` that has the object.
    async fn fill_from(
        &self,
        peers: &Peers,
        request: &CacheRequest,
        transfer: &Arc<Transfer>,
        holders: Vec<SocketAddr>,
    ) -> bool {
        let mut headers = headers::to_origin(
            &request.parts.headers,
            request.client_version,
            request.client_ip,
            &self.zone,
            &request.request_id,
            Forwarding::CacheFill,
        );
        headers.remove(header::VIA);
        headers.remove("x-forwarded-for");
        let zone_host = request.origin.zone_host(&self.zone);
        let peer_request = PeerRequest {
            key: &request.key,
            zone_host: &zone_host,
            path: &request.path,
            headers,
            request_id: &request.request_id,
        };
        for holder in holders.into_iter().take(MAX_HOLDERS_TRIED) {
            let Some(response) = peers.fetch(holder, &peer_request).await else {
                self.count_peer_fetch("miss");
                continue;
            };
            self.count_peer_fetch("hit");
            // An answer is coming: nodes asking for it may wait on it now.
            transfer.set_waiting_on_peer(false);
            tracing::debug!(request_id = request.request_id, key = request.key, %holder, "fetching from a peer");
            let (mut parts, body) = response.into_parts();
            headers::strip_peer_marks(&mut parts.headers, &self.via);
            let response = Response::from_parts(parts, body);
            self.relay(
                request,
                transfer,
                response,
                Outcome::Peer,
                SystemTime::now(),
                None,
            )
            .await;
            return true;
        }
        false
    }

    /// Updates a stored response from the origin's 304 and stores the result; `None` when
    /// the 304 does not match the stored copy's validators.
    async fn revalidated(
        &self,
        request: &CacheRequest,
        stale: &Stored,
        response: &OriginResponse,
        now: SystemTime,
    ) -> Option<Arc<Stored>> {
        let update = Head {
            status: StatusCode::NOT_MODIFIED,
            headers: headers::from_origin(
                response.response.status(),
                response.response.headers(),
                &self.zone,
            ),
        };
        let AfterResponse::NotModified(policy, _) =
            stale
                .policy
                .after_response(&request.parts, &head_parts(&update), now)
        else {
            self.cache.invalidate(&request.key);
            return None;
        };
        let kept = |name: &header::HeaderName| {
            name != header::CONTENT_LENGTH && name != header::CONTENT_ENCODING
        };
        let mut head = stale.head.clone();
        head.headers.remove(header::AGE);
        for name in update.headers.keys().filter(|name| kept(name)) {
            head.headers.remove(name);
        }
        for (name, value) in update.headers.iter().filter(|(name, _)| kept(name)) {
            head.headers.append(name, value.clone());
        }
        let refreshed = Stored::with_policy(policy, head, stale.body.clone(), now);
        let refreshed = self
            .cache
            .insert(&request.key, &request.parts, refreshed, now)
            .await;
        Some(refreshed)
    }

    /// Streams an origin response into the transfer and stores it when it is cacheable.
    /// `slot`, the origin's concurrency slot, is held while the fetch goes at the origin's
    /// pace (cacheable, or spilled) and given up once the stream turns client-paced.
    async fn relay(
        &self,
        request: &CacheRequest,
        transfer: &Arc<Transfer>,
        response: Response<Incoming>,
        outcome: Outcome,
        response_time: SystemTime,
        mut slot: Option<OwnedSemaphorePermit>,
    ) {
        let (parts, mut body) = response.into_parts();
        let head = Head {
            status: parts.status,
            headers: headers::from_origin(parts.status, &parts.headers, &self.zone),
        };
        let expected = content_length(&head.headers);
        let mut cacheable = expected.is_none_or(|length| length <= self.max_object_bytes);
        // Too large to cache: shared through a spill file when others may join it (its
        // transfer is the one in flight for the URL, and a shared cache could keep the
        // answer) and its length fits the budget; else streamed to the clients already
        // waiting, at their pace.
        let spill = match (&self.spill, expected) {
            (Some(area), Some(length))
                if !cacheable && self.is_joinable(request, transfer, &head) =>
            {
                // Another variant may have taken the URL's place meanwhile.
                area.file_for(length)
                    .await
                    .filter(|_| self.is_joinable(request, transfer, &head))
            }
            _ => None,
        };
        let spilled = spill.is_some();
        let mut claimed_at = tokio::time::Instant::now();
        match spill {
            Some(file) => transfer.spill(file),
            None if !cacheable => {
                self.stop_sharing(&request.key, transfer);
                drop(slot.take());
            }
            None => {}
        }
        transfer.set_head(head.clone(), outcome);
        let mut received: u64 = 0;
        let mut kept = false;
        let ended = loop {
            let frame = match tokio::time::timeout(self.idle_timeout, body.frame()).await {
                Err(_) => {
                    break Err(TransferFailed(Refusal::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "origin_idle",
                        format!("the origin sent nothing for {:?}", self.idle_timeout),
                    )));
                }
                Ok(None) => break Ok(()),
                Ok(Some(Err(err))) => {
                    break Err(TransferFailed::bad_gateway(
                        "origin_broken",
                        format!("the origin's body broke off: {err}"),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if spilled {
                if let Err(err) = transfer.push_spilled(data).await {
                    break Err(TransferFailed::bad_gateway(
                        "spill_failed",
                        format!("the body could not be written to its spill file: {err}"),
                    ));
                }
                if transfer.abandon_if_unread(TransferFailed::bad_gateway(
                    "abandoned",
                    "every client left an uncacheable stream",
                )) {
                    return;
                }
                // Other nodes find this fetch for as long as it lasts.
                if let Some(peers) = &self.peers
                    && claimed_at.elapsed() > self.announce_while_fetching / 2
                {
                    peers.announce(
                        &request.key,
                        self.announce_while_fetching,
                        &request.request_id,
                    );
                    claimed_at = tokio::time::Instant::now();
                }
                continue;
            }
            received += data.len() as u64;
            if cacheable && received > self.max_object_bytes {
                cacheable = false;
                self.stop_sharing(&request.key, transfer);
                drop(slot.take());
            }
            // A client holding every byte its Content-Length promised counts the answer
            // done, so the object is kept before its last chunk goes out: a request that
            // follows that answer finds it in the cache. The price: the last chunk waits
            // for the store (a copy of the body, sealing it when set, and for `Vary`, the
            // other variants). Kept then, it stays kept if the origin fails after its
            // last byte.
            if cacheable
                && !kept
                && expected == Some(received)
                && let Some(whole) = transfer.body_so_far_with(&data)
            {
                self.keep(request, head.clone(), whole, response_time).await;
                kept = true;
            }
            transfer.push(data);
            if !cacheable {
                match transfer
                    .wait_for_readers(STREAM_WINDOW, self.idle_timeout)
                    .await
                {
                    Ok(0) => {
                        break Err(TransferFailed::bad_gateway(
                            "abandoned",
                            "every client left an uncacheable stream",
                        ));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        break Err(TransferFailed::bad_gateway(
                            "client_stalled",
                            "a client stopped reading an uncacheable stream",
                        ));
                    }
                }
            }
        };
        if ended.is_ok()
            && cacheable
            && !kept
            && let Some(whole) = transfer.body_so_far_with(&Bytes::new())
        {
            self.keep(request, head, whole, response_time).await;
        }
        transfer.finish(ended);
    }

    /// Keeps a whole origin answer: in the cache when storable (announcing it to the
    /// peers), or briefly among the remembered origin errors.
    async fn keep(
        &self,
        request: &CacheRequest,
        head: Head,
        body: Bytes,
        response_time: SystemTime,
    ) {
        let stored = Stored::new(&request.parts, head, body, response_time);
        if !stored.policy.is_storable()
            && stored.head.status.is_server_error()
            && stored.body.len() <= MAX_REMEMBERED_ERROR
            && !stored.forbids_keeping()
        {
            self.origin_errors
                .insert(request.key.clone(), Arc::new(stored));
        } else if stored.policy.is_storable() {
            if let Some(peers) = &self.peers {
                peers.announce(
                    &request.key,
                    stored.policy.time_to_live(response_time),
                    &request.request_id,
                );
            }
            self.cache
                .insert(&request.key, &request.parts, stored, response_time)
                .await;
        }
    }

    /// Whether clients other than those waiting now may join `transfer`: it is the one in
    /// flight for the URL and a shared cache could keep its answer `head`.
    fn is_joinable(&self, request: &CacheRequest, transfer: &Arc<Transfer>, head: &Head) -> bool {
        let registered = is_in_flight(
            &self.inflight.lock().expect("in-flight lock"),
            &request.key,
            transfer,
        );
        registered && CachePolicy::new(&request.parts, &head_parts(head)).is_storable()
    }

    /// Takes an object that turned out too large for the cache out of sharing: its chunks
    /// are dropped once read, so newcomers start their own stream.
    fn stop_sharing(&self, key: &str, transfer: &Arc<Transfer>) {
        transfer.trim();
        self.unregister(key, transfer);
    }

    fn unregister(&self, key: &str, transfer: &Arc<Transfer>) {
        let mut inflight = self.inflight.lock().expect("in-flight lock");
        if is_in_flight(&inflight, key, transfer) {
            inflight.remove(key);
        }
    }

    /// Sends a client's request to its origin uncached and streams the answer back.
    async fn pass(
        &self,
        method: Method,
        client_headers: HeaderMap,
        body: Option<RequestBody>,
        request: &CacheRequest,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let forwarding = if body.is_some() {
            Forwarding::WithBody
        } else {
            Forwarding::Bodiless
        };
        let headers = headers::to_origin(
            &client_headers,
            request.client_version,
            request.client_ip,
            &self.zone,
            &request.request_id,
            forwarding,
        );
        let fetched = self
            .client
            .fetch(OriginRequest {
                method: method.clone(),
                origin: request.origin.clone(),
                path: request.path.clone(),
                headers,
                body,
            })
            .await;
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(err) => {
                self.count_fetch("error");
                return Err(err.into());
            }
        };
        self.count_fetch(fetch_outcome(fetched.response.status()));
        // A client-paced stream does not hold one of the origin's few concurrency slots.
        drop(fetched.slot);
        let status = fetched.response.status();
        if !method.is_safe() && (status.is_success() || status.is_redirection()) {
            self.cache.invalidate(&request.key);
        }
        let (parts, body) = fetched.response.into_parts();
        let served = self.metrics.served(Source::Origin).clone();
        let body = respond::counted(body.map_err(BoxError::from).boxed(), served);
        let mut response = Response::new(body);
        *response.status_mut() = parts.status;
        *response.headers_mut() = headers::from_origin(parts.status, &parts.headers, &self.zone);
        Ok(response)
    }

    fn count_peer_fetch(&self, outcome: &str) {
        self.metrics
            .peer_fetches
            .with_label_values(&[outcome])
            .inc();
    }

    /// Counts an origin fetch by outcome: `ok`, `not_modified`, or `error` (no answer, or a 5xx).
    fn count_fetch(&self, outcome: &str) {
        self.metrics
            .origin_fetches
            .with_label_values(&[outcome])
            .inc();
    }
}

/// The fields of a request head as HTTP/1 counts them: an HTTP/2 client may send each cookie
/// as a field of its own (RFC 9113 section 8.2.3), which HTTP/1 sends as one.
fn field_count(headers: &HeaderMap) -> usize {
    let cookies = headers.get_all(header::COOKIE).iter().count();
    headers.len() - cookies.saturating_sub(1)
}

/// Where the body of a transfer that came out as `outcome` comes from.
fn source_of(outcome: Outcome) -> Source {
    match outcome {
        Outcome::Peer => Source::Peer,
        Outcome::Stale | Outcome::Revalidated | Outcome::RememberedError => Source::Cache,
        _ => Source::Origin,
    }
}

/// Puts a stored object into a transfer, marked as stale when it is.
fn publish_stored(transfer: &Transfer, stored: &Stored, outcome: Outcome, now: SystemTime) {
    let mut head = stored.head.clone();
    head.headers.insert(
        header::AGE,
        HeaderValue::from(stored.policy.age(now).as_secs()),
    );
    head.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(stored.body.len()));
    if outcome == Outcome::Stale {
        head.headers.append(
            header::WARNING,
            HeaderValue::from_static("110 - \"Response is Stale\""),
        );
    }
    transfer.set_head(head, outcome);
    transfer.push(stored.body.clone());
    transfer.finish(Ok(()));
}

/// Sends the client to the origin itself, for a node over its bandwidth quota.
fn redirect_to_origin(origin: &Origin, path: &str) -> Response<ProxyBody> {
    let why = "this node is over its bandwidth quota";
    let location = format!("http://{}{path}", origin.authority());
    let mut response = Response::new(respond::full(Bytes::from(format!(
        "302 Found\n\n{why}: fetch {location} from the origin directly.\n"
    ))));
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The key nodes claim to revalidate `stale`, a copy of the object at `key`: one per version
/// and per round, since the copies peers pass on share their validators and `Date`, and a
/// revalidated copy takes the `Date` of its 304. (The object's own key names every node that
/// held it, in the order they first did, so claiming it again would name a node that is
/// itself stale and perhaps waiting on the claimer.)
fn revalidation_round(key: &str, stale: &Stored) -> String {
    let header = |name: header::HeaderName| {
        let value = stale.head.headers.get(name);
        String::from_utf8_lossy(value.map_or(&[][..], HeaderValue::as_bytes)).into_owned()
    };
    format!(
        "{key}\nrevalidate {} {} {}",
        header(header::ETAG),
        header(header::LAST_MODIFIED),
        header(header::DATE)
    )
}

/// Adds the stored response's validators to a revalidation request.
fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

/// The request as the cache policy sees it: GET of the origin URL with the client's headers.
fn cache_parts(origin: &Origin, path: &str, client: &HeaderMap) -> Result<request::Parts, Refusal> {
    let authority = origin.authority();
    let (mut parts, ()) = Request::get(format!("http://{authority}{path}"))
        .body(())
        .map_err(|err| Refusal::new(StatusCode::BAD_REQUEST, "bad_target", err.to_string()))?
        .into_parts();
    parts.headers = client.clone();
    // Cookies never reach origins, so no answer depends on them; nor are they kept with the
    // cached policy (which the disk tier writes out).
    parts.headers.remove(header::COOKIE);
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(&authority).expect("host names are valid header text"),
    );
    Ok(parts)
}

/// Whether a response fetched for `leader` may be shared with `follower`: the headers the
/// origin might vary on, as far as the proxy can know before the response, are the same.
/// The proxy compares the usual content-negotiation headers.
fn same_variant(leader: &request::Parts, follower: &request::Parts) -> bool {
    [
        header::ACCEPT,
        header::ACCEPT_ENCODING,
        header::ACCEPT_LANGUAGE,
    ]
    .iter()
    .all(|name| leader.headers.get(name) == follower.headers.get(name))
}

/// A reader of the fetch in flight for `key` and the request it was started for, when there
/// is one the request may share.
/// Whether `transfer` is the one in flight for `key`.
fn is_in_flight(inflight: &HashMap<String, InFlight>, key: &str, transfer: &Arc<Transfer>) -> bool {
    inflight
        .get(key)
        .is_some_and(|entry| Arc::ptr_eq(&entry.transfer, transfer))
}

fn joinable(
    inflight: &HashMap<String, InFlight>,
    key: &str,
    request: &request::Parts,
) -> Option<(TransferReader, request::Parts)> {
    let entry = inflight.get(key)?;
    if !same_variant(&entry.request, request) {
        return None;
    }
    Some((entry.transfer.reader()?, entry.request.clone()))
}

/// Whether a response fetched for `leader` may go to `follower` too: a shared cache could
/// store it, and it answers the follower's request (`Vary`).
fn shareable(leader: &request::Parts, follower: &request::Parts, head: &Head) -> bool {
    let policy = CachePolicy::new(leader, &head_parts(head));
    policy.is_storable()
        && !matches!(
            policy.before_request(follower, SystemTime::now()),
            BeforeRequest::Stale { matches: false, .. }
        )
}

/// Whether a client asks for part of an object or for a conditional answer.
fn asks_for_part(headers: &HeaderMap) -> bool {
    [
        header::RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|name| headers.contains_key(name))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The client's request ID when it is short and plain, else a new random one (16 hex digits).
fn request_id(headers: &HeaderMap) -> String {
    let offered = headers
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        });
    match offered {
        Some(id) => id.to_owned(),
        None => {
            let random = rand::random::<u64>();
            let mut digits = [0; 16];
            for (place, digit) in digits.iter_mut().enumerate() {
                *digit = HEX_DIGITS[(random >> (60 - 4 * place)) as usize & 0xf];
            }
            String::from_utf8(digits.to_vec()).expect("hex digits are ASCII")
        }
    }
}

/// The outcome an origin's answer counts as: a server error is the origin failing.
fn fetch_outcome(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "error"
    } else {
        "ok"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(pairs: &[(&'static str, &'static str)]) -> request::Parts {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        let origin = Origin {
            host: "o.test".into(),
            port: 8080,
        };
        cache_parts(&origin, "/a?b", &headers).unwrap()
    }

    #[test]
    fn the_cache_sees_a_get_of_the_origin_url() {
        let parts = parts(&[("host", "o.test.8080.nyud.net")]);
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri, "http://o.test:8080/a?b");
        assert_eq!(parts.headers["host"], "o.test:8080");
    }

    #[test]
    fn clients_negotiating_differently_do_not_share_a_fetch() {
        let gzip = parts(&[("accept-encoding", "gzip")]);
        let plain = parts(&[]);
        assert!(same_variant(&gzip, &gzip));
        assert!(!same_variant(&gzip, &plain));
        assert!(same_variant(&plain, &parts(&[("user-agent", "curl")])));
    }

    #[test]
    fn request_ids_are_kept_when_plain_and_made_up_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("evil\tid"));
        let made_up = request_id(&headers);
        assert_eq!(made_up.len(), 16);
        assert!(made_up.bytes().all(|b| b.is_ascii_hexdigit()), "{made_up}");
        assert_ne!(request_id(&headers), made_up);
    }
}
