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

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, request};
use http_body_util::BodyExt;
use http_cache_semantics::AfterResponse;
use hyper::body::Incoming;

use super::cache::{Lookup, MemoryCache, Stored, head_parts};
use super::client::{BoxError, ClientSetupError, OriginClient, OriginRequest, OriginResponse};
use super::headers::{self, CACHE_STATUS, REQUEST_ID};
use super::metrics::{Outcome, ProxyMetrics};
use super::refusal::Refusal;
use super::respond::{self, ProxyBody};
use super::target::Origin;
use super::transfer::{Head, Transfer, TransferFailed, TransferReader};
use crate::config::{MethodPolicy, NodeConfig};

/// How far the slowest client may lag behind an uncacheable stream before the origin read
/// waits for it.
const STREAM_WINDOW: usize = 4 << 20;
/// Longest request ID accepted from a client.
const MAX_REQUEST_ID: usize = 64;

/// A caching proxy: cache, fetches in flight, origin client.
pub struct Proxy {
    zone: String,
    max_object_bytes: u64,
    max_url_bytes: usize,
    serve_stale: Duration,
    idle_timeout: Duration,
    other_methods: MethodPolicy,
    client: OriginClient,
    cache: MemoryCache,
    inflight: Mutex<HashMap<String, InFlight>>,
    metrics: ProxyMetrics,
}

/// A fetch in flight, and the request it was made for (to check `Vary` before sharing).
struct InFlight {
    transfer: Arc<Transfer>,
    request: request::Parts,
}

/// A cacheable request as the cache sees it.
struct CacheRequest {
    /// The cache key: `host:port/path?query`.
    key: String,
    /// The request normalised for the cache policy (GET, origin URL, client headers).
    parts: request::Parts,
    origin: Origin,
    path: String,
    client_ip: IpAddr,
    request_id: String,
}

impl Proxy {
    /// A proxy for the node configuration.
    pub fn new(config: &NodeConfig, metrics: ProxyMetrics) -> Result<Self, ClientSetupError> {
        let proxy = &config.proxy;
        Ok(Self {
            zone: config.zone.trim_end_matches('.').to_ascii_lowercase(),
            max_object_bytes: proxy.max_object_bytes,
            max_url_bytes: proxy.client_limits.max_url_bytes as usize,
            serve_stale: proxy.serve_stale,
            idle_timeout: proxy.origin_timeouts.idle,
            other_methods: proxy.other_methods,
            client: OriginClient::new(proxy)?,
            cache: MemoryCache::new(proxy.cache_memory_bytes),
            inflight: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Counts an accepted client connection.
    pub fn count_connection(&self) {
        self.metrics.connections.inc();
    }

    /// Updates the cache gauges (called before each scrape).
    pub fn update_gauges(&self) {
        let (objects, bytes) = self.cache.usage();
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.metrics
            .cache_objects
            .with_label_values(&["memory"])
            .set(gauge(objects));
        self.metrics
            .cache_bytes
            .with_label_values(&["memory"])
            .set(gauge(bytes));
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
        let (outcome, mut response) = match self.route(request, client.ip(), &request_id).await {
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
        headers::append_via(headers, &self.zone);
        headers.insert(CACHE_STATUS, HeaderValue::from_static(outcome.label()));
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            headers.insert(REQUEST_ID, id);
        }
        let label = [outcome.label()];
        self.metrics.requests.with_label_values(&label).inc();
        self.metrics
            .latency
            .with_label_values(&label)
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(request_id, %client, %method, %uri, status = response.status().as_u16(), result = outcome.label(), "served");
        response
    }

    async fn route(
        self: &Arc<Self>,
        request: Request<Incoming>,
        client_ip: IpAddr,
        request_id: &str,
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
        let key = format!("{origin}{path}");
        if !cacheable_method || request.headers().contains_key(header::AUTHORIZATION) {
            let response = self
                .pass(request, origin, path, &key, client_ip, request_id)
                .await?;
            return Ok((Outcome::Pass, response));
        }
        let cache_request = CacheRequest {
            parts: cache_parts(&origin, &path, request.headers())?,
            key,
            origin,
            path,
            client_ip,
            request_id: request_id.to_owned(),
        };
        self.cached(&method, request.headers(), cache_request).await
    }

    /// Serves a GET or HEAD from the cache or through a shared fetch.
    async fn cached(
        self: &Arc<Self>,
        method: &Method,
        client_headers: &HeaderMap,
        request: CacheRequest,
    ) -> Result<(Outcome, Response<ProxyBody>), Refusal> {
        let now = SystemTime::now();
        let stale = match self.cache.lookup(&request.key, &request.parts, now) {
            Lookup::Fresh(stored) => {
                self.count_bytes("cache", method, stored.body.len());
                let response = respond::from_stored(method, client_headers, &stored, now);
                return Ok((Outcome::Hit, response));
            }
            Lookup::Stale(stored) => Some(stored),
            Lookup::Miss => None,
        };
        let (mut reader, leader) = match self.join(&request) {
            Some(joined) => joined,
            None => self.start_fill(request, stale, true),
        };
        let (head, outcome) = reader.head().await.map_err(|failed| failed.0)?;
        let outcome = match outcome {
            Outcome::Miss if !leader => Outcome::Coalesced,
            other => other,
        };
        if let Some(length) = content_length(&head.headers) {
            self.count_bytes("origin", method, length);
        }
        Ok((
            outcome,
            respond::from_transfer(method, client_headers, &head, reader),
        ))
    }

    /// Joins the fetch in flight for the request's URL, when there is one it can share.
    fn join(&self, request: &CacheRequest) -> Option<(TransferReader, bool)> {
        let inflight = self.inflight.lock().expect("in-flight lock");
        let entry = inflight.get(&request.key)?;
        if !same_variant(&entry.request, &request.parts) {
            return None;
        }
        Some((entry.transfer.reader()?, false))
    }

    /// Starts a fetch; `shared` registers it so that later requests for the URL join it.
    fn start_fill(
        self: &Arc<Self>,
        request: CacheRequest,
        stale: Option<Arc<Stored>>,
        shared: bool,
    ) -> (TransferReader, bool) {
        let transfer = Transfer::new();
        let reader = transfer.reader().expect("a new transfer takes readers");
        if shared {
            let mut inflight = self.inflight.lock().expect("in-flight lock");
            if let Some(entry) = inflight.get(&request.key)
                && same_variant(&entry.request, &request.parts)
                && let Some(reader) = entry.transfer.reader()
            {
                return (reader, false);
            }
            inflight.insert(
                request.key.clone(),
                InFlight {
                    transfer: transfer.clone(),
                    request: request.parts.clone(),
                },
            );
        }
        let proxy = self.clone();
        tokio::spawn(async move { proxy.fill(request, transfer, stale).await });
        (reader, true)
    }

    /// Fetches an object for a transfer and stores it; runs apart from any client.
    async fn fill(
        &self,
        request: CacheRequest,
        transfer: Arc<Transfer>,
        stale: Option<Arc<Stored>>,
    ) {
        let mut headers = headers::to_origin(
            &request.parts.headers,
            request.client_ip,
            &self.zone,
            &request.request_id,
            true,
        );
        if let Some(stale) = &stale {
            add_validators(&mut headers, &stale.head.headers);
        }
        let fetched = self
            .client
            .fetch(OriginRequest {
                method: Method::GET,
                origin: request.origin.clone(),
                path: request.path.clone(),
                headers,
                body: None,
            })
            .await;
        let now = SystemTime::now();
        let usable_stale = stale
            .filter(|stored| !stored.forbids_stale() && stored.staleness(now) <= self.serve_stale);
        match fetched {
            Err(err) => {
                self.count_fetch("error");
                tracing::info!(request_id = request.request_id, key = request.key, error = %err, "origin fetch failed");
                match usable_stale {
                    Some(stale) => publish_stored(&transfer, &stale, Outcome::Stale, now),
                    None => transfer.finish(Err(TransferFailed(err.into()))),
                }
            }
            Ok(response) if response.response.status() == StatusCode::NOT_MODIFIED => {
                self.count_fetch("not_modified");
                match usable_stale.or_else(|| self.cache_copy(&request, now)) {
                    Some(stale) => {
                        let refreshed = self.revalidated(&request, &stale, &response, now);
                        publish_stored(&transfer, &refreshed, Outcome::Revalidated, now);
                    }
                    None => transfer.finish(Err(TransferFailed::bad_gateway(
                        "origin_broken",
                        "the origin answered 304 to an unconditional request",
                    ))),
                }
            }
            Ok(response)
                if response.response.status().is_server_error() && usable_stale.is_some() =>
            {
                self.count_fetch("error");
                let stale = usable_stale.expect("checked above");
                publish_stored(&transfer, &stale, Outcome::Stale, now);
            }
            Ok(response) => {
                self.count_fetch("ok");
                self.relay(&request, &transfer, response, now).await;
            }
        }
        self.unregister(&request.key, &transfer);
    }

    /// The stored copy a 304 refers to when the fetch was sent without one (the copy was
    /// found stale and then evicted, or another variant).
    fn cache_copy(&self, request: &CacheRequest, now: SystemTime) -> Option<Arc<Stored>> {
        match self.cache.lookup(&request.key, &request.parts, now) {
            Lookup::Fresh(stored) | Lookup::Stale(stored) => Some(stored),
            Lookup::Miss => None,
        }
    }

    /// Updates a stored response from the origin's 304 and stores the result.
    fn revalidated(
        &self,
        request: &CacheRequest,
        stale: &Stored,
        response: &OriginResponse,
        now: SystemTime,
    ) -> Arc<Stored> {
        let update = headers::from_origin(response.response.headers(), &self.zone);
        let kept = |name: &header::HeaderName| {
            name != header::CONTENT_LENGTH && name != header::CONTENT_ENCODING
        };
        let mut head = stale.head.clone();
        for name in update.keys().filter(|name| kept(name)) {
            head.headers.remove(name);
        }
        for (name, value) in update.iter().filter(|(name, _)| kept(name)) {
            head.headers.append(name, value.clone());
        }
        let policy = match stale
            .policy
            .after_response(&request.parts, &head_parts(&head), now)
        {
            AfterResponse::NotModified(policy, _) | AfterResponse::Modified(policy, _) => policy,
        };
        let refreshed = Arc::new(Stored::with_policy(policy, head, stale.body.clone(), now));
        self.cache
            .insert(&request.key, &request.parts, refreshed.clone(), now);
        refreshed
    }

    /// Streams an origin response into the transfer and stores it when it is cacheable.
    async fn relay(
        &self,
        request: &CacheRequest,
        transfer: &Arc<Transfer>,
        response: OriginResponse,
        response_time: SystemTime,
    ) {
        let (parts, mut body) = response.response.into_parts();
        let head = Head {
            status: parts.status,
            headers: headers::from_origin(&parts.headers, &self.zone),
        };
        let mut cacheable =
            content_length(&head.headers).is_none_or(|length| length <= self.max_object_bytes);
        if !cacheable {
            self.stop_sharing(&request.key, transfer);
        }
        transfer.set_head(head.clone(), Outcome::Miss);
        let mut received: u64 = 0;
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
            received += data.len() as u64;
            if cacheable && received > self.max_object_bytes {
                cacheable = false;
                self.stop_sharing(&request.key, transfer);
            }
            transfer.push(data);
            if !cacheable && transfer.wait_for_readers(STREAM_WINDOW).await == 0 {
                break Err(TransferFailed::bad_gateway(
                    "abandoned",
                    "every client left an uncacheable stream",
                ));
            }
        };
        let complete = ended.is_ok();
        transfer.finish(ended);
        if complete
            && cacheable
            && let Some(body) = transfer.complete_body()
        {
            let stored = Stored::new(&request.parts, head, body, response_time);
            if stored.policy.is_storable() {
                self.cache.insert(
                    &request.key,
                    &request.parts,
                    Arc::new(stored),
                    response_time,
                );
            }
        }
        // `response.slot` (the origin concurrency slot) is released here, after the body.
        drop(response.slot);
    }

    /// Takes an object that turned out too large for the cache out of sharing: its chunks
    /// are dropped once read, so newcomers start their own stream.
    fn stop_sharing(&self, key: &str, transfer: &Arc<Transfer>) {
        transfer.trim();
        self.unregister(key, transfer);
    }

    fn unregister(&self, key: &str, transfer: &Arc<Transfer>) {
        let mut inflight = self.inflight.lock().expect("in-flight lock");
        if inflight
            .get(key)
            .is_some_and(|entry| Arc::ptr_eq(&entry.transfer, transfer))
        {
            inflight.remove(key);
        }
    }

    /// Sends a request to its origin uncached and streams the answer back.
    async fn pass(
        &self,
        request: Request<Incoming>,
        origin: Origin,
        path: String,
        key: &str,
        client_ip: IpAddr,
        request_id: &str,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let (parts, body) = request.into_parts();
        let headers = headers::to_origin(&parts.headers, client_ip, &self.zone, request_id, false);
        let bodiless = parts.method == Method::GET || parts.method == Method::HEAD;
        let body = (!bodiless).then(|| body.map_err(BoxError::from).boxed());
        let fetched = self
            .client
            .fetch(OriginRequest {
                method: parts.method.clone(),
                origin,
                path,
                headers,
                body,
            })
            .await;
        let fetched = match fetched {
            Ok(fetched) => {
                self.count_fetch("ok");
                fetched
            }
            Err(err) => {
                self.count_fetch("error");
                return Err(err.into());
            }
        };
        let status = fetched.response.status();
        if !parts.method.is_safe() && (status.is_success() || status.is_redirection()) {
            self.cache.invalidate(key);
        }
        let (response_parts, body) = fetched.response.into_parts();
        let slot = fetched.slot;
        // The body owns the origin's concurrency slot until it is dropped.
        let body = body
            .map_err(move |err| {
                let _slot = &slot;
                BoxError::from(err)
            })
            .boxed();
        let mut response = Response::new(body);
        *response.status_mut() = response_parts.status;
        *response.headers_mut() = headers::from_origin(&response_parts.headers, &self.zone);
        Ok(response)
    }

    fn count_fetch(&self, outcome: &str) {
        self.metrics
            .origin_fetches
            .with_label_values(&[outcome])
            .inc();
    }

    fn count_bytes(&self, source: &str, method: &Method, length: impl TryInto<u64>) {
        if *method != Method::HEAD {
            self.metrics
                .bytes_served
                .with_label_values(&[source])
                .inc_by(length.try_into().unwrap_or(0));
        }
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

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The client's request ID when it is short and plain, else a new random one.
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
        None => format!("{:016x}", rand::random::<u64>()),
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
        assert_ne!(made_up, "evil\tid");
    }
}
