//! The operator's HTTP endpoints: `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` answers while the process serves at all. `/readyz` answers once the replica is
//! doing its job: running the controller as leader, or standing by for the Lease.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use coral_status_http::{self as server, text};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the endpoints report.
pub struct Health {
    /// Set once the replica is leading or standing by.
    pub ready: AtomicBool,
    /// The operator's metrics.
    pub metrics: Metrics,
}

/// Serves the endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, health: Arc<Health>, shutdown: CancellationToken) {
    server::serve(
        listener,
        Arc::new(move |request| respond(request, &health)),
        shutdown,
    )
    .await;
}

/// Binds the endpoints' listener, naming the address on failure.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    server::bind(address).await
}

fn respond(request: &Request<Incoming>, health: &Health) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if health.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ok\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        "/metrics" => server::metrics(health.metrics.render()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn endpoints_answer_over_a_real_socket() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let health = Arc::new(Health {
            ready: AtomicBool::new(false),
            metrics: Metrics::new(),
        });
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, health.clone(), shutdown.clone()));

        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.ready.store(true, Ordering::Relaxed);
        assert!(get(address, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(address, "/metrics").await;
        assert!(metrics.contains("coral_operator_leader 0"), "{metrics}");
        assert!(get(address, "/nope").await.starts_with("HTTP/1.1 404"));

        shutdown.cancel();
        server.await.unwrap();
    }
}
