//! HTTP probes, as the kubelet runs them: readiness decides whether the pod receives traffic,
//! liveness whether its container is killed and restarted.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// When a probe runs next and how often it failed in a row.
#[derive(Clone, Copy, Debug)]
pub struct ProbeState {
    next: Instant,
    failures: i32,
}

/// What one due probe round concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not due yet.
    NotDue,
    /// It succeeded.
    Passed,
    /// It failed, but fewer than `failureThreshold` times in a row.
    Failing,
    /// It failed `failureThreshold` times in a row.
    Failed,
}

impl ProbeState {
    /// A probe that first runs after `probe`'s initial delay from `started`.
    pub fn new(probe: Option<&Probe>, started: Instant) -> Self {
        let delay = probe.and_then(|p| p.initial_delay_seconds).unwrap_or(0);
        Self {
            next: started + seconds(delay, 0),
            failures: 0,
        }
    }

    /// Runs `probe` against the container at `address` if it is due.
    pub async fn run(
        &mut self,
        probe: &Probe,
        container: &Container,
        address: Ipv4Addr,
    ) -> Verdict {
        let now = Instant::now();
        if now < self.next {
            return Verdict::NotDue;
        }
        self.next = now + seconds(probe.period_seconds.unwrap_or(10), 1);
        if http_probe(probe, container, address).await {
            self.failures = 0;
            return Verdict::Passed;
        }
        self.failures += 1;
        if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
            self.failures = 0;
            Verdict::Failed
        } else {
            Verdict::Failing
        }
    }
}

fn seconds(value: i32, at_least: i32) -> Duration {
    Duration::from_secs(value.max(at_least).unsigned_abs().into())
}

/// Whether the probe's HTTP GET answers 2xx or 3xx within its timeout; probes other than
/// HTTP GET always pass.
async fn http_probe(probe: &Probe, container: &Container, address: Ipv4Addr) -> bool {
    let Some(get) = &probe.http_get else {
        return true;
    };
    let port = match &get.port {
        IntOrString::Int(port) => u16::try_from(*port).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    };
    let Some(port) = port else { return false };
    let path = get.path.clone().unwrap_or_else(|| "/".to_owned());
    let timeout = seconds(probe.timeout_seconds.unwrap_or(1), 1);
    tokio::time::timeout(timeout, http_ok(SocketAddr::from((address, port)), &path))
        .await
        .unwrap_or(false)
}

/// Whether `GET path` answers with a 2xx or 3xx status.
async fn http_ok(address: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return false;
    };
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: coral-e2e-kubelet\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    matches!(&head[9..10], b"2" | b"3")
}
