//! A minimal HTTP/1.1 server for small status endpoints, shared by the node's admin port and
//! the operator's metrics port (a crate of its own, so the operator needs the node crate only
//! for the configuration type): every request goes to one synchronous responder, headers must
//! arrive within five seconds, and connections end with the shutdown token. Its accept loop's
//! pause after a failure is shared with the node's other listeners.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Turns a request into a response; it must not block.
pub type Responder = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// Binds a listener, naming the address on failure.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|err| {
        std::io::Error::new(err.kind(), format!("cannot listen on {address}: {err}"))
    })
}

/// The pause after `accept` failed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Logs a failed `accept` and pauses, or until `shutdown`: a failure for want of descriptors
/// or memory leaves the connection queued, so accepting again at once fails again at once,
/// hundreds of thousands of times a second.
pub async fn pause_after_accept_error(error: &std::io::Error, shutdown: &CancellationToken) {
    tracing::warn!(%error, "accept failed");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
    }
}

/// Serves `listener` with `responder` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, responder: Responder, shutdown: CancellationToken) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    pause_after_accept_error(&err, &shutdown).await;
                    continue;
                }
            },
        };
        let responder = responder.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let response = responder(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                tracing::debug!(%peer, %err, "status connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// A response with `body` and `content_type`.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// The Prometheus text exposition.
pub fn metrics(exposition: String) -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        exposition,
    )
}
