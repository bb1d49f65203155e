//! The TCP connector of origin fetches: resolve, check every address, connect.
//!
//! It plugs into hyper-util's client (TLS is layered on top by hyper-rustls), so every new
//! connection, including those of followed redirects, goes through the same check.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::guard::{GuardError, OriginGuard};
use super::resolve::{OriginResolver, ResolveError};

/// Why no connection to an origin was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URI has no host.
    #[error("the origin URI {0} has no host")]
    NoHost(Uri),
    /// The host has no address.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Every address of the host is refused by the guard.
    #[error(transparent)]
    Refused(#[from] GuardError),
    /// Connecting failed or timed out at every allowed address.
    #[error("cannot connect to {host}: {reason}")]
    Unreachable {
        /// The origin host.
        host: String,
        /// The last address's error.
        reason: String,
    },
}

/// Connects to origins through the resolver and the guard.
#[derive(Clone)]
pub struct GuardedConnector {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: OriginResolver,
    guard: OriginGuard,
    timeout: Duration,
}

impl GuardedConnector {
    /// A connector that resolves with `resolver`, checks with `guard`, and gives the
    /// resolution and each connection attempt `timeout`.
    pub fn new(resolver: OriginResolver, guard: OriginGuard, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                resolver,
                guard,
                timeout,
            }),
        }
    }
}

impl Inner {
    async fn connect(&self, uri: Uri) -> Result<TokioIo<TcpStream>, ConnectError> {
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::NoHost(uri.clone()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let addresses = tokio::time::timeout(self.timeout, self.resolver.resolve(&host))
            .await
            .map_err(|_| ResolveError::Lookup {
                host: host.clone(),
                reason: format!("no answer within {:?}", self.timeout),
            })??;
        let allowed = allowed_addresses(&self.guard, &host, &addresses)?;
        let mut last_error = "no address".to_owned();
        for address in allowed {
            match self.attempt(SocketAddr::new(address, port)).await {
                Ok(stream) => return Ok(TokioIo::new(stream)),
                Err(err) => last_error = format!("{address}: {err}"),
            }
        }
        Err(ConnectError::Unreachable {
            host,
            reason: last_error,
        })
    }

    async fn attempt(&self, address: SocketAddr) -> io::Result<TcpStream> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(address))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// The addresses the guard lets through, or the guard's refusal when none pass.
fn allowed_addresses(
    guard: &OriginGuard,
    host: &str,
    addresses: &[IpAddr],
) -> Result<Vec<IpAddr>, GuardError> {
    let mut refusal = None;
    let mut allowed = Vec::new();
    for &address in addresses {
        match guard.check_address(host, address) {
            Ok(()) => allowed.push(address),
            Err(err) => refusal = Some(err),
        }
    }
    match refusal {
        Some(err) if allowed.is_empty() => Err(err),
        _ => Ok(allowed),
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.connect(uri).await })
    }
}
