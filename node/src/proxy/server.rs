//! The proxy's HTTP server: accepts client connections within the limits and hands each to a
//! [`ClientConnections`].
//!
//! Clients speak HTTP/1.1 (or 1.0), or HTTP/2 with prior knowledge (h2c: the connection opens
//! with HTTP/2's preface, as `curl --http2-prior-knowledge` does); `*.nyud.net` is plain HTTP,
//! so there is no TLS to negotiate HTTP/2 in.
//!
//! hyper enforces the head limits: an HTTP/1 head over `maxHeaderBytes` or with more than
//! `maxHeaders` fields gets 431, one not sent within `headerTimeout` (slowloris) has its
//! connection closed, and so has a keep-alive connection idle for as long. An HTTP/2 header
//! block over `maxHeaderBytes` is refused (and one with more than `maxHeaders` fields gets 431
//! from the proxy's service), a client has at most 100 requests under way per
//! connection, one that stops answering pings (sent every `headerTimeout`) is disconnected, and
//! one with no request under way that starts none for `headerTimeout` is closed. At most
//! `maxConnections` connections are served at once; further ones wait in the listen backlog
//! rather than being accepted and starved. At most `maxConnectionsPerClient` of them come from
//! one address: further ones from it are answered with a 429 page (in HTTP/1, whatever the
//! client speaks) and closed, or, beyond 64 such refusals under way, closed at once.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::connection::ClientConnections;
use super::linger::{Lingering, MAX_LINGERING};
use super::service::Proxy;
use crate::client_slots::ClientSlots;
use crate::config::ClientLimits;

/// The fields hyper allows an HTTP/1 head by default. It parses up to that many into room on
/// the stack; told any number, even this one, it fills a vector of that size for every head.
const HYPER_MAX_HEADERS: u32 = 100;

/// Requests one HTTP/2 client may have under way at once.
const HTTP2_STREAMS: u32 = 100;

/// What an HTTP/2 client may send before the proxy reads it, per request and per connection:
/// requests the proxy serves have no body to speak of.
const HTTP2_WINDOW: u32 = 256 * 1024;
/// Shortest wait for a ping's answer, which may queue behind megabytes of answers.
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(30);

/// What a connection beyond its address's share is told before it is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: text/plain; charset=utf-8\r\n\
cache-control: no-store\r\n\
connection: close\r\n\
content-length: 96\r\n\
\r\n\
429 Too Many Requests\n\nthis address has as many connections open as this node serves one client\n";

/// How long a refused client may take to read the refusal before its socket is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Refused connections told why at once; more are closed at once.
const REFUSALS_AT_ONCE: usize = 64;

/// Serves clients until `shutdown` is cancelled; connections in progress finish their
/// current request.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: ClientLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let per_client = ClientSlots::new(limits.max_connections_per_client);
    let refusing = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes as usize)
        .max_header_size(limits.max_header_bytes as usize);
    if limits.max_headers != HYPER_MAX_HEADERS {
        http1.max_headers(limits.max_headers as usize);
    }
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes)
        .max_concurrent_streams(HTTP2_STREAMS)
        .initial_stream_window_size(HTTP2_WINDOW)
        .initial_connection_window_size(HTTP2_WINDOW)
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout.max(HTTP2_PING_TIMEOUT));
    let (http1, http2) = (Arc::new(http1), Arc::new(http2));
    let lingering = Arc::new(Lingering::new(MAX_LINGERING));
    loop {
        let slot = tokio::select! {
            () = shutdown.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot.expect("the slot semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    coral_status_http::pause_after_accept_error(&err, &shutdown).await;
                    continue;
                }
            },
        };
        let Some(client_slot) = per_client.enter(peer.ip()) else {
            proxy.refused_connection(peer);
            // Beyond the refusals under way, a refused connection is closed without its page,
            // so that a flood of them cannot take the node's descriptors.
            if let Ok(refusing) = refusing.clone().try_acquire_owned() {
                let shutdown = shutdown.child_token();
                tokio::spawn(async move {
                    tokio::select! {
                        () = refuse(stream) => {}
                        () = shutdown.cancelled() => {}
                    }
                    drop(refusing);
                });
            }
            continue;
        };
        let open = proxy.open_connection();
        let _ = stream.set_nodelay(true);
        let clients = ClientConnections {
            proxy: proxy.clone(),
            http1: http1.clone(),
            http2: http2.clone(),
            lingering: lingering.clone(),
            header_timeout: limits.header_timeout,
            send_timeout: limits.send_timeout,
            // A connection polls its token whenever it wakes; polling the server's own token
            // would take a lock that every connection shares.
            shutdown: shutdown.child_token(),
        };
        tokio::spawn(async move {
            clients.serve(stream, peer).await;
            drop((open, client_slot, slot));
        });
    }
}

/// Tells a connection beyond its address's share why, then closes it: once the client has
/// closed, or after [`REFUSAL_LINGER`]. What the client sent is read and dropped meanwhile, so
/// that closing does not reset the connection before the client reads the refusal.
async fn refuse(mut stream: TcpStream) {
    let told = async {
        stream.write_all(TOO_MANY_CONNECTIONS).await?;
        stream.shutdown().await?;
        let mut sink = [0; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, told).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_of_too_many_connections_is_429_with_its_true_length() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(head.ends_with(&format!("\r\ncontent-length: {}", body.len())));
    }
}
