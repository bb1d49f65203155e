//! DNS over TCP with limits: at most `maxConnections` open, and `maxConnectionsPerClient` from
//! one client network (more are closed on arrival), each closed after `idleTimeout` without a
//! query. hickory-server's own TCP listener has an
//! idle timeout but no connection limit, so the framing (RFC 1035 4.2.2: a two-byte length,
//! then the message) is done here and each query goes through [`exchange`] like UDP's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::exchange::exchange;
use super::handler::DnsHandler;
use super::metrics::DnsMetrics;
use super::placement::client_network;
use crate::client_slots::ClientSlots;
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
    let clients = ClientSlots::new(limits.max_connections_per_client);
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
        let Some(client_slot) = clients.enter(client_network(peer.ip(), u8::MAX)) else {
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
    fn a_client_network_is_one_client() {
        let clients = ClientSlots::new(2);
        let network = |ip: &str| client_network(ip.parse().unwrap(), u8::MAX);
        let _first = clients.enter(network("198.51.100.7")).unwrap();
        let _second = clients.enter(network("198.51.100.200")).unwrap();
        assert!(
            clients.enter(network("198.51.100.9")).is_none(),
            "the same /24"
        );
        assert!(clients.enter(network("203.0.113.1")).is_some());
    }
}
