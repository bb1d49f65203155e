//! What the proxy tests run on: a private network namespace per test, real origin servers on
//! its loopback (plain and TLS, with a CA made for the test), a proxy in the same process, and
//! a small HTTP client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use coral_node::config::{NodeConfig, OriginAccess, RateLimit};
use coral_node::dht::metrics::DhtMetrics;
use coral_node::dht::udp::{UdpDht, UdpNetwork, UdpNodeConfig, UdpSettings};
use coral_node::dht::wire::{Codec, Value};
use coral_node::dht::{Dht, DhtParams, Id, Locality};
use coral_node::proxy::metrics::ProxyMetrics;
use coral_node::proxy::peers::Peering;
use coral_node::proxy::server;
use coral_node::proxy::service::{CacheView, Proxy};
use http::{HeaderMap, Request, Response, StatusCode, request};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The zone the test proxies serve.
pub const ZONE: &str = "nyud.net";
/// The origin host name the proxies resolve to 127.0.0.1 through their fixed table.
pub const ORIGIN_HOST: &str = "origin.test";
/// Longest any test may run.
const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// Runs a test in a network namespace of its own, where only loopback exists: nothing the
/// proxy does can reach another machine, whatever a bug makes it dial.
pub fn in_private_network<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let outcome = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) needs root");
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("run ip");
        assert!(up.success(), "ip link set lo up failed");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            tokio::time::timeout(TEST_DEADLINE, test())
                .await
                .expect("the test ran past its deadline");
        });
    })
    .join();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// An origin's answer.
pub type OriginBody = BoxBody<Bytes, Infallible>;
/// How a test origin answers a request.
pub type Handler = Arc<
    dyn Fn(request::Parts) -> Pin<Box<dyn Future<Output = Response<OriginBody>> + Send>>
        + Send
        + Sync,
>;

/// A whole body.
pub fn body(bytes: impl Into<Bytes>) -> OriginBody {
    Full::new(bytes.into()).boxed()
}

/// A handler from an async closure.
pub fn handler<F, Fut>(answer: F) -> Handler
where
    F: Fn(request::Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<OriginBody>> + Send + 'static,
{
    Arc::new(move |parts| Box::pin(answer(parts)))
}

/// A real origin server on loopback that records what it was asked.
pub struct TestOrigin {
    /// Where it listens.
    pub address: SocketAddr,
    requests: Arc<Mutex<Vec<request::Parts>>>,
    shutdown: CancellationToken,
}

impl TestOrigin {
    /// A plain HTTP origin.
    pub async fn start(handler: Handler) -> Self {
        Self::start_with(handler, None).await
    }

    /// An HTTPS origin presenting `tls`.
    pub async fn start_tls(handler: Handler, tls: &TestTls) -> Self {
        Self::start_with(handler, Some(tls.acceptor())).await
    }

    /// A plain HTTP origin on a given port (to bring a dead origin back).
    pub async fn start_at(port: u16, handler: Handler) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        Self::serve(listener, handler, None)
    }

    async fn start_with(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler, tls)
    }

    fn serve(
        listener: TcpListener,
        handler: Handler,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let (log, stop) = (requests.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let (handler, log, tls) = (handler.clone(), log.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (handler, log) = (handler.clone(), log.clone());
                        async move {
                            let (parts, _) = request.into_parts();
                            log.lock().unwrap().push(parts.clone());
                            Ok::<_, Infallible>(handler(parts).await)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self {
            address,
            requests,
            shutdown,
        }
    }

    /// Requests received for a path.
    pub fn hits(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|parts| parts.uri.path() == path)
            .count()
    }

    /// The last request received for a path.
    pub fn last(&self, path: &str) -> Option<request::Parts> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|parts| parts.uri.path() == path)
            .cloned()
    }

    /// The zone host name clients use for this origin.
    pub fn zone_host(&self) -> String {
        format!("{ORIGIN_HOST}.{}.{ZONE}", self.address.port())
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An origin that answers every connection's first request with the same raw bytes and
/// closes it: responses no well-behaved server library would send.
pub struct RawOrigin {
    /// Where it listens.
    pub address: SocketAddr,
    connections: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl RawOrigin {
    /// Starts answering with `response`.
    pub async fn start(response: impl Into<Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let response = Arc::new(response.into());
        let connections = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let (count, stop) = (connections.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                count.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 65536
                    {
                        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                            .await
                        {
                            Ok(Ok(read)) if read > 0 => head.extend_from_slice(&buffer[..read]),
                            _ => return,
                        }
                    }
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            address,
            connections,
            shutdown,
        }
    }

    /// Connections accepted (each carries one request).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The zone host name clients use for this origin.
    pub fn zone_host(&self) -> String {
        format!("{ORIGIN_HOST}.{}.{ZONE}", self.address.port())
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A CA made for one test and a certificate it signed for [`ORIGIN_HOST`].
pub struct TestTls {
    /// The CA certificate, as the proxy's `extraCaFile`.
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

impl TestTls {
    /// A fresh CA and server certificate.
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Coral test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![ORIGIN_HOST.to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        Self {
            ca_file,
            _dir: dir,
            server: Arc::new(server),
        }
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }
}

/// The node configuration of test proxies: the fixture, with loopback allowed as an internal
/// origin network, [`ORIGIN_HOST`] fixed at 127.0.0.1, a DNS server that does not exist
/// (so any other name fails to resolve, and the machine's resolver is never asked), and no
/// practical rate limit.
pub fn test_config() -> NodeConfig {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/node.yaml");
    let mut config = NodeConfig::load(std::path::Path::new(path)).unwrap().value;
    config.proxy.origin_access = OriginAccess {
        internal_networks: vec!["127.0.0.0/8".parse().unwrap()],
        addresses: [(ORIGIN_HOST.to_owned(), vec!["127.0.0.1".parse().unwrap()])].into(),
        resolvers: vec!["127.0.0.1:9".parse().unwrap()],
        ..OriginAccess::default()
    };
    // Every test client comes from 127.0.0.1 and every origin is 127.0.0.1; the rate-limit
    // tests set their own limits.
    let unlimited = RateLimit {
        requests_per_second: 1_000_000,
        burst: 1_000_000,
    };
    config.proxy.per_client_rate = unlimited;
    config.proxy.per_origin_rate = unlimited;
    config
}

/// Makes `host` another name of the test origin's address, 127.0.0.1.
pub fn resolve_to_loopback(config: &mut NodeConfig, host: &str) {
    let loopback = vec!["127.0.0.1".parse().unwrap()];
    config
        .proxy
        .origin_access
        .addresses
        .insert(host.to_owned(), loopback);
}

/// A proxy running in this process.
pub struct TestProxy {
    /// Where it serves clients.
    pub address: SocketAddr,
    proxy: Arc<Proxy>,
    metrics: ProxyMetrics,
    shutdown: CancellationToken,
}

impl TestProxy {
    /// Starts a proxy with a configuration.
    pub async fn start(config: &NodeConfig) -> Self {
        Self::start_with(config, None).await
    }

    /// Starts a proxy that cooperates through `dht`.
    pub async fn start_with(config: &NodeConfig, dht: Option<Arc<Dht<UdpNetwork>>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let peering = dht.map(|dht| Peering {
            dht,
            cluster_key: CLUSTER_KEY.into(),
            advertise: address,
        });
        let metrics = ProxyMetrics::unregistered();
        let proxy = Arc::new(Proxy::new(config, metrics.clone(), peering).unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(server::serve(
            listener,
            proxy.clone(),
            config.proxy.client_limits,
            shutdown.clone(),
        ));
        Self {
            address,
            proxy,
            metrics,
            shutdown,
        }
    }

    /// Fetches sent to origins so far with `outcome` (`ok`, `not_modified`, `error`).
    pub fn origin_fetches(&self, outcome: &str) -> u64 {
        self.metrics
            .origin_fetches
            .with_label_values(&[outcome])
            .get()
    }

    /// Body bytes sent to clients so far from `source` (`cache`, `origin`, `peer`).
    pub fn bytes_served(&self, source: &str) -> u64 {
        self.metrics.bytes_served.with_label_values(&[source]).get()
    }

    /// Requests answered so far with `result`, and how many of them the latency histogram
    /// timed.
    pub fn requests(&self, result: &str) -> (u64, u64) {
        let counted = self.metrics.requests.with_label_values(&[result]).get();
        let timed = self
            .metrics
            .latency
            .with_label_values(&[result])
            .get_sample_count();
        (counted, timed)
    }

    /// Objects and bytes the cache holds in `tier`, as a scrape would see them.
    pub fn cached(&self, tier: &str) -> (i64, i64) {
        self.proxy.update_gauges();
        (
            self.metrics.cache_objects.with_label_values(&[tier]).get(),
            self.metrics.cache_bytes.with_label_values(&[tier]).get(),
        )
    }

    /// Bytes reserved by spill files now.
    pub fn spill_bytes(&self) -> i64 {
        self.proxy.update_gauges();
        self.metrics.spill_bytes.get()
    }

    /// Refusals so far for `reason`.
    pub fn refusals(&self, reason: &str) -> u64 {
        self.metrics.refusals.with_label_values(&[reason]).get()
    }

    /// Objects asked of other proxies so far with `outcome` (`hit`, `miss`).
    pub fn peer_fetches(&self, outcome: &str) -> u64 {
        self.metrics
            .peer_fetches
            .with_label_values(&[outcome])
            .get()
    }

    /// Seconds bodies waited for their share of their origin's bandwidth.
    pub fn shaping_wait(&self) -> f64 {
        self.metrics.shaping_wait.get()
    }

    /// Client connections open.
    pub fn open_connections(&self) -> i64 {
        self.metrics.open_connections.get()
    }

    /// Client connections parked between requests.
    pub fn idle_connections(&self) -> i64 {
        self.metrics.idle_connections.get()
    }

    /// Waits until what the cache stored so far is on disk.
    pub async fn flush(&self) {
        self.proxy.flush_cache().await;
    }

    /// What the cache holds and the most asked URLs, as the admin port shows them.
    pub fn cache_view(&self) -> CacheView {
        self.proxy.cache_view(10)
    }

    /// Stops serving and waits for the disk tier to hold what was stored, as a node's
    /// shutdown does.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.proxy.flush_cache().await;
    }

    /// Sends a GET for `path` on `host`, with extra headers, and reads the whole answer.
    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send("GET", host, path, headers).await
    }

    /// Sends a GET for `path` on `host` from the loopback address `client`.
    pub async fn get_from(&self, client: Ipv4Addr, host: &str, path: &str) -> Answer {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((client, 0))).unwrap();
        let stream = socket.connect(self.address).await.unwrap();
        Self::exchange(stream, "GET", host, path, &[]).await
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        let stream = tokio::net::TcpStream::connect(self.address).await.unwrap();
        Self::exchange(stream, method, host, path, headers).await
    }

    /// Sends a GET and reads the answer; `None` when the connection closed before a response
    /// head (a body that broke off before its first byte could be sent).
    pub async fn try_get(&self, host: &str, path: &str) -> Option<Answer> {
        let stream = tokio::net::TcpStream::connect(self.address).await.unwrap();
        Self::try_exchange(stream, "GET", host, path, &[]).await
    }

    async fn exchange(
        stream: tokio::net::TcpStream,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Answer {
        Self::try_exchange(stream, method, host, path, headers)
            .await
            .expect("a response head")
    }

    async fn try_exchange(
        stream: tokio::net::TcpStream,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<Answer> {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new()).unwrap())
            .await
            .ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes());
        Some(Answer {
            status: parts.status,
            headers: parts.headers,
            complete: body.is_ok(),
            body: body.unwrap_or_default(),
        })
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The shared key of test clusters.
pub const CLUSTER_KEY: &[u8] = b"the proxy tests' cluster key, 32+ bytes";

/// Proxies cooperating through a DHT on loopback, one per zone: z1 and z2 in region r1, z3 in
/// r2.
pub struct TestCluster {
    /// The proxies, in zone order.
    pub proxies: Vec<TestProxy>,
    dhts: Vec<UdpDht>,
}

impl TestCluster {
    /// Starts and joins the cluster.
    pub async fn start(config: &NodeConfig) -> Self {
        Self::start_each(|_| config.clone()).await
    }

    /// Starts and joins the cluster, node `n` with `config_of(n)`.
    pub async fn start_each(config_of: impl Fn(usize) -> NodeConfig) -> Self {
        let mut dhts: Vec<UdpDht> = Vec::new();
        for (zone, region) in [("z1", "r1"), ("z2", "r1"), ("z3", "r2")] {
            let node = UdpDht::start(
                UdpNodeConfig {
                    bind: "127.0.0.1:0".parse().unwrap(),
                    advertise: None,
                    locality: Locality::from_labels(&[zone, region]),
                    params: DhtParams::default(),
                    codec: Codec::new(CLUSTER_KEY, 1),
                    settings: UdpSettings::default(),
                },
                DhtMetrics::unregistered(),
            )
            .await
            .unwrap();
            let known: Vec<_> = dhts.iter().map(|dht| dht.dht.contact().addr).collect();
            node.dht.join(&known).await;
            dhts.push(node);
        }
        let all: Vec<_> = dhts.iter().map(|dht| dht.dht.contact().addr).collect();
        for node in &dhts {
            node.dht.maintain(&all).await;
        }
        let mut proxies = Vec::new();
        for (index, node) in dhts.iter().enumerate() {
            let config = config_of(index);
            proxies.push(TestProxy::start_with(&config, Some(node.dht.clone())).await);
        }
        Self { proxies, dhts }
    }

    /// Puts `cache_key -> holder` into the DHT through node `node`, as a proxy at `holder`
    /// announcing the object would.
    pub async fn announce(&self, node: usize, cache_key: &str, holder: SocketAddr) {
        let value = Value {
            holder,
            meta: Vec::new(),
        };
        let key = Id::of(cache_key.as_bytes());
        self.dhts[node]
            .dht
            .put(key, value, Duration::from_secs(60))
            .await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.proxies.clear();
        self.dhts.clear();
    }
}

/// A whole response as a client received it.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body (what arrived of it, when it broke off).
    pub body: Bytes,
    /// Whether the body arrived whole.
    pub complete: bool,
}

impl Answer {
    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    /// How the proxy answered (`X-Cache`).
    pub fn cache(&self) -> &str {
        self.header("x-cache")
    }
}

/// A response with a status, headers and a body.
pub fn respond(
    status: u16,
    headers: &[(&str, &str)],
    content: impl Into<Bytes>,
) -> Response<OriginBody> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response.body(body(content)).unwrap()
}

/// Counts per key, for tests that tally answers.
pub fn tally<'a>(items: impl IntoIterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item.to_owned()).or_insert(0) += 1;
    }
    counts
}
