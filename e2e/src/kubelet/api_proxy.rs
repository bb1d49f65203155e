//! Lets pods reach the API server, which listens on loopback only: a TCP forwarder on the
//! bridge's gateway address, announced to containers the way a kubelet announces the
//! `kubernetes` Service (`KUBERNETES_SERVICE_HOST` and `_PORT`). TLS passes through untouched;
//! the apiserver's certificate names the gateway addresses (see `e2e/controlplane/start.sh`).

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Port of the forwarder on the gateway, the usual apiserver port.
pub const PORT: u16 = 6443;

/// Forwards connections to `gateway:6443` to `api_server` until `shutdown` is cancelled.
pub async fn bind(
    gateway: Ipv4Addr,
    api_server: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = TcpListener::bind((gateway, PORT)).await?;
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((mut inbound, _)) = accepted else { continue };
                    connections.spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(api_server).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    while connections.try_join_next().is_some() {}
                }
            }
        }
        connections.shutdown().await;
    });
    Ok(())
}
