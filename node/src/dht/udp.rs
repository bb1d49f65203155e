//! The DHT over UDP: request ids, timeouts, bounded retransmission and per-peer RTT estimates.
//!
//! [`UdpNetwork`] implements [`Network`] on one socket. A request gets a fresh id and waits for
//! the answer with that id *from the address it was sent to*; without one it is sent again
//! after the retransmission timeout (RTO), doubling each time, at most `retries` times. The RTO
//! of a peer follows RFC 6298 (smoothed RTT plus four deviations), measured only on answers to
//! first transmissions (Karn's rule). [`serve`] is the receive loop: it authenticates every
//! datagram, drops those whose sender ID is not the hash of their source address, answers
//! requests through [`Dht::answer`], hands answers to the waiting request, and counts and drops
//! everything else, unanswered.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::DhtMetrics;
use super::routing::Contact;
use super::wire::{Codec, MAX_PACKET, Packet};
use super::{Dht, DhtParams, Id, Locality, Network, RpcError};

/// Timing of requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSettings {
    /// RTO towards a peer never measured.
    pub initial_rto: Duration,
    /// Smallest RTO.
    pub min_rto: Duration,
    /// Largest RTO, also the cap of the doubling.
    pub max_rto: Duration,
    /// Retransmissions after the first send.
    pub retries: u32,
    /// Most requests waiting for answers; further requests fail at once.
    pub max_pending: usize,
}

impl Default for UdpSettings {
    fn default() -> Self {
        Self {
            initial_rto: Duration::from_millis(500),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(2),
            retries: 2,
            max_pending: 4096,
        }
    }
}

/// Most peers whose RTT is remembered.
const MAX_RTT_ENTRIES: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct RttEstimate {
    smoothed: Duration,
    deviation: Duration,
}

/// The DHT transport on one UDP socket.
pub struct UdpNetwork {
    socket: Arc<UdpSocket>,
    codec: Codec,
    settings: UdpSettings,
    pending: Mutex<HashMap<u64, (SocketAddr, oneshot::Sender<Packet>)>>,
    rtts: Mutex<HashMap<SocketAddr, RttEstimate>>,
    next_id: AtomicU64,
    metrics: DhtMetrics,
}

/// Removes a request's pending entry however the request ends (answer, timeout, cancel).
struct PendingGuard<'a> {
    pending: &'a Mutex<HashMap<u64, (SocketAddr, oneshot::Sender<Packet>)>>,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pending lock").remove(&self.id);
    }
}

impl UdpNetwork {
    /// Binds the socket.
    pub async fn bind(
        addr: SocketAddr,
        codec: Codec,
        settings: UdpSettings,
        metrics: DhtMetrics,
    ) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        Ok(Self {
            socket: Arc::new(socket),
            codec,
            settings,
            pending: Mutex::new(HashMap::new()),
            rtts: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(rand::random()),
            metrics,
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn rto(&self, to: SocketAddr) -> Duration {
        let rtts = self.rtts.lock().expect("rtt lock");
        rtts.get(&to)
            .map_or(self.settings.initial_rto, |rtt| {
                rtt.smoothed + 4 * rtt.deviation
            })
            .clamp(self.settings.min_rto, self.settings.max_rto)
    }

    fn sample_rtt(&self, to: SocketAddr, sample: Duration) {
        let mut rtts = self.rtts.lock().expect("rtt lock");
        if rtts.len() >= MAX_RTT_ENTRIES && !rtts.contains_key(&to) {
            let evicted = *rtts.keys().next().expect("not empty");
            rtts.remove(&evicted);
        }
        rtts.entry(to)
            .and_modify(|rtt| {
                let error = rtt.smoothed.abs_diff(sample);
                rtt.deviation = (rtt.deviation * 3 + error) / 4;
                rtt.smoothed = (rtt.smoothed * 7 + sample) / 8;
            })
            .or_insert(RttEstimate {
                smoothed: sample,
                deviation: sample / 2,
            });
    }

    /// Hands an answer to the request waiting for it; false when none is (late or forged).
    fn deliver(&self, from: SocketAddr, reply: Packet) -> bool {
        let mut pending = self.pending.lock().expect("pending lock");
        match pending.get(&reply.request_id) {
            Some((to, _)) if *to == from => {
                let (_, waiter) = pending.remove(&reply.request_id).expect("present");
                waiter.send(reply).is_ok()
            }
            _ => false,
        }
    }
}

impl Network for UdpNetwork {
    async fn call(&self, to: SocketAddr, mut request: Packet) -> Result<Packet, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.request_id = id;
        let bytes = self.codec.encode(&request);
        let (sender, mut answer) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("pending lock");
            if pending.len() >= self.settings.max_pending {
                return Err(RpcError::Send {
                    addr: to,
                    reason: "too many requests in flight".to_owned(),
                });
            }
            pending.insert(id, (to, sender));
        }
        let _guard = PendingGuard {
            pending: &self.pending,
            id,
        };
        let mut rto = self.rto(to);
        for attempt in 0..=self.settings.retries {
            if attempt > 0 {
                self.metrics.retransmissions.inc();
            }
            let sent_at = Instant::now();
            self.socket
                .send_to(&bytes, to)
                .await
                .map_err(|err| RpcError::Send {
                    addr: to,
                    reason: err.to_string(),
                })?;
            match tokio::time::timeout(rto, &mut answer).await {
                Ok(Ok(reply)) => {
                    if attempt == 0 {
                        self.sample_rtt(to, sent_at.elapsed());
                    }
                    return Ok(reply);
                }
                Ok(Err(_)) => break,
                Err(_) => rto = (rto * 2).min(self.settings.max_rto),
            }
        }
        Err(RpcError::Timeout(to))
    }

    fn rtt(&self, to: SocketAddr) -> Option<Duration> {
        self.rtts
            .lock()
            .expect("rtt lock")
            .get(&to)
            .map(|rtt| rtt.smoothed)
    }
}

/// A DHT node serving on UDP, with the task that receives its datagrams.
pub struct UdpDht {
    /// The node.
    pub dht: Arc<Dht<UdpNetwork>>,
    shutdown: CancellationToken,
    receiver: JoinHandle<()>,
}

/// Everything needed to start a UDP DHT node.
#[derive(Clone, Debug)]
pub struct UdpNodeConfig {
    /// Address to bind (`0.0.0.0:port` in a pod).
    pub bind: SocketAddr,
    /// Address peers reach this node at (the pod IP); defaults to the bound address. The
    /// node's ID is the hash of this address.
    pub advertise: Option<SocketAddr>,
    /// Where the node sits.
    pub locality: Locality,
    /// DHT tunables.
    pub params: DhtParams,
    /// Packet key and protocol version.
    pub codec: Codec,
    /// Request timing.
    pub settings: UdpSettings,
}

impl UdpDht {
    /// Binds the socket and starts receiving.
    pub async fn start(config: UdpNodeConfig, metrics: DhtMetrics) -> io::Result<Self> {
        let net =
            UdpNetwork::bind(config.bind, config.codec, config.settings, metrics.clone()).await?;
        let addr = match config.advertise {
            Some(addr) => addr,
            None => net.local_addr()?,
        };
        let me = Contact {
            id: Id::of(addr.to_string().as_bytes()),
            addr,
        };
        let dht = Arc::new(Dht::new(me, config.locality, config.params, net, metrics));
        let shutdown = CancellationToken::new();
        let receiver = tokio::spawn(serve(dht.clone(), shutdown.clone()));
        Ok(Self {
            dht,
            shutdown,
            receiver,
        })
    }

    /// Stops receiving; the socket closes when the last reference to the node goes.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.receiver.await;
    }
}

/// Receives datagrams until `shutdown`: answers authenticated requests, delivers answers, and
/// counts everything dropped.
pub async fn serve(dht: Arc<Dht<UdpNetwork>>, shutdown: CancellationToken) {
    let net = dht.network();
    let mut buffer = vec![0u8; MAX_PACKET + 1];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = net.socket.recv_from(&mut buffer) => received,
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(err) => {
                // ICMP errors from earlier sends surface here on some systems; keep serving.
                tracing::debug!(error = %err, "DHT receive error");
                continue;
            }
        };
        let packet = match net.codec.decode(&buffer[..len]) {
            Ok(packet) => packet,
            Err(err) => {
                dht.metrics()
                    .packets_dropped
                    .with_label_values(&[err.reason()])
                    .inc();
                tracing::debug!(%from, error = %err, "dropped DHT datagram");
                continue;
            }
        };
        // A node's ID is the hash of its address: a packet whose sender ID does not match its
        // source is a replay from elsewhere, which must neither be answered (reflection) nor
        // move the sender's routing entry to the source (poisoning).
        if packet.sender != Id::of(from.to_string().as_bytes()) {
            dht.metrics()
                .packets_dropped
                .with_label_values(&["sender_mismatch"])
                .inc();
            continue;
        }
        if packet.body.is_request() {
            let reply = net.codec.encode(&dht.answer(from, &packet));
            if let Err(err) = net.socket.send_to(&reply, from).await {
                tracing::debug!(%from, error = %err, "cannot answer DHT request");
            }
        } else if !net.deliver(from, packet) {
            dht.metrics()
                .packets_dropped
                .with_label_values(&["unexpected_answer"])
                .inc();
        }
    }
}
