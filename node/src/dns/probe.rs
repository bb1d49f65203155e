//! The health checks: every interval, each member is probed (a proxy's `/healthz`, a DNS
//! node's `/livez`, on the admin port; and, when this node plays the DHT role, a ping of the
//! member's DHT node, so a proxy cut off from the DHT is ejected too), and what passes is
//! published for the [`super::handler::DnsHandler`].
//!
//! Members come from a [`MembersFeed`]; a new list is probed at once. A member is never
//! published before its first probe. Each proxy also has a watch
//! connection open to its admin port: when that closes, the proxy is probed at once, so a
//! crashed or killed proxy (whose refused connection ejects it at once) leaves the answers
//! within milliseconds, not at the next round.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::answer::Published;
use super::handler::SharedPublished;
use super::health::{MemberHealth, Probe, Transition};
use super::members::{Member, Members, MembersFeed};
use super::metrics::DnsMetrics;
use super::select::LiveProxy;
use crate::config::{HealthConfig, Topology};
use crate::dht::Dht;
use crate::dht::udp::UdpNetwork;
use crate::proxy::health::Health;

/// Largest `/healthz` body read.
const MAX_HEALTH_BODY: usize = 16 << 10;
/// Closed watch connections waiting for a recheck.
const CLOSED_QUEUE: usize = 256;
/// Pause before a watch connection that the proxy closed (its admin port's idle timeout) is
/// opened again.
const REWATCH: Duration = Duration::from_millis(50);
/// A watch connection that lived less than this was closed at once (not by an idle timeout):
/// the next one waits a probe interval, so a proxy refusing to keep connections does not
/// cause a probe every [`REWATCH`].
const SHORT_WATCH: Duration = Duration::from_secs(1);
/// A watch connection is renewed after this long even if nothing closed it: a host that
/// vanished without a word would otherwise hold it forever.
const RENEW_WATCH: Duration = Duration::from_secs(60);

/// How often a node still waiting for its first members list says so.
const FIRST_MEMBERS_WARNING: Duration = Duration::from_secs(10);

/// What a member does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A caching proxy, published in answers.
    Proxy,
    /// A DNS node, published in NS records.
    Nameserver,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Proxy => "proxy",
            Role::Nameserver => "dns",
        }
    }
}

/// A member as the admin port shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MemberView {
    /// `proxy` or `dns`.
    pub role: &'static str,
    /// Its address.
    pub address: IpAddr,
    /// Its Kubernetes node.
    pub node: String,
    /// Its locality, most local first (empty when the topology does not know its node).
    pub locality: Vec<String>,
    /// Published now.
    pub healthy: bool,
    /// Load from its last passing probe.
    pub load: f64,
    /// The address published for it instead of `address`, when it reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_address: Option<IpAddr>,
}

/// The members and their health, for the admin port.
pub type SharedMembers = Arc<std::sync::RwLock<Vec<MemberView>>>;

/// A member's DHT node, checked beside its admin port.
#[derive(Clone)]
pub struct DhtCheck {
    /// This node's DHT.
    pub dht: Arc<Dht<UdpNetwork>>,
    /// The cluster's DHT port.
    pub port: u16,
}

/// Probes members and publishes the healthy ones.
pub struct Prober {
    feed: MembersFeed,
    members: Arc<Members>,
    topology: Topology,
    admin_port: u16,
    thresholds: HealthConfig,
    dht: Option<DhtCheck>,
    own_address: IpAddr,
    public_addresses: bool,
    http: Client<HttpConnector, Empty<Bytes>>,
    health: HashMap<(Role, IpAddr), MemberHealth>,
    /// The zone label each member's series were created with, to remove them by.
    series_zones: HashMap<(Role, IpAddr), String>,
    watchers: HashMap<IpAddr, JoinHandle<()>>,
    closed: (mpsc::Sender<IpAddr>, mpsc::Receiver<IpAddr>),
    published: SharedPublished,
    views: SharedMembers,
    metrics: DnsMetrics,
}

impl Drop for Prober {
    fn drop(&mut self) {
        for watcher in self.watchers.values() {
            watcher.abort();
        }
    }
}

impl Prober {
    /// A prober of the members `feed` lists, placed by `topology`, probed on
    /// `admin_port` as `thresholds` say, publishing into `published`. The DNS node at
    /// `own_address` is this one: answering queries is its proof of life. With
    /// `public_addresses` (proxies behind host ports), a proxy is published at the address
    /// it reports, when of the same family as its own.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        feed: MembersFeed,
        topology: Topology,
        admin_port: u16,
        thresholds: HealthConfig,
        dht: Option<DhtCheck>,
        own_address: IpAddr,
        public_addresses: bool,
        published: SharedPublished,
        metrics: DnsMetrics,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(thresholds.timeout));
        connector.set_nodelay(true);
        Self {
            feed,
            members: Arc::default(),
            topology,
            admin_port,
            thresholds,
            dht,
            own_address,
            public_addresses,
            // A new connection per probe: it checks that the proxy still accepts, and a
            // refusal is seen as such rather than as a pooled connection that broke.
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
            health: HashMap::new(),
            series_zones: HashMap::new(),
            watchers: HashMap::new(),
            closed: mpsc::channel(CLOSED_QUEUE),
            published,
            views: SharedMembers::default(),
            metrics,
        }
    }

    /// Waits until the feed has given a members list, or `shutdown`; says whether it has.
    /// Says so in the log every [`FIRST_MEMBERS_WARNING`] meanwhile: the node answers nothing
    /// until then.
    pub async fn first_members(&mut self, shutdown: &CancellationToken) -> bool {
        let mut waiting = tokio::time::interval(FIRST_MEMBERS_WARNING);
        waiting.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return false,
                listed = self.feed.wait_for(Option::is_some) => return listed.is_ok(),
                _ = waiting.tick() => tracing::warn!(
                    "no members list yet (from the API server or the members file): not answering queries"
                ),
            }
        }
    }

    /// Takes the feed's latest members, probes every one of them once (all at once, each
    /// within the timeout), and publishes the result.
    pub async fn round(&mut self) {
        self.take_members();
        self.probe_and_publish(false).await;
    }

    /// Takes the feed's new members list and probes only the members it adds: the others
    /// keep their place in the rounds, so a busy list (a rollout) does not speed up their
    /// failure and success counts.
    async fn take_new_members(&mut self) {
        self.take_members();
        self.probe_and_publish(true).await;
    }

    /// Takes the feed's latest list, keeps a watch connection per proxy on it, and forgets
    /// the members it no longer has.
    fn take_members(&mut self) {
        if let Some(members) = self.feed.borrow_and_update().clone() {
            self.members = members;
        }
        self.watch_proxies();
        let listed: Vec<(Role, IpAddr)> = self
            .targets()
            .iter()
            .map(|(role, member)| (*role, member.address))
            .collect();
        let metrics = &self.metrics;
        let series_zones = &mut self.series_zones;
        self.health.retain(|(role, address), _| {
            let keep = listed.contains(&(*role, *address));
            if !keep {
                // Pod addresses change with every restart: a member gone takes its series.
                let zone = series_zones.remove(&(*role, *address)).unwrap_or_default();
                let address = address.to_string();
                let _ = metrics
                    .member_healthy
                    .remove_label_values(&[role.name(), &address, &zone]);
                for to in [Transition::Admitted, Transition::Ejected].map(Transition::name) {
                    let _ = metrics.member_transitions.remove_label_values(&[
                        role.name(),
                        &address,
                        &zone,
                        to,
                    ]);
                }
            }
            keep
        });
    }

    /// Probes every member (or, with `only_unchecked`, those never probed) at once and
    /// publishes the result.
    async fn probe_and_publish(&mut self, only_unchecked: bool) {
        let targets = self.targets();
        let probed: Vec<(Role, IpAddr)> = targets
            .iter()
            .map(|(role, member)| (*role, member.address))
            .filter(|key| !only_unchecked || !self.health.contains_key(key))
            .collect();
        let probes = join_all(
            probed
                .iter()
                .map(|(role, address)| self.probe(*role, *address)),
        )
        .await;
        for ((role, address), probe) in probed.into_iter().zip(probes) {
            self.record(role, address, probe);
        }
        self.publish(&targets);
    }

    /// Probes the proxy at `address` now (its watch connection closed) and publishes.
    async fn recheck(&mut self, address: IpAddr) {
        if !self
            .members
            .proxies
            .iter()
            .any(|member| member.address == address)
        {
            return;
        }
        let probe = self.probe(Role::Proxy, address).await;
        self.record(Role::Proxy, address, probe);
        let targets = self.targets();
        self.publish(&targets);
    }

    /// Rounds every interval, probes members as the list adds them, and rechecks a proxy
    /// whose watch connection closed, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.thresholds.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut feed_open = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => self.round().await,
                changed = self.feed.changed(), if feed_open => match changed {
                    Ok(()) => self.take_new_members().await,
                    // The source stopped (at shutdown): keep the last list.
                    Err(_) => feed_open = false,
                },
                Some(address) = self.closed.1.recv() => self.recheck(address).await,
            }
        }
    }

    fn targets(&self) -> Vec<(Role, Member)> {
        self.members
            .proxies
            .iter()
            .map(|member| (Role::Proxy, member.clone()))
            .chain(
                self.members
                    .nameservers
                    .iter()
                    .map(|member| (Role::Nameserver, member.clone())),
            )
            .collect()
    }

    fn record(&mut self, role: Role, address: IpAddr, probe: Probe) {
        let zone = self.series_zone(role, address);
        let label = address.to_string();
        if !self.health.contains_key(&(role, address)) {
            // Both directions exist at 0 from the first probe, so that a member's first
            // ejection shows as an increase rather than as a series born at 1.
            for to in [Transition::Admitted, Transition::Ejected] {
                self.metrics.member_transitions.with_label_values(&[
                    role.name(),
                    &label,
                    &zone,
                    to.name(),
                ]);
            }
        }
        let health = self.health.entry((role, address)).or_default();
        if let Some(transition) = health.record(probe, &self.thresholds) {
            tracing::info!(
                role = role.name(),
                address = label,
                ?probe,
                to = transition.name(),
                "member health changed"
            );
            self.metrics
                .member_transitions
                .with_label_values(&[role.name(), &label, &zone, transition.name()])
                .inc();
        }
        self.metrics
            .member_healthy
            .with_label_values(&[role.name(), &label, &zone])
            .set(i64::from(health.is_healthy()));
    }

    /// The zone label of a member's series: the one they were created with, else its node's
    /// most local locality value (empty when the topology does not know the node).
    fn series_zone(&mut self, role: Role, address: IpAddr) -> String {
        let members = match role {
            Role::Proxy => &self.members.proxies,
            Role::Nameserver => &self.members.nameservers,
        };
        let zone = members
            .iter()
            .find(|member| member.address == address)
            .map_or("", |member| self.topology.zone(&member.node))
            .to_owned();
        self.series_zones
            .entry((role, address))
            .or_insert(zone)
            .clone()
    }

    /// The members and their health, kept current for the admin port.
    pub fn views(&self) -> SharedMembers {
        self.views.clone()
    }

    fn publish(&self, targets: &[(Role, Member)]) {
        let published = self.published_now(targets);
        *self.published.write().expect("published lock poisoned") = Arc::new(published);
        let views = targets
            .iter()
            .map(|(role, member)| {
                let health = self
                    .health
                    .get(&(*role, member.address))
                    .copied()
                    .unwrap_or_default();
                MemberView {
                    role: role.name(),
                    address: member.address,
                    node: member.node.clone(),
                    locality: self.locality(member),
                    healthy: health.is_healthy(),
                    load: health.load(),
                    public_address: health.public_address(),
                }
            })
            .collect();
        *self.views.write().expect("views lock poisoned") = views;
    }

    fn locality(&self, member: &Member) -> Vec<String> {
        self.topology
            .nodes
            .get(&member.node)
            .cloned()
            .unwrap_or_default()
    }

    /// Keeps one watch connection per listed proxy.
    fn watch_proxies(&mut self) {
        let listed: Vec<IpAddr> = self
            .members
            .proxies
            .iter()
            .map(|member| member.address)
            .collect();
        self.watchers.retain(|address, watcher| {
            let keep = listed.contains(address);
            if !keep {
                watcher.abort();
            }
            keep
        });
        for address in listed {
            let admin = SocketAddr::new(address, self.admin_port);
            let closed = self.closed.0.clone();
            let retry = self.thresholds.interval;
            self.watchers
                .entry(address)
                .or_insert_with(|| tokio::spawn(watch(admin, closed, retry)));
        }
    }

    fn published_now(&self, targets: &[(Role, Member)]) -> Published {
        let mut published = Published::default();
        for (role, member) in targets {
            let Some(health) = self.health.get(&(*role, member.address)) else {
                continue;
            };
            if !health.is_healthy() {
                continue;
            }
            let address = health.public_address().unwrap_or(member.address);
            match role {
                // Proxies sharing a node's address (a host port and two pod addresses, say) are
                // published once.
                Role::Proxy if published.proxies.iter().any(|p| p.address == address) => {}
                Role::Proxy => published.proxies.push(LiveProxy {
                    address,
                    locality: self.locality(member),
                    load: health.load(),
                }),
                Role::Nameserver => published.nameservers.push(member.address),
            }
        }
        published
    }

    /// One probe of the member at `address`, within the timeout.
    async fn probe(&self, role: Role, address: IpAddr) -> Probe {
        if role == Role::Nameserver && address == self.own_address {
            return Probe::Passed {
                load: 0.0,
                public_address: None,
            };
        }
        let started = Instant::now();
        let http = tokio::time::timeout(self.thresholds.timeout, self.probe_admin(role, address));
        let dht = async {
            match &self.dht {
                None => true,
                Some(check) => tokio::time::timeout(
                    self.thresholds.timeout,
                    check.dht.ping(SocketAddr::new(address, check.port)),
                )
                .await
                .unwrap_or(false),
            }
        };
        let (http, dht_alive) = tokio::join!(http, dht);
        self.metrics
            .probe_seconds
            .observe(started.elapsed().as_secs_f64());
        match http {
            Err(_) => Probe::Failed("timeout"),
            Ok(Probe::Passed { .. }) if !dht_alive => Probe::Failed("dht_silent"),
            Ok(probe) => probe,
        }
    }

    async fn probe_admin(&self, role: Role, address: IpAddr) -> Probe {
        let path = match role {
            Role::Proxy => "/healthz",
            Role::Nameserver => "/livez",
        };
        let uri = format!("http://{}{path}", SocketAddr::new(address, self.admin_port));
        let Ok(uri) = uri.parse::<http::Uri>() else {
            return Probe::Failed("bad_address");
        };
        let response = match self.http.get(uri).await {
            Ok(response) => response,
            Err(error) if is_refused(&error) => return Probe::Refused,
            Err(_) => return Probe::Failed("unreachable"),
        };
        let status = response.status();
        let body = match http_body_util::Limited::new(response.into_body(), MAX_HEALTH_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => return Probe::Failed("unreadable"),
        };
        match role {
            Role::Nameserver if status.is_success() => Probe::Passed {
                load: 0.0,
                public_address: None,
            },
            Role::Nameserver => Probe::Failed("unhealthy"),
            Role::Proxy => match serde_json::from_slice::<Health>(&body) {
                Ok(health) if status.is_success() && health.healthy => Probe::Passed {
                    load: health.load,
                    public_address: health.public_address.filter(|public| {
                        self.public_addresses && public.is_ipv4() == address.is_ipv4()
                    }),
                },
                Ok(_) => Probe::Failed("unhealthy"),
                Err(_) => Probe::Failed("not_a_proxy"),
            },
        }
    }
}

/// Holds an idle connection to a proxy's admin port and reports when it closes: a process
/// that dies, however abruptly, has its sockets closed by its kernel, so the DNS node learns
/// of it at once instead of at the next probe. The proxy's admin port also closes idle
/// connections now and then; that costs one extra probe.
async fn watch(admin: SocketAddr, closed: mpsc::Sender<IpAddr>, retry: Duration) {
    loop {
        let pause = match TcpStream::connect(admin).await {
            Ok(mut stream) => {
                let opened = Instant::now();
                let mut byte = [0u8; 1];
                if tokio::time::timeout(RENEW_WATCH, stream.read(&mut byte))
                    .await
                    .is_err()
                {
                    continue;
                }
                if closed.send(admin.ip()).await.is_err() {
                    return;
                }
                if opened.elapsed() < SHORT_WATCH {
                    retry
                } else {
                    REWATCH
                }
            }
            Err(_) => retry,
        };
        tokio::time::sleep(pause).await;
    }
}

/// Whether a probe failed because the address refused the connection.
fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cause = current.source();
    }
    false
}
