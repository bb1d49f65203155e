//! One client connection: hyper serves its HTTP/1 exchanges, and the connection is parked
//! between them; or, when the client opens with HTTP/2's preface, hyper serves HTTP/2.
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
//! A client has `headerTimeout` from the moment its connection starts waiting (accepted, or
//! its last answer sent) to send a whole head, parked or not, as with hyper alone. An exchange
//! whose request has a body is never parked: hyper may still be reading that body. Parking
//! costs a new hyper connection when the client speaks again, so a connection waiting for its
//! next request first lingers with hyper for a moment ([`super::linger`]).
//!
//! This leans on how hyper 1.12 orders its work (checked against its source): it drops an
//! answer's body only once the end of the message is queued, flushes the socket only once its
//! own buffer is empty, treats end of input between messages as a clean close, and keeps a
//! partial head in the buffer `into_parts` returns.

use std::convert::Infallible;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::socket::{MsgFlags, recv};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::linger::{Linger, Lingering};
use super::respond::ProxyBody;
use super::sealed;
use super::send_deadline::SendDeadline;
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
/// The client speaks HTTP/2: the connection is never parked.
const HTTP2: u8 = 5;

/// Where the current exchange of a connection stands, shared by its socket, its service and
/// its answer's body; and whether a request has begun since the connection was last resumed.
#[derive(Debug)]
struct Exchange {
    state: AtomicU8,
    request_begun: AtomicBool,
}

impl Exchange {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(WAITING),
            request_begun: AtomicBool::new(false),
        }
    }

    fn get(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }

    /// Moves from `from` to `to`; any other state stays.
    fn advance(&self, from: u8, to: u8) {
        let _ = self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire);
    }

    /// hyper handed a request to the service.
    fn request(&self, request: &Request<Incoming>) {
        let has_body = !request.body().is_end_stream();
        self.set(if has_body { BUSY_WITH_BODY } else { BUSY });
        self.request_begun.store(true, Ordering::Release);
    }

    /// A new hyper connection takes over: nothing is under way.
    fn resume(&self) {
        self.set(WAITING);
        self.request_begun.store(false, Ordering::Release);
    }

    fn request_begun(&self) -> bool {
        self.request_begun.load(Ordering::Acquire)
    }
}

/// A client socket that can tell hyper the input ended when the connection is idle, that
/// replays bytes read before hyper saw them (what an earlier hyper connection read but did
/// not parse, or the start of HTTP/2's preface), and that sends sealed bodies with `sendfile`
/// ([`sealed`]).
#[derive(Debug)]
struct ParkableStream {
    stream: TcpStream,
    unparsed: Bytes,
    exchange: Arc<Exchange>,
    linger: Linger,
    send_deadline: SendDeadline,
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
            self.exchange.advance(WAITING, BUSY);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.linger.spoke();
                // Bytes after an answer are the next request, even before the answer is flushed.
                self.exchange.advance(WAITING, BUSY);
                self.exchange.advance(ANSWERED, BUSY);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.exchange.get() == WAITING => {
                if self.linger.stays(cx) {
                    return Poll::Pending;
                }
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
        self.exchange.advance(WAITING, ANSWERED);
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.send_deadline.check(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.exchange.advance(WAITING, ANSWERED);
        let written = sealed::poll_write_vectored(&self.stream, cx, bufs);
        self.send_deadline.check(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        let flushed = self.send_deadline.check(cx, flushed);
        if let Poll::Ready(Ok(())) = flushed {
            // hyper flushes the socket only once its own buffer is empty.
            self.exchange.advance(ANSWERED, WAITING);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What an HTTP/2 client sends first (RFC 9113 section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How far a connection's first bytes have come.
enum FirstBytes {
    /// None yet: the socket's readiness was spurious, and the connection waits again.
    NotYet,
    /// Here, and not a part of HTTP/2's preface that hyper would take for bad HTTP/1.
    Arrived,
    /// The client closed, or the head deadline passed in the middle of the preface.
    Gone,
}

/// When a connection's first bytes are only the start of HTTP/2's preface, reads on until
/// they are the whole preface or something else, and keeps what it read for hyper, which
/// tells the preface from HTTP/1 only when it has all of it.
async fn whole_preface_if_begun(stream: &mut ParkableStream, head_deadline: Instant) -> FirstBytes {
    let mut first = [0; HTTP2_PREFACE.len()];
    // One non-blocking peek: a spurious readiness finds nothing, and clears the readiness.
    let peeked = stream.stream.try_io(Interest::READABLE, || {
        Ok(recv(
            stream.stream.as_raw_fd(),
            &mut first,
            MsgFlags::MSG_PEEK,
        )?)
    });
    let peeked = match peeked {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => return FirstBytes::NotYet,
        Ok(0) | Err(_) => return FirstBytes::Gone,
        Ok(n) => &first[..n],
    };
    let partial =
        |bytes: &[u8]| bytes.len() < HTTP2_PREFACE.len() && HTTP2_PREFACE.starts_with(bytes);
    if !partial(peeked) {
        return FirstBytes::Arrived;
    }
    let mut read = BytesMut::with_capacity(HTTP2_PREFACE.len());
    while read.is_empty() || partial(&read) {
        let more = tokio::time::timeout_at(head_deadline, stream.stream.read_buf(&mut read)).await;
        if !matches!(more, Ok(Ok(1..))) {
            return FirstBytes::Gone;
        }
    }
    stream.unparsed = read.freeze();
    FirstBytes::Arrived
}

/// An answer's body that holds a guard until hyper has sent it (or given up on it).
struct GuardedBody<G> {
    body: ProxyBody,
    _guard: G,
}

impl<G: Unpin> Body for GuardedBody<G> {
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

/// Marks an HTTP/1 exchange answered when dropped with its answer's body.
struct Answered(Arc<Exchange>);

impl Drop for Answered {
    fn drop(&mut self) {
        self.0.advance(BUSY, ANSWERED);
    }
}

/// The requests of an HTTP/2 connection: how many have begun, and how many are under way.
#[derive(Default)]
struct Streams {
    begun: AtomicU64,
    open: AtomicUsize,
}

/// Counts an HTTP/2 request under way until dropped with its answer's body.
struct OpenStream(Arc<Streams>);

impl OpenStream {
    fn new(streams: &Arc<Streams>) -> Self {
        streams.begun.fetch_add(1, Ordering::Relaxed);
        streams.open.fetch_add(1, Ordering::Relaxed);
        Self(streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves client connections: what each is answered with and within which limits.
pub struct ClientConnections {
    /// The proxy answering requests.
    pub proxy: Arc<Proxy>,
    /// hyper's settings for HTTP/1 connections.
    pub http1: Arc<http1::Builder>,
    /// hyper's settings for HTTP/2 connections (prior knowledge, in cleartext).
    pub http2: Arc<http2::Builder<TokioExecutor>>,
    /// The server's connections lingering with hyper before they are parked.
    pub lingering: Arc<Lingering>,
    /// How long a client may take, from the moment its connection starts waiting (accepted,
    /// or its last answer sent), to send a whole request head.
    pub header_timeout: Duration,
    /// How long a client may take no answer bytes while some wait to be sent.
    pub send_timeout: Duration,
    /// Cancelled when the server stops: the exchange in progress finishes, then the
    /// connection closes.
    pub shutdown: CancellationToken,
}

impl ClientConnections {
    /// Serves one client connection until the client leaves, breaks the protocol, is too
    /// slow to send a head, or the server stops.
    pub async fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        let mut stream = ParkableStream {
            stream,
            unparsed: Bytes::new(),
            exchange: Arc::new(Exchange::new()),
            linger: Linger::new(self.lingering.clone()),
            send_deadline: SendDeadline::new(self.send_timeout),
        };
        let mut first_bytes_arrived = false;
        let mut head_deadline = Instant::now() + self.header_timeout;
        loop {
            if stream.unparsed.is_empty()
                && !self.client_speaks(&stream.stream, head_deadline).await
            {
                return;
            }
            if !first_bytes_arrived {
                match whole_preface_if_begun(&mut stream, head_deadline).await {
                    FirstBytes::NotYet => continue,
                    FirstBytes::Gone => return,
                    FirstBytes::Arrived => first_bytes_arrived = true,
                }
            }
            // Boxed, so that a parked connection's task does not keep room for hyper's state.
            match Box::pin(self.serve_exchanges(stream, peer, head_deadline)).await {
                Some((parked, unparsed)) => {
                    stream = parked;
                    stream.exchange.resume();
                    // A copy: the bytes hyper left are a view of its whole read buffer.
                    stream.unparsed = Bytes::copy_from_slice(&unparsed);
                    head_deadline = stream.linger.parked() + self.header_timeout;
                }
                None => return,
            }
        }
    }

    /// Parks a connection until the client sends something (true), or the head deadline
    /// passes or the server stops (false).
    async fn client_speaks(&self, stream: &TcpStream, head_deadline: Instant) -> bool {
        let _idle = self.proxy.idle_connection();
        tokio::select! {
            readable = tokio::time::timeout_at(head_deadline, stream.readable()) => {
                matches!(readable, Ok(Ok(())))
            }
            () = self.shutdown.cancelled() => false,
        }
    }

    /// Lets hyper serve exchanges until the connection is parked (the socket and the bytes
    /// hyper read but did not parse come back) or ends (`None`, once hyper has sent
    /// everything it queued and closed the connection).
    async fn serve_exchanges(
        &self,
        stream: ParkableStream,
        peer: SocketAddr,
        head_deadline: Instant,
    ) -> Option<(ParkableStream, Bytes)> {
        let exchange = stream.exchange.clone();
        let on_request = exchange.clone();
        let proxy = self.proxy.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            on_request.request(&request);
            let proxy = proxy.clone();
            let exchange = on_request.clone();
            Box::pin(async move {
                let response = proxy.handle(request, peer).await;
                Ok::<_, Infallible>(response.map(|body| GuardedBody {
                    body,
                    _guard: Answered(exchange),
                }))
            })
        });
        let mut connection = self.http1.serve_connection(TokioIo::new(stream), service);
        let head_deadline = sleep_until(head_deadline);
        tokio::pin!(head_deadline);
        let mut head_pending = true;
        let outcome = loop {
            tokio::select! {
                outcome = poll_fn(|cx| connection.poll_without_shutdown(cx)) => break outcome,
                () = self.shutdown.cancelled() => {
                    Pin::new(&mut connection).graceful_shutdown();
                    let _ = connection.await;
                    return None;
                }
                () = &mut head_deadline, if head_pending => {
                    if !exchange.request_begun() {
                        // Its first bytes came just before the deadline: hyper's own timer
                        // would give the rest of the head a whole headerTimeout more.
                        return None;
                    }
                    head_pending = false;
                }
            }
        };
        let parked = exchange.get() == PARKED;
        let resumable = match &outcome {
            Ok(()) => parked,
            // The input "ended" inside a pipelined request hyper had begun to read.
            Err(err) => parked && err.is_incomplete_message(),
        };
        if resumable {
            let parts = connection.into_parts();
            return Some((parts.io.into_inner(), parts.read_buf));
        }
        match outcome {
            // The client opened with HTTP/2's preface, which hyper's HTTP/1 side kept.
            Err(err) if err.is_parse_version_h2() => {
                let parts = connection.into_parts();
                let mut stream = parts.io.into_inner();
                stream.exchange.set(HTTP2);
                stream.unparsed = parts.read_buf;
                self.serve_http2(stream, peer).await;
            }
            // Anything else but a head hyper answered itself (400, 414, 431), such as an
            // answer's body that broke off: closed as it stands, so that the client sees the
            // answer cut rather than ended.
            Err(err) if !err.is_parse() => {
                tracing::debug!(%peer, error = %err, "client connection ended");
            }
            // The client closed, asked to close, or was answered by hyper: polled as a whole,
            // hyper sends what it still holds, then closes.
            _ => {
                if let Err(err) = &outcome {
                    self.proxy.refused_head(peer, err);
                }
                let _ = connection.await;
            }
        }
        None
    }

    /// Serves an HTTP/2 connection until it ends, the server stops (streams under way
    /// finish), or it has had no request under way and begun none for `headerTimeout` (checked
    /// every `headerTimeout`, so idle connections close after one to two of them).
    async fn serve_http2(&self, stream: ParkableStream, peer: SocketAddr) {
        let streams = Arc::new(Streams::default());
        let proxy = self.proxy.clone();
        let counted = streams.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let proxy = proxy.clone();
            let open = OpenStream::new(&counted);
            async move {
                let response = proxy.handle(request, peer).await;
                Ok::<_, Infallible>(response.map(|body| GuardedBody { body, _guard: open }))
            }
        });
        let connection = self.http2.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let (mut begun_before, mut idle_closing, mut stopping) = (0, false, false);
        let outcome = loop {
            tokio::select! {
                outcome = connection.as_mut() => break outcome,
                () = self.shutdown.cancelled(), if !stopping => {
                    connection.as_mut().graceful_shutdown();
                    stopping = true;
                }
                () = tokio::time::sleep(self.header_timeout), if !stopping => {
                    if idle_closing {
                        // Told to go a headerTimeout ago and still there: dropped.
                        break Ok(());
                    }
                    let begun = streams.begun.load(Ordering::Relaxed);
                    if begun == begun_before && streams.open.load(Ordering::Relaxed) == 0 {
                        connection.as_mut().graceful_shutdown();
                        idle_closing = true;
                    }
                    begun_before = begun;
                }
            }
        };
        if let Err(err) = outcome {
            tracing::debug!(%peer, error = %err, "HTTP/2 client connection ended");
        }
    }
}
