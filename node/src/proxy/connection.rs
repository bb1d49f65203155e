//! One client connection: hyper serves its HTTP/1 exchanges, and the connection is parked
//! between them.
//!
//! As long as hyper serves an HTTP/1 connection it holds an 8 KiB read buffer, an 8 KiB write
//! buffer and room for a request's future, whether a request is under way or not. A CDN holds
//! many keep-alive clients that are idle most of the time, so once an answer is flushed and
//! the client has sent nothing more, the connection is taken back from hyper: the socket tells
//! hyper the input ended, hyper finishes cleanly without closing it, and
//! [`http1::Connection::into_parts`] hands the socket back. Until the client speaks again the
//! task holds nothing but the socket and a timer; then a new hyper connection picks up where
//! the old one stopped, with any bytes the old one had read but not parsed. A new connection
//! starts parked: hyper is brought in when its first bytes arrive.
//!
//! A parked connection that stays silent for `headerTimeout` is closed, as hyper closes an
//! idle keep-alive connection whose next head does not arrive in time. An exchange whose
//! request has a body is never parked: hyper may still be reading that body.

use std::convert::Infallible;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::respond::ProxyBody;
use super::service::Proxy;

/// Nothing has been read since the last answer was flushed (or since the client connected):
/// hyper holds no partial request, so the connection may be parked.
const WAITING: u8 = 0;
/// A request is arriving or being answered.
const BUSY: u8 = 1;
/// The request has a body hyper may still be reading: not parked until the next request.
const BUSY_WITH_BODY: u8 = 2;
/// The answer's body has ended; once hyper flushes it the connection is waiting again.
const ANSWERED: u8 = 3;
/// The socket told hyper the input ended, to take the connection back.
const PARKED: u8 = 4;

/// Where the current exchange of a connection stands, shared by its socket, its service and
/// its answer's body.
#[derive(Debug)]
struct Exchange(AtomicU8);

impl Exchange {
    fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Release);
    }

    fn replace(&self, from: u8, to: u8) {
        let _ = self
            .0
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire);
    }

    /// hyper handed a request to the service.
    fn request(&self, request: &Request<Incoming>) {
        let has_body = !request.body().is_end_stream();
        self.set(if has_body { BUSY_WITH_BODY } else { BUSY });
    }
}

/// A client socket that can tell hyper the input ended when the connection is idle, and that
/// replays bytes an earlier hyper connection read but did not parse.
#[derive(Debug)]
struct ParkableStream {
    stream: TcpStream,
    unparsed: Bytes,
    exchange: Arc<Exchange>,
}

impl AsyncRead for ParkableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unparsed.is_empty() {
            let n = self.unparsed.len().min(buf.remaining());
            buf.put_slice(&self.unparsed[..n]);
            self.unparsed.advance(n);
            self.exchange.replace(WAITING, BUSY);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                // Bytes after an answer are the next request, even before the answer is flushed.
                self.exchange.replace(WAITING, BUSY);
                self.exchange.replace(ANSWERED, BUSY);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.exchange.get() == WAITING => {
                self.exchange.set(PARKED);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for ParkableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.exchange.replace(WAITING, ANSWERED);
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.exchange.replace(WAITING, ANSWERED);
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            // hyper flushes the socket only once its own buffer is empty.
            self.exchange.replace(ANSWERED, WAITING);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An answer's body that marks the exchange answered when it ends or hyper drops it.
struct ExchangeBody {
    body: ProxyBody,
    exchange: Arc<Exchange>,
}

impl Body for ExchangeBody {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ExchangeBody {
    fn drop(&mut self) {
        self.exchange.replace(BUSY, ANSWERED);
    }
}

/// What a client connection is served with.
#[derive(Clone)]
pub struct ClientService {
    /// The proxy answering requests.
    pub proxy: Arc<Proxy>,
    /// hyper's settings for HTTP/1 connections.
    pub http1: Arc<http1::Builder>,
    /// How long a parked connection may stay silent.
    pub idle_timeout: Duration,
    /// Cancelled when the server stops: the exchange in progress finishes, then the
    /// connection closes.
    pub shutdown: CancellationToken,
}

impl ClientService {
    /// Serves one client connection until the client leaves, breaks the protocol, stays
    /// silent for too long, or the server stops.
    pub async fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        let exchange = Arc::new(Exchange(AtomicU8::new(WAITING)));
        let mut stream = ParkableStream {
            stream,
            unparsed: Bytes::new(),
            exchange: exchange.clone(),
        };
        loop {
            if stream.unparsed.is_empty() && !self.client_speaks(&stream.stream).await {
                return;
            }
            // Boxed, so that a parked connection's task does not keep room for hyper's state.
            let served = Box::pin(self.serve_exchanges(stream, peer)).await;
            stream = served.stream;
            let parked = served.parked;
            let resumable = match served.outcome {
                Ok(()) => parked,
                // The input "ended" inside a pipelined request hyper had begun to read.
                Err(err) if parked && err.is_incomplete_message() => true,
                Err(err) => {
                    tracing::debug!(%peer, error = %err, "client connection ended");
                    false
                }
            };
            if !resumable || self.shutdown.is_cancelled() {
                let _ = stream.shutdown().await;
                return;
            }
            exchange.set(WAITING);
            // A copy: the bytes hyper left are a view of its whole read buffer.
            stream.unparsed = Bytes::copy_from_slice(&served.unparsed);
        }
    }

    /// Parks a connection until the client sends something (true) or stays silent for the
    /// idle timeout, or the server stops (false).
    async fn client_speaks(&self, stream: &TcpStream) -> bool {
        let _idle = self.proxy.idle_connection();
        tokio::select! {
            readable = tokio::time::timeout(self.idle_timeout, stream.readable()) => {
                matches!(readable, Ok(Ok(())))
            }
            () = self.shutdown.cancelled() => false,
        }
    }

    /// Lets hyper serve exchanges until the connection ends or is parked.
    async fn serve_exchanges(&self, stream: ParkableStream, peer: SocketAddr) -> Served {
        let exchange = stream.exchange.clone();
        let proxy = self.proxy.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            exchange.request(&request);
            let proxy = proxy.clone();
            let exchange = exchange.clone();
            Box::pin(async move {
                let response = proxy.handle(request, peer).await;
                Ok::<_, Infallible>(response.map(|body| ExchangeBody { body, exchange }))
            })
        });
        let mut connection = self.http1.serve_connection(TokioIo::new(stream), service);
        let outcome = tokio::select! {
            outcome = poll_fn(|cx| connection.poll_without_shutdown(cx)) => outcome,
            () = self.shutdown.cancelled() => {
                Pin::new(&mut connection).graceful_shutdown();
                poll_fn(|cx| connection.poll_without_shutdown(cx)).await
            }
        };
        let parts = connection.into_parts();
        let stream = parts.io.into_inner();
        Served {
            outcome,
            parked: stream.exchange.get() == PARKED,
            unparsed: parts.read_buf,
            stream,
        }
    }
}

/// How a hyper connection over a client socket ended.
struct Served {
    /// hyper's verdict.
    outcome: hyper::Result<()>,
    /// Whether the socket ended the input to park the connection.
    parked: bool,
    /// Bytes hyper read but did not parse.
    unparsed: Bytes,
    /// The socket, handed back.
    stream: ParkableStream,
}
