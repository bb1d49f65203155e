//! Cooperation between proxies: who holds an object (the DHT), fetching it from them, and
//! proving to them that the request comes from the cluster.
//!
//! On a miss, the proxy looks the URL up in the DHT (key: SHA-1 of the cache key,
//! `host:port/path?query`); the DHT answers with holders in the requester's zone first. The
//! proxy asks up to [`MAX_HOLDERS_TRIED`] of them, nearest first, with an ordinary GET for
//! the object that carries `X-Coral-Peer: <unix seconds>.<HMAC>`, the HMAC-SHA256 of the time
//! and the cache key under a key derived from the cluster key. A holder answers such a request
//! from its cache or from its own fetch in flight (cut-through), and never fetches for a peer:
//! it says 404 instead, and the requester tries the next holder, then the origin.
//!
//! An expired copy is revalidated by one node for the cluster: nodes holding it claim a key
//! of its version and round (see `revalidation_round` in the service), and all but the first
//! to claim it wait on that node's revalidation instead of asking the origin.
//!
//! Announcing: before going to the origin, the proxy puts `key -> itself` for the time the
//! fetch may take, so other nodes missing the same object find it and wait on its fetch; once
//! the object is stored it puts itself again for the object's freshness (at most an hour).
//! Nodes missing an object at the same moment all find nothing; their puts then meet at the
//! key's closest node, which stores them one after the other and names the first to the rest
//! (the incumbent), so only the first goes to the origin and the others wait on it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

use super::headers::{CACHE_STATUS, REQUEST_ID};
use crate::dht::node::PutOutcome;
use crate::dht::udp::UdpNetwork;
use crate::dht::wire::Value;
use crate::dht::{Dht, Id, traced};

/// The header that authenticates a peer request.
pub const PEER_HEADER: HeaderName = HeaderName::from_static("x-coral-peer");
/// Holders asked before giving up and going to the origin.
pub const MAX_HOLDERS_TRIED: usize = 3;
/// Longest a peer token stays valid, either side of the receiver's clock.
const TOKEN_LIFETIME: u64 = 60;
/// Longest time an object is announced for.
const MAX_ANNOUNCE: Duration = Duration::from_secs(3600);
/// Time allowed to connect to a peer (pods of one cluster).
const PEER_CONNECT: Duration = Duration::from_secs(1);

/// Signs and checks peer requests.
#[derive(Clone)]
pub struct PeerAuth {
    key: [u8; 32],
}

impl PeerAuth {
    /// Keys derived from the cluster key, apart from the DHT's packet keys.
    pub fn new(cluster_key: &[u8]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cluster_key)
            .expect("HMAC takes keys of any length");
        mac.update(b"coral-peer/1");
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, seconds: u64, cache_key: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(&seconds.to_be_bytes());
        mac.update(cache_key.as_bytes());
        mac
    }

    /// The token for a request for `cache_key` sent at `now`.
    pub fn sign(&self, cache_key: &str, now: SystemTime) -> String {
        let seconds = unix_seconds(now);
        let tag = self.mac(seconds, cache_key).finalize().into_bytes();
        let hex: String = tag.iter().map(|byte| format!("{byte:02x}")).collect();
        format!("{seconds}.{hex}")
    }

    /// Whether `token` is a valid, current token for `cache_key`.
    pub fn verify(&self, cache_key: &str, token: &str, now: SystemTime) -> bool {
        let Some((seconds, hex)) = token.split_once('.') else {
            return false;
        };
        let Ok(seconds) = seconds.parse::<u64>() else {
            return false;
        };
        if unix_seconds(now).abs_diff(seconds) > TOKEN_LIFETIME {
            return false;
        }
        let Some(tag) = decode_hex(hex) else {
            return false;
        };
        self.mac(seconds, cache_key).verify_slice(&tag).is_ok()
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// What a proxy needs to cooperate: the DHT, the cluster key, and where peers reach it.
#[derive(Clone)]
pub struct Peering {
    /// This node's DHT.
    pub dht: Arc<Dht<UdpNetwork>>,
    /// The cluster's shared key.
    pub cluster_key: Arc<[u8]>,
    /// The address other proxies fetch from this one at (pod IP and proxy port).
    pub advertise: SocketAddr,
}

/// A request for an object from a peer.
pub struct PeerRequest<'a> {
    /// The cache key.
    pub key: &'a str,
    /// The zone host name of the origin.
    pub zone_host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// The client's negotiation headers (for `Vary`).
    pub headers: HeaderMap,
    /// The client request's ID, so the peer logs it too.
    pub request_id: &'a str,
}

/// The proxy's side of cooperation.
pub struct Peers {
    peering: Peering,
    auth: PeerAuth,
    http: Client<HttpConnector, Empty<Bytes>>,
    response_timeout: Duration,
}

impl Peers {
    /// Cooperation through `peering`; a peer gets `response_timeout` to send its response
    /// head (it may be waiting for the origin itself).
    pub fn new(peering: Peering, response_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(PEER_CONNECT));
        connector.set_nodelay(true);
        Self {
            auth: PeerAuth::new(&peering.cluster_key),
            peering,
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            response_timeout,
        }
    }

    /// Checks a peer's token for `cache_key`.
    pub fn verify(&self, cache_key: &str, token: &HeaderValue) -> bool {
        token
            .to_str()
            .is_ok_and(|token| self.auth.verify(cache_key, token, SystemTime::now()))
    }

    /// Other proxies holding `cache_key`, nearest first. The DHT requests carry `request_id`,
    /// so the nodes answering them log it.
    pub async fn holders(&self, cache_key: &str, request_id: &str) -> Vec<SocketAddr> {
        let found = tokio::time::timeout(
            self.response_timeout,
            traced(
                request_id,
                self.peering.dht.get(Id::of(cache_key.as_bytes())),
            ),
        )
        .await
        .unwrap_or_default();
        let mut holders: Vec<SocketAddr> = found
            .values
            .into_iter()
            .map(|timed| timed.value.holder)
            .filter(|holder| *holder != self.peering.advertise)
            .collect();
        holders.dedup();
        tracing::debug!(cache_key, ?holders, "DHT lookup");
        holders
    }

    /// Puts `cache_key -> this proxy` for `ttl`, kept between 2 s and an hour, on behalf of
    /// the client request `request_id`.
    fn put_self(
        &self,
        cache_key: &str,
        ttl: Duration,
        request_id: &str,
    ) -> impl Future<Output = PutOutcome> + use<> {
        let dht = self.peering.dht.clone();
        let request_id = request_id.to_owned();
        let key = Id::of(cache_key.as_bytes());
        let value = Value {
            holder: self.peering.advertise,
            meta: Vec::new(),
        };
        let ttl = ttl.clamp(Duration::from_secs(2), MAX_ANNOUNCE);
        async move { traced(&request_id, dht.put(key, value, ttl)).await }
    }

    /// Puts `cache_key -> this proxy` for `ttl` (at most an hour), in the background, on
    /// behalf of the client request `request_id`.
    pub fn announce(&self, cache_key: &str, ttl: Duration, request_id: &str) {
        tokio::spawn(self.put_self(cache_key, ttl, request_id));
    }

    /// Announces this node as fetching `cache_key` for `ttl`, and returns the holder that
    /// announced it first, if another did: the node to wait on instead of the origin. Nodes
    /// that miss the same object at the same moment all store at the key's closest node,
    /// which names the first of them to the others.
    pub async fn claim(
        &self,
        cache_key: &str,
        ttl: Duration,
        request_id: &str,
    ) -> Option<SocketAddr> {
        let outcome = tokio::time::timeout(
            self.response_timeout,
            self.put_self(cache_key, ttl, request_id),
        )
        .await
        .ok()?;
        let incumbent = outcome
            .global_incumbent()
            .map(|first| first.holder)
            .filter(|holder| *holder != self.peering.advertise);
        tracing::debug!(cache_key, ?incumbent, "DHT claim");
        incumbent
    }

    /// Asks `holder` for an object; `None` when it does not have it or cannot be reached.
    pub async fn fetch(
        &self,
        holder: SocketAddr,
        request: &PeerRequest<'_>,
    ) -> Option<Response<Incoming>> {
        let mut outgoing = Request::new(Empty::new());
        *outgoing.uri_mut() = format!("http://{holder}{}", request.path).parse().ok()?;
        *outgoing.headers_mut() = request.headers.clone();
        let headers = outgoing.headers_mut();
        headers.insert(header::HOST, HeaderValue::from_str(request.zone_host).ok()?);
        headers.insert(
            PEER_HEADER,
            HeaderValue::from_str(&self.auth.sign(request.key, SystemTime::now())).ok()?,
        );
        if let Ok(id) = HeaderValue::from_str(request.request_id) {
            headers.insert(REQUEST_ID, id);
        }
        let answer = tokio::time::timeout(self.response_timeout, self.http.request(outgoing)).await;
        match answer {
            Ok(Ok(response)) if is_peer_copy(&response) => Some(response),
            Ok(Ok(response)) => {
                tracing::debug!(%holder, status = %response.status(), "peer does not have it");
                None
            }
            Ok(Err(err)) => {
                tracing::debug!(%holder, error = %err, "peer fetch failed");
                None
            }
            Err(_) => {
                tracing::debug!(%holder, "peer fetch timed out");
                None
            }
        }
    }
}

/// Whether a peer's answer is its copy of the object (which may be a cached 404), not its
/// refusal (`X-Cache: refused`: no copy, or a bad token).
fn is_peer_copy<B>(response: &Response<B>) -> bool {
    response
        .headers()
        .get(CACHE_STATUS)
        .is_none_or(|status| status != "refused")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_verifies_for_its_key_only() {
        let auth = PeerAuth::new(b"a cluster key of at least thirty-two bytes");
        let now = SystemTime::now();
        let token = auth.sign("a.com:80/x", now);
        assert!(auth.verify("a.com:80/x", &token, now));
        assert!(!auth.verify("a.com:80/y", &token, now));
        let other = PeerAuth::new(b"another cluster key of thirty-two bytes...");
        assert!(!other.verify("a.com:80/x", &token, now));
    }

    #[test]
    fn old_and_malformed_tokens_fail() {
        let auth = PeerAuth::new(b"a cluster key of at least thirty-two bytes");
        let now = SystemTime::now();
        let old = auth.sign("k", now - Duration::from_secs(120));
        assert!(!auth.verify("k", &old, now));
        for token in [
            "",
            "12",
            "x.y",
            "1.zz",
            &format!("{}.00", unix_seconds(now)),
        ] {
            assert!(!auth.verify("k", token, now), "{token}");
        }
    }
}
