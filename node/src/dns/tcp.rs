//! DNS over TCP with limits: at most `maxConnections` open, and `maxConnectionsPerClient` from
//! one client network (more are closed on arrival), each closed after `idleTimeout` without a
//! query. hickory-server's own TCP listener has an
//! idle timeout but no connection limit, so the framing (RFC 1035 4.2.2: a two-byte length,
//! then the message) is done here and each query goes through [`exchange`] like UDP's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::exchange::exchange;
use super::handler::DnsHandler;
use super::metrics::DnsMetrics;
use super::placement::client_network;
use crate::config::DnsTcpLimits;

/// Accepts connections on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<DnsHandler>,
    limits: DnsTcpLimits,
    metrics: DnsMetrics,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let clients = Arc::new(OpenPerClient::default());
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                coral_status_http::pause_after_accept_error(&err, &shutdown).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.tcp_refused.inc();
            drop(stream);
            continue;
        };
        let Some(client_slot) = clients.acquire(peer, limits.max_connections_per_client) else {
            metrics.tcp_refused.inc();
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = connection(stream, peer, &handler, limits.idle_timeout) => {}
            }
            drop((slot, client_slot));
        });
    }
}

/// Connections open per client network.
#[derive(Default)]
struct OpenPerClient {
    open: Mutex<HashMap<IpNet, u32>>,
}

impl OpenPerClient {
    /// A slot for one more connection from `peer`'s network, unless it has `limit` open.
    fn acquire(self: &Arc<Self>, peer: SocketAddr, limit: u32) -> Option<ClientSlot> {
        let network = client_network(peer.ip(), u8::MAX);
        let mut open = self.open.lock().expect("per-client lock");
        let count = open.entry(network).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            clients: self.clone(),
            network,
        })
    }
}

/// One open connection of a client network; freed when dropped.
struct ClientSlot {
    clients: Arc<OpenPerClient>,
    network: IpNet,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().expect("per-client lock");
        if let Some(count) = open.get_mut(&self.network) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.network);
            }
        }
    }
}

/// Answers the queries of one connection, in order, until it closes, errs or idles.
async fn connection(mut stream: TcpStream, peer: SocketAddr, handler: &DnsHandler, idle: Duration) {
    let _ = stream.set_nodelay(true);
    loop {
        let Ok(Ok(length)) = tokio::time::timeout(idle, stream.read_u16()).await else {
            return;
        };
        let mut message = vec![0u8; usize::from(length)];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut message)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(responses) = exchange(handler, message, peer, Protocol::Tcp).await else {
            return;
        };
        for response in responses {
            let Ok(length) = u16::try_from(response.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(response.len() + 2);
            framed.extend_from_slice(&length.to_be_bytes());
            framed.extend_from_slice(&response);
            // A client that does not read its answers loses its connection like an idle one.
            if !matches!(
                tokio::time::timeout(idle, stream.write_all(&framed)).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_network_gets_at_most_its_share_and_slots_come_back() {
        let clients = Arc::new(OpenPerClient::default());
        let peer = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 40000);
        let first = clients.acquire(peer("198.51.100.7"), 2).unwrap();
        let _second = clients.acquire(peer("198.51.100.200"), 2).unwrap();
        assert!(
            clients.acquire(peer("198.51.100.9"), 2).is_none(),
            "the same /24"
        );
        assert!(clients.acquire(peer("203.0.113.1"), 2).is_some());
        drop(first);
        assert!(clients.acquire(peer("198.51.100.9"), 2).is_some());
    }
}
