//! The DNS role: binds the DNS port (UDP, one socket per core with `SO_REUSEPORT`; and TCP),
//! waits for the first members list, checks every member once, and only then reads queries
//! (a receive loop on each UDP socket, and TCP) and becomes ready, while it keeps checking.
//!
//! Checking before answering means a DNS node never answers before it knows who is alive: it
//! neither names an unchecked proxy nor fails queries while its first checks run (they wait
//! in the sockets' queues; the first round takes at most the probe timeout). With no members
//! list at all it answers nothing, and logs so.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{NodeConfig, Topology};
use crate::dht::Dht;
use crate::dht::udp::UdpNetwork;
use crate::dns::answer::{Zone, ZoneError};
use crate::dns::handler::{DnsHandler, SharedPublished};
use crate::dns::members::MembersFeed;
use crate::dns::metrics::DnsMetrics;
use crate::dns::placement::ClientPlacement;
use crate::dns::probe::{DhtCheck, Prober, SharedMembers};
use crate::dns::{tcp, udp};

/// Receive buffer asked for each UDP socket.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Why the DNS role could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsRoleError {
    /// The zone or a name server is not a valid name.
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// A DNS socket could not be bound.
    #[error("cannot bind the DNS port {addr} ({protocol}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where the DNS role runs.
pub struct DnsPlacement {
    /// The Kubernetes node, which places unplaced clients (they get proxies near it).
    pub node_name: String,
    /// Address to serve DNS on.
    pub address: SocketAddr,
    /// This pod's address, under which it is listed among the name servers.
    pub pod_ip: IpAddr,
    /// Who may be published: the members file's or the EndpointSlices' list.
    pub members: MembersFeed,
}

/// The running DNS role.
pub struct DnsRole {
    ready: Arc<AtomicBool>,
    address: SocketAddr,
    members: SharedMembers,
    task: JoinHandle<()>,
}

impl DnsRole {
    /// Binds the DNS port and starts serving as the module says; `dht` (when the node plays
    /// that role) adds a DHT ping to every check.
    pub async fn start(
        config: &NodeConfig,
        topology: &Topology,
        placement: DnsPlacement,
        dht: Option<Arc<Dht<UdpNetwork>>>,
        metrics: DnsMetrics,
        shutdown: CancellationToken,
    ) -> Result<Self, DnsRoleError> {
        let home = topology
            .nodes
            .get(&placement.node_name)
            .cloned()
            .unwrap_or_default();
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_secs() as u32);
        let zone = Zone::new(&config.zone, &config.dns, home, serial)?;
        let published: SharedPublished = Arc::new(RwLock::new(Arc::default()));
        let mut prober = Prober::new(
            placement.members,
            topology.clone(),
            config.admin_port,
            config.health,
            dht.map(|dht| DhtCheck {
                dht,
                port: config.dht.port,
            }),
            placement.pod_ip,
            config.proxy.host_port.is_some(),
            published.clone(),
            metrics.clone(),
        );
        let members = prober.views();
        let level_names = config
            .locality
            .label_keys
            .iter()
            .map(|key| key.rsplit('/').next().unwrap_or(key).to_owned())
            .collect();
        let handler = Arc::new(DnsHandler::new(
            zone,
            ClientPlacement::new(&config.locality.client_networks),
            published,
            config.dns.response_rate,
            level_names,
            metrics.clone(),
        ));
        let requested = placement.address;
        let bind_error = |protocol| {
            move |source| DnsRoleError::Bind {
                addr: requested,
                protocol,
                source,
            }
        };
        let sockets = std::thread::available_parallelism().map_or(1, usize::from);
        // Port 0 picks a port once; the other sockets and TCP share it.
        let first = udp_socket(requested).map_err(bind_error("udp"))?;
        let address = first.local_addr().map_err(bind_error("udp"))?;
        let mut udp_sockets = vec![first];
        for _ in 1..sockets {
            udp_sockets.push(udp_socket(address).map_err(bind_error("udp"))?);
        }
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(bind_error("tcp"))?;
        let ready = Arc::new(AtomicBool::new(false));
        let serving = ready.clone();
        let tcp_limits = config.dns.tcp;
        let zone_name = config.zone.clone();
        let task = tokio::spawn(async move {
            if !prober.first_members(&shutdown).await {
                if !shutdown.is_cancelled() {
                    tracing::error!("the members source stopped before giving a list; not serving");
                }
                return;
            }
            prober.round().await;
            tracing::info!(%address, zone = zone_name, udp_sockets = sockets, "DNS serving");
            let mut tasks: Vec<JoinHandle<()>> = udp_sockets
                .into_iter()
                .map(|socket| tokio::spawn(udp::serve(socket, handler.clone(), shutdown.clone())))
                .collect();
            tasks.push(tokio::spawn(tcp::serve(
                listener,
                handler,
                tcp_limits,
                metrics,
                shutdown.clone(),
            )));
            serving.store(true, Ordering::Relaxed);
            prober.run(shutdown).await;
            for task in tasks {
                let _ = task.await;
            }
        });
        Ok(Self {
            ready,
            address,
            members,
            task,
        })
    }

    /// The members and their health, for the admin port.
    pub fn members(&self) -> SharedMembers {
        self.members.clone()
    }

    /// Where the role serves (UDP and TCP).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Set once the role reads queries (after its first round of checks).
    pub fn readiness(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Waits for the transports and the checks, which stop with the shutdown token.
    pub async fn stop(self) {
        let _ = self.task.await;
    }
}

/// A UDP socket on `address` that shares the port with the role's other sockets, so the
/// kernel spreads queries over one receive loop per core.
fn udp_socket(address: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    // Room for bursts while the loop answers the previous batch (the kernel caps it at
    // net.core.rmem_max).
    socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}
