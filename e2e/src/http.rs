//! A plain HTTP/1.1 GET over a fresh TCP connection, for the tests and `coral up`: enough to
//! ask a pod or a proxy for a page and see its status line and body.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the whole response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);

/// `GET path` with `Host: host` from the server at `address` (the connection closed after):
/// the status line and the body.
pub async fn get(address: SocketAddr, host: &str, path: &str) -> Result<(String, String), String> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| format!("connecting to {address} timed out"))?
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    tokio::time::timeout(RESPONSE_TIMEOUT, stream.read_to_string(&mut response))
        .await
        .map_err(|_| format!("{address} did not answer within {RESPONSE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of the response head: {response:?}"))?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}
