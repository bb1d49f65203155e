//! The proxy role: binds the HTTP port and serves clients through a [`Proxy`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::proxy::metrics::ProxyMetrics;
use crate::proxy::peers::Peering;
use crate::proxy::server;
use crate::proxy::service::{Proxy, ProxySetupError};

/// Longest wait at shutdown for queued disk cache writes (well inside Kubernetes' default
/// 30 s grace period).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the proxy role could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyRoleError {
    /// The proxy could not be set up (origin client, disk cache).
    #[error(transparent)]
    Setup(#[from] ProxySetupError),
    /// The HTTP port could not be bound.
    #[error("cannot bind the proxy port {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The running proxy role.
pub struct ProxyRole {
    proxy: Arc<Proxy>,
    ready: Arc<AtomicBool>,
    server: JoinHandle<()>,
}

impl ProxyRole {
    /// Binds `address` and starts serving; with `peering` (the node also plays the DHT
    /// role), the proxy cooperates with the cluster's other proxies.
    pub async fn start(
        config: &NodeConfig,
        address: SocketAddr,
        metrics: ProxyMetrics,
        peering: Option<Peering>,
        shutdown: CancellationToken,
    ) -> Result<Self, ProxyRoleError> {
        let proxy = Arc::new(Proxy::new(config, metrics, peering)?);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| ProxyRoleError::Bind {
                addr: address,
                source,
            })?;
        let bound = listener.local_addr().unwrap_or(address);
        tracing::info!(address = %bound, zone = config.zone, "proxy serving");
        let server = tokio::spawn(server::serve(
            listener,
            proxy.clone(),
            config.proxy.client_limits,
            shutdown,
        ));
        Ok(Self {
            proxy,
            ready: Arc::new(AtomicBool::new(true)),
            server,
        })
    }

    /// The proxy, for the admin port.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.proxy.clone()
    }

    /// Set while the role serves.
    pub fn readiness(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Waits for the server to stop (after the shutdown token is cancelled) and, for at most
    /// [`FLUSH_TIMEOUT`], for the disk cache to hold what was stored.
    pub async fn stop(self) {
        let _ = self.server.await;
        if tokio::time::timeout(FLUSH_TIMEOUT, self.proxy.flush_cache())
            .await
            .is_err()
        {
            tracing::warn!("stopping before the disk cache wrote everything queued");
        }
    }
}
