//! The authoritative DNS role: answers `<origin>.<zone>` with the addresses of healthy
//! proxies near the client.
//!
//! - [`members`]: who may be published (a members file; the Kubernetes API later);
//! - [`health`], [`probe`]: the health checks and their state machine;
//! - [`placement`], [`select`]: where a client is, and which proxies it gets;
//! - [`answer`]: the zone's answers, a pure function;
//! - [`handler`], [`tcp`]: hickory-server's request handler (UDP and TCP) and the TCP side
//!   with its limits;
//! - [`metrics`]: the Prometheus metrics.

pub mod answer;
pub mod handler;
pub mod health;
pub mod members;
pub mod metrics;
pub mod placement;
pub mod probe;
pub mod select;
pub mod tcp;
