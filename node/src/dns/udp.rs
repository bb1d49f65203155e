//! DNS over UDP: one receive loop per socket, answering in the loop (no task per query, no
//! channel to a sender task), and reading datagrams in batches with `recvmmsg` the way NSD
//! does: under load one system call brings up to [`BATCH`] queries. The
//! role binds one socket per core with `SO_REUSEPORT`, so the kernel spreads queries over the
//! loops.

use std::io::IoSliceMut;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use hickory_server::net::xfer::Protocol;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::exchange::exchange;
use super::handler::DnsHandler;

/// Largest query read (EDNS lets a client send more, but a query is small).
const MAX_QUERY: usize = 4096;
/// Datagrams read by one system call.
pub const BATCH: usize = 32;

/// Answers the queries arriving on `socket` until `shutdown`.
pub async fn serve(socket: UdpSocket, handler: Arc<DnsHandler>, shutdown: CancellationToken) {
    let mut buffers = vec![[0u8; MAX_QUERY]; BATCH];
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            ready = socket.readable() => if let Err(error) = ready {
                tracing::error!(%error, "DNS socket failed; this receive loop stops");
                return;
            },
        }
        let received = match socket.try_io(Interest::READABLE, || receive(&socket, &mut buffers)) {
            Ok(received) => received,
            // Spurious readiness, or ICMP errors from earlier sends: keep serving.
            Err(_) => continue,
        };
        let mut answers = Vec::with_capacity(received.len());
        for (index, length, peer) in received {
            let message = buffers[index][..length].to_vec();
            if let Some(responses) = exchange(&handler, message, peer, Protocol::Udp).await {
                answers.extend(responses.into_iter().map(|response| (response, peer)));
            }
        }
        send(&socket, &answers).await;
    }
}

/// Reads up to [`BATCH`] waiting datagrams into `buffers`: (buffer index, length, sender).
fn receive(
    socket: &UdpSocket,
    buffers: &mut [[u8; MAX_QUERY]],
) -> std::io::Result<Vec<(usize, usize, SocketAddr)>> {
    let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
        .iter_mut()
        .map(|buffer| [IoSliceMut::new(buffer)])
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    let results = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    Ok(results
        .enumerate()
        .filter_map(|(index, message)| {
            // A source port of 0 cannot be answered (and is a sign of forgery).
            let peer = socket_addr(&message.address?).filter(|peer| peer.port() != 0)?;
            Some((index, message.bytes, peer))
        })
        .collect())
}

/// Sends `answers`, waiting only when the socket's buffer is full. (Sending is not batched:
/// `nix`'s `sendmmsg` results cannot be counted without reading memory it never set.)
async fn send(socket: &UdpSocket, answers: &[(Vec<u8>, SocketAddr)]) {
    for (response, peer) in answers {
        let sent = match socket.try_send_to(response, *peer) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                socket.send_to(response, peer).await
            }
            sent => sent,
        };
        if let Err(error) = sent {
            tracing::debug!(%peer, %error, "cannot send a DNS response");
        }
    }
}

fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddrV4::from(*v4).into());
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddrV6::from(*v6).into())
}
