//! A small origin for `coral up`: every GET gets a short page, cacheable for an hour, that
//! says which request it answered, so a second fetch through the CDN shows whether the
//! origin was asked again.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head read.
const MAX_HEAD: usize = 16 << 10;
/// Longest a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The running origin; stops when dropped.
pub struct DemoOrigin {
    address: SocketAddr,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DemoOrigin {
    /// Serves on `ip`, at a port the system picks.
    pub async fn start(ip: IpAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let address = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, counter.clone()));
            }
        });
        Ok(Self {
            address,
            requests,
            task,
        })
    }

    /// Where it serves.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for DemoOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, requests: Arc<AtomicU64>) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 2048];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(read)) if read > 0 && head.len() + read <= MAX_HEAD => {
                head.extend_from_slice(&buffer[..read]);
            }
            _ => return,
        }
    }
    let number = requests.fetch_add(1, Ordering::Relaxed) + 1;
    let body = format!("Hello from the Coral demo origin: this is its request number {number}.\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: public, max-age=3600\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_answers_and_counts() {
        let origin = DemoOrigin::start("127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        for expected in 1..=2 {
            let mut stream = TcpStream::connect(origin.address()).await.unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
            assert!(response.contains("max-age=3600"), "{response}");
            assert!(
                response.ends_with(&format!("request number {expected}.\n")),
                "{response}"
            );
        }
        assert_eq!(origin.requests(), 2);
    }
}
